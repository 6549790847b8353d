"""`spec.retrain` of an Experiment: when to run the whole search again, as what. Pure.

A retrain is a new Experiment `<exp>-r<N>` (N = 1, 2, ... per parent), owned by the parent,
labelled `mlops.seed.io/retrain-of: <exp>` and `mlops.seed.io/retrain-index: N`, annotated
with why and when; its spec is the parent's without `retrain` (a retrain never retrains).
It registers a new ModelVersion of the same model family, which an InferenceService with
`challenger: {policy: latestValidated}` rolls out as a canary: the loop closes.

Triggers, for a finished parent (Succeeded or Failed):
- `schedule` (5-field cron or @daily-style, UTC): due once the next fire time after the later
  of the parent's completion and the last retrain has passed (missed fires collapse to one);
- `onDrift`: due while the InferenceService `onDrift.service` reports `status.drift.drifted`
  with the drifting feature's PSI above `onDrift.psiThreshold`, for `onDrift.persistence`
  readings in a row, with a reading p-value (already corrected for the features) below
  `onDrift.falseAlarmPerDay / readingsPerDay`: a union bound over a day's readings, so that
  unshifted traffic starts a retrain on at most that share of days however the readings'
  windows overlap; and `onDrift.cooldown` has passed since the last retrain.
Guards: never while the previous retrain is still running, at most `maxRetrainsPerDay` in
any 24 hours. Every retrain held back (cooldown, daily cap, one still running, drift not yet
persistent or significant enough) says why in `status.retrainMessage`, and in a
`RetrainHeldBack` Event when that reason changes. What happened is rebuilt from the children themselves (their labels and
annotations) merged with status, so a lost status write or a restart creates no duplicate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from croniter import croniter

from ..api.common import parse_duration
from ..api.conditions import REASON_RETRAIN_HELD_BACK, REASON_RETRAIN_TRIGGERED, rfc3339
from ..api.experiment import RETRAIN_HISTORY, Experiment, Retrain, RetrainRecord
from ..api.inference_service import DriftStatus
from ..api.naming import child_name
from .common import GROUP_PREFIX, child_labels
from .plan import Event

RETRAIN_ROLE = "retrain"
RETRAIN_OF_LABEL = f"{GROUP_PREFIX}retrain-of"
RETRAIN_INDEX_LABEL = f"{GROUP_PREFIX}retrain-index"
RETRAIN_REASON_ANNOTATION = f"{GROUP_PREFIX}retrain-reason"
RETRAIN_TIME_ANNOTATION = f"{GROUP_PREFIX}retrain-time"
DAY = timedelta(days=1)
# How often a parent looks again while a trigger waits on a running retrain or on drift.
POLL_SECONDS = 60.0
FINISHED = ("Succeeded", "Failed")


@dataclass(frozen=True)
class RetrainChild:
    """One retrain Experiment as observed."""

    name: str
    index: int
    phase: str = "Pending"
    time: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class RetrainObserved:
    children: tuple[RetrainChild, ...] = ()
    drift: DriftStatus | None = None  # status.drift of spec.retrain.onDrift.service
    service_missing: bool = False  # spec.retrain.onDrift.service names no InferenceService


@dataclass(frozen=True)
class RetrainOutcome:
    """What a pass decides about retraining: the status fields, the child to create (if
    any), the Events and when to look again."""

    status: dict[str, Any]
    child: dict[str, Any] | None = None
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None
    waiting: str | None = None  # why a due trigger does not fire yet (also status.retrainMessage)


def retrain_name(experiment: str, index: int) -> str:
    return child_name(experiment, f"r{index}")


def child_facts(obj: Mapping[str, Any]) -> RetrainChild:
    """Condense a retrain Experiment as the API serves it."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    name = meta.get("name", "")
    try:
        index = int(labels.get(RETRAIN_INDEX_LABEL) or name.rsplit("-r", 1)[-1])
    except ValueError:
        index = 0
    return RetrainChild(
        name=name,
        index=index,
        phase=(obj.get("status") or {}).get("phase") or "Pending",
        time=annotations.get(RETRAIN_TIME_ANNOTATION) or meta.get("creationTimestamp"),
        reason=annotations.get(RETRAIN_REASON_ANNOTATION, ""),
    )


def schedule_problem(schedule: str | None) -> str | None:
    if schedule is None or croniter.is_valid(schedule):
        return None
    return f"spec.retrain.schedule: {schedule!r} is not a valid cron expression (5 fields, or @daily-style)"


