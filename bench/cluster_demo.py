"""The counterpart of bench/local_demo.py on the real control plane (etcd, kube-apiserver,
kube-controller-manager and the node stand-in of `mlops dev cluster up`, with the Pod
network), with the operator as `mlops run`:

1. `kubectl apply -f examples/iris/`: from the apply to the first prediction served through
   the InferenceService's Service (its ClusterIP);
2. `kubectl apply -f examples/iris-canary/` under synthetic traffic with label feedback at
   20 requests/s through that Service: from the challenger's Validated to Promoted at the
   example's interval (10 -> 25 -> 50 -> 100 %, 10 s a step);
3. what the clients saw: failed requests during the walk (target 0), and answers of the old
   version to requests sent after the status said Promoted (target 0).

Each phase is the first moment a status poll (every 0.25 s) saw it, in seconds since the
apply. The world (a namespace with the S3 Secret, the operator's process, the traffic and
the status watch) is the control-plane tier's own (tests/cluster/serving_world.py); the S3
server is a SeaweedFS started here. Everything is stopped by pid at the end.

    .venv/bin/python bench/cluster_demo.py [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "tests" / "cluster")]

from control_plane_world import Cluster, eventually, load_yaml  # noqa: E402
from serving_world import ServingWorld, pod_network_problem, serving_world  # noqa: E402

TARGET_SECONDS = 60.0
SERVING = {"mlops.seed.io/inferenceservice": "iris"}


class Milestones:
    """Polls `checks` (name -> predicate on the world) every 0.25 s in a thread; keeps the
    seconds since `started` at which each first held."""

    def __init__(self, world: ServingWorld, checks: dict[str, Callable[[ServingWorld], Any]]) -> None:
        self.world, self.checks = world, checks
        self.started = time.monotonic()
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Milestones:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join(10)
        return dict(self.seen)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, check in self.checks.items():
                if name in self.seen:
                    continue
                try:
                    if check(self.world):
                        self.seen[name] = time.monotonic() - self.started
                except Exception:  # not there yet (NotFound, no Service, no answer)
                    pass
            self._stop.wait(0.25)


def phase(kind: str, name: str, value: str) -> Callable[[ServingWorld], bool]:
    return lambda w: w.status(kind, name).get("phase") == value


def isvc(check: Callable[[dict[str, Any]], Any]) -> Callable[[ServingWorld], Any]:
    return lambda w: check(w.status("InferenceService", "iris"))


IRIS = {
    "first trial running": lambda w: any((r.get("status") or {}).get("phase") == "Running"
                                         for r in w.list("TrainingRun")),
    "search done (6 trials)": phase("Experiment", "iris", "Succeeded"),
    "iris-v1 validated": phase("ModelVersion", "iris-v1", "Validated"),
    "InferenceService Ready": isvc(lambda s: any(c["type"] == "Ready" and c["status"] == "True"
                                                 for c in s.get("conditions", []))),
    "first prediction served": lambda w: w.answers_once("iris"),
}
CANARY = {
    "retrain done (2 trials)": phase("Experiment", "iris-retrain", "Succeeded"),
    "iris-v2 validated": phase("ModelVersion", "iris-v2", "Validated"),
    "canary started": isvc(lambda s: s.get("challenger") == "iris-v2"),
    **{f"{w} % to the challenger": isvc(lambda s, w=w: (s.get("traffic") or {}).get("challenger") == w)
       for w in (10, 25, 50, 100)},
    "Promoting": isvc(lambda s: s.get("rolloutStage") == "Promoting"),
    "Promoted": isvc(lambda s: s.get("phase") == "Promoted" and s.get("champion") == "iris-v2"),
    "challenger drained": isvc(lambda s: s.get("champion") == "iris-v2" and s.get("rolloutStage") is None),
}


def run(world: ServingWorld) -> dict[str, dict[str, float]]:
    from serving_world import rate_of

    results: dict[str, dict[str, float]] = {}
    marks = Milestones(world, IRIS).start()
    world.apply(*load_yaml(ROOT / "examples" / "iris" / "experiment.yaml"),
                *load_yaml(ROOT / "examples" / "iris" / "inferenceservice.yaml"))
    world.wait_status("ModelVersion", "iris-v1", "iris-v1 Validated", lambda s: s.get("phase") == "Validated",
                      timeout=900)
    problem = pod_network_problem(world, SERVING)
    if problem:
        marks.stop()
        raise SystemExit(f"cluster_demo: {problem}")
    eventually(lambda: {"first prediction served", "InferenceService Ready"} <= set(marks.seen),
               "the first prediction and Ready", timeout=300)
    results["iris: apply -> serving champion"] = marks.stop()

    traffic = world.traffic("iris", rate=20).start()
    watch = world.watch("iris").start()
    marks = Milestones(world, CANARY).start()
    try:
        world.apply(*load_yaml(ROOT / "examples" / "iris-canary" / "retrain.yaml"),
                    *load_yaml(ROOT / "examples" / "iris-canary" / "inferenceservice.yaml"))
        eventually(lambda: "challenger drained" in marks.seen, "the promotion", timeout=900)
        promoted = watch.first(phase="Promoted")
        assert promoted is not None
        world.wait_answers_after(traffic, promoted + 2, "answers after the promotion", "iris-v2")
    finally:
        seen = marks.stop()
        report = traffic.stop()
        watch.stop()
    results["canary that promotes (from apply)"] = seen
    if "iris-v2 validated" in seen and "Promoted" in seen:
        results["durations"] = {"challenger Validated -> Promoted": seen["Promoted"] - seen["iris-v2 validated"]}
    results["traffic"] = {
        "requests": report.sent,
        "requests/s": rate_of(report),
        "failed": len(report.failures),
        "feedback lost": len(report.feedback_failures),
        "iris-v1 answers after Promoted": report.versions_sent_after(promoted)["iris-v1"],
    }
    for failure in report.failures[:10]:
        print(f"failed request: {failure}", file=sys.stderr)
    return results


def print_table(results: dict[str, dict[str, float]]) -> None:
    from local_demo import print_sections

    print("\nthe real control plane: wall seconds since the apply (one run; the machine is shared, "
          "figures are noisy)\n")
    print_sections([results])
    first = results["iris: apply -> serving champion"].get("first prediction served", float("inf"))
    print(f"target: first prediction served within {TARGET_SECONDS:.0f} s of the apply: {first:.1f} s "
          f"({'met' if first <= TARGET_SECONDS else 'MISSED'})")
    print(f"target: 0 answers from the old version after Promoted: "
          f"{results['traffic']['iris-v1 answers after Promoted']:.0f}")
    print(f"target: 0 failed requests during the walk: {results['traffic']['failed']:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the state folder (printed)")
    options = parser.parse_args()
    from mlops_operator import crdgen
    from mlops_operator.cluster.kubernetes import KubernetesCluster
    from mlops_operator.devcluster import cluster
    from mlops_operator.local.seaweed import SeaweedServer

    folder = Path(tempfile.mkdtemp(prefix="mlops-cluster-bench-"))
    plane = cluster.up(folder / "plane", crdgen.default_crds_dir(), log=lambda line: print(line, file=sys.stderr))
    try:
        from mlops_operator.devcluster import network

        # The S3 server listens on the host end of the cluster's veth: Pods (in network
        # namespaces of their own) and the operator on the host both reach it there.
        # SeaweedFS without an IAM config accepts any key pair.
        s3_server = SeaweedServer(folder / "s3", host=network.load(folder / "plane").host_ip)
        s3_server.start(timeout=30)
        try:
            s3 = SimpleNamespace(endpoint=s3_server.endpoint, access_key="mlops-bench",
                                 secret_key="mlops-bench-secret")
            world_cluster = Cluster(plane, KubernetesCluster.from_kubeconfig(str(plane.kubeconfig)))
            with serving_world(world_cluster, plane.kubeconfig, s3, folder / "operator.log", quiet=True) as world:
                results = run(world)
        finally:
            s3_server.stop(grace=2)
    finally:
        cluster.down(folder / "plane")
        if not options.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print_table(results)
    if options.keep:
        print(f"state: {folder}")


if __name__ == "__main__":
    main()
