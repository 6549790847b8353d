"""How much the training runtime costs on top of the work itself.

For each case, runs N times (interleaved, fresh processes):
  bare      a plain script: load the data, split, fit, skops dump to a local file
  runtime   `python -m mlops_runtime.train` with onnx=false (fit, metrics, skops, all the
            JSON artifacts, uploads to S3, summary)
  +onnx     the same with onnx=true (also converts, checks parity, uploads model.onnx)
and prints the median wall time, its range (min-max), the median CPU time (user + system of
the process and of the children it waited for: the forked ONNX conversion counts, the S3
server does not) and the overheads over the bare script. CPU time is the steadier figure on a
shared machine. Target: runtime overhead <= 10 % of the bare script.

The runtime ends with os._exit once everything is written (a one-shot job gains nothing from
the interpreter's teardown of scikit-learn, pandas and scipy). The row "bare, no teardown"
shows what that alone saves, so the runtime's own work can be read off as the difference.

A second table (`--part validation`) measures what the data contract and permutation
importance add (issue 16), from the runtime's own per-step timings (`timings` in the
summary): per case, a first run makes the family's contract (its baseline.json); each later
run checks its dataset against it (schema and PSI against the same baseline as champion) and
computes importance with the defaults. It prints the median fit, validate and importance
seconds, the added share of the fit (median of the per-run ratios; target < 15 %), and the
CPU time of whole runs with both on against runs with both off.

S3: AWS_ENDPOINT_URL if set, else a SeaweedFS server started (and stopped) here.

    .venv/bin/python bench/train_overhead.py [--runs 5] [--part all|runtime|validation]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CASES = [
    ("breast_cancer", "sklearn.ensemble.RandomForestClassifier", {"n_estimators": 300}),
    ("digits", "sklearn.linear_model.LogisticRegression", {"max_iter": 1000}),
]
SEED = 0
TEST_SIZE = 0.2

BARE_SCRIPT = """
import sys, json, importlib
import skops.io
from sklearn import datasets
from sklearn.model_selection import train_test_split
name, path, params, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
X, y = getattr(datasets, "load_" + name)(return_X_y=True, as_frame=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size={test_size}, random_state={seed}, stratify=y)
module, _, cls = path.rpartition(".")
model = getattr(importlib.import_module(module), cls)(random_state={seed}, **params).fit(X_train, y_train)
open(out, "wb").write(skops.io.dumps(model))
if len(sys.argv) > 5:  # "no teardown": leave as the runtime does, without unloading modules
    import os
    os._exit(0)
