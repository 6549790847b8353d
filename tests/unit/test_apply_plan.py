"""apply_plan: a Plan carried out through the port, against the in-memory cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mlops_operator.cluster.apply import AppliedPlan, adopt, apply_plan, event_name, write_status
from mlops_operator.cluster.memory import InMemoryCluster
from mlops_operator.cluster.port import Conflict, NotFound
from mlops_operator.cluster.recording import RecordingCluster
from mlops_operator.reconcile.plan import Event, Plan

GV = "mlops.seed.io/v1alpha1"
NS = "team-a"
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def cluster() -> InMemoryCluster:
    return InMemoryCluster(now=lambda: T0)


@pytest.fixture
def owner(cluster: InMemoryCluster) -> dict[str, Any]:
    return cluster.create({"apiVersion": GV, "kind": "TrainingRun",
                           "metadata": {"name": "iris-t001", "namespace": NS}, "spec": {"estimator": "x"}})


def job(name: str = "iris-t001-trainer", **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/component": "trainer", **labels}},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
                                                          "containers": [{"name": "train", "image": "r:1"}]}}},
    }


def model_version(name: str = "iris-v1") -> dict[str, Any]:
    return {"apiVersion": GV, "kind": "ModelVersion", "metadata": {"name": name},
            "spec": {"model": "iris", "artifact": {"uri": "s3://mlops/x/model.skops"}}}


# -- adopt -------------------------------------------------------------------------------------


def test_adopt_sets_namespace_owner_reference_and_labels(owner: dict[str, Any]) -> None:
    child = job(**{"mlops.seed.io/model": "iris"})
    child["metadata"]["namespace"] = "somewhere-else"
    adopted = adopt(child, owner)
    assert adopted["metadata"]["namespace"] == NS
    assert adopted["metadata"]["ownerReferences"] == [{
        "apiVersion": GV, "kind": "TrainingRun", "name": "iris-t001", "uid": owner["metadata"]["uid"],
        "controller": True, "blockOwnerDeletion": True}]
    assert adopted["metadata"]["labels"] == {
        "app.kubernetes.io/component": "trainer",
        "mlops.seed.io/model": "iris",
        "app.kubernetes.io/managed-by": "mlops-operator",
        "mlops.seed.io/trainingrun": "iris-t001",
    }
    assert child["metadata"]["namespace"] == "somewhere-else" and "ownerReferences" not in child["metadata"]


def test_adopt_twice_keeps_one_reference(owner: dict[str, Any]) -> None:
    twice = adopt(adopt(job(), owner), owner)
    assert len(twice["metadata"]["ownerReferences"]) == 1


def test_adopt_refuses_a_child_controlled_by_someone_else(owner: dict[str, Any]) -> None:
    child = job()
    child["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "u",
                                             "controller": True}]
    with pytest.raises(ValueError, match="already controlled by X 'x'"):
        adopt(child, owner)


def test_adopt_refuses_an_owner_name_that_cannot_be_a_label(owner: dict[str, Any]) -> None:
    long_owner = {**owner, "metadata": {**owner["metadata"], "name": "n" * 64}}
    with pytest.raises(ValueError, match="longer than 63 characters"):
        adopt(job(), long_owner)


def test_adopt_leaves_cluster_scoped_children_without_namespace(owner: dict[str, Any]) -> None:
    adopted = adopt({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}}, owner)
    assert "namespace" not in adopted["metadata"]


# -- children ----------------------------------------------------------------------------------


def test_children_are_created_adopted_then_unchanged(cluster: InMemoryCluster, owner: dict[str, Any]) -> None:
    plan = Plan(status={}, children=(job(),))
    first = apply_plan(cluster, owner, plan)
    assert first.created == ("Job/iris-t001-trainer",) and first.changed
    stored = cluster.get("batch/v1", "Job", NS, "iris-t001-trainer")
    assert stored["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
    assert cluster.list("batch/v1", "Job", NS, "mlops.seed.io/trainingrun=iris-t001")[0]["metadata"]["name"] == \
        "iris-t001-trainer"
    revision = cluster.revision
    second = apply_plan(cluster, owner, plan)
    assert second.unchanged == ("Job/iris-t001-trainer",)
    assert not second.changed and not second.created and not second.updated
    assert cluster.revision == revision


def test_a_changed_child_is_updated(cluster: InMemoryCluster, owner: dict[str, Any]) -> None:
    apply_plan(cluster, owner, Plan(status={}, children=(job(),)))
    changed = job()
    changed["spec"]["backoffLimit"] = 2
    result = apply_plan(cluster, owner, Plan(status={}, children=(changed,)))
    assert result.updated == ("Job/iris-t001-trainer",)
    assert cluster.get("batch/v1", "Job", NS, "iris-t001-trainer")["spec"]["backoffLimit"] == 2


def test_observed_children_save_the_read(cluster: InMemoryCluster, owner: dict[str, Any]) -> None:
    recording = RecordingCluster(cluster)
    key = ("batch/v1", "Job", "iris-t001-trainer")
    result = apply_plan(recording, owner, Plan(status={}, children=(job(),)), observed={key: None})
    assert result.created == ("Job/iris-t001-trainer",)
    assert recording.counts[("batch", "jobs", "get")] == 1  # recorded for apply's sake, no separate read


def test_owner_deletion_collects_the_children(cluster: InMemoryCluster, owner: dict[str, Any]) -> None:
    apply_plan(cluster, owner, Plan(status={}, children=(job(), {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "iris-t001-config"}, "data": {}})))
    cluster.delete(GV, "TrainingRun", NS, "iris-t001")
    assert cluster.list("batch/v1", "Job", NS) == [] and cluster.list("v1", "ConfigMap", NS) == []


# -- records and deletions -----------------------------------------------------------------------


def test_records_are_created_once_and_not_owned(cluster: InMemoryCluster, owner: dict[str, Any]) -> None:
    plan = Plan(status={}, records=(model_version(),))
    assert apply_plan(cluster, owner, plan).records_created == ("ModelVersion/iris-v1",)
    stored = cluster.get(GV, "ModelVersion", NS, "iris-v1")
    assert "ownerReferences" not in stored["metadata"]
    changed = model_version()
    changed["spec"]["model"] = "other"
    again = apply_plan(cluster, owner, Plan(status={}, records=(changed,)))
    assert again.records_existing == ("ModelVersion/iris-v1",)
    assert cluster.get(GV, "ModelVersion", NS, "iris-v1")["spec"]["model"] == "iris"  # immutable
    cluster.delete(GV, "TrainingRun", NS, "iris-t001")
    assert cluster.get(GV, "ModelVersion", NS, "iris-v1")  # outlives the owner


def test_deletions_tolerate_what_is_already_gone(cluster: InMemoryCluster, owner: dict[str, Any]) -> None:
    apply_plan(cluster, owner, Plan(status={}, children=(job(),)))
    plan = Plan(status={}, deletions=(("batch/v1", "Job", "iris-t001-trainer"), ("v1", "Service", "never")))
    result = apply_plan(cluster, owner, plan)
    assert result.deleted == ("Job/iris-t001-trainer",)
    assert result.already_gone == ("Service/never",)
    with pytest.raises(NotFound):
        cluster.get("batch/v1", "Job", NS, "iris-t001-trainer")


# -- status ---------------------------------------------------------------------------------------


def test_status_is_written_only_when_it_differs(cluster: InMemoryCluster, owner: dict[str, Any]) -> None:
    status = {"phase": "Running", "jobName": "iris-t001-trainer", "conditions": [{"type": "Ready", "status": "False"}]}
    first = apply_plan(cluster, owner, Plan(status=status))
    assert first.status_written and first.owner is not None
    assert first.owner["status"] == status
    revision = cluster.revision
    second = apply_plan(cluster, first.owner, Plan(status=status))
    assert not second.status_written and second.owner is None
    assert cluster.revision == revision


def test_status_is_replaced_whole(cluster: InMemoryCluster, owner: dict[str, Any]) -> None:
    first = apply_plan(cluster, owner, Plan(status={"phase": "Running", "message": "starting",
                                                    "metrics": {"a": 1}}))
    second = apply_plan(cluster, first.owner, Plan(status={"phase": "Succeeded", "metrics": {"b": 2},
                                                           "failure": None}))
    assert cluster.get(GV, "TrainingRun", NS, "iris-t001")["status"] == {"phase": "Succeeded", "metrics": {"b": 2}}
    third = apply_plan(cluster, second.owner, Plan(status={"phase": "Succeeded", "metrics": {"b": 2},
                                                           "failure": None}))
    assert not third.status_written  # None means absent: nothing left to write


def test_previous_status_is_what_status_is_compared_with(cluster: InMemoryCluster, owner: dict[str, Any]) -> None:
    result = apply_plan(cluster, owner, Plan(status={"phase": "Running"}), previous_status={"phase": "Running"})
    assert not result.status_written
    assert "status" not in cluster.get(GV, "TrainingRun", NS, "iris-t001")


def test_a_status_conflict_is_retried_once_on_a_fresh_read(cluster: InMemoryCluster, owner: dict[str, Any]) -> None:
    cluster.patch(GV, "TrainingRun", NS, "iris-t001", {"metadata": {"labels": {"moved": "on"}}})
    result = apply_plan(cluster, owner, Plan(status={"phase": "Running"}))  # owner is stale now
    assert result.status_written
    assert cluster.get(GV, "TrainingRun", NS, "iris-t001")["status"] == {"phase": "Running"}


class AlwaysConflicting(InMemoryCluster):
    def patch_status(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.attempts = getattr(self, "attempts", 0) + 1
        raise Conflict("the object has been modified")


def test_a_second_status_conflict_raises() -> None:
    cluster = AlwaysConflicting(now=lambda: T0)
    owner = cluster.create({"apiVersion": GV, "kind": "TrainingRun",
                            "metadata": {"name": "r", "namespace": NS}, "spec": {}})
    with pytest.raises(Conflict):
        write_status(cluster, owner, {"phase": "Running"})
    assert cluster.attempts == 2


# -- events ---------------------------------------------------------------------------------------


def test_events_are_core_v1_events_about_the_owner(cluster: InMemoryCluster, owner: dict[str, Any]) -> None:
    plan = Plan(status={}, events=(Event("TrainingStarted", "job iris-t001-trainer created"),
                                   Event("BadParameter", "C must be > 0", "Warning")))
    result = apply_plan(cluster, owner, plan, now=lambda: T0)
    assert len(result.events) == 2 and not result.event_errors
    started = cluster.get("v1", "Event", NS, result.events[0])
    assert started["involvedObject"] == {"apiVersion": GV, "kind": "TrainingRun", "name": "iris-t001",
                                         "uid": owner["metadata"]["uid"], "namespace": NS}
    assert (started["reason"], started["message"], started["type"], started["count"]) == \
        ("TrainingStarted", "job iris-t001-trainer created", "Normal", 1)
    assert started["firstTimestamp"] == started["lastTimestamp"] == "2026-01-02T03:04:05Z"
    assert started["source"] == {"component": "mlops-operator"}
    assert started["metadata"]["name"].startswith("iris-t001.")
    assert cluster.get("v1", "Event", NS, result.events[1])["type"] == "Warning"


def test_a_repeated_event_bumps_its_count(cluster: InMemoryCluster, owner: dict[str, Any]) -> None:
    event = Event("Retrying", "S3 unreachable")
    apply_plan(cluster, owner, Plan(status={}, events=(event,)), now=lambda: T0)
    later = T0 + timedelta(minutes=5)
    result = apply_plan(cluster, owner, Plan(status={}, events=(event,)), now=lambda: later)
    events = cluster.list("v1", "Event", NS)
    assert len(events) == 1 and events[0]["metadata"]["name"] == result.events[0] == event_name(owner, event)
    assert events[0]["count"] == 2
    assert (events[0]["firstTimestamp"], events[0]["lastTimestamp"]) == ("2026-01-02T03:04:05Z",
                                                                         "2026-01-02T03:09:05Z")
    apply_plan(cluster, owner, Plan(status={}, events=(Event("Retrying", "other message"),)))
    assert len(cluster.list("v1", "Event", NS)) == 2


def test_a_long_event_message_is_cut(cluster: InMemoryCluster, owner: dict[str, Any]) -> None:
    result = apply_plan(cluster, owner, Plan(status={}, events=(Event("Failed", "x" * 5000),)))
    assert len(cluster.get("v1", "Event", NS, result.events[0])["message"]) == 1024


class NoEvents(InMemoryCluster):
    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        if obj["kind"] == "Event":
            raise NotFound('namespaces "gone" not found')
        return super().create(obj)


def test_event_failures_are_reported_not_raised() -> None:
    cluster = NoEvents(now=lambda: T0)
    owner = cluster.create({"apiVersion": GV, "kind": "TrainingRun",
                            "metadata": {"name": "r", "namespace": NS}, "spec": {}})
    result = apply_plan(cluster, owner, Plan(status={"phase": "Failed"}, events=(Event("Failed", "m"),)))
    assert result.status_written
    assert result.events == () and result.event_errors == ('Failed: namespaces "gone" not found',)


# -- the whole step -----------------------------------------------------------------------------------


def test_applying_the_same_plan_twice_changes_nothing(cluster: InMemoryCluster, owner: dict[str, Any]) -> None:
    plan = Plan(
        status={"phase": "Running", "observedGeneration": 1},
        children=(job(), {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "iris-t001-svc"},
                          "spec": {"ports": [{"port": 8080}]}}),
        records=(model_version(),),
        deletions=(("v1", "ConfigMap", "old-config"),),
    )
    first = apply_plan(cluster, owner, plan)
    assert isinstance(first, AppliedPlan) and first.changed
    assert set(first.created) == {"Job/iris-t001-trainer", "Service/iris-t001-svc"}
    revision = cluster.revision
    second = apply_plan(cluster, first.owner or owner, plan)
    assert not second.changed
    assert set(second.unchanged) == {"Job/iris-t001-trainer", "Service/iris-t001-svc"}
    assert cluster.revision == revision


def test_the_permissions_apply_plan_needs(cluster: InMemoryCluster, owner: dict[str, Any]) -> None:
    recording = RecordingCluster(cluster)
    plan = Plan(status={"phase": "Running"}, children=(job(),), records=(model_version(),),
                deletions=(("v1", "ConfigMap", "gone"),), events=(Event("Started", "go"),))
    apply_plan(recording, owner, plan)
    apply_plan(recording, owner, plan)  # the second time the event already exists: get + patch
    assert recording.calls == {
        ("batch", "jobs", "get"), ("batch", "jobs", "create"), ("batch", "jobs", "patch"),
        ("mlops.seed.io", "modelversions", "create"),
        ("", "configmaps", "delete"),
        ("mlops.seed.io", "trainingruns/status", "patch"),
        ("mlops.seed.io", "trainingruns", "get"),  # re-read after the stale owner's status conflict
        ("", "events", "create"), ("", "events", "get"), ("", "events", "patch"),
    }
