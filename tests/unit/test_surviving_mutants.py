"""Tests for mutants that survived `make mutation` (tests/mutation/run.py, seed 21): each
pins a decision against an independent value or on both sides of its boundary."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mlops_operator.reconcile.common import image_allowed
from mlops_runtime import drift


@pytest.mark.parametrize("image,allowed", [
    ("registry.example/mlops/mlops-runtime:0.1.0", True),
    ("registry.example/mlops/mlops-runtime:0.0.9", False),  # sorts before the entry: not it
    ("registry.example/mlops/mlops-runtime:0.2.0", False),
    ("registry.example/mlops/mlops-runtime", False),
])
def test_an_exact_tag_entry_allows_that_image_only(image: str, allowed: bool) -> None:
    assert image_allowed(image, "registry.example/mlops/mlops-runtime:0.1.0") is allowed


@pytest.mark.parametrize("rows", [50, 400])
def test_the_drift_p_value_is_pearsons_chi_square_with_bins_minus_one_degrees(rows: int) -> None:
    expected = np.array([0.1, 0.2, 0.3, 0.4])
    actual = np.array([0.16, 0.18, 0.30, 0.36])
    # Without a baseline sample size, the statistic is Pearson's on the window's counts.
    observed_counts = actual * rows
    reference = stats.chisquare(observed_counts, expected * rows)  # ddof 0: 4 bins, 3 degrees
    assert drift.p_value(expected, actual, rows, None) == pytest.approx(reference.pvalue, rel=1e-9)


def test_a_bin_training_never_filled_is_certain_drift_and_empty_bins_count_no_degree() -> None:
    expected = np.array([0.5, 0.5, 0.0])
    assert drift.p_value(expected, np.array([0.5, 0.4, 0.1]), 100, None) == 0.0
    # Two filled bins: one degree of freedom, the empty third adds none.
    same = drift.p_value(expected, np.array([0.6, 0.4, 0.0]), 100, None)
    assert same == pytest.approx(stats.chisquare([60, 40], [50, 50]).pvalue, rel=1e-9)
