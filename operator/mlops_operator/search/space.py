"""A search space as a list of dimensions: a point of the unit cube -> hyperparameter values
(to sample), the finite dimensions' values (to sample without repeats), and a canonical key
of a point (to recognise one already tried).

Dimensions are ordered by parameter name, so the same space always has the same layout."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..api.experiment import SearchParameter

# A grid over a range without `step` takes this many points (ends included).
GRID_POINTS_PER_RANGE = 5
# Floats are rounded to this many significant digits: readable params, stable JSON.
SIGNIFICANT_DIGITS = 6


@dataclass(frozen=True)
class Dimension:
    name: str
    parameter: SearchParameter

    @property
    def levels(self) -> int | None:
        """How many distinct values the dimension has (None: a continuous float range)."""
        p = self.parameter
        if p.values is not None:
            return len(p.values)
        lo, hi = float(p.min), float(p.max)  # type: ignore[arg-type]
        if p.step is not None:
            return int(math.floor((hi - lo) / p.step + 1e-9)) + 1
        if p.is_int:
            return max(1, int(math.floor(hi)) - int(math.ceil(lo)) + 1)
        return None

    def level(self, k: int) -> Any:
        """The k-th (0-based) value of a dimension with `levels`."""
        p = self.parameter
        if p.values is not None:
            return p.values[k]
        lo = float(p.min)  # type: ignore[arg-type]
        if p.step is not None:
            return self.snap(lo + k * p.step)
        return int(math.ceil(lo)) + k

    def level_values(self) -> list[Any]:
        """Every value of a finite dimension, in order."""
        count = self.levels
        if count is None:
            raise ValueError(f"{self.name}: a continuous range has no finite list of values")
        return [self.level(k) for k in range(count)]

    def value_at(self, u: float) -> Any:
        """The value at position `u` in [0, 1]: uniform or log-uniform over the range. A
        finite dimension (values, ints, steps) gives each of its values an equal share of
        [0, 1) (log-uniform ints: a share proportional to log((k + 1) / k)), so the end
        values come as often as the others; rounding a continuous draw would give them half."""
        p = self.parameter
        u = min(max(u, 0.0), 1.0)
        count = self.levels
        lo, hi = (float(p.min), float(p.max)) if p.values is None else (0.0, 0.0)  # type: ignore[arg-type]
        if p.distribution == "logUniform" and p.values is None:
            if p.is_int and p.step is None:
                # Discrete log-uniform: the continuous one over [lo, hi + 1), floored.
                x = math.exp(math.log(lo) + u * (math.log(hi + 1) - math.log(lo)))
                return int(min(math.floor(x), math.floor(hi)))
            return self.snap(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))))
        if count is not None:
            return self.level(min(int(u * count), count - 1))
        return self.snap(lo + u * (hi - lo))

    def snap(self, x: float) -> Any:
        p = self.parameter
        lo, hi = float(p.min), float(p.max)  # type: ignore[arg-type]
        if p.step is not None:
            x = lo + round((x - lo) / p.step) * p.step
            while x > hi + 1e-12:
                x -= p.step
        x = min(max(x, lo), hi)
        if p.is_int:
            return int(round(x))
        return round_significant(x)

    def grid_values(self) -> list[Any]:
        """The values a grid search visits for this dimension."""
        p = self.parameter
        if p.values is not None:
            return list(p.values)
        lo, hi = float(p.min), float(p.max)  # type: ignore[arg-type]
        if p.step is not None or (p.is_int and hi - lo + 1 <= GRID_POINTS_PER_RANGE):
            return _unique(self.level_values())
        n = GRID_POINTS_PER_RANGE
        if p.distribution == "logUniform":
            values = [self.snap(math.exp(math.log(lo) + k / (n - 1) * (math.log(hi) - math.log(lo))))
                      for k in range(n)]
        else:
            values = [self.snap(lo + k / (n - 1) * (hi - lo)) for k in range(n)]
        return _unique(values)


def dimensions(space: Mapping[str, SearchParameter]) -> list[Dimension]:
    return [Dimension(name, space[name]) for name in sorted(space)]


def finite_size(dims: Sequence[Dimension]) -> int | None:
    """How many distinct points the space has (None when a dimension is continuous)."""
    size = 1
    for dim in dims:
        count = dim.levels
        if count is None:
            return None
        size *= count
    return size


def point_key(dims: Sequence[Dimension], params: Mapping[str, Any]) -> str:
    """A canonical text of a point's searched values: two trials with the same key ran the
    same hyperparameters (values compared as they come back from JSON)."""
    return json.dumps([_canonical(params.get(dim.name)) for dim in dims], sort_keys=True, default=str)


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, float):
        return round_significant(value)
    return value


def round_significant(x: float) -> float:
    if x == 0 or not math.isfinite(x):
        return float(x)
    return float(f"{x:.{SIGNIFICANT_DIGITS}g}")


def same_value(a: Any, b: Any) -> bool:
    # 1 == 1.0 == True in Python; a categorical list may hold both True and 1.
    return type(a) is type(b) and a == b or (
        isinstance(a, (int, float)) and isinstance(b, (int, float))
        and not isinstance(a, bool) and not isinstance(b, bool) and a == b
    )


def _unique(values: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if not any(same_value(v, s) for s in seen):
            seen.append(v)
    return seen
