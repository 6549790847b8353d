"""Request instances -> arrays, checked against the signature (pure functions, no server)."""

from __future__ import annotations

import numpy as np
import pytest

from mlops_runtime.serving_model import (
    Feature,
    InputError,
    Signature,
    SklearnPredictor,
    batch_from_instances,
    batch_from_v2_inputs,
)

IRIS = Signature(task="classification", target="species",
                 features=tuple(Feature(n) for n in ("sl", "sw", "pl", "pw")), classes=(0, 1, 2))
MIXED = Signature(task="regression", target="price",
                  features=(Feature("area"), Feature("city", kind="categorical", dtype="object",
                                                     categories=("oslo", "rome"))))


def test_rows_and_records_give_the_same_matrix() -> None:
    rows = batch_from_instances([[5.1, 3.5, 1.4, 0.2], [6, 3, 5, 2]], IRIS)
    records = batch_from_instances([{"pw": 0.2, "pl": 1.4, "sw": 3.5, "sl": 5.1},
                                    {"sl": 6, "sw": 3, "pl": 5, "pw": 2}], IRIS)
    assert rows.matrix.dtype == np.float64 and rows.matrix.shape == (2, 4)
    np.testing.assert_array_equal(rows.matrix, records.matrix)
    np.testing.assert_array_equal(rows.columns[2], [1.4, 5.0])


@pytest.mark.parametrize(("instances", "message"), [
    ([], "instances is empty"),
    ({"sl": 1}, "must be a list of instances"),
    ([[1, 2, 3]], "instances[0]: expected 4 values (sl, sw, pl, pw), got 3"),
    ([[1, 2, 3, 4], [1, 2, 3, 4, 5]], "instances[1]: expected 4 values"),
    ([[1, 2, 3, "4"]], "feature 'pw' must be a number, got string"),
    ([[1, 2, 3, {"v": 4}]], "feature 'pw' must be a number, got object"),
    ([[1, 2, 3, [4]]], "feature 'pw' must be a number, got array"),
    ([{"sl": 1, "sw": 2, "pl": 3}], "instances[0]: missing feature(s) 'pw'"),
    ([{"sl": 1, "sw": 2, "pl": 3, "pw": 4, "colour": 5}], "instances[0]: unknown feature(s) 'colour'"),
    (["1,2,3,4"], "each instance must be a list of values or an object keyed by feature name"),
])
def test_bad_instances_name_the_problem(instances: object, message: str) -> None:
    with pytest.raises(InputError) as raised:
        batch_from_instances(instances, IRIS)
    assert message in str(raised.value)


def test_booleans_count_as_one_and_zero_on_every_path() -> None:
    fast = batch_from_instances([[1.5, 2, 3, True]], IRIS)
    slow = batch_from_instances([{"sl": 1.5, "sw": 2, "pl": 3, "pw": False}, [1, None, 3, True]], IRIS)
    assert fast.matrix.tolist() == [[1.5, 2, 3, 1]]
    assert slow.matrix[0].tolist() == [1.5, 2, 3, 0]


def test_null_becomes_missing_and_is_located() -> None:
    batch = batch_from_instances([[1, 2, 3, 4], [1, None, 3, 4]], IRIS)
    assert np.isnan(batch.matrix[1, 1])
    assert batch.has_missing(IRIS) == (1, "sw")
    assert batch_from_instances([[1, 2, 3, 4]], IRIS).has_missing(IRIS) is None


def test_mixed_signature_keeps_strings_for_categorical_features() -> None:
    batch = batch_from_instances([{"area": 50, "city": "oslo"}, [70.5, "rome"]], MIXED)
    assert batch.matrix is None
    assert batch.columns[0].tolist() == [50.0, 70.5] and batch.columns[1].tolist() == ["oslo", "rome"]
    with pytest.raises(InputError, match="categorical feature 'city' must be a string, got number"):
        batch_from_instances([[50, 3]], MIXED)
    missing = batch_from_instances([[50, None]], MIXED)
    assert missing.has_missing(MIXED) == (0, "city")


