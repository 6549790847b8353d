"""Random search: trial i's point is drawn from a generator seeded by (seed, i), and redrawn
(attempt 1, 2, ... of the same stream family) while it equals a trial already started, so a
finite space is sampled without repeats. Every input is recorded (the seed in the spec, the
started trials in the cluster), so every restart and every replica proposes the same trial i."""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from .space import Dimension, finite_size, point_key

# Stream tags keep the random proposals and the TPE sampler's seeds independent.
STREAM_RANDOM = 0
STREAM_TPE = 1
# Redraws before a nearly exhausted finite space is enumerated instead.
REDRAWS = 32
# Finite spaces up to this size are enumerated once the redraws keep hitting tried points.
ENUMERATION_LIMIT = 200_000


def rng_for(seed: int, index: int, stream: int = STREAM_RANDOM, attempt: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, index, stream, attempt])


def draw(dims: Sequence[Dimension], seed: int, index: int, attempt: int = 0) -> dict[str, Any]:
    rng = rng_for(seed, index, STREAM_RANDOM, attempt)
    return {dim.name: dim.value_at(float(u)) for dim, u in zip(dims, rng.random(len(dims)))}


def random_point(dims: Sequence[Dimension], seed: int, index: int, tried: Collection[str] = ()) -> dict[str, Any]:
    """A uniform point of the space that is not among `tried` (keys from `point_key`).
    Raises ValueError when a finite space has no untried point left."""
    for attempt in range(REDRAWS):
        point = draw(dims, seed, index, attempt)
        if point_key(dims, point) not in tried:
            return point
    size = finite_size(dims)
    if size is None:
        return point  # a continuous space: a repeat this unlikely is the space's own doing
    if size > ENUMERATION_LIMIT:
        raise ValueError(f"cannot find an untried point in {size} after {REDRAWS} draws")
    left = [dict(zip([d.name for d in dims], values))
            for values in itertools.product(*(d.level_values() for d in dims))]
    left = [p for p in left if point_key(dims, p) not in tried]
    if not left:
        raise ValueError(f"every one of the {size} points of the space has been tried")
    return left[int(rng_for(seed, index, STREAM_RANDOM, REDRAWS).integers(len(left)))]
