"""Synthetic traffic with label feedback, for the local canary (tests and the benchmark).

`Traffic(url, rows, labels)` sends one prediction at a time to the service's stable URL,
then the true label for it to `/feedback`, at a bounded rate, in a background thread. It
records every answer: which version gave it, and every failure (a refused connection, a
non-200 status), so a caller can assert that the service answered the whole time.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrafficReport:
    sent: int = 0
    answered: int = 0
    feedback: int = 0
    by_version: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    feedback_failures: list[str] = field(default_factory=list)


class Traffic:
    def __init__(self, url: str, rows: Sequence[Sequence[float]], labels: Sequence[Any],
                 rate: float = 20.0, seed: int = 0, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.rows = [list(map(float, row)) for row in rows]
        self.labels = list(labels)
        self.interval = 1.0 / rate
        self.timeout = timeout
        self.report = TrafficReport()
        self._random = random.Random(seed)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self) -> TrafficReport:
        self._stop.set()
        self._thread.join(timeout=self.timeout + 5)
        return self.snapshot()

    def snapshot(self) -> TrafficReport:
        with self._lock:
            return TrafficReport(self.report.sent, self.report.answered, self.report.feedback,
                                 Counter(self.report.by_version), list(self.report.failures),
                                 list(self.report.feedback_failures))

    def _post(self, path: str, body: Any) -> tuple[int, Any]:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")[:200]

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            index = self._random.randrange(len(self.rows))
            try:
                code, body = self._post("/predict", {"instances": [self.rows[index]]})
            except (OSError, ValueError) as error:
                code, body = 0, str(error)
            with self._lock:
                self.report.sent += 1
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