def spec_problems(retrain: Retrain | None) -> list[str]:
    if retrain is None:
        return []
    problems = []
    if (problem := schedule_problem(retrain.schedule)) is not None:
        problems.append(problem)
    if retrain.on_drift is not None and retrain.on_drift.enabled and not retrain.on_drift.service:
        problems.append("spec.retrain.onDrift.service: name the InferenceService whose drift triggers a retrain")
    return problems


def parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def next_fire(schedule: str, after: datetime) -> datetime:
    """The first time `schedule` fires strictly after `after` (UTC)."""
    fire = croniter(schedule, after.astimezone(UTC)).get_next(datetime)
    return fire if fire.tzinfo else fire.replace(tzinfo=UTC)


def history(previous: list[RetrainRecord], children: tuple[RetrainChild, ...]) -> list[RetrainRecord]:
    """Every known retrain, oldest first: status's records plus children it has not recorded
    (created by a pass whose status write was lost)."""
    known = {r.name: r for r in previous}
    for child in children:
        if child.name not in known and child.time:
            known[child.name] = RetrainRecord(name=child.name, time=child.time, reason=child.reason)
    return sorted(known.values(), key=lambda r: (parse_time(r.time), r.name))


@dataclass(frozen=True)
class DriftCall:
    """What drift says about a retrain: `reason` when it asks for one now, else `waiting`
    when it is drifting but not yet enough to act on (both None: no drift to speak of)."""

    reason: str | None = None
    waiting: str | None = None


def drift_reason(exp: Experiment, observed: RetrainObserved) -> DriftCall:
    """Whether drift asks for a retrain now, and why (or why not yet)."""
    retrain = exp.spec.retrain
    on_drift = retrain.on_drift if retrain else None
    drift = observed.drift
    if on_drift is None or not on_drift.enabled or drift is None or not drift.drifted:
        return DriftCall()
    worst = next((f for f in drift.features if f.name == drift.feature), None)
    psi = worst.psi if worst is not None and worst.psi is not None else drift.max_psi
    if psi <= on_drift.psi_threshold:
        return DriftCall()
    seen = (f"drift on InferenceService {on_drift.service}: {drift.version} feature {drift.feature} "
            f"PSI {psi:.3g} > {on_drift.psi_threshold:g}")
    if drift.consecutive < on_drift.persistence:
        return DriftCall(waiting=f"{seen} in {drift.consecutive} reading(s) in a row; "
                                 f"onDrift.persistence={on_drift.persistence} needed")
    per_day = drift.readings_per_day or 1.0
    level = on_drift.false_alarm_per_day / per_day
    if drift.p_value is not None and drift.p_value >= level:
        return DriftCall(waiting=f"{seen}, but p={drift.p_value:.2g} is not below {level:.2g} "
                                 f"(falseAlarmPerDay {on_drift.false_alarm_per_day:g} over {per_day:g} readings a day)")
    significance = f", p={drift.p_value:.2g}" if drift.p_value is not None else ""
    return DriftCall(reason=f"{seen}{significance} for {drift.consecutive} readings since {drift.since}")


def desired_retrain(exp: Experiment, index: int, reason: str, now: datetime) -> dict[str, Any]:
    """Experiment `<exp>-r<N>` (without owner reference: the wiring adopts it)."""
    parent = exp.metadata.name
    labels = child_labels("Experiment", parent, RETRAIN_ROLE, exp.spec.model)
    labels[RETRAIN_OF_LABEL] = parent
    labels[RETRAIN_INDEX_LABEL] = str(index)
    spec = exp.spec.model_copy(update={"retrain": None}).dump()
    return {
        "apiVersion": exp.api_version(),
        "kind": "Experiment",
        "metadata": {
            "name": retrain_name(parent, index),
            "namespace": exp.metadata.namespace,
            "labels": labels,
            "annotations": {RETRAIN_REASON_ANNOTATION: reason[:1024], RETRAIN_TIME_ANNOTATION: rfc3339(now)},
        },
        "spec": spec,
    }


