"""One model version as the server sees it: its signature, the checks that turn a request's
instances into arrays the model takes, and the two ways to run it (scikit-learn or ONNX Runtime).

Speed never comes from changing the model: the ONNX form is served only when it answers like the
scikit-learn form on a probe batch here too (labels identical, probabilities within 1e-4), and
requests the ONNX form cannot take (missing values) go to the scikit-learn form.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from mlops_runtime.model_io import labels_follow_probabilities, onnx_labels

NUMERIC = "numeric"
CATEGORICAL = "categorical"
CLASSIFICATION = "classification"
REGRESSION = "regression"
PROBABILITY_TOLERANCE = 1e-4
# The largest magnitude the server accepts: ONNX Runtime and scikit-learn's trees compute in
# float32, where anything larger becomes infinity and the answer nonsense.
FLOAT32_MAX = float(np.finfo(np.float32).max)
SMALL_BATCH = 64  # values; below this, per-call numpy overhead dominates a reduction



class InputError(ValueError):
    """A request whose instances do not fit the model's signature; the message names the problem."""


@dataclass(frozen=True)
class Feature:
    name: str
    kind: str = NUMERIC
    dtype: str = "float64"
    categories: tuple[Any, ...] = ()

    @property
    def numeric_categories(self) -> bool:
        return bool(self.categories) and all(
            isinstance(c, (int, float)) and not isinstance(c, bool) for c in self.categories
        )


@dataclass(frozen=True)
class Signature:
    task: str
    target: str
    features: tuple[Feature, ...]
    classes: tuple[Any, ...] = ()
    names: tuple[str, ...] = field(init=False)
    name_set: frozenset[str] = field(init=False, repr=False, compare=False)
    all_numeric: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(f.name for f in self.features))
        object.__setattr__(self, "name_set", frozenset(self.names))
        object.__setattr__(self, "all_numeric", all(f.kind == NUMERIC for f in self.features))

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Signature:
        try:
            task = doc["task"]
            features = tuple(
                Feature(
                    name=str(f["name"]),
                    kind=f.get("kind", NUMERIC),
                    dtype=str(f.get("dtype", "float64")),
                    categories=tuple(f.get("categories") or ()),
                )
                for f in doc["features"]
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"signature.json is malformed: missing or wrong field {error}") from None
        if task not in (CLASSIFICATION, REGRESSION):
            raise ValueError(f"signature.json: task must be classification or regression, got {task!r}")
        if not features:
            raise ValueError("signature.json lists no features")
        for feature in features:
            if feature.kind not in (NUMERIC, CATEGORICAL):
                raise ValueError(f"signature.json: feature {feature.name!r} has unknown kind {feature.kind!r}")
        return cls(task=task, target=str(doc.get("target", "target")), features=features,
                   classes=tuple(doc.get("classes") or ()))

    @classmethod
    def from_model(cls, model: Any) -> Signature:
        """A numeric-only signature read off a fitted estimator, for artifacts saved without one."""
        names = getattr(model, "feature_names_in_", None)
        count = int(getattr(model, "n_features_in_", 0) or (len(names) if names is not None else 0))
        if not count:
            raise ValueError("signature.json is missing and the model does not say how many features it takes")
        feature_names = [str(n) for n in names] if names is not None else [f"x{i}" for i in range(count)]
        classes = getattr(model, "classes_", None)
        task = CLASSIFICATION if classes is not None else REGRESSION
        return cls(task=task, target="target", features=tuple(Feature(n) for n in feature_names),
                   classes=tuple(np.asarray(classes).tolist()) if classes is not None else ())

    def describe(self) -> str:
        return ", ".join(self.names)


