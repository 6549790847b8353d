"""Train one model: `python -m mlops_runtime.train --config FILE [--termination-log PATH]`.

The config (JSON, or the same JSON in MLOPS_TRAIN_CONFIG) carries what a TrainingRun's spec
carries; docs/training.md describes it. The run reads the dataset, fits the estimator in a
pipeline that takes raw records, measures it on a held-out split (and k folds if asked),
writes the artifacts under the output prefix, and ends with a one-line JSON summary on
stdout and in the termination-message file. Exit codes: 0 success, 2 user error (never
retried), 75 infrastructure error (S3 unreachable after bounded retries; retryable).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .errors import EXIT_INFRASTRUCTURE_ERROR, EXIT_OK, EXIT_USER_ERROR, InfrastructureError, UserError
from .summary import fit_to_limit, termination_log_path, write_termination_log

CONFIG_ENV = "MLOPS_TRAIN_CONFIG"
EXIT_INTERNAL_ERROR = 1
KNOWN_KEYS = frozenset({
    "dataset", "estimator", "params", "metrics", "seed", "crossValidation", "output", "onnx",
    "allowedEstimators", "lineage", "task", "objective", "validation", "dataContract", "steps",
})


# -- config ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    dataset_uri: str
    estimator: str
    output: str
    target: str | None = None
    test_size: float = 0.2
    dataset_format: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    metrics: list[str] | None = None
    seed: int = 0
    cv_folds: int | None = None
    onnx: bool = True
    allowed_estimators: tuple[str, ...] = ()
    lineage: dict[str, Any] = field(default_factory=dict)
    task: str | None = None
    ignored_keys: tuple[str, ...] = ()
    # Parsed by mlops_runtime.validation inside run(), where numpy is being imported anyway.
    validation: dict[str, Any] = field(default_factory=dict)
    data_contract: dict[str, Any] | None = None
    steps: tuple[Any, ...] = ()   # estimators.StepSpec: preprocessing before the estimator


def _require(condition: bool, field_name: str, problem: str) -> None:
    if not condition:
        raise UserError("InvalidConfig", f"config field {field_name}: {problem}")


def parse_config(doc: Any) -> TrainConfig:
    """Validate the JSON document; every error names the field and what to put there."""
    _require(isinstance(doc, dict), "(top level)", "must be a JSON object")
    dataset = doc.get("dataset")
    if isinstance(dataset, str):
        dataset = {"uri": dataset}
    _require(isinstance(dataset, dict), "dataset", "required, an object with uri (and target, testSize)")
    uri = dataset.get("uri")
    _require(isinstance(uri, str) and bool(uri), "dataset.uri", "required, sklearn://<name> or s3://bucket/key.csv")
    target = dataset.get("target")
    _require(target is None or (isinstance(target, str) and bool(target)), "dataset.target", "must be a column name")
    test_size = dataset.get("testSize", 0.2)
    _require(isinstance(test_size, (int, float)) and not isinstance(test_size, bool) and 0 < test_size < 1,
             "dataset.testSize", f"must be a number between 0 and 1 (exclusive), got {test_size!r}")
    estimator = doc.get("estimator")
    _require(isinstance(estimator, str) and bool(estimator), "estimator",
             "required, an import path such as sklearn.ensemble.RandomForestClassifier")
    output = doc.get("output")
    _require(isinstance(output, str) and output.startswith("s3://") and len(output.split("/")[2]) >= 3,
             "output", f"required, an S3 prefix such as s3://mlops/default/iris/iris-t001/, got {output!r}")
    params = doc.get("params") or {}
    _require(isinstance(params, dict), "params", "must be an object of estimator parameters")
    metrics = doc.get("metrics")
    _require(metrics is None or (isinstance(metrics, list) and all(isinstance(m, str) for m in metrics)),
             "metrics", "must be a list of metric names")
    seed = doc.get("seed", 0)
    _require(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0, "seed", "must be an integer >= 0")
    cv = doc.get("crossValidation")
    folds = None
    if cv is not None:
        _require(isinstance(cv, dict), "crossValidation", "must be an object such as {\"folds\": 5}")
        folds = cv.get("folds", 5)
        _require(isinstance(folds, int) and not isinstance(folds, bool) and 2 <= folds <= 100,
                 "crossValidation.folds", "must be an integer from 2 to 100")
    onnx = doc.get("onnx", True)
    _require(isinstance(onnx, bool), "onnx", "must be true or false")
    allowed = doc.get("allowedEstimators") or []
    _require(isinstance(allowed, list) and all(isinstance(a, str) and a for a in allowed),
             "allowedEstimators", "must be a list of import paths or module prefixes ending in '.'")
    lineage = doc.get("lineage") or {}
    _require(isinstance(lineage, dict), "lineage", "must be an object")
    task = doc.get("task")
    _require(task in (None, "classification", "regression"), "task", "must be classification or regression")
    from .estimators import parse_steps

    steps = parse_steps(doc.get("steps"))
    return TrainConfig(
        dataset_uri=uri, estimator=estimator, output=output if output.endswith("/") else output + "/",
        target=target, test_size=float(test_size), dataset_format=dataset.get("format"),
        params=params, metrics=metrics, seed=seed, cv_folds=folds, onnx=onnx,
        allowed_estimators=tuple(allowed), lineage=lineage, task=task,
        ignored_keys=tuple(sorted(set(doc) - KNOWN_KEYS)), steps=steps,
        validation=doc.get("validation") or {}, data_contract=doc.get("dataContract"),
    )


def read_config(path: str | None, env: Mapping[str, str]) -> TrainConfig:
    if path:
        try:
            text = open(path, encoding="utf-8").read()
        except OSError as error:
            raise UserError("InvalidConfig", f"cannot read the config file {path}: {error.strerror}") from None
        source = path
    elif env.get(CONFIG_ENV):
        text, source = env[CONFIG_ENV], CONFIG_ENV
    else:
        raise UserError("InvalidConfig", f"no config: pass --config FILE or set {CONFIG_ENV} to the JSON")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError("InvalidConfig", f"{source} is not valid JSON: {error}") from None
    return parse_config(doc)


def allowed_estimators(config: TrainConfig, env: Mapping[str, str]) -> tuple[str, ...]:
    from .estimators import DEFAULT_ALLOWED

    extra = tuple(e.strip() for e in env.get("MLOPS_ALLOWED_ESTIMATORS", "").split(",") if e.strip())
    return DEFAULT_ALLOWED + config.allowed_estimators + extra


# -- the run -----------------------------------------------------------------------------


@dataclass
class Progress:
    """What the run has learned so far: a failure still reports partial metrics."""

    metrics: dict[str, float] = field(default_factory=dict)
    task: str | None = None
    dataset_sha256: str | None = None
    data_report: dict[str, Any] | None = None


class Background:
    """Run one function in a thread; `result()` joins it and re-raises what it raised.
    Used to overlap slow imports and the first S3 round trip with the main thread's work."""

    def __init__(self, function: Callable[[], Any], name: str) -> None:
        self._value: Any = None
        self._error: BaseException | None = None

        def target() -> None:
            try:
                self._value = function()
            except BaseException as error:  # handed to the caller of result()
                self._error = error

        self._thread = threading.Thread(target=target, name=name, daemon=True)
        self._thread.start()

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def connect_store(config: TrainConfig, env: Mapping[str, str]) -> Any:
    """The artifact store, with the output bucket created: fails fast (exit 75) when S3 is
    unreachable, before any time is spent on the fit."""
    from .store import ArtifactStore, StoreConfigError, parse_s3_uri

    try:
        store = ArtifactStore.from_env(env)
        output = parse_s3_uri(config.output, key_required=False)
    except StoreConfigError as error:
        raise UserError("InvalidConfig", str(error)) from None
    store.ensure_bucket(output.bucket)
    return store


