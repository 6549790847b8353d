"""Synthetic traffic with label feedback, for the local canary (tests and the benchmark).

`Traffic(url, rows, labels)` sends one prediction at a time to the service's stable URL,
then the true label for it to `/feedback`, at a bounded rate, in a background thread. It
records every answer: which version gave it, and every failure (a refused connection, a
non-200 status), so a caller can assert that the service answered the whole time. Each
request is also kept in `answers` with its wall-clock send time, so answers can be set
against the moments a status changed (`StatusWatch`), e.g. no answer from the old version
after `Promoted`.

Feedback is kept apart: a server remembers the requests it answered, so the label of a
request answered by a process that has since been replaced (a promotion restarts the
champion with the new version) is unknown to its successor and lost (404), as it would be
on a cluster.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Answer:
    """One prediction request: when it was sent (time.time()), its status code (0: no HTTP
    answer at all, e.g. refused) and the model_version that answered."""

    sent_at: float
    code: int
    version: str | None


@dataclass
class TrafficReport:
    sent: int = 0
    answered: int = 0
    feedback: int = 0
    by_version: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    feedback_failures: list[str] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)

    def versions_sent_after(self, moment: float) -> Counter[str]:
        """Which versions answered the requests sent after `moment` (time.time())."""
        return Counter(str(a.version) for a in self.answers if a.sent_at >= moment and a.code == 200)


class Traffic:
    def __init__(self, url: str, rows: Sequence[Sequence[float]], labels: Sequence[Any],
                 rate: float = 20.0, seed: int = 0, timeout: float = 10.0,
                 max_requests: int = 30000, max_seconds: float = 1800.0, workers: int = 1) -> None:
        self.url = url.rstrip("/")
        self.rows = [list(map(float, row)) for row in rows]
        self.labels = list(labels)
        # `workers` clients, each one request at a time at rate / workers: the total rate
        # holds while a request takes longer than 1 / rate (a busy machine, a longer path).
        self.interval = workers / rate
        self.timeout = timeout
        # Bounded whatever the caller forgets: at most this many requests, for this long.
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.report = TrafficReport()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._begun = 0  # requests begun by all clients, for max_requests
        self._threads = [threading.Thread(target=self._run, args=(random.Random(seed + i),), name=f"traffic-{i}",
                                          daemon=True) for i in range(workers)]

    def start(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> TrafficReport:
        self._stop.set()
        self.wait(self.timeout + 5)
        return self.snapshot()

    def wait(self, timeout: float) -> bool:
        """Whether every client has stopped (at a bound, or after `stop`) within `timeout` s."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def snapshot(self) -> TrafficReport:
        with self._lock:
            return TrafficReport(self.report.sent, self.report.answered, self.report.feedback,
                                 Counter(self.report.by_version), list(self.report.failures),
                                 list(self.report.feedback_failures), list(self.report.answers))

    def _post(self, path: str, body: Any) -> tuple[int, Any]:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")[:200]

    def _run(self, chooser: random.Random) -> None:
        until = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < until:
            with self._lock:
                if self._begun >= self.max_requests:
                    break
                self._begun += 1
            started, sent_at = time.monotonic(), time.time()
            index = chooser.randrange(len(self.rows))
            try:
                code, body = self._post("/predict", {"instances": [self.rows[index]]})
            except (OSError, ValueError) as error:
                code, body = 0, str(error)
            with self._lock:
                self.report.sent += 1
                self.report.answers.append(Answer(sent_at, code, str(body.get("version")) if code == 200 else None))
                if code == 200:
                    self.report.answered += 1
                    self.report.by_version[str(body.get("version"))] += 1
                else:
                    self.report.failures.append(f"{time.strftime('%H:%M:%S')} predict: {code} {body}")
            if code == 200 and body.get("request_id"):
                try:
                    code, answer = self._post("/feedback", {"request_id": body["request_id"],
                                                            "label": self.labels[index]})
                except (OSError, ValueError) as error:
                    code, answer = 0, str(error)
                with self._lock:
                    if code == 200:
                        self.report.feedback += 1
                    else:
                        self.report.feedback_failures.append(f"{time.strftime('%H:%M:%S')} {code} {answer}")
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))


