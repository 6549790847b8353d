"""Models to bytes and back: skops (never pickle) with a trusted-types list fixed here, and
the ONNX form with its parity check against scikit-learn.

The trusted list lives in this file and nowhere else. It is never read from the artifact:
taking the list from the model's own metadata is what made MLflow's skops loading unsafe
(GHSA-w582-9x45-8mpx). Types skops already trusts (scikit-learn estimators, numpy arrays,
builtins) need no entry; the entries below are the internals that skops flags for the
estimators we train (forests and trees, histogram gradient boosting, neighbours, MLPs).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from .store import ArtifactStore

TRUSTED_TYPES: tuple[str, ...] = (
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


def load_skops(data: bytes) -> Any:
    """Load a skops artifact, trusting only `TRUSTED_TYPES` beyond skops' own defaults."""
    import skops.io as sio

    refused = sorted(set(untrusted_types(data)) - set(TRUSTED_TYPES))
    if refused:
        raise UntrustedModelError(
            "refusing to load the model: it contains types outside the trusted list "
            f"{refused}; if they are legitimate, add them to mlops_runtime.model_io.TRUSTED_TYPES"
        )
    return sio.loads(data, trusted=list(TRUSTED_TYPES))


def load_verified_model(store: ArtifactStore, uri: str, sha256: str) -> Any:
    """Fetch, verify the sha256 (IntegrityError on mismatch), then load with skops."""
    return load_skops(store.get_verified(uri, sha256))


# -- ONNX ---------------------------------------------------------------------------------


def _final_estimator(model: Any) -> Any:
    steps = getattr(model, "steps", None)
    return steps[-1][1] if steps else model


def onnx_input_types(X: pd.DataFrame, numeric_columns: list[str]) -> list[tuple[str, Any]]:
    """All-numeric data: one float matrix `X` [rows, features]. Mixed data: one input per
    column in column order, float [rows, 1] for numeric and string [rows, 1] for categorical
    (how skl2onnx routes columns through a ColumnTransformer; it may sanitise the names).

    float32, not float64: scikit-learn's trees compare float32 features too, and ONNX
    Runtime's tree operators take float only."""
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    if len(numeric_columns) == X.shape[1]:
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


def to_onnx(model: Any, X_sample: pd.DataFrame, numeric_columns: list[str] | None = None) -> bytes | None:
    """The fitted model as ONNX bytes, or None when skl2onnx cannot convert it."""
    if numeric_columns is None:
        numeric_columns = [c for c in X_sample.columns if X_sample[c].dtype.kind in "biuf"]
    try:
        from skl2onnx import convert_sklearn

        final = _final_estimator(model)
        options = {id(final): {"zipmap": False}} if hasattr(final, "classes_") else None
        onx = convert_sklearn(
            model,
            initial_types=onnx_input_types(X_sample, numeric_columns),
            options=options,
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
        return onx.SerializeToString()
    except Exception:  # skl2onnx raises many types for "cannot convert"; the skops form serves
        return None


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


def onnx_parity(
    model: Any,
    onnx_bytes: bytes,
    X_test: pd.DataFrame,
    numeric_columns: list[str] | None = None,
    reference: tuple[np.ndarray, np.ndarray | None] | None = None,
) -> dict[str, Any]:
    """Compare ONNX Runtime with scikit-learn on `X_test`: labels identical and probabilities
    (or regression outputs) within 1e-4. Returns the evidence, `passed` first. `reference`
    is `sklearn_reference(model, X_test)` when the caller has it already."""
    if numeric_columns is None:
        numeric_columns = [c for c in X_test.columns if X_test[c].dtype.kind in "biuf"]
    result: dict[str, Any] = {"passed": False, "rows": int(len(X_test)), "tolerance": PARITY_TOLERANCE}
    try:
        session = onnx_session(onnx_bytes)
        outputs = session.run(None, onnx_feeds(session, X_test, numeric_columns))
    except Exception as error:
        result["error"] = f"ONNX Runtime could not run the model: {type(error).__name__}: {error}"[:300]
        return result
    expected, probabilities = reference if reference is not None else sklearn_reference(model, X_test)
    final = _final_estimator(model)
    if hasattr(final, "classes_"):
        labels = np.asarray(outputs[0]).reshape(-1)
        identical = bool(np.array_equal(labels.astype(expected.dtype, copy=False), expected))
        result.update(labelsIdentical=identical, passed=identical)
        if probabilities is not None:
            gap = float(np.max(np.abs(np.asarray(outputs[1], dtype=np.float64) - probabilities)))
            result.update(maxAbsDiff=gap, passed=identical and gap <= PARITY_TOLERANCE)
    else:
        predicted = np.asarray(outputs[0], dtype=np.float64).reshape(-1)
        reference = np.asarray(expected, dtype=np.float64).reshape(-1)
        gap = float(np.max(np.abs(predicted - reference)))
        # float32 sums of large targets: relative as well as absolute tolerance
        close = bool(np.allclose(predicted, reference, rtol=PARITY_TOLERANCE, atol=PARITY_TOLERANCE))
        result.update(maxAbsDiff=gap, passed=close)
    return result


def convert_and_check(
    model: Any,
    X_sample: pd.DataFrame,
    X_test: pd.DataFrame,
    numeric_columns: list[str],
    reference: tuple[np.ndarray, np.ndarray | None] | None = None,
) -> tuple[bytes | None, dict[str, Any] | None]:
    """(ONNX bytes or None, parity evidence or None when it could not be converted)."""
    onnx_bytes = to_onnx(model, X_sample, numeric_columns)
    if onnx_bytes is None:
        return None, None
    return onnx_bytes, onnx_parity(model, onnx_bytes, X_test, numeric_columns, reference)


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
        X_test: pd.DataFrame,
        numeric_columns: list[str],
        reference: tuple[np.ndarray, np.ndarray | None],
    ) -> None:
        import os

        self._result: tuple[bytes | None, dict[str, Any] | None] | None = None
        self._pid: int | None = None
        self._pipe: int | None = None
        if not hasattr(os, "fork"):
            self._result = convert_and_check(model, X_sample, X_test, numeric_columns, reference)
            return
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: compute, send, leave without running the parent's cleanup
            status = 1
            try:
                os.close(read_end)
                onnx_bytes, parity = convert_and_check(model, X_sample, X_test, numeric_columns, reference)
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
