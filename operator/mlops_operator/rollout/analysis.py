"""One analysis of a rollout: counters read now minus counters at the window's start, judged
against `spec.rollout.analysis`.

Every statistical check compares anytime-valid confidence bounds (`statistics`), computed on
the rollout window (everything since the rollout started), so that the chance of rolling back
a challenger that is as good as the champion stays at or under `alpha = 1 - confidence` over
the *whole* rollout: every step, every interval, however long `Inconclusive` holds it, at any
traffic level. The budget is split by the union bound: a third each to the error rate, the
latency and the online accuracy; inside a check, half to the challenger's bound and half to
the champion's (docs/canary.md has the derivation and the benchmark).

- `errorRate`: the challenger's share of 5xx answers. Fail when it is surely above
  `maxErrorRate`, or surely above the champion's. In shadow mode the mirrored requests count
  (an `error` outcome is an error).
- `latencyP95`: from the latency histograms' buckets. Fail when more than 5 % of the
  challenger's requests are surely slower than the first bucket bound at or above
  `maxP95LatencyMs` (its p95 is surely above the maximum), or when its share of requests
  slower than the champion's p95 bucket is surely larger than the champion's share by more
  than `maxLatencyTailIncrease`. The champion's p95 bucket is read from the data, so that
  comparison is corrected for every bucket it could have picked (Bonferroni).
- `onlineAccuracy`: feedback labels scored by each server. Fail when the challenger's share
  of wrong answers is surely above the champion's plus `maxAccuracyDrop`.
- `agreement` (shadow only): share of mirrored requests where both versions answered the
  same. Fail below `minAgreement` (a property of the pair, not a test).

A Fail needs no minimum sample (the bounds are valid at any count). A check that does not
fail is `Inconclusive`, which holds the step, while its step window holds fewer than
`minSampleSize` observations, or while the challenger's observed rate is beyond the limit or
the champion's upper bound without proof yet (`judge_rates`: a challenger that looks worse
gathers evidence instead of passing on thin data). The verdict is Fail if any check fails, else
Inconclusive if any check that counts is inconclusive, else Pass. With
`requireFeedback: false` an inconclusive accuracy check is reported but does not hold the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..api.inference_service import Analysis, AnalysisResult, CheckResult, CounterSnapshot, VariantCounters
from .statistics import (
    histogram_quantile,
    parse_bound,
    quantile_bucket,
    rate,
    slower_than,
    lower_bound,
    surely_higher,
    upper_bound,
)

# The share of observations above the 95th percentile.
TAIL = 0.05
# How the confidence is shared between the statistical checks (union bound).
STATISTICAL_CHECKS = 3


def counter_delta(current: float, baseline: float) -> float:
    """Increase of a counter; a counter below its baseline was reset (a pod restarted), and
    everything it counted since then is the increase, as Prometheus' `increase()` assumes."""
    return current - baseline if current >= baseline else current


def _buckets_delta(current: dict[str, float], baseline: dict[str, float]) -> dict[str, float]:
    total_now = max(current.values(), default=0.0)
    total_before = max(baseline.values(), default=0.0)
    if total_now < total_before:  # reset: the histogram restarted from zero
        return dict(current)
    return {le: max(0.0, count - baseline.get(le, 0.0)) for le, count in current.items()}


def variant_delta(current: VariantCounters, baseline: VariantCounters) -> VariantCounters:
    return VariantCounters(
        requests=counter_delta(current.requests, baseline.requests),
        errors=counter_delta(current.errors, baseline.errors),
        latency_buckets=_buckets_delta(current.latency_buckets, baseline.latency_buckets),
        feedback_correct=counter_delta(current.feedback_correct, baseline.feedback_correct),
        feedback_incorrect=counter_delta(current.feedback_incorrect, baseline.feedback_incorrect),
    )


def snapshot_delta(current: CounterSnapshot, baseline: CounterSnapshot) -> CounterSnapshot:
    return CounterSnapshot(
        time=current.time,
        champion=variant_delta(current.champion, baseline.champion),
        challenger=variant_delta(current.challenger, baseline.challenger),
        shadow_agree=counter_delta(current.shadow_agree, baseline.shadow_agree),
        shadow_disagree=counter_delta(current.shadow_disagree, baseline.shadow_disagree),
        shadow_error=counter_delta(current.shadow_error, baseline.shadow_error),
        fallbacks=counter_delta(current.fallbacks, baseline.fallbacks),
        missing=list(current.missing),
    )


