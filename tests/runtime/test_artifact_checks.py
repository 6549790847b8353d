"""The checks that stand between an artifact and the predictions it would make (issue #15):
ONNX is served only when it reproduces scikit-learn's labels *and* probabilities (or
regression outputs) within the tolerance, and a model read from a local path or a
`file://` URI is refused unless its sha256 matches. Both sides of each boundary, through
public behaviour: `onnx_parity`'s verdict and the model server's readiness."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression

from mlops_runtime import model_io
from mlops_runtime.serving_process import ServerProcess

TOLERANCE = 1e-4  # the contract's parity tolerance (docs/contracts.md, metrics.json onnxParity)


@pytest.fixture(scope="module")
def classifier() -> tuple[object, bytes, pd.DataFrame]:
    data = load_iris(as_frame=True)
    X = data.data
    model = LogisticRegression(max_iter=500).fit(X, data.target)
    onnx_bytes = model_io.to_onnx(model, X.head(5))
    assert onnx_bytes is not None
    return model, onnx_bytes, X.iloc[::5]


@pytest.fixture(scope="module")
def regressor() -> tuple[object, bytes, pd.DataFrame]:
    data = load_diabetes(as_frame=True)
    model = LinearRegression().fit(data.data, data.target)
    onnx_bytes = model_io.to_onnx(model, data.data.head(5))
    assert onnx_bytes is not None
    return model, onnx_bytes, data.data.iloc[::10]


def parity(model, onnx_bytes, X, labels, probabilities) -> dict:
    return model_io.onnx_parity(model, onnx_bytes, X, reference=(np.asarray(labels), probabilities))


def test_the_tolerance_is_the_contracts():
    assert model_io.PARITY_TOLERANCE == TOLERANCE


def test_parity_passes_when_onnx_reproduces_scikit_learn(classifier):
    model, onnx_bytes, X = classifier
    result = model_io.onnx_parity(model, onnx_bytes, X)
    assert result["passed"] is True and result["labelsIdentical"] is True
    assert result["maxAbsDiff"] <= TOLERANCE


@pytest.mark.parametrize("scale", [1.10, 0.90])
def test_parity_fails_when_the_probabilities_are_ten_percent_off(classifier, scale):
    model, onnx_bytes, X = classifier
    labels, probabilities = model.predict(X), model.predict_proba(X)
    result = parity(model, onnx_bytes, X, labels, probabilities * scale)  # the same labels
    assert result["labelsIdentical"] is True
    assert result["passed"] is False
    assert result["maxAbsDiff"] == pytest.approx(float(np.max(np.abs(probabilities * (scale - 1)))), rel=1e-2)


@pytest.mark.parametrize("shift, passed", [(0.5 * TOLERANCE, True), (3 * TOLERANCE, False)])
def test_parity_on_each_side_of_the_probability_tolerance(classifier, shift, passed):
    model, onnx_bytes, X = classifier
    onnx_probabilities = model_io.onnx_session(onnx_bytes).run(
        None, model_io.onnx_feeds(model_io.onnx_session(onnx_bytes), X, list(X.columns)))[1]
    shifted = np.asarray(onnx_probabilities, dtype=np.float64).copy()
    shifted[0, 0] += shift
    result = parity(model, onnx_bytes, X, model.predict(X), shifted)
    assert result["passed"] is passed


def test_parity_fails_when_a_label_differs(classifier):
    model, onnx_bytes, X = classifier
    labels = model.predict(X).copy()
    labels[0] = (labels[0] + 1) % 3
    assert parity(model, onnx_bytes, X, labels, model.predict_proba(X))["passed"] is False


@pytest.mark.parametrize("scale, passed", [(1.0, True), (1.10, False), (0.90, False)])
def test_regression_parity_fails_ten_percent_off(regressor, scale, passed):
    model, onnx_bytes, X = regressor
    assert parity(model, onnx_bytes, X, model.predict(X) * scale, None)["passed"] is passed


# -- local artifacts and their sha256 ----------------------------------------------------------


@pytest.fixture(scope="module")
def local_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    data = load_iris()
    model = LogisticRegression(max_iter=500).fit(data.data, data.target)
    path = tmp_path_factory.mktemp("model") / "model.skops"
    path.write_bytes(model_io.dump_skops(model))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def serve(uri: str, sha256: str, log: Path) -> ServerProcess:
    return ServerProcess("mlops_runtime.serve", ["--model-uri", uri, "--sha256", sha256, "--name", "iris",
                                                 "--log-level", "warning"], {}, log_path=log)


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_a_local_model_whose_sha256_differs_is_refused(local_model, tmp_path, scheme):
    path, sha256 = local_model
    wrong = hashlib.sha256(b"another model").hexdigest()
    with serve(f"{scheme}{path}", wrong, tmp_path / "serve.log") as server:
        server.wait_live(timeout=120)
        deadline = time.monotonic() + 120
        status, body = server.ready_state()
        while "sha256 mismatch" not in str(body.get("reason")):  # loading happens after start-up
            assert time.monotonic() < deadline, (status, body, server.log_tail())
            time.sleep(0.1)
            status, body = server.ready_state()
        # Refused for that reason, and never ready: the model was not loaded.
        assert status == 400 and body["ready"] is False and wrong in body["reason"]


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_a_local_model_whose_sha256_matches_is_served(local_model, tmp_path, scheme):
    path, sha256 = local_model
    with serve(f"{scheme}{path}", sha256, tmp_path / "serve.log") as server:
        server.wait_ready(timeout=120)
