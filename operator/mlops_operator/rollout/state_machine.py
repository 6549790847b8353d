"""The rollout state machine: pure, all of its state in the InferenceService's status.

    (no rollout) --start--> Starting --challenger ready--> Analysing(step 0)
    Analysing --Pass, more steps--> Analysing(step i+1)     [AwaitingApproval first, if gated]
    Analysing --Pass at the last step (shadow: shadowIterations passes)--> Promoting
    Analysing --Inconclusive--> Analysing (same step, the window keeps growing)
    Analysing --Fail, failureLimit reached--> Finalizing (rolled back)
    Promoting --champion Deployment ready at the new version--> Finalizing (promoted)
    Finalizing --routers use the new config (or DRAIN_TIMEOUT)--> (no rollout)

Traffic in each stage (`traffic`): Starting 0 %; Analysing the step's weight (shadow: all
answers from the champion, every request mirrored); Promoting 100 % to the challenger while
the champion Deployment rolls to the winner (zero-gap); Finalizing 100 % to the champion.
A restart re-reads the status and lands in the same stage with the same weights.

`spec.rollout.paused` holds every stage as it is; `manualApproval` holds before each step
until the approval annotation names that step (its index in `steps`) or says `all`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..api.common import parse_duration
from ..api.conditions import (
    REASON_ANALYSIS_FAILED,
    REASON_ANALYSIS_INCONCLUSIVE,
    REASON_PROMOTED,
    REASON_ROLLED_BACK,
    REASON_ROLLOUT_STARTED,
    REASON_STEP_ADVANCED,
)
from ..api.inference_service import (
    HISTORY_SIZE,
    AnalysisResult,
    CounterSnapshot,
    HistoryEntry,
    InferenceServiceStatus,
    Rollout,
    TrafficSplit,
)
from ..reconcile.plan import Event
from .analysis import AnalysisInput, analyse, decisive_metrics, snapshot_delta

# How long a finished rollout keeps the old challenger Deployment when the routers cannot be
# asked which config they use (the kubelet refreshes mounted ConfigMaps within about a minute).
DRAIN_TIMEOUT = timedelta(seconds=120)
# A challenger Deployment that is not ready after this long (or ten intervals, if longer)
# is rolled back: a crash-looping or unschedulable challenger must not hold the service.
STARTING_DEADLINE = timedelta(minutes=5)
# How often a stage that waits for something (Deployments, metrics) looks again at most.
POLL = timedelta(seconds=5)


@dataclass(frozen=True)
class Observations:
    """Condensed facts the controller observed for one reconcile."""

    challenger_ready: bool = False
    champion_ready: bool = False
    # Version the champion Deployment runs with all replicas ready (None: not ready).
    champion_ready_version: str | None = None
    metrics: CounterSnapshot | None = None
    metrics_error: str | None = None
    # Whether every router pod reports the config we last wrote; None when unknown.
    routers_in_sync: bool | None = None
    approval: str | None = None


@dataclass(frozen=True)
class Outcome:
    status: InferenceServiceStatus
    events: tuple[Event, ...] = ()
    analysis: AnalysisResult | None = None  # an analysis made in this reconcile
    promoted: bool = False
    rolled_back: bool = False
    progressed: bool = False  # weights or stage moved forward
    requeue_after: float | None = None


def timestamp(now: datetime) -> str:
    """RFC 3339 with milliseconds: windows of a few seconds need more than whole seconds."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def interval_of(spec: Rollout) -> timedelta:
    return parse_duration(spec.interval)


def planned_steps(spec: Rollout) -> list[int]:
    """The weights of the steps; shadow has one step (mirroring) whatever `steps` says."""
    return [0] if spec.strategy == "shadow" else list(spec.steps)


def in_rollout(status: InferenceServiceStatus) -> bool:
    return status.rollout_stage is not None


def traffic(status: InferenceServiceStatus, spec: Rollout) -> TrafficSplit:
    """The split the router must apply in the current stage."""
    stage = status.rollout_stage
    if stage == "Promoting":
        return TrafficSplit(champion=0, challenger=100, mode="canary")
    if stage in ("Analysing", "AwaitingApproval") and status.current_step is not None:
        if spec.strategy == "shadow":
            return TrafficSplit(champion=100, challenger=0, mode="shadow")
        weight = planned_steps(spec)[min(status.current_step, len(spec.steps) - 1)]
        return TrafficSplit(champion=100 - weight, challenger=weight, mode="canary")
    return TrafficSplit(champion=100, challenger=0, mode="canary")


def challenger_routed(status: InferenceServiceStatus) -> bool:
    """Whether the router config names the challenger at all."""
    return status.rollout_stage in ("Analysing", "AwaitingApproval", "Promoting") and status.current_step is not None


