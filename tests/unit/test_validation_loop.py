"""The operator's side of data validation, importance and slices, through the real
controllers on the in-memory cluster (tests/unit/_training_world.py plays the Job
controller and the kubelet): what the trainer's config names, how a DataValidationFailed
run is reported, how slices and top features reach the ModelVersion, and the slice and
stability gates."""

from __future__ import annotations

import json

from _training_world import NS, World, experiment_manifest, score, success_summary

from mlops_operator.api.ml import (
    DataValidation,
    FeatureImportance,
    Importance,
    ImportanceStability,
    Slice,
    SliceResult,
)
from mlops_operator.api.model_version import ModelVersion
from mlops_operator.controllers.model_version import observe_model_version
from mlops_operator.reconcile.model_version import (
    ChampionFacts,
    evaluate_slice_gate,
    evaluate_stability_gate,
)
from mlops_operator.reconcile.training_run import data_contract
from mlops_runtime import data_contract as runtime_contract
from mlops_runtime import importance as runtime_importance
from mlops_runtime import slices as runtime_slices

ONE_TRIAL = {"algorithm": "random", "maxTrials": 1, "parallelism": 1, "seed": 1,
             "space": {"C": {"min": 0.5, "max": 2}}}
SLICES = [{"feature": "sex", "values": [{"value": "M", "rows": 61, "score": 0.918},
                                        {"value": "F", "rows": 59, "score": 0.797},
                                        {"value": "X", "rows": 4, "score": 0.5}],
           "metric": "accuracy", "minRows": 30}]
TOP = [{"feature": "income", "importance": 0.21}, {"feature": "debt_ratio", "importance": 0.12},
       {"feature": "age", "importance": 0.01}]
REPORT = {"passed": True, "failures": 0, "warnings": 1, "columnsChecked": 5, "contract": "loans-v1",
          "problems": ["newColumn:notes"]}


def summary_with_evidence(run: dict) -> str:
    return json.dumps({**success_summary(run, score(run["spec"]["params"])), "slices": SLICES, "topFeatures": TOP,
                       "dataReport": REPORT})