def check_target_fits_task(y: Any, task: str, estimator: str) -> None:
    import numpy as np

    from .datasets import MAX_CLASSES_FOR_INTEGER_TARGET

    if task == "regression" and y.dtype.kind not in "biuf":
        raise UserError("InvalidDataset",
                        f"{estimator} is a regressor but the target column holds non-numeric values "
                        f"({y.dtype}); use a classifier or a numeric target")
    if task == "classification" and y.dtype.kind == "f":
        values = y.to_numpy()
        distinct = int(np.unique(values).size)
        if not np.all(np.mod(values, 1) == 0) or distinct > MAX_CLASSES_FOR_INTEGER_TARGET:
            raise UserError("InvalidDataset",
                            f"{estimator} is a classifier but the target is continuous (decimal numbers, "
                            f"{distinct} distinct values); use a regressor (e.g. sklearn.linear_model.Ridge), "
                            "or store class labels as integers or strings")


def fit(model: Any, X: Any, y: Any, estimator: str) -> None:
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter; the metrics tell the story
            model.fit(X, y)
    except (ValueError, TypeError) as error:
        reason = "InvalidParameter" if type(error).__name__ == "InvalidParameterError" else "FitFailed"
        raise UserError(reason, f"{estimator} could not be fitted: {error}"[:1500]) from None


