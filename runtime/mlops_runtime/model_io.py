"""Models to bytes and back: skops (never pickle) with a trusted-types list fixed here, and
the ONNX form with its parity check against scikit-learn.

The trusted list is decided here and nowhere else. It is never read from the artifact:
taking the list from the model's own metadata is what made MLflow's skops loading unsafe
(GHSA-w582-9x45-8mpx). Types skops already trusts (scikit-learn estimators, numpy arrays,
builtins) need no entry. Beyond those, an artifact may hold only what the estimator
allow-list can build (`trusted_types()`):

- `FITTED_INTERNALS`: the objects fitting creates inside the estimators we train (forests'
  trees, histogram gradient boosting, neighbours' trees and metrics, MLP optimisers); fitting
  decides them, not the user;
- the functions and classes that allowed classes hold as *default* parameter values, such as
  SelectKBest's `score_func=f_classif`. Parameters arrive as JSON, so no user can put another
  callable there; these defaults are all a pipeline from the allow-list can contain. They are
  derived from scikit-learn's own classes, never listed by hand.
"""

from __future__ import annotations

import functools
import inspect
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from .store import ArtifactStore

FITTED_INTERNALS: tuple[str, ...] = (
    "numpy.dtype",
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.metrics._dist_metrics.ManhattanDistance64",
    "sklearn.metrics._dist_metrics.MinkowskiDistance64",
    "sklearn.metrics._dist_metrics.ChebyshevDistance64",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
)
TRUSTED_TYPES = FITTED_INTERNALS  # what every model may hold; pipelines add trusted_types()' defaults


@functools.lru_cache(maxsize=1)
def default_parameter_callables() -> frozenset[str]:
    """`module.qualname` of every function or class that a scikit-learn estimator or
    transformer (everything the default allow-list `sklearn.` admits) holds as a default
    parameter value. Imports all of scikit-learn once (about a second); asked only for an
    artifact that holds something beyond `FITTED_INTERNALS`."""
    import warnings

    from sklearn.utils import all_estimators

    found = set()
    for _, cls in all_estimators():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecated classes say so when built
                defaults = cls().get_params(deep=False)
        except Exception:  # needs arguments (meta-estimators): it cannot be a step or estimator
            continue
        for value in defaults.values():
            if (inspect.isfunction(value) or inspect.isclass(value)) and value.__module__.startswith("sklearn."):
                found.add(f"{value.__module__}.{value.__qualname__}")
    return frozenset(found)


def trusted_types() -> frozenset[str]:
    return frozenset(FITTED_INTERNALS) | default_parameter_callables()
PARITY_TOLERANCE = 1e-4
PICKLE_MAGIC = (b"\x80",)  # protocol 2+ pickles start with PROTO
ZIP_MAGIC = b"PK\x03\x04"


class UntrustedModelError(ValueError):
    """The artifact is not a skops file, or holds types outside the trusted list."""


def dump_skops(model: Any) -> bytes:
    import skops.io as sio

    return sio.dumps(model)


def untrusted_types(data: bytes) -> list[str]:
    """Types in a skops artifact that skops does not trust by default (read from its schema,
    nothing is executed)."""
    import skops.io as sio

    if not data.startswith(ZIP_MAGIC):
        kind = "a pickle" if data[:1] in PICKLE_MAGIC else "not a skops (zip) file"
        raise UntrustedModelError(f"refusing to load the model: the artifact is {kind}; only skops is loaded")
    try:
        return list(sio.get_untrusted_types(data=data))
    except Exception as error:  # a corrupt zip or schema: refuse, never guess
        raise UntrustedModelError(f"refusing to load the model: unreadable skops artifact ({error})") from None


def refused_types(data: bytes) -> list[str]:
    """The types in a skops artifact that are not trusted here (empty: it may be loaded)."""
    beyond = set(untrusted_types(data)) - set(FITTED_INTERNALS)
    return sorted(beyond - default_parameter_callables()) if beyond else []


def check_loadable(data: bytes) -> None:
    """The trainer's check before it uploads: the server must be able to load what it saves."""
    from .errors import UserError

    refused = refused_types(data)
    if refused:
        raise UserError("UntrustedArtifact", f"the fitted model holds {refused}, which the model server does not "
                        "load (only what the estimator allow-list builds is trusted); choose other steps or "
                        "parameters")