def p95_ms(counters: VariantCounters) -> float | None:
    buckets = {parse_bound(le): count for le, count in counters.latency_buckets.items()}
    seconds = histogram_quantile(0.95, buckets)
    return None if seconds is None else seconds * 1000.0


@dataclass(frozen=True)
class AnalysisInput:
    """What one analysis judges: the step window's and the rollout window's increases."""

    window: CounterSnapshot
    rollout: CounterSnapshot
    mode: str  # "canary" or "shadow"


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def check_alpha(spec: Analysis) -> float:
    """The false-Fail budget of one statistical check over a whole rollout."""
    return (1.0 - spec.confidence) / STATISTICAL_CHECKS


def _challenger_errors(snapshot: CounterSnapshot, mode: str) -> tuple[float, float]:
    """(errors, requests) of the challenger in `snapshot`."""
    if mode == "shadow":
        n = snapshot.shadow_agree + snapshot.shadow_disagree + snapshot.shadow_error
        return snapshot.shadow_error, n
    return snapshot.challenger.errors, snapshot.challenger.requests


@dataclass(frozen=True)
class RateJudgement:
    """What the bounds say about a challenger's rate of bad outcomes (5xx, wrong answers)
    against a fixed limit and the champion's rate. Fields are bools (or arrays of them, for
    the benchmark's thousands of rollouts at once)."""

    above_limit: Any  # surely above the limit
    worse: Any  # surely above the champion's rate plus the margin
    suspicious: Any  # neither, but the observed rate is beyond the limit or the champion's bound
    low: Any  # the challenger's lower bound
    high: Any  # the champion's upper bound


def judge_rates(bad_c, n_c, bad_r, n_r, alpha: float, limit: float | None = None,
                margin: float = 0.0) -> RateJudgement:
    """One mechanism for every rate check. The challenger's lower bound at alpha / 2 serves
    both the limit and the champion comparison (one event covers both), the champion's upper
    bound takes the other alpha / 2. `suspicious` holds the step (Inconclusive) rather than
    letting a challenger that looks worse, without proof yet, pass on thin evidence."""
    scalar = all(np.ndim(v) == 0 for v in (bad_c, n_c, bad_r, n_r))
    bad_c, n_c, bad_r, n_r = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, dtype=np.float64))
                                                   for v in (bad_c, n_c, bad_r, n_r)))
    observed_c = np.divide(bad_c, n_c, out=np.zeros_like(bad_c), where=n_c > 0)
    observed_r = np.divide(bad_r, n_r, out=np.zeros_like(bad_r), where=n_r > 0)
    over_limit = observed_c > limit if limit is not None else np.zeros_like(observed_c, dtype=bool)
    # A bound below the observed rate cannot clear what the observed rate does not: only the
    # challengers that look worse need bounds (the benchmark judges millions of looks).
    look_worse = observed_c > observed_r + margin
    low = np.zeros_like(observed_c)
    high = np.ones_like(observed_c)
    need = over_limit | look_worse
    low[need] = lower_bound(bad_c[need], n_c[need], alpha / 2)
    high[look_worse] = upper_bound(bad_r[look_worse], n_r[look_worse], alpha / 2)
    above = over_limit & (low > (limit if limit is not None else 1.0))
    worse = look_worse & (low > high + margin) & ~above
    suspicious = ((look_worse & (observed_c > high + margin)) | over_limit) & ~above & ~worse
    if scalar:
        return RateJudgement(above_limit=bool(above[0]), worse=bool(worse[0]), suspicious=bool(suspicious[0]),
                             low=float(low[0]), high=float(high[0]))
    return RateJudgement(above_limit=above, worse=worse, suspicious=suspicious, low=low, high=high)


