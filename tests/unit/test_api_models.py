"""The pydantic models: defaults, cross-field rules and error messages that name the field."""

import pytest
from pydantic import ValidationError

from mlops_operator.api import (
    ALL_KINDS,
    Experiment,
    InferenceService,
    ModelVersion,
    TrainingRun,
    parse_duration,
    parse_manifest,
)

API = "mlops.seed.io/v1alpha1"


def experiment(**spec_overrides):
    spec = {
        "model": "iris",
        "dataset": {"uri": "sklearn://iris"},
        "estimator": "sklearn.linear_model.LogisticRegression",
        "search": {"space": {"C": {"min": 0.01, "max": 10, "distribution": "logUniform"}}},
    }
    spec.update(spec_overrides)
    return {"apiVersion": API, "kind": "Experiment", "metadata": {"name": "iris"}, "spec": spec}


def errors_of(cls, doc) -> str:
    with pytest.raises(ValidationError) as info:
        cls.model_validate(doc)
    return str(info.value)


def test_experiment_defaults_round_trip():
    exp = Experiment.model_validate(experiment())
    manifest = exp.to_manifest()
    assert manifest["apiVersion"] == API and manifest["kind"] == "Experiment"
    assert manifest["spec"]["search"]["maxTrials"] == 10
    assert manifest["spec"]["objective"] == {"metric": "accuracy", "goal": "maximize"}
    assert manifest["spec"]["registerPolicy"] == "registerBest"
    assert Experiment.model_validate(manifest) == exp


def test_parallelism_above_max_trials_is_rejected_naming_the_field():
    message = errors_of(Experiment, experiment(search={"maxTrials": 2, "parallelism": 5}))
    assert "spec.search" in message and "parallelism" in message


def test_space_entry_is_range_or_values_not_both():
    message = errors_of(
        Experiment, experiment(search={"space": {"C": {"min": 1, "max": 2, "values": [1]}}})
    )
    assert "spec.search.space.C" in message and "values" in message
    message = errors_of(Experiment, experiment(search={"space": {"C": {"min": 1}}}))
    assert "min" in message


def test_log_uniform_needs_positive_min():
    message = errors_of(
        Experiment,
        experiment(search={"space": {"C": {"min": 0, "max": 1, "distribution": "logUniform"}}}),
    )
    assert "logUniform" in message


def test_s3_dataset_needs_target():
    message = errors_of(Experiment, experiment(dataset={"uri": "s3://data/iris.csv"}))
    assert "spec.dataset" in message and "target" in message


def test_unknown_field_is_a_user_error():
    message = errors_of(Experiment, experiment(estimatr="x.y"))
    assert "estimatr" in message


def test_wrong_kind_or_api_version_is_refused():
    doc = experiment()
    with pytest.raises(ValueError, match="kind"):
        parse_manifest({**doc, "kind": "Nope"})
    with pytest.raises(ValueError, match="apiVersion"):
        parse_manifest({**doc, "apiVersion": "v1"})
    with pytest.raises(ValueError, match="kind"):
        Experiment.model_validate({**doc, "kind": "TrainingRun"})


def inference_service(rollout):
    return {
        "apiVersion": API,
        "kind": "InferenceService",
        "metadata": {"name": "iris"},
        "spec": {"model": "iris", "challenger": {"policy": "latestValidated"}, "rollout": rollout},
    }


@pytest.mark.parametrize(
    ("steps", "problem"),
    [([10, 50, 90], "end at 100"), ([10, 50, 25, 100], "strictly increasing"), ([10, 10, 100], "strictly increasing")],
)
def test_rollout_steps_must_increase_to_100(steps, problem):
    message = errors_of(InferenceService, inference_service({"steps": steps}))
    assert "spec.rollout" in message and problem in message


def test_version_ref_needs_exactly_one_of_name_or_policy():
    doc = inference_service({})
    doc["spec"]["champion"] = {"modelVersion": "iris-v1", "policy": "bestValidated"}
    assert "spec.champion" in errors_of(InferenceService, doc)
    doc["spec"]["champion"] = {}
    assert "spec.champion" in errors_of(InferenceService, doc)


def test_interval_is_a_duration():
    assert parse_duration("1h30m").total_seconds() == 5400
    assert parse_duration("250ms").total_seconds() == 0.25
    assert "spec.rollout.interval" in errors_of(InferenceService, inference_service({"interval": "soon"}))


def test_every_kind_declares_crd_names():
    for kind in ALL_KINDS:
        assert kind.plural.endswith("s") and kind.singular == kind.kind.lower()
        assert "mlops" in kind.categories
        assert any(col["name"] == "Ready" for col in kind.printer_columns)
    assert {TrainingRun, ModelVersion, Experiment, InferenceService} == set(ALL_KINDS)
