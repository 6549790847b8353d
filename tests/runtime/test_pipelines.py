"""Preprocessing as part of the model, and ONNX parity that means what it says (pure: fits
in memory, no S3, no processes)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import Ridge
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.svm import LinearSVC

from mlops_runtime.errors import UserError
from mlops_runtime.estimators import build_model, build_pipeline, parse_steps, split_params
from mlops_runtime.model_io import (
    FITTED_INTERNALS,
    UntrustedModelError,
    check_loadable,
    convert_and_check,
    convert_to_onnx,
    default_parameter_callables,
    dump_skops,
    load_skops,
    onnx_feeds,
    onnx_parity,
    onnx_session,
    parity_data,
    regression_tolerance,
    sklearn_reference,
)

SCALER = {"name": "scaler", "estimator": "sklearn.preprocessing.StandardScaler"}


def split(loader, seed: int = 0):
    X, y = loader(return_X_y=True, as_frame=True)
    return train_test_split(X, y, test_size=0.25, random_state=seed)


def fitted(estimator: str, params: dict, steps: list[dict], X: pd.DataFrame, y, categorical=()):
    model, built = build_model(estimator, params, parse_steps(steps), seed=0)
    return build_pipeline(model, list(categorical), built, list(X.columns)).fit(X, y)


# -- building ---------------------------------------------------------------------------------


def test_search_space_names_reach_into_the_steps() -> None:
    steps = [SCALER, {"name": "poly", "estimator": "sklearn.preprocessing.PolynomialFeatures"},
             {"name": "select", "estimator": "sklearn.feature_selection.SelectKBest", "params": {"k": 20}}]
    X_train, _, y_train, _ = split(load_wine)
    # a search proposal merged over fixed params, as the Experiment hands it to its trials
    model = fitted("sklearn.svm.SVC", {"C": 2.0, "svc__gamma": 0.01, "scaler__with_mean": False,
                                       "poly__degree": 2}, steps, X_train, y_train)
    assert [name for name, _ in model.steps] == ["scaler", "poly", "select", "svc"]
    assert model.get_params()["scaler__with_mean"] is False and model.get_params()["poly__degree"] == 2
    assert model.get_params()["svc__C"] == 2.0 and model.get_params()["svc__gamma"] == 0.01
    assert model.named_steps["select"].k == 20 and model.named_steps["poly"].n_output_features_ > 13


@pytest.mark.parametrize(("estimator", "params", "steps", "reason", "message"), [
    ("sklearn.svm.SVC", {"scaler__bogus": 1}, [SCALER], "UnknownParameter",
     "unknown parameter 'bogus' for step 'scaler' (sklearn.preprocessing.StandardScaler)"),
    ("sklearn.svm.SVC", {"impute__strategy": "mean"}, [SCALER], "UnknownParameter",
     "there is no step named 'impute'; the steps are 'scaler', 'svc'"),
    ("sklearn.svm.SVC", {}, [{"name": "clf", "estimator": "sklearn.svm.LinearSVC"}], "UnknownEstimator",
     "step 'sklearn.svm.LinearSVC' is not a transformer"),
    ("sklearn.preprocessing.StandardScaler", {}, [], "UnknownEstimator", "put transformers in steps"),
    ("sklearn.pipeline.Pipeline", {}, [], "UnknownEstimator", "declare its parts as steps instead"),
    ("sklearn.svm.SVC", {}, [{"name": "evil", "estimator": "os.system"}], "EstimatorNotAllowed",
     "step 'os.system' is not in the allow-list"),
    ("sklearn.svm.SVC", {}, [{"name": "svc", "estimator": "sklearn.preprocessing.StandardScaler"}],
     "InvalidConfig", "step name 'svc' is the estimator's"),
])
def test_bad_steps_name_the_problem(estimator, params, steps, reason, message) -> None:
    with pytest.raises(UserError) as raised:
        build_model(estimator, params, parse_steps(steps), seed=0)
    assert raised.value.reason == reason and message in raised.value.message


@pytest.mark.parametrize(("steps", "message"), [
    ("scaler", "must be a list"),
    ([{"estimator": "sklearn.preprocessing.StandardScaler"}], "steps[0].name: must be an identifier"),
    ([{"name": "a__b", "estimator": "x.Y"}], "steps[0].name: must be an identifier without '__'"),
    ([SCALER, SCALER], "steps[1].name: 'scaler' names two steps"),
    ([{"name": "s", "estimator": "x.Y", "columns": []}], "steps[0].columns: must be a non-empty list"),
    ([{"name": "s", "estimator": "x.Y", "colums": ["a"]}], "steps[0]: unknown field(s) ['colums']"),
])
def test_step_config_errors_name_the_field(steps, message) -> None:
    with pytest.raises(UserError) as raised:
        parse_steps(steps)
    assert raised.value.reason == "InvalidConfig" and message in raised.value.message


def test_unprefixed_and_estimator_prefixed_params_both_go_to_the_estimator() -> None:
    own, per_step = split_params({"C": 1, "svc__gamma": 2, "scaler__with_std": False},
                                 parse_steps([SCALER]), "sklearn.svm.SVC")
    assert own == {"C": 1, "gamma": 2} and per_step == {"scaler": {"with_std": False}}


def mixed_frame(rows: int = 240, seed: int = 3) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"area": rng.uniform(20, 200, rows), "rooms": rng.integers(1, 6, rows).astype(float),
                          "city": rng.choice(["oslo", "rome", "lima"], rows),
                          "energy": rng.choice(["a", "b", "c"], rows)})
    frame.loc[rng.random(rows) < 0.1, "area"] = np.nan  # missing values for the imputer
    price = frame["area"].fillna(100) * np.where(frame["city"] == "oslo", 5.0, 3.0) + rng.normal(0, 5, rows)
    return frame, price


def test_per_column_steps_with_one_hot_for_the_strings_nobody_claims() -> None:
    X, y = mixed_frame()
    steps = [{"name": "impute", "estimator": "sklearn.impute.SimpleImputer", "params": {"strategy": "median"},
              "columns": ["area"]},
             {"name": "scale", "estimator": "sklearn.preprocessing.StandardScaler", "columns": ["area"]},
             {"name": "energy", "estimator": "sklearn.preprocessing.OrdinalEncoder",
              "params": {"categories": [["a", "b", "c"]]}, "columns": ["energy"]}]
    model = fitted("sklearn.linear_model.Ridge", {"impute__strategy": "mean"}, steps, X, y,
                   categorical=["city", "energy"])
    columns = model.named_steps["preprocess"]
    branches = {name: (type(t).__name__, list(cols)) for name, t, cols in columns.transformers}
    assert branches == {"impute": ("Pipeline", ["area"]),       # impute then scale, chained
                        "energy": ("OrdinalEncoder", ["energy"]),  # claimed: not one-hot encoded
                        "categorical": ("OneHotEncoder", ["city"])}  # today's default for strings
    assert columns.named_transformers_["impute"].named_steps["impute"].strategy == "mean"
    assert np.isfinite(model.predict(X)).all()  # the NaN in area were imputed inside the model
    with pytest.raises(UserError, match="step 'impute': unknown column\\(s\\) 'size'"):
        fitted("sklearn.linear_model.Ridge", {}, [{**steps[0], "columns": ["size"]}], X, y, ["city", "energy"])
    with pytest.raises(UserError, match="column 'area' is in steps 'impute' and 'scale' with different"):
        fitted("sklearn.linear_model.Ridge", {}, [steps[0], {**steps[1], "columns": ["area", "rooms"]}], X, y,
               ["city", "energy"])


# -- the artifact is the whole pipeline, loaded with a derived trusted list --------------------------


def test_the_saved_artifact_is_the_whole_pipeline_and_loads() -> None:
    X, y = mixed_frame()
    steps = [{"name": "impute", "estimator": "sklearn.impute.SimpleImputer", "columns": ["area"]},
             SCALER, {"name": "poly", "estimator": "sklearn.preprocessing.PolynomialFeatures"},
             {"name": "select", "estimator": "sklearn.feature_selection.SelectKBest", "params": {"k": 6}},
             {"name": "vt", "estimator": "sklearn.feature_selection.VarianceThreshold"},
             {"name": "minmax", "estimator": "sklearn.preprocessing.MinMaxScaler"}]
    model = fitted("sklearn.ensemble.RandomForestRegressor", {"n_estimators": 5}, steps, X, y, ["city", "energy"])
    data = dump_skops(model)
    check_loadable(data)  # the trainer's own check passes
    loaded = load_skops(data)
    assert [name for name, _ in loaded.steps] == [name for name, _ in model.steps]
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_the_trusted_list_is_derived_from_what_the_allow_list_builds() -> None:
    derived = default_parameter_callables()
    # SelectKBest's default score function is in it because SelectKBest holds it by default,
    # not because anyone listed it; nothing that is not a scikit-learn default gets in.
    assert "sklearn.feature_selection._univariate_selection.f_classif" in derived
    assert all(name.startswith("sklearn.") for name in derived)
    assert not set(FITTED_INTERNALS) & {"posix.system", "builtins.eval", "builtins.exec"}
    evil = make_pipeline(FunctionTransformer(os.system), Ridge())
    with pytest.raises(UntrustedModelError, match="system"):
        load_skops(dump_skops(evil))
    with pytest.raises(UserError, match="UntrustedArtifact|which the model server does not load"):
        check_loadable(dump_skops(evil))


# -- ONNX: converter options, real reasons, parity with ties --------------------------------------


def test_linear_svc_converts_without_zipmap_and_passes_parity() -> None:
    X_train, X_test, y_train, _ = split(load_iris)
    model = LinearSVC().fit(X_train, y_train)  # no predict_proba, so no zipmap option
    numeric = list(X_train.columns)
    check = parity_data(model, X_train, y_train, X_test, numeric, seed=0)
    onnx_bytes, parity = convert_and_check(model, X_train.head(5), check, numeric, sklearn_reference(model, check.X))
    assert onnx_bytes is not None and parity["passed"], parity
    assert parity["outOfRangeRows"] == 8 and parity["rows"] == len(X_test) + parity["tieRows"] + 8


def test_no_onnx_form_says_the_real_reason() -> None:
    from sklearn.neighbors import NearestCentroid

    X_train, X_test, y_train, _ = split(load_iris)
    model = NearestCentroid().fit(X_train, y_train)
    check = parity_data(model, X_train, y_train, X_test, list(X_train.columns), seed=0)
    onnx_bytes, parity = convert_and_check(model, X_train.head(5), check, list(X_train.columns))
    assert onnx_bytes is None and parity["passed"] is False
    assert parity["error"].startswith("skl2onnx cannot convert it: MissingShapeCalculator")


@pytest.mark.parametrize("loader", [load_breast_cancer, load_wine])
def test_forest_parity_data_holds_ties_and_tied_labels_agree(loader) -> None:
    X_train, X_test, y_train, _ = split(loader)
    model = RandomForestClassifier(n_estimators=10, random_state=0).fit(X_train, y_train)
    numeric = list(X_train.columns)
    check = parity_data(model, X_train, y_train, X_test, numeric, seed=0)
    tied = check.X.iloc[check.test_rows:check.test_rows + check.tie_rows]
    top = np.sort(model.predict_proba(tied), axis=1)
    assert check.tie_rows > 0 and np.all(top[:, -1] == top[:, -2])  # real ties, in the check data
    onnx_bytes, _ = convert_to_onnx(model, X_train.head(5), numeric)
    parity = onnx_parity(model, onnx_bytes, check.X, numeric)
    assert parity["passed"] and parity["labelsIdentical"], parity


def test_onnx_labels_break_ties_as_scikit_learn_does() -> None:
    """Where the ONNX graph's own label picks the later of two tied classes, the labels derived
    from its probabilities pick the first, as scikit-learn's forests do."""
    from mlops_runtime.model_io import onnx_labels

    classes = np.array(["a", "b"])
    graph_labels = np.array(["b", "b"])
    probabilities = np.array([[0.5, 0.5], [0.25, 0.75]], dtype=np.float32)
    assert onnx_labels([graph_labels, probabilities], classes, True).tolist() == ["a", "b"]
    assert onnx_labels([graph_labels, probabilities], classes, False).tolist() == ["b", "b"]


