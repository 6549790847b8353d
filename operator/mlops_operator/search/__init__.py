"""Hyperparameter proposals as pure functions.

`propose(search, history, index, maximize)` returns the parameters of trial `index` (1-based)
from the search space, the completed trials' (params, objective) in trial-index order and
the seed. The same inputs always give the same proposal, so an operator restarted in the
middle of an experiment never launches a different trial than it would have.

- grid: the full factorial of the dimensions' values (ranges without `step` contribute
  GRID_POINTS_PER_RANGE points); trial i is the i-th point; the grid size caps the trials.
- random: trial i is drawn from a generator seeded by (seed, i).
- bayesian: random for the first `initialRandomTrials` trials (and while fewer than two
  trials have an objective value), then a Gaussian process with expected improvement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..api.experiment import Search
from .grid import grid_point, grid_size
from .random_search import random_point
from .space import GRID_POINTS_PER_RANGE, dimensions

History = Sequence[tuple[dict[str, Any], float]]

# The GP needs at least this many observed objective values to say anything.
MIN_HISTORY_FOR_MODEL = 2


def search_size(search: Search) -> int | None:
    """How many distinct trials the algorithm can propose (None: unbounded)."""
    if search.algorithm == "grid":
        return grid_size(dimensions(search.space))
    return None


def trial_budget(search: Search) -> int:
    """The number of trials the experiment will run at most."""
    size = search_size(search)
    return search.max_trials if size is None else min(search.max_trials, size)


def propose(search: Search, history: History, index: int, maximize: bool = True) -> dict[str, Any]:
    """Parameters (the search space's part only) of trial `index`. Raises ValueError past
    the end of a grid."""
    if index < 1:
        raise ValueError(f"trial index starts at 1, got {index}")
    dims = dimensions(search.space)
    if not dims:
        return {}
    if search.algorithm == "grid":
        point = grid_point(dims, index)
        if point is None:
            raise ValueError(f"trial {index} is past the end of the grid ({grid_size(dims)} points)")
        return point
    if search.algorithm == "random" or index <= search.initial_random_trials or len(history) < MIN_HISTORY_FOR_MODEL:
        return random_point(dims, search.seed, index)
    from .bayesian import bayesian_point

    return bayesian_point(dims, history, maximize, search.seed, index)


__all__ = ["GRID_POINTS_PER_RANGE", "History", "propose", "search_size", "trial_budget"]
