"""Micro-benchmark of the in-memory cluster: port operations per second in one process.

    .venv/bin/python bench/cluster_ops.py [--objects 1000] [--repeat 3]

Prints one table: each operation on a cluster holding `--objects` Jobs (typical child
size, labels of 100 owners), best of `--repeat` runs; and the two ways to copy an object
that the adapter could use (it uses the orjson round trip). Figures depend on the machine
and its load: compare runs on the same machine only.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import orjson

from mlops_operator.cluster.apply import apply_plan
from mlops_operator.cluster.memory import InMemoryCluster
from mlops_operator.reconcile.plan import Plan

NS = "bench"
GV = "mlops.seed.io/v1alpha1"


def job(i: int, owners: int) -> dict[str, Any]:
    run = f"iris-t{i % owners:03d}"
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": f"job-{i:05d}", "namespace": NS, "labels": {
            "app.kubernetes.io/managed-by": "mlops-operator", "app.kubernetes.io/component": "trainer",
            "mlops.seed.io/trainingrun": run, "mlops.seed.io/model": "iris"}},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [{
            "name": "train", "image": "mlops-runtime:0.1.0", "command": ["python", "-m", "mlops_runtime.train"],
            "env": [{"name": "MLOPS_TRAIN_CONFIG", "value": '{"dataset": {"uri": "sklearn://iris"}}'},
                    {"name": "AWS_ENDPOINT_URL", "value": "http://minio:9000"}],
            "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}}]}}},
    }


def rate(fn: Callable[[int], Any], repeat: int, budget: float = 0.3) -> float:
    """Operations per second of `fn(i)`, best of `repeat` runs of about `budget` seconds."""
    best = 0.0
    for _ in range(repeat):
        n, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < budget:
            for _ in range(100):
                fn(n)
                n += 1
        best = max(best, n / elapsed)
    return best


def recursive_copy(value: Any) -> Any:
    if type(value) is dict:
        return {k: recursive_copy(v) if type(v) in (dict, list) else v for k, v in value.items()}
    if type(value) is list:
        return [recursive_copy(v) if type(v) in (dict, list) else v for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    owners = 100
    cluster = InMemoryCluster()
    jobs = [job(i, owners) for i in range(args.objects)]
    for body in jobs:
        cluster.create(body)
    owner = cluster.create({"apiVersion": GV, "kind": "TrainingRun", "metadata": {"name": "owner", "namespace": NS},
                            "spec": {}})
    stored = cluster.get("batch/v1", "Job", NS, "job-00000")
    plan = Plan(status={"phase": "Running"}, children=(job(0, owners) | {"metadata": {"name": "owned-job"}},))

    rows: list[tuple[str, float]] = [
        ("get", rate(lambda i: cluster.get("batch/v1", "Job", NS, f"job-{i % args.objects:05d}"), args.repeat)),
        (f"list by selector ({args.objects // owners} of {args.objects})",
         rate(lambda i: cluster.list("batch/v1", "Job", NS, f"mlops.seed.io/trainingrun=iris-t{i % owners:03d}"),
              args.repeat)),
        (f"list by set selector ({2 * args.objects // owners} of {args.objects})",
         rate(lambda i: cluster.list("batch/v1", "Job", NS, "mlops.seed.io/trainingrun in (iris-t001,iris-t002)"),
              args.repeat)),
        (f"list by notin selector (scan of {args.objects}, matches {args.objects // owners})",
         rate(lambda i: cluster.list("batch/v1", "Job", NS, "mlops.seed.io/trainingrun,mlops.seed.io/trainingrun"
                                     f" notin ({','.join(f'iris-t{o:03d}' for o in range(1, owners))})"),
              args.repeat)),
        ("apply, unchanged", rate(lambda i: cluster.apply(jobs[i % args.objects]), args.repeat)),
        ("apply, changed spec", rate(lambda i: cluster.apply(
            {**jobs[i % args.objects], "spec": {**jobs[0]["spec"], "backoffLimit": i}}), args.repeat)),
        ("patch_status, changed", rate(lambda i: cluster.patch_status(
            "batch/v1", "Job", NS, f"job-{i % args.objects:05d}", {"active": i}), args.repeat)),
        ("patch (labels)", rate(lambda i: cluster.patch(
            "batch/v1", "Job", NS, f"job-{i % args.objects:05d}", {"metadata": {"labels": {"n": str(i)}}}),
            args.repeat)),
        ("create + delete", rate(lambda i: (
            cluster.create({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": f"cm-{i}", "namespace": NS}, "data": {"k": "v"}}),
            cluster.delete("v1", "ConfigMap", NS, f"cm-{i}")), args.repeat) * 2),
        ("apply_plan, one child, nothing to do (get + apply)",
         rate(lambda i: apply_plan(cluster, owner | {"status": {"phase": "Running"}}, plan), args.repeat)),
        ("copy: orjson round trip", rate(lambda i: orjson.loads(orjson.dumps(stored)), args.repeat)),
        ("copy: recursive Python", rate(lambda i: recursive_copy(stored), args.repeat)),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"in-memory cluster, {args.objects} Jobs in one namespace, best of {args.repeat}")
    print(f"{'operation':<{width}}  {'ops/s':>10}  {'us/op':>8}")
    for name, ops in rows:
        print(f"{name:<{width}}  {ops:>10,.0f}  {1e6 / ops:>8.1f}")


if __name__ == "__main__":
    main()