def test_svm_vote_ties_are_in_the_check_data_and_the_scaled_pipeline_passes() -> None:
    X_train, X_test, y_train, _ = split(load_iris)
    model = fitted("sklearn.svm.SVC", {"C": 10.0}, [SCALER], X_train, y_train)
    numeric = list(X_train.columns)
    check = parity_data(model, X_train, y_train, X_test, numeric, seed=0)
    assert check.tie_rows > 0  # one-vs-one votes 1-1-1
    onnx_bytes, parity = convert_and_check(model, X_train.head(5), check, numeric, sklearn_reference(model, check.X))
    assert onnx_bytes is not None and parity["passed"] and parity["tieRows"] == check.tie_rows, parity


def test_regression_tolerance_is_scaled_to_the_target() -> None:
    assert regression_tolerance(np.array([0.0, 2.0])) == pytest.approx(1e-4)          # std 1
    assert regression_tolerance(np.array([1000.0, 3000.0])) == pytest.approx(1e-4 * 1000)  # std 1000
    assert regression_tolerance(np.array([1e6, 1e6 + 2])) == pytest.approx(1e-4 * 1e4 * 1.000002)  # 1 % of |y|
    X, y = load_iris(return_X_y=True, as_frame=True)
    target = y * 1e5 + 3e5  # a large target: an absolute 1e-4 could never hold in float32
    model = Ridge().fit(X, target)
    check = parity_data(model, X, target, X, list(X.columns), seed=0)
    onnx_bytes, parity = convert_and_check(model, X.head(5), check, list(X.columns))
    assert parity["passed"] and parity["tolerance"] == pytest.approx(regression_tolerance(target)), parity
    session = onnx_session(onnx_bytes)
    predicted = session.run(None, onnx_feeds(session, check.X, list(X.columns)))[0].reshape(-1)
    assert np.max(np.abs(predicted - model.predict(check.X))) > 1e-4  # so the old absolute 1e-4 meant little


def test_a_mixed_data_pipeline_with_per_column_steps_has_an_onnx_form_that_passes() -> None:
    X, y = mixed_frame()
    labels = (y > y.median()).astype(int)
    steps = [{"name": "impute", "estimator": "sklearn.impute.SimpleImputer", "params": {"strategy": "median"},
              "columns": ["area"]},
             {"name": "scale", "estimator": "sklearn.preprocessing.StandardScaler", "columns": ["area"]},
             {"name": "poly", "estimator": "sklearn.preprocessing.PolynomialFeatures"}]
    model = fitted("sklearn.ensemble.RandomForestClassifier", {"n_estimators": 10}, steps, X, labels,
                   categorical=["city", "energy"])
    numeric = ["area", "rooms"]
    check = parity_data(model, X, labels, X, numeric, seed=0)
    onnx_bytes, parity = convert_and_check(model, X.head(5), check, numeric, sklearn_reference(model, check.X))
    assert onnx_bytes is not None and parity["passed"] and parity["tieRows"] > 0, parity
    # one ONNX input per column, as the ColumnTransformer selects them by name
    assert [i.name for i in onnx_session(onnx_bytes).get_inputs()] == list(X.columns)