def run(config: TrainConfig, env: Mapping[str, str], progress: Progress) -> dict[str, Any]:
    """Train, evaluate, write the artifacts; returns the success summary."""
    # minio's import and the first round trip overlap with scikit-learn's import
    connecting = Background(lambda: connect_store(config, env), "connect-store")

    from . import baseline, datasets, estimators, evaluation, model_io, validation
    from .store import join_uri

    started_wall = datetime.now(UTC)
    stopwatch = Stopwatch()
    lap = stopwatch.lap

    estimator, steps = estimators.build_model(config.estimator, config.params, config.steps, config.seed,
                                              allowed_estimators(config, env))
    task = estimators.task_of(estimator)
    if config.task and config.task != task:
        raise UserError("InvalidConfig",
                        f"task is {config.task} but {config.estimator} is a "
                        f"{'classifier' if task == 'classification' else 'regressor'}")
    progress.task = task
    metric_names = evaluation.choose_metrics(task, config.metrics)
    checks = validation.parse_validation(config.validation, config.data_contract)
    store = connecting.result()
    # The contract's baseline is read while the dataset is.
    contract = Background(lambda: validation.load_contract(checks, store), "load-contract")
    lap("setup")

    data = datasets.load_dataset(
        datasets.DatasetSpec(config.dataset_uri, config.target, config.test_size, config.dataset_format), store)
    progress.dataset_sha256 = data.sha256
    numeric, categorical = datasets.numeric_and_categorical(data.X)
    check_target_fits_task(data.y, task, config.estimator)
    lap("load")
    validation.check_slices(checks, list(data.X.columns), numeric, metric_names)
    report, data_schema = validation.validate_dataset(checks, data.X, data.y, numeric, data.target,
                                                      task, contract.result())
    progress.data_report = report.summary()
    validation.enforce(report, store, config.output)  # no fit on data that broke the contract
    lap("validate")
    X_train, X_test, y_train, y_test = datasets.train_test_split_frame(
        data.X, data.y, config.test_size, config.seed, task)
    model = estimators.build_pipeline(estimator, categorical, steps, list(data.X.columns))
    lap("data")

    # Tree and linear fits release the GIL: describe the data meanwhile, on the other core.
    # (The ONNX converter is imported by the conversion's own process, not here: a Python
    # import in a thread competes with the fit for the GIL.)
    describing = Background(lambda: (baseline.signature_features(data.X, numeric),
                                     baseline.feature_baselines(X_train, numeric, config.seed),
                                     baseline.input_example(X_test)), "describe-data")
    fit(model, X_train, y_train, config.estimator)
    lap("fit")
    signature_features, feature_baselines, example = describing.result()

    conversion = None
    try:
        if config.onnx:
            # One pass of scikit-learn over the test split serves the metrics and is the
            # reference the ONNX form must match. The conversion's child process only
            # converts and runs ONNX Runtime (see OnnxConversion for why), while this
            # process dumps and uploads.
            # The check data is the test split plus tied and out-of-range rows; the metrics
            # read the test split's part of the reference.
            check = model_io.parity_data(model, X_train, y_train, X_test, numeric, config.seed)
            reference = model_io.sklearn_reference(model, check.X)
            conversion = model_io.OnnxConversion(model, X_train.head(5), check, numeric, reference)
            metrics = evaluation.evaluate_outputs(model, task, metric_names, y_test,
                                                  *model_io.first_rows(reference, check.test_rows))
        else:
            metrics, _ = evaluation.evaluate(model, task, metric_names, X_test, y_test)
            reference = None
        progress.metrics.update(metrics)
        if config.cv_folds:
            from sklearn.base import clone

            metrics.update(evaluation.cross_validation_metrics(
                clone(model), task, metric_names, X_train, y_train, config.cv_folds, config.seed))
            progress.metrics.update(metrics)
        lap("evaluate")
        explanation = validation.explain(checks, model, X_test, y_test, task, config.seed,
                                         metric_names, reference, len(X_train), lap)
        skops_bytes = model_io.dump_skops(model)
        model_io.check_loadable(skops_bytes)
        lap("dump")
    except BaseException:
        if conversion is not None:
            conversion.cancel()
        raise
    classes = [baseline.json_value(c) for c in model.classes_] if task == "classification" else []

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="upload") as uploads:
        model_uri = join_uri(config.output, "model.skops")
        model_upload = uploads.submit(store.put_bytes, model_uri, skops_bytes)

        onnx_uri = onnx_sha = None
        onnx_inputs: list[str] | None = None
        parity: dict[str, Any] | None = None
        onnx_status = "disabled"
        if conversion is not None:
            onnx_bytes, parity = conversion.result()
            onnx_status = onnx_verdict(onnx_bytes is not None, parity)
            if onnx_bytes is not None and onnx_status == ONNX_SERVED:
                onnx_inputs = model_io.onnx_input_names(onnx_bytes)
                onnx_uri = join_uri(config.output, "model.onnx")
                onnx_upload = uploads.submit(store.put_bytes, onnx_uri, onnx_bytes)
            lap("onnx")

        serving_format = "onnx" if onnx_uri else "skops"
        finished_wall = datetime.now(UTC)
        documents = {
            "metrics.json": {
                "task": task, "metrics": metrics,
                "split": {"train": int(len(X_train)), "test": int(len(X_test)), "testSize": config.test_size,
                          "seed": config.seed},
                "crossValidation": {"folds": config.cv_folds} if config.cv_folds else None,
                "onnxParity": parity, "onnx": onnx_status, "servingFormat": serving_format,
            },
            "signature.json": baseline.compute_signature(data.X, numeric, task, data.target, classes, onnx_inputs,
                                                         features=signature_features),
            "baseline.json": {**baseline.compute_baseline(X_train, y_train, numeric, task, classes, config.seed,
                                                          features=feature_baselines),
                              "dataSchema": data_schema},
            "lineage.json": lineage(config, data, estimator, started_wall, finished_wall, env),
            "input_example.json": example,
            "data_report.json": report.document(),
            **explanation.documents(),
        }
        lap("documents")
        document_uploads = [
            uploads.submit(store.put_bytes, join_uri(config.output, name), json_bytes(doc), "application/json")
            for name, doc in documents.items()
        ]
        model_sha = model_upload.result()
        if onnx_uri:
            onnx_sha = onnx_upload.result()
        for upload in document_uploads:
            upload.result()
    lap("upload")
    return {
        "status": "Succeeded",
        "metrics": metrics,
        "artifactUri": config.output,
        "modelUri": model_uri,
        "sha256": model_sha,
        "size": len(skops_bytes),
        "onnxUri": onnx_uri,
        "onnxSha256": onnx_sha,
        "servingFormat": serving_format,
        "onnx": onnx_status,
        "datasetSha256": data.sha256,
        "task": task,
        # The operator records it in the ModelVersion's lineage without reading S3.
        "sklearnVersion": sklearn_version(),
        "dataReport": report.summary(),
        **explanation.summary(checks.importance.top_k),
        "timings": stopwatch.laps,
    }


