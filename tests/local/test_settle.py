"""When the local instance counts as settled, and what counts as a failure."""

from __future__ import annotations

from typing import Any

from mlops_operator.local.settle import assess, deployment_ready


def obj(kind: str, name: str, phase: str | None, generation: int = 1, observed: int | None = 1,
        **extra: Any) -> dict[str, Any]:
    status = {} if phase is None else {"phase": phase, "observedGeneration": observed}
    return {"kind": kind, "metadata": {"name": name, "namespace": "default", "generation": generation,
                                       **extra.pop("metadata", {})},
            "spec": extra.pop("spec", {}), "status": status}


def deployment(name: str, ready: int, replicas: int = 1, service: str | None = "iris",
               generation: int = 1, observed: int = 1) -> dict[str, Any]:
    labels = {"mlops.seed.io/inferenceservice": service} if service else {}
    return {"kind": "Deployment", "metadata": {"name": name, "namespace": "default", "generation": generation,
                                               "labels": labels},
            "spec": {"replicas": 1},
            "status": {"observedGeneration": observed, "replicas": replicas, "readyReplicas": ready,
                       "updatedReplicas": ready}}


def job(name: str, condition: str | None, owner: str | None = None) -> dict[str, Any]:
    conditions = [{"type": condition, "status": "True"}] if condition else []
    owners = [{"kind": owner, "name": "x", "uid": "u"}] if owner else []
    return {"kind": "Job", "metadata": {"name": name, "namespace": "default", "ownerReferences": owners},
            "status": {"conditions": conditions}}


def test_terminal_objects_with_ready_deployments_are_settled() -> None:
    objects = [obj("Experiment", "iris", "Succeeded"), obj("TrainingRun", "iris-t001", "Succeeded"),
               obj("ModelVersion", "iris-v1", "Validated"), obj("InferenceService", "iris", "Stable")]
    result = assess(objects, [deployment("iris-champion", 1), deployment("iris-router", 1)], [job("t", "Complete")])
    assert result.settled and result.failed == [] and result.waiting == []


def test_work_in_progress_is_not_settled() -> None:
    result = assess([obj("Experiment", "iris", "Running"), obj("ModelVersion", "iris-v1", None),
                     obj("InferenceService", "iris", "Progressing")],
                    [deployment("iris-champion", 0)], [job("t", None)])
    assert not result.settled
    assert result.waiting == ["Experiment default/iris (Running)", "ModelVersion default/iris-v1 (no status yet)",
                              "InferenceService default/iris (Progressing)",
                              "Deployment default/iris-champion (not ready)", "Job default/t (running)"]


def test_a_stale_status_is_not_settled() -> None:
    result = assess([obj("Experiment", "iris", "Succeeded", generation=2, observed=1)], [])
    assert not result.settled


def test_a_rollout_in_progress_is_not_ready() -> None:
    assert not deployment_ready(deployment("iris-champion", 1, replicas=2))  # the old pod still runs
    assert not deployment_ready(deployment("iris-champion", 1, generation=2, observed=1))
    assert deployment_ready(deployment("iris-champion", 1))


def test_what_counts_as_failed() -> None:
    trial = obj("TrainingRun", "iris-t001", "Failed", spec={"experiment": "iris"})
    standalone = obj("TrainingRun", "one-off", "Failed")
    objects = [obj("Experiment", "iris", "Failed"), trial, standalone,
               obj("ModelVersion", "iris-v2", "Rejected"), obj("InferenceService", "iris", "RolledBack"),
               obj("InferenceService", "other", "Failed")]
    result = assess(objects, [deployment("other-champion", 0, service="other")],
                    [job("a", "Failed"), job("b", "Failed", owner="TrainingRun")])
    assert result.settled  # a Failed service's deployments are not waited for
    assert [f.split(":")[0] for f in result.failed] == [
        "Experiment default/iris", "TrainingRun default/one-off", "InferenceService default/other", "Job default/a"]


def test_a_refused_spec_is_settled_and_failed_until_it_changes() -> None:
    stalled = {"type": "Stalled", "status": "True", "reason": "InvalidSpec", "observedGeneration": 1,
               "message": "spec.estimator: estimator 'sklearn.x.Y': module 'sklearn.x' cannot be imported"}
    refused = obj("Experiment", "badest", None)
    refused["status"] = {"conditions": [stalled], "observedGeneration": 1}
    result = assess([refused], [])
    assert result.settled
    assert result.failed == ["Experiment default/badest: InvalidSpec: spec.estimator: estimator 'sklearn.x.Y': "
                             "module 'sklearn.x' cannot be imported"]
    edited = obj("Experiment", "badest", None, generation=2)  # a new spec: judged again, so not yet settled
    edited["status"] = {"conditions": [stalled], "observedGeneration": 1}
    assert not assess([edited], []).settled
    fixed = obj("Experiment", "badest", "Running", generation=2, observed=2)
    fixed["status"]["conditions"] = [{**stalled, "status": "False", "observedGeneration": 2}]
    assert not assess([fixed], []).settled and assess([fixed], []).failed == []


def _version(version: int, phase: str = "Validated") -> dict[str, Any]:
    prefix = f"s3://mlops/default/iris/iris-t{version:03d}/"
    return {"apiVersion": "mlops.seed.io/v1alpha1", "kind": "ModelVersion",
            "metadata": {"name": f"iris-v{version}", "namespace": "default", "generation": 1},
            "spec": {"model": "iris", "version": version, "metrics": {"accuracy": 0.9},
                     "artifact": {"uri": prefix, "modelUri": prefix + "model.skops", "sha256": "0" * 64}},
            "status": {"phase": phase, "observedGeneration": 1}}


def _promoted_service(rolled_back: list[str]) -> dict[str, Any]:
    return {"apiVersion": "mlops.seed.io/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": "iris", "namespace": "default", "generation": 1},
            "spec": {"model": "iris", "champion": {"policy": "bestValidated"},
                     "challenger": {"policy": "latestValidated"}},
            "status": {"phase": "Promoted", "observedGeneration": 1, "champion": "iris-v2",
                       "rolledBackVersions": rolled_back}}


def test_a_settled_looking_service_waits_while_a_rollout_of_a_newer_validated_version_is_due() -> None:
    # The operator has not yet seen iris-v3 turn Validated: the service still reads Promoted.
    pending = assess([_promoted_service([]), _version(1), _version(2), _version(3)], [])
    assert not pending.settled
    assert pending.waiting == ["InferenceService default/iris (Promoted; a rollout of iris-v3 is due)"]
    # Not due: iris-v3 was rejected, or rolled back already.
    assert assess([_promoted_service([]), _version(2), _version(3, phase="Rejected")], []).settled
    assert assess([_promoted_service(["iris-v3"]), _version(2), _version(3)], []).settled
