"""A search space as a list of dimensions, and the two maps every algorithm needs: a point of
the unit cube -> hyperparameter values (to sample), and values -> unit cube (to model).

Dimensions are ordered by parameter name, so the same space always has the same layout."""

from __future__ import annotations

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
    def categorical(self) -> bool:
        return not self.parameter.is_range

    @property
    def width(self) -> int:
        """Columns in the unit-cube encoding: one-hot for categorical values."""
        values = self.parameter.values
        return len(values) if values is not None else 1

    def value_at(self, u: float) -> Any:
        """The value at position `u` in [0, 1] (uniform or log-uniform over the range,
        snapped to `step`, rounded for `int`)."""
        p = self.parameter
        u = min(max(u, 0.0), 1.0)
        if p.values is not None:
            return p.values[min(int(u * len(p.values)), len(p.values) - 1)]
        lo, hi = float(p.min), float(p.max)  # type: ignore[arg-type]
        if p.distribution == "logUniform":
            x = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
        else:
            x = lo + u * (hi - lo)
        return self.snap(x)

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

    def encode(self, value: Any) -> list[float]:
        """`value` -> its columns in the unit cube (the inverse of `value_at`)."""
        p = self.parameter
        if p.values is not None:
            return [1.0 if _same(value, v) else 0.0 for v in p.values]
        lo, hi = float(p.min), float(p.max)  # type: ignore[arg-type]
        try:
            x = float(value)
        except (TypeError, ValueError):
            return [0.5]
        if hi == lo:
            return [0.5]
        if p.distribution == "logUniform":
            x = max(x, lo)
            return [(math.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo))]
        return [(x - lo) / (hi - lo)]

    def decode(self, columns: Sequence[float]) -> Any:
        """Columns of the unit cube -> a value (argmax for one-hot categorical)."""
        p = self.parameter
        if p.values is not None:
            best = max(range(len(columns)), key=lambda i: (columns[i], -i))
            return p.values[best]
        return self.value_at(float(columns[0]))

    def grid_values(self) -> list[Any]:
        """The values a grid search visits for this dimension."""
        p = self.parameter
        if p.values is not None:
            return list(p.values)
        lo, hi = float(p.min), float(p.max)  # type: ignore[arg-type]
        if p.step is not None:
            count = int(math.floor((hi - lo) / p.step + 1e-9)) + 1
            values = [self.snap(lo + k * p.step) for k in range(count)]
        elif p.is_int and hi - lo + 1 <= GRID_POINTS_PER_RANGE:
            values = list(range(int(math.ceil(lo)), int(math.floor(hi)) + 1))
        else:
            n = GRID_POINTS_PER_RANGE
            values = [self.value_at(k / (n - 1)) for k in range(n)]
        return _unique(values)


def dimensions(space: Mapping[str, SearchParameter]) -> list[Dimension]:
    return [Dimension(name, space[name]) for name in sorted(space)]


def encode_point(dims: Sequence[Dimension], params: Mapping[str, Any]) -> list[float]:
    row: list[float] = []
    for dim in dims:
        row.extend(dim.encode(params.get(dim.name)))
    return row


def decode_point(dims: Sequence[Dimension], row: Sequence[float]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    at = 0
    for dim in dims:
        params[dim.name] = dim.decode(row[at : at + dim.width])
        at += dim.width
    return params


def round_significant(x: float) -> float:
    if x == 0 or not math.isfinite(x):
        return float(x)
    return float(f"{x:.{SIGNIFICANT_DIGITS}g}")


def _same(a: Any, b: Any) -> bool:
    # 1 == 1.0 == True in Python; a categorical list may hold both True and 1.
    return type(a) is type(b) and a == b or (
        isinstance(a, (int, float)) and isinstance(b, (int, float))
        and not isinstance(a, bool) and not isinstance(b, bool) and a == b
    )


def _unique(values: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if not any(_same(v, s) for s in seen):
            seen.append(v)
    return seen