def approved(annotation: str | None, step_index: int) -> bool:
    if annotation is None:
        return False
    values = {part.strip() for part in annotation.split(",")}
    return "all" in values or str(step_index) in values


def wants_metrics(status: InferenceServiceStatus, spec: Rollout, now: datetime) -> bool:
    """Whether this reconcile should read the analysis inputs: in a step, when the window has
    no baseline yet or its interval has elapsed."""
    if status.rollout_stage != "Analysing" or spec.paused:
        return False
    if status.window_baseline is None:
        return True
    return now - parse_time(status.window_baseline.time) >= interval_of(spec)


def start(status: InferenceServiceStatus, challenger: str, now: datetime, reason: str) -> Outcome:
    """Begin rolling `challenger` out against the current champion."""
    new = status.model_copy(update={
        "challenger": challenger,
        "rollout_stage": "Starting",
        "stage_started_time": timestamp(now),
        "rollout_started_time": timestamp(now),
        "current_step": None,
        "step_started_time": None,
        "failed_checks": 0,
        "inconclusive_checks": 0,
        "passed_analyses": 0,
        "window_baseline": None,
        "rollout_baseline": None,
        "last_analysis": None,
    })
    event = Event(REASON_ROLLOUT_STARTED, f"rolling out {challenger} against champion {status.champion}: {reason}")
    return Outcome(status=new, events=(event,), progressed=True, requeue_after=POLL.total_seconds())


def abort(status: InferenceServiceStatus, now: datetime) -> InferenceServiceStatus:
    """Stop a rollout that is no longer wanted (the challenger was removed from the spec or
    replaced): traffic back to the champion, the old challenger drained, nothing recorded as
    rolled back."""
    draining = status.challenger if challenger_routed(status) or status.rollout_stage == "Starting" else None
    return _finish(status, now, draining)


def _finish(status: InferenceServiceStatus, now: datetime, draining: str | None, **changes) -> InferenceServiceStatus:
    return status.model_copy(update={
        "challenger": None,
        "rollout_stage": "Finalizing" if draining else None,
        "stage_started_time": timestamp(now),
        "draining_version": draining,
        "current_step": None,
        "step_started_time": None,
        "window_baseline": None,
        "passed_analyses": 0,
        **changes,
    })


def _history(status: InferenceServiceStatus, entry: HistoryEntry) -> list[HistoryEntry]:
    return [*status.history, entry][-HISTORY_SIZE:]


def advance(status: InferenceServiceStatus, spec: Rollout, obs: Observations, now: datetime) -> Outcome:
    """One reconcile's worth of progress for the rollout in `status`."""
    stage = status.rollout_stage
    if stage is None:
        return Outcome(status=status)
    if spec.paused and stage != "Finalizing":
        return Outcome(status=status)
    if stage == "Starting":
        return _starting(status, spec, obs, now)
    if stage == "AwaitingApproval":
        return _awaiting_approval(status, spec, obs, now)
    if stage == "Analysing":
        return _analysing(status, spec, obs, now)
    if stage == "Promoting":
        return _promoting(status, spec, obs, now)
    return _finalizing(status, obs, now)


def _wait(status: InferenceServiceStatus, spec: Rollout) -> Outcome:
    return Outcome(status=status, requeue_after=min(POLL, interval_of(spec)).total_seconds())


def _starting(status: InferenceServiceStatus, spec: Rollout, obs: Observations, now: datetime) -> Outcome:
    if not obs.challenger_ready:
        deadline = max(STARTING_DEADLINE, 10 * interval_of(spec))
        if now - parse_time(status.stage_started_time or timestamp(now)) >= deadline:
            return _roll_back(status, spec, now, None, f"the challenger Deployment was not ready after {deadline}")
        return _wait(status, spec)
    return _enter_step(status, spec, obs, now, 0)


def _awaiting_approval(status: InferenceServiceStatus, spec: Rollout, obs: Observations, now: datetime) -> Outcome:
    target = 0 if status.current_step is None else status.current_step + 1
    if not approved(obs.approval, target):
        return Outcome(status=status)
    return _enter_step(status, spec, obs, now, target, gate_checked=True)


