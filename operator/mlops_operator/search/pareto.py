"""Several objectives at once: which trials no other trial beats on every objective (the
Pareto front), and which one the Experiment's declared preference picks. Pure.

The preference (docs/experiments.md): among the Pareto-optimal trials, those within every
secondary objective's `limit`; of those, the best on the primary objective (`spec.objective`).
When no Pareto-optimal trial meets the limits, the best primary value on the front is picked
(and the message says the limits were not met). A single objective reduces to "the best".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..api.ml import Objective

# Metrics a TrainingRun's status gives besides its evaluation metrics.
MODEL_SIZE = "model_size_bytes"
TRAINING_SECONDS = "training_seconds"


def objective_values(objectives: Sequence[Objective], metrics: Mapping[str, Any]) -> tuple[float, ...] | None:
    """A trial's values on each objective, in order; None when one is missing."""
    values = []
    for objective in objectives:
        value = metrics.get(objective.metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            return None
        values.append(float(value))
    return tuple(values)


def dominates(a: Sequence[float], b: Sequence[float], maximize: Sequence[bool]) -> bool:
    """Whether `a` is at least as good as `b` on every objective and better on one."""
    better = False
    for x, y, up in zip(a, b, maximize, strict=True):
        if (x < y) if up else (x > y):
            return False
        better = better or ((x > y) if up else (x < y))
    return better


def pareto_front(points: Sequence[tuple[str, tuple[float, ...]]], maximize: Sequence[bool]) -> list[str]:
    """Names of the points no other point dominates, in the order given. Each point is
    compared with the front so far only (anything dominating it is on that front, or is
    dominated by a point that is: dominance is transitive), so the cost grows with trials x
    front size; fronts are a handful of trade-offs, not most of the trials."""
    front: list[int] = []
    for i, (_, values) in enumerate(points):
        if any(dominates(points[j][1], values, maximize) for j in front):
            continue
        front = [j for j in front if not dominates(values, points[j][1], maximize)]
        front.append(i)
    return [points[j][0] for j in sorted(front)]


def within_limits(values: Sequence[float], objectives: Sequence[Objective]) -> bool:
    for value, objective in zip(values, objectives, strict=True):
        if objective.limit is None:
            continue
        if value < objective.limit if objective.goal == "maximize" else value > objective.limit:
            return False
    return True


def preference_order(points: Sequence[tuple[str, tuple[float, ...]]], objectives: Sequence[Objective]) -> list[str]:
    """Every point's name, the preferred first: Pareto-optimal within the limits, then
    Pareto-optimal, then the rest; each group by the primary objective (the first), ties
    kept in the order given."""
    maximize = [o.goal == "maximize" for o in objectives]
    front = set(pareto_front(points, maximize))
    sign = -1.0 if maximize[0] else 1.0

    def key(item: tuple[int, tuple[str, tuple[float, ...]]]) -> tuple[int, float, int]:
        position, (name, values) = item
        group = 0 if name in front and within_limits(values, objectives) else 1 if name in front else 2
        return group, sign * values[0], position

    return [name for _, (name, _) in sorted(enumerate(points), key=key)]
