"""Control-plane speed on the in-memory cluster, driving the controllers as the local loop
does (kmock slows down superlinearly as objects accumulate: it proves wiring, not speed).

1. Fan-out: create an Experiment with maxTrials=200, parallelism=200 and time until all 200
   Jobs exist and every TrainingRun's status is written (target: within 1 s).
2. Throughput: 1,000 TrainingRuns reconciled, first pass (each creates its Job and writes
   its status) and a steady-state pass (nothing to do); target >= 2,000 objects/s.

With `--real`, the same two measures also run against a real control plane (etcd,
kube-apiserver and kube-controller-manager of `mlops dev cluster`, no node: the trainer
Pods stay Pending) with the operator as `mlops run` in its own process, and the table adds
reconciles per second, API requests per reconcile (from the API server's
`apiserver_request_total`, everyone's requests included: the Job controller's too) and the
operator's resident memory.

Usage: .venv/bin/python bench/control_plane.py [--repeat N] [--real]
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


# ---------------------------------------------------------------- against a real API server


def _metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _get(url: str, token: str | None = None) -> str:
    import ssl
    import urllib.request

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=10, context=context if url.startswith("https") else None) as response:
        return response.read().decode()


def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RealCluster:
    """A control plane without a node, our CRDs, and `mlops run` watching it."""

    def __init__(self, directory: str) -> None:
        import os
        import subprocess
        import sys
        from pathlib import Path

        from mlops_operator import crdgen
        from mlops_operator.cluster.kubernetes import KubernetesCluster
        from mlops_operator.devcluster import build, cluster, control_plane
        from mlops_operator.local.proxy import free_port

        binaries, _ = build.build(log=lambda line: print(line, file=sys.stderr))
        self.plane = control_plane.start(Path(directory), binaries)
        cluster.kubectl(self.plane, "apply", "--server-side", "-f", str(crdgen.default_crds_dir()))
        cluster.kubectl(self.plane, "wait", "--for=condition=Established", "-f", str(crdgen.default_crds_dir()))
        self.api = KubernetesCluster.from_kubeconfig(str(self.plane.kubeconfig))
        self.metrics_port = free_port()
        env = {**os.environ, "KUBECONFIG": str(self.plane.kubeconfig), "AWS_ENDPOINT_URL": "http://s3.bench:9000"}
        self.log = open(Path(directory) / "operator.log", "wb")
        self.operator = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlops"), "run", "-A", "--standalone", "--liveness-port", "0",
             "--metrics-port", str(self.metrics_port), "--host", "127.0.0.1"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait(lambda: self._try(lambda: _get(f"http://127.0.0.1:{self.metrics_port}/metrics")), 120)

    @staticmethod
    def _try(fn: Any) -> Any:
        try:
            return fn()
        except OSError:
            return None

    @staticmethod
    def _wait(check: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError("benchmark condition not reached")

    def counters(self) -> tuple[float, float]:
        """(API requests served so far, reconciles the operator finished so far)."""
        api = _metric_sum(_get(f"{self.plane.api_url}/metrics", self.plane.admin_token), "apiserver_request_total")
        ours = _metric_sum(_get(f"http://127.0.0.1:{self.metrics_port}/metrics"), "mlops_reconcile_total")
        return api, ours

    def namespace(self, name: str) -> None:
        self.api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def measure(self, create: Any, done: Any, timeout: float = 900) -> tuple[float, float, float]:
        """Seconds from the first create until `done`, reconciles/s, API requests per reconcile."""
        api_before, ours_before = self.counters()
        started = time.perf_counter()
        create()
        self._wait(done, timeout)
        elapsed = time.perf_counter() - started
        api_after, ours_after = self.counters()
        reconciles = max(1.0, ours_after - ours_before)
        return elapsed, reconciles / elapsed, (api_after - api_before) / reconciles

    def close(self) -> None:
        self.operator.terminate()
        try:
            self.operator.wait(20)
        except Exception:
            self.operator.kill()
        self.log.close()
        self.plane.stop()


def real_figures() -> dict[str, float]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mlops-bench-") as directory:
        real = RealCluster(directory)
        try:
            real.namespace(NS)
            api = real.api
            fan, fan_rate, fan_requests = real.measure(
                lambda: api.create(experiment_manifest(200)),
                lambda: len(api.list("batch/v1", "Job", NS)) >= 200 and sum(
                    1 for r in api.list(API, "TrainingRun", NS) if (r.get("status") or {}).get("jobName")) >= 200)
            real.namespace("bench-runs")

            def create_runs() -> None:
                for index in range(1000):
                    manifest = training_run_manifest(index)
                    manifest["metadata"]["namespace"] = "bench-runs"
                    api.create(manifest)

            runs, runs_rate, runs_requests = real.measure(
                create_runs, lambda: sum(1 for r in api.list(API, "TrainingRun", "bench-runs")
                                         if (r.get("status") or {}).get("jobName")) >= 1000)
            return {"fan_out_s": fan, "fan_out_rate": fan_rate, "fan_out_requests": fan_requests,
                    "runs_s": runs, "runs_rate": 1000 / runs, "runs_reconcile_rate": runs_rate,
                    "runs_requests": runs_requests, "rss_mb": _rss_mb(real.operator.pid)}
        finally:
            real.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--real", action="store_true", help="also measure against a real control plane")
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
    if not args.real:
        return
    real = real_figures()
    print()
    print(f"{'measure (one run each)':<58} {'in-memory':>10} {'real API':>10}")
    print(f"{'Experiment 200x200: create -> 200 Jobs + 200 statuses (s)':<58} "
          f"{statistics.median(seconds):>10.3f} {real['fan_out_s']:>10.2f}")
    print(f"{'  reconciles/s during the fan-out':<58} {'':>10} {real['fan_out_rate']:>10.1f}")
    print(f"{'  API requests per reconcile (all clients)':<58} {'':>10} {real['fan_out_requests']:>10.1f}")
    print(f"{'1,000 TrainingRuns: created -> Job + status each, objects/s':<58} "
          f"{statistics.median(first):>10.0f} {real['runs_rate']:>10.1f}")
    print(f"{'  reconciles/s':<58} {'':>10} {real['runs_reconcile_rate']:>10.1f}")
    print(f"{'  API requests per reconcile (all clients)':<58} {'':>10} {real['runs_requests']:>10.1f}")
    print(f"{'operator resident memory after both (MB)':<58} {'':>10} {real['rss_mb']:>10.0f}")


if __name__ == "__main__":
    main()
