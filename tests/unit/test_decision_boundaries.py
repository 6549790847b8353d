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
    result = analyse(AnalysisInput(window=window, rollout=window, mode="canary"),
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
def test_accuracy_cannot_pass_while_one_side_is_short_of_labels(short_side):
    # Equally accurate (95 %): with 49 labels on one side the check holds the step; with the
    # minimum on both it passes. (A challenger surely worse may fail earlier: a Fail is valid
    # at any count, see test_rollout_statistics.py.)
    def labelled(count: int) -> VariantCounters:
        return variant(requests=400, correct=count * 0.95, incorrect=count * 0.05)

    sides = {"champion": labelled(400), "challenger": labelled(400)}
    sides[short_side] = labelled(49)
    _, checks = judge(sides["champion"], sides["challenger"])
    assert checks["onlineAccuracy"].verdict == "Inconclusive"
    sides[short_side] = labelled(50)
    _, checks = judge(sides["champion"], sides["challenger"])
    assert checks["onlineAccuracy"].verdict == "Pass"


def test_accuracy_is_judged_once_both_sides_have_exactly_the_minimum():
    champion = variant(requests=400, correct=48, incorrect=2)
    challenger = variant(requests=400, correct=10, incorrect=40)
    _, checks = judge(champion, challenger)
    assert checks["onlineAccuracy"].verdict == "Fail"


# -- error rate and minSampleSize --------------------------------------------------------------


def test_the_error_rate_is_inconclusive_one_request_below_min_sample_size():
    # A clean challenger cannot pass on 49 requests; on 50 it can.
    _, checks = judge(variant(requests=1000), variant(requests=49))
    assert checks["errorRate"].verdict == "Inconclusive"
    assert checks["errorRate"].message.startswith("49 challenger requests in this step, 50 needed")
    _, checks = judge(variant(requests=1000), variant(requests=50))
    assert checks["errorRate"].verdict == "Pass"


def test_a_clearly_failing_error_rate_fails_before_min_sample_size():
    # 10 errors in 49 requests is surely above 5 % already: a Fail needs no minimum sample.
    verdict, checks = judge(variant(requests=1000), variant(requests=49, errors=10))
    assert checks["errorRate"].verdict == "Fail"
    assert verdict == "Fail"


@pytest.mark.parametrize("requests,errors,verdict", [(50, 2, "Pass"), (50, 3, "Inconclusive"), (2000, 160, "Fail")])
def test_the_error_rate_threshold_on_each_side(requests, errors, verdict):
    # maxErrorRate 5 %: 4 % passes; 6 % on 50 requests is above it but not surely (it holds);
    # 8 % on 2,000 requests is surely above it.
    _, checks = judge(variant(requests=requests), variant(requests=requests, errors=errors), max_error_rate=0.05)
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
    with pytest.raises(ValidationError, match="parallelism: must not exceed maxTrials"):
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
