"""Decisions users fear getting wrong, each pinned on both sides of its boundary or against a
number computed outside the project's code.

Each test here was written against a small realistic bug (issue #15) that no other test
caught: it fails when that bug is put back. They go through public behaviour (inputs ->
decision), so a rewrite of the internals keeps them meaningful.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import stats

from mlops_operator.api.experiment import Search
from mlops_operator.api.inference_service import Analysis, CounterSnapshot, VariantCounters
from mlops_operator.reconcile.training_run import parse_summary
from mlops_operator.rollout.analysis import AnalysisInput, analyse
from mlops_runtime import drift

FAST = ("0.01", "0.05", "+Inf")  # latency bucket bounds (seconds)


def variant(requests: float = 0, errors: float = 0, correct: float = 0, incorrect: float = 0) -> VariantCounters:
    """Counters of one variant whose every request was answered within 10 ms."""
    return VariantCounters(requests=requests, errors=errors, feedback_correct=correct, feedback_incorrect=incorrect,
                           latency_buckets={le: float(requests) for le in FAST})


def judge(champion: VariantCounters, challenger: VariantCounters, **analysis):
    """The verdict of one canary analysis and its checks by name."""
    window = CounterSnapshot(time="2026-01-01T00:00:00Z", champion=champion, challenger=challenger)
    spec = Analysis(**{"min_sample_size": 50, "max_error_rate": 0.05, **analysis})
    result = analyse(AnalysisInput(window=window, rollout=window, mode="canary", planned_analyses=1),
                     spec, "2026-01-01T00:00:10Z", step=0, weight=50)
    return result.verdict, {c.name: c for c in result.checks}


# -- online accuracy -------------------------------------------------------------------------


def test_a_clearly_worse_challenger_fails_even_when_feedback_is_not_required():
    champion = variant(requests=400, correct=380, incorrect=20)     # 95 %
    challenger = variant(requests=400, correct=200, incorrect=200)  # 50 %
    verdict, checks = judge(champion, challenger, require_feedback=False)
    assert checks["onlineAccuracy"].verdict == "Fail"
    assert verdict == "Fail"


def test_an_equal_challenger_passes_when_feedback_is_not_required():
    same = variant(requests=400, correct=380, incorrect=20)
    verdict, checks = judge(same, same.model_copy(), require_feedback=False)
    assert (verdict, checks["onlineAccuracy"].verdict) == ("Pass", "Pass")


@pytest.mark.parametrize("short_side", ["champion", "challenger"])
def test_accuracy_is_not_judged_while_one_side_is_short_of_labels(short_side):
    # The challenger is far worse: judged on one side's labels alone, this would Fail.
    sides = {"champion": variant(requests=400, correct=380, incorrect=20),
             "challenger": variant(requests=400, correct=100, incorrect=300)}
    sides[short_side] = sides[short_side].model_copy(update={
        "feedback_correct": sides[short_side].feedback_correct * 49 / 400,
        "feedback_incorrect": sides[short_side].feedback_incorrect * 49 / 400})
    assert sides[short_side].feedback_correct + sides[short_side].feedback_incorrect == 49
    _, checks = judge(sides["champion"], sides["challenger"])
    assert checks["onlineAccuracy"].verdict == "Inconclusive"


def test_accuracy_is_judged_once_both_sides_have_exactly_the_minimum():
    champion = variant(requests=400, correct=48, incorrect=2)
    challenger = variant(requests=400, correct=10, incorrect=40)
    _, checks = judge(champion, challenger)
    assert checks["onlineAccuracy"].verdict == "Fail"


# -- error rate and minSampleSize --------------------------------------------------------------


def test_the_error_rate_is_inconclusive_one_request_below_min_sample_size():
    # 20 % errors: over the maximum, but on 49 requests the check must not judge.
    verdict, checks = judge(variant(requests=1000), variant(requests=49, errors=10))
    assert checks["errorRate"].verdict == "Inconclusive"
    assert checks["errorRate"].message.startswith("49 challenger requests, 50 needed")
    assert verdict == "Inconclusive"


def test_the_error_rate_fails_at_min_sample_size():
    verdict, checks = judge(variant(requests=1000), variant(requests=50, errors=10))
    assert checks["errorRate"].verdict == "Fail"
    assert verdict == "Fail"


@pytest.mark.parametrize("errors,verdict", [(2, "Pass"), (3, "Fail")])
def test_the_error_rate_threshold_on_each_side(errors, verdict):
    # maxErrorRate 5 %: 2/50 = 4 % passes, 3/50 = 6 % fails (the champion is clean).
    _, checks = judge(variant(requests=50), variant(requests=50, errors=errors), max_error_rate=0.05)
    assert checks["errorRate"].verdict == verdict


# -- PSI and KS against numbers computed by hand / by scipy ----------------------------------


def test_psi_matches_the_textbook_formula_computed_by_hand():
    # Baseline: two bins of 50 %; recent values: 9 in the first bin, 1 in the second.
    # PSI = sum((a - e) * ln(a / e)) = 0.4 ln(1.8) + (-0.4) ln(0.2) = 0.878890 (by hand);
    # KL(a||e) would be 0.368064 and Jensen-Shannon 0.102, so another divergence is caught.
    feature = {"name": "x", "kind": "numeric", "edges": [0.0, 1.0, 2.0], "fractions": [0.5, 0.5],
               "missingFraction": 0.0}
    values = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.5])
    assert drift.psi(feature, values) == pytest.approx(0.8788898, abs=1e-6)


def test_categorical_psi_matches_the_formula_computed_by_hand():
    # Baseline 60/40, recent 30/70; the unseen and missing bins are empty on both sides and
    # add nothing: (0.3-0.6) ln(0.3/0.6) + (0.7-0.4) ln(0.7/0.4) = 0.207944 + 0.167884 = 0.375829.
    feature = {"name": "city", "kind": "categorical", "categories": ["paris", "lyon"], "fractions": [0.6, 0.4],
               "missingFraction": 0.0}
    values = np.array(["paris"] * 3 + ["lyon"] * 7, dtype=object)
    expected = (0.3 - 0.6) * math.log(0.3 / 0.6) + (0.7 - 0.4) * math.log(0.7 / 0.4)
    assert expected == pytest.approx(0.375829, abs=1e-6)
    assert drift.categorical_psi(feature, values) == pytest.approx(expected, abs=1e-6)


def test_ks_is_scipys_two_sample_statistic():
    rng = np.random.default_rng(7)
    sample = np.sort(rng.normal(0.0, 1.0, 500))
    recent = rng.normal(0.4, 1.2, 300)
    assert drift.ks_statistic(sample, recent) == pytest.approx(stats.ks_2samp(sample, recent).statistic, abs=1e-12)


# -- search budget -----------------------------------------------------------------------------


@pytest.mark.parametrize("max_trials", [1, 2, 7])
def test_parallelism_may_equal_max_trials_but_not_exceed_it(max_trials):
    assert Search(max_trials=max_trials, parallelism=max_trials).parallelism == max_trials
    with pytest.raises(ValidationError, match=f"parallelism: {max_trials + 1} exceeds maxTrials {max_trials}"):
        Search(max_trials=max_trials, parallelism=max_trials + 1)


# -- the trainer's summary ---------------------------------------------------------------------


def test_the_termination_message_summary_is_the_last_json_line():
    # The kubelet fell back to the log tail: an earlier attempt's summary, then the final one.
    tail = "\n".join([
        "loading sklearn://iris",
        '{"status": "Failed", "reason": "InfrastructureError", "message": "S3 unreachable"}',
        "retrying",
        '{"status": "Succeeded", "metrics": {"accuracy": 0.97}}',
    ])
    assert parse_summary(tail) == {"status": "Succeeded", "metrics": {"accuracy": 0.97}}


def test_a_whole_message_that_is_one_summary_is_read_as_it_is():
    assert parse_summary('{"status": "Failed", "reason": "UnknownParameter", "message": "C"}\n') == {
        "status": "Failed", "reason": "UnknownParameter", "message": "C"}
    assert parse_summary("no summary here\n{not json") is None


# -- the proportion test, against a textbook computation --------------------------------------


def test_the_accuracy_test_is_the_textbook_pooled_two_proportion_z_test():
    from mlops_operator.rollout.statistics import worse_proportion_test

    # Candidate 80/100 correct, reference 90/100. Pooled p = 170/200 = 0.85,
    # SE = sqrt(0.85 * 0.15 * (1/100 + 1/100)) = 0.0504975, z = (0.90 - 0.80) / SE = 1.980295,
    # one-sided p = P(Z > z) = 0.023835 (normal tail by scipy).
    result = worse_proportion_test(80, 100, 90, 100)
    assert result.z == pytest.approx(1.980295, abs=1e-6)
    assert result.p_value == pytest.approx(stats.norm.sf(1.980295), abs=1e-6)
    assert result.p_value == pytest.approx(0.023835, abs=1e-6)
    # With a margin (non-inferiority), the unpooled (Wald) standard error:
    # SE = sqrt(0.8 * 0.2 / 100 + 0.9 * 0.1 / 100) = 0.05, z = (0.90 - 0.05 - 0.80) / 0.05 = 1.0.
    with_margin = worse_proportion_test(80, 100, 90, 100, margin=0.05)
    assert with_margin.z == pytest.approx(1.0, abs=1e-9)
    assert with_margin.p_value == pytest.approx(stats.norm.sf(1.0), abs=1e-9)