""".format(test_size=TEST_SIZE, seed=SEED)


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and the children it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{command[:3]} failed ({result.returncode}):\n{result.stderr[-2000:]}\n{result.stdout[-1000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def runtime_command(dataset: str, estimator: str, params: dict, onnx: bool, output: str, log: str,
                    **extra: Any) -> list[str]:
    config = {"dataset": {"uri": f"sklearn://{dataset}", "testSize": TEST_SIZE}, "estimator": estimator,
              "params": params, "seed": SEED, "output": output, "onnx": onnx, **extra}
    path = Path(tempfile.mkdtemp()) / "config.json"
    path.write_text(json.dumps(config))
    return [sys.executable, "-m", "mlops_runtime.train", "--config", str(path), "--termination-log", log]


def row(label: str, samples: list[tuple[float, float]], bare: list[tuple[float, float]] | None) -> str:
    wall = [w for w, _ in samples]
    cpu = [c for _, c in samples]
    median, cpu_median = statistics.median(wall), statistics.median(cpu)
    spread = f"{min(wall):.2f}-{max(wall):.2f}"
    if bare is None:
        overhead = cpu_overhead = ""
    else:
        bare_wall = statistics.median(w for w, _ in bare)
        bare_cpu = statistics.median(c for _, c in bare)
        overhead = f"{(median - bare_wall) / bare_wall * 100:+.1f} %"
        cpu_overhead = f"{(cpu_median - bare_cpu) / bare_cpu * 100:+.1f} %"
    return (f"| {label:<40} | {median:6.2f} | {spread:>11} | {overhead:>8} "
            f"| {cpu_median:6.2f} | {cpu_overhead:>8} |")


VALIDATION_OFF = {"data": {"enabled": False}, "importance": {"enabled": False}}


def summary_of(log: str) -> dict[str, Any]:
    return json.loads(Path(log).read_text())


def validation_overhead(runs: int, env: dict[str, str], log: str) -> None:
    """The second table: what the data contract and importance add to a run."""
    print(f"\n| {'case (validation + importance)':<40} | fit s | validate s | importance s | added / fit "
          f"| CPU on s | CPU off s | CPU added |")
    print(f"|{'-' * 42}|------:|-----------:|-------------:|------------:|---------:|----------:|----------:|")
    for dataset, estimator, params in CASES:
        first = f"s3://bench/{dataset}/contract/"
        timed(runtime_command(dataset, estimator, params, False, first, log), env)
        ref = {"version": f"{dataset}-v1", "uri": first + "baseline.json"}
        contract = {"schema": ref, "reference": ref}
        steps: dict[str, list[float]] = {"fit": [], "validate": [], "importance": [], "ratio": []}
        cpu: dict[str, list[float]] = {"on": [], "off": []}
        for i in range(runs):
            _, cpu_on = timed(runtime_command(dataset, estimator, params, False, f"s3://bench/{dataset}/v{i}/", log,
                                              dataContract=contract), env)
            timings = summary_of(log)["timings"]
            cpu["on"].append(cpu_on)
            for step in ("fit", "validate", "importance"):
                steps[step].append(timings[step])
            steps["ratio"].append((timings["validate"] + timings["importance"]) / timings["fit"])
            _, cpu_off = timed(runtime_command(dataset, estimator, params, False, f"s3://bench/{dataset}/n{i}/", log,
                                               validation=VALIDATION_OFF), env)
            cpu["off"].append(cpu_off)
        med = {k: statistics.median(v) for k, v in {**steps, **cpu}.items()}
        short = estimator.rsplit(".", 1)[1]
        print(f"| {dataset + ' ' + short:<40} | {med['fit']:5.3f} | {med['validate']:10.3f} | "
              f"{med['importance']:12.3f} | {med['ratio'] * 100:9.1f} % | {med['on']:8.2f} | {med['off']:9.2f} | "
              f"{(med['on'] - med['off']) / med['off'] * 100:+7.1f} % |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--part", choices=("all", "runtime", "validation"), default="all")
    args = parser.parse_args()

    server = None
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if not env.get("AWS_ENDPOINT_URL"):
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
        from mlops_operator.local.seaweed import SeaweedServer

        server = SeaweedServer(Path(tempfile.mkdtemp(prefix="bench-weed-"))).start()
        env.update(AWS_ENDPOINT_URL=server.endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    log = str(work / "termination-log")
    print(f"{args.runs} runs each, interleaved; S3 at {env['AWS_ENDPOINT_URL']}; OMP_NUM_THREADS={env['OMP_NUM_THREADS']}")
    try:
        if args.part in ("all", "runtime"):
            runtime_overhead(args.runs, env, work, log)
        if args.part in ("all", "validation"):
            validation_overhead(args.runs, env, log)
    finally:
        if server is not None:
            server.stop(grace=2)


def runtime_overhead(runs: int, env: dict[str, str], work: Path, log: str) -> None:
    """The first table: the runtime against a bare script."""
    print(f"| {'case':<40} | wall s | wall range  | overhead | CPU s  | overhead |")
    print(f"|{'-' * 42}|-------:|------------:|---------:|-------:|---------:|")
    for dataset, estimator, params in CASES:
        bare_cmd = [sys.executable, "-c", BARE_SCRIPT, dataset, estimator, json.dumps(params),
                    str(work / "model.skops")]
        times: dict[str, list[tuple[float, float]]] = {"bare": [], "quick": [], "runtime": [], "onnx": []}
        for i in range(runs):
            times["bare"].append(timed(bare_cmd, env))
            times["quick"].append(timed([*bare_cmd, "no-teardown"], env))
            times["runtime"].append(timed(runtime_command(
                dataset, estimator, params, False, f"s3://bench/{dataset}/r{i}/", log), env))
            times["onnx"].append(timed(runtime_command(
                dataset, estimator, params, True, f"s3://bench/{dataset}/o{i}/", log), env))
        bare = times["bare"]
        short = estimator.rsplit(".", 1)[1]
        print(row(f"{dataset} {short}: bare script", times["bare"], None))
        print(row(f"{dataset} {short}: bare, no teardown", times["quick"], bare))
        print(row(f"{dataset} {short}: runtime, onnx=false", times["runtime"], bare))
        print(row(f"{dataset} {short}: runtime, onnx=true", times["onnx"], bare))


if __name__ == "__main__":
    main()
