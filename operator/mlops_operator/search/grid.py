"""Grid search: the full factorial of every dimension's grid values, in a fixed order."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .space import Dimension


def grid_size(dims: Sequence[Dimension]) -> int:
    return math.prod(len(d.grid_values()) for d in dims) if dims else 1


def grid_point(dims: Sequence[Dimension], index: int) -> dict[str, Any] | None:
    """The `index`-th (1-based) point of the factorial, the last dimension varying fastest;
    None past the end of the grid."""
    grids = [d.grid_values() for d in dims]
    size = math.prod(len(g) for g in grids) if grids else 1
    if not 1 <= index <= size:
        return None
    rest = index - 1
    point: dict[str, Any] = {}
    for dim, values in zip(reversed(dims), reversed(grids)):
        rest, k = divmod(rest, len(values))
        point[dim.name] = values[k]
    return {d.name: point[d.name] for d in dims}
