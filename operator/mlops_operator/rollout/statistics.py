"""The statistics a rollout's analysis rests on: rates, quantiles from histogram buckets and
anytime-valid confidence bounds for proportions.

A canary is looked at every interval, for as long as it takes, so a fixed-sample test (a
z-test, or Fisher's at a fixed level) would be checked again and again and its error rate
would grow with every look. The bounds here are *confidence sequences*: with probability at
least 1 - alpha they hold at every sample size at once, however often and whenever they are
read. They come from the beta-binomial mixture martingale (Robbins 1970; Howard, Ramdas,
McAuliffe and Sekhon 2021, "Time-uniform, nonparametric, nonasymptotic confidence
sequences", Ann. Statist. 49(2)): for the true proportion p0, the mixture over a Beta prior
of the likelihood ratios of p against p0 is a nonnegative martingale with mean one, and
Ville's inequality says it ever reaches 1/alpha with probability at most alpha. Restricting
the prior to one side of p0 gives a one-sided bound; the lower bound is the largest p0 that
the martingale of "p <= p0" has already rejected. Nothing is approximated: the bounds are
exact for any number of observations, 0 and 1 events included.

The functions take scalars or numpy arrays (the benchmark judges thousands of simulated
rollouts at once).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy.special import betainc, betaincc, betaln

# Jeffreys' prior: symmetric, with mass near 0 and 1 where error rates and accuracies live.
PRIOR = 0.5
# The lower bound is searched within this many e-folds below the observed rate, to within
# 1e-10 of its logarithm.
_LOG_SPAN = 60.0
_ITERATIONS = 60
_TINY = 1e-15


def rate(events: float, total: float) -> float | None:
    """events / total, or None when there is nothing to divide by."""
    return events / total if total > 0 else None


def _log_evidence(hits: np.ndarray, n: np.ndarray, p0: np.ndarray, above: bool) -> np.ndarray:
    """log of the one-sided mixture martingale against "p <= p0" (`above`: the Beta(PRIOR,
    PRIOR) prior restricted to (p0, 1)) or against "p >= p0" (restricted to (0, p0)),
    integrated over the likelihood ratio of p to p0."""
    a, b = PRIOR + hits, PRIOR + n - hits
    tail = betaincc if above else betainc
    with np.errstate(divide="ignore", invalid="ignore"):
        posterior_tail = np.log(tail(a, b, p0))
        prior_tail = np.log(tail(PRIOR, PRIOR, p0))
        likelihood_p0 = hits * np.log(p0) + (n - hits) * np.log1p(-p0)
    return betaln(a, b) - betaln(PRIOR, PRIOR) + posterior_tail - prior_tail - likelihood_p0


def _bound(hits, n, alpha: float, above: bool):
    hits, n = np.broadcast_arrays(np.asarray(hits, dtype=np.float64), np.asarray(n, dtype=np.float64))
    # Simulations repeat the same counts many times: solve each distinct pair once.
    pairs, inverse = np.unique(np.stack([hits.ravel(), n.ravel()]), axis=1, return_inverse=True)
    x, m = pairs
    # No hit bounds nothing from below, no miss nothing from above, no observation neither.
    solvable = (m > 0) & ((x > 0) if above else (x < m))
    solved = np.full(x.shape, 0.0 if above else 1.0)
    if solvable.any():
        solved[solvable] = _solve(x[solvable], m[solvable], math.log(1.0 / alpha), above)
    bound = solved[inverse.ravel()].reshape(hits.shape)
    return float(bound) if bound.ndim == 0 else bound


def _solve(x: np.ndarray, m: np.ndarray, threshold: float, above: bool) -> np.ndarray:
    """The p0 where the evidence falls to `threshold`, between the observed rate (not
    rejected) and the far end (rejected). Illinois regula falsi on log p0, where the evidence
    is smooth and monotone: a dozen steps instead of fifty bisections. The rejected end of
    the final bracket is returned, so the bound errs on the safe side."""
    def excess(t: np.ndarray) -> np.ndarray:
        return _log_evidence(x, m, np.exp(t), above) - threshold

    rate = np.clip(x / m, _TINY, 1.0 - _TINY)
    near = np.log(rate)  # the accepted end
    far = near - _LOG_SPAN if above else np.full_like(near, math.log1p(-_TINY))  # the rejected end
    f_near, f_far = excess(near), excess(far)
    at_rate = f_near >= 0  # already rejected at the observed rate: the bound is the rate
    stale = np.zeros_like(x)
    for _ in range(_ITERATIONS):
        t = np.where(f_near != f_far, near - f_near * (near - far) / (f_near - f_far), 0.5 * (near + far))
        t = np.clip(t, np.minimum(near, far), np.maximum(near, far))
        f_t = excess(t)
        rejected = f_t >= 0
        # Illinois: halve the value kept at a stale end so the bracket shrinks from both sides.
        f_near = np.where(rejected, np.where(stale == 1, 0.5 * f_near, f_near), f_t)
        f_far = np.where(rejected, f_t, np.where(stale == -1, 0.5 * f_far, f_far))
        stale = np.where(rejected, 1, -1)
        far = np.where(rejected, t, far)
        near = np.where(rejected, near, t)
        if np.all(np.abs(near - far) < 1e-10):
            break
    return np.where(at_rate, x / m, np.exp(far))


def lower_bound(hits, n, alpha: float):
    """Anytime-valid lower confidence bound of a proportion from `hits` of `n` (0 when n is 0
    or no hit was seen): with probability >= 1 - alpha the true proportion is at least this
    at every n."""
    return _bound(hits, n, alpha, above=True)


def upper_bound(hits, n, alpha: float):
    """Anytime-valid upper confidence bound (1 when n is 0 or every observation was a hit)."""
    return _bound(hits, n, alpha, above=False)


def surely_higher(hits_c, n_c, hits_r, n_r, alpha: float, margin: float = 0.0):
    """Whether the candidate's proportion is higher than the reference's by more than
    `margin`, with anytime-valid confidence 1 - alpha: the candidate's lower bound is above
    the reference's upper bound plus the margin, each bound at alpha / 2 (so the chance of a
    wrong "higher" is at most alpha whenever and however often it is asked).

    Returns (verdict, candidate lower bound, reference upper bound)."""
    low = lower_bound(hits_c, n_c, alpha / 2)
    high = upper_bound(hits_r, n_r, alpha / 2)
    verdict = np.asarray(low) > np.asarray(high) + margin
    return (bool(verdict) if verdict.ndim == 0 else verdict), low, high


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
    lower_bound_, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound_
            if count == lower_count:
                return bound
            return lower_bound_ + (bound - lower_bound_) * (rank - lower_count) / (count - lower_count)
        lower_bound_, lower_count = bound, count
    return lower_bound_


def quantile_bucket(q: float, buckets: Mapping[float, float]) -> float | None:
    """The upper bound of the bucket that holds the q-quantile (the smallest finite bound
    with at least q of the observations at or below it), or None when there is none."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    for bound, count in ordered:
        if count >= q * total and not math.isinf(bound):
            return bound
    return None


def slower_than(bound: float, buckets: Mapping[float, float]) -> float:
    """How many observations of a cumulative histogram lie above `bound` (one of its bounds)."""
    ordered = sorted(buckets.items())
    if not ordered:
        return 0.0
    total = ordered[-1][1]
    at_or_below = max((count for b, count in ordered if b <= bound), default=0.0)
    return max(0.0, total - at_or_below)


def parse_bound(text: str) -> float:
    """A bucket's `le` as Prometheus writes it ("0.005", "+Inf")."""
    return math.inf if text in ("+Inf", "Inf", "inf") else float(text)