ONNX_SERVED = "parity passed"


def onnx_verdict(converted: bool, parity: Mapping[str, Any] | None) -> str:
    """Why the ONNX form is served (`ONNX_SERVED`) or not; goes into the summary."""
    if not converted:
        if parity and parity.get("error"):
            return f"conversion failed: {parity['error']}"
        return "conversion failed: skl2onnx cannot convert this model"
    if parity is None:
        return "parity failed: not checked"
    if parity.get("passed"):
        return ONNX_SERVED
    if parity.get("error"):
        return f"parity failed: {parity['error']}"
    if parity.get("labelsIdentical") is False:
        return (f"parity failed: predicted labels differ from scikit-learn's on {parity.get('labelsDifferOnRows')} "
                f"of {parity.get('rows')} check rows (test split, {parity.get('tieRows', 0)} tied, "
                f"{parity.get('outOfRangeRows', 0)} out of range)")
    return (f"parity failed: outputs differ from scikit-learn's by {parity.get('maxAbsDiff')} "
            f"(> {parity.get('tolerance')})")


class Stopwatch:
    """Seconds spent per step, reported in the summary's `timings`."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 4)
        self._last = now


def finite_json(value: Any) -> Any:
    """JSON-ready copy: numpy scalars and arrays to Python values, NaN and infinities to null."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return finite_json(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def json_bytes(document: Any) -> bytes:
    try:  # the common case, fast: nothing to clean
        return json.dumps(document, allow_nan=False, default=finite_json).encode()
    except ValueError:  # a NaN or infinity somewhere
        return json.dumps(finite_json(document), allow_nan=False).encode()


