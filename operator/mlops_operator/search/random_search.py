"""Random search: trial i's point depends only on (seed, i), never on what ran before, so
every restart and every replica proposes the same trial i."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .space import Dimension

# Stream tags keep the random proposals and the bayesian candidates independent.
STREAM_RANDOM = 0
STREAM_CANDIDATES = 1


def rng_for(seed: int, index: int, stream: int = STREAM_RANDOM) -> np.random.Generator:
    return np.random.default_rng([seed, index, stream])


def random_point(dims: Sequence[Dimension], seed: int, index: int) -> dict[str, Any]:
    rng = rng_for(seed, index)
    return {dim.name: dim.value_at(float(u)) for dim, u in zip(dims, rng.random(len(dims)))}
