"""The local executor reports a Deployment's status as the Deployment controller does, so
the operator's rollout readiness (`kubectl rollout status` semantics) reads the same facts
in local mode and on a cluster, also while old and new pods are both present."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from test_executor import TINY_SERVER, cluster, deployment, executor, fetch, run_until, service  # noqa: F401

from mlops_operator.local.executor import Executor
from mlops_operator.local.state import LocalCluster
from mlops_operator.reconcile.inference_service import rollout_pending

COUNTS = ("observedGeneration", "replicas", "updatedReplicas", "readyReplicas", "availableReplicas")


def counts(cluster: LocalCluster, name: str) -> tuple[int | None, ...]:
    status = cluster.get("apps/v1", "Deployment", "default", name).get("status") or {}
    return tuple(status.get(key) for key in COUNTS)


def current(cluster: LocalCluster, name: str) -> dict[str, Any]:
    return cluster.get("apps/v1", "Deployment", "default", name)


def test_an_old_ready_pod_and_a_new_unready_pod_are_both_counted(
        cluster: LocalCluster, executor: Executor, tmp_path: Path) -> None:
    cluster.create(deployment("web", []))
    cluster.create(service("web", "web"))
    run_until(executor, lambda: counts(cluster, "web") == (1, 1, 1, 1, 1))
    assert rollout_pending(current(cluster, "web")) is None
    url = executor.service_url("default", "web")

    ready_file = tmp_path / "v2-may-be-ready"
    cluster.apply(deployment("web", ["--ready-file", str(ready_file)], env_value="two"))
    # The surge: the old pod serves, the new one runs but is not ready.
    run_until(executor, lambda: counts(cluster, "web") == (2, 2, 1, 1, 1))
    for _ in range(5):
        executor.step()
        assert counts(cluster, "web") == (2, 2, 1, 1, 1)
    assert rollout_pending(current(cluster, "web")) == "1 old replicas are pending termination"
    assert fetch(url + "/env/FLAVOUR") == "one"

    ready_file.touch()
    run_until(executor, lambda: counts(cluster, "web") == (2, 1, 1, 1, 1))
    assert rollout_pending(current(cluster, "web")) is None
    # Once the status says rolled out, only the new template answers.
    assert {fetch(url + "/env/FLAVOUR") for _ in range(10)} == {"two"}


def test_a_crash_looping_new_pod_counts_as_a_replica_but_not_as_ready(
        cluster: LocalCluster, executor: Executor) -> None:
    cluster.create(deployment("web", []))
    run_until(executor, lambda: counts(cluster, "web") == (1, 1, 1, 1, 1))
    broken = deployment("web", [])
    broken["spec"]["template"]["spec"]["containers"][0]["command"] = [sys.executable, "-c", "raise SystemExit(3)"]
    cluster.apply(broken)

    def restarted_once() -> bool:
        pods = cluster.list("v1", "Pod", "default", {"app": "web"})
        return any(p["status"]["containerStatuses"][0]["restartCount"] >= 1 for p in pods)

    run_until(executor, restarted_once)
    for _ in range(5):  # whether the crashed process is waiting out its back-off or not
        executor.step()
        assert counts(cluster, "web") == (2, 2, 1, 1, 1)
    status = current(cluster, "web")["status"]
    assert status["unavailableReplicas"] == 1
    assert rollout_pending(current(cluster, "web")) is not None
