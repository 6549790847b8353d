"""Bayesian optimisation: a Gaussian process (scikit-learn) fitted to the completed trials
in the unit cube, and expected improvement maximised over a seeded candidate set.

Deterministic: the candidates come from (seed, index), the GP's optimiser starts from the
same kernel and has no random restarts, so the same history gives the same proposal."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from .random_search import STREAM_CANDIDATES, rng_for
from .space import Dimension, decode_point, encode_point

CANDIDATES = 512
# Exploration margin of expected improvement, in units of the normalised objective.
XI = 0.01


def bayesian_point(
    dims: Sequence[Dimension],
    history: Sequence[tuple[dict[str, Any], float]],
    maximize: bool,
    seed: int,
    index: int,
) -> dict[str, Any]:
    """Propose trial `index` from `history` [(params, objective)] in trial-index order."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    x = np.array([encode_point(dims, params) for params, _ in history], dtype=float)
    y = np.array([value if maximize else -value for _, value in history], dtype=float)
    kernel = ConstantKernel(1.0, (1e-3, 1e3)) * Matern(length_scale=0.5, length_scale_bounds=(1e-2, 1e2), nu=2.5) \
        + WhiteKernel(1e-4, (1e-8, 1e-1))
    gp = GaussianProcessRegressor(kernel=kernel, normalize_y=True, n_restarts_optimizer=0, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp.fit(x, y)
    candidates = _candidates(dims, seed, index)
    mean, std = gp.predict(candidates, return_std=True)
    scores = expected_improvement(mean, std, float(y.max()), float(np.std(y)) or 1.0)
    # Do not propose a point already tried: the GP would learn nothing new.
    tried = {tuple(np.round(row, 9)) for row in x}
    order = np.argsort(-scores, kind="stable")
    for k in order:
        row = candidates[k]
        point = decode_point(dims, row)
        if tuple(np.round(encode_point(dims, point), 9)) not in tried:
            return point
    return decode_point(dims, candidates[order[0]])


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float, scale: float) -> np.ndarray:
    """EI of each candidate over `best` (maximising), with margin XI * scale."""
    std = np.maximum(std, 1e-12)
    improvement = mean - best - XI * scale
    z = improvement / std
    from scipy.special import ndtr

    cdf = ndtr(z)
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return improvement * cdf + std * pdf


def _candidates(dims: Sequence[Dimension], seed: int, index: int) -> np.ndarray:
    """Random points of the unit cube, snapped to real parameter values (steps, ints,
    categories) so the GP scores what would actually run."""
    rng = rng_for(seed, index, STREAM_CANDIDATES)
    rows = []
    for u in rng.random((CANDIDATES, len(dims))):
        point = {dim.name: dim.value_at(float(v)) for dim, v in zip(dims, u)}
        rows.append(encode_point(dims, point))
    return np.array(rows, dtype=float)
