"""KubernetesCluster over real HTTP against kmock's Kubernetes emulator.

The emulator keeps no resourceVersion and no generation, collects no garbage and merges
patches naively (kmock 0.8, as measured when these tests were written), so these tests prove the adapter's
requests (paths, verbs, content types, query parameters, bodies) and its error mapping;
the API semantics themselves are proven against the in-memory cluster
(tests/unit/test_memory_cluster.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import kubernetes.client
import pytest
import urllib3

from mlops_operator.cluster.apply import apply_plan
from mlops_operator.cluster.kubernetes import KubernetesCluster
from mlops_operator.cluster.port import AlreadyExists, Cluster, ClusterError, Conflict, Invalid, NotFound
from mlops_operator.reconcile.plan import Event, Plan
from mlops_runtime.serving_process import free_port

K8sEmulator = Any  # the `k8s_emulator` fixture of tests/operator/conftest.py

GV = "mlops.seed.io/v1alpha1"
NS = "team-a"


@pytest.fixture
def cluster(k8s_emulator: K8sEmulator) -> KubernetesCluster:
    return KubernetesCluster(k8s_emulator.api_client)


def config_map(name: str, namespace: str = NS, labels: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}}, "data": data}


def training_run(name: str = "iris-t001") -> dict[str, Any]:
    return {"apiVersion": GV, "kind": "TrainingRun", "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}"},
            "spec": {"estimator": "sklearn.linear_model.LogisticRegression"}}


def last_request(k8s_emulator: K8sEmulator, method: str) -> Any:
    return [r for r in k8s_emulator.requests() if r.method.value == method][-1]


def test_it_implements_the_port(cluster: KubernetesCluster) -> None:
    assert isinstance(cluster, Cluster)


def test_create_get_and_the_paths_used(cluster: KubernetesCluster, k8s_emulator: K8sEmulator) -> None:
    created = cluster.create(training_run())
    assert created["spec"]["estimator"] == "sklearn.linear_model.LogisticRegression"
    assert last_request(k8s_emulator, "POST").url.path == f"/apis/{GV}/namespaces/{NS}/trainingruns"
    fetched = cluster.get(GV, "TrainingRun", NS, "iris-t001")
    assert fetched["metadata"]["name"] == "iris-t001"
    assert last_request(k8s_emulator, "GET").url.path == f"/apis/{GV}/namespaces/{NS}/trainingruns/iris-t001"
    assert last_request(k8s_emulator, "GET").headers["Authorization"] == "Bearer kmock-test-token"
    cluster.create(config_map("c", k="v"))
    assert last_request(k8s_emulator, "POST").url.path == f"/api/v1/namespaces/{NS}/configmaps"
    assert k8s_emulator.object("v1", "ConfigMap", NS, "c")["data"] == {"k": "v"}


def test_cluster_scoped_kinds_use_cluster_paths(cluster: KubernetesCluster, k8s_emulator: K8sEmulator) -> None:
    # (kmock 0.8 cannot parse /api/v1/namespaces[/name] as object paths, so a CRD stands in for Namespaces.)
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "trainingruns.mlops.seed.io"}, "spec": {"group": "mlops.seed.io"}}
    cluster.create(crd)
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    assert last_request(k8s_emulator, "POST").url.path == path
    fetched = cluster.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "ignored",
                          "trainingruns.mlops.seed.io")
    assert fetched["spec"] == {"group": "mlops.seed.io"}
    assert last_request(k8s_emulator, "GET").url.path == f"{path}/trainingruns.mlops.seed.io"


def test_not_found_and_already_exists(cluster: KubernetesCluster) -> None:
    with pytest.raises(NotFound) as missing:
        cluster.get(GV, "TrainingRun", NS, "nope")
    assert missing.value.status_code == 404
    cluster.create(training_run())
    with pytest.raises(AlreadyExists) as exists:
        cluster.create(training_run())
    assert exists.value.status_code == 409
    with pytest.raises(NotFound):
        cluster.delete(GV, "TrainingRun", NS, "nope")
    with pytest.raises(NotFound):
        cluster.patch(GV, "TrainingRun", NS, "nope", {"spec": {}})


def test_list_sends_the_selector_and_fills_in_the_type(cluster: KubernetesCluster, k8s_emulator: K8sEmulator) -> None:
    cluster.create(config_map("a", labels={"app": "iris", "tier": "champion"}))
    cluster.create(config_map("b", labels={"app": "iris", "tier": "challenger"}))
    cluster.create(config_map("c", labels={"app": "wine"}))
    cluster.create(config_map("d", namespace="other", labels={"app": "iris"}))
    found = cluster.list("v1", "ConfigMap", NS, {"matchLabels": {"app": "iris"},
                                                 "matchExpressions": [{"key": "tier", "operator": "NotIn",
                                                                       "values": ["challenger"]}]})
    request = last_request(k8s_emulator, "GET")
    assert request.url.path == f"/api/v1/namespaces/{NS}/configmaps"
    assert request.params["labelSelector"] == "app=iris,tier notin (challenger)"
    assert [(o["kind"], o["apiVersion"], o["metadata"]["name"]) for o in found] == [("ConfigMap", "v1", "a")]
    everywhere = cluster.list("v1", "ConfigMap", None, "app=iris")
    assert last_request(k8s_emulator, "GET").url.path == "/api/v1/configmaps"
    assert sorted(o["metadata"]["name"] for o in everywhere) == ["a", "b", "d"]


def test_a_bad_selector_fails_before_any_request(cluster: KubernetesCluster, k8s_emulator: K8sEmulator) -> None:
    before = len(k8s_emulator.requests())
    with pytest.raises(ValueError, match="label selector"):
        cluster.list("v1", "ConfigMap", NS, "app in iris")
    assert len(k8s_emulator.requests()) == before


def test_patch_is_a_merge_patch_without_status(cluster: KubernetesCluster, k8s_emulator: K8sEmulator) -> None:
    cluster.create(training_run())
    patched = cluster.patch(GV, "TrainingRun", NS, "iris-t001",
                            {"metadata": {"labels": {"a": "b"}}, "spec": {"seed": 3}, "status": {"phase": "X"}},
                            resource_version="42")
    request = last_request(k8s_emulator, "PATCH")
    assert request.headers["Content-Type"] == "application/merge-patch+json"
    assert request.data == {"metadata": {"labels": {"a": "b"}, "resourceVersion": "42"}, "spec": {"seed": 3}}
    assert patched["spec"]["seed"] == 3 and patched["metadata"]["labels"] == {"a": "b"}
    assert "status" not in k8s_emulator.object(GV, "TrainingRun", NS, "iris-t001")


def test_patch_status_goes_to_the_subresource(cluster: KubernetesCluster, k8s_emulator: K8sEmulator) -> None:
    cluster.create(training_run())
    after = cluster.patch_status(GV, "TrainingRun", NS, "iris-t001", {"phase": "Running"})
    request = last_request(k8s_emulator, "PATCH")
    assert request.url.path == f"/apis/{GV}/namespaces/{NS}/trainingruns/iris-t001/status"
    assert request.headers["Content-Type"] == "application/merge-patch+json"
    assert request.data == {"status": {"phase": "Running"}}
    assert after["status"] == {"phase": "Running"}
    assert k8s_emulator.object(GV, "TrainingRun", NS, "iris-t001")["status"] == {"phase": "Running"}


def test_replace_puts_the_whole_object(cluster: KubernetesCluster, k8s_emulator: K8sEmulator) -> None:
    cluster.create(config_map("c", k="v", old="x"))
    body = config_map("c", k="w")
    replaced = cluster.replace(body)
    assert last_request(k8s_emulator, "PUT").url.path == f"/api/v1/namespaces/{NS}/configmaps/c"
    assert replaced["data"] == {"k": "w"}


def test_delete_propagates_in_the_background(cluster: KubernetesCluster, k8s_emulator: K8sEmulator) -> None:
    cluster.create(training_run())
    assert cluster.delete(GV, "TrainingRun", NS, "iris-t001") is None
    assert last_request(k8s_emulator, "DELETE").data["propagationPolicy"] == "Background"
    with pytest.raises(NotFound):
        cluster.get(GV, "TrainingRun", NS, "iris-t001")


def test_delete_with_finalizers_only_marks(cluster: KubernetesCluster, k8s_emulator: K8sEmulator) -> None:
    body = training_run()
    body["metadata"]["finalizers"] = ["mlops.seed.io/finalizer"]
    cluster.create(body)
    cluster.delete(GV, "TrainingRun", NS, "iris-t001")
    assert cluster.get(GV, "TrainingRun", NS, "iris-t001")["metadata"]["deletionTimestamp"]
    cluster.patch(GV, "TrainingRun", NS, "iris-t001", {"metadata": {"finalizers": None}})
    assert k8s_emulator.object(GV, "TrainingRun", NS, "iris-t001") is None


def test_server_side_apply_request(cluster: KubernetesCluster, k8s_emulator: K8sEmulator) -> None:
    cluster.create(config_map("c", k="v"))
    applied = cluster.apply(config_map("c", labels={"app": "iris"}, k="w"), field_manager="tester")
    request = last_request(k8s_emulator, "PATCH")
    assert request.headers["Content-Type"] == "application/apply-patch+yaml"
    assert (request.params["fieldManager"], request.params["force"]) == ("tester", "true")
    assert request.data["data"] == {"k": "w"}
    assert applied["data"] == {"k": "w"} and applied["metadata"]["labels"] == {"app": "iris"}


def test_server_side_apply_of_a_missing_object_falls_back_to_create(
    cluster: KubernetesCluster, k8s_emulator: K8sEmulator
) -> None:
    # A real server creates through the apply patch; kmock answers 404, so the adapter creates.
    applied = cluster.apply(config_map("new", k="v"))
    assert applied["data"] == {"k": "v"}
    assert k8s_emulator.object("v1", "ConfigMap", NS, "new")["data"] == {"k": "v"}


def test_merge_apply_creates_then_patches_only_differences(k8s_emulator: K8sEmulator) -> None:
    cluster = KubernetesCluster(k8s_emulator.api_client, apply_strategy="merge")
    owner_ref = {"apiVersion": GV, "kind": "TrainingRun", "name": "r", "uid": "u1", "controller": True}
    body = config_map("c", labels={"app": "iris"}, k="v")
    body["metadata"]["ownerReferences"] = [owner_ref]
    cluster.apply(body)
    assert last_request(k8s_emulator, "POST").url.path == f"/api/v1/namespaces/{NS}/configmaps"
    cluster.patch("v1", "ConfigMap", NS, "c", {"metadata": {"labels": {"someone": "else"}}})
    patches = len([r for r in k8s_emulator.requests() if r.method.value == "PATCH"])
    again = cluster.apply(body)  # nothing differs: no write at all
    assert len([r for r in k8s_emulator.requests() if r.method.value == "PATCH"]) == patches
    assert again["metadata"]["labels"] == {"app": "iris", "someone": "else"}
    body["data"] = {"k": "w"}
    body["metadata"]["labels"] = {"app": "iris", "tier": "champion"}
    cluster.apply(body)
    assert last_request(k8s_emulator, "PATCH").data == {"data": {"k": "w"},
                                                        "metadata": {"labels": {"tier": "champion"}}}
    stored = k8s_emulator.object("v1", "ConfigMap", NS, "c")
    assert stored["metadata"]["labels"] == {"app": "iris", "someone": "else", "tier": "champion"}
    assert stored["metadata"]["ownerReferences"] == [owner_ref]


def test_a_server_without_server_side_apply_switches_to_merge(k8s_emulator: K8sEmulator) -> None:
    k8s_emulator.run(lambda: k8s_emulator.handler["patch", "/api/v1/namespaces/team-a/configmaps/c"] << 415 << {
        "kind": "Status", "code": 415, "reason": "UnsupportedMediaType", "message": "the body of the request was "
        "in an unknown format - accepted media types include: application/merge-patch+json"})
    cluster = KubernetesCluster(k8s_emulator.api_client)
    cluster.create(config_map("c", k="v"))
    cluster.apply(config_map("c", k="w"))
    assert cluster.apply_strategy == "merge"
    assert k8s_emulator.object("v1", "ConfigMap", NS, "c")["data"] == {"k": "w"}


def test_conflict_and_invalid_are_mapped_by_reason(k8s_emulator: K8sEmulator) -> None:
    path = f"/apis/{GV}/namespaces/{NS}/trainingruns/r"
    k8s_emulator.run(lambda: k8s_emulator.handler["patch", path] << 409 << {
        "kind": "Status", "code": 409, "reason": "Conflict", "message": "Operation cannot be fulfilled"})
    k8s_emulator.run(lambda: k8s_emulator.handler["put", path] << 422 << {
        "kind": "Status", "code": 422, "reason": "Invalid", "message": "spec.x: Invalid value"})
    cluster = KubernetesCluster(k8s_emulator.api_client)
    cluster.create(training_run("r"))  # kmock answers 404 for a missing object before any reaction
    with pytest.raises(Conflict, match="Operation cannot be fulfilled"):
        cluster.patch(GV, "TrainingRun", NS, "r", {"spec": {}})
    with pytest.raises(Invalid, match="spec.x: Invalid value") as invalid:
        cluster.replace({**training_run("r"), "metadata": {"name": "r", "namespace": NS, "resourceVersion": "1"}})
    assert invalid.value.status_code == 422


def test_an_unreachable_server_is_a_cluster_error() -> None:
    port = free_port()  # nothing listens; below the ephemeral range, so no connect can meet itself
    configuration = kubernetes.client.Configuration(host=f"http://127.0.0.1:{port}")
    configuration.retries = 0
    client = kubernetes.client.ApiClient(configuration)
    cluster = KubernetesCluster(client, request_timeout=2)
    with pytest.raises(ClusterError, match="cannot reach the Kubernetes API") as error:
        cluster.get("v1", "ConfigMap", NS, "c")
    assert error.value.status_code == 503


def test_apply_plan_over_http(k8s_emulator: K8sEmulator) -> None:
    cluster = KubernetesCluster(k8s_emulator.api_client, apply_strategy="merge")
    owner = cluster.create(training_run())
    plan = Plan(
        status={"phase": "Running", "jobName": "iris-t001-trainer"},
        children=({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "iris-t001-trainer"},
                   "spec": {"template": {"spec": {"containers": [{"name": "t", "image": "r:1"}]}}}},),
        events=(Event("TrainingStarted", "job created"),),
    )
    result = apply_plan(cluster, owner, plan)
    assert result.created == ("Job/iris-t001-trainer",) and result.status_written
    job = k8s_emulator.object("batch/v1", "Job", NS, "iris-t001-trainer")
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-iris-t001"
    assert job["metadata"]["labels"]["mlops.seed.io/trainingrun"] == "iris-t001"
    assert k8s_emulator.object(GV, "TrainingRun", NS, "iris-t001")["status"]["phase"] == "Running"
    event = k8s_emulator.object("v1", "Event", NS, result.events[0])
    assert event["reason"] == "TrainingStarted" and event["count"] == 1
    again = apply_plan(cluster, k8s_emulator.object(GV, "TrainingRun", NS, "iris-t001"), plan)
    assert again.unchanged == ("Job/iris-t001-trainer",) and not again.status_written
    assert k8s_emulator.object("v1", "Event", NS, result.events[0])["count"] == 2


def test_from_kubeconfig(k8s_emulator: K8sEmulator, tmp_path: Any) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(f"""
apiVersion: v1
kind: Config
clusters: [{{name: kmock, cluster: {{server: "{k8s_emulator.url}"}}}}]
users: [{{name: tester, user: {{token: from-kubeconfig}}}}]
contexts: [{{name: kmock, context: {{cluster: kmock, user: tester}}}}]
current-context: kmock
""")
    cluster = KubernetesCluster.from_kubeconfig(str(kubeconfig), apply_strategy="merge")
    assert cluster.apply_strategy == "merge"
    cluster.create(config_map("via-kubeconfig", k="v"))
    assert cluster.get("v1", "ConfigMap", NS, "via-kubeconfig")["data"] == {"k": "v"}
    assert last_request(k8s_emulator, "GET").headers["Authorization"] == "Bearer from-kubeconfig"


def test_an_unknown_apply_strategy_is_refused(k8s_emulator: K8sEmulator) -> None:
    with pytest.raises(ValueError, match="apply_strategy"):
        KubernetesCluster(k8s_emulator.api_client, apply_strategy="client-side")  # type: ignore[arg-type]


def test_a_client_of_the_legacy_generation_is_refused() -> None:
    class LegacyApiClient:
        def call_api(self, resource_path: str, method: str, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("never called")

    with pytest.raises(TypeError, match="kubernetes package >= 37"):
        KubernetesCluster(LegacyApiClient())


def test_the_emulator_filters_watches_by_label(cluster: KubernetesCluster, k8s_emulator: K8sEmulator) -> None:
    # The fixture's own promise (kopf watches with label selectors): only matching events stream.
    cluster.create(config_map("a", labels={"app": "iris"}))
    cluster.create(config_map("b", labels={"app": "wine"}))
    http = urllib3.PoolManager()
    response = http.request("GET", f"{k8s_emulator.url}/api/v1/namespaces/{NS}/configmaps",
                            fields={"watch": "true", "labelSelector": "app=iris"},
                            preload_content=False, timeout=urllib3.Timeout(connect=5, read=5))
    events: list[dict[str, Any]] = []
    try:
        for line in _lines(response):
            events.append(json.loads(line))
            if len(events) == 1:  # the existing object came; now changes while watching
                cluster.create(config_map("c", labels={"app": "wine"}))
                cluster.create(config_map("d", labels={"app": "iris"}))
            if len(events) == 2:
                break
    finally:
        response.release_conn()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "a"), ("ADDED", "d")]


def _lines(response: Any) -> Iterator[bytes]:
    """The non-empty lines of a streamed response, as they arrive."""
    buffer = b""
    for chunk in response.stream(1024):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line