def test_v2_one_matrix_tensor_flat_or_nested() -> None:
    flat = batch_from_v2_inputs([{"name": "input-0", "shape": [2, 4], "datatype": "FP32",
                                  "data": [1, 2, 3, 4, 5, 6, 7, 8]}], IRIS)
    nested = batch_from_v2_inputs([{"name": "x", "shape": [2, 4], "datatype": "FP64",
                                    "data": [[1, 2, 3, 4], [5, 6, 7, 8]]}], IRIS)
    np.testing.assert_array_equal(flat.matrix, nested.matrix)
    assert flat.matrix.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_v2_one_tensor_per_feature() -> None:
    tensors = [{"name": n, "shape": [2], "datatype": "FP64", "data": [i, i + 10]}
               for i, n in enumerate(("pw", "sl", "sw", "pl"))]
    batch = batch_from_v2_inputs(tensors, IRIS)
    assert batch.matrix.tolist() == [[1, 2, 3, 0], [11, 12, 13, 10]]
    mixed = batch_from_v2_inputs([{"name": "area", "shape": [1], "datatype": "FP64", "data": [50]},
                                  {"name": "city", "shape": [1], "datatype": "BYTES", "data": ["rome"]}], MIXED)
    assert mixed.columns[1].tolist() == ["rome"]


@pytest.mark.parametrize(("inputs", "message"), [
    ([], "inputs must be a non-empty list"),
    ([{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}], "expected 4 features"),
    ([{"name": "x", "shape": [2, 4], "datatype": "FP64", "data": [1, 2, 3]}], "needs 8 values, got 3"),
    ([{"name": "x", "shape": [0, 4], "datatype": "FP64", "data": []}], "is empty"),
    ([{"name": "x", "shape": [1, 4], "datatype": "FP128", "data": [1, 2, 3, 4]}], "unknown datatype 'FP128'"),
    ([{"name": "sl", "shape": [1], "data": [1]}, {"name": "sw", "shape": [1], "data": [1]}],
     "missing feature tensor(s) 'pl', 'pw'"),
    ([{"name": "x", "shape": [1, 4], "data": [1, 2, 3, 4]}, {"name": "y", "shape": [1, 4], "data": [1, 2, 3, 4]}],
     "send one 2-D tensor of all features, or one tensor per feature"),
])
def test_bad_v2_inputs_name_the_problem(inputs: object, message: str) -> None:
    with pytest.raises(InputError) as raised:
        batch_from_v2_inputs(inputs, IRIS)
    assert message in str(raised.value)


def test_forest_labels_from_one_probability_pass_equal_predict() -> None:
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    X, y = load_breast_cancer(return_X_y=True)
    signature = Signature(task="classification", target="y",
                          features=tuple(Feature(f"f{i}") for i in range(X.shape[1])), classes=(0, 1))
    batch = batch_from_instances(X.tolist(), signature)
    forest = RandomForestClassifier(n_estimators=15, max_depth=3, random_state=0).fit(X[:300], y[:300])
    predictor = SklearnPredictor(forest, signature, use_frame=False)
    assert predictor.labels_from_proba
    prediction = predictor.predict(batch)
    assert prediction.labels.tolist() == forest.predict(X).tolist()
    np.testing.assert_array_equal(prediction.probabilities, forest.predict_proba(X))
    linear = SklearnPredictor(LogisticRegression().fit(X[:, :2] / 100, y), signature, use_frame=False)
    assert not linear.labels_from_proba  # its predict thresholds a decision function


def test_signature_from_json_refuses_what_it_cannot_serve() -> None:
    with pytest.raises(ValueError, match="task must be classification or regression"):
        Signature.from_json({"task": "ranking", "features": [{"name": "a"}]})
    with pytest.raises(ValueError, match="lists no features"):
        Signature.from_json({"task": "regression", "features": []})
    signature = Signature.from_json({"task": "classification", "target": "y", "classes": ["a", "b"],
                                     "features": [{"name": "c", "kind": "categorical", "categories": ["x"]}]})
    assert signature.names == ("c",) and not signature.all_numeric
