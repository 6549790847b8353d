"""Feature drift: how far recent inputs have moved from the training baseline.

Pure functions (`psi`, `categorical_psi`, `ks_statistic`) compare one feature's recent values
with its `baseline.json` entry; `DriftMonitor` keeps a bounded window of recent inputs, filled
on the request path with one array copy, and recomputes the scores off the request path.

PSI conventions (documented in docs/serving.md): the baseline's quantile edges define the bins,
with the outer bins open-ended; missing values form a bin of their own when either side has
any; empty bins count as `EPSILON` so the logarithm stays finite. KS is the two-sample
Kolmogorov-Smirnov statistic against the baseline's sorted sample (up to 1,000 values).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

EPSILON = 1e-4
NUMERIC = "numeric"
CATEGORICAL = "categorical"


def psi_of_fractions(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two distributions over the same bins."""
    e = np.clip(np.asarray(expected, dtype=np.float64), EPSILON, None)
    a = np.clip(np.asarray(actual, dtype=np.float64), EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


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


def psi(baseline_feature: dict[str, Any], values: np.ndarray) -> float:
    """PSI of recent numeric `values` against a numeric baseline feature (edges + fractions)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return math.nan
    fractions = np.asarray(baseline_feature["fractions"], dtype=np.float64)
    if fractions.size == 0 or fractions.sum() <= 0:
        return math.nan  # the baseline saw no values of this feature
    fractions = fractions / fractions.sum()
    interior = _interior_edges(baseline_feature["edges"], len(fractions))
    present = values[~np.isnan(values)]
    counts = np.bincount(np.searchsorted(interior, present, side="right"), minlength=len(fractions))
    actual = counts / present.size if present.size else np.zeros(len(fractions))
    expected_missing = float(baseline_feature.get("missingFraction", 0.0) or 0.0)
    actual_missing = 1.0 - present.size / values.size
    if expected_missing > 0 or actual_missing > 0:
        return psi_of_fractions(_with_missing_bin(fractions, expected_missing),
                                _with_missing_bin(actual, actual_missing))
    return psi_of_fractions(fractions, actual)


def categorical_psi(baseline_feature: dict[str, Any], values: np.ndarray) -> float:
    """PSI over the baseline's categories, plus one bin for values it never saw and one for missing."""
    values = np.asarray(values, dtype=object)
    if values.size == 0:
        return math.nan
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
    return psi_of_fractions(expected, counts / values.size)


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


def feature_drift(baseline_feature: dict[str, Any], values: np.ndarray) -> FeatureDrift:
    name = baseline_feature["name"]
    if baseline_feature.get("kind", NUMERIC) == CATEGORICAL:
        return FeatureDrift(name, categorical_psi(baseline_feature, values), None)
    sample = np.sort(np.asarray(baseline_feature.get("sample") or [], dtype=np.float64))
    return FeatureDrift(name, psi(baseline_feature, values), ks_statistic(sample, values))


class DriftMonitor:
    """A bounded window of the most recent inputs, one ring buffer per feature.

    `observe` runs on the request path and only copies the batch into the buffers. `compute`
    works on a snapshot, so the server can run it in a thread every N seconds.
    """

    def __init__(self, baseline: dict[str, Any], feature_names: list[str], window: int,
                 min_rows: int = 100) -> None:
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

    def observe(self, columns: list[np.ndarray]) -> None:
        rows = len(columns[0]) if columns else 0
        if rows == 0:
            return
        take = min(rows, self.window)
        start = self.position
        end = start + take
        for buffer, (j, _) in zip(self.buffers, self.tracked):
            values = columns[j][rows - take:]
            if end <= self.window:
                buffer[start:end] = values
            else:
                split = self.window - start
                buffer[start:] = values[:split]
                buffer[:end - self.window] = values[split:]
        self.position = end % self.window
        self.filled = min(self.window, self.filled + take)
        self.seen += rows

    def snapshot(self) -> list[np.ndarray]:
        return [buffer[: self.filled].copy() for buffer in self.buffers]

    def compute(self, snapshot: list[np.ndarray] | None = None) -> list[FeatureDrift]:
        """Drift per tracked feature, or nothing until the window holds `min_rows` inputs."""
        data = self.snapshot() if snapshot is None else snapshot
        if not data or len(data[0]) < self.min_rows:
            return []
        return [feature_drift(spec, values) for (_, spec), values in zip(self.tracked, data)]


def publish(results: list[FeatureDrift], set_psi: Callable[[str, float], None],
            set_ks: Callable[[str, float], None]) -> None:
    for result in results:
        if not math.isnan(result.psi):
            set_psi(result.feature, result.psi)
        if result.ks is not None and not math.isnan(result.ks):
            set_ks(result.feature, result.ks)