def check_error_rate(inp: AnalysisInput, spec: Analysis) -> CheckResult:
    alpha = check_alpha(spec)
    champion = inp.rollout.champion
    errors, n = _challenger_errors(inp.rollout, inp.mode)
    _, step_n = _challenger_errors(inp.window, inp.mode)
    base = {"name": "errorRate", "threshold": spec.max_error_rate, "samples": int(n),
            "champion": _round(rate(champion.errors, champion.requests)),
            "challenger": _round(rate(errors, n))}
    observed = f"{errors / n:.2%} ({int(errors)}/{int(n)})" if n > 0 else "unmeasured (0 requests)"
    champion_rate = rate(champion.errors, champion.requests) or 0.0
    judged = judge_rates(errors, n, champion.errors, champion.requests, alpha, limit=spec.max_error_rate)
    if judged.above_limit:
        return CheckResult(**base, verdict="Fail", message=(
            f"challenger error rate {observed}, at least {judged.low:.3%}, surely above the maximum "
            f"{spec.max_error_rate:.2%} (confidence {1 - alpha / 2:.4g}, valid at every look)"))
    if judged.worse:
        return CheckResult(**base, verdict="Fail", message=(
            f"challenger error rate {observed}, at least {judged.low:.3%}, surely above the champion's "
            f"{champion_rate:.2%}, at most {judged.high:.3%} (confidence {1 - alpha:.4g}, valid at every look)"))
    if judged.suspicious:
        return CheckResult(**base, verdict="Inconclusive", message=(
            f"challenger error rate {observed} above the maximum {spec.max_error_rate:.2%} or the champion's "
            f"{champion_rate:.2%} (at most {judged.high:.3%}), not surely yet: gathering evidence"))
    if step_n < spec.min_sample_size:
        return CheckResult(**base, verdict="Inconclusive",
                           message=f"{int(step_n)} challenger requests in this step, {spec.min_sample_size} needed")
    return CheckResult(**base, verdict="Pass", message=f"challenger error rate {observed}")


def _buckets(counters: VariantCounters) -> dict[float, float]:
    return {parse_bound(le): count for le, count in counters.latency_buckets.items()}


def _latency_fail(challenger: dict[float, float], champion: dict[float, float], spec: Analysis,
                  alpha: float) -> str | None:
    """Why the challenger's latency fails, or None."""
    n_c = max(challenger.values(), default=0.0)
    n_r = max(champion.values(), default=0.0)
    finite = sorted(b for b in challenger if not math.isinf(b))
    limit = next((b for b in finite if b * 1000.0 >= spec.max_p95_latency_ms), None)
    if limit is not None and n_c > 0 and lower_bound(slower_than(limit, challenger), n_c, alpha / 2) > TAIL:
        return (f"challenger p95 latency surely above {limit * 1000:g} ms >= the maximum "
                f"{spec.max_p95_latency_ms:g} ms (more than {TAIL:.0%} of {int(n_c)} requests slower)")
    bound = quantile_bucket(1.0 - TAIL, champion)
    if bound is None or n_c <= 0 or n_r <= 0:
        return None
    slow_c, slow_r = slower_than(bound, challenger), slower_than(bound, champion)
    worse, low, high = surely_higher(slow_c, n_c, slow_r, n_r, alpha / 2 / max(1, len(finite)),
                                     margin=spec.max_latency_tail_increase)
    if not worse:
        return None
    return (f"challenger latency distribution slower: {slow_c / n_c:.1%} of its requests (at least {low:.1%}) "
            f"took longer than {bound * 1000:g} ms, the champion's p95 bucket, against {slow_r / n_r:.1%} "
            f"(at most {high:.1%}) of the champion's, more than {spec.max_latency_tail_increase:.0%} apart")


def check_latency(inp: AnalysisInput, spec: Analysis) -> CheckResult:
    alpha = check_alpha(spec)
    challenger, champion = _buckets(inp.rollout.challenger), _buckets(inp.rollout.champion)
    step_n = max(inp.window.challenger.latency_buckets.values(), default=0.0)
    base = {"name": "latencyP95", "threshold": spec.max_p95_latency_ms,
            "samples": int(max(challenger.values(), default=0.0)),
            "champion": _round(p95_ms(inp.rollout.champion), 2)}
    if inp.mode == "shadow" and "challenger" in inp.window.missing:  # timed by its server
        return CheckResult(**base, verdict="Inconclusive", message="challenger server metrics unavailable")
    p95 = p95_ms(inp.rollout.challenger)
    base["challenger"] = _round(p95, 2)
    if (why := _latency_fail(challenger, champion, spec, alpha)) is not None:
        return CheckResult(**base, verdict="Fail", message=why)
    if step_n < spec.min_sample_size:
        return CheckResult(**base, verdict="Inconclusive",
                           message=f"{int(step_n)} timed challenger requests in this step, "
                                   f"{spec.min_sample_size} needed")
    return CheckResult(**base, verdict="Pass", message=f"challenger p95 latency {p95 or 0.0:.1f} ms")


