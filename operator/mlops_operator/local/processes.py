"""Every process the local instance starts: spawned in its own process group, recorded in
`pids.json` (pid and kernel start time, so a recycled pid is never mistaken for ours), and
stopped by pid with SIGTERM, then SIGKILL.

`stop_recorded()` works from the file alone, so `mlops local down` can clean up after an
instance that died without stopping its children. A restarted instance can instead adopt
the recorded processes that must outlive it (the data plane: the Service proxy and the
model servers, `ProcessTable.adopt_recorded`): they stay recorded and are stopped by pid
like the ones it spawned.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

POLL_INTERVAL = 0.05
# How often an adopted process (not our child: no wait() to block on) is checked for life.
ADOPTED_POLL_INTERVAL = 0.2
# An adopted process's exit status cannot be read (only a parent can): reported as this.
UNKNOWN_EXIT_CODE = 255


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat),
    or None when there is no such process or it is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def is_alive(pid: int, ticks: int | None = None) -> bool:
    """True when `pid` runs and, if `ticks` is given, is the very process started then."""
    current = start_ticks(pid)
    return current is not None and (ticks is None or current == ticks)


def atomic_write(path: Path, text: str) -> None:
    """Readers see the old or the new content, never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


@dataclass
class Managed:
    """A process of the instance: spawned by it (`popen`), or adopted from an earlier
    instance (`popen` None, known by pid and start time only)."""

    key: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None
    ticks: int | None
    started_at: datetime
    exit_code: int | None = field(default=None)
    adopted_pid: int = 0

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen is not None else self.adopted_pid

    def poll(self) -> int | None:
        if self.exit_code is None:
            if self.popen is not None:
                self.exit_code = self.popen.poll()
            elif not is_alive(self.adopted_pid, self.ticks):
                self.exit_code = UNKNOWN_EXIT_CODE
        return self.exit_code


