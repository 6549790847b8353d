"""Wake-ups of a parent by its children's events coalesce: while one wake-up waits for the
parent's lock, further events add nothing (the waiting one reads the parent fresh), and an
event that comes once a sync has started wakes it again."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from mlops_operator import kopf_handlers


class CountingCluster:
    def __init__(self) -> None:
        self.reads = 0
        self.reading = threading.Event()
        self.proceed = threading.Event()
        self.proceed.set()

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
        self.reads += 1
        self.reading.set()
        self.proceed.wait(10)
        return {"apiVersion": api_version, "kind": kind, "metadata": {"namespace": namespace, "name": name}}


def wake_in_thread(memo: Any, name: str) -> threading.Thread:
    thread = threading.Thread(target=kopf_handlers._wake, args=("Experiment", "ns", name, memo, logging.getLogger()))
    thread.start()
    return thread


def until(condition: Any) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_events_while_a_wake_up_waits_coalesce_and_later_ones_wake_again(monkeypatch: Any) -> None:
    synced: list[str] = []
    monkeypatch.setattr(kopf_handlers, "sync_locked", lambda kind, obj, memo: synced.append(obj["metadata"]["name"]))
    cluster = CountingCluster()
    memo = type("Memo", (), {"cluster": cluster})()
    key = ("Experiment", "ns", "coalesce")

    lock = kopf_handlers._lock_for(*key)
    with lock:  # a sync of the parent is running
        first = wake_in_thread(memo, "coalesce")
        until(lambda: key in kopf_handlers._waiting)
        others = [wake_in_thread(memo, "coalesce") for _ in range(5)]
        for thread in others:
            thread.join(10)
            assert not thread.is_alive(), "a coalesced wake-up returns at once"
    first.join(10)
    assert cluster.reads == 1 and synced == ["coalesce"]

    # An event during a sync (after its read) is not swallowed: it syncs again afterwards.
    cluster.reading.clear()
    cluster.proceed.clear()
    running = wake_in_thread(memo, "coalesce")
    cluster.reading.wait(10)
    again = wake_in_thread(memo, "coalesce")
    until(lambda: key in kopf_handlers._waiting)
    cluster.proceed.set()
    running.join(10)
    again.join(10)
    assert cluster.reads == 3 and synced == ["coalesce"] * 3
    assert key not in kopf_handlers._waiting
