"""`python -m mlops_runtime.train` end to end against a real S3 server, as real processes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sklearn

from mlops_runtime.serving_process import free_port
from mlops_runtime import train
from mlops_runtime.datasets import DatasetSpec, load_dataset, train_test_split_frame
from mlops_runtime.estimators import build_estimator, build_pipeline
from mlops_runtime.model_io import load_verified_model, onnx_feeds, onnx_session
from mlops_runtime.store import ArtifactStore, IntegrityError

ARTIFACTS = ("model.skops", "metrics.json", "signature.json", "baseline.json", "lineage.json", "input_example.json")
REPO = Path(__file__).resolve().parents[2]


def cli(config: dict | None, env: dict[str, str], tmp_path: Path, extra_env: dict | None = None,
        use_env_config: bool = False) -> subprocess.Popen:
    """Start the trainer as a real process; the config goes in a file or in MLOPS_TRAIN_CONFIG."""
    full_env = {**os.environ, **env, **(extra_env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO / "runtime"), full_env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "mlops_runtime.train"]
    if use_env_config:
        full_env["MLOPS_TRAIN_CONFIG"] = json.dumps(config)
    elif config is not None:
        path = tmp_path / f"config-{os.urandom(4).hex()}.json"
        path.write_text(json.dumps(config))
        command += ["--config", str(path)]
    if "MLOPS_TERMINATION_LOG" not in full_env:
        command += ["--termination-log", str(tmp_path / f"termination-{os.urandom(4).hex()}.log")]
    return subprocess.Popen(command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> tuple[int, dict, str, str]:
    stdout, stderr = process.communicate(timeout=120)
    lines = stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{stderr}"
    summary = json.loads(lines[-1])
    log_arg = process.args[process.args.index("--termination-log") + 1] if "--termination-log" in process.args \
        else None
    if log_arg:
        assert json.loads(Path(log_arg).read_text()) == summary, "termination log and stdout differ"
    return process.returncode, summary, stdout, stderr


def run_cli(config, env, tmp_path, **kwargs) -> tuple[int, dict, str, str]:
    return finish(cli(config, env, tmp_path, **kwargs))


def read_json(store: ArtifactStore, prefix: str, name: str) -> dict:
    return json.loads(store.get_bytes(prefix + name))


def in_memory_model(uri: str, estimator: str, params: dict, seed: int, store=None, target=None):
    """The same fit, done here: what the served model must agree with."""
    data = load_dataset(DatasetSpec(uri, target=target), store)
    from mlops_runtime.datasets import numeric_and_categorical

    _, categorical = numeric_and_categorical(data.X)
    task = "classification" if "Classifier" in estimator or "Logistic" in estimator else "regression"
    X_train, X_test, y_train, _ = train_test_split_frame(data.X, data.y, 0.2, seed, task)
    model = build_pipeline(build_estimator(estimator, params, seed), categorical).fit(X_train, y_train)
    return model, X_test


@pytest.fixture
def store(s3) -> ArtifactStore:
    return ArtifactStore.from_env(s3.env)


def test_iris_end_to_end(s3, bucket, store, tmp_path):
    prefix = f"s3://{bucket}/default/iris/iris-t001/"
    config = {"dataset": {"uri": "sklearn://iris", "target": "target", "testSize": 0.2},
              "estimator": "sklearn.linear_model.LogisticRegression", "params": {"C": 1.0, "max_iter": 500},
              "seed": 42, "crossValidation": {"folds": 3}, "output": prefix,
              "lineage": {"namespace": "default", "model": "iris", "trainingRun": "iris-t001",
                          "image": "mlops-runtime:test"}}
    code, summary, stdout, stderr = run_cli(config, s3.env, tmp_path)
    assert code == 0, stderr
    assert summary["status"] == "Succeeded" and summary["task"] == "classification"
    assert summary["sklearnVersion"] == sklearn.__version__
    assert summary["artifactUri"] == prefix and summary["modelUri"] == prefix + "model.skops"
    assert summary["servingFormat"] == "onnx" and summary["onnxUri"] == prefix + "model.onnx"
    assert {"accuracy", "f1_macro", "roc_auc", "log_loss", "cv_accuracy_mean", "cv_accuracy_std"} <= set(summary["metrics"])
    assert summary["metrics"]["accuracy"] > 0.8
    assert len(stdout.strip().splitlines()[-1].encode()) < 4096
    for name in (*ARTIFACTS, "model.onnx"):
        assert store.exists(prefix + name), name

    model = load_verified_model(store, summary["modelUri"], summary["sha256"])
    reference, X_test = in_memory_model("sklearn://iris", config["estimator"], config["params"], 42)
    assert np.array_equal(model.predict(X_test), reference.predict(X_test))
    assert np.allclose(model.predict_proba(X_test), reference.predict_proba(X_test))

    session = onnx_session(store.get_verified(summary["onnxUri"], summary["onnxSha256"]))
    labels, probabilities = session.run(None, onnx_feeds(session, X_test, list(X_test.columns)))
    assert np.array_equal(labels, model.predict(X_test))
    assert np.max(np.abs(probabilities - model.predict_proba(X_test))) <= 1e-4

    metrics = read_json(store, prefix, "metrics.json")
    assert metrics["metrics"] == summary["metrics"] and metrics["onnxParity"]["passed"]
    assert metrics["split"] == {"train": 120, "test": 30, "testSize": 0.2, "seed": 42}
    signature = read_json(store, prefix, "signature.json")
    assert signature["task"] == "classification" and signature["classes"] == [0, 1, 2]
    assert [f["name"] for f in signature["features"]] == list(X_test.columns)
    assert all(f["kind"] == "numeric" and f["dtype"] == "float64" for f in signature["features"])
    baseline = read_json(store, prefix, "baseline.json")
    assert baseline["rows"] == 120
    first = baseline["features"][0]
    assert len(first["edges"]) <= 11 and abs(sum(first["fractions"]) - 1) < 1e-9
    assert set(first["quantiles"]) == {"p01", "p05", "p25", "p50", "p75", "p95", "p99"}
    assert first["sample"] == sorted(first["sample"]) and len(first["sample"]) == 120
    assert baseline["target"]["classes"] == [0, 1, 2] and abs(sum(baseline["target"]["fractions"]) - 1) < 1e-9
    lineage = read_json(store, prefix, "lineage.json")
    assert lineage["dataset"]["uri"] == "sklearn://iris" and lineage["dataset"]["sha256"] == summary["datasetSha256"]
    assert lineage["params"] == config["params"] and lineage["estimator"] == config["estimator"]
    assert lineage["image"] == "mlops-runtime:test" and lineage["trainingRun"] == "iris-t001"
    assert lineage["sklearnVersion"] and lineage["startedAt"] <= lineage["finishedAt"]
    example = read_json(store, prefix, "input_example.json")
    records = pd.DataFrame(example["instances"])
    assert np.array_equal(model.predict(records), reference.predict(records))

    # A substituted artifact is refused before it is deserialized.
    s3.client().put_object(bucket, "default/iris/iris-t001/model.skops", io.BytesIO(b"PK\x03\x04evil"), 8)
    with pytest.raises(IntegrityError):
        load_verified_model(store, summary["modelUri"], summary["sha256"])


def test_a_pipeline_trains_whole_and_its_onnx_form_passes_parity_with_ties(s3, bucket, store, tmp_path):
    prefix = f"s3://{bucket}/default/wine/wine-t001/"
    config = {"dataset": {"uri": "sklearn://wine"}, "estimator": "sklearn.svm.SVC", "seed": 3, "output": prefix,
              "steps": [{"name": "scaler", "estimator": "sklearn.preprocessing.StandardScaler"}],
              # what a search proposal over `scaler__with_mean` and `svc__C` hands the trial
              "params": {"svc__C": 10.0, "scaler__with_mean": True}}
    code, summary, _, stderr = run_cli(config, s3.env, tmp_path)
    assert code == 0, stderr
    assert summary["onnx"] == "parity passed" and summary["servingFormat"] == "onnx"
    model = load_verified_model(store, summary["modelUri"], summary["sha256"])
    assert [name for name, _ in model.steps] == ["scaler", "svc"] and model.named_steps["svc"].C == 10.0
    metrics = read_json(store, prefix, "metrics.json")
    parity = metrics["onnxParity"]
    assert parity["tieRows"] > 0 and parity["outOfRangeRows"] == 8 and parity["labelsIdentical"]
    assert parity["rows"] == metrics["split"]["test"] + parity["tieRows"] + 8
    assert summary["metrics"]["accuracy"] > 0.9  # measured on the test split only
    lineage = read_json(store, prefix, "lineage.json")
    assert lineage["steps"] == [{**config["steps"][0], "params": {}}] and lineage["params"] == config["params"]

    bad = {**config, "output": prefix + "bad/", "params": {"scale__with_mean": True}}
    code, summary, _, _ = run_cli(bad, s3.env, tmp_path)
    assert code == 2 and summary["reason"] == "UnknownParameter" and "no step named 'scale'" in summary["message"]


def test_mixed_categorical_csv_from_s3(s3, bucket, store, tmp_path):
    rng = np.random.default_rng(1)
    rows = 200
    frame = pd.DataFrame({"size": rng.normal(10, 3, rows).round(3), "rooms": rng.integers(1, 6, rows),
                          "city": rng.choice(["paris", "lyon", "nice"], rows)})
    frame["target"] = np.where((frame["size"] > 10) ^ (frame["city"] == "nice"), "high", "low")
    store.put_bytes(f"s3://{bucket}/data/houses.csv", frame.to_csv(index=False).encode())
    prefix = f"s3://{bucket}/default/houses/run1/"
    config = {"dataset": {"uri": f"s3://{bucket}/data/houses.csv", "target": "target"},
              "estimator": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 20},
              "seed": 3, "output": prefix}
    code, summary, _, stderr = run_cli(config, s3.env, tmp_path, extra_env={
        "MLOPS_TERMINATION_LOG": str(tmp_path / "via-env.log")}, use_env_config=True)
    assert code == 0, stderr
    assert json.loads((tmp_path / "via-env.log").read_text()) == summary
    signature = read_json(store, prefix, "signature.json")
    kinds = {f["name"]: (f["kind"], f.get("categories")) for f in signature["features"]}
    assert kinds == {"size": ("numeric", None), "rooms": ("numeric", None),
                     "city": ("categorical", ["lyon", "nice", "paris"])}
    assert signature["classes"] == ["high", "low"]
    baseline = read_json(store, prefix, "baseline.json")
    city = next(f for f in baseline["features"] if f["name"] == "city")
    assert city["kind"] == "categorical" and sorted(city["categories"]) == ["lyon", "nice", "paris"]

    model = load_verified_model(store, summary["modelUri"], summary["sha256"])
    reference, X_test = in_memory_model(f"s3://{bucket}/data/houses.csv", config["estimator"], config["params"], 3,
                                        store=store, target="target")
    raw = pd.DataFrame(read_json(store, prefix, "input_example.json")["instances"])
    assert raw["city"].dtype.kind == "O"  # raw records: the encoder is inside the model
    assert list(model.predict(X_test)) == list(reference.predict(X_test))
    assert list(model.predict(raw)) == list(reference.predict(raw))
    if summary["servingFormat"] == "onnx":
        session = onnx_session(store.get_verified(summary["onnxUri"], summary["onnxSha256"]))
        labels = session.run(None, onnx_feeds(session, X_test, ["size", "rooms"]))[0]
        assert list(labels) == list(model.predict(X_test))
    else:
        assert summary["onnx"].startswith(("parity failed", "conversion failed"))


def test_regression_cli_and_parquet_from_s3(s3, bucket, store, tmp_path):
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True).frame
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    digest = store.put_bytes(f"s3://{bucket}/data/diabetes.parquet", buffer.getvalue())
    prefix = f"s3://{bucket}/default/diabetes/run1/"
    config = {"dataset": {"uri": f"s3://{bucket}/data/diabetes.parquet", "target": "target"},
              "estimator": "sklearn.linear_model.Ridge", "params": {"alpha": 0.5}, "metrics": ["r2", "rmse"],
              "output": prefix, "onnx": False}
    code, summary, _, stderr = run_cli(config, s3.env, tmp_path)
    assert code == 0, stderr
    assert summary["task"] == "regression" and set(summary["metrics"]) == {"r2", "rmse"}
    assert summary["datasetSha256"] == digest
    assert summary["servingFormat"] == "skops" and summary["onnx"] == "disabled" and summary["onnxUri"] is None
    assert not store.exists(prefix + "model.onnx")
    baseline = read_json(store, prefix, "baseline.json")
    assert baseline["target"]["kind"] == "numeric" and "p50" in baseline["target"]["quantiles"]
    assert "classes" not in read_json(store, prefix, "signature.json")


@pytest.mark.parametrize("dataset, estimator, expected_metric", [
    ("wine", "sklearn.tree.DecisionTreeClassifier", "accuracy"),
    ("breast_cancer", "sklearn.naive_bayes.GaussianNB", "roc_auc"),
    ("digits", "sklearn.neighbors.KNeighborsClassifier", "f1_weighted"),
    ("diabetes", "sklearn.ensemble.RandomForestRegressor", "r2"),
    ("linnerud", "sklearn.linear_model.Ridge", "mae"),
])
def test_every_builtin_dataset_trains(s3, bucket, store, dataset, estimator, expected_metric):
    prefix = f"s3://{bucket}/default/{dataset}/r/"
    params = {"n_estimators": 10} if "Forest" in estimator else {}
    config = {"dataset": {"uri": f"sklearn://{dataset}"}, "estimator": estimator, "params": params,
              "output": prefix, "crossValidation": {"folds": 3} if dataset == "wine" else None}
    code, summary = train.execute(None, {**s3.env, "MLOPS_TRAIN_CONFIG": json.dumps(config)})
    assert code == 0, summary
    assert expected_metric in summary["metrics"]
    model = load_verified_model(store, summary["modelUri"], summary["sha256"])
    example = pd.DataFrame(read_json(store, prefix, "input_example.json")["instances"])
    assert len(model.predict(example)) == len(example)
    if dataset == "wine":
        assert "cv_accuracy_mean" in summary["metrics"]


# -- bad input: exit codes and messages, as real processes, started together --------------


def closed_port() -> int:
    """A port nothing listens on, below the ephemeral range (where a connect could meet itself)."""
    return free_port()


BAD_INPUTS = {
    "unknown estimator": (
        {"dataset": {"uri": "sklearn://iris"}, "estimator": "sklearn.ensemble.RandomForrestClassifier"},
        2, "UnknownEstimator", "RandomForestClassifier"),
    "unknown param": (
        {"dataset": {"uri": "sklearn://iris"}, "estimator": "sklearn.linear_model.LogisticRegression",
         "params": {"n_estimators": 10}},
        2, "UnknownParameter", "'n_estimators'.*valid parameters: C, class_weight"),
    "missing target column": (
        {"dataset": {"uri": "s3://{bucket}/data/no-target.csv", "target": "label"},
         "estimator": "sklearn.linear_model.LogisticRegression"},
        2, "MissingTarget", "no target column 'label'"),
    "empty dataset": (
        {"dataset": {"uri": "s3://{bucket}/data/empty.csv", "target": "target"},
         "estimator": "sklearn.linear_model.LogisticRegression"},
        2, "EmptyDataset", "empty"),
    "s3 unreachable": (
        {"dataset": {"uri": "sklearn://iris"}, "estimator": "sklearn.linear_model.LogisticRegression"},
        75, "StoreUnavailable", "did not answer.*AWS_ENDPOINT_URL"),
}


@pytest.fixture(scope="module")
def bad_input_results(s3, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bad-inputs")
    name = f"bad-{os.urandom(6).hex()}"
    store = ArtifactStore.from_env(s3.env)
    store.put_bytes(f"s3://{name}/data/no-target.csv", b"a,b\n1,2\n3,4\n")
    store.put_bytes(f"s3://{name}/data/empty.csv", b"")
    unreachable = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}", "AWS_ACCESS_KEY_ID": "x",
                   "AWS_SECRET_ACCESS_KEY": "y", "MLOPS_S3_RETRIES": "2", "MLOPS_S3_BACKOFF": "0.05"}
    processes = {}
    for case, (config, *_rest) in BAD_INPUTS.items():
        config = json.loads(json.dumps(config).replace("{bucket}", name))
        config["output"] = f"s3://{name}/out/{case.replace(' ', '-')}/"
        env = unreachable if case == "s3 unreachable" else s3.env
        processes[case] = cli(config, env, tmp_path)
    return {case: finish(process) for case, process in processes.items()}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exit_code_and_message(bad_input_results, case):
    _, expected_code, reason, pattern = BAD_INPUTS[case]
    code, summary, _, stderr = bad_input_results[case]
    assert code == expected_code, stderr
    assert summary["status"] == "Failed" and summary["reason"] == reason
    assert __import__("re").search(pattern, summary["message"]), summary["message"]
    assert reason in stderr  # also said where a human reading the logs looks


@pytest.mark.parametrize("config, reason, pattern", [
    ({"dataset": {"uri": "sklearn://iris"}, "estimator": "os.system"}, "EstimatorNotAllowed", "allow-list"),
    ({"dataset": {"uri": "sklearn://iris", "testSize": 2}, "estimator": "sklearn.linear_model.Ridge"},
     "InvalidConfig", "dataset.testSize"),
    ({"dataset": {"uri": "sklearn://iris"}, "estimator": "sklearn.linear_model.LogisticRegression",
      "metrics": ["r2"]}, "InvalidMetric", "regression metric"),
    ({"dataset": {"uri": "sklearn://diabetes"}, "estimator": "sklearn.linear_model.LogisticRegression"},
     "InvalidDataset", "classifier but the target is continuous"),
    ({"dataset": {"uri": "sklearn://iris"}, "estimator": "sklearn.linear_model.LogisticRegression",
      "params": {"C": -1}}, "InvalidParameter", "C"),
])
def test_more_user_errors_in_process(s3, config, reason, pattern):
    config = {**config, "output": "s3://mlops-user-errors/out/"}
    code, summary = train.execute(None, {**s3.env, "MLOPS_TRAIN_CONFIG": json.dumps(config)})
    assert (code, summary["reason"]) == (2, reason), summary
    assert __import__("re").search(pattern, summary["message"]), summary["message"]


def test_missing_config_is_a_user_error(tmp_path):
    code, summary, _, _ = run_cli(None, {"MLOPS_TRAIN_CONFIG": ""}, tmp_path)
    assert code == 2 and "MLOPS_TRAIN_CONFIG" in summary["message"]


# -- config and summary ------------------------------------------------------------------


@pytest.mark.parametrize("doc, field", [
    ({"dataset": {"uri": "sklearn://iris"}, "estimator": "sklearn.linear_model.Ridge"}, "output"),
    ({"estimator": "sklearn.linear_model.Ridge", "output": "s3://mlops/x/"}, "dataset"),
    ({"dataset": {"uri": "sklearn://iris"}, "output": "s3://mlops/x/"}, "estimator"),
    ({"dataset": {"uri": "sklearn://iris"}, "estimator": "e", "output": "s3://mlops/x/", "seed": -1}, "seed"),
    ({"dataset": {"uri": "sklearn://iris"}, "estimator": "e", "output": "s3://mlops/x/",
      "crossValidation": {"folds": 1}}, "crossValidation.folds"),
])
def test_config_errors_name_the_field(doc, field):
    with pytest.raises(train.UserError, match=f"config field {field}"):
        train.parse_config(doc)


def test_summary_stays_under_the_kubelet_limit():
    from mlops_runtime.summary import fit_to_limit

    summary = {"status": "Failed", "reason": "FitFailed", "message": "x" * 10000,
               "metrics": {f"cv_metric_{i}_std": 0.123456789 for i in range(300)} | {"accuracy": 0.9}}
    line = fit_to_limit(summary)
    assert len(line.encode()) < 4096
    decoded = json.loads(line)
    assert decoded["reason"] == "FitFailed" and decoded["message"].startswith("xxx")
    assert decoded["metrics"]["accuracy"] == 0.9 and decoded["metricsTruncated"] is True


@pytest.mark.parametrize("converted, parity, verdict", [
    (True, {"passed": True, "labelsIdentical": True, "maxAbsDiff": 1e-7}, "parity passed"),
    (True, {"passed": False, "labelsIdentical": False}, "parity failed: predicted labels differ"),
    (True, {"passed": False, "labelsIdentical": True, "maxAbsDiff": 0.2}, "parity failed: outputs differ"),
    (True, {"passed": False, "error": "ONNX Runtime could not run the model"}, "parity failed: ONNX Runtime"),
    (False, None, "conversion failed: skl2onnx cannot convert"),
])
def test_onnx_verdict_says_why(converted, parity, verdict):
    assert train.onnx_verdict(converted, parity).startswith(verdict)


def test_documents_are_strict_json():
    document = {"mean": np.float64(1.5), "values": [float("nan"), np.int64(3)], "edges": np.arange(2)}
    assert json.loads(train.json_bytes(document)) == {"mean": 1.5, "values": [None, 3], "edges": [0, 1]}


def test_a_conversion_child_that_never_answers_is_given_up_not_waited_for():
    """A hung ONNX conversion must not hang the training Job: after the deadline the child is
    killed and the model is served from skops."""
    import os

    from mlops_runtime.model_io import OnnxConversion

    conversion = OnnxConversion.__new__(OnnxConversion)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # a child that keeps the pipe open and never writes
        os.close(read_end)
        import time

        time.sleep(60)
        os._exit(0)
    os.close(write_end)
    conversion._result, conversion._pid, conversion._pipe = None, pid, read_end
    onnx_bytes, parity = conversion.result(timeout=0.5)
    assert onnx_bytes is None
    assert parity["passed"] is False and "took over" in parity["error"]
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, 0)  # already reaped: no child left behind
