"""ModelVersion reconcile: gates (thresholds, champion comparisons), immutability, roles,
and the record built from a TrainingRun."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mlops_operator.api.experiment import Experiment
from mlops_operator.api.ml import ValidationGate
from mlops_operator.api.model_version import ModelVersion
from mlops_operator.api.training_run import TrainingRun
from mlops_operator.reconcile.common import Settings
from mlops_operator.reconcile.model_version import (
    NO_CHAMPION,
    ChampionFacts,
    ModelVersionObserved,
    ServiceFacts,
    champion_service,
    desired_model_version,
    evaluate_gate,
    next_version,
    reconcile,
    service_facts,
    serving_role,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SHA = "d" * 64


def make_mv(name: str = "iris-v2", status: dict | None = None, gates: list | None = None, **spec) -> ModelVersion:
    body = {
        "model": "iris", "version": 2,
        "artifact": {"uri": "s3://mlops/ns/iris/iris-t002/", "modelUri": "s3://mlops/ns/iris/iris-t002/model.skops",
                     "sha256": SHA},
        "metrics": {"accuracy": 0.95, "log_loss": 0.2},
        "validation": {"gates": gates or []},
    }
    body.update(spec)
    doc = {"apiVersion": "mlops.seed.io/v1alpha1", "kind": "ModelVersion",
           "metadata": {"name": name, "namespace": "ns", "generation": 1}, "spec": body}
    if status is not None:
        doc["status"] = status
    return ModelVersion.model_validate(doc)


def gate(**kw) -> ValidationGate:
    return ValidationGate.model_validate(kw)


CHAMP = ChampionFacts(name="iris-v1", service="iris", metrics={"accuracy": 0.93, "log_loss": 0.25})


@pytest.mark.parametrize("g, champion, passed, message", [
    (gate(metric="accuracy", threshold=0.9), None, True, "accuracy=0.95 >= 0.9"),
    (gate(metric="accuracy", threshold=0.96), None, False, "accuracy=0.95 below the threshold 0.96"),
    (gate(metric="log_loss", threshold=0.3), None, True, "log_loss=0.2 <= 0.3"),
    (gate(metric="log_loss", threshold=0.1), None, False, "log_loss=0.2 above the threshold 0.1"),
    (gate(metric="f1_macro", threshold=0.1), None, False, "f1_macro is not among the version's metrics"),
    (gate(metric="accuracy", minAbsoluteChange=0.01), None, True, NO_CHAMPION),
    (gate(metric="accuracy", minAbsoluteChange=0.01), CHAMP, True,
     "accuracy=0.95 vs champion iris-v1 0.93 (improvement +0.02, required +0.01)"),
    (gate(metric="accuracy", minAbsoluteChange=0.05), CHAMP, False,
     "accuracy=0.95 lost against champion iris-v1 0.93 (improvement +0.02, required +0.05)"),
    (gate(metric="accuracy", minRelativeChange=0.05), CHAMP, False,
     "accuracy=0.95 lost against champion iris-v1 0.93 (improvement +0.02, required +0.0465)"),
    (gate(metric="log_loss", minAbsoluteChange=0.04), CHAMP, True,
     "log_loss=0.2 vs champion iris-v1 0.25 (improvement +0.05, required +0.04)"),
    # A bare gate: at least as good as the champion.
    (gate(metric="accuracy"), ChampionFacts("iris-v1", "iris", {"accuracy": 0.97}), False,
     "accuracy=0.95 lost against champion iris-v1 0.97 (improvement -0.02, required +0)"),
    # The threshold passed, the comparison did not: the message says it lost, then what passed.
    (gate(metric="accuracy", threshold=0.9, minAbsoluteChange=0.0), ChampionFacts("iris-v1", "iris", {"accuracy": 0.97}),
     False, "accuracy=0.95 lost against champion iris-v1 0.97 (improvement -0.02, required +0); accuracy=0.95 >= 0.9"),
    (gate(metric="accuracy", minAbsoluteChange=0.0), ChampionFacts("iris-v1", "iris", {}), True,
     "champion iris-v1 has no accuracy: nothing to compare with"),
    (gate(metric="accuracy", threshold=0.99, minAbsoluteChange=0.0), CHAMP, False,
     "accuracy=0.95 below the threshold 0.99; accuracy=0.95 vs champion iris-v1 0.93 (improvement +0.02, required +0)"),
])
def test_gates(g, champion, passed, message):
    result = evaluate_gate(g, {"accuracy": 0.95, "log_loss": 0.2}, champion)
    assert (result.passed, result.message) == (passed, message)
    if champion is not None:
        assert result.champion == "iris-v1"


def conditions(plan) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in plan.status["conditions"]}


def test_validated_with_no_champion():
    plan = reconcile(make_mv(gates=[{"metric": "accuracy", "threshold": 0.9, "minAbsoluteChange": 0.01}]),
                     ModelVersionObserved(), NOW)
    s = plan.status
    assert s["phase"] == "Validated" and s["validatedTime"] == "2026-03-01T12:00:00Z"
    assert s["gates"][0]["passed"] is True and NO_CHAMPION in s["gates"][0]["message"]
    assert conditions(plan) == {"Validated": ("True", "Validated"), "Ready": ("True", "Validated")}
    assert [e.reason for e in plan.events] == ["Validated"]
    assert plan.metrics == {"model_version_phase": "Validated"}


def test_rejected_against_the_champion():
    plan = reconcile(make_mv(gates=[{"metric": "accuracy", "minAbsoluteChange": 0.05}]),
                     ModelVersionObserved(champion=CHAMP), NOW)
    assert plan.status["phase"] == "Rejected"
    assert plan.status["gates"][0]["championValue"] == 0.93
    assert conditions(plan) == {"Validated": ("False", "GateFailed"), "Ready": ("False", "Rejected")}
    assert plan.events[0].type == "Warning" and "accuracy" in plan.events[0].message


def test_validation_happens_once():
    first = reconcile(make_mv(gates=[{"metric": "accuracy", "minAbsoluteChange": 0.01}]), ModelVersionObserved(), NOW)
    later = reconcile(make_mv(status=first.status, gates=[{"metric": "accuracy", "minAbsoluteChange": 0.01}]),
                      ModelVersionObserved(champion=ChampionFacts("iris-v9", "iris", {"accuracy": 0.99})), NOW)
    assert later.status == first.status and later.events == ()


def test_spec_change_is_refused():
    first = reconcile(make_mv(), ModelVersionObserved(), NOW)
    changed = make_mv(status=first.status, metrics={"accuracy": 0.99})
    plan = reconcile(changed, ModelVersionObserved(), NOW)
    assert plan.status["phase"] == "Validated" and plan.status["specHash"] == first.status["specHash"]
    assert conditions(plan)["Ready"] == ("False", "SpecImmutable")
    assert conditions(plan)["Stalled"] == ("True", "SpecImmutable")
    assert [e.reason for e in plan.events] == ["SpecImmutable"]
    again = reconcile(make_mv(status=plan.status, metrics={"accuracy": 0.99}), ModelVersionObserved(), NOW)
    assert again.events == ()
    restored = reconcile(make_mv(status=plan.status), ModelVersionObserved(), NOW)
    assert conditions(restored)["Ready"] == ("True", "Validated")
    assert conditions(restored)["Stalled"][0] == "False"


@pytest.mark.parametrize("services, old, role, refs", [
    ((), "none", "none", []),
    ((ServiceFacts("a", champion="iris-v2"),), "none", "champion", [("a", "champion")]),
    ((ServiceFacts("a", champion="iris-v1", challenger="iris-v2"),), "none", "challenger", [("a", "challenger")]),
    ((ServiceFacts("a", champion="iris-v3", previous="iris-v2"),), "champion", "previous", [("a", "previous")]),
    ((ServiceFacts("a", champion="iris-v1", rolled_back=("iris-v2",)),), "challenger", "rolledBack",
     [("a", "rolledBack")]),
    ((ServiceFacts("a", champion="iris-v4"),), "previous", "retired", []),
    ((ServiceFacts("a", champion="iris-v4", past_champions=("iris-v2",)),), "none", "retired", []),
    ((ServiceFacts("a", champion="iris-v1"),), "challenger", "none", []),
    ((ServiceFacts("b", challenger="iris-v2"), ServiceFacts("a", champion="iris-v2")), "none", "champion",
     [("a", "champion"), ("b", "challenger")]),
])
def test_serving_role(services, old, role, refs):
    got_role, got_refs = serving_role("iris-v2", services, old)
    assert got_role == role
    assert [(r.service, r.role) for r in got_refs] == refs


def test_service_facts_and_champion_choice():
    obj = {"metadata": {"name": "iris"}, "status": {
        "champion": "iris-v3", "challenger": "iris-v4", "previous": "iris-v2", "rolledBackVersions": ["iris-v5"],
        "history": [{"action": "Initial", "version": "iris-v1"}, {"action": "Promoted", "version": "iris-v2",
                                                                   "replaced": "iris-v1"}]}}
    facts = service_facts(obj)
    assert facts == ServiceFacts("iris", "iris-v3", "iris-v4", "iris-v2", ("iris-v5",), ("iris-v1", "iris-v2", "iris-v1"))
    mv = make_mv("iris-v4")
    assert champion_service(mv, [facts]).name == "iris"
    assert champion_service(make_mv("iris-v3"), [facts]) is None
    named = make_mv("iris-v4", validation={"compareWithChampionOf": "other"})
    assert champion_service(named, [facts]) is None


def test_next_version():
    assert next_version([]) == 1
    assert next_version([1, 4, 2]) == 5


def test_record_from_a_training_run():
    run = TrainingRun.model_validate({
        "apiVersion": "mlops.seed.io/v1alpha1", "kind": "TrainingRun",
        "metadata": {"name": "iris-t002", "namespace": "ns"},
        "spec": {"model": "iris", "experiment": "iris", "dataset": {"uri": "sklearn://iris"},
                 "estimator": "sklearn.svm.SVC", "params": {"C": 2.0}, "objective": {"metric": "accuracy"}},
        "status": {"phase": "Succeeded", "metrics": {"accuracy": 0.95}, "artifactUri": "s3://mlops/ns/iris/iris-t002/",
                   "modelUri": "s3://mlops/ns/iris/iris-t002/model.skops", "sha256": SHA, "size": 10,
                   "datasetSha256": "e" * 64, "sklearnVersion": "1.9.1"},
    })
    exp = Experiment.model_validate({
        "metadata": {"name": "iris"},
        "spec": {"model": "iris", "dataset": {"uri": "sklearn://iris"}, "estimator": "sklearn.svm.SVC",
                 "validation": {"gates": [{"metric": "accuracy", "threshold": 0.9}]}}})
    manifest = desired_model_version(run, 3, exp, Settings(code_version="9.9.9"))
    assert manifest["metadata"] == {"name": "iris-v3", "namespace": "ns", "labels": {
        "app.kubernetes.io/managed-by": "mlops-operator", "app.kubernetes.io/part-of": "mlops",
        "app.kubernetes.io/component": "model-version", "mlops.seed.io/trainingrun": "iris-t002",
        "mlops.seed.io/model": "iris", "mlops.seed.io/experiment": "iris"}}
    assert "ownerReferences" not in manifest["metadata"]
    assert manifest["spec"] == {
        "model": "iris", "version": 3,
        "artifact": {"uri": "s3://mlops/ns/iris/iris-t002/", "modelUri": "s3://mlops/ns/iris/iris-t002/model.skops",
                     "sha256": SHA, "size": 10, "servingFormat": "skops"},
        "estimator": "sklearn.svm.SVC", "params": {"C": 2.0}, "metrics": {"accuracy": 0.95},
        "objective": {"metric": "accuracy", "goal": "maximize"},
        "lineage": {"trainingRun": "iris-t002", "experiment": "iris",
                    "dataset": {"uri": "sklearn://iris", "sha256": "e" * 64}, "image": "mlops-runtime:0.1.0",
                    "codeVersion": "9.9.9", "sklearnVersion": "1.9.1", "estimator": "sklearn.svm.SVC"},
        "validation": {"gates": [{"metric": "accuracy", "threshold": 0.9}]},
    }
    broken = run.model_copy(update={"status": run.status.model_copy(update={"sha256": None})})
    with pytest.raises(ValueError, match="iris-t002 cannot be registered: artifact.sha256"):
        desired_model_version(broken, 1, None, Settings())