def iris_rows() -> tuple[list[list[float]], list[int]]:
    import sklearn.datasets

    data = sklearn.datasets.load_iris()
    return data.data.tolist(), [int(y) for y in data.target]


@dataclass(frozen=True)
class Sighting:
    """What an InferenceService's status said when it changed, seen at `time` (time.time())."""

    time: float
    phase: str | None
    stage: str | None
    champion: str | None
    weight: int | None = None  # status.traffic.challenger: the share the challenger gets

    @classmethod
    def of(cls, time: float, status: dict[str, Any]) -> Sighting:
        return cls(time, status.get("phase"), status.get("rolloutStage"), status.get("champion"),
                   (status.get("traffic") or {}).get("challenger"))

    def same_as(self, other: Sighting) -> bool:
        return (self.phase, self.stage, self.champion, self.weight) == \
            (other.phase, other.stage, other.champion, other.weight)


class StatusWatch:
    """Polls one InferenceService's status in a background thread and keeps every change of
    (phase, rolloutStage, champion, challenger weight). By default it reads a local
    instance's (through its control API); `read` (a callable returning the status, or None
    while there is none) reads it from elsewhere, e.g. a real API server. A source that is
    down is asked again on the next poll (a restart is watched on)."""

    def __init__(self, state_dir: Path | None = None, name: str = "", namespace: str = "default",
                 period: float = 0.1, *, read: Callable[[], dict[str, Any] | None] | None = None) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.name, self.namespace, self.period = name, namespace, period
        self._source = read or self._read
        self.sightings: list[Sighting] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-watch", daemon=True)

    def start(self) -> StatusWatch:
        self._thread.start()
        return self

    def stop(self) -> list[Sighting]:
        self._stop.set()
        self._thread.join(timeout=10)
        return list(self.sightings)

    def first(self, phase: str | None = None, stage: str | None = None) -> float | None:
        """When the status was first seen with this phase (and/or rolloutStage)."""
        return next((s.time for s in list(self.sightings)
                     if (phase is None or s.phase == phase) and (stage is None or s.stage == stage)), None)

    def _read(self) -> dict[str, Any] | None:
        from mlops_operator.local import client
        from mlops_operator.local.state import StateDir

        assert self.state_dir is not None, "StatusWatch: give a local state folder or `read`"
        control = client.attach(StateDir(self.state_dir))
        if control is None:
            return None
        query = f"/objects?apiVersion=mlops.seed.io/v1alpha1&kind=InferenceService&namespace={self.namespace}"
        code, body = control.call("GET", query, timeout=5)
        found = [o for o in (body or {}).get("items", []) if o["metadata"]["name"] == self.name] if code == 200 else []
        return found[0].get("status") or {} if found else None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status = self._source()
            except (OSError, ValueError):
                status = None
            if status is not None:
                seen = Sighting.of(time.time(), status)
                if not self.sightings or not self.sightings[-1].same_as(seen):
                    self.sightings.append(seen)
            self._stop.wait(self.period)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m mlops_operator.local.traffic URL`: iris rows at a bounded rate for a bounded
    time, each answer's true label sent back as feedback; a line every few seconds with the
    answers by version, and the failures at the end (exit status 1 if any)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mlops_operator.local.traffic", description=main.__doc__)
    parser.add_argument("url", help="the service's URL, e.g. http://127.0.0.1:51355 (from `mlops local up`)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second (default 20)")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long to send (default 120)")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between progress lines (default 5)")
    options = parser.parse_args(argv)
    rows, labels = iris_rows()
    traffic = Traffic(options.url, rows, labels, rate=options.rate).start()
    deadline = time.monotonic() + options.seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(max(0.0, min(options.every, deadline - time.monotonic())))
            report = traffic.snapshot()
            versions = ", ".join(f"{v} {n}" for v, n in sorted(report.by_version.items()))
            print(f"{time.strftime('%H:%M:%S')} sent {report.sent}, answered {report.answered} ({versions}), "
                  f"feedback {report.feedback}, failed {len(report.failures)}", flush=True)
    except KeyboardInterrupt:
        pass
    report = traffic.stop()
    for failure in report.failures[:20]:
        print(f"failed: {failure}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
