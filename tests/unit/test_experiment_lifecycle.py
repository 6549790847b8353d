"""An Experiment's trials from start to finish (issue #15): a failed search starts nothing
more and stops what is queued, RunsComplete says True only when no trial runs, the default
parallelism follows a small maxTrials, and a spec that no trial could run is refused once,
before any trial exists."""

from __future__ import annotations

import json
from typing import Any

import pytest

from _training_world import API, SETTINGS, World, experiment_manifest
from mlops_operator.api.experiment import Experiment, Search
from mlops_operator.controllers import experiment as controller
from mlops_operator.reconcile.experiment import ExperimentObserved, TrialFacts, reconcile
from test_reconcile_experiment import NOW, make_exp


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def trials(*phases: str) -> ExperimentObserved:
    return ExperimentObserved(trials=tuple(
        TrialFacts(name=f"iris-t{i:03d}", index=i, phase=phase, params={"C": 1.0},
                   objective_value=0.9 if phase == "Succeeded" else None)
        for i, phase in enumerate(phases, start=1)))


# -- a failed search ---------------------------------------------------------------------------


def test_a_failed_experiment_stops_its_queued_and_running_trials():
    # maxFailedTrials 1: the second failure fails the search; trial 3 runs, trial 4 is queued.
    plan = reconcile(make_exp(), trials("Failed", "Failed", "Running", "Pending"), NOW)
    assert plan.status["phase"] == "Failed"
    assert plan.children == ()
    assert plan.deletions == ((API, "TrainingRun", "iris-t003"), (API, "TrainingRun", "iris-t004"))
    assert plan.status["trials"] == {"total": 2, "pending": 0, "running": 0, "succeeded": 0, "failed": 2}
    complete = condition(plan.status, "RunsComplete")
    assert (complete["status"], complete["reason"]) == ("True", "MaxFailedTrialsReached")
    assert "stopped iris-t003, iris-t004" in complete["message"]


def test_a_failed_experiment_with_nothing_active_deletes_nothing():
    plan = reconcile(make_exp(), trials("Failed", "Failed"), NOW)
    assert plan.status["phase"] == "Failed" and plan.deletions == ()


def failing(run: dict[str, Any]) -> tuple[int, str]:
    return 2, json.dumps({"status": "Failed", "reason": "InvalidParameter", "message": "no", "metrics": {}})


def test_no_trial_starts_and_none_is_left_running_once_the_experiment_failed():
    world = World()
    # maxFailedTrials 2, parallelism 2: trials 1-2 fail, 3-4 start; 3 fails alone (4 still queued).
    world.create(experiment_manifest())
    world.settle()
    world.finish_running_jobs(failing)
    world.settle()
    assert [r["metadata"]["name"] for r in world.objects("TrainingRun")][-2:] == ["iris-t003", "iris-t004"]
    world.finish_job("iris-t003-trainer", exit_code=2, message=failing({})[1])
    world.settle()
    exp = world.get("Experiment", "iris")
    assert exp["status"]["phase"] == "Failed"
    names = [r["metadata"]["name"] for r in world.objects("TrainingRun")]
    assert names == ["iris-t001", "iris-t002", "iris-t003"]  # the queued trial 4 is gone with its Job
    assert [j["metadata"]["name"] for j in world.objects("Job")] == [f"{n}-trainer" for n in names]
    for _ in range(3):
        world.tick(60)
        world.settle()
    assert len(world.objects("TrainingRun")) == 3
    assert condition(exp["status"], "RunsComplete")["status"] == "True"


# -- RunsComplete ------------------------------------------------------------------------------


def test_runs_complete_is_false_while_the_last_trials_run_and_true_after():
    exp = make_exp(search={"maxTrials": 2, "maxFailedTrials": 5})
    running = reconcile(exp, trials("Succeeded", "Running"), NOW)
    assert running.children == ()
    complete = condition(running.status, "RunsComplete")
    assert (complete["status"], complete["reason"]) == ("False", "MaxTrialsReached")
    assert "waiting for 1 running trials" in complete["message"]
    done = reconcile(make_exp(status=running.status, search={"maxTrials": 2, "maxFailedTrials": 5}),
                     trials("Succeeded", "Succeeded"), NOW)
    assert condition(done.status, "RunsComplete")["status"] == "True"