class Batch:
    """Validated instances. `matrix` is set (float64, rows x features) when every feature is
    numeric; `columns` holds one array per feature in signature order either way (views of
    the matrix, made when first asked for: the ONNX and drift paths read the matrix only)."""

    __slots__ = ("rows", "_columns", "matrix")

    def __init__(self, rows: int, columns: list[np.ndarray] | None = None, matrix: np.ndarray | None = None) -> None:
        if columns is None and matrix is None:
            raise ValueError("a Batch needs its columns or its matrix")
        self.rows = rows
        self._columns = columns
        self.matrix = matrix

    @classmethod
    def of_matrix(cls, matrix: np.ndarray) -> Batch:
        return cls(matrix.shape[0], None, matrix)

    @property
    def columns(self) -> list[np.ndarray]:
        if self._columns is None:
            matrix = self.matrix
            self._columns = [matrix[:, j] for j in range(matrix.shape[1])]
        return self._columns

    def __repr__(self) -> str:
        return f"Batch(rows={self.rows}, matrix={self.matrix is not None})"

    def plainly_valid(self) -> bool:
        """True when the batch is a matrix of finite numbers within float32's range, so neither
        `out_of_range` nor `has_missing` can find anything: one min and one max answer both
        (NaN propagates through them), where the two checks take three reductions."""
        if self.matrix is None or not self.matrix.size:
            return False
        if self.matrix.size <= SMALL_BATCH:  # a few values: Python's C loops run before numpy starts
            values = self.matrix.ravel().tolist()
            total = sum(values)  # NaN or an infinity anywhere makes the sum NaN or infinite
            if total != total or total in (math.inf, -math.inf):
                return False
            return -FLOAT32_MAX <= min(values) and max(values) <= FLOAT32_MAX  # no NaN left to confuse min/max
        flat = self.matrix.reshape(-1)
        return bool(-FLOAT32_MAX <= np.minimum.reduce(flat) and np.maximum.reduce(flat) <= FLOAT32_MAX)

    def out_of_range(self, signature: Signature) -> tuple[int, str, float] | None:
        """(row, feature, value) of the first infinite value or one beyond float32's range, or
        None. NaN is a missing value, not out of range. Two reductions on the common path."""
        if self.matrix is not None:
            return _first_out_of_range(self.matrix, signature.names)
        for feature, column in zip(signature.features, self.columns):
            if feature.kind == NUMERIC:
                found = _first_out_of_range(column.reshape(-1, 1), (feature.name,))
                if found is not None:
                    return found
        return None

    def has_missing(self, signature: Signature) -> tuple[int, str] | None:
        """(row, feature) of the first missing value, or None."""
        if self.matrix is not None:
            if not np.isnan(self.matrix.sum()):
                return None
            row, col = np.argwhere(np.isnan(self.matrix))[0]
            return int(row), signature.names[int(col)]
        for feature, column in zip(signature.features, self.columns):
            if feature.kind == NUMERIC:
                missing = np.isnan(column)
            else:
                missing = np.fromiter((v is None for v in column), dtype=bool, count=len(column))
            if missing.any():
                return int(np.argmax(missing)), feature.name
        return None


def _first_out_of_range(matrix: np.ndarray, names: tuple[str, ...]) -> tuple[int, str, float] | None:
    if -FLOAT32_MAX <= matrix.min() and matrix.max() <= FLOAT32_MAX:  # False when NaN is present
        return None
    bad = np.abs(matrix) > FLOAT32_MAX  # NaN compares False: missing, not out of range
    if not bad.any():
        return None
    row, col = np.argwhere(bad)[0]
    return int(row), names[int(col)], float(matrix[row, col])


def check_range(batch: Batch, signature: Signature) -> None:
    """Refuse (InputError naming the row and feature) what the model would turn into nonsense."""
    found = batch.out_of_range(signature)
    if found is not None:
        row, feature, value = found
        raise InputError(f"row {row}: feature {feature!r} is {value!r}, outside the range the model computes in "
                         f"(float32, |x| <= {FLOAT32_MAX:.4g}); send finite numbers (null for a missing value)")


# -- request instances -> Batch ----------------------------------------------------------------


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _numeric_value(value: Any, where: str, feature: Feature) -> float:
    if value is None:
        return math.nan
    if not isinstance(value, (int, float)):  # JSON true/false count as 1/0, as numpy reads them
        raise InputError(f"{where}: feature {feature.name!r} must be a number, got {_type_name(value)} {value!r:.40}")
    return float(value)


def _categorical_value(value: Any, where: str, feature: Feature) -> Any:
    if value is None:
        return None
    if feature.numeric_categories:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise InputError(f"{where}: feature {feature.name!r} must be one of its categories, "
                             f"got {_type_name(value)}")
        return value
    if not isinstance(value, str):
        raise InputError(f"{where}: categorical feature {feature.name!r} must be a string, "
                         f"got {_type_name(value)} {value!r:.40}")
    return value


