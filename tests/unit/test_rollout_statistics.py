"""Statistics and single analyses of the rollout, checked against scipy and hand computations."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from mlops_operator.api.inference_service import Analysis, CounterSnapshot, VariantCounters
from mlops_operator.rollout.analysis import AnalysisInput, analyse, counter_delta, p95_ms, snapshot_delta
from mlops_operator.rollout.statistics import histogram_quantile, worse_proportion_test


@pytest.mark.parametrize("hits_c,n_c,hits_r,n_r", [(70, 100, 95, 100), (480, 500, 470, 500), (45, 50, 940, 1000)])
def test_pooled_two_proportion_test_matches_the_textbook(hits_c, n_c, hits_r, n_r):
    test = worse_proportion_test(hits_c, n_c, hits_r, n_r)
    pooled = (hits_c + hits_r) / (n_c + n_r)
    z = (hits_r / n_r - hits_c / n_c) / math.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_r))
    assert test.z == pytest.approx(z)
    assert test.p_value == pytest.approx(stats.norm.sf(z))


def test_a_margin_shifts_the_hypothesis_and_uses_the_unpooled_error():
    test = worse_proportion_test(90, 100, 95, 100, margin=0.1)
    se = math.sqrt(0.9 * 0.1 / 100 + 0.95 * 0.05 / 100)
    assert test.z == pytest.approx((0.95 - 0.1 - 0.9) / se)
    assert test.p_value > 0.5  # 5 points worse is within a 10-point margin


def test_error_rates_are_tested_in_the_other_direction():
    worse = worse_proportion_test(10, 200, 1, 1000, higher_is_worse=True)
    assert worse.p_value < 1e-6
    better = worse_proportion_test(1, 1000, 10, 200, higher_is_worse=True)
    assert better.p_value > 0.99


def test_identical_perfect_samples_are_not_worse():
    assert worse_proportion_test(100, 100, 100, 100).p_value == 1.0
    assert worse_proportion_test(0, 100, 0, 100, higher_is_worse=True).p_value == 1.0
    assert worse_proportion_test(0, 100, 100, 100).p_value < 1e-9


def test_histogram_quantile_interpolates_like_prometheus():
    buckets = {0.1: 50.0, 0.2: 90.0, 0.4: 100.0, math.inf: 100.0}
    # rank 95 lies in (0.2, 0.4]: 0.2 + 0.2 * (95 - 90) / (100 - 90)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.3)
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.95, {0.1: 0.0, math.inf: 0.0}) is None
    assert histogram_quantile(0.99, {0.1: 10.0, math.inf: 20.0}) == 0.1  # in +Inf: the highest finite bound


def test_counter_resets_count_from_zero():
    assert counter_delta(150, 100) == 50
    assert counter_delta(30, 100) == 30  # the pod restarted and has counted 30 since
    base = VariantCounters(requests=100, latency_buckets={"0.1": 80, "+Inf": 100})
    now = VariantCounters(requests=20, latency_buckets={"0.1": 20, "+Inf": 20})
    delta = snapshot_delta(CounterSnapshot(time="t1", challenger=now), CounterSnapshot(time="t0", challenger=base))
    assert delta.challenger.requests == 20 and delta.challenger.latency_buckets == {"0.1": 20, "+Inf": 20}


def _input(challenger: VariantCounters, champion: VariantCounters | None = None) -> AnalysisInput:
    window = CounterSnapshot(time="t", challenger=challenger, champion=champion or VariantCounters(
        requests=1000, errors=0, latency_buckets={"0.01": 1000, "+Inf": 1000},
        feedback_correct=950, feedback_incorrect=50))
    return AnalysisInput(window=window, rollout=window, mode="canary", planned_analyses=4)


def test_a_verdict_names_the_failed_check_and_its_numbers():
    challenger = VariantCounters(requests=100, errors=5, latency_buckets={"0.01": 100, "+Inf": 100},
                                 feedback_correct=90, feedback_incorrect=5)
    result = analyse(_input(challenger), Analysis(min_sample_size=50), time="t", step=1, weight=25)
    assert result.verdict == "Fail"
    assert "challenger error rate 5.00% (5/100) above the maximum 1.00%" in result.message
    assert [c.verdict for c in result.checks] == ["Fail", "Pass", "Pass"]


def test_the_p95_comes_from_the_challenger_histogram():
    assert p95_ms(VariantCounters(latency_buckets={"0.1": 0, "0.5": 100, "+Inf": 100})) == pytest.approx(480.0)


def test_bonferroni_keeps_a_borderline_difference_from_failing():
    # 88 % vs 92 % on 300 labels each: p ~ 0.05 alone, not below 0.05 / 4.
    challenger = VariantCounters(requests=300, latency_buckets={"0.01": 300, "+Inf": 300},
                                 feedback_correct=264, feedback_incorrect=36)
    champion = VariantCounters(requests=300, latency_buckets={"0.01": 300, "+Inf": 300},
                               feedback_correct=276, feedback_incorrect=24)
    single = worse_proportion_test(264, 300, 276, 300)
    assert 0.0125 < single.p_value < 0.1
    result = analyse(_input(challenger, champion), Analysis(min_sample_size=50), time="t", step=0, weight=10)
    assert result.verdict == "Pass"
