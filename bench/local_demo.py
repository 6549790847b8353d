"""Wall time of the embedded default, and what clients saw, broken down by phase.

1. iris: `mlops local up -f examples/iris/ --exit-when-settled` in a fresh folder, from the
   command's start to the first prediction served through the service's stable port
   (target: within 60 s on this machine);
2. the canary of examples/iris-canary/ (a retrain, and the InferenceService rolling newer
   versions out: 10 -> 25 -> 50 -> 100 %, 10 s a step), with synthetic traffic and label
   feedback at 20 requests/s: from the challenger's Validated to Promoted at that interval;
3. a canary that rolls back a deliberately worse version (tests/local/manifests/worse.yaml),
   with a kill -9 of the local instance at its first step and `up` again: the data plane
   must answer throughout (failed requests after the kill: target 0).

Each phase is timed from the moment its progress line reaches the terminal of `mlops local
up` (which polls every 0.25 s), so the figures are what a user sees. The traffic counts
failed requests during the whole walk, and the answers of the old champion to requests
sent after the promotion was recorded (the status' `Promoted`; target 0). The instance is
stopped at the end (`mlops local down`).

    .venv/bin/python bench/local_demo.py [--runs 1] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))
MANIFESTS = ROOT / "tests" / "local" / "manifests"
TARGET_SECONDS = 60.0
FIRST_PREDICTION = "first prediction served"
KILLED = "instance killed (kill -9)"

IRIS_PHASES = [
    ("S3 server answers", r"S3 \(SeaweedFS\) answers"),
    ("first trial running", r"trial iris-t\d+ running"),
    ("search done (6 trials)", r"experiment iris succeeded"),
    ("version validated", r"model version iris-v1 validated"),
    ("champion serving", r"service iris: champion iris-v1 answers"),
]
PROMOTE_PHASES = [
    ("retrain done (2 trials)", r"experiment iris-retrain succeeded"),
    ("challenger validated", r"model version iris-v2 validated"),
    ("canary started", r"canary iris: challenger iris-v2"),
    ("10 % to the challenger", r"canary iris: step 1/4"),
    ("25 %", r"canary iris: step 2/4"),
    ("50 %", r"canary iris: step 3/4"),
    ("100 %", r"canary iris: step 4/4"),
    ("promoted", r"iris-v2 PROMOTED"),
]
ROLLBACK_PHASES = [
    ("training done (1 trial)", r"experiment iris-worse succeeded"),
    ("version validated", r"model version iris-v3 validated"),
    ("canary started", r"canary iris: challenger iris-v3"),
    ("10 % to the challenger", r"canary iris: step 1/4"),
    ("rolled back", r"iris-v3 ROLLED BACK"),
]


def run_up(cwd: Path, args: list[str], phases: list[tuple[str, str]], first_prediction: bool = False,
           kill_at: str | None = None, started: float | None = None) -> tuple[dict[str, float], float, int]:
    """Run `mlops local up ARGS --exit-when-settled`; the seconds (since `started`, default
    now) at which each phase's line appeared (and, with `first_prediction`, at which the
    service first answered a prediction), the seconds to the command's exit, and its exit
    status. With `kill_at` (a phase's name), the instance is killed with SIGKILL as that
    phase's line appears (the phase "instance killed"; `up` then exits with status 1)."""
    started = time.monotonic() if started is None else started
    process = subprocess.Popen([sys.executable, "-m", "mlops_operator", "local", "up", *args,
                                "--exit-when-settled", "--timeout", "600"],
                               cwd=cwd, stdout=subprocess.PIPE, text=True)
    seen: dict[str, float] = {}
    if first_prediction:
        threading.Thread(target=probe_first_prediction, args=(cwd, started, seen, process), daemon=True).start()
    assert process.stdout is not None
    for line in process.stdout:
        now = time.monotonic() - started
        for name, pattern in phases:
            if name not in seen and re.search(pattern, line):
                seen[name] = now
                if name == kill_at:
                    kill_instance(cwd)
                    seen[KILLED] = time.monotonic() - started
    code = process.wait()
    return seen, time.monotonic() - started, code


def kill_instance(cwd: Path) -> None:
    """kill -9 of the local instance (not of the processes it started)."""
    record = json.loads((cwd / ".mlops" / "instance.json").read_text())
    os.kill(int(record["pid"]), signal.SIGKILL)


def probe_first_prediction(cwd: Path, started: float, seen: dict[str, float], process: subprocess.Popen[str]) -> None:
    """Ask for a prediction every 0.1 s from the moment the service has a URL; note when
    the first one is answered."""
    body = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode()
    while FIRST_PREDICTION not in seen and time.monotonic() - started < 600:
        try:
            request = urllib.request.Request(service_url(cwd) + "/predict", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    seen[FIRST_PREDICTION] = time.monotonic() - started
                    return
        except (OSError, AssertionError, IndexError, KeyError, TypeError, ValueError):
            pass  # no instance, no service URL or no answer yet
        time.sleep(0.1)


def mlops(cwd: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "mlops_operator", "local", *args], cwd=cwd, text=True,
                          capture_output=True, check=True).stdout


def service_url(cwd: Path) -> str:
    from mlops_operator.local import client

    control = client.attach(client.StateDir(cwd / ".mlops"))
    assert control is not None, "no local instance"
    return str(control.status()["services"][0]["url"])


def one_run(folder: Path) -> dict[str, dict[str, float]]:
    from mlops_operator.local.traffic import StatusWatch, Traffic, iris_rows
    from mlops_operator.rollout.state_machine import parse_time

    results: dict[str, dict[str, float]] = {}
    seen, total, code = run_up(folder, ["-f", str(ROOT / "examples" / "iris")], IRIS_PHASES, first_prediction=True)
    if code != 0:
        raise SystemExit(f"iris: mlops local up exited with {code}")
    results["iris: up -> serving champion"] = {**seen, "settled (command returns)": total}

    url = service_url(folder)
    rows, labels = iris_rows()
    traffic = Traffic(url, rows, labels, rate=20).start()
    watch = StatusWatch(folder / ".mlops", "iris").start()
    try:
        seen, total, code = run_up(folder, ["-f", str(ROOT / "examples" / "iris-canary")], PROMOTE_PHASES)
        if code != 0:
            raise SystemExit(f"canary: mlops local up exited with {code}")
        results["canary that promotes (from apply)"] = {**seen, "settled (command returns)": total}
        if "challenger validated" in seen and "promoted" in seen:
            results["durations"] = {"challenger Validated -> Promoted": seen["promoted"] - seen["challenger validated"]}
        promoted_at = promotion_time(folder, parse_time)
        started = time.monotonic()
        seen, total, code = run_up(folder, ["-f", str(MANIFESTS / "worse.yaml")], ROLLBACK_PHASES,
                                   kill_at="10 % to the challenger", started=started)
        killed_at = time.time() - (time.monotonic() - started - seen[KILLED]) if KILLED in seen else None
        if KILLED in seen:
            restarted = time.monotonic() - started
            resumed, total, code = run_up(folder, [], ROLLBACK_PHASES, started=started)
            # A phase seen before the kill keeps its first time (a restart may show it again).
            seen = {**seen, "`up` again": restarted, **{k: v for k, v in resumed.items() if k not in seen}}
        if code != 0:
            raise SystemExit(f"rollback: mlops local up exited with {code}")
        results["canary that rolls back, kill -9 of the instance at 10 % (from apply)"] = {
            **seen, "settled (command returns)": total}
    finally:
        report = traffic.stop()
        sightings = watch.stop()
    promoting_seen = any(s.stage == "Promoting" for s in sightings)
    results["traffic"] = {
        "requests": report.sent,
        "answered": report.answered,
        "failed": len(report.failures),
        "feedback lost": len(report.feedback_failures),
        "iris-v1 answers after Promoted": report.versions_sent_after(promoted_at)["iris-v1"]
        if promoted_at is not None else float("nan"),
        "rolloutStage Promoting seen": float(promoting_seen),
        "sent after the kill -9": sum(1 for a in report.answers if killed_at and a.sent_at >= killed_at),
        "failed after the kill -9": sum(1 for a in report.answers if killed_at and a.sent_at >= killed_at
                                        and a.code != 200),
    }
    for failure in report.failures[:10]:
        print(f"failed request: {failure}", file=sys.stderr)
    return results


def promotion_time(folder: Path, parse_time) -> float | None:  # type: ignore[no-untyped-def]
    """When the status recorded iris-v2's promotion (time.time())."""
    result = subprocess.run([sys.executable, "-m", "mlops_operator", "local", "get", "isvc", "iris", "-o", "json"],
                            cwd=folder, text=True, capture_output=True, timeout=60)
    history = (json.loads(result.stdout).get("status") or {}).get("history") or [] if result.returncode == 0 else []
    times = [parse_time(h["time"]).timestamp() for h in history
             if h.get("action") == "Promoted" and h.get("version") == "iris-v2"]
    return times[0] if times else None


def print_sections(runs: list[dict[str, dict[str, float]]]) -> None:
    """The runs' medians, section by section: phases in the order they happened (with the
    time since the previous one), then "durations" and "traffic" as they are. Shared with
    bench/cluster_demo.py."""
    for section in runs[0]:
        print(section)
        previous = 0.0
        for phase in sorted(runs[0][section], key=lambda name: runs[0][section][name]) \
                if section not in ("traffic", "durations") else runs[0][section]:
            values = [run[section][phase] for run in runs if phase in run[section]]
            value = statistics.median(values)
            spread = f"  ({min(values):.1f}-{max(values):.1f})" if len(values) > 1 else ""
            if section == "traffic":
                print(f"  {phase:<34} {value:>8.1f}" if value % 1 else f"  {phase:<34} {value:>8.0f}")
            elif section == "durations":
                print(f"  {phase:<34} {value:>8.1f} s{spread}")
            else:
                print(f"  {phase:<34} {value:>8.1f} s   +{value - previous:>5.1f} s{spread}")
                previous = value
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the instance's folder (printed)")
    options = parser.parse_args()
    runs: list[dict[str, dict[str, float]]] = []
    for index in range(options.runs):
        folder = Path(tempfile.mkdtemp(prefix="mlops-local-bench-"))
        try:
            runs.append(one_run(folder))
        finally:
            mlops(folder, "down")
        if options.keep:
            print(f"run {index + 1}: {folder}")
    print(f"\nmlops local: wall seconds since the command started (median of {len(runs)} run(s); "
          f"the machine is shared, figures are noisy)\n")
    print_sections(runs)
    section = "iris: up -> serving champion"
    firsts = [run[section][FIRST_PREDICTION] for run in runs if FIRST_PREDICTION in run[section]]
    serving = statistics.median(firsts) if firsts else float("inf")
    verdict = "met" if serving <= TARGET_SECONDS else "MISSED"
    print(f"target: first prediction served within {TARGET_SECONDS:.0f} s of `up`: {serving:.1f} s ({verdict})")
    old = [run["traffic"]["iris-v1 answers after Promoted"] for run in runs]
    print(f"target: 0 answers from the old version after Promoted: {old}")
    print(f"target: 0 failed requests during the walk: {[run['traffic']['failed'] for run in runs]}")


if __name__ == "__main__":
    main()
