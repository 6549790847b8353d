"""Control-plane speed on the in-memory cluster, driving the controllers as the local loop
does (kmock slows down superlinearly as objects accumulate: it proves wiring, not speed).

1. Fan-out: create an Experiment with maxTrials=200, parallelism=200 and time until all 200
   Jobs exist and every TrainingRun's status is written (target: within 1 s).
2. Throughput: 1,000 TrainingRuns reconciled, first pass (each creates its Job and writes
   its status) and a steady-state pass (nothing to do); target >= 2,000 objects/s.

Usage: .venv/bin/python bench/control_plane.py [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from mlops_operator.cluster.memory import InMemoryCluster
from mlops_operator.controllers import experiment, training_run
from mlops_operator.reconcile.common import Settings

API = "mlops.seed.io/v1alpha1"
NS = "bench"
SETTINGS = Settings(s3_endpoint="http://s3.bench:9000")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def experiment_manifest(trials: int) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "Experiment", "metadata": {"name": "fanout", "namespace": NS},
            "spec": {"model": "iris", "dataset": {"uri": "sklearn://iris"},
                     "estimator": "sklearn.linear_model.LogisticRegression",
                     "search": {"algorithm": "random", "maxTrials": trials, "parallelism": trials,
                                "space": {"C": {"min": 0.01, "max": 100, "distribution": "logUniform"},
                                          "max_iter": {"type": "int", "min": 100, "max": 1000}}}}}


def training_run_manifest(index: int) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "TrainingRun", "metadata": {"name": f"run-{index:05d}", "namespace": NS},
            "spec": {"model": "iris", "dataset": {"uri": "sklearn://iris"},
                     "estimator": "sklearn.linear_model.LogisticRegression", "params": {"C": index / 10},
                     "objective": {"metric": "accuracy"}}}


def fan_out(trials: int) -> tuple[float, int, int]:
    """Seconds from create to all Jobs and all TrainingRun statuses; Jobs; statuses."""
    cluster = InMemoryCluster(now=lambda: NOW)
    started = time.perf_counter()
    exp = cluster.create(experiment_manifest(trials))
    experiment.sync(cluster, exp, NOW, SETTINGS)
    for run in cluster.list(API, "TrainingRun", NS, {"mlops.seed.io/experiment": "fanout"}):
        training_run.sync(cluster, run, NOW, SETTINGS)
    experiment.sync(cluster, cluster.get(API, "Experiment", NS, "fanout"), NOW, SETTINGS)
    elapsed = time.perf_counter() - started
    jobs = len(cluster.list("batch/v1", "Job", NS))
    statuses = sum(1 for r in cluster.list(API, "TrainingRun", NS) if (r.get("status") or {}).get("jobName"))
    return elapsed, jobs, statuses


def throughput(count: int) -> tuple[float, float]:
    """Objects/s of a first pass (Job + status each) and of a steady-state pass."""
    cluster = InMemoryCluster(now=lambda: NOW)
    for index in range(count):
        cluster.create(training_run_manifest(index))
    runs = cluster.list(API, "TrainingRun", NS)
    started = time.perf_counter()
    for run in runs:
        training_run.sync(cluster, run, NOW, SETTINGS)
    first = count / (time.perf_counter() - started)
    runs = cluster.list(API, "TrainingRun", NS)
    revision = cluster.revision
    started = time.perf_counter()
    for run in runs:
        training_run.sync(cluster, run, NOW, SETTINGS)
    steady = count / (time.perf_counter() - started)
    assert cluster.revision == revision, "a steady-state pass must write nothing"
    assert len(cluster.list("batch/v1", "Job", NS)) == count
    return first, steady


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    fan_out(20)  # warm up imports and caches
    fanouts = [fan_out(200) for _ in range(args.repeat)]
    rates = [throughput(1000) for _ in range(args.repeat)]
    seconds = [f[0] for f in fanouts]
    print(f"{'measure':<58} {'median':>10} {'best':>10} {'target':>10}")
    print(f"{'Experiment 200x200: create -> 200 Jobs + 200 statuses (s)':<58} "
          f"{statistics.median(seconds):>10.3f} {min(seconds):>10.3f} {'<= 1.0':>10}")
    print(f"{'  Jobs created / TrainingRun statuses written':<58} {fanouts[0][1]:>10} {fanouts[0][2]:>10}")
    first = [r[0] for r in rates]
    steady = [r[1] for r in rates]
    print(f"{'1,000 TrainingRuns, first pass (Job + status), objects/s':<58} "
          f"{statistics.median(first):>10.0f} {max(first):>10.0f} {'>= 2000':>10}")
    print(f"{'1,000 TrainingRuns, steady state (no writes), objects/s':<58} "
          f"{statistics.median(steady):>10.0f} {max(steady):>10.0f} {'>= 2000':>10}")


if __name__ == "__main__":
    main()