def _columns_from_rows(rows: list[list[Any]], signature: Signature, where: str) -> list[np.ndarray]:
    columns: list[np.ndarray] = []
    for j, feature in enumerate(signature.features):
        if feature.kind == NUMERIC:
            columns.append(np.array([_numeric_value(r[j], f"{where}[{i}]", feature) for i, r in enumerate(rows)],
                                    dtype=np.float64))
        else:
            columns.append(np.array([_categorical_value(r[j], f"{where}[{i}]", feature) for i, r in enumerate(rows)],
                                    dtype=object))
    return columns


def _row_of_record(record: dict[str, Any], signature: Signature, where: str) -> list[Any]:
    try:
        return [record[name] for name in signature.names]
    except KeyError:
        missing = [n for n in signature.names if n not in record]
        raise InputError(f"{where}: missing feature(s) {', '.join(map(repr, missing))}; "
                         f"the model takes {signature.describe()}") from None


def _check_rows(rows: list[Any], signature: Signature, where: str) -> list[list[Any]]:
    width = len(signature.features)
    checked: list[list[Any]] = []
    for i, row in enumerate(rows):
        if isinstance(row, dict):
            values = _row_of_record(row, signature, f"{where}[{i}]")
            if len(row) != width:
                unknown = [k for k in row if k not in signature.names]
                raise InputError(f"{where}[{i}]: unknown feature(s) {', '.join(map(repr, unknown))}; "
                                 f"the model takes {signature.describe()}")
            checked.append(values)
        elif isinstance(row, list):
            if len(row) != width:
                raise InputError(f"{where}[{i}]: expected {width} values ({signature.describe()}), got {len(row)}")
            checked.append(row)
        else:
            raise InputError(f"{where}[{i}]: each instance must be a list of values or an object keyed by "
                             f"feature name, got {_type_name(row)}")
    return checked


def batch_from_instances(instances: Any, signature: Signature, where: str = "instances") -> Batch:
    """Rows (lists in signature order) or records (objects keyed by feature name) -> Batch."""
    if not isinstance(instances, list):
        raise InputError(f"{where} must be a list of instances, got {_type_name(instances)}")
    if not instances:
        raise InputError(f"{where} is empty; send at least one instance")
    if signature.all_numeric and isinstance(instances[0], list):
        try:
            matrix = np.asarray(instances)
        except ValueError:
            matrix = None  # ragged rows: the slow path below names the bad one
        if (matrix is not None and matrix.ndim == 2 and matrix.dtype.kind in "fi"
                and matrix.shape[1] == len(signature.features)):
            return Batch.of_matrix(matrix.astype(np.float64, copy=False))
    rows = _check_rows(instances, signature, where)
    columns = _columns_from_rows(rows, signature, where)
    if signature.all_numeric:
        return Batch.of_matrix(np.column_stack(columns))
    return Batch(rows=len(rows), columns=columns)


# -- running the model ------------------------------------------------------------------------


@dataclass(slots=True)
class Prediction:
    labels: np.ndarray                 # class labels (classification) or values (regression)
    probabilities: np.ndarray | None   # rows x classes, in `classes` order


class Predictor(Protocol):
    backend: str

    def predict(self, batch: Batch) -> Prediction: ...


def _final_step(model: Any) -> Any:
    steps = getattr(model, "steps", None)
    return steps[-1][1] if steps else model


class SklearnPredictor:
    """The scikit-learn form; fed a float matrix when the model takes one, else a DataFrame."""

    backend = "sklearn"

    def __init__(self, model: Any, signature: Signature, use_frame: bool) -> None:
        self.model = model
        self.signature = signature
        self.use_frame = use_frame
        self.final = _final_step(model)
        self.has_proba = signature.task == CLASSIFICATION and hasattr(model, "predict_proba")
        self.labels_from_proba = self.has_proba and labels_follow_probabilities(model)

    def _input(self, batch: Batch) -> Any:
        if not self.use_frame and batch.matrix is not None:
            return batch.matrix
        import pandas as pd

        return pd.DataFrame({name: column for name, column in zip(self.signature.names, batch.columns)})

    def predict(self, batch: Batch) -> Prediction:
        x = self._input(batch)
        if self.labels_from_proba:  # one pass over the trees instead of two
            probabilities = np.asarray(self.model.predict_proba(x))
            return Prediction(labels=self.final.classes_.take(np.argmax(probabilities, axis=1), axis=0),
                              probabilities=probabilities)
        labels = np.asarray(self.model.predict(x))
        probabilities = np.asarray(self.model.predict_proba(x)) if self.has_proba else None
        return Prediction(labels=labels, probabilities=probabilities)