def _enter_step(
    status: InferenceServiceStatus,
    spec: Rollout,
    obs: Observations,
    now: datetime,
    index: int,
    gate_checked: bool = False,
) -> Outcome:
    if spec.manual_approval and not gate_checked and not approved(obs.approval, index):
        held = status.model_copy(update={"rollout_stage": "AwaitingApproval", "stage_started_time": timestamp(now),
                                         "window_baseline": None})
        return Outcome(status=held, progressed=True)
    weights = planned_steps(spec)
    new = status.model_copy(update={
        "rollout_stage": "Analysing",
        "stage_started_time": timestamp(now),
        "current_step": index,
        "step_started_time": timestamp(now),
        "passed_analyses": 0 if spec.strategy == "canary" else status.passed_analyses,
        # The window starts at the first reading after the weights changed. A reading that
        # lacks a server's counters starts it too (as zeros: a restarted server counts from
        # zero anyway); the routers' counters, which judge errors, are always in it.
        "window_baseline": obs.metrics,
        "rollout_baseline": status.rollout_baseline or obs.metrics,
    })
    if spec.strategy == "shadow":
        message = f"mirroring every request to {status.challenger}; answers still come from {status.champion}"
    else:
        message = f"step {index + 1}/{len(weights)}: {weights[index]}% of traffic to {status.challenger}"
    return Outcome(status=new, events=(Event(REASON_STEP_ADVANCED, message),), progressed=True,
                   requeue_after=_next_look(new, spec, now))


def _next_look(status: InferenceServiceStatus, spec: Rollout, now: datetime) -> float:
    interval = interval_of(spec)
    if status.window_baseline is None:
        return min(POLL, interval).total_seconds()
    due = parse_time(status.window_baseline.time) + interval
    return max(0.1, (due - now).total_seconds())


def _analysing(status: InferenceServiceStatus, spec: Rollout, obs: Observations, now: datetime) -> Outcome:
    interval = interval_of(spec)
    if status.window_baseline is None:
        if obs.metrics is not None:
            new = status.model_copy(update={"window_baseline": obs.metrics,
                                            "rollout_baseline": status.rollout_baseline or obs.metrics})
            return Outcome(status=new, requeue_after=_next_look(new, spec, now))
        if now - parse_time(status.stage_started_time or timestamp(now)) < interval:
            return _wait(status, spec)
        return _inconclusive(status, spec, now, f"metrics unavailable: {obs.metrics_error or 'not read'}")
    if now - parse_time(status.window_baseline.time) < interval:
        return Outcome(status=status, requeue_after=_next_look(status, spec, now))
    if obs.metrics is None:
        return _inconclusive(status, spec, now, f"metrics unavailable: {obs.metrics_error or 'not read'}")
    step = status.current_step or 0
    rollout_baseline = status.rollout_baseline or status.window_baseline
    inp = AnalysisInput(window=snapshot_delta(obs.metrics, status.window_baseline),
                        rollout=snapshot_delta(obs.metrics, rollout_baseline), mode=spec.strategy)
    result = analyse(inp, spec.analysis, time=timestamp(now), step=step, weight=traffic(status, spec).challenger)
    if result.verdict == "Inconclusive":
        new = status.model_copy(update={"last_analysis": result,
                                        "inconclusive_checks": status.inconclusive_checks + 1})
        event = Event(REASON_ANALYSIS_INCONCLUSIVE, f"step {step + 1} held: {result.message}")
        return Outcome(status=new, events=(event,), analysis=result, requeue_after=interval.total_seconds())
    if result.verdict == "Fail":
        return _failed(status, spec, obs, now, result)
    return _passed(status, spec, obs, now, result)


def _inconclusive(status: InferenceServiceStatus, spec: Rollout, now: datetime, message: str) -> Outcome:
    result = AnalysisResult(time=timestamp(now), step=status.current_step or 0,
                            weight=traffic(status, spec).challenger, verdict="Inconclusive", message=message)
    new = status.model_copy(update={"last_analysis": result, "inconclusive_checks": status.inconclusive_checks + 1,
                                    "stage_started_time": timestamp(now)})
    event = Event(REASON_ANALYSIS_INCONCLUSIVE, f"step {(status.current_step or 0) + 1} held: {message}")
    return Outcome(status=new, events=(event,), analysis=result,
                   requeue_after=min(POLL, interval_of(spec)).total_seconds())


def _failed(status: InferenceServiceStatus, spec: Rollout, obs: Observations, now: datetime,
            result: AnalysisResult) -> Outcome:
    failed = status.failed_checks + 1
    limit = spec.analysis.failure_limit
    if failed < limit:
        # Judge fresh data next time: the step window and the evidence restart at this
        # reading, so failureLimit forgives a transient failure (the rollout-wide counts would
        # keep it). Restarting costs no confidence: a rollback needs a Fail of the first
        # evidence sequence, whose chance of a false one is already at most alpha.
        new = status.model_copy(update={"last_analysis": result, "failed_checks": failed,
                                        "window_baseline": obs.metrics, "rollout_baseline": obs.metrics})
        event = Event(REASON_ANALYSIS_FAILED, f"analysis failed ({failed}/{limit}): {result.message}", "Warning")
        return Outcome(status=new, events=(event,), analysis=result,
                       requeue_after=interval_of(spec).total_seconds())
    reason = f"analysis failed {failed}/{limit} at {result.weight}% ({spec.strategy}): {result.message}"
    outcome = _roll_back(status.model_copy(update={"failed_checks": failed}), spec, now, result, reason)
    return Outcome(status=outcome.status, events=outcome.events, analysis=result, rolled_back=True,
                   progressed=True, requeue_after=outcome.requeue_after)


