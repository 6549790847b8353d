"""The rollout state machine, driven through whole rollouts by a deterministic traffic world."""

from __future__ import annotations

from datetime import timedelta

import pytest
from _rollout_world import T0, Behaviour, World, run, started

from mlops_operator.api.inference_service import Analysis, InferenceServiceStatus, Rollout
from mlops_operator.rollout import state_machine as sm


def canary(**analysis) -> Rollout:
    return Rollout(steps=[10, 25, 50, 100], interval="10s",
                   analysis=Analysis(min_sample_size=50, **analysis))


def weights(trace) -> list[int]:
    """Distinct weights in the order the router saw them."""
    seen: list[int] = []
    for tick in trace:
        if not seen or seen[-1] != tick.weight:
            seen.append(tick.weight)
    return seen


def first(trace, predicate):
    return next(t for t in trace if predicate(t))


# (name, world, analysis overrides, expected outcome, expected weights)
SCENARIOS = [
    ("healthy challenger", World(), {}, "Promoted", [10, 25, 50, 100, 0]),
    ("error spike at 25%", World(challenger=Behaviour(error_rate=0.2)), {}, "RolledBack", [10, 0]),
    ("slow challenger", World(challenger=Behaviour(latency=0.4)), {}, "RolledBack", [10, 0]),
    ("worse model, no errors", World(challenger=Behaviour(accuracy=0.70)), {}, "RolledBack", [10, 0]),
    ("slightly worse within the allowed drop", World(challenger=Behaviour(accuracy=0.93)),
     {"max_accuracy_drop": 0.05}, "Promoted", [10, 25, 50, 100, 0]),
    ("no feedback, feedback not required", World(feedback_share=0.0), {"require_feedback": False},
     "Promoted", [10, 25, 50, 100, 0]),
]