# How ONNX Runtime runs here; what the session reports back is in the model metadata
# (`parameters.onnx_threads`) and the ready log line.
ONNX_SETTINGS = {"intra_op_num_threads": 1, "inter_op_num_threads": 1, "execution_mode": "sequential"}


class OnnxPredictor:
    """The ONNX form through ONNX Runtime (one intra-op thread, sequential execution)."""

    backend = "onnx"

    def __init__(self, data: bytes, signature: Signature, follow_probabilities: bool = False) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # A request is a few rows: thread pools cost more to wake than the arithmetic takes,
        # and the process (or each --workers process) keeps to one core.
        options.intra_op_num_threads = ONNX_SETTINGS["intra_op_num_threads"]
        options.inter_op_num_threads = ONNX_SETTINGS["inter_op_num_threads"]
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        used = self.session.get_session_options()  # what the session runs with, for the metadata and the bench
        self.threads = {"intra_op": used.intra_op_num_threads, "inter_op": used.inter_op_num_threads}
        self.signature = signature
        inputs = self.session.get_inputs()
        self.input_names = [i.name for i in inputs]
        self.input_types = [i.type for i in inputs]
        self.per_feature = len(inputs) > 1 or (len(inputs) == 1 and inputs[0].name in signature.names
                                               and len(signature.features) == 1)
        if self.per_feature:
            unknown = [n for n in self.input_names if n not in signature.names]
            if unknown:
                raise ValueError(f"ONNX inputs {unknown} are not features of the signature")
            self.input_positions = [signature.names.index(n) for n in self.input_names]
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_names = outputs
        self.classes = np.asarray(signature.classes) if signature.classes else None
        self.follow_probabilities = follow_probabilities  # labels from probabilities, ties as scikit-learn

    @staticmethod
    def _cast(column: np.ndarray, onnx_type: str) -> np.ndarray:
        if onnx_type == "tensor(string)":
            return column.astype(str).astype(object).reshape(-1, 1)
        if onnx_type == "tensor(double)":
            return column.astype(np.float64).reshape(-1, 1)
        if onnx_type == "tensor(int64)":
            return column.astype(np.int64).reshape(-1, 1)
        return column.astype(np.float32).reshape(-1, 1)

    def _feeds(self, batch: Batch) -> dict[str, np.ndarray]:
        if self.per_feature:
            return {name: self._cast(batch.columns[pos], kind)
                    for name, pos, kind in zip(self.input_names, self.input_positions, self.input_types)}
        if batch.matrix is None:
            raise ValueError("this ONNX model takes one numeric matrix but the signature has categorical features")
        dtype = np.float64 if self.input_types[0] == "tensor(double)" else np.float32
        return {self.input_names[0]: batch.matrix.astype(dtype)}

    def predict(self, batch: Batch) -> Prediction:
        outputs = self.session.run(self.output_names, self._feeds(batch))
        if self.signature.task == REGRESSION:
            return Prediction(labels=np.asarray(outputs[0], dtype=np.float64).reshape(batch.rows), probabilities=None)
        probabilities = None
        if len(outputs) > 1:
            raw = outputs[1]
            if isinstance(raw, list):  # zipmap: one {class: probability} dict per row
                order = list(self.classes) if self.classes is not None else list(raw[0].keys())
                probabilities = np.array([[row[c] for c in order] for row in raw], dtype=np.float64)
            else:
                probabilities = np.asarray(raw, dtype=np.float64)
        labels = onnx_labels([outputs[0], probabilities], self.classes, self.follow_probabilities)
        return Prediction(labels=labels.reshape(batch.rows), probabilities=probabilities)


# -- probing what a fitted model takes --------------------------------------------------------