def decide(exp: Experiment, observed: RetrainObserved, now: datetime) -> RetrainOutcome:
    """The retrain part of a finished Experiment's pass."""
    retrain = exp.spec.retrain
    old = exp.status
    previous = list(old.retrains or []) if old else []
    records = history(previous, observed.children)
    count = max([(old.retrain_count or 0) if old else 0, *(c.index for c in observed.children),
                 *(_index(r.name, exp.metadata.name) for r in records)])
    last = parse_time(records[-1].time) if records else None
    events = [Event(REASON_RETRAIN_TRIGGERED, f"retraining as {r.name}: {r.reason}")
              for r in records if r.name not in {p.name for p in previous}]

    def outcome(child: dict[str, Any] | None = None, requeue: float | None = None, waiting: str | None = None,
                next_time: datetime | None = None) -> RetrainOutcome:
        shown = records[-RETRAIN_HISTORY:]
        status: dict[str, Any] = {
            "last_retrain_time": shown[-1].time if shown else (old.last_retrain_time if old else None),
            "next_retrain_time": rfc3339(next_time) if next_time else None,
            "retrain_count": count if (count or retrain) else None,
            "retrains": shown if (shown or retrain) else None,
            "retrain_message": waiting,
        }
        said = list(events)
        if waiting is not None and waiting != (old.retrain_message if old else None):
            said.append(Event(REASON_RETRAIN_HELD_BACK, waiting))
        return RetrainOutcome(status=status, child=child, events=tuple(said), requeue_after=requeue,
                              waiting=waiting)

    if retrain is None or old is None or old.phase not in FINISHED:
        return outcome()

    base = _finished_at(exp, now)
    if last is not None and last > base:
        base = last
    scheduled_at = next_fire(retrain.schedule, base) if retrain.schedule else None

    reason: str | None = None
    held: str | None = None
    waits: list[float] = []
    if scheduled_at is not None:
        if now >= scheduled_at:
            reason = f"schedule {retrain.schedule!r} fired at {rfc3339(scheduled_at)}"
        else:
            waits.append((scheduled_at - now).total_seconds())
    on_drift = retrain.on_drift
    call = drift_reason(exp, observed) if reason is None else DriftCall()
    held = call.waiting
    if call.reason is not None:
        cooldown_end = last + parse_duration(on_drift.cooldown) if last and on_drift else None
        if cooldown_end is not None and now < cooldown_end:
            waits.append((cooldown_end - now).total_seconds())
            held = (f"{call.reason}; held back by onDrift.cooldown={on_drift.cooldown} after "  # type: ignore[union-attr]
                    f"{records[-1].name} until {rfc3339(cooldown_end)}")
        else:
            reason = call.reason
    if on_drift is not None and on_drift.enabled:
        waits.append(POLL_SECONDS)

    if reason is not None:
        latest = max(observed.children, key=lambda c: c.index, default=None)
        recent = [r for r in records if now - parse_time(r.time) < DAY]
        if latest is not None and latest.phase not in FINISHED:
            return outcome(requeue=POLL_SECONDS, waiting=f"{reason}; waiting for {latest.name} to finish",
                           next_time=scheduled_at)
        if len(recent) >= retrain.max_retrains_per_day:
            free_at = parse_time(recent[0].time) + DAY
            return outcome(requeue=max(1.0, (free_at - now).total_seconds()),
                           waiting=f"{reason}; {len(recent)} retrains in the last 24h reached "
                                   f"maxRetrainsPerDay={retrain.max_retrains_per_day}", next_time=scheduled_at)
        count += 1
        child = desired_retrain(exp, count, reason, now)
        record = RetrainRecord(name=child["metadata"]["name"], time=rfc3339(now), reason=reason)
        records.append(record)
        events.append(Event(REASON_RETRAIN_TRIGGERED, f"retraining as {record.name}: {reason}"))
        next_time = next_fire(retrain.schedule, now) if retrain.schedule else None
        requeue = [(next_time - now).total_seconds()] if next_time else []
        if on_drift is not None and on_drift.enabled:
            requeue.append(POLL_SECONDS)
        return outcome(child=child, requeue=min(requeue, default=None), next_time=next_time)
    if on_drift is not None and on_drift.enabled and observed.service_missing:
        held = (f"spec.retrain.onDrift.service: no InferenceService {on_drift.service!r} in this namespace; "
                f"drift cannot trigger a retrain")
    return outcome(requeue=min(waits, default=None), next_time=scheduled_at, waiting=held)


def _finished_at(exp: Experiment, now: datetime) -> datetime:
    """When the parent finished: its completionTime, else (a status written before that field
    existed) its start or creation time, so that the schedule still comes due."""
    status = exp.status
    for text in (status.completion_time if status else None, status.start_time if status else None,
                 exp.metadata.creation_timestamp):
        if text:
            return parse_time(text)
    return now


def _index(name: str, parent: str) -> int:
    suffix = name.removeprefix(f"{parent}-r")
    return int(suffix) if suffix != name and suffix.isdigit() else 0