def load_skops(data: bytes) -> Any:
    """Load a skops artifact, trusting only `trusted_types()` beyond skops' own defaults."""
    import skops.io as sio

    refused = refused_types(data)
    if refused:
        raise UntrustedModelError(
            "refusing to load the model: it contains types outside the trusted list "
            f"{refused}; only what the estimator allow-list can build is loaded "
            "(see mlops_runtime.model_io)"
        )
    trusted = set(untrusted_types(data))  # every one of them checked just above
    return sio.loads(data, trusted=sorted(trusted))


def load_verified_model(store: ArtifactStore, uri: str, sha256: str) -> Any:
    """Fetch, verify the sha256 (IntegrityError on mismatch), then load with skops."""
    return load_skops(store.get_verified(uri, sha256))


# -- ONNX ---------------------------------------------------------------------------------


def _final_estimator(model: Any) -> Any:
    steps = getattr(model, "steps", None)
    return steps[-1][1] if steps else model


def onnx_input_types(X: pd.DataFrame, numeric_columns: list[str],
                     by_column: bool = False) -> list[tuple[str, Any]]:
    """All-numeric data: one float matrix `X` [rows, features]. Mixed data, or a pipeline that
    selects columns by name (`by_column`): one input per column in column order, float
    [rows, 1] for numeric and string [rows, 1] for categorical (how skl2onnx routes columns
    through a ColumnTransformer; it may sanitise the names).

    float32, not float64: scikit-learn's trees compare float32 features too, and ONNX
    Runtime's tree operators take float only."""
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    if len(numeric_columns) == X.shape[1] and not by_column:
        return [("X", FloatTensorType([None, X.shape[1]]))]
    return [
        (str(name), FloatTensorType([None, 1]) if name in numeric_columns else StringTensorType([None, 1]))
        for name in X.columns
    ]


def onnx_feeds(session: Any, X: pd.DataFrame, numeric_columns: list[str]) -> dict[str, np.ndarray]:
    """The session's inputs filled from a DataFrame, by position (see `onnx_input_types`)."""
    inputs = session.get_inputs()
    if len(inputs) == 1 and len(numeric_columns) == X.shape[1]:
        return {inputs[0].name: X.to_numpy(dtype=np.float32)}
    return {
        spec.name: (X[[name]].to_numpy(dtype=np.float32) if name in numeric_columns
                    else X[[name]].astype(str).to_numpy(dtype=object))
        for spec, name in zip(inputs, X.columns, strict=True)
    }


def converter_options(model: Any) -> dict[int, dict[str, Any]] | None:
    """skl2onnx options per estimator: classifiers with probabilities answer them as a plain
    tensor (`zipmap: False`); those without (LinearSVC, RidgeClassifier, SVC without
    probability) take no zipmap option at all, and passing one fails their conversion."""
    final = _final_estimator(model)
    if hasattr(final, "classes_") and hasattr(final, "predict_proba"):
        return {id(final): {"zipmap": False}}
    return None


def _selects_columns_by_name(model: Any) -> bool:
    from sklearn.compose import ColumnTransformer

    return any(isinstance(step, ColumnTransformer) for _, step in getattr(model, "steps", ()))