def probe_batch(signature: Signature, baseline: dict[str, Any] | None, rows: int = 8) -> Batch:
    """A small, plausible batch built from the baseline's quantiles and categories (or zeros)."""
    by_name = {f.get("name"): f for f in (baseline or {}).get("features", [])}
    columns: list[np.ndarray] = []
    for feature in signature.features:
        stats = by_name.get(feature.name, {})
        if feature.kind == NUMERIC:
            sample = stats.get("sample") or []
            if sample:
                picks = np.quantile(np.asarray(sample, dtype=np.float64), np.linspace(0.05, 0.95, rows))
            else:
                mean, std = float(stats.get("mean", 0.0) or 0.0), float(stats.get("std", 1.0) or 1.0)
                picks = mean + std * np.linspace(-1.5, 1.5, rows)
            columns.append(np.asarray(picks, dtype=np.float64))
        else:
            categories = list(stats.get("categories") or feature.categories) or ["a"]
            columns.append(np.array([categories[i % len(categories)] for i in range(rows)], dtype=object))
    if signature.all_numeric:
        return Batch.of_matrix(np.column_stack(columns))
    return Batch(rows=rows, columns=columns)


def with_missing(batch: Batch, signature: Signature) -> Batch:
    """The same batch with every value of its first row missing."""
    columns = []
    for feature, column in zip(signature.features, batch.columns):
        copy = column.copy()
        copy[0] = math.nan if feature.kind == NUMERIC else None
        columns.append(copy)
    if batch.matrix is not None:
        return Batch.of_matrix(np.column_stack(columns))
    return Batch(rows=batch.rows, columns=columns)


def sklearn_predictor(model: Any, signature: Signature, probe: Batch) -> SklearnPredictor:
    """Feed a plain float matrix when the model accepts one (fastest), else a DataFrame."""
    if signature.all_numeric:
        candidate = SklearnPredictor(model, signature, use_frame=False)
        try:
            candidate.predict(probe)
            return candidate
        except Exception:  # a ColumnTransformer selecting columns by name needs a DataFrame
            pass
    frame = SklearnPredictor(model, signature, use_frame=True)
    frame.predict(probe)
    return frame


def accepts_missing(predictor: SklearnPredictor, probe: Batch, signature: Signature) -> bool:
    import sklearn

    with sklearn.config_context(assume_finite=False):
        try:
            predictor.predict(with_missing(probe, signature))
        except (ValueError, TypeError):
            return False
    return True


def target_tolerance(baseline: dict[str, Any] | None) -> float | None:
    """The trainer's regression parity tolerance (`model_io.regression_tolerance`), from the
    training target's sample in baseline.json; None when the baseline has none."""
    from mlops_runtime.model_io import regression_tolerance

    sample = ((baseline or {}).get("target") or {}).get("sample")
    return regression_tolerance(np.asarray(sample, dtype=np.float64)) if sample else None


def parity_problem(reference: Prediction, candidate: Prediction, task: str,
                   tolerance: float | None = None) -> str | None:
    """Why `candidate` does not answer like `reference` on the probe batch, or None.
    Regression: within `tolerance` (scaled to the target), else within 1e-4 absolute and
    relative."""
    if task == REGRESSION:
        expected = reference.labels.astype(np.float64)
        if tolerance is not None:
            gap = float(np.max(np.abs(expected - candidate.labels)))
            if gap > tolerance:
                return f"ONNX regression outputs differ from scikit-learn's by {gap:.3g} (> {tolerance:.3g})"
        elif not np.allclose(expected, candidate.labels, rtol=1e-4, atol=1e-4):
            return "ONNX regression outputs differ from scikit-learn's by more than 1e-4"
        return None
    if reference.labels.tolist() != candidate.labels.tolist():
        return "ONNX labels differ from scikit-learn's on the probe batch"
    if reference.probabilities is not None:
        if candidate.probabilities is None or candidate.probabilities.shape != reference.probabilities.shape:
            return "ONNX model has no class probabilities matching scikit-learn's"
        gap = float(np.max(np.abs(candidate.probabilities - reference.probabilities)))
        if gap > PROBABILITY_TOLERANCE:
            return f"ONNX probabilities differ from scikit-learn's by {gap:.2e} (> {PROBABILITY_TOLERANCE})"
    return None


def quiet_sklearn() -> None:
    """The server checks inputs itself (types, missing values), so scikit-learn's per-call
    finiteness check and the feature-name warning for matrix input are skipped."""
    import sklearn

    sklearn.set_config(assume_finite=True)  # thread-local: call it in the thread that predicts
    quiet_sklearn_warnings()


def quiet_sklearn_warnings() -> None:
    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    warnings.filterwarnings("ignore", message=".*fitted without feature names")
