"""Start and stop a model server or router as a child process on a free loopback port.

Used by the tests, the serving benchmark and anything else that runs the servers as the
operator's pods would run them: the same `python -m ...` command, a real port, stopped by pid.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_LISTEN_PORT = 10000


def listen_port_range(room: int = 0) -> tuple[int, int]:
    """[start, stop) of ports to listen on, below the kernel's ephemeral range, keeping `room`
    between the top one and that range (for a service that also listens on port + room).

    A client's source port comes from the ephemeral range. Connecting to a loopback port inside
    it while nothing listens there yet, the kernel may hand the client that very port as its
    source: the socket connects to itself (TCP simultaneous open) and reads back its own
    request (seen in a test: `BadStatusLine: GET / HTTP/1.1` from S3 being started). Ports
    from `bind(0)` are ephemeral ones, so services here pick below the range instead."""
    try:
        low = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    stop = low - room
    if stop - LOWEST_LISTEN_PORT < 1000:  # an unusual range: no room below it
        raise RuntimeError(f"the ephemeral port range starts at {low}: no 1000 ports below it "
                           f"(with {room} to spare) to listen on")
    return LOWEST_LISTEN_PORT, stop


def port_is_free(port: int, host: str = "127.0.0.1", reuse_address: bool = False) -> bool:
    """Whether a listener could bind `port` now; `reuse_address`: as one with SO_REUSEADDR
    would (a port whose old connections linger in TIME_WAIT counts as free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A free port to listen on, below the ephemeral range (see listen_port_range)."""
    start, stop = listen_port_range()
    for _ in range(1000):
        port = random.randrange(start, stop)
        if port_is_free(port, host):
            return port
    raise RuntimeError(f"no free port in {start}..{stop - 1} on {host}")


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@dataclass
class ServerProcess:
    """A `python -m mlops_runtime.serve|router` child process."""

    module: str
    args: list[str]
    env: Mapping[str, str] | None = None
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    taskset_cpu: int | str | None = None   # a CPU or a taskset CPU list ("0,1")
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerProcess:
        command = [sys.executable, "-m", self.module, "--host", self.host, "--port", str(self.port), *self.args]
        if self.taskset_cpu is not None:
            command = ["taskset", "-c", str(self.taskset_cpu), *command]
        env = {**os.environ, **(self.env or {})}
        env.setdefault("OMP_NUM_THREADS", "1")
        output = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        return self

    def wait_live(self, timeout: float = 30.0) -> ServerProcess:
        return self._wait("/v2/health/live", (200,), timeout)

    def wait_ready(self, timeout: float = 30.0) -> ServerProcess:
        return self._wait("/v2/health/ready", (200,), timeout)

    def _wait(self, path: str, statuses: Sequence[int], timeout: float) -> ServerProcess:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.process.returncode}: {self.log_tail()}")
            try:
                status, body = http_get(self.url + path, timeout=1.0)
                if status in statuses:
                    return self
                last = f"{status} {body[:300]!r}"
            except OSError as error:
                last = str(error)
            time.sleep(0.05)
        raise TimeoutError(f"{self.module} on {self.url}{path} not ready after {timeout} s: {last}; "
                           f"{self.log_tail()}")

    def ready_state(self) -> tuple[int, dict[str, object]]:
        status, body = http_get(self.url + "/v2/health/ready")
        return status, json.loads(body)

    def log_tail(self, chars: int = 2000) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds, by pid."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=grace)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
