"""spec.retrain decisions (reconcile.retrain): cron fire times, the drift trigger, cooldown,
the daily cap, no overlapping retrains, and the child Experiment's manifest."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest

from mlops_operator.api.experiment import Experiment
from mlops_operator.api.inference_service import DriftStatus
from mlops_operator.reconcile import retrain as logic
from mlops_operator.reconcile.common import describe_validation_error

DONE = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)  # a Monday


def experiment(retrain: dict[str, Any] | None, *, phase: str = "Succeeded", completed: datetime = DONE,
               **status: Any) -> Experiment:
    spec: dict[str, Any] = {
        "model": "iris", "dataset": {"uri": "sklearn://iris"},
        "estimator": "sklearn.linear_model.LogisticRegression",
        "search": {"maxTrials": 2, "parallelism": 1, "space": {"C": {"min": 0.1, "max": 10}}},
    }
    if retrain is not None:
        spec["retrain"] = retrain
    return Experiment.model_validate({
        "apiVersion": "mlops.seed.io/v1alpha1", "kind": "Experiment",
        "metadata": {"name": "iris", "namespace": "ml", "generation": 1},
        "spec": spec,
        "status": {"phase": phase, "completionTime": completed.strftime("%Y-%m-%dT%H:%M:%SZ"), **status},
    })


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def drift(max_psi: float, *, drifted: bool = True, consecutive: int = 3, p_value: float | None = None) -> DriftStatus:
    return DriftStatus(time="2026-03-02T11:00:00Z", version="iris-v1", max_psi=max_psi, feature="petal_length",
                       threshold=0.2, drifted=drifted, since="2026-03-02T10:45:00Z" if drifted else None,
                       consecutive=consecutive if drifted else 0, p_value=p_value, readings_per_day=1440.0)


def child(index: int, phase: str, time: str) -> logic.RetrainChild:
    return logic.RetrainChild(name=f"iris-r{index}", index=index, phase=phase, time=time, reason="test")


@pytest.mark.parametrize("schedule, after, fire", [
    ("@daily", "2026-03-02T10:30:00", "2026-03-03T00:00:00"),
    ("@hourly", "2026-03-02T10:30:00", "2026-03-02T11:00:00"),
    ("0 3 * * 1", "2026-03-02T10:30:00", "2026-03-09T03:00:00"),  # Mondays at 03:00
    ("*/15 * * * *", "2026-03-02T10:30:00", "2026-03-02T10:45:00"),  # strictly after
    ("0 0 1 * *", "2026-03-02T10:30:00", "2026-04-01T00:00:00"),
])
def test_next_fire(schedule, after, fire):
    assert logic.next_fire(schedule, at(after)) == at(fire)


def test_schedule_waits_for_the_next_fire_after_completion_then_fires():
    exp = experiment({"schedule": "@daily"})
    before = logic.decide(exp, logic.RetrainObserved(), at("2026-03-02T23:00:00"))
    assert before.child is None
    assert before.requeue_after == 3600.0
    assert before.status["next_retrain_time"] == "2026-03-03T00:00:00Z"
    assert before.status["retrain_count"] == 0 and before.status["retrains"] == []

    fired = logic.decide(exp, logic.RetrainObserved(), at("2026-03-03T00:00:05"))
    assert fired.child is not None and fired.child["metadata"]["name"] == "iris-r1"
    assert fired.status["retrain_count"] == 1
    assert fired.status["last_retrain_time"] == "2026-03-03T00:00:05Z"
    assert fired.status["next_retrain_time"] == "2026-03-04T00:00:00Z"
    assert [e.reason for e in fired.events] == ["RetrainTriggered"]
    assert "schedule '@daily' fired at 2026-03-03T00:00:00Z" in fired.events[0].message
    assert fired.requeue_after == pytest.approx(86400 - 5)


def test_missed_fires_collapse_into_one_retrain():
    """The operator was down for three days: one retrain, then the next fire after it."""
    exp = experiment({"schedule": "@daily"})
    fired = logic.decide(exp, logic.RetrainObserved(), at("2026-03-05T12:00:00"))
    assert fired.child["metadata"]["name"] == "iris-r1"
    assert fired.status["next_retrain_time"] == "2026-03-06T00:00:00Z"


def test_the_next_schedule_counts_from_the_last_retrain():
    exp = experiment({"schedule": "@daily"}, retrains=[{"name": "iris-r1", "time": "2026-03-03T00:00:05Z"}],
                     retrainCount=1, lastRetrainTime="2026-03-03T00:00:05Z")
    observed = logic.RetrainObserved(children=(child(1, "Succeeded", "2026-03-03T00:00:05Z"),))
    assert logic.decide(exp, observed, at("2026-03-03T23:59:00")).child is None
    second = logic.decide(exp, observed, at("2026-03-04T00:00:00"))
    assert second.child["metadata"]["name"] == "iris-r2"
    assert [r.name for r in second.status["retrains"]] == ["iris-r1", "iris-r2"]


def test_no_retrain_while_the_parent_runs_or_without_retrain():
    running = experiment({"schedule": "@hourly"}, phase="Running")
    assert logic.decide(running, logic.RetrainObserved(), at("2026-03-04T00:00:00")).child is None
    plain = experiment(None)
    outcome = logic.decide(plain, logic.RetrainObserved(), at("2026-03-04T00:00:00"))
    assert outcome.child is None and outcome.requeue_after is None
    assert outcome.status == {"last_retrain_time": None, "next_retrain_time": None, "retrain_count": None,
                              "retrains": None, "retrain_message": None}


def test_a_failed_parent_is_finished_too():
    failed = experiment({"schedule": "@hourly"}, phase="Failed")
    assert logic.decide(failed, logic.RetrainObserved(), at("2026-03-02T11:00:00")).child is not None


def test_no_overlap_while_the_previous_retrain_runs():
    exp = experiment({"schedule": "@hourly"}, retrains=[{"name": "iris-r1", "time": "2026-03-02T11:00:00Z"}],
                     retrainCount=1)
    running = logic.RetrainObserved(children=(child(1, "Running", "2026-03-02T11:00:00Z"),))
    waiting = logic.decide(exp, running, at("2026-03-02T12:30:00"))
    assert waiting.child is None
    assert waiting.requeue_after == logic.POLL_SECONDS
    assert "waiting for iris-r1 to finish" in waiting.status["retrain_message"]
    assert [e.reason for e in waiting.events] == ["RetrainHeldBack"]
    done = logic.RetrainObserved(children=(child(1, "Succeeded", "2026-03-02T11:00:00Z"),))
    assert logic.decide(exp, done, at("2026-03-02T12:30:00")).child["metadata"]["name"] == "iris-r2"


def test_drift_triggers_above_the_retrain_threshold_only():
    on_drift = {"onDrift": {"enabled": True, "service": "iris", "psiThreshold": 0.3, "cooldown": "1h"}}
    exp = experiment(on_drift)
    now = at("2026-03-02T11:00:00")
    assert logic.decide(exp, logic.RetrainObserved(drift=drift(0.25)), now).child is None
    assert logic.decide(exp, logic.RetrainObserved(drift=drift(0.5, drifted=False)), now).child is None
    assert logic.decide(exp, logic.RetrainObserved(), now).requeue_after == logic.POLL_SECONDS
    fired = logic.decide(exp, logic.RetrainObserved(drift=drift(0.5)), now)
    assert fired.child is not None
    assert fired.child["metadata"]["annotations"]["mlops.seed.io/retrain-reason"] == (
        "drift on InferenceService iris: iris-v1 feature petal_length PSI 0.5 > 0.3 for 3 readings "
        "since 2026-03-02T10:45:00Z")


def _held_back(outcome: logic.RetrainOutcome) -> list[str]:
    return [e.message for e in outcome.events if e.reason == "RetrainHeldBack"]


def test_drift_must_persist_before_a_retrain_and_says_so():
    exp = experiment({"onDrift": {"enabled": True, "service": "iris", "persistence": 3}})
    now = at("2026-03-02T11:00:00")
    once = logic.decide(exp, logic.RetrainObserved(drift=drift(0.5, consecutive=1)), now)
    assert once.child is None
    assert once.status["retrain_message"].endswith("in 1 reading(s) in a row; onDrift.persistence=3 needed")
    assert _held_back(once) == [once.status["retrain_message"]]
    # The same reason again is not announced twice.
    said = experiment({"onDrift": {"enabled": True, "service": "iris", "persistence": 3}},
                      retrainMessage=once.status["retrain_message"])
    assert _held_back(logic.decide(said, logic.RetrainObserved(drift=drift(0.5, consecutive=1)), now)) == []
    assert logic.decide(exp, logic.RetrainObserved(drift=drift(0.5, consecutive=3)), now).child is not None


def test_a_retrain_needs_significance_over_a_whole_day_of_readings():
    # 1,440 readings a day at falseAlarmPerDay 0.01: the reading's p-value must be below 6.9e-6.
    exp = experiment({"onDrift": {"enabled": True, "service": "iris"}})
    now = at("2026-03-02T11:00:00")
    weak = logic.decide(exp, logic.RetrainObserved(drift=drift(0.5, p_value=1e-4)), now)
    assert weak.child is None and "is not below 6.9e-06" in weak.status["retrain_message"]
    assert _held_back(weak)
    strong = logic.decide(exp, logic.RetrainObserved(drift=drift(0.5, p_value=1e-9)), now)
    assert strong.child is not None and "p=1e-09" in strong.child["metadata"]["annotations"][
        "mlops.seed.io/retrain-reason"]


def test_drift_cooldown_counts_from_the_last_retrain():
    exp = experiment({"onDrift": {"enabled": True, "service": "iris", "cooldown": "6h"}},
                     retrains=[{"name": "iris-r1", "time": "2026-03-02T11:00:00Z"}], retrainCount=1)
    observed = logic.RetrainObserved(drift=drift(0.5), children=(child(1, "Succeeded", "2026-03-02T11:00:00Z"),))
    cooling = logic.decide(exp, observed, at("2026-03-02T16:00:00"))
    assert cooling.child is None and cooling.requeue_after == logic.POLL_SECONDS
    assert cooling.status["retrain_message"].endswith(
        "held back by onDrift.cooldown=6h after iris-r1 until 2026-03-02T17:00:00Z")
    assert _held_back(cooling) == [cooling.status["retrain_message"]]
    assert logic.decide(exp, observed, at("2026-03-02T16:59:30")).requeue_after == 30.0
    assert logic.decide(exp, observed, at("2026-03-02T17:00:00")).child["metadata"]["name"] == "iris-r2"


def test_daily_cap():
    times = ["2026-03-02T11:00:00Z", "2026-03-02T12:00:00Z", "2026-03-02T13:00:00Z"]
    exp = experiment({"schedule": "*/30 * * * *", "maxRetrainsPerDay": 3},
                     retrains=[{"name": f"iris-r{i}", "time": t} for i, t in enumerate(times, start=1)],
                     retrainCount=3)
    observed = logic.RetrainObserved(children=tuple(child(i, "Succeeded", t) for i, t in enumerate(times, start=1)))
    capped = logic.decide(exp, observed, at("2026-03-02T14:00:00"))
    assert capped.child is None
    assert "maxRetrainsPerDay=3" in capped.status["retrain_message"]
    assert _held_back(capped) == [capped.status["retrain_message"]]
    assert capped.requeue_after == 21 * 3600.0  # until the oldest of the three is a day old
    assert logic.decide(exp, observed, at("2026-03-03T11:00:01")).child["metadata"]["name"] == "iris-r4"


def test_a_child_the_status_did_not_record_is_counted_and_announced_once():
    """The pass that created iris-r1 lost its status write: the next pass sees the child."""
    exp = experiment({"schedule": "@daily"})
    observed = logic.RetrainObserved(children=(child(1, "Pending", "2026-03-03T00:00:05Z"),))
    outcome = logic.decide(exp, observed, at("2026-03-03T00:00:30"))
    assert outcome.child is None
    assert outcome.status["retrain_count"] == 1
    assert outcome.status["last_retrain_time"] == "2026-03-03T00:00:05Z"
    assert [e.reason for e in outcome.events] == ["RetrainTriggered"]


def test_the_child_manifest():
    exp = experiment({"schedule": "@daily"})
    manifest = logic.desired_retrain(exp, 3, "because", at("2026-03-03T00:00:00"))
    assert manifest["metadata"] == {
        "name": "iris-r3", "namespace": "ml",
        "labels": {"app.kubernetes.io/managed-by": "mlops-operator", "app.kubernetes.io/part-of": "mlops",
                   "app.kubernetes.io/component": "retrain", "mlops.seed.io/experiment": "iris",
                   "mlops.seed.io/model": "iris", "mlops.seed.io/retrain-of": "iris",
                   "mlops.seed.io/retrain-index": "3"},
        "annotations": {"mlops.seed.io/retrain-reason": "because",
                        "mlops.seed.io/retrain-time": "2026-03-03T00:00:00Z"},
    }
    assert "retrain" not in manifest["spec"]
    assert manifest["spec"] == {k: v for k, v in exp.spec.dump().items() if k != "retrain"}
    assert Experiment.model_validate(manifest).spec.retrain is None


@pytest.mark.parametrize("retrain, problem", [
    ({"schedule": "61 * * * *"}, "spec.retrain.schedule: is not a valid cron expression"),
    ({"onDrift": {"enabled": True}}, "spec.retrain.onDrift.service: name the InferenceService"),
])
def test_the_model_refuses_a_retrain_that_cannot_run(retrain, problem):
    # The same rules are CEL rules of the CRD (tests/data/invalid/cron-*, retrain-on-drift-*).
    with pytest.raises(pydantic.ValidationError) as caught:
        experiment(retrain)
    assert describe_validation_error(caught.value).startswith(problem)


def test_max_retrains_per_day_is_bounded_by_the_api():
    with pytest.raises(ValueError, match="maxRetrainsPerDay"):
        experiment({"schedule": "@daily", "maxRetrainsPerDay": 0})


def test_a_status_without_completion_time_counts_from_the_start():
    exp = experiment({"schedule": "@daily"})
    exp = exp.model_copy(update={"status": exp.status.model_copy(update={
        "completion_time": None, "start_time": "2026-03-01T08:00:00Z"})})
    assert logic.decide(exp, logic.RetrainObserved(), at("2026-03-02T00:00:01")).child is not None


def test_a_missing_drift_service_is_said():
    exp = experiment({"onDrift": {"enabled": True, "service": "irsi"}})
    outcome = logic.decide(exp, logic.RetrainObserved(service_missing=True), at("2026-03-02T11:00:00"))
    assert outcome.child is None
    assert outcome.status["retrain_message"].startswith("spec.retrain.onDrift.service: no InferenceService 'irsi'")
