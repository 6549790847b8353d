"""Hyperparameter proposals as pure functions.

`propose(search, history, index, maximize)` returns the parameters of trial `index` (1-based)
from the search space, the trials started before it as (params, objective value or None for
a trial without one: running or failed) in trial-index order, and the seed. The same inputs
always give the same proposal, so an operator restarted in the middle of an experiment never
launches a different trial than it would have.

- grid: the full factorial of the dimensions' values (ranges without `step` contribute
  GRID_POINTS_PER_RANGE points); trial i is the i-th point; the grid size caps the trials.
- random: trial i is drawn from a generator seeded by (seed, i), redrawn while it repeats a
  started trial; every value of a finite dimension has the same chance, end values included.
  A finite space caps the trials at its size.
- bayesian: random until `initialRandomTrials` trials are known (started here, or taken
  from the Experiments in `warmStartFrom`) and two have an objective value, then optuna's
  TPE (see `bayesian`; multi-objective when there are several goals), falling back to the
  random point when TPE proposes a point already started.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..api.experiment import Search
from .grid import grid_point, grid_size
from .random_search import random_point
from .space import GRID_POINTS_PER_RANGE, dimensions, finite_size, point_key

# (params, objective value, or one value per objective, or None when it has none), in order.
History = Sequence[tuple[Mapping[str, Any], float | tuple[float, ...] | None]]

# TPE needs at least this many observed objective values to say anything.
MIN_HISTORY_FOR_MODEL = 2


def search_size(search: Search) -> int | None:
    """How many distinct trials the algorithm can propose (None: unbounded)."""
    dims = dimensions(search.space)
    if search.algorithm == "grid":
        return grid_size(dims)
    return finite_size(dims)


def trial_budget(search: Search) -> int:
    """The number of trials the experiment will run at most."""
    size = search_size(search)
    return search.max_trials if size is None else min(search.max_trials, size)


def propose(search: Search, history: History, index: int, maximize: bool | Sequence[bool] = True) -> dict[str, Any]:
    """Parameters (the search space's part only) of trial `index`; `maximize` holds one goal
    per objective when there are several. `history` may start with the trials of the
    Experiments in `search.warmStartFrom`. Raises ValueError past the end of a grid or of a
    finite space."""
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
    tried = {point_key(dims, params) for params, _ in history}
    scored = sum(value is not None for _, value in history)
    # The model starts once initialRandomTrials trials are known (a warm start's count too).
    if search.algorithm == "bayesian" and len(history) >= search.initial_random_trials \
            and scored >= MIN_HISTORY_FOR_MODEL:
        from .bayesian import tpe_point

        point = tpe_point(dims, history, maximize, search.seed, index)
        if point_key(dims, point) not in tried:
            return point
    return random_point(dims, search.seed, index, tried)


__all__ = ["GRID_POINTS_PER_RANGE", "History", "propose", "search_size", "trial_budget"]
