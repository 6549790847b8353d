"""Feature drift: how far recent inputs have moved from the training baseline.

Pure functions (`psi`, `categorical_psi`, `ks_statistic`) compare one feature's recent values
with its `baseline.json` entry; `DriftMonitor` keeps a bounded window of recent inputs, filled
on the request path with one array copy, and recomputes the scores off the request path.

PSI conventions (documented in docs/serving.md; the baseline's `binning` says which bins it
made): a numeric feature with few distinct training values (`maxDiscreteValues`, 20) has one
bin per value plus one for values never seen in training, so binary, constant and
low-cardinality features are seen; others have the baseline's quantile bins, the outer bins
open-ended; categorical features one bin per category plus one for unseen ones; missing
values form a bin of their own when either side has any; empty bins count as `EPSILON` so
the logarithm stays finite. KS is the two-sample Kolmogorov-Smirnov statistic against the
baseline's sorted sample (up to 1,000 values). An empty window scores nothing (None).

PSI alone is not a test: on 100 unshifted rows, sampling noise alone puts the largest of 30
features' PSI above 0.2 two times in three. So each feature also gets the p-value of
Pearson's chi-square test of homogeneity over the same bins (`p_value`: the window's counts
against the training fractions, the statistic divided by 1 + n/N for the noise of N training
rows); a value training never saw (an unseen category, a new value of a discrete feature)
has p = 0. The operator calls a feature drifted only when its PSI is above the user's
threshold *and* its p-value is below `falseAlarmRate / features` (Bonferroni), which keeps
the chance that an unshifted window looks drifted under the false-alarm rate whatever the
window size and the number of features. A feature is scored only when the window holds
`ROWS_PER_BIN` rows per bin, where the chi-square approximation holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import chi2

EPSILON = 1e-4
NUMERIC = "numeric"
CATEGORICAL = "categorical"
# Rows per bin a window needs before a feature is scored (the chi-square approximation).
ROWS_PER_BIN = 5


def psi_of_fractions(expected: np.ndarray, actual: np.ndarray):
    """Population stability index of two distributions over the same bins (the last axis:
    arrays of windows give an array of PSIs)."""
    e = np.clip(np.asarray(expected, dtype=np.float64), EPSILON, None)
    a = np.clip(np.asarray(actual, dtype=np.float64), EPSILON, None)
    value = np.sum((a - e) * np.log(a / e), axis=-1)
    return float(value) if np.ndim(value) == 0 else value


def _interior_edges(edges: list[float], bins: int) -> np.ndarray:
    """Edges between bins: baseline edges include the outer minimum and maximum when there are
    bins + 1 of them; the outer bins are open so values beyond the training range still count."""
    array = np.asarray(edges, dtype=np.float64)
    if bins == 1:
        return array[:0]  # a constant feature: one bin holds everything
    if len(array) == bins + 1:
        return array[1:-1]
    if len(array) == bins - 1:
        return array
    raise ValueError(f"baseline has {len(array)} edges for {bins} bins")


def _with_missing_bin(fractions: np.ndarray, missing: float) -> np.ndarray:
    return np.append(fractions * (1.0 - missing), missing)


def numeric_bins(baseline_feature: dict[str, Any], present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(expected, actual) fractions of non-missing values over the baseline's bins: one per
    training value plus one for values it never saw ("values" binning), or the quantile bins."""
    fractions = np.asarray(baseline_feature["fractions"], dtype=np.float64)
    fractions = fractions / fractions.sum()
    if baseline_feature.get("binning") == "values":
        values = np.asarray(baseline_feature["values"], dtype=np.float64)
        at = np.clip(np.searchsorted(values, present), 0, len(values) - 1)
        index = np.where(values[at] == present, at, len(values))
        counts = np.bincount(index, minlength=len(values) + 1)
        expected = np.append(fractions, 0.0)
    else:
        interior = _interior_edges(baseline_feature["edges"], len(fractions))
        counts = np.bincount(np.searchsorted(interior, present, side="right"), minlength=len(fractions))
        expected = fractions
    actual = counts / present.size if present.size else np.zeros(len(expected))
    return expected, actual