def check_accuracy(inp: AnalysisInput, spec: Analysis) -> CheckResult:
    alpha = check_alpha(spec)
    challenger, champion = inp.rollout.challenger, inp.rollout.champion
    n_c = challenger.feedback_correct + challenger.feedback_incorrect
    n_r = champion.feedback_correct + champion.feedback_incorrect
    base = {"name": "onlineAccuracy", "threshold": spec.max_accuracy_drop, "samples": int(min(n_c, n_r)),
            "champion": _round(rate(champion.feedback_correct, n_r)),
            "challenger": _round(rate(challenger.feedback_correct, n_c))}
    if inp.window.missing:
        base.update(champion=None, challenger=None)
        return CheckResult(**base, verdict="Inconclusive",
                           message=f"{' and '.join(inp.window.missing)} server metrics unavailable")
    summary = (f"online accuracy challenger {rate(challenger.feedback_correct, n_c) or 0.0:.2%} ({int(n_c)} labels) "
               f"vs champion {rate(champion.feedback_correct, n_r) or 0.0:.2%} ({int(n_r)} labels)")
    judged = judge_rates(challenger.feedback_incorrect, n_c, champion.feedback_incorrect, n_r, alpha,
                         margin=spec.max_accuracy_drop)
    if judged.worse:
        return CheckResult(**base, verdict="Fail", message=(
            f"{summary}: the challenger's wrong answers, at least {judged.low:.2%}, surely exceed the champion's, "
            f"at most {judged.high:.2%}, by more than {spec.max_accuracy_drop:.2%} (confidence {1 - alpha:.4g}, "
            f"valid at every look)"))
    if judged.suspicious:
        return CheckResult(**base, verdict="Inconclusive", message=(
            f"{summary}: the challenger's wrong answers exceed the champion's bound {judged.high:.2%} by more "
            f"than {spec.max_accuracy_drop:.2%}, not surely yet: gathering evidence"))
    if n_c < spec.min_sample_size or n_r < spec.min_sample_size:
        return CheckResult(**base, verdict="Inconclusive", message=(
            f"feedback labels: challenger {int(n_c)}, champion {int(n_r)}; {spec.min_sample_size} each needed"))
    return CheckResult(**base, verdict="Pass", message=summary)


def check_agreement(inp: AnalysisInput, spec: Analysis) -> CheckResult:
    w = inp.window
    n = w.shadow_agree + w.shadow_disagree
    base = {"name": "agreement", "threshold": spec.min_agreement, "samples": int(n)}
    if n < spec.min_sample_size:
        return CheckResult(**base, verdict="Inconclusive",
                           message=f"{int(n)} compared answers, {spec.min_sample_size} needed")
    share = w.shadow_agree / n
    base["challenger"] = _round(share)
    if share < spec.min_agreement:
        return CheckResult(**base, verdict="Fail", message=(
            f"versions agree on {share:.2%} of mirrored requests, below {spec.min_agreement:.2%}"))
    return CheckResult(**base, verdict="Pass", message=f"versions agree on {share:.2%} of mirrored requests")


def analyse(inp: AnalysisInput, spec: Analysis, time: str, step: int, weight: int) -> AnalysisResult:
    checks = [check_error_rate(inp, spec), check_latency(inp, spec), check_accuracy(inp, spec)]
    if inp.mode == "shadow":
        checks.append(check_agreement(inp, spec))
    counted = [c for c in checks if spec.require_feedback or c.name != "onlineAccuracy"]
    if any(c.verdict == "Fail" for c in checks):
        verdict = "Fail"
    elif any(c.verdict == "Inconclusive" for c in counted):
        verdict = "Inconclusive"
    else:
        verdict = "Pass"
    relevant = [c for c in checks if c.verdict == verdict] if verdict != "Pass" else checks
    message = "; ".join(c.message for c in relevant)
    return AnalysisResult(time=time, step=step, weight=weight, verdict=verdict, checks=checks, message=message)


def decisive_metrics(result: AnalysisResult) -> dict[str, float]:
    """The numbers a history entry keeps: each check's challenger and champion values."""
    numbers: dict[str, float] = {}
    for check in result.checks:
        if check.challenger is not None:
            numbers[f"{check.name}.challenger"] = check.challenger
        if check.champion is not None:
            numbers[f"{check.name}.champion"] = check.champion
        if check.p_value is not None:
            numbers[f"{check.name}.pValue"] = check.p_value
    return numbers
