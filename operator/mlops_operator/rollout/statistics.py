"""The statistics a rollout's analysis rests on: rates, quantiles from histogram buckets and
a one-sided two-proportion z-test. Pure functions of counts; no numpy needed."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


def normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def rate(events: float, total: float) -> float | None:
    """events / total, or None when there is nothing to divide by."""
    return events / total if total > 0 else None


@dataclass(frozen=True)
class ProportionTest:
    """Outcome of `worse_proportion_test`: the p-value of the one-sided hypothesis that the
    candidate's proportion is worse than the reference's by more than the margin."""

    z: float
    p_value: float
    candidate: float
    reference: float


def worse_proportion_test(
    candidate_hits: float,
    candidate_n: float,
    reference_hits: float,
    reference_n: float,
    margin: float = 0.0,
    higher_is_worse: bool = False,
) -> ProportionTest:
    """One-sided two-proportion z-test.

    With `higher_is_worse=False` (accuracy), H0: p_candidate >= p_reference - margin and
    H1: p_candidate < p_reference - margin; with `higher_is_worse=True` (error rate),
    H0: p_candidate <= p_reference + margin and H1: p_candidate > p_reference + margin.
    A small p-value means the candidate is worse beyond the margin. The standard error is
    unpooled (Wald) when a margin is given and pooled otherwise, as is usual for
    non-inferiority and superiority tests respectively. Both sample sizes must be > 0."""
    if candidate_n <= 0 or reference_n <= 0:
        raise ValueError("both samples need at least one observation")
    p_c = candidate_hits / candidate_n
    p_r = reference_hits / reference_n
    if margin > 0:
        variance = p_c * (1 - p_c) / candidate_n + p_r * (1 - p_r) / reference_n
    else:
        pooled = (candidate_hits + reference_hits) / (candidate_n + reference_n)
        variance = pooled * (1 - pooled) * (1 / candidate_n + 1 / reference_n)
    # How far the candidate is on the bad side of the margin, in the direction of "worse".
    excess = (p_c - p_r - margin) if higher_is_worse else (p_r - margin - p_c)
    if variance <= 0:
        # Every observation alike on both sides (all correct, or no errors at all): the
        # difference is exact, so the answer is certain either way.
        z = math.inf if excess > 0 else -math.inf
        return ProportionTest(z=z, p_value=0.0 if excess > 0 else 1.0, candidate=p_c, reference=p_r)
    z = excess / math.sqrt(variance)
    return ProportionTest(z=z, p_value=1.0 - normal_cdf(z), candidate=p_c, reference=p_r)


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile of a cumulative histogram {upper bound: count}, interpolated linearly
    inside the bucket as Prometheus' `histogram_quantile` does. None for an empty histogram;
    a quantile that falls in the +Inf bucket returns the highest finite bound."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within [0, 1], got {q}")
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def parse_bound(text: str) -> float:
    """A bucket's `le` as Prometheus writes it ("0.005", "+Inf")."""
    return math.inf if text in ("+Inf", "Inf", "inf") else float(text)
