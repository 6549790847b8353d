"""Drift scores against a baseline built the way training builds it (mlops_runtime.baseline)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from mlops_runtime.baseline import categorical_summary, compute_baseline, numeric_summary
from mlops_runtime.drift import (
    EPSILON,
    DriftMonitor,
    categorical_psi,
    feature_drift,
    ks_statistic,
    psi,
    psi_of_fractions,
    publish,
    window_drift,
)

RNG = np.random.default_rng(7)
TRAIN = RNG.normal(0.0, 1.0, 20_000)


def numeric_baseline(values: np.ndarray, name: str = "x") -> dict:
    return {"name": name, **numeric_summary(values)}


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    base = numeric_baseline(TRAIN)
    same = RNG.normal(0.0, 1.0, 5_000)
    shifted = RNG.normal(1.0, 1.0, 5_000)
    assert psi(base, same) < 0.02
    assert psi(base, shifted) > 0.25  # the conventional "major shift"
    assert psi(base, RNG.normal(0.3, 1.0, 5_000)) < psi(base, shifted)


def test_psi_counts_values_beyond_the_training_range_in_the_outer_bins() -> None:
    base = numeric_baseline(TRAIN)
    far = np.full(1_000, 50.0)  # everything above the training maximum
    expected_last = base["fractions"][-1]
    # all mass in the last bin: PSI equals the two-bin-family formula computed by hand
    actual = np.zeros(len(base["fractions"]))
    actual[-1] = 1.0
    assert psi(base, far) == pytest.approx(psi_of_fractions(np.asarray(base["fractions"]), actual))
    assert expected_last < 0.2


def test_psi_treats_missing_values_as_their_own_bin() -> None:
    base = numeric_baseline(TRAIN)
    recent = RNG.normal(0.0, 1.0, 2_000)
    with_missing = recent.copy()
    with_missing[:1_000] = np.nan
    assert psi(base, with_missing) > psi(base, recent) + 0.5


def test_psi_of_a_constant_feature_and_of_empty_input() -> None:
    base = numeric_baseline(np.full(100, 3.0))
    assert base["binning"] == "values" and base["values"] == [3.0]
    assert psi(base, np.full(50, 3.0)) == pytest.approx(0.0)
    # Any other value is drift: a bin of values training never saw.
    assert psi(base, np.full(50, 4.0)) == pytest.approx(psi_of_fractions(np.array([1.0, 0.0]), np.array([0.0, 1.0])))
    assert psi(base, np.full(50, 4.0)) > 9.0
    assert psi(base, np.array([])) is None
    assert categorical_psi({"name": "c", **categorical_summary(pd.Series(["a"]))}, np.array([], dtype=object)) is None


def _counts(value_counts: dict[float, int]) -> np.ndarray:
    return np.concatenate([np.full(count, value) for value, count in value_counts.items()])


def test_a_binary_feature_gets_one_bin_per_value() -> None:
    # P(1) from 0.3 to 0.9: one bin per value gives
    # 0.6 ln 3 + 0.6 ln 7 = 1.8267. The issue measured 1.81 on sampled data.
    base = numeric_baseline(_counts({0.0: 700, 1.0: 300}))
    assert base["binning"] == "values" and base["values"] == [0.0, 1.0]
    value = psi(base, _counts({0.0: 100, 1.0: 900}))
    assert value == pytest.approx(0.6 * math.log(3) + 0.6 * math.log(7), rel=1e-9)
    assert value == pytest.approx(1.81, abs=0.02)


def test_a_low_cardinality_integer_feature_that_collapses_onto_one_value() -> None:
    # {0, 1, 2} in thirds, then all 2: two emptied bins count EPSILON (1e-4) each:
    # 2 (1/3 - 1e-4) ln(1/(3e-4)) + (2/3) ln 3 = 6.138; the 6.20 came from sampled thirds.
    base = numeric_baseline(_counts({0.0: 1000, 1.0: 1000, 2.0: 1000}))
    value = psi(base, np.full(500, 2.0))
    expected = 2 * (1 / 3 - EPSILON) * math.log((1 / 3) / EPSILON) + (1 - 1 / 3) * math.log(3)
    assert EPSILON == 1e-4 and value == pytest.approx(expected, rel=1e-9)
    assert value == pytest.approx(6.20, abs=0.07)
    # The quantile bins it had before saw 2.79.
    assert psi({"name": "x", **numeric_summary(_counts({0.0: 1000, 1.0: 1000, 2.0: 1000}), max_discrete_values=2)},
               np.full(500, 2.0)) < 3.0
    # A value never seen in training falls in a bin of its own.
    assert psi(base, np.full(500, 7.0)) > value


def test_the_baseline_keeps_its_binning_convention() -> None:
    X = pd.DataFrame({"flag": _counts({0.0: 50, 1.0: 50}), "x": RNG.normal(0, 1, 100)})
    baseline = compute_baseline(X, pd.Series([0, 1] * 50), ["flag", "x"], "classification", [0, 1], seed=0,
                                max_discrete_values=5)
    assert baseline["binning"]["maxDiscreteValues"] == 5 and baseline["binning"]["quantileBins"] == 10
    kinds = {f["name"]: f["binning"] for f in baseline["features"]}
    assert kinds == {"flag": "values", "x": "quantiles"}


def test_noise_alone_rarely_makes_a_feature_significant_among_many() -> None:
    # 30 unshifted features of 100 rows: the raw PSI goes over 0.2 most of the time; a p-value
    # below 0.01 / 30 (Bonferroni over the features) happens in about 1 % of windows.
    rng = np.random.default_rng(3)
    baseline = {"rows": 5_000, "features": [numeric_baseline(rng.normal(0, 1, 5_000), f"f{j}") for j in range(30)]}
    over_threshold = over_critical = 0
    for _ in range(300):
        results = window_drift(baseline, baseline["features"], [rng.normal(0, 1, 100) for _ in range(30)])
        assert len(results) == 30
        over_threshold += max(r.psi for r in results) > 0.2
        over_critical += any(r.p_value < 0.01 / 30 for r in results)
    assert over_threshold > 150
    assert over_critical <= 9  # 1 % of 300 is 3; allow sampling noise
    shifted = window_drift(baseline, baseline["features"][:1], [rng.normal(0.5, 1, 500)])
    assert shifted[0].p_value < 1e-6  # half a standard deviation is plain at 500 rows


def test_too_few_rows_for_the_bins_score_nothing_and_publish_nothing() -> None:
    baseline = {"rows": 1000, "features": [numeric_baseline(TRAIN, "x"),
                                           numeric_baseline(_counts({0.0: 5, 1.0: 5}), "flag")]}
    results = window_drift(baseline, baseline["features"], [RNG.normal(0, 1, 20), np.zeros(20)])
    assert [r.feature for r in results] == ["flag"]  # 20 rows: enough for 2 bins, not for 10
    calls: list[tuple[str, float]] = []
    publish([], lambda f, v: calls.append((f, v)), lambda f, v: calls.append((f, v)))
    publish(window_drift(baseline, baseline["features"], [np.array([]), np.array([])]),
            lambda f, v: calls.append((f, v)), lambda f, v: calls.append((f, v)))
    assert calls == []


def test_categorical_psi_over_categories_with_an_unseen_bin() -> None:
    train = pd.Series(["red"] * 500 + ["green"] * 300 + ["blue"] * 200)
    base = {"name": "colour", **categorical_summary(train)}
    same = np.array(["red"] * 50 + ["green"] * 30 + ["blue"] * 20, dtype=object)
    assert categorical_psi(base, same) == pytest.approx(0.0, abs=1e-9)
    flipped = np.array(["blue"] * 70 + ["red"] * 30, dtype=object)
    assert categorical_psi(base, flipped) > 0.25
    unseen = np.array(["purple"] * 100, dtype=object)
    assert categorical_psi(base, unseen) > categorical_psi(base, flipped)


def test_ks_statistic_equals_scipy() -> None:
    sample = np.sort(RNG.choice(TRAIN, 1_000, replace=False))
    for recent in (RNG.normal(0.0, 1.0, 777), RNG.normal(0.5, 2.0, 3_000), np.round(RNG.normal(0, 1, 500), 1)):
        assert ks_statistic(sample, recent) == pytest.approx(ks_2samp(sample, recent).statistic, abs=1e-12)
    assert ks_statistic(sample, RNG.normal(0.0, 1.0, 5_000)) < 0.06
    assert ks_statistic(sample, RNG.normal(1.0, 1.0, 5_000)) > 0.3


def test_feature_drift_uses_ks_only_for_numeric_features() -> None:
    numeric = feature_drift(numeric_baseline(TRAIN), RNG.normal(0, 1, 1_000))
    assert numeric.ks is not None and numeric.psi < 0.05
    categorical = feature_drift({"name": "c", **categorical_summary(pd.Series(["a", "b"] * 50))},
                                np.array(["a"] * 100, dtype=object))
    assert categorical.ks is None and categorical.psi > 0.25


def test_monitor_keeps_a_bounded_window_of_the_most_recent_rows() -> None:
    baseline = {"features": [numeric_baseline(TRAIN, "x"),
                             {"name": "c", **categorical_summary(pd.Series(["a", "b"] * 50))}]}
    monitor = DriftMonitor(baseline, ["x", "ignored", "c"], window=1_000, min_rows=100)
    assert monitor.compute() == []  # nothing seen yet
    for _ in range(30):  # 3,000 unshifted rows, in batches of 100: the window wraps three times
        x = RNG.normal(0, 1, 100)
        monitor.observe([x, np.zeros(100), np.array(["a", "b"] * 50, dtype=object)])
    calm = {d.feature: d for d in monitor.compute()}
    assert set(calm) == {"x", "c"} and calm["x"].psi < 0.1 and calm["c"].psi < 0.01
    # 1,000 shifted rows in one oversized batch replace the whole window
    monitor.observe([RNG.normal(2, 1, 1_500), np.zeros(1_500), np.array(["a"] * 1_500, dtype=object)])
    drifted = {d.feature: d for d in monitor.compute()}
    assert drifted["x"].psi > 1.0 and drifted["x"].ks > 0.5 and drifted["c"].psi > 0.25
    assert monitor.filled == 1_000 and monitor.seen == 4_500


def test_monitor_reports_nothing_below_min_rows() -> None:
    monitor = DriftMonitor({"features": [numeric_baseline(TRAIN)]}, ["x"], window=500, min_rows=50)
    monitor.observe([RNG.normal(5, 1, 49)])
    assert monitor.compute() == []
    monitor.observe([RNG.normal(5, 1, 1)])
    assert monitor.compute()[0].psi > 1.0


def test_matrices_and_columns_fill_the_window_alike_in_any_mix() -> None:
    """The server hands numeric batches over as matrices; the rings must hold exactly what the
    same rows given as columns would, across wrap-arounds and mixed pending kinds."""
    baseline = {"features": [numeric_baseline(TRAIN, "a"), numeric_baseline(TRAIN, "c")]}
    as_columns = DriftMonitor(baseline, ["a", "b", "c"], window=250, min_rows=10)
    as_matrices = DriftMonitor(baseline, ["a", "b", "c"], window=250, min_rows=10)
    mixed = DriftMonitor(baseline, ["a", "b", "c"], window=250, min_rows=10)
    for k, rows in enumerate([1, 7, 100, 3, 240, 1, 1, 90, 300, 5]):
        matrix = RNG.normal(k, 1, (rows, 3))
        as_columns.observe([matrix[:, j] for j in range(3)])
        as_matrices.observe_matrix(matrix)
        if k % 2:
            mixed.observe_matrix(matrix)
        else:
            mixed.observe([matrix[:, j] for j in range(3)])
        if k % 3 != 2 and k != 9:  # let pending batches of both kinds pile up between folds
            continue
        expected = as_columns.snapshot()
        for other in (as_matrices, mixed):
            got = other.snapshot()
            assert all(np.array_equal(e, g) for e, g in zip(expected, got, strict=True)), (k, rows)
    assert as_matrices.seen == as_columns.seen == 748 and as_matrices.filled == 250


def test_folding_every_few_rows_keeps_the_same_window_as_folding_once_per_window() -> None:
    """Frequent small folds (FOLD_ROWS) keep the loop's pauses short; the window they leave must
    hold the same rows as one fold per window would (the ring's order may differ; the
    statistics do not look at it)."""
    from mlops_runtime.drift import FOLD_ROWS

    baseline = {"features": [numeric_baseline(TRAIN, "a")]}
    window = 3 * FOLD_ROWS + 17
    frequent = DriftMonitor(baseline, ["a"], window=window)
    once = DriftMonitor(baseline, ["a"], window=window)
    once.fold_rows = window  # the old rule
    assert frequent.fold_rows == FOLD_ROWS
    sizes = [1] * 2_500 + [700, 3, 5_000, 1] + [2] * 1_300
    seen: list[np.ndarray] = []
    for k, rows in enumerate(sizes):
        matrix = RNG.normal(0, 1, (rows, 1)) + k
        seen.append(matrix[:, 0])
        frequent.observe_matrix(matrix)
        once.observe_matrix(matrix)
        if k in (2_499, 2_502, 2_503, len(sizes) - 1):
            latest = np.sort(np.concatenate(seen)[-window:])  # what the window must hold
            for monitor in (frequent, once):
                assert np.array_equal(np.sort(monitor.snapshot()[0]), latest), k
    assert frequent.filled == once.filled == window