def test_early_stop_is_announced_once_while_the_last_trial_runs():
    spec = {"earlyStopping": {"targetValue": 0.85}}
    first = reconcile(make_exp(search=spec), trials("Succeeded", "Running"), NOW)
    again = reconcile(make_exp(status=first.status, search=spec), trials("Succeeded", "Running"), NOW)
    assert [e.reason for e in first.events].count("EarlyStopped") == 1
    assert "EarlyStopped" not in [e.reason for e in again.events]
    assert condition(again.status, "RunsComplete")["status"] == "False"


# -- parallelism follows maxTrials ---------------------------------------------------------------


@pytest.mark.parametrize("max_trials, at_once", [(1, 1), (2, 2), (10, 2)])
def test_the_default_parallelism_follows_a_small_max_trials(max_trials, at_once):
    assert Search(max_trials=max_trials).running_at_once() == at_once


def test_a_search_of_one_trial_is_accepted_and_starts_one_trial():
    exp = make_exp(search={"maxTrials": 1, "parallelism": None})
    plan = reconcile(exp, ExperimentObserved(), NOW)
    assert [c["metadata"]["name"] for c in plan.children] == ["iris-t001"]
    Experiment.model_validate(experiment_manifest(search={"maxTrials": 1}))


def test_a_written_parallelism_above_max_trials_is_still_refused_naming_it():
    with pytest.raises(ValueError, match="parallelism: must not exceed maxTrials"):
        Search(max_trials=2, parallelism=3)


# -- judged before any Job ---------------------------------------------------------------------


@pytest.mark.parametrize("spec, says", [
    ({"estimator": "sklearn.linear_model.LogisticRegresion"},
     "spec.estimator: estimator 'sklearn.linear_model.LogisticRegresion': sklearn.linear_model has no "
     "'LogisticRegresion'; did you mean sklearn.linear_model.LogisticRegression"),
    ({"estimator": "sklearn.nothere.Model"}, "module 'sklearn.nothere' cannot be imported"),
    ({"params": {"max_iter": 200, "penalti": "l2"}}, "spec.params: unknown parameter 'penalti'"),
    ({"search": {"maxTrials": 4, "space": {"gamma": {"min": 0.1, "max": 1}}}}, "unknown parameter 'gamma'"),
])
def test_a_spec_no_trial_could_run_fails_once_with_one_condition_one_event_and_no_trials(spec, says):
    world = World()
    world.create(experiment_manifest(**spec))
    for _ in range(3):
        world.settle()
        world.tick(30)
    exp = world.get("Experiment", "iris")
    ready = condition(exp["status"], "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert says in ready["message"]
    assert world.objects("TrainingRun") == [] and world.objects("Job") == []
    events = world.events(name="iris")
    assert [(e["reason"], e["type"]) for e in events] == [("InvalidSpec", "Warning")]
    assert events[0].get("count", 1) == 1


def test_a_valid_estimator_with_searched_parameters_starts_trials():
    world = World()
    world.create(experiment_manifest())
    world.settle()
    assert len(world.objects("TrainingRun")) == 2


def test_the_operator_applies_the_allow_list_before_importing_anything():
    exp = Experiment.model_validate(experiment_manifest(estimator="os.system"))
    assert controller.estimator_problems(exp, SETTINGS) == [
        "spec.estimator: estimator 'os.system' is not in the allow-list ['sklearn.']; use a scikit-learn "
        "class or ask the operator's administrator to extend allowedEstimators"]


def test_parameters_of_a_pipeline_step_are_left_to_the_run():
    exp = Experiment.model_validate(experiment_manifest(params={"max_iter": 200, "scaler__with_mean": False}))
    assert controller.estimator_problems(exp, SETTINGS) == []