def lineage(config: TrainConfig, data: Any, estimator: Any, started: datetime, finished: datetime,
            env: Mapping[str, str]) -> dict[str, Any]:
    import platform

    effective = {k: v for k, v in estimator.get_params(deep=False).items()
                 if v is None or isinstance(v, (bool, int, float, str))}
    return {
        **{k: v for k, v in config.lineage.items() if k not in ("image", "codeVersion")},
        "dataset": {"uri": data.uri, "sha256": data.sha256, "rows": data.rows, "target": data.target,
                    "testSize": config.test_size},
        "estimator": config.estimator,
        "steps": [step.to_json() for step in config.steps],
        "params": config.params,
        "effectiveParams": effective,
        "seed": config.seed,
        "sklearnVersion": sklearn_version(),
        "pythonVersion": platform.python_version(),
        "image": config.lineage.get("image") or env.get("MLOPS_RUNTIME_IMAGE"),
        "codeVersion": config.lineage.get("codeVersion") or env.get("MLOPS_CODE_VERSION") or code_version(),
        "startedAt": started.isoformat().replace("+00:00", "Z"),
        "finishedAt": finished.isoformat().replace("+00:00", "Z"),
    }


def sklearn_version() -> str:
    import sklearn

    return sklearn.__version__


def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlops-operator")
    except PackageNotFoundError:
        return "unknown"


# -- the CLI -----------------------------------------------------------------------------


def failure(reason: str, message: str, progress: Progress) -> dict[str, Any]:
    summary: dict[str, Any] = {"status": "Failed", "reason": reason, "message": message,
                               "metrics": progress.metrics}
    if progress.task:
        summary["task"] = progress.task
    if progress.dataset_sha256:
        summary["datasetSha256"] = progress.dataset_sha256
    if progress.data_report:
        summary["dataReport"] = progress.data_report
    return summary


def execute(config_path: str | None, env: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
    """(exit code, summary); every failure is classified, none escapes."""
    from .store import StoreError, StoreUnavailable

    progress = Progress()
    try:
        config = read_config(config_path, env)
        if config.ignored_keys:
            print(f"warning: config keys {list(config.ignored_keys)} are not used", file=sys.stderr)
        return EXIT_OK, run(config, env, progress)
    except UserError as error:
        return EXIT_USER_ERROR, failure(error.reason, error.message, progress)
    except (StoreUnavailable, InfrastructureError) as error:
        reason = getattr(error, "reason", "StoreUnavailable")
        return EXIT_INFRASTRUCTURE_ERROR, failure(reason, str(error), progress)
    except StoreError as error:
        return EXIT_USER_ERROR, failure("StoreError", str(error), progress)
    except MemoryError:
        return EXIT_INFRASTRUCTURE_ERROR, failure("OutOfMemory", "the run ran out of memory; "
                                                  "give it more (resources.limits.memory) or less data", progress)
    except Exception as error:  # a bug: report it where the user looks, with its type
        import traceback

        traceback.print_exc(file=sys.stderr)
        return EXIT_INTERNAL_ERROR, failure("InternalError", f"{type(error).__name__}: {error}"[:1500], progress)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlops_runtime.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help=f"JSON config file (default: the JSON in ${CONFIG_ENV})")
    parser.add_argument("--termination-log", help="where the summary goes for the kubelet "
                        "(default: $MLOPS_TERMINATION_LOG, else /dev/termination-log)")
    args = parser.parse_args(argv)
    env = os.environ if env is None else env
    started = time.perf_counter()
    code, summary = execute(args.config, env)
    summary["durationSeconds"] = round(time.perf_counter() - started, 3)
    line = fit_to_limit(summary)
    warning = write_termination_log(termination_log_path(args.termination_log, env), line)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    if code != EXIT_OK:
        print(f"error: {summary.get('reason')}: {summary.get('message')}", file=sys.stderr)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    exit_code = main()
    # A one-shot job leaves without the interpreter's teardown: unloading scikit-learn, pandas
    # and scipy costs ~0.3 s of CPU and achieves nothing here. Everything the run produced is
    # uploaded, written and closed by now; only the standard streams need a flush.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