def numeric_fractions(baseline_feature: dict[str, Any], values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(expected, actual) over every bin of a numeric feature, missing values included; None
    when there is nothing to compare (an empty window, or a baseline that saw no values)."""
    values = np.asarray(values, dtype=np.float64)
    fractions = np.asarray(baseline_feature["fractions"], dtype=np.float64)
    if values.size == 0 or fractions.size == 0 or fractions.sum() <= 0:
        return None
    present = values[~np.isnan(values)]
    expected, actual = numeric_bins(baseline_feature, present)
    expected_missing = float(baseline_feature.get("missingFraction", 0.0) or 0.0)
    actual_missing = 1.0 - present.size / values.size
    if expected_missing > 0 or actual_missing > 0:
        return _with_missing_bin(expected, expected_missing), _with_missing_bin(actual, actual_missing)
    return expected, actual


def categorical_fractions(baseline_feature: dict[str, Any], values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(expected, actual) over the baseline's categories, one bin for values it never saw and
    one for missing; None for an empty window."""
    values = np.asarray(values, dtype=object)
    if values.size == 0:
        return None
    categories = list(baseline_feature["categories"])
    fractions = np.asarray(baseline_feature["fractions"], dtype=np.float64)
    fractions = fractions / fractions.sum() if fractions.sum() > 0 else fractions
    position = {c: i for i, c in enumerate(categories)}
    counts = np.zeros(len(categories) + 2)  # ..., unseen, missing
    for value in values:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            counts[-1] += 1
        else:
            counts[position.get(value, len(categories))] += 1
    expected_missing = float(baseline_feature.get("missingFraction", 0.0) or 0.0)
    expected = np.append(np.append(fractions * (1.0 - expected_missing), 0.0), expected_missing)
    return expected, counts / values.size


def psi(baseline_feature: dict[str, Any], values: np.ndarray) -> float | None:
    """PSI of recent numeric `values` against a numeric baseline feature (None: nothing to compare)."""
    bins = numeric_fractions(baseline_feature, values)
    return None if bins is None else psi_of_fractions(*bins)


def categorical_psi(baseline_feature: dict[str, Any], values: np.ndarray) -> float | None:
    """PSI over the baseline's categories, plus one bin for values it never saw and one for
    missing; None for an empty window."""
    bins = categorical_fractions(baseline_feature, values)
    return None if bins is None else psi_of_fractions(*bins)


def p_value(expected: np.ndarray, actual: np.ndarray, rows: int, baseline_rows: int | None):
    """Pearson's chi-square test that `rows` observations with fractions `actual` come from
    the training distribution `expected` (estimated from `baseline_rows`): the statistic is
    divided by 1 + rows/baseline_rows for the training sample's own noise. Mass in a bin that
    training never filled is certain drift (0). `actual` may hold many windows (last axis:
    the bins)."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    seen = expected > 0
    dof = int(np.count_nonzero(seen)) - 1
    unseen_mass = np.any(actual[..., ~seen] > 0, axis=-1)
    statistic = rows * np.sum((actual[..., seen] - expected[seen]) ** 2 / expected[seen], axis=-1)
    if baseline_rows:
        statistic = statistic / (1.0 + rows / baseline_rows)
    value = np.where(unseen_mass, 0.0, chi2.sf(statistic, dof) if dof > 0 else 1.0)
    return float(value) if np.ndim(value) == 0 else value


def ks_statistic(sorted_sample: np.ndarray, values: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs
    (the same number as `scipy.stats.ks_2samp(...).statistic`). Missing values are ignored."""
    reference = np.asarray(sorted_sample, dtype=np.float64)
    recent = np.asarray(values, dtype=np.float64)
    recent = np.sort(recent[~np.isnan(recent)])
    if reference.size == 0 or recent.size == 0:
        return math.nan
    points = np.concatenate([reference, recent])
    cdf_reference = np.searchsorted(reference, points, side="right") / reference.size
    cdf_recent = np.searchsorted(recent, points, side="right") / recent.size
    return float(np.max(np.abs(cdf_reference - cdf_recent)))


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    psi: float
    ks: float | None  # None for categorical features
    p_value: float | None = None  # chi-square test of the same bins (see p_value)


def feature_drift(baseline_feature: dict[str, Any], values: np.ndarray,
                  baseline_rows: int | None = None) -> FeatureDrift | None:
    """One feature's drift in a window; None when there is nothing to score."""
    name = baseline_feature["name"]
    categorical = baseline_feature.get("kind", NUMERIC) == CATEGORICAL
    bins = (categorical_fractions if categorical else numeric_fractions)(baseline_feature, values)
    if bins is None:
        return None
    significance = p_value(*bins, rows=len(values), baseline_rows=baseline_rows)
    if categorical:
        return FeatureDrift(name, psi_of_fractions(*bins), None, significance)
    sample = np.sort(np.asarray(baseline_feature.get("sample") or [], dtype=np.float64))
    ks = ks_statistic(sample, values)
    return FeatureDrift(name, psi_of_fractions(*bins), None if math.isnan(ks) else ks, significance)


def bin_count(baseline_feature: dict[str, Any]) -> int:
    """How many bins a feature's training data fill (missing values included)."""
    filled = int(np.count_nonzero(np.asarray(baseline_feature.get("fractions") or [], dtype=np.float64)))
    return filled + (1 if float(baseline_feature.get("missingFraction", 0.0) or 0.0) > 0 else 0)


def window_drift(baseline: dict[str, Any], specs: list[dict[str, Any]], data: list[np.ndarray]) -> list[FeatureDrift]:
    """Drift of each feature whose window holds ROWS_PER_BIN rows per bin."""
    results = []
    for spec, values in zip(specs, data):
        if len(values) < ROWS_PER_BIN * max(1, bin_count(spec)):
            continue
        result = feature_drift(spec, values, baseline.get("rows"))
        if result is not None:
            results.append(result)
    return results


FOLD_ROWS = 1024


class DriftMonitor:
    """A bounded window of the most recent inputs, one ring buffer per feature.

    `observe` runs on the request path and only keeps a reference to the batch's columns (or matrix)
    (about 0.2 us; copying a one-row batch into the rings column by column cost about 2 us);
    the pending batches are copied into the rings once they hold FOLD_ROWS rows (or the window,
    when smaller), and at `snapshot`. `compute` works on a snapshot, so the server can run it in a thread every N
    seconds. The columns observed must not be changed afterwards (the server's never are).
    """

    def __init__(self, baseline: dict[str, Any], feature_names: list[str], window: int,
                 min_rows: int = 100) -> None:
        self.baseline = baseline
        by_name = {f["name"]: f for f in baseline.get("features", [])}
        self.window = max(1, int(window))
        self.min_rows = max(1, int(min_rows))
        self.feature_names = list(feature_names)
        # Only features the baseline describes are tracked; others have nothing to compare with.
        self.tracked = [(j, by_name[name]) for j, name in enumerate(feature_names) if name in by_name]
        self.buffers = [
            np.full(self.window, np.nan) if spec.get("kind", NUMERIC) == NUMERIC
            else np.empty(self.window, dtype=object)
            for _, spec in self.tracked
        ]
        self.position = 0
        self.filled = 0
        self.seen = 0
        self.pending: list[list[np.ndarray] | np.ndarray] = []   # column lists or matrices
        self.pending_rows = 0
        # Folded every FOLD_ROWS rows, not once per window: the copy costs the same per row, but
        # a fold of 10,000 one-row batches held the event loop 2.8 ms, a fold of 1,024 0.4 ms (the
        # worst observe() of 20,000 one-row matrices, in process).
        self.fold_rows = min(self.window, FOLD_ROWS)

    def observe(self, columns: list[np.ndarray]) -> None:
        """Keep one batch given as a column per feature."""
        rows = len(columns[0]) if columns else 0
        if rows == 0:
            return
        self._keep(columns, rows)

    def observe_matrix(self, matrix: np.ndarray) -> None:
        """Keep one all-numeric batch given as its rows x features matrix (no per-column views
        on the request path: they are taken once per fold)."""
        if matrix.shape[0]:
            self._keep(matrix, matrix.shape[0])

    def _keep(self, batch: list[np.ndarray] | np.ndarray, rows: int) -> None:
        self.pending.append(batch)
        self.pending_rows += rows
        self.seen += rows
        if self.pending_rows >= self.fold_rows:
            self._fold()

    def _fold(self) -> None:
        """Copy the pending batches into the rings (their last `window` rows)."""
        pending, rows = self.pending, self.pending_rows
        self.pending, self.pending_rows = [], 0
        if not pending:
            return
        take = min(rows, self.window)
        start = self.position
        end = start + take
        if all(isinstance(b, np.ndarray) for b in pending):  # matrices: one concatenation for every feature
            pending = [np.concatenate(pending) if len(pending) > 1 else pending[0]]
        for buffer, (j, _) in zip(self.buffers, self.tracked):
            parts = [b[:, j] if isinstance(b, np.ndarray) else b[j] for b in pending]
            values = parts[0] if len(parts) == 1 else np.concatenate(parts)
            values = values[rows - take:]
            if end <= self.window:
                buffer[start:end] = values
            else:
                split = self.window - start
                buffer[start:] = values[:split]
                buffer[:end - self.window] = values[split:]
        self.position = end % self.window
        self.filled = min(self.window, self.filled + take)

    def snapshot(self) -> list[np.ndarray]:
        self._fold()
        return [buffer[: self.filled].copy() for buffer in self.buffers]

    def compute(self, snapshot: list[np.ndarray] | None = None) -> list[FeatureDrift]:
        """Drift per tracked feature, or nothing until the window holds `min_rows` inputs."""
        data = self.snapshot() if snapshot is None else snapshot
        if not data or len(data[0]) < self.min_rows:
            return []
        return window_drift(self.baseline, [spec for _, spec in self.tracked], data)


def publish(results: list[FeatureDrift], set_psi: Callable[[str, float], None],
            set_ks: Callable[[str, float], None],
            set_p_value: Callable[[str, float], None] | None = None) -> None:
    """Set the gauges of the features that were scored; a feature with nothing to score sets
    nothing (never NaN)."""
    for result in results:
        set_psi(result.feature, result.psi)
        if result.ks is not None:
            set_ks(result.feature, result.ks)
        if set_p_value is not None and result.p_value is not None:
            set_p_value(result.feature, result.p_value)