def trainer_config(world: World, run: str) -> dict:
    job = world.cluster.get("batch/v1", "Job", NS, f"{run}-trainer")
    (env,) = [e for e in job["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "MLOPS_TRAIN_CONFIG"]
    return json.loads(env["value"])


def condition(obj: dict, kind: str) -> dict:
    return next(c for c in obj["status"]["conditions"] if c["type"] == kind)


def test_a_slice_gate_rejects_the_version_naming_the_slice_and_the_numbers():
    world = World()
    world.create(experiment_manifest(name="loans", model="loans", search=ONE_TRIAL,
                                     validation={"slices": [{"feature": "sex", "maxGap": 0.05}]}))
    world.settle()
    assert trainer_config(world, "loans-t001")["validation"]["slices"] == [{"feature": "sex", "maxGap": 0.05,
                                                                            "minRows": 30}]
    world.finish_running_jobs(lambda run: (0, summary_with_evidence(run)))
    world.settle()
    mv = world.get("ModelVersion", "loans-v1")
    assert mv["status"]["phase"] == "Rejected"
    expected = ("accuracy per sex: worst sex=F accuracy=0.797 (n=59), best sex=M accuracy=0.918 (n=61), "
                "gap 0.121 > 0.05; not judged (fewer than 30 rows): X (n=4)")
    validated = condition(mv, "Validated")
    assert (validated["status"], validated["reason"]) == ("False", "GateFailed")
    assert expected in validated["message"]
    assert any(expected in e["message"] for e in world.events("Rejected", "loans-v1"))
    # the evidence is part of the record, the summary lines are in the status
    assert mv["spec"]["slices"][0]["values"][1] == {"value": "F", "rows": 59, "score": 0.797}
    assert mv["status"]["topFeatures"] == "income=0.21, debt_ratio=0.12, age=0.01"
    assert mv["status"]["dataReport"] == "passed against loans-v1, 1 warning: newColumn:notes"


def test_the_family_contract_goes_into_the_next_runs_config_and_a_failed_check_is_reported():
    world = World()
    world.create(experiment_manifest(name="loans", model="loans", search=ONE_TRIAL))
    world.settle()
    assert "dataContract" not in trainer_config(world, "loans-t001")  # a new family: no contract yet
    world.finish_running_jobs(lambda run: (0, summary_with_evidence(run)))
    world.settle()
    assert world.get("ModelVersion", "loans-v1")["status"]["phase"] == "Validated"

    world.create(experiment_manifest(name="loans-2", model="loans", search=ONE_TRIAL))
    world.settle()
    config = trainer_config(world, "loans-2-t001")
    baseline = f"s3://mlops/{NS}/loans/loans-t001/baseline.json"
    assert config["dataContract"] == {"schema": {"version": "loans-v1", "uri": baseline}}

    message = ("the dataset failed validation against the data contract of loans-v1, nothing was fitted: "
               "column 'income' of loans-v1 is missing")
    failed = {"status": "Failed", "reason": "DataValidationFailed", "message": message, "metrics": {},
              "dataReport": {"passed": False, "failures": 1, "warnings": 0, "columnsChecked": 5,
                             "contract": "loans-v1", "problems": ["missingColumn:income"]}}
    world.finish_running_jobs(lambda run: (2, json.dumps(failed)))
    world.settle()
    run = world.get("TrainingRun", "loans-2-t001")
    assert run["status"]["phase"] == "Failed"
    assert run["status"]["failureReason"] == "DataValidationFailed"
    assert condition(run, "Succeeded")["reason"] == "DataValidationFailed"
    assert condition(run, "Succeeded")["message"] == message
    assert run["status"]["dataReport"]["problems"] == ["missingColumn:income"]
    assert [e["message"] for e in world.events("DataValidationFailed", "loans-2-t001")] == [message]


def test_the_contract_is_the_first_validated_version_and_the_reference_the_champion():
    def version(n, phase, role="none"):
        return {"metadata": {"name": f"m-v{n}"}, "spec": {"version": n, "artifact": {"uri": f"s3://b/ns/m/t{n}/"}},
                "status": {"phase": phase, "role": role}}

    contract = data_contract([version(4, "Validated", "champion"), version(1, "Rejected"), version(2, "Validated"),
                              version(3, "Pending")])
    assert contract.config() == {"schema": {"version": "m-v2", "uri": "s3://b/ns/m/t2/baseline.json"},
                                 "reference": {"version": "m-v4", "uri": "s3://b/ns/m/t4/baseline.json"}}
    assert data_contract([version(1, "Rejected")]) is None


def test_a_slice_too_small_everywhere_is_reported_not_judged():
    record = [SliceResult.model_validate({"feature": "region", "metric": "accuracy", "minRows": 30,
                                          "values": [{"value": "north", "rows": 80, "score": 0.9},
                                                     {"value": "west", "rows": 12, "score": 0.4}]})]
    result = evaluate_slice_gate(Slice(feature="region", max_gap=0.05), record)
    assert result.passed
    assert result.message == ("fewer than two slices of region with 30+ rows: nothing to compare; "
                              "not judged (fewer than 30 rows): west (n=12)")
    missing = evaluate_slice_gate(Slice(feature="sex", max_gap=0.05), record)
    assert not missing.passed and missing.message == "the trainer reported no slices on sex"


def test_a_slice_gate_on_a_lower_is_better_metric_takes_the_highest_as_worst():
    record = [SliceResult.model_validate({"feature": "sex", "metric": "log_loss", "minRows": 1,
                                          "values": [{"value": "F", "rows": 50, "score": 0.2},
                                                     {"value": "M", "rows": 50, "score": 0.5}]})]
    result = evaluate_slice_gate(Slice(feature="sex", metric="log_loss", max_gap=0.5), record)
    assert result.passed and result.message.startswith("worst sex=M log_loss=0.5 (n=50), best sex=F")


def test_the_stability_gate_wants_the_champions_top_features_among_the_top_k():
    top = [FeatureImportance(feature=f, importance=v) for f, v in (("a", 0.3), ("b", 0.2), ("c", 0.1), ("d", 0.05))]
    gate = ImportanceStability(champion_top=2, within_top_k=3)
    kept = evaluate_stability_gate(gate, top, ChampionFacts("m-v1", "svc", top_features=("b", "c", "z")))
    assert kept.passed
    lost = evaluate_stability_gate(gate, top, ChampionFacts("m-v1", "svc", top_features=("d", "a")))
    assert not lost.passed
    assert lost.message == "champion m-v1's top features d are not among this version's top 3 (a, b, c)"
    assert evaluate_stability_gate(gate, top, None).passed  # nothing to compare with yet


def test_the_stability_gate_is_off_by_default():
    assert Importance().stability is None


def test_the_printer_columns_show_top_features_and_the_data_verdict_in_wide_output():
    wide = {c["name"]: c["jsonPath"] for c in ModelVersion.printer_columns if c.get("priority") == 1}
    assert wide["Top Features"] == ".status.topFeatures"
    assert wide["Data"] == ".status.dataReport"


def test_the_runtime_defaults_are_the_apis():
    api = DataValidation()
    policy = runtime_contract.DataPolicy()
    assert {k: getattr(api.checks, k) for k in type(api.checks).model_fields} == {
        _snake(k): v for k, v in policy.actions.items()}
    assert {_camel(k): getattr(api, k) for k in type(api).model_fields if k not in ("enabled", "checks")} == \
        runtime_contract.DEFAULT_LIMITS
    importance = Importance()
    assert (importance.repeats, importance.max_rows, importance.top_k, importance.row_budget) == (
        runtime_importance.DEFAULT_REPEATS, runtime_importance.DEFAULT_MAX_ROWS, runtime_importance.DEFAULT_TOP_K,
        runtime_importance.DEFAULT_ROW_BUDGET)
    assert Slice(feature="x").min_rows == runtime_slices.DEFAULT_MIN_ROWS


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def test_the_stability_gate_reads_the_champions_top_features_from_its_record():
    world = World()
    world.create(experiment_manifest(name="loans", model="loans", search=ONE_TRIAL))
    world.settle()
    world.finish_running_jobs(lambda run: (0, summary_with_evidence(run)))
    world.settle()
    world.cluster.create({"apiVersion": "mlops.seed.io/v1alpha1", "kind": "InferenceService",
                          "metadata": {"name": "loans", "namespace": NS},
                          "spec": {"model": "loans", "champion": {"name": "loans-v1"}}})
    world.cluster.patch_status("mlops.seed.io/v1alpha1", "InferenceService", NS, "loans", {"champion": "loans-v1"})
    stability = {"importance": {"topK": 3, "stability": {"championTop": 2, "withinTopK": 3}}}
    world.create(experiment_manifest(name="loans-2", model="loans", search=ONE_TRIAL, validation=stability))
    world.settle()
    shuffled = [{"feature": "age", "importance": 0.3}, {"feature": "sex", "importance": 0.2},
                {"feature": "income", "importance": 0.1}]
    world.finish_running_jobs(lambda run: (0, json.dumps({**success_summary(run, 0.9), "topFeatures": shuffled})))
    world.settle()
    mv = world.get("ModelVersion", "loans-v2")
    observed = observe_model_version(world.cluster, {**mv, "status": {}}, ModelVersion.model_validate(mv))
    assert observed.champion.top_features == ("income", "debt_ratio", "age")
    assert mv["status"]["phase"] == "Rejected"
    assert ("top features: champion loans-v1's top features debt_ratio are not among this version's top 3 "
            "(age, sex, income)") in condition(mv, "Validated")["message"]
