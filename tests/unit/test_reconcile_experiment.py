"""Experiment reconcile: trials kept at `parallelism`, never more than maxTrials, failure
after maxFailedTrials, early stop, goals, registration due, status and events."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mlops_operator.api.experiment import Experiment
from mlops_operator.reconcile.common import Settings
from mlops_operator.reconcile.experiment import (
    ExperimentObserved,
    RegisteredVersion,
    TrialFacts,
    desired_trial,
    reconcile,
    registrations_due,
    spec_problems,
    trial_facts,
)
from mlops_operator.search import propose

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def make_exp(status: dict | None = None, search: dict | None = None, **spec) -> Experiment:
    body = {
        "model": "iris",
        "dataset": {"uri": "sklearn://iris"},
        "estimator": "sklearn.svm.SVC",
        "params": {"kernel": "rbf"},
        "search": {"algorithm": "random", "maxTrials": 5, "parallelism": 2, "maxFailedTrials": 1, "seed": 4,
                   "space": {"C": {"min": 0.1, "max": 10}}, **(search or {})},
        "objective": {"metric": "accuracy", "goal": "maximize"},
    }
    body.update(spec)
    doc = {"apiVersion": "mlops.seed.io/v1alpha1", "kind": "Experiment",
           "metadata": {"name": "iris", "namespace": "ns", "generation": 1}, "spec": body}
    if status is not None:
        doc["status"] = status
    return Experiment.model_validate(doc)


def trial(index: int, phase: str = "Succeeded", value: float | None = None, **params) -> TrialFacts:
    return TrialFacts(name=f"iris-t{index:03d}", index=index, phase=phase,
                      params={"kernel": "rbf", "C": 1.0, **params},
                      objective_value=value if phase == "Succeeded" else None,
                      metrics={"accuracy": value} if value is not None else {})


def observed(*trials: TrialFacts, versions: tuple[RegisteredVersion, ...] = ()) -> ExperimentObserved:
    return ExperimentObserved(trials=trials, versions=versions)


def started(plan) -> list[str]:
    return [c["metadata"]["name"] for c in plan.children]


def reasons(plan) -> list[str]:
    return [e.reason for e in plan.events]


@pytest.mark.parametrize("trials, expected_new, phase", [
    ((), ["iris-t001", "iris-t002"], "Running"),
    ((trial(1, "Running"),), ["iris-t002"], "Running"),
    ((trial(1, "Running"), trial(2, "Pending")), [], "Running"),
    ((trial(1, value=0.9), trial(2, "Running")), ["iris-t003"], "Running"),
    ((trial(1, value=0.9), trial(2, value=0.8), trial(3, value=0.7), trial(4, "Running")), ["iris-t005"], "Running"),
    ((trial(1, value=0.9), trial(2, value=0.8), trial(3, value=0.7), trial(4, "Running"), trial(5, "Running")),
     [], "Running"),
])
def test_keeps_parallelism_within_max_trials(trials, expected_new, phase):
    plan = reconcile(make_exp(), observed(*trials), NOW)
    assert started(plan) == expected_new
    assert plan.status["phase"] == phase
    assert plan.status["trials"]["total"] == len(trials) + len(expected_new)


def test_grid_size_caps_the_trials():
    exp = make_exp(search={"algorithm": "grid", "maxTrials": 10, "parallelism": 10,
                           "space": {"C": {"values": [0.1, 1.0, 10.0]}}})
    plan = reconcile(exp, observed(), NOW)
    assert started(plan) == ["iris-t001", "iris-t002", "iris-t003"]
    assert [c["spec"]["params"]["C"] for c in plan.children] == [0.1, 1.0, 10.0]


def test_trial_manifest():
    exp = make_exp(metrics=["accuracy"], resources={"limits": {"cpu": "500m"}})
    proposal = propose(exp.spec.search, [], 3)
    manifest = desired_trial(exp, 3, proposal)
    assert manifest == {
        "apiVersion": "mlops.seed.io/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "iris-t003", "namespace": "ns", "labels": {
            "app.kubernetes.io/managed-by": "mlops-operator",
            "app.kubernetes.io/part-of": "mlops",
            "app.kubernetes.io/component": "trial",
            "mlops.seed.io/experiment": "iris",
            "mlops.seed.io/model": "iris",
            "mlops.seed.io/trial-index": "3",
        }},
        "spec": {
            "model": "iris", "experiment": "iris",
            "dataset": {"uri": "sklearn://iris", "testSize": 0.2},
            "estimator": "sklearn.svm.SVC",
            "params": {"kernel": "rbf", "C": proposal["C"]},
            "objective": {"metric": "accuracy", "goal": "maximize"},
            "seed": 4, "image": "mlops-runtime:0.1.0",
            "artifacts": {"bucket": "mlops", "secretName": "mlops-s3"},
            "activeDeadlineSeconds": 3600, "backoffLimit": 0, "onnx": True,
            "metrics": ["accuracy"], "resources": {"limits": {"cpu": "500m"}},
        },
    }


def test_trials_are_the_same_after_a_restart():
    exp = make_exp()
    first = reconcile(exp, observed(), NOW)
    again = reconcile(exp, observed(), NOW)
    assert first.children == again.children


def test_best_trial_leaderboard_and_goal():
    trials = (trial(1, value=0.8, C=0.5), trial(2, value=0.95, C=2.0), trial(3, value=0.95, C=3.0),
              trial(4, "Failed"), trial(5, "Running"))
    plan = reconcile(make_exp(), observed(*trials), NOW)
    s = plan.status
    assert s["bestTrial"]["name"] == "iris-t002"  # ties go to the earlier trial
    assert s["bestTrial"]["params"] == {"kernel": "rbf", "C": 2.0}
    assert s["bestObjectiveValue"] == 0.95
    assert [t["name"] for t in s["leaderboard"]] == ["iris-t002", "iris-t003", "iris-t001"]
    assert s["leaderboard"][0]["params"] == {"C": 2.0}
    assert s["trials"] == {"total": 5, "pending": 0, "running": 1, "succeeded": 3, "failed": 1}

    minimize = make_exp(objective={"metric": "log_loss", "goal": "minimize"})
    plan = reconcile(minimize, observed(*trials), NOW)
    assert plan.status["bestTrial"]["name"] == "iris-t001"


def test_leaderboard_is_bounded():
    trials = tuple(trial(i, value=i / 100) for i in range(1, 16))
    exp = make_exp(search={"maxTrials": 15, "parallelism": 2})
    plan = reconcile(exp, observed(*trials), NOW)
    assert len(plan.status["leaderboard"]) == 10
    assert plan.status["leaderboard"][0]["name"] == "iris-t015"


def test_max_failed_trials_fails_the_experiment():
    trials = (trial(1, "Failed"), trial(2, "Failed"), trial(3, "Running"))
    plan = reconcile(make_exp(), observed(*trials), NOW)
    assert started(plan) == []
    assert plan.status["phase"] == "Failed"
    ready = next(c for c in plan.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "MaxFailedTrialsReached")
    assert "MaxFailedTrialsReached" in reasons(plan)
    assert registrations_due(make_exp(), observed(*trials)) == ()


def test_failures_within_budget_continue():
    plan = reconcile(make_exp(), observed(trial(1, "Failed"), trial(2, "Running")), NOW)
    assert started(plan) == ["iris-t003"]
    assert reasons(plan).count("TrialFailed") == 1


def test_trial_failed_event_only_once():
    first = reconcile(make_exp(), observed(trial(1, "Failed"), trial(2, "Running")), NOW)
    second = reconcile(make_exp(status=first.status), observed(trial(1, "Failed"), trial(2, "Running"),
                                                            trial(3, "Pending")), NOW)
    assert "TrialFailed" not in reasons(second)


def test_early_stop_on_target_value():
    exp = make_exp(search={"earlyStopping": {"targetValue": 0.9}})
    plan = reconcile(exp, observed(trial(1, value=0.93), trial(2, "Running")), NOW)
    assert started(plan) == []
    assert plan.status["phase"] == "Running"  # waits for the running trial
    assert "EarlyStopped" in reasons(plan)
    done = reconcile(make_exp(status=plan.status, search={"earlyStopping": {"targetValue": 0.9}}),
                     observed(trial(1, value=0.93), trial(2, value=0.5)), NOW)
    assert registrations_due(exp, observed(trial(1, value=0.93), trial(2, value=0.5))) == ("iris-t001",)
    assert done.status["phase"] == "Running"  # until the version is registered
    complete = next(c for c in done.status["conditions"] if c["type"] == "RunsComplete")
    assert (complete["status"], complete["reason"]) == ("True", "EarlyStopped")


def test_early_stop_on_patience():
    exp = make_exp(search={"maxTrials": 10, "earlyStopping": {"patience": 2}})
    trials = (trial(1, value=0.9), trial(2, value=0.8), trial(3, "Failed"))
    assert started(reconcile(exp, observed(*trials), NOW)) == []
    assert started(reconcile(exp, observed(*trials[:2]), NOW)) == ["iris-t003", "iris-t004"]


def test_minimize_target():
    exp = make_exp(objective={"metric": "rmse", "goal": "minimize"}, search={"earlyStopping": {"targetValue": 0.2}})
    assert started(reconcile(exp, observed(trial(1, value=0.3)), NOW)) == ["iris-t002", "iris-t003"]
    assert started(reconcile(exp, observed(trial(1, value=0.1)), NOW)) == []


@pytest.mark.parametrize("policy, expected", [
    ("registerBest", ("iris-t002",)),
    ("registerAll", ("iris-t001", "iris-t002", "iris-t004")),
    ("none", ()),
])
def test_registration_policy(policy, expected):
    trials = (trial(1, value=0.8), trial(2, value=0.9), trial(3, "Failed"), trial(4, value=0.7))
    exp = make_exp(registerPolicy=policy, search={"maxTrials": 4, "maxFailedTrials": 2})
    assert registrations_due(exp, observed(*trials)) == expected


def test_succeeds_once_registered():
    trials = (trial(1, value=0.8), trial(2, value=0.9))
    exp = make_exp(search={"maxTrials": 2})
    versions = (RegisteredVersion("iris-v7", "iris-t002", 7),)
    plan = reconcile(exp, observed(*trials, versions=versions), NOW)
    assert registrations_due(exp, observed(*trials, versions=versions)) == ()
    assert plan.status["phase"] == "Succeeded"
    assert plan.status["modelVersion"] == "iris-v7"
    assert plan.status["registeredVersions"] == ["iris-v7"]
    assert plan.status["completionTime"] == "2026-03-01T12:00:00Z"
    assert {"VersionRegistered", "Succeeded", "BestTrialImproved"} <= set(reasons(plan))
    assert [e.message for e in plan.events if e.reason == "VersionRegistered"] == ["registered iris-v7 from iris-t002"]
    # A finished Experiment is a record: later passes change nothing and emit nothing.
    again = reconcile(make_exp(status=plan.status, search={"maxTrials": 50}), observed(*trials), NOW)
    assert again.status == plan.status and again.children == () and again.events == ()


def test_no_succeeded_trial_fails():
    exp = make_exp(search={"maxTrials": 2, "parallelism": 2, "maxFailedTrials": 5})
    plan = reconcile(exp, observed(trial(1, "Failed"), trial(2, "Failed")), NOW)
    assert plan.status["phase"] == "Failed"
    assert next(c for c in plan.status["conditions"] if c["type"] == "Ready")["reason"] == "NoSucceededTrials"


def test_budget_changes_apply_live():
    trials = (trial(1, value=0.8), trial(2, value=0.9))
    assert started(reconcile(make_exp(search={"maxTrials": 2}), observed(*trials), NOW)) == []
    assert started(reconcile(make_exp(search={"maxTrials": 6, "parallelism": 3}), observed(*trials), NOW)) == [
        "iris-t003", "iris-t004", "iris-t005"]


def test_other_spec_changes_apply_to_new_trials_only():
    trials = (trial(1, "Running"),)
    plan = reconcile(make_exp(estimator="sklearn.svm.LinearSVC"), observed(*trials), NOW)
    assert [c["spec"]["estimator"] for c in plan.children] == ["sklearn.svm.LinearSVC"]


def test_best_improved_event_only_on_change():
    trials = (trial(1, value=0.8),)
    first = reconcile(make_exp(), observed(*trials), NOW)
    assert "BestTrialImproved" in reasons(first)
    second = reconcile(make_exp(status=first.status), observed(*trials, trial(2, "Running"), trial(3, "Running")), NOW)
    assert "BestTrialImproved" not in reasons(second)
    third = reconcile(make_exp(status=second.status), observed(*trials, trial(2, value=0.9), trial(3, "Running")), NOW)
    improved = [e for e in third.events if e.reason == "BestTrialImproved"]
    assert improved[0].message == "iris-t002: accuracy=0.9 (was 0.8)"


def test_spec_problems_name_the_field():
    assert spec_problems(make_exp(estimator="os.system"), Settings()) == [
        "spec.estimator: 'os.system' is not in the operator's allow-list (sklearn.)"]
    assert spec_problems(make_exp(metrics=["f1_macro"]), Settings()) == [
        "spec.objective.metric: 'accuracy' is not among spec.metrics ['f1_macro']"]
    assert spec_problems(make_exp(metrics=["accuracy"], objective={"metric": "cv_accuracy_mean"}), Settings()) == []


def test_trial_facts_from_the_api_object():
    obj = {"metadata": {"name": "iris-t012", "labels": {"mlops.seed.io/trial-index": "12"}},
           "spec": {"params": {"C": 1}}, "status": {"phase": "Succeeded", "objectiveValue": 0.5,
                                                    "metrics": {"accuracy": 0.5}, "message": "ok"}}
    assert trial_facts(obj) == TrialFacts("iris-t012", 12, "Succeeded", {"C": 1}, 0.5, {"accuracy": 0.5}, "ok")
    assert trial_facts({"metadata": {"name": "iris-t007"}}).index == 7
