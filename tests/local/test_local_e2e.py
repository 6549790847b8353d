"""The embedded default end to end, with real processes, through the `mlops local` CLI:

1. `up -f examples/iris/ --exit-when-settled`: the iris search, a registered and validated
   version, a serving champion on a stable localhost port;
2. a second Experiment (and the InferenceService changed to roll newer versions out as a
   short canary): its best version becomes the challenger and is promoted through the
   canary, on synthetic traffic with label feedback;
3. a deliberately worse Experiment: its version reaches the canary and is rolled back;
4. predictions answered through the stable port the whole time, and none by the old
   champion once the status says it was promoted;
5. `down`: no process of ours is left (checked by pid and by a scan of /proc), the data
   stays; a second `up` resumes and serves on the same port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from mlops_operator.local import client
from mlops_operator.local.processes import is_alive
from mlops_operator.local.state import StateDir
from mlops_operator.local.traffic import StatusWatch, Traffic, iris_rows
from mlops_operator.rollout.state_machine import parse_time

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = Path(__file__).with_name("manifests")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def mlops(cwd: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlops_operator", "local", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout)


def processes_using(folder: Path) -> list[str]:
    """Processes whose command line names `folder` or whose working directory is inside it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if str(folder) in cmdline or cwd.startswith(str(folder)):
            found.append(f"{entry.name}: {cmdline[:120]}")
    return found


def isvc(cwd: Path) -> dict[str, Any]:
    result = mlops(cwd, "get", "isvc", "iris", "-o", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_iris_to_champion_then_a_promoted_and_a_rolled_back_canary(tmp_path: Path) -> None:
    state = tmp_path / ".mlops"
    traffic: Traffic | None = None
    try:
        up = mlops(tmp_path, "up", "-f", str(ROOT / "examples" / "iris"), "--exit-when-settled", "--timeout", "300")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "leaderboard of iris" in up.stdout
        assert "model version iris-v1 validated" in up.stdout
        status = client.attach(StateDir(state)).status()  # type: ignore[union-attr]
        [service] = status["services"]
        url = service["url"]
        assert service["champion"] == "iris-v1" and url.startswith("http://127.0.0.1:")
        assert f"answers at {url}" in up.stdout and "curl -s" in up.stdout
        with urllib.request.urlopen(urllib.request.Request(
                url + "/predict", data=json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode(),
                headers={"Content-Type": "application/json"}), timeout=10) as response:
            assert json.loads(response.read())["predictions"] == [0]

        rows, labels = iris_rows()
        traffic = Traffic(url, rows, labels, rate=20).start()
        watch = StatusWatch(state, "iris").start()

        # What the instance reported from here on. `up` prints only what comes after it starts,
        # and on a loaded machine the canary can begin before that Python process is up.
        progress = StateDir(state).progress_log
        mark = progress.stat().st_size
        applied = mlops(tmp_path, "apply", "-f", str(MANIFESTS / "retrain.yaml"))
        assert applied.returncode == 0, applied.stderr
        assert "experiments.mlops.seed.io/iris-retrain created" in applied.stdout
        assert "inferenceservices.mlops.seed.io/iris configured" in applied.stdout
        promoted = mlops(tmp_path, "up", "--exit-when-settled", "--timeout", "300")
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        assert "settled" in promoted.stdout
        reported = progress.read_bytes()[mark:].decode()
        assert "canary iris: challenger iris-v2" in reported and "iris-v2 PROMOTED" in reported, reported
        status_after_promotion = isvc(tmp_path)["status"]
        assert status_after_promotion["champion"] == "iris-v2"
        assert [h["action"] for h in status_after_promotion["history"]][-1] == "Promoted"
        # Gap-free: Promoting was seen, and from the promotion on iris-v1 answered nothing.
        assert ("Progressing", "Promoting") in [(s.phase, s.stage) for s in watch.stop()]
        promoted_at = parse_time(status_after_promotion["history"][-1]["time"]).timestamp()
        after_promotion = traffic.snapshot().versions_sent_after(promoted_at)
        assert after_promotion["iris-v1"] == 0 and after_promotion["iris-v2"] > 0, after_promotion

        mark = progress.stat().st_size
        applied = mlops(tmp_path, "apply", "-f", str(MANIFESTS / "worse.yaml"))
        assert applied.returncode == 0, applied.stderr
        rolled_back = mlops(tmp_path, "up", "--exit-when-settled", "--timeout", "300")
        assert rolled_back.returncode == 0, rolled_back.stdout + rolled_back.stderr  # a rollback is no failure
        assert "settled" in rolled_back.stdout
        reported = progress.read_bytes()[mark:].decode()
        assert "iris-v3 ROLLED BACK" in reported, reported
        final = isvc(tmp_path)["status"]
        assert (final["phase"], final["champion"]) == ("RolledBack", "iris-v2")
        assert "iris-v3" in final["rolledBackVersions"]

        report = traffic.stop()
        traffic = None
        assert report.failures == [], "\n".join(report.failures)
        assert report.answered == report.sent
        # Only labels of requests answered by a process replaced since are lost (404).
        assert all(" 404 " in f and "unknown request id" in f for f in report.feedback_failures), \
            report.feedback_failures
        assert report.feedback + len(report.feedback_failures) == report.answered
        assert report.feedback > 0.95 * report.answered
        assert {"iris-v1", "iris-v2", "iris-v3"} <= set(report.by_version)

        listed = mlops(tmp_path, "get", "mv")
        assert listed.returncode == 0
        assert "iris-v3" in listed.stdout and "rolledBack" in listed.stdout

        ours = client.own_pids(state)
        assert len(ours) >= 4  # the instance, the S3 server, the champion and the router
    finally:
        if traffic is not None:
            traffic.stop()
        down = mlops(tmp_path, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert [pid for pid in ours if is_alive(pid)] == []
    assert processes_using(tmp_path) == []
    assert (state / "state.json").exists() and any((state / "s3").iterdir())

    again = mlops(tmp_path, "up", "--exit-when-settled", "--timeout", "120")
    try:
        assert again.returncode == 0, again.stdout + again.stderr
        assert "resuming" in again.stdout
        with urllib.request.urlopen(urllib.request.Request(
                url + "/predict", data=json.dumps({"instances": [[6.7, 3.0, 5.2, 2.3]]}).encode(),
                headers={"Content-Type": "application/json"}), timeout=10) as response:
            answer = json.loads(response.read())
        assert (answer["version"], answer["predictions"]) == ("iris-v2", [2])
    finally:
        down = mlops(tmp_path, "down")
    assert down.returncode == 0
    deadline = time.monotonic() + 60
    while processes_using(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_using(tmp_path) == []