def _roll_back(status: InferenceServiceStatus, spec: Rollout, now: datetime, result: AnalysisResult | None,
               reason: str) -> Outcome:
    """All traffic back to the champion now; the challenger is drained and never tried again."""
    challenger = status.challenger or ""
    entry = HistoryEntry(time=timestamp(now), action="RolledBack", version=challenger, replaced=status.champion,
                         reason=reason, metrics=decisive_metrics(result) if result else {})
    rolled_back = [*status.rolled_back_versions, challenger] if challenger not in status.rolled_back_versions \
        else status.rolled_back_versions
    new = _finish(status, now, challenger, last_analysis=result or status.last_analysis,
                  rolled_back_versions=rolled_back, history=_history(status, entry))
    event = Event(REASON_ROLLED_BACK, f"rolled back {challenger}; all traffic to {status.champion}: {reason}",
                  "Warning")
    return Outcome(status=new, events=(event,), rolled_back=True, progressed=True,
                   requeue_after=min(POLL, interval_of(spec)).total_seconds())


def _passed(status: InferenceServiceStatus, spec: Rollout, obs: Observations, now: datetime,
            result: AnalysisResult) -> Outcome:
    step = status.current_step or 0
    passes = status.passed_analyses + 1
    base = status.model_copy(update={"last_analysis": result, "passed_analyses": passes})
    if spec.strategy == "shadow":
        if passes < spec.shadow_iterations:
            new = base.model_copy(update={"window_baseline": obs.metrics})
            return Outcome(status=new, analysis=result, requeue_after=interval_of(spec).total_seconds())
        return _promote(base, spec, now, result)
    if step + 1 < len(spec.steps):
        outcome = _enter_step(base, spec, obs, now, step + 1)
        return Outcome(status=outcome.status, events=outcome.events, analysis=result, progressed=True,
                       requeue_after=outcome.requeue_after)
    return _promote(base, spec, now, result)


def _promote(status: InferenceServiceStatus, spec: Rollout, now: datetime, result: AnalysisResult) -> Outcome:
    """The winner takes all traffic while the champion Deployment rolls to it."""
    new = status.model_copy(update={"rollout_stage": "Promoting", "stage_started_time": timestamp(now),
                                    "window_baseline": None})
    message = (f"{status.challenger} passed the analysis; serving all traffic from it while the champion "
               f"Deployment moves to it")
    return Outcome(status=new, events=(Event(REASON_STEP_ADVANCED, message),), analysis=result, progressed=True,
                   requeue_after=min(POLL, interval_of(spec)).total_seconds())


def _promoting(status: InferenceServiceStatus, spec: Rollout, obs: Observations, now: datetime) -> Outcome:
    winner = status.challenger or ""
    if obs.champion_ready_version != winner:
        return _wait(status, spec)
    old = status.champion
    metrics = decisive_metrics(status.last_analysis) if status.last_analysis else {}
    reason = (f"passed {spec.strategy} analysis"
              + (f" ({status.last_analysis.message})" if status.last_analysis else ""))
    entry = HistoryEntry(time=timestamp(now), action="Promoted", version=winner, replaced=old, reason=reason,
                         metrics=metrics)
    new = _finish(status, now, winner, champion=winner, previous=old, history=_history(status, entry),
                  failed_checks=0)
    event = Event(REASON_PROMOTED, f"promoted {winner} to champion (previous: {old}); {reason}")
    return Outcome(status=new, events=(event,), promoted=True, progressed=True,
                   requeue_after=min(POLL, interval_of(spec)).total_seconds())


def _finalizing(status: InferenceServiceStatus, obs: Observations, now: datetime) -> Outcome:
    started = parse_time(status.stage_started_time or timestamp(now))
    if obs.routers_in_sync is not True and now - started < DRAIN_TIMEOUT:
        return Outcome(status=status, requeue_after=POLL.total_seconds())
    new = status.model_copy(update={"rollout_stage": None, "draining_version": None, "stage_started_time": None})
    return Outcome(status=new, progressed=True)
