"""Permutation importance and slice metrics: the numbers scikit-learn's own
permutation_importance gives, deterministic for a seed, and both written by a real training
run (importance.json, slices.json, the summary) against the real S3 server."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.inspection import permutation_importance
from sklearn.linear_model import Ridge

from mlops_runtime import train
from mlops_runtime.datasets import numeric_and_categorical, split_target, train_test_split_frame
from mlops_runtime.estimators import build_pipeline
from mlops_runtime.importance import ImportanceConfig, compute_importance, within_budget
from mlops_runtime.slices import SliceSpec, compute_slices, slice_labels
from mlops_runtime.store import ArtifactStore

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("make_loans_dataset", ROOT / "examples" / "loans" / "make_dataset.py")
loans = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(loans)


@pytest.fixture(scope="module")
def fitted():
    """A forest on the loans data (one-hot for region and sex), its held-out split."""
    data = split_target("mem://loans", loans.make_loans(seed=7), "approved", "x")
    _, categorical = numeric_and_categorical(data.X)
    X_train, X_test, y_train, y_test = train_test_split_frame(data.X, data.y, 0.25, 0, "classification")
    model = build_pipeline(RandomForestClassifier(n_estimators=40, random_state=0), categorical)
    return model.fit(X_train, y_train), X_test, y_test


def test_importance_is_deterministic_for_a_seed(fitted):
    model, X_test, y_test = fitted
    config = ImportanceConfig(repeats=3)
    first = compute_importance(model, X_test, y_test, "classification", 11, config)
    again = compute_importance(model, X_test, y_test, "classification", 11, config)
    other = compute_importance(model, X_test, y_test, "classification", 12, config)
    assert first == again
    assert [f["importance"] for f in first["features"]] != [f["importance"] for f in other["features"]]


def test_importance_equals_scikit_learns_permutation_importance(fitted):
    model, X_test, y_test = fitted
    ours = compute_importance(model, X_test, y_test, "classification", 5, ImportanceConfig(repeats=4))
    theirs = permutation_importance(model, X_test, y_test, n_repeats=4, random_state=5)
    expected = {name: (theirs.importances_mean[j], theirs.importances_std[j])
                for j, name in enumerate(X_test.columns)}
    for feature in ours["features"]:
        mean, std = expected[feature["feature"]]
        assert feature["importance"] == pytest.approx(mean, abs=1e-12)
        assert feature["std"] == pytest.approx(std, abs=1e-12)
    assert {f["feature"] for f in ours["features"][:2]} == {"income", "debt_ratio"}  # what the label is made of


def test_regression_importance_is_the_r2_drop_as_scikit_learn_computes_it():
    rng = np.random.default_rng(0)
    import pandas as pd

    X = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300), "noise": rng.normal(size=300)})
    y = pd.Series(3 * X["a"] - X["b"] + rng.normal(0, 0.1, 300))
    model = Ridge().fit(X[:200], y[:200])
    ours = compute_importance(model, X[200:], y[200:], "regression", 2, ImportanceConfig(repeats=3))
    theirs = permutation_importance(model, X[200:], y[200:], n_repeats=3, random_state=2)
    assert ours["scoring"] == "r2"
    assert [f["feature"] for f in ours["features"]] == ["a", "b", "noise"]
    assert ours["features"][0]["importance"] == pytest.approx(theirs.importances_mean[0], abs=1e-12)


def test_importance_uses_at_most_max_rows_of_the_held_out_split(fitted):
    model, X_test, y_test = fitted
    document = compute_importance(model, X_test, y_test, "classification", 0, ImportanceConfig(repeats=1, max_rows=50))
    assert document["rows"] == 50 < len(X_test)


def test_the_cost_budget_lowers_the_repeats_then_the_rows():
    config = ImportanceConfig(repeats=5, max_rows=1000, row_budget=4.0)
    assert within_budget(4, 30, 120, config) == (4, 30)  # iris: 4 x 30 x 4 = 480 = 4 x 120 training rows
    assert within_budget(30, 114, 455, config) == (1, 60)  # breast cancer: one repeat, 60 of 114 rows
    assert within_budget(64, 360, 1437, config) == (1, 89)  # digits
    assert within_budget(100, 200, 10, config) == (1, 50)  # never below 50 rows


def test_a_budgeted_run_records_what_it_used(fitted):
    model, X_test, y_test = fitted
    document = compute_importance(model, X_test, y_test, "classification", 0,
                                  ImportanceConfig(repeats=5, row_budget=1.0), train_rows=900)
    assert (document["repeats"], document["rows"], document["heldOutRows"]) == (1, 180, 300)


def test_slice_labels_by_value_and_by_bins():
    assert list(slice_labels(np.array(["F", "M", None], dtype=object), None)) == ["F", "M", "(missing)"]
    assert list(slice_labels(np.array([18, 30, 49.9, 50, np.nan]), (30.0, 50.0))) == [
        "[-inf, 30)", "[30, 50)", "[30, 50)", "[50, inf)", "(missing)"]


def test_slices_report_every_metric_per_value_with_counts(fitted):
    model, X_test, y_test = fitted
    y_pred = model.predict(X_test)
    proba = model.predict_proba(X_test)
    (entry,) = compute_slices([SliceSpec("region", min_rows=40)], X_test, y_test, y_pred, proba, model,
                              "classification", ["accuracy", "f1_macro"])
    by_value = {v["value"]: v for v in entry["values"]}
    assert set(by_value) == set(loans.REGIONS)
    assert sum(v["rows"] for v in entry["values"]) == len(X_test)
    for value, item in by_value.items():
        mask = (X_test["region"] == value).to_numpy()
        assert item["rows"] == int(mask.sum())
        assert item["metrics"]["accuracy"] == pytest.approx(float(np.mean(y_pred[mask] == y_test.to_numpy()[mask])))
        assert item["judged"] == (item["rows"] >= 40)
    assert not by_value["west"]["judged"]  # 10 % of 300 rows: reported, not judged


def test_a_training_run_writes_importance_and_slices(s3, bucket):
    store = ArtifactStore.from_env(s3.env)
    uri = f"s3://{bucket}/datasets/loans.csv"
    store.put_bytes(uri, loans.csv_bytes(loans.make_loans(seed=7)), "text/csv")
    output = f"s3://{bucket}/default/loans/loans-t001/"
    config = {"dataset": {"uri": uri, "target": "approved", "testSize": 0.25},
              "estimator": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 30},
              "metrics": ["accuracy", "f1_macro"], "seed": 3, "output": output, "onnx": False,
              "validation": {"slices": [{"feature": "sex"}, {"feature": "age", "edges": [30, 50], "metric": "f1_macro"}],
                             "importance": {"repeats": 2, "topK": 3, "rowBudget": 4}}}
    code, summary = train.execute(None, {**s3.env, train.CONFIG_ENV: json.dumps(config)})
    assert code == 0, summary
    importance = json.loads(store.get_bytes(output + "importance.json"))
    assert importance["repeats"] == 2 and importance["seed"] == 3
    assert summary["topFeatures"] == [{"feature": f["feature"], "importance": round(f["importance"], 4)}
                                      for f in importance["features"][:3]]
    slices = json.loads(store.get_bytes(output + "slices.json"))["slices"]
    assert [s["feature"] for s in slices] == ["sex", "age"]
    assert {v["value"] for v in slices[1]["values"]} == {"[-inf, 30)", "[30, 50)", "[50, inf)"}
    sex, age = summary["slices"]
    assert sex["metric"] == "accuracy" and age["metric"] == "f1_macro"
    assert sum(v["rows"] for v in sex["values"]) == 300
    assert summary["timings"]["importance"] >= 0 and summary["timings"]["validate"] >= 0
    assert len(json.dumps(summary)) < 4096


def test_a_slice_on_a_column_that_does_not_exist_fails_before_the_fit(s3, bucket):
    store = ArtifactStore.from_env(s3.env)
    uri = f"s3://{bucket}/datasets/loans.csv"
    store.put_bytes(uri, loans.csv_bytes(loans.make_loans(seed=7, rows=200)), "text/csv")
    config = {"dataset": {"uri": uri, "target": "approved"}, "estimator": "sklearn.linear_model.LogisticRegression",
              "output": f"s3://{bucket}/x/", "onnx": False, "validation": {"slices": [{"feature": "gender"}]}}
    code, summary = train.execute(None, {**s3.env, train.CONFIG_ENV: json.dumps(config)})
    assert code == 2 and summary["reason"] == "InvalidConfig"
    assert "'gender' is not a column" in summary["message"] and "'sex'" in summary["message"]


def test_a_summary_with_many_slices_stays_under_the_termination_limit_keeping_the_metrics():
    from mlops_runtime.summary import MAX_BYTES, fit_to_limit

    many = [{"feature": f"feature_{i}", "metric": "accuracy", "minRows": 30,
             "values": [{"value": f"value-{j}", "rows": 100 - j, "score": 0.812345} for j in range(12)]}
            for i in range(16)]
    summary = {"status": "Succeeded", "metrics": {"accuracy": 0.9, "f1_macro": 0.8}, "slices": many,
               "topFeatures": [{"feature": f"feature_{i}", "importance": 0.1} for i in range(20)]}
    line = fit_to_limit(summary)
    kept = json.loads(line)
    assert len(line.encode()) < MAX_BYTES
    assert kept["metrics"] == summary["metrics"]
    assert all(len(s["values"]) >= 2 for s in kept["slices"])
    assert all(s["values"][:2] == many[0]["values"][:2] for s in kept["slices"])  # the most populous stay
    assert all(s["truncated"] == 12 - len(s["values"]) for s in kept["slices"])
