"""The data contract, end to end against the real S3 server: a first version trained on the
loans example's dataset fixes the schema in its baseline.json; later runs on broken
variants of that dataset fail with reason DataValidationFailed before any fit, naming the
columns; a clean retrain passes. The trainer runs in-process (`train.execute`), the same
entry point the CLI calls, so each run costs a fit and not an interpreter start."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from mlops_runtime import train
from mlops_runtime.store import ArtifactNotFound, ArtifactStore

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("make_loans_dataset", ROOT / "examples" / "loans" / "make_dataset.py")
loans = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(loans)

ESTIMATOR = "sklearn.linear_model.LogisticRegression"


@pytest.fixture
def store(s3) -> ArtifactStore:
    return ArtifactStore.from_env(s3.env)


def put_dataset(store: ArtifactStore, bucket: str, name: str, frame) -> str:
    uri = f"s3://{bucket}/datasets/{name}.csv"
    store.put_bytes(uri, loans.csv_bytes(frame), "text/csv")
    return uri


def run_trainer(s3, bucket: str, run: str, dataset: str, contract: dict | None = None,
                validation: dict | None = None) -> tuple[int, dict, str]:
    output = f"s3://{bucket}/default/loans/{run}/"
    config = {"dataset": {"uri": dataset, "target": "approved"}, "estimator": ESTIMATOR,
              "params": {"max_iter": 300}, "seed": 1, "output": output, "onnx": False}
    if contract is not None:
        config["dataContract"] = contract
    if validation is not None:
        config["validation"] = validation
    code, summary = train.execute(None, {**s3.env, train.CONFIG_ENV: json.dumps(config)})
    return code, summary, output


@pytest.fixture
def first_version(s3, bucket, store):
    """loans-v1: trained on the clean dataset; its baseline is the contract and the reference."""
    uri = put_dataset(store, bucket, "clean", loans.make_loans(seed=7))
    code, summary, output = run_trainer(s3, bucket, "loans-t001", uri)
    assert code == 0, summary
    ref = {"version": "loans-v1", "uri": output + "baseline.json"}
    return {"schema": ref, "reference": ref}


def read_report(store: ArtifactStore, output: str) -> dict:
    return json.loads(store.get_bytes(output + "data_report.json"))


def assert_failed_before_fit(store: ArtifactStore, code: int, summary: dict, output: str) -> dict:
    assert code == 2, summary
    assert summary["reason"] == "DataValidationFailed"
    assert summary["dataReport"]["passed"] is False
    with pytest.raises(ArtifactNotFound):  # no fit: nothing but the report was written
        store.get_bytes(output + "model.skops")
    return read_report(store, output)


def test_the_first_version_records_its_data_schema_in_the_baseline(s3, bucket, store, first_version):
    baseline = json.loads(store.get_bytes(first_version["schema"]["uri"]))
    columns = {c["name"]: c for c in baseline["dataSchema"]["columns"]}
    assert set(columns) == {"age", "income", "debt_ratio", "region", "sex"}
    assert columns["age"]["kind"] == "numeric" and 18 <= columns["age"]["min"] <= columns["age"]["max"] <= 75
    assert columns["region"]["categories"] == sorted(loans.REGIONS)
    assert columns["debt_ratio"]["missingFraction"] == 0.0
    assert baseline["dataSchema"]["target"]["name"] == "approved"


def test_a_clean_retrain_passes_against_the_contract(s3, bucket, store, first_version):
    uri = put_dataset(store, bucket, "clean-2", loans.make_loans(seed=8))
    code, summary, output = run_trainer(s3, bucket, "loans-t002", uri, first_version)
    assert code == 0, summary
    assert summary["dataReport"]["passed"] is True
    assert summary["dataReport"]["failures"] == 0
    assert summary["dataReport"]["contract"] == "loans-v1"
    report = read_report(store, output)
    assert report["contractUri"] == first_version["schema"]["uri"]
    # PSI against the champion's training data, per feature, all small for the same process
    assert set(report["psi"]) == {"age", "income", "debt_ratio", "region", "sex"}
    assert max(report["psi"].values()) < 0.25


def test_a_renamed_column_fails_naming_both_names(s3, bucket, store, first_version):
    uri = put_dataset(store, bucket, "renamed", loans.make_loans(seed=8, variant="renamed"))
    code, summary, output = run_trainer(s3, bucket, "loans-t003", uri, first_version)
    report = assert_failed_before_fit(store, code, summary, output)
    assert "column 'income' of loans-v1 is missing" in summary["message"]
    assert "'salary'" in summary["message"]  # the warning about the new column is in the message too
    checks = {(f["check"], f["column"], f["severity"]) for f in report["findings"]}
    assert ("missingColumn", "income", "fail") in checks
    assert ("newColumn", "salary", "warn") in checks


def test_a_shifted_range_fails_naming_the_column(s3, bucket, store, first_version):
    uri = put_dataset(store, bucket, "shifted", loans.make_loans(seed=8, variant="shifted"))
    code, summary, output = run_trainer(s3, bucket, "loans-t004", uri, first_version)
    report = assert_failed_before_fit(store, code, summary, output)
    assert "column 'age'" in summary["message"] and "outside [18, 75]" in summary["message"]
    assert [f["column"] for f in report["findings"] if f["check"] == "outOfRange"] == ["age"]


def test_a_new_category_fails_naming_it(s3, bucket, store, first_version):
    uri = put_dataset(store, bucket, "new-region", loans.make_loans(seed=8, variant="new-region"))
    code, summary, output = run_trainer(s3, bucket, "loans-t005", uri, first_version)
    report = assert_failed_before_fit(store, code, summary, output)
    assert "column 'region' has categories loans-v1 never saw: 'islands'" in summary["message"]
    assert [f["column"] for f in report["findings"] if f["check"] == "unseenCategory"] == ["region"]


def test_thirty_percent_missing_fails_naming_the_column_and_rate(s3, bucket, store, first_version):
    uri = put_dataset(store, bucket, "missing", loans.make_loans(seed=8, variant="missing"))
    code, summary, output = run_trainer(s3, bucket, "loans-t006", uri, first_version)
    report = assert_failed_before_fit(store, code, summary, output)
    (finding,) = [f for f in report["findings"] if f["check"] == "missingRate"]
    assert finding["column"] == "debt_ratio" and 0.25 < finding["value"] < 0.35
    assert "column 'debt_ratio' is" in summary["message"] and "missing, above 5.0%" in summary["message"]


def test_non_finite_feature_values_fail_even_without_a_contract(s3, bucket, store):
    frame = loans.make_loans(seed=8)
    frame.loc[[3, 10, 40], "income"] = np.inf
    uri = put_dataset(store, bucket, "infinite", frame)
    code, summary, output = run_trainer(s3, bucket, "loans-t007", uri)
    assert_failed_before_fit(store, code, summary, output)
    assert "column 'income' holds 3 infinite values" in summary["message"]


def test_every_problem_is_named_in_one_message(s3, bucket, store, first_version):
    frame = loans.make_loans(seed=8, variant="renamed")
    frame["age"] = frame["age"] * 12
    frame.loc[frame.index % 5 == 0, "region"] = "islands"
    frame["debt_ratio"] = frame["debt_ratio"].mask(frame.index % 3 == 0)
    uri = put_dataset(store, bucket, "broken", frame)
    code, summary, output = run_trainer(s3, bucket, "loans-t008", uri, first_version)
    report = assert_failed_before_fit(store, code, summary, output)
    failed = {(f["check"], f["column"]) for f in report["findings"] if f["severity"] == "fail"}
    assert failed == {("missingColumn", "income"), ("outOfRange", "age"), ("unseenCategory", "region"),
                      ("missingRate", "debt_ratio")}
    for column in ("income", "age", "region", "debt_ratio"):
        assert f"'{column}'" in summary["message"]


def test_a_check_set_to_warn_lets_the_run_train_and_reports_the_warning(s3, bucket, store, first_version):
    uri = put_dataset(store, bucket, "shifted-warn", loans.make_loans(seed=8, variant="shifted"))
    code, summary, output = run_trainer(s3, bucket, "loans-t009", uri, first_version,
                                        validation={"data": {"checks": {"outOfRange": "warn", "drift": "ignore"}}})
    assert code == 0, summary
    assert summary["dataReport"] == {"passed": True, "failures": 0, "warnings": 1, "columnsChecked": 5,
                                     "contract": "loans-v1", "reference": "loans-v1",
                                     "maxPsi": summary["dataReport"]["maxPsi"], "problems": ["outOfRange:age"]}
    assert summary["dataReport"]["maxPsi"]["feature"] == "age"  # months vs years: drift seen, ignored
    store.get_bytes(output + "model.skops")


def test_drift_against_the_champion_warns_by_default(s3, bucket, store, first_version):
    uri = put_dataset(store, bucket, "drifted", loans.make_loans(seed=8, variant="drifted"))
    code, summary, output = run_trainer(s3, bucket, "loans-t010", uri, first_version)
    assert code == 0, summary
    assert summary["dataReport"]["problems"] == ["drift:income"]
    report = read_report(store, output)
    (drift,) = [f for f in report["findings"] if f["check"] == "drift"]
    assert drift["column"] == "income" and drift["severity"] == "warn" and drift["value"] > 0.25


def test_a_missing_contract_fails_the_run_and_says_how_to_go_on(s3, bucket, store):
    uri = put_dataset(store, bucket, "clean", loans.make_loans(seed=8))
    gone = {"schema": {"version": "loans-v1", "uri": f"s3://{bucket}/default/loans/gone/baseline.json"}}
    code, summary, _ = run_trainer(s3, bucket, "loans-t011", uri, gone)
    assert code == 2 and summary["reason"] == "DataValidationFailed"
    assert "does not exist" in summary["message"] and "enabled: false" in summary["message"]
    code, summary, _ = run_trainer(s3, bucket, "loans-t012", uri, gone, validation={"data": {"enabled": False}})
    assert code == 0, summary
    assert summary["dataReport"]["disabled"] is True


def test_a_type_change_and_a_non_finite_target_are_named():
    import pandas as pd

    from mlops_runtime import data_contract

    before = pd.DataFrame({"zip": [75001, 69001, 13001], "size": [1.0, 2.0, 3.0]})
    schema = data_contract.compute_schema(before, pd.Series([1.0, 2.0, 3.0]), ["zip", "size"], "price", "regression")
    after = pd.DataFrame({"zip": ["75001", "69001", "13001"], "size": [1, 2, 3]})  # int for float: no change
    y = pd.Series([1.0, np.inf, 2.0])
    report = data_contract.check_dataset(after, y, ["size"], "price", data_contract.DataPolicy(), schema,
                                         data_contract.ContractRef("flats-v1", "s3://b/k"))
    assert [(f.check, f.column) for f in report.failures] == [("nonFinite", "price"), ("typeChange", "zip")]
    assert "column 'zip' is categorical" in report.failure_message()
    assert "numeric (int64) in flats-v1" in report.failure_message()
