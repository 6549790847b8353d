"""Wall time of the embedded default, broken down by phase.

1. iris: `mlops local up -f examples/iris/ --exit-when-settled` in a fresh folder, from the
   command's start to a serving champion (target: within 60 s on this machine);
2. a full canary that promotes: a second Experiment and the InferenceService set to roll
   newer versions out (tests/local/manifests/retrain.yaml: steps 50 -> 100 %, interval 3 s),
   with synthetic traffic and label feedback at 20 requests/s;
3. a canary that rolls back a deliberately worse version (tests/local/manifests/worse.yaml).

Each phase is timed from the moment its progress line reaches the terminal of `mlops local
up` (which polls every 0.25 s), so the figures are what a user sees. The instance is
stopped at the end (`mlops local down`).

    .venv/bin/python bench/local_demo.py [--runs 1] [--keep]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "tests" / "local" / "manifests"
TARGET_SECONDS = 60.0

IRIS_PHASES = [
    ("S3 server answers", r"S3 \(SeaweedFS\) answers"),
    ("first trial running", r"trial iris-t\d+ running"),
    ("search done (6 trials)", r"experiment iris succeeded"),
    ("version validated", r"model version iris-v1 validated"),
    ("champion serving", r"service iris: champion iris-v1 answers"),
]
PROMOTE_PHASES = [
    ("retrain done (2 trials)", r"experiment iris-retrain succeeded"),
    ("version validated", r"model version iris-v2 validated"),
    ("canary started", r"canary iris: challenger iris-v2"),
    ("50 % to the challenger", r"canary iris: step 1/2"),
    ("analysis at 50 %", r"canary iris: analysis at 50%"),
    ("analysis at 100 %", r"canary iris: analysis at 100%"),
    ("promoted", r"iris-v2 PROMOTED"),
]
ROLLBACK_PHASES = [
    ("training done (1 trial)", r"experiment iris-worse succeeded"),
    ("version validated", r"model version iris-v3 validated"),
    ("canary started", r"canary iris: challenger iris-v3"),
    ("50 % to the challenger", r"canary iris: step 1/2"),
    ("rolled back", r"iris-v3 ROLLED BACK"),
]


def run_up(cwd: Path, args: list[str], phases: list[tuple[str, str]]) -> tuple[dict[str, float], float, int]:
    """Run `mlops local up ARGS --exit-when-settled`; the seconds at which each phase's line
    appeared, the seconds to the command's exit, and its exit status."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "mlops_operator", "local", "up", *args,
                                "--exit-when-settled", "--timeout", "600"],
                               cwd=cwd, stdout=subprocess.PIPE, text=True)
    seen: dict[str, float] = {}
    assert process.stdout is not None
    for line in process.stdout:
        now = time.monotonic() - started
        for name, pattern in phases:
            if name not in seen and re.search(pattern, line):
                seen[name] = now
    code = process.wait()
    return seen, time.monotonic() - started, code


def mlops(cwd: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "mlops_operator", "local", *args], cwd=cwd, text=True,
                          capture_output=True, check=True).stdout


def service_url(cwd: Path) -> str:
    sys.path.insert(0, str(ROOT / "operator"))
    from mlops_operator.local import client

    control = client.attach(client.StateDir(cwd / ".mlops"))
    assert control is not None, "no local instance"
    return str(control.status()["services"][0]["url"])


def one_run(folder: Path) -> dict[str, dict[str, float]]:
    from mlops_operator.local.traffic import Traffic, iris_rows

    results: dict[str, dict[str, float]] = {}
    seen, total, code = run_up(folder, ["-f", str(ROOT / "examples" / "iris")], IRIS_PHASES)
    if code != 0:
        raise SystemExit(f"iris: mlops local up exited with {code}")
    url = service_url(folder)
    request = urllib.request.Request(url + "/predict", data=json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["predictions"] == [0]
    results["iris: up -> serving champion"] = {**seen, "settled (command returns)": total}

    rows, labels = iris_rows()
    traffic = Traffic(url, rows, labels, rate=20).start()
    try:
        seen, total, code = run_up(folder, ["-f", str(MANIFESTS / "retrain.yaml")], PROMOTE_PHASES)
        if code != 0:
            raise SystemExit(f"canary: mlops local up exited with {code}")
        results["canary that promotes (from apply)"] = {**seen, "settled (command returns)": total}
        seen, total, code = run_up(folder, ["-f", str(MANIFESTS / "worse.yaml")], ROLLBACK_PHASES)
        if code != 0:
            raise SystemExit(f"rollback: mlops local up exited with {code}")
        results["canary that rolls back (from apply)"] = {**seen, "settled (command returns)": total}
    finally:
        report = traffic.stop()
    results["traffic"] = {"requests": report.sent, "answered": report.answered,
                          "failed": len(report.failures), "feedback lost": len(report.feedback_failures)}
    return results


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
    for section in runs[0]:
        print(section)
        previous = 0.0
        for phase in runs[0][section]:
            values = [run[section][phase] for run in runs if phase in run[section]]
            value = statistics.median(values)
            if section == "traffic":
                print(f"  {phase:<28} {value:>8.0f}")
                continue
            spread = f"  ({min(values):.1f}-{max(values):.1f})" if len(values) > 1 else ""
            print(f"  {phase:<28} {value:>8.1f} s   +{value - previous:>5.1f} s{spread}")
            previous = value
        print()
    serving = statistics.median(run["iris: up -> serving champion"]["champion serving"] for run in runs)
    verdict = "met" if serving <= TARGET_SECONDS else "MISSED"
    print(f"target: champion serving within {TARGET_SECONDS:.0f} s of `up`: {serving:.1f} s ({verdict})")


if __name__ == "__main__":
    main()