def convert_to_onnx(model: Any, X_sample: pd.DataFrame,
                    numeric_columns: list[str] | None = None) -> tuple[bytes | None, str | None]:
    """(the fitted model as ONNX bytes, None), or (None, why skl2onnx could not convert it)."""
    if numeric_columns is None:
        numeric_columns = [c for c in X_sample.columns if X_sample[c].dtype.kind in "biuf"]
    try:
        from skl2onnx import convert_sklearn

        onx = convert_sklearn(
            model,
            initial_types=onnx_input_types(X_sample, numeric_columns, _selects_columns_by_name(model)),
            options=converter_options(model),
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
        return onx.SerializeToString(), None
    except Exception as error:  # skl2onnx raises many types for "cannot convert"; the skops form serves
        return None, f"skl2onnx cannot convert it: {type(error).__name__}: {error}"[:300]


def to_onnx(model: Any, X_sample: pd.DataFrame, numeric_columns: list[str] | None = None) -> bytes | None:
    """The fitted model as ONNX bytes, or None when skl2onnx cannot convert it."""
    return convert_to_onnx(model, X_sample, numeric_columns)[0]


def onnx_input_names(onnx_bytes: bytes) -> list[str]:
    return [spec.name for spec in onnx_session(onnx_bytes).get_inputs()]


def onnx_session(onnx_bytes: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def sklearn_reference(model: Any, X_test: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """What scikit-learn answers on `X_test`: (predictions, probabilities or None), the
    reference an ONNX form must reproduce."""
    expected = model.predict(X_test)
    final = _final_estimator(model)
    probabilities = None
    if hasattr(final, "classes_") and hasattr(final, "predict_proba"):
        try:
            probabilities = model.predict_proba(X_test)
        except AttributeError:  # e.g. SVC(probability=False) exposes the method but refuses
            probabilities = None
    return expected, probabilities


def first_rows(reference: tuple[np.ndarray, np.ndarray | None], rows: int
               ) -> tuple[np.ndarray, np.ndarray | None]:
    expected, probabilities = reference
    return expected[:rows], (probabilities[:rows] if probabilities is not None else None)


def labels_follow_probabilities(model: Any) -> bool:
    """True where scikit-learn's own `predict` is `classes_.take(argmax(predict_proba(X)))`
    (forests with one output): their labels can be derived from the probabilities, ties going
    to the first class as numpy's argmax sends them. ONNX's tree operator breaks ties the
    other way, so the ONNX form's labels are derived the same way (`onnx_labels`)."""
    from sklearn.ensemble._forest import ForestClassifier

    final = _final_estimator(model)
    return isinstance(final, ForestClassifier) and getattr(final, "n_outputs_", 1) == 1


def onnx_labels(outputs: list[Any], classes: np.ndarray | None, follow_probabilities: bool) -> np.ndarray:
    """An ONNX classifier's labels, as scikit-learn would give them: for models whose labels
    follow their probabilities, the first class with the highest probability; else the
    graph's own label output."""
    if follow_probabilities and classes is not None and len(outputs) > 1:
        probabilities = np.asarray(outputs[1])
        if probabilities.ndim == 2 and probabilities.shape[1] == len(classes):
            return np.asarray(classes).take(np.argmax(probabilities, axis=1), axis=0)
    return np.asarray(outputs[0]).reshape(-1)


# -- the data parity is checked on ---------------------------------------------------------


TIE_ROWS = 32            # at most this many tied rows join the check
TIE_CANDIDATES = 4096    # random rows searched for ties
OUT_OF_RANGE_ROWS = 8


@dataclass
class ParityData:
    """The rows an ONNX form must answer like scikit-learn on: the test split, rows where the
    two best classes tie (top two probabilities, or one-vs-one votes for SVMs; found among
    random rows inside the training range), and rows beyond the training range. `tolerance` is the absolute tolerance
    for regression outputs, scaled to the target."""

    X: pd.DataFrame
    test_rows: int
    tie_rows: int = 0
    out_of_range_rows: int = 0
    tolerance: float = PARITY_TOLERANCE

    def evidence(self) -> dict[str, Any]:
        return {"testRows": self.test_rows, "tieRows": self.tie_rows, "outOfRangeRows": self.out_of_range_rows}


def regression_tolerance(y_train: Any) -> float:
    """1e-4 of the target's scale: its standard deviation, or 1 % of its largest magnitude
    when that is larger (float32, which ONNX computes in, resolves about 7 digits of it)."""
    y = np.asarray(y_train, dtype=np.float64)
    scale = max(float(np.std(y)), 0.01 * float(np.max(np.abs(y))) if y.size else 0.0)
    return PARITY_TOLERANCE * scale if scale > 0 else PARITY_TOLERANCE


def _random_rows(X_train: pd.DataFrame, numeric_columns: list[str], rng: np.random.Generator,
                 count: int) -> pd.DataFrame:
    import pandas as pd

    columns = {}
    for name in X_train.columns:
        values = X_train[name]
        if name in numeric_columns:
            low, high = float(np.nanmin(values)), float(np.nanmax(values))
            columns[name] = rng.uniform(low, high, count)
            if values.dtype.kind in "iub":
                columns[name] = np.round(columns[name])
        else:
            observed = values.dropna().unique()
            columns[name] = rng.choice(observed, count) if len(observed) else np.full(count, None)
    return pd.DataFrame(columns)[list(X_train.columns)]


def _out_of_range(X_train: pd.DataFrame, X_test: pd.DataFrame, numeric_columns: list[str]) -> pd.DataFrame:
    """Test rows with every numeric feature pushed one to four training ranges beyond its
    minimum or maximum (categorical features keep observed values)."""
    rows = X_test.head(OUT_OF_RANGE_ROWS).copy().reset_index(drop=True)
    for k in range(len(rows)):
        for name in numeric_columns:
            low, high = float(np.nanmin(X_train[name])), float(np.nanmax(X_train[name]))
            span = max(high - low, 1.0)
            rows.loc[k, name] = high + span * (1 + k // 2) if k % 2 == 0 else low - span * (1 + k // 2)
    return rows.astype({name: np.float64 for name in numeric_columns})


def _label_scores(model: Any, X: pd.DataFrame) -> np.ndarray | None:
    """Per row and class, what the label is the maximum of: one-vs-one votes for multi-class
    SVMs (their `predict` counts votes), else the class probabilities; None for models with
    neither (a tie there is a measure-zero event)."""
    from sklearn.svm._base import BaseSVC

    final = _final_estimator(model)
    if isinstance(final, BaseSVC) and len(final.classes_) > 2:
        head = model[:-1].transform(X) if getattr(model, "steps", None) else X
        pairwise = final._decision_function(head)  # one column per class pair, libsvm's order
        classes = len(final.classes_)
        votes = np.zeros((len(pairwise), classes))
        column = 0
        for i in range(classes):
            for j in range(i + 1, classes):
                votes[:, i] += pairwise[:, column] > 0
                votes[:, j] += pairwise[:, column] <= 0
                column += 1
        return votes
    if hasattr(final, "predict_proba"):
        return np.asarray(model.predict_proba(X))
    return None


def parity_data(model: Any, X_train: pd.DataFrame, y_train: Any, X_test: pd.DataFrame,
                numeric_columns: list[str], seed: int) -> ParityData:
    """The check data for `onnx_parity` (runs scikit-learn: call it before forking)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    parts = [X_test.reset_index(drop=True)]
    ties = 0
    final = _final_estimator(model)
    if hasattr(final, "classes_"):
        candidates = _random_rows(X_train, numeric_columns, rng, TIE_CANDIDATES)
        try:
            scores = _label_scores(model, candidates)
        except (AttributeError, ValueError):  # no scores after all, or a step refuses the rows
            scores = None
        if scores is not None and scores.ndim == 2 and scores.shape[1] > 1:
            top = np.sort(scores, axis=1)
            tied = np.flatnonzero(top[:, -1] - top[:, -2] <= 1e-12)[:TIE_ROWS]
            ties = int(len(tied))
            parts.append(candidates.iloc[tied].reset_index(drop=True))
    outside = _out_of_range(X_train, X_test, numeric_columns) if numeric_columns else X_test.head(0)
    parts.append(outside)
    tolerance = PARITY_TOLERANCE if hasattr(final, "classes_") else regression_tolerance(y_train)
    X = pd.concat(parts, ignore_index=True).astype(X_test.dtypes.to_dict())
    return ParityData(X, test_rows=int(len(X_test)), tie_rows=ties, out_of_range_rows=int(len(outside)),
                      tolerance=tolerance)


def onnx_parity(
    model: Any,
    onnx_bytes: bytes,
    X_test: pd.DataFrame,
    numeric_columns: list[str] | None = None,
    reference: tuple[np.ndarray, np.ndarray | None] | None = None,
    tolerance: float = PARITY_TOLERANCE,
) -> dict[str, Any]:
    """Compare ONNX Runtime with scikit-learn on `X_test`: labels identical (ties broken as
    scikit-learn breaks them, `onnx_labels`) and probabilities within 1e-4, or regression
    outputs within `tolerance`. Returns the evidence, `passed` first. `reference` is
    `sklearn_reference(model, X_test)` when the caller has it already."""
    if numeric_columns is None:
        numeric_columns = [c for c in X_test.columns if X_test[c].dtype.kind in "biuf"]
    result: dict[str, Any] = {"passed": False, "rows": int(len(X_test)), "tolerance": tolerance}
    try:
        session = onnx_session(onnx_bytes)
        outputs = session.run(None, onnx_feeds(session, X_test, numeric_columns))
    except Exception as error:
        result["error"] = f"ONNX Runtime could not run the model: {type(error).__name__}: {error}"[:300]
        return result
    expected, probabilities = reference if reference is not None else sklearn_reference(model, X_test)
    final = _final_estimator(model)
    if hasattr(final, "classes_"):
        labels = onnx_labels(outputs, final.classes_, labels_follow_probabilities(model))
        differ = labels.astype(expected.dtype, copy=False) != expected
        identical = not bool(differ.any())
        result.update(labelsIdentical=identical, passed=identical)
        if not identical:
            result["labelsDifferOnRows"] = int(differ.sum())
        if probabilities is not None:
            gap = float(np.max(np.abs(np.asarray(outputs[1], dtype=np.float64) - probabilities)))
            result.update(maxAbsDiff=gap, passed=identical and gap <= PARITY_TOLERANCE)
    else:
        predicted = np.asarray(outputs[0], dtype=np.float64).reshape(-1)
        reference = np.asarray(expected, dtype=np.float64).reshape(-1)
        gap = float(np.max(np.abs(predicted - reference)))
        result.update(maxAbsDiff=gap, passed=gap <= tolerance)
    return result


def convert_and_check(
    model: Any,
    X_sample: pd.DataFrame,
    check: ParityData,
    numeric_columns: list[str],
    reference: tuple[np.ndarray, np.ndarray | None] | None = None,
) -> tuple[bytes | None, dict[str, Any] | None]:
    """(ONNX bytes or None, parity evidence; when it could not be converted, the reason in
    the evidence's `error`)."""
    onnx_bytes, reason = convert_to_onnx(model, X_sample, numeric_columns)
    if onnx_bytes is None:
        return None, {"passed": False, "error": reason}
    parity = onnx_parity(model, onnx_bytes, check.X, numeric_columns, reference, check.tolerance)
    return onnx_bytes, {**parity, **check.evidence()}


CONVERSION_TIMEOUT = 300.0


def _read_until_closed(fd: int, timeout: float) -> bytes | None:
    """Everything written to the pipe `fd` until the writer closes it, or None when that
    takes longer than `timeout` seconds."""
    import os
    import select
    import time

    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return None
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


class OnnxConversion:
    """`convert_and_check` in a forked child process where the platform has fork, so that the
    conversion (Python-bound, ~1 ms per tree of a forest) runs on another core while the
    parent dumps the skops file and uploads. Start it before any other thread is running
    (fork copies only the calling thread). Falls back to running inline.

    The child must not call into scikit-learn's prediction code: estimators such as
    k-neighbours predict through OpenMP, and GNU OpenMP is not fork-safe (a child that opens
    a parallel region after the parent used one can hang for ever). So the parent computes
    the scikit-learn `reference` outputs and the child only converts and runs ONNX Runtime;
    and `result` waits at most `timeout` seconds, after which the model is served from skops."""

    def __init__(
        self,
        model: Any,
        X_sample: pd.DataFrame,
        check: ParityData,
        numeric_columns: list[str],
        reference: tuple[np.ndarray, np.ndarray | None],
    ) -> None:
        import os

        self._result: tuple[bytes | None, dict[str, Any] | None] | None = None
        self._pid: int | None = None
        self._pipe: int | None = None
        if not hasattr(os, "fork"):
            self._result = convert_and_check(model, X_sample, check, numeric_columns, reference)
            return
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: compute, send, leave without running the parent's cleanup
            status = 1
            try:
                os.close(read_end)
                onnx_bytes, parity = convert_and_check(model, X_sample, check, numeric_columns, reference)
                header = json.dumps({"converted": onnx_bytes is not None, "parity": parity}).encode()
                with os.fdopen(write_end, "wb") as pipe:
                    pipe.write(len(header).to_bytes(8, "big") + header + (onnx_bytes or b""))
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        self._pid, self._pipe = pid, read_end

    def result(self, timeout: float = CONVERSION_TIMEOUT) -> tuple[bytes | None, dict[str, Any] | None]:
        import os

        if self._result is None:
            assert self._pid is not None and self._pipe is not None
            data = _read_until_closed(self._pipe, timeout)
            if data is None:
                self.cancel()
                self._result = (None, {"passed": False, "error": f"the ONNX conversion took over {timeout:.0f} s"})
                return self._result
            os.close(self._pipe)
            _, status = os.waitpid(self._pid, 0)
            self._pid = self._pipe = None
            if status != 0 or len(data) < 8:
                self._result = (None, {"passed": False, "error": "the ONNX conversion process failed"})
            else:
                size = int.from_bytes(data[:8], "big")
                header = json.loads(data[8: 8 + size])
                self._result = (data[8 + size:] if header["converted"] else None, header["parity"])
        return self._result

    def cancel(self) -> None:
        """Stop the child if its result is not wanted (the run failed)."""
        import os
        import signal

        if self._pid is not None:
            os.kill(self._pid, signal.SIGKILL)
            os.waitpid(self._pid, 0)
            if self._pipe is not None:
                os.close(self._pipe)
            self._pid = self._pipe = None