class ProcessTable:
    """Spawns and stops the instance's child processes and keeps `pids.json` current."""

    def __init__(self, pids_file: Path, on_exit: Callable[[], None] | None = None) -> None:
        self.pids_file = Path(pids_file)
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._running: dict[str, Managed] = {}

    def spawn(
        self,
        key: str,
        argv: list[str],
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path,
    ) -> Managed:
        cwd.mkdir(parents=True, exist_ok=True)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                argv,
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group: stopped as a whole, and a Ctrl-C in the terminal
                # of `mlops local up` does not reach it.
                start_new_session=True,
            )
        managed = Managed(key, list(argv), log_path, popen, start_ticks(popen.pid), datetime.now(UTC))
        with self._lock:
            self._running[key] = managed
            self._save()
        threading.Thread(target=self._wait, args=(managed,), name=f"wait-{popen.pid}", daemon=True).start()
        return managed

    def _wait(self, managed: Managed) -> None:
        if managed.popen is not None:
            managed.popen.wait()
        else:
            while managed.poll() is None:
                time.sleep(ADOPTED_POLL_INTERVAL)
        if self._on_exit is not None:
            self._on_exit()

    def adopt_recorded(self, keep: Callable[[str], bool], grace: float = 5.0) -> list[int]:
        """Take over the processes an earlier instance recorded: those `keep` accepts (by
        key) and that still run are adopted, every other one is stopped. Returns the pids
        that would not stop."""
        adopted: list[Managed] = []
        leftovers: list[int] = []
        for key, entry in read_recorded(self.pids_file).items():
            pid, ticks = int(entry["pid"]), entry.get("startTicks")  # type: ignore[call-overload]
            ticks = ticks if isinstance(ticks, int) else None
            if keep(key) and ticks is not None and is_alive(pid, ticks):
                started = datetime.fromisoformat(str(entry.get("startedAt") or datetime.now(UTC).isoformat()))
                adopted.append(Managed(key, [str(a) for a in entry.get("argv") or []],  # type: ignore[attr-defined]
                                       Path(str(entry.get("log") or "")), None, ticks, started, adopted_pid=pid))
            elif not terminate_group(pid, ticks, grace):
                leftovers.append(pid)
        with self._lock:
            for managed in adopted:
                self._running[managed.key] = managed
            self._save()
        for managed in adopted:
            threading.Thread(target=self._wait, args=(managed,), name=f"watch-{managed.pid}", daemon=True).start()
        return leftovers

    def get(self, key: str) -> Managed | None:
        with self._lock:
            return self._running.get(key)

    def stop(self, managed: Managed, grace: float = 5.0) -> None:
        """SIGTERM to its process group, then SIGKILL after `grace` seconds."""
        terminate_group(managed.pid, managed.ticks, grace, managed.popen)
        managed.poll()
        with self._lock:
            if self._running.get(managed.key) is managed:
                del self._running[managed.key]
            self._save()

    def forget(self, managed: Managed) -> None:
        """Drop an exited process from the record."""
        with self._lock:
            if self._running.get(managed.key) is managed:
                del self._running[managed.key]
                self._save()

    def running(self) -> list[Managed]:
        with self._lock:
            return list(self._running.values())

    def stop_all(self, grace: float = 5.0) -> None:
        processes = self.running()
        for managed in processes:
            _signal_group(managed.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for managed in processes:
            terminate_group(managed.pid, managed.ticks, max(0.0, deadline - time.monotonic()), managed.popen)
            managed.poll()
        with self._lock:
            self._running.clear()
            self._save()

    def _save(self) -> None:
        if not self.pids_file.parent.is_dir():
            return  # the state folder was removed: recreating it would only leave litter
        record = {
            managed.key: {
                "pid": managed.pid,
                "startTicks": managed.ticks,
                "argv": managed.argv,
                "log": str(managed.log_path),
                "startedAt": managed.started_at.isoformat(),
            }
            for managed in self._running.values()
        }
        atomic_write(self.pids_file, json.dumps(record, indent=1) + "\n")


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def terminate_group(
    pid: int,
    ticks: int | None,
    grace: float,
    popen: subprocess.Popen[bytes] | None = None,
) -> bool:
    """Stop the process group led by `pid` if it is still ours; True when it is gone.

    A pid that now belongs to another process (different start time) is left alone. When
    the leader is gone, its group id cannot have been handed out again while members of
    the group remain, so signalling the group reaches only our orphans."""
    current = start_ticks(pid)
    if current is not None and ticks is not None and current != ticks:
        return True
    _signal_group(pid, signal.SIGTERM)
    if _wait_group_gone(pid, grace, popen):
        return True
    _signal_group(pid, signal.SIGKILL)
    return _wait_group_gone(pid, 5.0, popen)


def _group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies still count for killpg: look for a member that is not one.
    return any(
        start_ticks(member) is not None
        for member in _group_members(pid)
    )


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _wait_group_gone(pid: int, timeout: float, popen: subprocess.Popen[bytes] | None) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if popen is not None:
            popen.poll()
        if not _group_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)


def read_recorded(pids_file: Path) -> dict[str, dict[str, object]]:
    try:
        record = json.loads(Path(pids_file).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def stop_recorded(pids_file: Path, grace: float = 5.0) -> list[int]:
    """Stop every process recorded in `pids_file`; returns the pids still alive after it
    (empty when all are gone), and empties the record when none is left."""
    record = read_recorded(pids_file)
    entries = [(int(item["pid"]), item.get("startTicks")) for item in record.values()]  # type: ignore[call-overload]
    for pid, ticks in entries:
        if ticks is None or start_ticks(pid) in (None, ticks):
            _signal_group(pid, signal.SIGTERM)
    survivors = [
        pid for pid, ticks in entries
        if not terminate_group(pid, ticks if isinstance(ticks, int) else None, grace)
    ]
    if not survivors:
        atomic_write(Path(pids_file), "{}\n")
    return survivors
