"""Request instances -> arrays, checked against the signature (pure functions, no server)."""

from __future__ import annotations

import re

import numpy as np
import orjson
import pytest

from mlops_runtime.serving_model import (
    Feature,
    InputError,
    Signature,
    SklearnPredictor,
    batch_from_instances,
    check_range,
)
from mlops_runtime.serving_v2 import batch_from_tensors, parse_request

IRIS = Signature(task="classification", target="species",
                 features=tuple(Feature(n) for n in ("sl", "sw", "pl", "pw")), classes=(0, 1, 2))
MIXED = Signature(task="regression", target="price",
                  features=(Feature("area"), Feature("city", kind="categorical", dtype="object",
                                                     categories=("oslo", "rome"))))


def batch_from_v2_inputs(inputs: object, signature: Signature) -> object:
    """What the server does with a V2 body holding these `inputs`."""
    return batch_from_tensors(parse_request(orjson.dumps({"inputs": inputs}), None, signature.names).inputs,
                              signature)


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
    ([{"name": "sl", "shape": [1], "datatype": "FP64", "data": [1]},
      {"name": "sw", "shape": [1], "datatype": "FP64", "data": [1]}], "missing feature tensor(s) 'pl', 'pw'"),
    ([{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]},
      {"name": "y", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}],
     "send one 2-D tensor of all features, or one tensor per feature"),
    # the protocol's required fields, and datatypes checked against the data
    ([{"shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}], "inputs[0]: missing field 'name'"),
    ([{"name": "x", "shape": [1, 4], "data": [1, 2, 3, 4]}], "inputs[0] 'x': missing field 'datatype'"),
    ([{"name": "x", "datatype": "FP64", "data": [1, 2, 3, 4]}], "inputs[0] 'x': missing field 'shape'"),
    ([{"name": "x", "shape": [1, 4], "datatype": "FP64"}], "inputs[0] 'x': missing field 'data'"),
    ([{"name": "x", "shape": [1, 4], "datatype": "BYTES", "data": [1, 2, 3, 4]}],
     "inputs[0] 'x': row 0, feature 'sl': datatype BYTES holds strings, got int 1"),
    ([{"name": "x", "shape": [1, 4], "datatype": "BYTES", "data": ["1", "2", "3", "4"]}],
     "the features are numeric but the datatype is BYTES"),
    ([{"name": "x", "shape": [1, 4], "datatype": "INT8", "data": [1, 2, 3, 1000]}],
     "inputs[0] 'x': row 0, feature 'pw': 1000 is outside the range of INT8 (-128..127)"),
    ([{"name": "x", "shape": [2, 4], "datatype": "UINT8", "data": [1, 2, 3, 4, 5, -1, 7, 8]}],
     "row 1, feature 'sw': -1 is outside the range of UINT8"),
    ([{"name": "x", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4.5]}],
     "feature 'pw': datatype INT64 holds integers, got 4.5"),
    ([{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 1e39]}],
     "inputs[0] 'x': row 0, feature 'pw': 1e+39 is outside the range of FP32"),
    ([{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, "3", 4]}],
     "row 0, feature 'pl': datatype FP64 holds numbers, got str '3'"),
    ([{"name": "pw", "shape": [2], "datatype": "INT8", "data": [1, 300]},
      {"name": "sl", "shape": [2], "datatype": "FP64", "data": [1, 2]},
      {"name": "sw", "shape": [2], "datatype": "FP64", "data": [1, 2]},
      {"name": "pl", "shape": [2], "datatype": "FP64", "data": [1, 2]}],
     "inputs[0] 'pw': row 1, feature 'pw': 300 is outside the range of INT8"),
    ([{"name": "x", "shape": [1, 4], "datatype": "BOOL", "data": [1, 2, 3, 4]}], "datatype BOOL holds true/false"),
    ([{"name": "sl", "shape": [1], "datatype": "BYTES", "data": ["a"]},
      {"name": "sw", "shape": [1], "datatype": "FP64", "data": [1]},
      {"name": "pl", "shape": [1], "datatype": "FP64", "data": [1]},
      {"name": "pw", "shape": [1], "datatype": "FP64", "data": [1]}],
     "inputs[0] 'sl': feature 'sl' is numeric but the datatype is BYTES"),
])
def test_bad_v2_inputs_name_the_problem(inputs: object, message: str) -> None:
    with pytest.raises(InputError) as raised:
        batch_from_v2_inputs(inputs, IRIS)
    assert message in str(raised.value)


def test_categorical_features_take_text_and_a_mixed_model_takes_one_tensor_per_feature() -> None:
    with pytest.raises(InputError, match="categorical feature 'city' takes text: send it as BYTES, not FP64"):
        batch_from_v2_inputs([{"name": "area", "shape": [1], "datatype": "FP64", "data": [50]},
                              {"name": "city", "shape": [1], "datatype": "FP64", "data": [3]}], MIXED)
    with pytest.raises(InputError, match="categorical features \\('city'\\).*one tensor per feature"):
        batch_from_v2_inputs([{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [50, 3]}], MIXED)


@pytest.mark.parametrize("value", [1e308, -1e39, float("inf"), float("-inf")])
def test_values_beyond_float32_are_refused_naming_row_and_feature(value: float) -> None:
    raw = np.array([[1, 2, 3, 4], [5, 6, value, 8]], dtype="<f8").tobytes()  # binary FP64 carries infinities
    header = orjson.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64",
                                       "parameters": {"binary_data_size": len(raw)}}]})
    batch = batch_from_tensors(parse_request(header + raw, str(len(header)).encode()).inputs, IRIS)
    with pytest.raises(InputError, match=re.escape(f"row 1: feature 'pl' is {value!r}, outside the range")):
        check_range(batch, IRIS)


def test_json_values_beyond_float32_are_refused_on_every_path() -> None:
    with pytest.raises(InputError, match="row 1: feature 'pl' is 1e"):
        check_range(batch_from_instances([[1, 2, 3, 4], [5, 6, 1e308, 8]], IRIS), IRIS)
    with pytest.raises(InputError, match="row 0: feature 'area' is -4e"):
        check_range(batch_from_instances([{"area": -4e38, "city": "oslo"}], MIXED), MIXED)
    check_range(batch_from_instances([[3.4e38, -3.4e38, 0, 1]], IRIS), IRIS)  # float32's own range is fine


def test_nan_is_missing_not_out_of_range() -> None:
    batch = batch_from_instances([[1, None, 3, 3.4e38]], IRIS)
    check_range(batch, IRIS)
    assert batch.has_missing(IRIS) == (0, "sw")


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


def test_the_servers_regression_parity_uses_the_trainers_tolerance() -> None:
    from mlops_runtime.model_io import regression_tolerance
    from mlops_runtime.serving_model import Prediction, parity_problem, target_tolerance

    sample = [100_000.0, 300_000.0, 500_000.0]
    tolerance = target_tolerance({"target": {"kind": "numeric", "sample": sample}})
    assert tolerance == regression_tolerance(np.array(sample))
    reference = Prediction(np.array([300_000.0]), None)
    assert parity_problem(reference, Prediction(np.array([300_000.0 + tolerance / 2]), None),
                          "regression", tolerance) is None
    assert "differ from scikit-learn's by" in parity_problem(
        reference, Prediction(np.array([300_000.0 + tolerance * 2]), None), "regression", tolerance)
    assert target_tolerance({"target": {"classes": [0, 1]}}) is None and target_tolerance(None) is None