@pytest.mark.parametrize("name,world,analysis,outcome,expected", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_rollout_outcomes(name, world, analysis, outcome, expected):
    status, trace = run(started(), canary(**analysis), world, seconds=200)
    assert status.rollout_stage is None, trace[-3:]
    assert status.history[-1].action == outcome
    assert weights(trace) == expected
    if outcome == "Promoted":
        assert (status.champion, status.previous, status.challenger) == ("iris-v2", "iris-v1", None)
        assert status.rolled_back_versions == []
        assert status.history[-1].metrics["errorRate.challenger"] == 0.0
    else:
        assert (status.champion, status.challenger) == ("iris-v1", None)
        assert status.rolled_back_versions == ["iris-v2"]


def test_error_spike_at_25_percent_is_rolled_back_within_one_interval():
    world = World()
    spec = canary()

    def spike(t, status):
        if sm.traffic(status, spec).challenger == 25:
            world.challenger.error_rate = 0.2
        return None

    status, trace = run(started(), spec, world, seconds=200, approval=spike)
    at_25 = first(trace, lambda t: t.weight == 25)
    back = first(trace, lambda t: t.stage == "Finalizing")
    assert back.weight == 0 and back.time - at_25.time <= 10 + 1  # one interval (+ one tick of reading)
    assert status.history[-1].action == "RolledBack"
    rolled = [e for e in back.events if "RolledBack" in e]
    assert rolled and rolled[0].startswith("Warning/")
    # The message carries the numbers, counted since the rollout started (the spike began one
    # tick into the step: 45 errors in 350 requests).
    assert "challenger error rate 12.86% (45/350), at least 6.925%, surely above the maximum 1.00%" in rolled[0]
    assert status.last_analysis.verdict == "Fail" and status.last_analysis.weight == 25
    error_check = next(c for c in status.last_analysis.checks if c.name == "errorRate")
    assert error_check.challenger == pytest.approx(0.1286) and error_check.samples == 350


def test_a_worse_model_is_rolled_back_by_accuracy_alone():
    status, trace = run(started(), canary(), World(challenger=Behaviour(accuracy=0.70)), seconds=200)
    checks = {c.name: c for c in status.last_analysis.checks}
    assert checks["onlineAccuracy"].verdict == "Fail"
    assert checks["errorRate"].verdict == "Pass" and checks["latencyP95"].verdict == "Pass"
    assert checks["onlineAccuracy"].challenger == pytest.approx(0.70, abs=0.01)
    assert "surely exceed the champion's" in checks["onlineAccuracy"].message
    assert status.history[-1].metrics["onlineAccuracy.challenger"] == pytest.approx(0.70, abs=0.01)


def test_too_few_samples_hold_the_step_as_inconclusive():
    world = World(rps=2.0)  # 10 % of 2 rps: 2 challenger requests per 10 s interval
    status, trace = run(started(), canary(), world, seconds=60)
    assert status.rollout_stage == "Analysing" and status.current_step == 0
    assert {t.weight for t in trace} == {10}
    verdicts = [t.verdict for t in trace if t.verdict]
    assert verdicts and set(verdicts) == {"Inconclusive"}
    assert status.inconclusive_checks == len(verdicts)
    assert status.failed_checks == 0
    assert any("AnalysisInconclusive" in e for t in trace for e in t.events)
    # The error-rate check itself holds the step (the latency check's message says "timed
    # challenger requests ... needed" too, so the joined message alone would not tell).
    checks = {c.name: c for c in status.last_analysis.checks}
    assert checks["errorRate"].verdict == "Inconclusive"
    assert checks["errorRate"].samples < 50
    assert checks["errorRate"].message.endswith("challenger requests in this step, 50 needed")
    assert checks["errorRate"].message.split()[0].isdigit()
    # More traffic: the same step's window keeps its start, so the evidence adds up and it moves on.
    world.rps = 100.0
    status, trace = run(status, canary(), world, seconds=200)
    assert status.history[-1].action == "Promoted"


def test_missing_feedback_holds_when_feedback_is_required():
    status, trace = run(started(), canary(), World(feedback_share=0.0), seconds=60)
    assert status.current_step == 0
    assert "feedback labels: challenger 0" in status.last_analysis.message


def test_unreadable_metrics_hold_and_never_fail():
    world = World(metrics_up=False)
    status, trace = run(started(), canary(), world, seconds=60)
    assert status.rollout_stage == "Analysing" and status.failed_checks == 0
    assert "metrics unavailable: connection refused" in status.last_analysis.message


def test_failure_limit_allows_one_failed_analysis_before_rolling_back():
    world = World(challenger=Behaviour(error_rate=0.2))
    status, trace = run(started(), canary(failure_limit=2), world, seconds=200)
    verdicts = [t.verdict for t in trace if t.verdict]
    assert verdicts == ["Fail", "Fail"]
    assert any("Warning/AnalysisFailed: analysis failed (1/2)" in e for t in trace for e in t.events)
    assert status.history[-1].action == "RolledBack"


def test_failure_limit_forgives_a_transient_error_spike():
    # 20 % errors for the first 15 s, then none: one failed analysis, then clean evidence.
    spec = canary(failure_limit=3, require_feedback=False)
    world = World(challenger=Behaviour(error_rate=0.2))
    status, trace = run(started(), spec, world, seconds=15)
    world.challenger = Behaviour(error_rate=0.0)
    status, rest = run(status, spec, world, seconds=400, start_at=T0 + timedelta(seconds=15))
    verdicts = [t.verdict for t in trace + rest if t.verdict]
    assert verdicts[0] == "Fail" and verdicts.count("Fail") < 3, verdicts
    assert status.history[-1].action == "Promoted"


def test_paused_holds_any_step_and_resumes():
    spec = canary()
    status, trace = run(started(), spec, World(), seconds=200, paused=lambda t: 25 <= t.total_seconds() < 100)
    held = [t for t in trace if 25 < t.time < 100]
    assert len({t.weight for t in held}) == 1 and all(t.verdict is None for t in held)
    assert status.history[-1].action == "Promoted"


def test_manual_approval_holds_before_each_step_until_the_annotation_names_it():
    spec = canary().model_copy(update={"manual_approval": True})
    approvals = {0: 0, 1: 30, 2: 60, 3: 90}  # step index -> second it is approved

    def approval(t, status):
        granted = [str(i) for i, at in approvals.items() if t.total_seconds() >= at]
        return ",".join(granted) or None

    status, trace = run(started(), spec, World(), seconds=300, approval=approval)
    assert status.history[-1].action == "Promoted"
    for index, weight in enumerate([25, 50, 100], start=1):
        entered = first(trace, lambda t: t.weight == weight)
        assert entered.time >= approvals[index]
    assert any(t.stage == "AwaitingApproval" for t in trace)


def test_approval_annotation_all_releases_every_gate():
    assert sm.approved("all", 3) and sm.approved("0,2", 2) and not sm.approved("0,2", 1)
    assert not sm.approved(None, 0)


def test_shadow_mirrors_then_switches():
    spec = Rollout(strategy="shadow", interval="10s", shadow_iterations=3,
                   analysis=Analysis(min_sample_size=50, min_agreement=0.9))
    status, trace = run(started(), spec, World(), seconds=200)
    assert status.history[-1].action == "Promoted" and status.champion == "iris-v2"
    modes = [(t.mode, t.weight) for t in trace]
    assert ("shadow", 0) in modes and ("canary", 100) in modes
    assert [t.verdict for t in trace if t.verdict] == ["Pass", "Pass", "Pass"]


def test_shadow_rolls_back_a_challenger_that_disagrees():
    spec = Rollout(strategy="shadow", interval="10s", analysis=Analysis(min_sample_size=50, min_agreement=0.9))
    world = World()
    world.agreement = 0.5
    status, trace = run(started(), spec, world, seconds=200)
    assert status.history[-1].action == "RolledBack"
    assert {t.weight for t in trace} == {0}  # the shadow never answered a client
    check = next(c for c in status.last_analysis.checks if c.name == "agreement")
    assert check.verdict == "Fail" and check.challenger == pytest.approx(0.5)


@pytest.mark.parametrize("world", [World(), World(challenger=Behaviour(error_rate=0.2))],
                         ids=["promoted", "rolled back"])
def test_a_restart_at_every_tick_changes_nothing(world):
    import copy

    spec = canary()
    straight, trace_a = run(started(), spec, copy.deepcopy(world), seconds=200)
    restarted, trace_b = run(started(), spec, copy.deepcopy(world), seconds=200, restart_each_tick=True)
    assert [(t.stage, t.weight, t.verdict) for t in trace_a] == [(t.stage, t.weight, t.verdict) for t in trace_b]
    assert straight.dump() == restarted.dump()


def test_a_restarted_status_resumes_with_the_same_weights_at_each_step():
    """An operator process that dies after every reconcile: each new one starts from the
    status as stored (JSON), sees the same split, and the rollout still completes."""
    spec = canary()
    world = World()
    status = started()
    seen = []
    for second in range(200):
        before = sm.traffic(status, spec)
        rebuilt = InferenceServiceStatus.model_validate_json(status.model_dump_json(by_alias=True))
        assert sm.traffic(rebuilt, spec) == before
        seen.append(before.challenger)
        status, _ = run(rebuilt, spec, world, seconds=1, start_at=T0 + timedelta(seconds=second))
        if status.rollout_stage is None:
            break
    assert status.history[-1].action == "Promoted"
    assert set(seen) == {0, 10, 25, 50, 100}


def test_starting_waits_for_the_challenger_deployment():
    status = started()
    outcome = sm.advance(status, canary(), sm.Observations(challenger_ready=False), T0)
    assert outcome.status.rollout_stage == "Starting" and sm.traffic(outcome.status, canary()).challenger == 0
    outcome = sm.advance(status, canary(), sm.Observations(challenger_ready=True), T0)
    assert outcome.status.rollout_stage == "Analysing" and sm.traffic(outcome.status, canary()).challenger == 10


def test_promotion_waits_for_the_champion_deployment_and_finalizing_for_the_routers():
    spec = canary()
    status = started().model_copy(update={"rollout_stage": "Promoting", "current_step": 3})
    assert sm.traffic(status, spec).challenger == 100
    waiting = sm.advance(status, spec, sm.Observations(champion_ready_version="iris-v1"), T0)
    assert waiting.status.rollout_stage == "Promoting" and not waiting.promoted
    done = sm.advance(status, spec, sm.Observations(champion_ready_version="iris-v2"), T0)
    assert done.promoted and done.status.rollout_stage == "Finalizing"
    assert done.status.draining_version == "iris-v2" and done.status.champion == "iris-v2"
    assert sm.traffic(done.status, spec).champion == 100 and not sm.challenger_routed(done.status)
    held = sm.advance(done.status, spec, sm.Observations(routers_in_sync=False), T0)
    assert held.status.rollout_stage == "Finalizing"
    timed_out = sm.advance(done.status, spec, sm.Observations(routers_in_sync=None), T0 + sm.DRAIN_TIMEOUT)
    assert timed_out.status.rollout_stage is None and timed_out.status.draining_version is None


def test_a_challenger_that_never_gets_ready_is_rolled_back_after_the_deadline():
    spec = canary()
    status = started()
    held = sm.advance(status, spec, sm.Observations(challenger_ready=False), T0 + sm.STARTING_DEADLINE / 2)
    assert held.status.rollout_stage == "Starting"
    gone = sm.advance(status, spec, sm.Observations(challenger_ready=False), T0 + sm.STARTING_DEADLINE)
    assert gone.rolled_back and gone.status.rolled_back_versions == ["iris-v2"]
    assert "not ready after 0:05:00" in gone.status.history[-1].reason


def test_a_reading_without_the_challengers_server_still_judges_errors():
    spec = canary()
    world = World()
    status, _ = run(started(), spec, world, seconds=3)
    assert status.window_baseline is not None
    world.challenger.error_rate = 0.5
    world.serve(sm.traffic(status, spec), 10)
    later = T0 + timedelta(seconds=15)
    partial = world.snapshot(later).model_copy(update={"missing": ["challenger"]})
    outcome = sm.advance(status, spec, sm.Observations(challenger_ready=True, metrics=partial), later)
    assert outcome.rolled_back
    checks = {c.name: c for c in outcome.status.last_analysis.checks}
    assert checks["errorRate"].verdict == "Fail"
    assert checks["onlineAccuracy"].verdict == "Inconclusive"
    assert checks["onlineAccuracy"].message == "challenger server metrics unavailable"
