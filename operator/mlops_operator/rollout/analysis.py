"""One analysis of a rollout: counters read now minus counters at the window's start, judged
against `spec.rollout.analysis`.

Checks and their windows:

- `errorRate` (step window): the challenger's share of 5xx answers. Fail when it exceeds
  `maxErrorRate`, or when a one-sided two-proportion test says it is higher than the
  champion's. In shadow mode the mirrored requests count (an `error` outcome is an error).
- `latencyP95` (step window): the challenger's p95 from the router's latency histogram.
  Fail above `maxP95LatencyMs`.
- `onlineAccuracy` (rollout window, so evidence accumulates across steps): feedback labels
  scored by each server. Fail when a one-sided two-proportion test says the challenger is
  worse than the champion by more than `maxAccuracyDrop`.
- `agreement` (shadow only): share of mirrored requests where both versions answered the
  same. Fail below `minAgreement`.

A check with fewer than `minSampleSize` observations is `Inconclusive`. The verdict is Fail
if any check fails, else Inconclusive if any check that counts is inconclusive, else Pass.
With `requireFeedback: false` an inconclusive accuracy check is reported but does not hold
the step.

The tests are repeated at every analysis of a rollout on growing data, which inflates the
chance of a false alarm; the significance level of each test is therefore
`(1 - confidence) / planned analyses` (Bonferroni over the steps, or the shadow iterations),
which keeps the chance of rolling back a version that is not worse below `1 - confidence`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..api.inference_service import Analysis, AnalysisResult, CheckResult, CounterSnapshot, VariantCounters
from .statistics import histogram_quantile, parse_bound, rate, worse_proportion_test


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
    planned_analyses: int


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def check_error_rate(inp: AnalysisInput, spec: Analysis, alpha: float) -> CheckResult:
    champion = inp.window.champion
    if inp.mode == "shadow":
        w = inp.window
        n = w.shadow_agree + w.shadow_disagree + w.shadow_error
        errors = w.shadow_error
    else:
        n, errors = inp.window.challenger.requests, inp.window.challenger.errors
    base = {"name": "errorRate", "threshold": spec.max_error_rate, "samples": int(n),
            "champion": _round(rate(champion.errors, champion.requests))}
    if n < spec.min_sample_size:
        return CheckResult(**base, verdict="Inconclusive",
                           message=f"{int(n)} challenger requests, {spec.min_sample_size} needed")
    challenger_rate = errors / n
    base["challenger"] = _round(challenger_rate)
    if challenger_rate > spec.max_error_rate:
        return CheckResult(**base, verdict="Fail", message=(
            f"challenger error rate {challenger_rate:.2%} ({int(errors)}/{int(n)}) "
            f"above the maximum {spec.max_error_rate:.2%}"))
    if champion.requests >= spec.min_sample_size:
        test = worse_proportion_test(errors, n, champion.errors, champion.requests, higher_is_worse=True)
        base["p_value"] = _round(test.p_value, 6)
        if test.p_value < alpha:
            return CheckResult(**base, verdict="Fail", message=(
                f"challenger error rate {challenger_rate:.2%} higher than the champion's "
                f"{test.reference:.2%} (p={test.p_value:.2g} < {alpha:.2g})"))
    return CheckResult(**base, verdict="Pass", message=f"challenger error rate {challenger_rate:.2%}")


def check_latency(inp: AnalysisInput, spec: Analysis) -> CheckResult:
    challenger = inp.window.challenger
    n = max(challenger.latency_buckets.values(), default=0.0)
    base = {"name": "latencyP95", "threshold": spec.max_p95_latency_ms, "samples": int(n),
            "champion": _round(p95_ms(inp.window.champion), 2)}
    if inp.mode == "shadow" and "challenger" in inp.window.missing:  # timed by its server
        return CheckResult(**base, verdict="Inconclusive", message="challenger server metrics unavailable")
    if n < spec.min_sample_size:
        return CheckResult(**base, verdict="Inconclusive",
                           message=f"{int(n)} timed challenger requests, {spec.min_sample_size} needed")
    p95 = p95_ms(challenger)
    base["challenger"] = _round(p95, 2)
    if p95 is not None and p95 > spec.max_p95_latency_ms:
        return CheckResult(**base, verdict="Fail", message=(
            f"challenger p95 latency {p95:.1f} ms above the maximum {spec.max_p95_latency_ms:g} ms"))
    return CheckResult(**base, verdict="Pass", message=f"challenger p95 latency {p95 or 0.0:.1f} ms")


def check_accuracy(inp: AnalysisInput, spec: Analysis, alpha: float) -> CheckResult:
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
    if n_c < spec.min_sample_size or n_r < spec.min_sample_size:
        return CheckResult(**base, verdict="Inconclusive", message=(
            f"feedback labels: challenger {int(n_c)}, champion {int(n_r)}; {spec.min_sample_size} each needed"))
    test = worse_proportion_test(challenger.feedback_correct, n_c, champion.feedback_correct, n_r,
                                 margin=spec.max_accuracy_drop)
    base["p_value"] = _round(test.p_value, 6)
    summary = (f"online accuracy challenger {test.candidate:.2%} ({int(n_c)} labels) vs champion "
               f"{test.reference:.2%} ({int(n_r)} labels), p={test.p_value:.2g}")
    if test.p_value < alpha:
        return CheckResult(**base, verdict="Fail", message=(
            f"{summary} < {alpha:.2g}: worse by more than {spec.max_accuracy_drop:.2%}"))
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
    alpha = (1.0 - spec.confidence) / max(1, inp.planned_analyses)
    checks = [check_error_rate(inp, spec, alpha), check_latency(inp, spec), check_accuracy(inp, spec, alpha)]
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
