"""Pipeline steps in the API: validated by the model (and the CRD, see tests/data/invalid/
pipeline-step-*.yaml), checked against the allow-list by the operator, and carried from the
Experiment to its trials and from a TrainingRun to the trainer's config."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mlops_operator.reconcile.common import Settings
from mlops_operator.reconcile.experiment import desired_trial, spec_problems
from mlops_operator.reconcile.training_run import train_config
from test_reconcile_experiment import make_exp
from test_reconcile_training_run import SETTINGS, make_run

SCALER = {"name": "scaler", "estimator": "sklearn.preprocessing.StandardScaler", "params": {"with_std": True}}
IMPUTE = {"name": "impute", "estimator": "sklearn.impute.SimpleImputer", "params": {}, "columns": ["a", "b"]}


def test_steps_reach_the_trials_with_a_proposal_that_names_them() -> None:
    exp = make_exp(steps=[IMPUTE, SCALER], search={"space": {"svc__C": {"min": 0.1, "max": 10},
                                                             "scaler__with_mean": {"values": [True, False]}}})
    trial = desired_trial(exp, 1, {"svc__C": 2.5, "scaler__with_mean": False})
    assert trial["spec"]["steps"] == [IMPUTE, SCALER]
    assert trial["spec"]["params"] == {"kernel": "rbf", "svc__C": 2.5, "scaler__with_mean": False}
    assert "steps" not in desired_trial(make_exp(), 1, {"C": 1.0})["spec"]  # unchanged without steps


def test_a_training_run_hands_its_steps_to_the_trainer() -> None:
    assert train_config(make_run(steps=[SCALER]), SETTINGS)["steps"] == [SCALER]
    assert "steps" not in train_config(make_run(), SETTINGS)


def test_steps_come_from_the_same_allow_list() -> None:
    exp = make_exp(steps=[SCALER, {"name": "evil", "estimator": "os.system"}])
    assert spec_problems(exp, Settings()) == [
        "spec.steps[1].estimator: 'os.system' is not in the operator's allow-list (sklearn.)"]


@pytest.mark.parametrize(("steps", "message"), [
    ([SCALER, {**SCALER, "params": {}}], "step name(s) ['scaler'] used more than once"),
    ([{**SCALER, "name": "preprocess"}], "'preprocess' names the per-column stage"),
    ([{**SCALER, "name": "Scaler"}], "String should match pattern"),
    ([{**IMPUTE, "columns": []}], "at least 1 item"),
    ([{"name": "x"}], "estimator"),
])
def test_bad_steps_are_refused_naming_the_field(steps: list, message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        make_run(steps=steps)
    assert message in str(raised.value) and "steps" in str(raised.value)
