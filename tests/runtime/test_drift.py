"""Drift scores against a baseline built the way training builds it (mlops_runtime.baseline)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from mlops_runtime.baseline import categorical_summary, numeric_summary
from mlops_runtime.drift import DriftMonitor, categorical_psi, feature_drift, ks_statistic, psi, psi_of_fractions

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
    assert psi(base, np.full(50, 3.0)) == pytest.approx(0.0)
    assert math.isnan(psi(base, np.array([])))


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
