"""The data plane of the embedded default, under traffic, with real processes:

- a kill -9 of the local instance during a canary refuses no request: the Service ports
  live in a process of their own and the model servers in theirs, all of which outlive
  the instance; a restarted instance adopts them (the same pods serve on) and the canary
  resumes where it was and promotes;
- the promotion is gap-free: `rolloutStage: Promoting` is seen while the champion
  Deployment rolls to the winner, and no request sent after the status says `Promoted`
  is answered by the old version (each answer names its model_version);
- `mlops local down` still stops every process, the adopted ones included.

Traffic: one request at a time, 20 requests/s, to 127.0.0.1 only, bounded by the test's
own deadlines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mlops_operator.local import client
from mlops_operator.local.processes import is_alive, read_recorded
from mlops_operator.local.proxy import PROXY_KEY
from mlops_operator.local.state import StateDir
from mlops_operator.local.traffic import StatusWatch, Traffic, iris_rows
from mlops_operator.rollout.state_machine import parse_time

MANIFESTS = Path(__file__).with_name("manifests")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def mlops(cwd: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlops_operator", "local", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout)


def wait_for(what: str, condition: Callable[[], Any], timeout: float = 240.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"not reached within {timeout:.0f} s: {what}")


def isvc_status(cwd: Path) -> dict[str, Any]:
    result = mlops(cwd, "get", "isvc", "iris", "-o", "json", timeout=60)
    return json.loads(result.stdout).get("status") or {} if result.returncode == 0 else {}


def serving_pods(cwd: Path) -> set[str]:
    result = mlops(cwd, "get", "pods", "-o", "json", timeout=60)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    return {p["metadata"]["name"] for p in body["items"]
            if any(r.get("kind") == "Deployment" for r in p["metadata"].get("ownerReferences") or [])}


def test_a_kill_9_of_the_instance_during_a_canary_refuses_no_request_and_the_promotion_is_gap_free(
        tmp_path: Path) -> None:
    state = tmp_path / ".mlops"
    traffic: Traffic | None = None
    proxy_pid: int | None = None
    watch = StatusWatch(state, "iris")
    try:
        up = mlops(tmp_path, "up", "-f", str(MANIFESTS / "quick-champion.yaml"), "--exit-when-settled",
                   "--timeout", "300")
        assert up.returncode == 0, up.stdout + up.stderr
        control = client.attach(StateDir(state))
        assert control is not None
        [service] = control.status()["services"]
        assert service["champion"] == "iris-v1"
        rows, labels = iris_rows()
        traffic = Traffic(service["url"], rows, labels, rate=20).start()
        watch.start()

        applied = mlops(tmp_path, "apply", "-f", str(MANIFESTS / "quick-challenger.yaml"))
        assert applied.returncode == 0, applied.stderr
        # The canary at its first step: the challenger answers part of the traffic.
        wait_for("the canary at 50 % with answers from iris-v2",
                 lambda: watch.first(stage="Analysing") and traffic.snapshot().by_version["iris-v2"] >= 5)
        pods_before = serving_pods(tmp_path)
        recorded = read_recorded(state / "pids.json")
        proxy_pid = int(recorded[PROXY_KEY]["pid"])  # type: ignore[call-overload]

        os.kill(control.pid, signal.SIGKILL)
        wait_for("the instance gone", lambda: not is_alive(control.pid), timeout=30)
        killed_at = time.time()
        # Nothing runs the control plane now; the data plane answers on, both versions.
        wait_for("answers while the instance is down", lambda: len(traffic.snapshot().versions_sent_after(killed_at))
                 == 2 and sum(traffic.snapshot().versions_sent_after(killed_at).values()) >= 40, timeout=60)
        assert is_alive(proxy_pid)

        restarted = mlops(tmp_path, "up", "--exit-when-settled", "--timeout", "300")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert "resuming" in restarted.stdout
        status = wait_for("iris-v2 promoted and the rollout finished",
                          lambda: (s := isvc_status(tmp_path)).get("champion") == "iris-v2"
                          and s.get("rolloutStage") is None and s)
        report = traffic.stop()
        traffic = None
        sightings = watch.stop()

        # 0 refused (or otherwise failed) requests, through the kill and the restart.
        assert report.failures == [], "\n".join(report.failures[:20])
        assert report.answered == report.sent and report.sent > 100
        # The restarted instance adopted the proxy and the pods that were serving.
        assert int(read_recorded(state / "pids.json")[PROXY_KEY]["pid"]) == proxy_pid  # type: ignore[call-overload]
        assert pods_before & serving_pods(tmp_path), (pods_before, serving_pods(tmp_path))
        # The promotion: observable while it happens, and gap-free once it is said.
        [promotion] = [h for h in status["history"] if h["action"] == "Promoted"]
        assert promotion["version"] == "iris-v2" and promotion["replaced"] == "iris-v1"
        stages = [(s.phase, s.stage) for s in sightings]
        assert ("Progressing", "Promoting") in stages, stages
        # Then it ended: Promoted, or already Stable again (under load the watch's polls can
        # miss a phase that lasts one pass; the history above says it was a promotion).
        after_promoting = stages[stages.index(("Progressing", "Promoting")) + 1:]
        assert any(phase in ("Promoted", "Stable") for phase, _ in after_promoting), stages
        # From the moment the promotion was decided (before the status was written).
        promoted_at = parse_time(promotion["time"]).timestamp()
        after = report.versions_sent_after(promoted_at)
        assert after["iris-v2"] > 0 and after["iris-v1"] == 0, after
    finally:
        watch.stop()
        if traffic is not None:
            traffic.stop()
        down = mlops(tmp_path, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert client.own_pids(state) == []
    assert proxy_pid is not None and not is_alive(proxy_pid)
