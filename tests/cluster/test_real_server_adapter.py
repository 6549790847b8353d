"""The Kubernetes adapter of the cluster port against a real API server: server-side apply
with our field manager (never the merge fallback), and the API's errors mapped to the port's."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane_world import Cluster
from mlops_operator.cluster.kubernetes import KubernetesCluster
from mlops_operator.cluster.port import AlreadyExists, Conflict, Invalid, NotFound


def config_map(namespace: str, data: dict[str, str], **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "applied", "namespace": namespace, "labels": labels}, "data": data}


@pytest.fixture
def adapter(control_plane: Cluster) -> KubernetesCluster:
    return KubernetesCluster.from_kubeconfig(str(control_plane.plane.kubeconfig))


def test_server_side_apply_owns_its_fields_and_is_idempotent(adapter: KubernetesCluster, namespace: str) -> None:
    first = adapter.apply(config_map(namespace, {"a": "1", "b": "2"}))
    again = adapter.apply(config_map(namespace, {"a": "1", "b": "2"}))
    assert adapter.apply_strategy == "server-side"
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"], "a no-op apply wrote"
    managers = {(e["manager"], e["operation"]) for e in again["metadata"]["managedFields"]}
    assert managers == {("mlops-operator", "Apply")}

    # Another manager's field survives our apply; a field we stop applying is removed.
    adapter.patch("v1", "ConfigMap", namespace, "applied", {"data": {"theirs": "x"}})
    after = adapter.apply(config_map(namespace, {"a": "1"}))
    assert after["data"] == {"a": "1", "theirs": "x"}


def test_api_errors_map_to_the_ports(adapter: KubernetesCluster, namespace: str) -> None:
    created = adapter.create(config_map(namespace, {"a": "1"}))
    with pytest.raises(AlreadyExists):
        adapter.create(config_map(namespace, {"a": "1"}))
    adapter.patch("v1", "ConfigMap", namespace, "applied", {"data": {"a": "2"}})
    with pytest.raises(Conflict):
        adapter.patch("v1", "ConfigMap", namespace, "applied", {"data": {"a": "3"}},
                      resource_version=created["metadata"]["resourceVersion"])
    with pytest.raises(NotFound):
        adapter.get("v1", "ConfigMap", namespace, "missing")
    with pytest.raises(Invalid) as refused:
        adapter.create({"apiVersion": "mlops.seed.io/v1alpha1", "kind": "TrainingRun",
                        "metadata": {"name": "broken", "namespace": namespace},
                        "spec": {"model": "iris", "dataset": {"uri": "ftp://nowhere"}, "estimator": "x.Y"}})
    assert "spec.dataset.uri" in str(refused.value)
