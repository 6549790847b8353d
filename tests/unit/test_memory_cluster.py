"""The in-memory cluster behaves as the API server does, one semantic per test."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mlops_operator.cluster.memory import InMemoryCluster
from mlops_operator.cluster.port import AlreadyExists, Cluster, Conflict, Invalid, NotFound
from mlops_operator.cluster.resources import UnknownResource

GV = "mlops.seed.io/v1alpha1"
NS = "team-a"


class Clock:
    def __init__(self) -> None:
        self.moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cluster(clock: Clock) -> InMemoryCluster:
    return InMemoryCluster(now=clock, seed=7)


def run(name: str = "iris-t001", labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": GV,
        "kind": "TrainingRun",
        "metadata": {"name": name, "namespace": NS, "labels": labels or {}},
        "spec": spec or {"estimator": "sklearn.linear_model.LogisticRegression"},
    }


def config_map(name: str, namespace: str = NS, **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace, **meta},
            "data": {"k": "v"}}


def test_it_implements_the_port(cluster: InMemoryCluster) -> None:
    assert isinstance(cluster, Cluster)


# -- identity and bookkeeping ----------------------------------------------------------


def test_create_sets_uid_timestamp_generation_and_resource_version(cluster: InMemoryCluster) -> None:
    created = cluster.create(run())
    meta = created["metadata"]
    assert uuid.UUID(meta["uid"]).version == 4
    assert meta["creationTimestamp"] == "2026-01-02T03:04:05Z"
    assert meta["generation"] == 1
    assert meta["resourceVersion"] == "1"
    assert cluster.get(GV, "TrainingRun", NS, "iris-t001") == created


def test_server_set_fields_sent_by_the_client_are_overwritten(cluster: InMemoryCluster) -> None:
    body = run()
    body["metadata"].update(uid="forged", generation=9, creationTimestamp="1999-01-01T00:00:00Z")
    meta = cluster.create(body)["metadata"]
    assert meta["uid"] != "forged" and meta["generation"] == 1
    assert meta["creationTimestamp"] == "2026-01-02T03:04:05Z"


def test_a_resource_version_on_create_is_refused(cluster: InMemoryCluster) -> None:
    body = run()
    body["metadata"]["resourceVersion"] = "5"
    with pytest.raises(Invalid, match="resourceVersion should not be set"):
        cluster.create(body)


def test_resource_version_is_one_counter_across_kinds_and_only_moves_on_change(cluster: InMemoryCluster) -> None:
    first = cluster.create(run("a"))["metadata"]["resourceVersion"]
    second = cluster.create(config_map("b"))["metadata"]["resourceVersion"]
    assert int(second) == int(first) + 1
    assert cluster.revision == int(second)
    cluster.get(GV, "TrainingRun", NS, "a")
    cluster.list("v1", "ConfigMap", NS)
    assert cluster.revision == int(second)


def test_returned_objects_are_copies(cluster: InMemoryCluster) -> None:
    body = run()
    created = cluster.create(body)
    body["spec"]["estimator"] = "changed-after-create"
    created["spec"]["estimator"] = "changed-the-result"
    fetched = cluster.get(GV, "TrainingRun", NS, "iris-t001")
    fetched["metadata"]["labels"]["x"] = "y"
    cluster.list(GV, "TrainingRun", NS)[0]["spec"]["estimator"] = "changed-a-listed-copy"
    again = cluster.get(GV, "TrainingRun", NS, "iris-t001")
    assert again["spec"]["estimator"] == "sklearn.linear_model.LogisticRegression"
    assert again["metadata"]["labels"] == {}


def test_generate_name(cluster: InMemoryCluster) -> None:
    body = run()
    del body["metadata"]["name"]
    body["metadata"]["generateName"] = "iris-"
    names = {cluster.create(body)["metadata"]["name"] for _ in range(5)}
    assert len(names) == 5
    assert all(name.startswith("iris-") and len(name) == len("iris-") + 5 for name in names)


def test_a_name_is_required(cluster: InMemoryCluster) -> None:
    body = run()
    del body["metadata"]["name"]
    with pytest.raises(Invalid, match="metadata.name or metadata.generateName is required"):
        cluster.create(body)


# -- errors as the API words them ----------------------------------------------------


def test_already_exists_is_worded_as_the_api_words_it(cluster: InMemoryCluster) -> None:
    cluster.create(run("x"))
    with pytest.raises(AlreadyExists, match=r'^trainingruns\.mlops\.seed\.io "x" already exists$'):
        cluster.create(run("x"))
    cluster.create(config_map("c"))
    with pytest.raises(AlreadyExists, match=r'^configmaps "c" already exists$'):
        cluster.create(config_map("c"))


def test_not_found_is_worded_as_the_api_words_it(cluster: InMemoryCluster) -> None:
    with pytest.raises(NotFound, match=r'^trainingruns\.mlops\.seed\.io "nope" not found$'):
        cluster.get(GV, "TrainingRun", NS, "nope")
    for call in (
        lambda: cluster.patch(GV, "TrainingRun", NS, "nope", {"spec": {}}),
        lambda: cluster.patch_status(GV, "TrainingRun", NS, "nope", {"phase": "Running"}),
        lambda: cluster.delete(GV, "TrainingRun", NS, "nope"),
    ):
        with pytest.raises(NotFound):
            call()


def test_same_name_in_another_namespace_is_another_object(cluster: InMemoryCluster) -> None:
    cluster.create(config_map("c", "one"))
    cluster.create(config_map("c", "two"))
    with pytest.raises(NotFound):
        cluster.get("v1", "ConfigMap", "three", "c")
    assert [o["metadata"]["namespace"] for o in cluster.list("v1", "ConfigMap")] == ["one", "two"]


def test_an_unknown_kind_names_itself(cluster: InMemoryCluster) -> None:
    with pytest.raises(UnknownResource, match="unknown kind 'Widget' in apiVersion 'example.com/v1'"):
        cluster.create({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})


@pytest.mark.parametrize("name", ["Upper", "under_score", "-dash", "a" * 254])
def test_invalid_names_are_refused(cluster: InMemoryCluster, name: str) -> None:
    with pytest.raises(Invalid, match="metadata.name: Invalid value"):
        cluster.create(config_map(name))


def test_a_service_name_must_be_a_dns_label(cluster: InMemoryCluster) -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a.b", "namespace": NS}, "spec": {}}
    with pytest.raises(Invalid, match="DNS-1123 label"):
        cluster.create(service)


@pytest.mark.parametrize("labels", [{"k": "x" * 64}, {"bad key": "v"}, {"k": "-v"}, {"Ex.com/k": "v"}])
def test_invalid_labels_are_refused(cluster: InMemoryCluster, labels: dict[str, str]) -> None:
    with pytest.raises(Invalid, match="metadata.labels"):
        cluster.create(config_map("c", labels=labels))


def test_a_namespaced_kind_needs_a_namespace(cluster: InMemoryCluster) -> None:
    body = config_map("c")
    del body["metadata"]["namespace"]
    with pytest.raises(Invalid, match="metadata.namespace is required"):
        cluster.create(body)


def test_cluster_scoped_kinds_ignore_namespaces(cluster: InMemoryCluster) -> None:
    created = cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns1", "namespace": "x"}})
    assert "namespace" not in created["metadata"]
    assert created["status"] == {"phase": "Active"}
    assert cluster.get("v1", "Namespace", None, "ns1")["metadata"]["uid"] == created["metadata"]["uid"]
    assert cluster.get("v1", "Namespace", "whatever", "ns1")["metadata"]["name"] == "ns1"
    assert [n["metadata"]["name"] for n in cluster.list("v1", "Namespace", "whatever")] == ["ns1"]


def test_objects_must_be_json(cluster: InMemoryCluster) -> None:
    body = config_map("c")
    body["data"] = {"k": {1, 2}}
    with pytest.raises(Invalid, match="not JSON"):
        cluster.create(body)


# -- generation and the status subresource ----------------------------------------------


def test_generation_moves_on_spec_changes_only(cluster: InMemoryCluster) -> None:
    cluster.create(run())
    after_spec = cluster.patch(GV, "TrainingRun", NS, "iris-t001", {"spec": {"seed": 3}})
    assert after_spec["metadata"]["generation"] == 2
    after_labels = cluster.patch(GV, "TrainingRun", NS, "iris-t001", {"metadata": {"labels": {"a": "b"}}})
    assert after_labels["metadata"]["generation"] == 2
    assert int(after_labels["metadata"]["resourceVersion"]) > int(after_spec["metadata"]["resourceVersion"])
    after_status = cluster.patch_status(GV, "TrainingRun", NS, "iris-t001", {"phase": "Running"})
    assert after_status["metadata"]["generation"] == 2
    assert int(after_status["metadata"]["resourceVersion"]) > int(after_labels["metadata"]["resourceVersion"])


def test_create_drops_status_of_kinds_with_a_status_subresource(cluster: InMemoryCluster) -> None:
    body = run()
    body["status"] = {"phase": "Succeeded"}
    assert "status" not in cluster.create(body)
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": NS},
           "spec": {"template": {}}, "status": {"succeeded": 1}}
    assert "status" not in cluster.create(job)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": NS}, "spec": {},
           "status": {"phase": "Running"}}
    assert cluster.create(pod)["status"] == {"phase": "Pending"}


def test_writes_to_the_main_resource_keep_the_stored_status(cluster: InMemoryCluster) -> None:
    cluster.create(run())
    cluster.patch_status(GV, "TrainingRun", NS, "iris-t001", {"phase": "Running"})
    patched = cluster.patch(GV, "TrainingRun", NS, "iris-t001", {"status": {"phase": "Hacked"}, "spec": {"x": 1}})
    assert patched["status"] == {"phase": "Running"}
    whole = cluster.get(GV, "TrainingRun", NS, "iris-t001")
    whole["status"] = {"phase": "Hacked"}
    whole["spec"] = {"y": 2}
    replaced = cluster.replace(whole)
    assert replaced["status"] == {"phase": "Running"}
    assert replaced["spec"] == {"y": 2}


def test_patch_status_merges_into_status_only(cluster: InMemoryCluster) -> None:
    cluster.create(run())
    cluster.patch_status(GV, "TrainingRun", NS, "iris-t001", {"phase": "Running", "metrics": {"a": 1.0, "b": 2.0}})
    after = cluster.patch_status(GV, "TrainingRun", NS, "iris-t001", {"metrics": {"b": None, "c": 3.0}})
    assert after["status"] == {"phase": "Running", "metrics": {"a": 1.0, "c": 3.0}}
    assert after["spec"] == run()["spec"]


def test_patch_status_of_a_kind_without_status_is_not_found(cluster: InMemoryCluster) -> None:
    cluster.create(config_map("c"))
    with pytest.raises(NotFound, match="configmaps/status"):
        cluster.patch_status("v1", "ConfigMap", NS, "c", {"x": 1})


def test_a_status_write_that_changes_nothing_writes_nothing(cluster: InMemoryCluster) -> None:
    cluster.create(run())
    first = cluster.patch_status(GV, "TrainingRun", NS, "iris-t001", {"phase": "Running"})
    again = cluster.patch_status(GV, "TrainingRun", NS, "iris-t001", {"phase": "Running"})
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]


# -- optimistic concurrency --------------------------------------------------------------


def test_replace_with_a_stale_resource_version_conflicts(cluster: InMemoryCluster) -> None:
    stale = cluster.create(run())
    cluster.patch(GV, "TrainingRun", NS, "iris-t001", {"spec": {"seed": 1}})
    stale["spec"] = {"seed": 2}
    with pytest.raises(Conflict, match=r'Operation cannot be fulfilled on trainingruns\.mlops\.seed\.io "iris-t001"'):
        cluster.replace(stale)
    fresh = cluster.get(GV, "TrainingRun", NS, "iris-t001")
    fresh["spec"] = {"seed": 2}
    assert cluster.replace(fresh)["spec"] == {"seed": 2}


def test_replace_needs_a_resource_version(cluster: InMemoryCluster) -> None:
    cluster.create(run())
    with pytest.raises(Invalid, match="must be specified for an update"):
        cluster.replace(run())


def test_patch_and_patch_status_with_a_stale_resource_version_conflict(cluster: InMemoryCluster) -> None:
    version = cluster.create(run())["metadata"]["resourceVersion"]
    cluster.patch(GV, "TrainingRun", NS, "iris-t001", {"spec": {"seed": 1}}, resource_version=version)
    with pytest.raises(Conflict):
        cluster.patch(GV, "TrainingRun", NS, "iris-t001", {"spec": {"seed": 2}}, resource_version=version)
    with pytest.raises(Conflict):
        cluster.patch_status(GV, "TrainingRun", NS, "iris-t001", {"phase": "X"}, resource_version=version)
    with pytest.raises(Conflict):  # in the body, as kubectl and the API do it
        cluster.patch(GV, "TrainingRun", NS, "iris-t001", {"metadata": {"resourceVersion": version}, "spec": {}})
    assert cluster.get(GV, "TrainingRun", NS, "iris-t001")["spec"]["seed"] == 1


def test_concurrent_writers_never_lose_an_update(cluster: InMemoryCluster) -> None:
    cluster.create(config_map("counter"))
    cluster.patch("v1", "ConfigMap", NS, "counter", {"data": {"n": "0"}})

    def bump(times: int) -> None:
        done = 0
        while done < times:
            current = cluster.get("v1", "ConfigMap", NS, "counter")
            n = int(current["data"]["n"])
            try:
                cluster.patch("v1", "ConfigMap", NS, "counter", {"data": {"n": str(n + 1)}},
                              resource_version=current["metadata"]["resourceVersion"])
                done += 1
            except Conflict:
                continue

    threads = [threading.Thread(target=bump, args=(200,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cluster.get("v1", "ConfigMap", NS, "counter")["data"]["n"] == "800"


# -- patch semantics ---------------------------------------------------------------------


def test_patch_is_a_json_merge_patch(cluster: InMemoryCluster) -> None:
    body = run(labels={"a": "1", "b": "2"})
    body["spec"] = {"params": {"C": 1.0, "max_iter": 100}, "metrics": ["accuracy", "f1_macro"]}
    cluster.create(body)
    patched = cluster.patch(GV, "TrainingRun", NS, "iris-t001", {
        "metadata": {"labels": {"a": None, "c": "3"}},
        "spec": {"params": {"C": 2.0}, "metrics": ["accuracy"]},
    })
    assert patched["metadata"]["labels"] == {"b": "2", "c": "3"}
    assert patched["spec"] == {"params": {"C": 2.0, "max_iter": 100}, "metrics": ["accuracy"]}


def test_patch_cannot_change_identity(cluster: InMemoryCluster) -> None:
    created = cluster.create(run())
    patched = cluster.patch(GV, "TrainingRun", NS, "iris-t001", {"metadata": {
        "name": "other", "namespace": "elsewhere", "uid": "forged", "creationTimestamp": "1999-01-01T00:00:00Z"}})
    for field in ("name", "namespace", "uid", "creationTimestamp"):
        assert patched["metadata"][field] == created["metadata"][field]


def test_a_patch_that_changes_nothing_writes_nothing(cluster: InMemoryCluster) -> None:
    created = cluster.create(run(labels={"a": "1"}))
    events: list[str] = []
    cluster.add_listener(lambda kind, obj: events.append(kind))
    same = cluster.patch(GV, "TrainingRun", NS, "iris-t001", {"metadata": {"labels": {"a": "1"}}})
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert events == []


# -- apply -------------------------------------------------------------------------------


def deployment(replicas: int = 1, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "iris-champion", "namespace": NS, "labels": {"app": "iris", **labels}},
        "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "serve", "image": "r:1"}]}}},
    }


def test_apply_creates_when_missing(cluster: InMemoryCluster) -> None:
    applied = cluster.apply(deployment())
    assert applied["metadata"]["generation"] == 1
    assert cluster.get("apps/v1", "Deployment", NS, "iris-champion")["spec"]["replicas"] == 1


def test_applying_twice_changes_nothing(cluster: InMemoryCluster) -> None:
    first = cluster.apply(deployment())
    revision = cluster.revision
    second = cluster.apply(deployment())
    assert second == first
    assert cluster.revision == revision


def test_apply_replaces_the_spec_and_merges_labels(cluster: InMemoryCluster) -> None:
    cluster.apply(deployment(replicas=1, extra="kept"))
    cluster.patch("apps/v1", "Deployment", NS, "iris-champion", {"metadata": {"labels": {"someone": "else"}}})
    desired = deployment(replicas=3)
    del desired["spec"]["template"]
    applied = cluster.apply(desired)
    assert applied["spec"] == {"replicas": 3}  # wholesale: the template it no longer names is gone
    assert applied["metadata"]["labels"] == {"app": "iris", "extra": "kept", "someone": "else"}
    assert applied["metadata"]["generation"] == 2


def test_apply_merges_owner_references_by_uid_and_keeps_status(cluster: InMemoryCluster) -> None:
    first_owner = {"apiVersion": GV, "kind": "InferenceService", "name": "a", "uid": "u1"}
    second_owner = {"apiVersion": GV, "kind": "InferenceService", "name": "b", "uid": "u2"}
    body = deployment()
    body["metadata"]["ownerReferences"] = [first_owner]
    cluster.apply(body)
    cluster.patch_status("apps/v1", "Deployment", NS, "iris-champion", {"readyReplicas": 1})
    body["metadata"]["ownerReferences"] = [second_owner]
    body["status"] = {"readyReplicas": 99}
    applied = cluster.apply(body)
    assert [ref["uid"] for ref in applied["metadata"]["ownerReferences"]] == ["u1", "u2"]
    assert applied["status"] == {"readyReplicas": 1}
    revision = cluster.revision
    cluster.apply(body)
    assert cluster.revision == revision


def test_apply_needs_a_name(cluster: InMemoryCluster) -> None:
    body = deployment()
    body["metadata"] = {"generateName": "x-", "namespace": NS}
    with pytest.raises(Invalid, match="metadata.name is required to apply"):
        cluster.apply(body)


# -- list and selectors --------------------------------------------------------------------


@pytest.fixture
def labelled(cluster: InMemoryCluster) -> InMemoryCluster:
    for name, labels, namespace in [
        ("a", {"app": "iris", "tier": "champion"}, NS),
        ("b", {"app": "iris", "tier": "challenger"}, NS),
        ("c", {"app": "wine"}, NS),
        ("d", {"app": "iris", "tier": "champion"}, "other"),
    ]:
        cluster.create(config_map(name, namespace, labels=labels))
    return cluster


@pytest.mark.parametrize(("selector", "expected"), [
    (None, ["a", "b", "c"]),
    ("app=iris", ["a", "b"]),
    ("app==iris,tier!=champion", ["b"]),
    ("tier in (champion, challenger)", ["a", "b"]),
    ("tier notin (champion)", ["b", "c"]),
    ("tier", ["a", "b"]),
    ("!tier", ["c"]),
    ({"app": "wine"}, ["c"]),
    ({"matchLabels": {"app": "iris"}, "matchExpressions": [{"key": "tier", "operator": "NotIn",
                                                            "values": ["challenger"]}]}, ["a"]),
    ("app=nothing", []),
])
def test_list_selects_by_labels(labelled: InMemoryCluster, selector: Any, expected: list[str]) -> None:
    assert [o["metadata"]["name"] for o in labelled.list("v1", "ConfigMap", NS, selector)] == expected


def test_list_across_namespaces(labelled: InMemoryCluster) -> None:
    found = labelled.list("v1", "ConfigMap", None, "app=iris,tier=champion")
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in found] == [("other", "d"), (NS, "a")]


def test_list_follows_label_changes(labelled: InMemoryCluster) -> None:
    labelled.patch("v1", "ConfigMap", NS, "c", {"metadata": {"labels": {"app": "iris"}}})
    labelled.delete("v1", "ConfigMap", NS, "a")
    assert [o["metadata"]["name"] for o in labelled.list("v1", "ConfigMap", NS, "app=iris")] == ["b", "c"]
    assert labelled.list("v1", "ConfigMap", NS, "app=wine") == []


def test_a_bad_selector_is_a_value_error(labelled: InMemoryCluster) -> None:
    with pytest.raises(ValueError, match="label selector"):
        labelled.list("v1", "ConfigMap", NS, "app in iris")


def test_list_of_a_kind_never_created_is_empty(cluster: InMemoryCluster) -> None:
    assert cluster.list(GV, "Experiment", NS) == []


# -- deletion: finalizers and garbage collection ------------------------------------------------


def test_delete_without_finalizers_removes_the_object(cluster: InMemoryCluster) -> None:
    cluster.create(run())
    cluster.delete(GV, "TrainingRun", NS, "iris-t001")
    with pytest.raises(NotFound):
        cluster.get(GV, "TrainingRun", NS, "iris-t001")


def test_finalizers_hold_deletion_until_the_last_is_removed(cluster: InMemoryCluster, clock: Clock) -> None:
    body = run()
    body["metadata"]["finalizers"] = ["mlops.seed.io/finalizer", "other/finalizer"]
    cluster.create(body)
    clock.advance(60)
    cluster.delete(GV, "TrainingRun", NS, "iris-t001")
    held = cluster.get(GV, "TrainingRun", NS, "iris-t001")
    assert held["metadata"]["deletionTimestamp"] == "2026-01-02T03:05:05Z"
    assert held["metadata"]["generation"] == 2
    cluster.delete(GV, "TrainingRun", NS, "iris-t001")  # deleting again changes nothing
    assert cluster.get(GV, "TrainingRun", NS, "iris-t001")["metadata"]["resourceVersion"] == \
        held["metadata"]["resourceVersion"]
    cluster.patch(GV, "TrainingRun", NS, "iris-t001", {"metadata": {"finalizers": ["other/finalizer"]}})
    assert cluster.get(GV, "TrainingRun", NS, "iris-t001")["metadata"]["finalizers"] == ["other/finalizer"]
    last = cluster.get(GV, "TrainingRun", NS, "iris-t001")
    last["metadata"]["finalizers"] = []
    cluster.replace(last)
    with pytest.raises(NotFound):
        cluster.get(GV, "TrainingRun", NS, "iris-t001")


def test_an_object_being_deleted_takes_no_new_finalizers(cluster: InMemoryCluster) -> None:
    body = run()
    body["metadata"]["finalizers"] = ["a/f"]
    cluster.create(body)
    cluster.delete(GV, "TrainingRun", NS, "iris-t001")
    with pytest.raises(Invalid, match="no new finalizers can be added if the object is being deleted"):
        cluster.patch(GV, "TrainingRun", NS, "iris-t001", {"metadata": {"finalizers": ["a/f", "b/f"]}})


def test_the_name_of_an_object_being_deleted_is_taken(cluster: InMemoryCluster) -> None:
    body = run()
    body["metadata"]["finalizers"] = ["a/f"]
    cluster.create(body)
    cluster.delete(GV, "TrainingRun", NS, "iris-t001")
    with pytest.raises(AlreadyExists):
        cluster.create(run())


def owned(kind: str, api_version: str, name: str, owner: dict[str, Any], namespace: str = NS,
          **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": api_version, "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "ownerReferences": [{
            "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]},
        **extra,
    }


def test_deleting_an_owner_collects_its_dependents_transitively(cluster: InMemoryCluster) -> None:
    experiment = cluster.create({"apiVersion": GV, "kind": "Experiment", "metadata": {"name": "iris", "namespace": NS},
                                 "spec": {}})
    trial = cluster.create(owned("TrainingRun", GV, "iris-t001", experiment, spec={}))
    cluster.create(owned("Job", "batch/v1", "iris-t001-trainer", trial, spec={}))
    cluster.create(config_map("unrelated"))
    cluster.delete(GV, "Experiment", NS, "iris")
    assert cluster.list(GV, "TrainingRun", NS) == []
    assert cluster.list("batch/v1", "Job", NS) == []
    assert [c["metadata"]["name"] for c in cluster.list("v1", "ConfigMap", NS)] == ["unrelated"]


def test_collection_waits_for_the_owner_to_be_gone(cluster: InMemoryCluster) -> None:
    owner = run("owner")
    owner["metadata"]["finalizers"] = ["mlops.seed.io/finalizer"]
    owner = cluster.create(owner)
    cluster.create(owned("Job", "batch/v1", "child", owner, spec={}))
    cluster.delete(GV, "TrainingRun", NS, "owner")
    assert len(cluster.list("batch/v1", "Job", NS)) == 1
    cluster.patch(GV, "TrainingRun", NS, "owner", {"metadata": {"finalizers": None}})
    assert cluster.list("batch/v1", "Job", NS) == []


def test_a_dependent_with_another_live_owner_survives(cluster: InMemoryCluster) -> None:
    first = cluster.create(run("first"))
    second = cluster.create(run("second"))
    child = owned("ConfigMap", "v1", "shared", first, data={})
    child["metadata"]["ownerReferences"].append({"apiVersion": GV, "kind": "TrainingRun", "name": "second",
                                                 "uid": second["metadata"]["uid"]})
    cluster.create(child)
    cluster.delete(GV, "TrainingRun", NS, "first")
    survivor = cluster.get("v1", "ConfigMap", NS, "shared")
    assert [ref["name"] for ref in survivor["metadata"]["ownerReferences"]] == ["second"]
    cluster.delete(GV, "TrainingRun", NS, "second")
    assert cluster.list("v1", "ConfigMap", NS) == []


def test_dependents_in_another_namespace_are_not_collected(cluster: InMemoryCluster) -> None:
    owner = cluster.create(run("owner"))
    cluster.create(owned("ConfigMap", "v1", "far", owner, namespace="elsewhere", data={}))
    cluster.delete(GV, "TrainingRun", NS, "owner")
    assert cluster.get("v1", "ConfigMap", "elsewhere", "far")


def test_dependents_keep_their_own_finalizers(cluster: InMemoryCluster) -> None:
    owner = cluster.create(run("owner"))
    child = owned("ConfigMap", "v1", "held", owner, data={})
    child["metadata"]["finalizers"] = ["keep/me"]
    cluster.create(child)
    cluster.delete(GV, "TrainingRun", NS, "owner")
    assert cluster.get("v1", "ConfigMap", NS, "held")["metadata"]["deletionTimestamp"]


def test_owner_references_are_validated(cluster: InMemoryCluster) -> None:
    body = config_map("c")
    body["metadata"]["ownerReferences"] = [{"apiVersion": GV, "kind": "TrainingRun", "name": "x"}]
    with pytest.raises(Invalid, match="missing uid"):
        cluster.create(body)
    body["metadata"]["ownerReferences"] = [
        {"apiVersion": GV, "kind": "TrainingRun", "name": n, "uid": n, "controller": True} for n in ("x", "y")]
    with pytest.raises(Invalid, match="Only one reference can have Controller set to true"):
        cluster.create(body)


# -- listeners ------------------------------------------------------------------------------------


def test_listeners_see_every_change_with_a_copy(cluster: InMemoryCluster) -> None:
    seen: list[tuple[str, str, str]] = []

    def listen(event_type: str, obj: dict[str, Any]) -> None:
        seen.append((event_type, obj["metadata"]["name"], obj["metadata"]["resourceVersion"]))
        obj["metadata"]["name"] = "mutated-by-listener"

    remove = cluster.add_listener(listen)
    cluster.create(config_map("c"))
    cluster.patch("v1", "ConfigMap", NS, "c", {"data": {"k": "w"}})
    cluster.delete("v1", "ConfigMap", NS, "c")
    assert [(e, n) for e, n, _ in seen] == [("ADDED", "c"), ("MODIFIED", "c"), ("DELETED", "c")]
    assert [int(v) for _, _, v in seen] == sorted(int(v) for _, _, v in seen)
    remove()
    cluster.create(config_map("d"))
    assert len(seen) == 3


def test_a_listener_may_call_back_into_the_cluster(cluster: InMemoryCluster) -> None:
    mirrored: list[dict[str, Any]] = []
    cluster.add_listener(lambda event_type, obj: mirrored.append(
        cluster.get("v1", "ConfigMap", NS, obj["metadata"]["name"])) if event_type == "ADDED" else None)
    cluster.create(config_map("c"))
    assert mirrored[0]["metadata"]["name"] == "c"


def test_restore_puts_objects_back_as_they_were(cluster: InMemoryCluster) -> None:
    owner = cluster.create(run("owner", labels={"app": "iris"}))
    child = cluster.create(owned("ConfigMap", "v1", "child", owner, data={}))
    saved = cluster.list(GV, "TrainingRun") + cluster.list("v1", "ConfigMap")
    revision = cluster.revision
    fresh = InMemoryCluster()
    seen: list[str] = []
    fresh.add_listener(lambda event_type, obj: seen.append(event_type))
    fresh.restore(saved)
    assert seen == [] and fresh.revision == revision
    assert fresh.get("v1", "ConfigMap", NS, "child") == child
    assert [o["metadata"]["name"] for o in fresh.list(GV, "TrainingRun", NS, "app=iris")] == ["owner"]
    assert int(fresh.create(config_map("next"))["metadata"]["resourceVersion"]) == revision + 1
    fresh.delete(GV, "TrainingRun", NS, "owner")  # the ownership index came back too
    assert fresh.list("v1", "ConfigMap", NS) == [fresh.get("v1", "ConfigMap", NS, "next")]
