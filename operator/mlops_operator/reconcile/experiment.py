"""Experiment: a hyperparameter search run as TrainingRuns `<exp>-t001`, `-t002`, ...

Each pass counts the trials by phase, ranks the succeeded ones by the objective, decides
whether more trials start (parallelism, maxTrials, the grid's size, maxFailedTrials, early
stopping), proposes the new trials' parameters (a pure function of the space, the completed
trials and the seed: see `search`), and writes the status. Registration of ModelVersions
is I/O with the API's conflict semantics, so the wiring does it (see
`controllers.registry`); this module only says which trials are due
(`registrations_due`) and reads back what was registered.

Spec changes while running (documented in docs/experiments.md): budget fields
(maxTrials, parallelism, maxFailedTrials, earlyStopping) apply at once; every other field
applies to trials started from then on, existing trials are kept. A finished Experiment
(Succeeded or Failed) is a record and ignores later spec changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..api.conditions import (
    READY,
    REASON_BEST_IMPROVED,
    REASON_EARLY_STOPPED,
    REASON_FAILED,
    REASON_MAX_FAILED_TRIALS,
    REASON_MAX_TRIALS,
    REASON_PENDING,
    REASON_RUNNING,
    REASON_SUCCEEDED,
    REASON_TRIAL_FAILED,
    REASON_TRIAL_STARTED,
    REASON_VERSION_REGISTERED,
    RUNS_COMPLETE,
    Condition,
    find_condition,
    rfc3339,
)
from ..api.experiment import LEADERBOARD_SIZE, PARETO_SIZE, Experiment, ExperimentStatus, TrialCounts, TrialSummary
from ..api.ml import Objective, Validation
from ..api.naming import trial_name
from ..search import pareto, propose, trial_budget
from . import retrain as retraining
from .common import (
    TRIAL_INDEX_LABEL,
    Settings,
    child_labels,
    clear_stalled,
    estimator_problem,
    image_problem,
    with_conditions,
)
from .plan import Event, Plan

TRIAL_ROLE = "trial"
REASON_NO_SUCCEEDED_TRIALS = "NoSucceededTrials"
REASON_REGISTERING = "Registering"
ACTIVE = ("Pending", "Running")
TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class TrialFacts:
    """What the Experiment needs to know about one of its TrainingRuns."""

    name: str
    index: int
    phase: str = "Pending"
    params: Mapping[str, Any] = field(default_factory=dict)
    objective_value: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    message: str | None = None
    size: int | None = None  # the artifact's bytes (the objective model_size_bytes)
    duration_seconds: float | None = None  # the objective training_seconds


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    training_run: str
    version: int


@dataclass(frozen=True)
class ExperimentObserved:
    trials: tuple[TrialFacts, ...] = ()
    versions: tuple[RegisteredVersion, ...] = ()
    retrain: retraining.RetrainObserved = field(default_factory=retraining.RetrainObserved)
    # Trials of the Experiments in spec.search.warmStartFrom, in that order.
    warm_start: tuple[TrialFacts, ...] = ()


@dataclass(frozen=True)
class Decision:
    """Everything a pass decides, before it is written as status."""

    trials: tuple[TrialFacts, ...]
    counts: TrialCounts
    ranked: tuple[TrialFacts, ...]
    new_indices: tuple[int, ...]
    stop_reason: str | None
    phase: str
    to_register: tuple[str, ...]
    missing_registrations: tuple[str, ...]
    to_stop: tuple[str, ...] = ()  # active trials of a failed search: deleted, they cannot change it


def trial_facts(obj: Mapping[str, Any]) -> TrialFacts:
    """Condense a TrainingRun as the API serves it."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    labels = meta.get("labels") or {}
    name = meta.get("name", "")
    try:
        index = int(labels.get(TRIAL_INDEX_LABEL) or name.rsplit("-t", 1)[-1])
    except ValueError:
        index = 0
    return TrialFacts(
        name=name,
        index=index,
        phase=status.get("phase") or "Pending",
        params=(obj.get("spec") or {}).get("params") or {},
        objective_value=status.get("objectiveValue"),
        metrics=status.get("metrics") or {},
        message=status.get("message"),
        size=status.get("size"),
        duration_seconds=status.get("durationSeconds"),
    )


def spec_problems(exp: Experiment, settings: Settings) -> list[str]:
    """What the CRD schema cannot catch but the operator can: each names its field."""
    problems = []
    estimator = estimator_problem(exp.spec.estimator, settings.allowed_estimators)
    if estimator:
        problems.append(estimator)
    for i, step in enumerate(exp.spec.steps):  # steps come from the same allow-list
        step_problem = estimator_problem(step.estimator, settings.allowed_estimators, f"spec.steps[{i}].estimator")
        if step_problem:
            problems.append(step_problem)
    image = image_problem(exp.spec.image, settings.allowed_images)
    if image:
        problems.append(image)
    metrics = exp.spec.metrics
    objective = exp.spec.objective.metric
    # A cross-validated objective (cv_accuracy_mean) comes from its metric (accuracy).
    base = objective.removeprefix("cv_").rsplit("_", 1)[0]
    if metrics is not None and objective not in metrics and base not in metrics:
        problems.append(f"spec.objective.metric: {objective!r} is not among spec.metrics {metrics}")
    return problems + retraining.spec_problems(exp.spec.retrain)


def maximizing(exp: Experiment) -> bool:
    return exp.spec.objective.goal == "maximize"


def objectives(exp: Experiment) -> list[Objective]:
    return [exp.spec.objective, *exp.spec.secondary_objectives]


def objective_point(exp: Experiment, trial: TrialFacts) -> tuple[float, ...] | None:
    """A succeeded trial's value on every objective (None: one is missing)."""
    if trial.phase != "Succeeded" or trial.objective_value is None:
        return None
    known = {**trial.metrics, pareto.MODEL_SIZE: trial.size, pareto.TRAINING_SECONDS: trial.duration_seconds,
             exp.spec.objective.metric: trial.objective_value}
    return pareto.objective_values(objectives(exp), known)


def scored_value(exp: Experiment, trial: TrialFacts) -> float | tuple[float, ...] | None:
    """What the search learns from a trial: its objective value, or its point when there
    are secondary objectives."""
    if not exp.spec.secondary_objectives:
        return float(trial.objective_value) if trial.phase == "Succeeded" and trial.objective_value is not None \
            else None
    return objective_point(exp, trial)


def goals(exp: Experiment) -> bool | list[bool]:
    if not exp.spec.secondary_objectives:
        return maximizing(exp)
    return [o.goal == "maximize" for o in objectives(exp)]


def rank(exp: Experiment, trials: tuple[TrialFacts, ...]) -> tuple[TrialFacts, ...]:
    """Succeeded trials with an objective value, best first; ties go to the earlier trial.
    With secondary objectives "best" is the declared preference (search.pareto): the
    Pareto-optimal trials within the limits first, then the rest of the front, then the
    others, each by the primary objective; trials missing a secondary value come last."""
    sign = -1.0 if maximizing(exp) else 1.0
    scored = [t for t in trials if t.phase == "Succeeded" and t.objective_value is not None]
    by_value = sorted(scored, key=lambda t: (sign * float(t.objective_value), t.index))  # type: ignore[arg-type]
    if not exp.spec.secondary_objectives:
        return tuple(by_value)
    points = [(t.name, p) for t in sorted(scored, key=lambda t: t.index) if (p := objective_point(exp, t))]
    order = pareto.preference_order(points, objectives(exp))
    by_name = {t.name: t for t in scored}
    return tuple([by_name[n] for n in order] + [t for t in by_value if t.name not in set(order)])


def front_of(exp: Experiment, ranked: tuple[TrialFacts, ...]) -> list[TrialFacts] | None:
    """The Pareto front in preference order (None without secondary objectives)."""
    if not exp.spec.secondary_objectives:
        return None
    points = [(t.name, p) for t in ranked if (p := objective_point(exp, t))]
    front = set(pareto.pareto_front(points, [o.goal == "maximize" for o in objectives(exp)]))
    return [t for t in ranked if t.name in front]


def early_stop_reached(exp: Experiment, trials: tuple[TrialFacts, ...], ranked: tuple[TrialFacts, ...]) -> str | None:
    """Why the search stops early, or None."""
    stopping = exp.spec.search.early_stopping
    if stopping is None or not ranked:
        return None
    best = ranked[0]
    value = float(best.objective_value)  # type: ignore[arg-type]
    target = stopping.target_value
    if target is not None and (value >= target if maximizing(exp) else value <= target):
        return f"{best.name} reached the target {exp.spec.objective.metric}={target:g} ({value:.4g})"
    if stopping.patience is not None:
        later = [t for t in trials if t.index > best.index and t.phase in TERMINAL]
        if len(later) >= stopping.patience:
            return f"no improvement on {best.name} in {len(later)} trials (patience {stopping.patience})"
    return None


def decide(exp: Experiment, observed: ExperimentObserved) -> tuple[Decision, str]:
    """The pass's decision and a human message about it."""
    search = exp.spec.search
    trials = tuple(sorted(observed.trials, key=lambda t: t.index))
    counts = TrialCounts(
        total=len(trials),
        pending=sum(t.phase == "Pending" for t in trials),
        running=sum(t.phase == "Running" for t in trials),
        succeeded=sum(t.phase == "Succeeded" for t in trials),
        failed=sum(t.phase == "Failed" for t in trials),
    )
    ranked = rank(exp, trials)
    active = counts.pending + counts.running
    created = max((t.index for t in trials), default=0)
    budget = trial_budget(search)

    stop_reason: str | None = None
    message = ""
    if counts.failed > search.max_failed_trials:
        stop_reason = REASON_MAX_FAILED_TRIALS
        message = f"{counts.failed} trials failed, more than maxFailedTrials={search.max_failed_trials}"
    elif (why := early_stop_reached(exp, trials, ranked)) is not None:
        stop_reason, message = REASON_EARLY_STOPPED, f"stopped early: {why}"
    elif created >= budget:
        stop_reason = REASON_MAX_TRIALS
        message = f"all {budget} trials started"

    new_indices: tuple[int, ...] = ()
    if stop_reason is None:
        room = min(search.running_at_once() - active, budget - created)
        new_indices = tuple(range(created + 1, created + 1 + max(room, 0)))

    to_register: tuple[str, ...] = ()
    to_stop: tuple[str, ...] = ()
    if stop_reason == REASON_MAX_FAILED_TRIALS:
        phase = "Failed"
        # Queued and running trials would only spend resources on a search that has failed
        # (and a queued one would still start): they are stopped with the Experiment.
        to_stop = tuple(t.name for t in trials if t.phase in ACTIVE)
        if to_stop:
            message += f"; stopped {', '.join(to_stop)}"
    elif stop_reason is not None and active == 0:
        if not ranked:
            phase = "Failed"
            stop_reason, message = REASON_NO_SUCCEEDED_TRIALS, f"none of the {counts.total} trials succeeded"
        else:
            policy = exp.spec.register_policy
            if policy == "registerBest":
                to_register = (ranked[0].name,)
            elif policy == "registerAll":
                to_register = tuple(t.name for t in trials if t.phase == "Succeeded")
            phase = "Succeeded"
    else:
        phase = "Running" if trials or new_indices else "Pending"

    registered = {v.training_run for v in observed.versions}
    missing = tuple(name for name in to_register if name not in registered)
    if phase == "Succeeded" and missing:
        phase = "Running"  # finished searching; Succeeded once the versions exist
    if to_stop:
        counts = counts.model_copy(update={"total": counts.total - len(to_stop), "pending": 0, "running": 0})
    decision = Decision(trials, counts, ranked, new_indices, stop_reason, phase, to_register, missing, to_stop)
    return decision, message


def registrations_due(exp: Experiment, observed: ExperimentObserved) -> tuple[str, ...]:
    """Names of the TrainingRuns to register as ModelVersions now (none while the search
    runs, none for a finished record)."""
    if exp.status is not None and exp.status.phase in TERMINAL:
        return ()
    decision, _ = decide(exp, observed)
    return decision.missing_registrations


def desired_trial(exp: Experiment, index: int, proposal: Mapping[str, Any]) -> dict[str, Any]:
    """TrainingRun `<exp>-tNNN` (without owner reference: the wiring adopts it)."""
    spec = exp.spec
    name = trial_name(exp.metadata.name, index)
    labels = child_labels("Experiment", exp.metadata.name, TRIAL_ROLE, spec.model)
    labels[TRIAL_INDEX_LABEL] = str(index)
    run_spec: dict[str, Any] = {
        "model": spec.model,
        "experiment": exp.metadata.name,
        "dataset": spec.dataset.dump(),
        "estimator": spec.estimator,
        "params": {**spec.params, **proposal},
        "objective": spec.objective.dump(),
        "seed": spec.search.seed,
        "image": spec.image,
        "artifacts": spec.artifacts.dump(),
        "activeDeadlineSeconds": spec.active_deadline_seconds,
        "backoffLimit": spec.backoff_limit,
        "onnx": spec.onnx,
    }
    if spec.steps:
        run_spec["steps"] = [step.dump() for step in spec.steps]
    if spec.metrics is not None:
        run_spec["metrics"] = list(spec.metrics)
    if spec.cross_validation is not None:
        run_spec["crossValidation"] = spec.cross_validation.dump()
    if spec.resources is not None:
        run_spec["resources"] = spec.resources.dump()
    if spec.validation != Validation():
        # The trainer applies data, slices and importance; left out when all are defaults,
        # which the runtime's own defaults equal.
        run_spec["validation"] = spec.validation.dump()
    return {
        "apiVersion": exp.api_version(),
        "kind": "TrainingRun",
        "metadata": {"name": name, "namespace": exp.metadata.namespace, "labels": labels},
        "spec": run_spec,
    }


def _searched(exp: Experiment, params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: params[k] for k in exp.spec.search.space if k in params}


def _summary(exp: Experiment, trial: TrialFacts, full_params: bool) -> TrialSummary:
    return TrialSummary(
        name=trial.name,
        phase=trial.phase,
        objective_value=trial.objective_value,
        params=dict(trial.params) if full_params else _searched(exp, trial.params),
        metrics=dict(trial.metrics),
    )


def _front_summary(exp: Experiment, trial: TrialFacts) -> TrialSummary:
    """A Pareto-front entry: its metrics include every objective's value (model_size_bytes
    and training_seconds come from the TrainingRun's status, not from its metrics)."""
    summary = _summary(exp, trial, full_params=False)
    point = objective_point(exp, trial) or ()
    values = {o.metric: v for o, v in zip(objectives(exp), point)}
    return summary.model_copy(update={"metrics": {**summary.metrics, **values}})


def _format_params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "no searched parameters"


def reconcile(exp: Experiment, observed: ExperimentObserved, now: datetime) -> Plan:
    old = exp.status or ExperimentStatus()
    generation = exp.metadata.generation
    conditions = clear_stalled(list(old.conditions), generation, now)
    if old.phase in TERMINAL:
        status = old.model_copy(update={"conditions": conditions, "observed_generation": generation})
        return _with_retrain(exp, status, observed, now, Plan(status={}, metrics=_gauges(status)))

    decision, stop_message = decide(exp, observed)
    children, events = _start_trials(exp, decision, observed.warm_start)
    counts = decision.counts.model_copy(update={
        "total": decision.counts.total + len(children), "pending": decision.counts.pending + len(children)})
    best = decision.ranked[0] if decision.ranked else None
    by_run = {v.training_run: v for v in observed.versions}
    pairs = [(name, by_run[name].name) for name in decision.to_register if name in by_run]
    registered = [version for _, version in pairs]
    events = _announce_unrecorded_trials(exp, old, decision) + events + _progress_events(
        exp, old, decision, counts, pairs)
    updates, message, phase_events = _phase(exp, decision, counts, stop_message, registered, conditions)
    conditions = with_conditions(conditions, updates, generation, now)

    status = ExperimentStatus(
        phase=decision.phase,  # type: ignore[arg-type]
        observed_generation=generation,
        trials=counts,
        best_trial=_summary(exp, best, full_params=True) if best else None,
        best_objective_value=best.objective_value if best else None,
        leaderboard=[_summary(exp, t, full_params=False) for t in decision.ranked[:LEADERBOARD_SIZE]],
        pareto_front=None if (front := front_of(exp, decision.ranked)) is None
        else [_front_summary(exp, t) for t in front[:PARETO_SIZE]],
        model_version=by_run[best.name].name if best is not None and best.name in by_run else old.model_version,
        registered_versions=list(dict.fromkeys([*old.registered_versions, *registered])),
        start_time=old.start_time or (rfc3339(now) if counts.total else None),
        completion_time=old.completion_time or (rfc3339(now) if decision.phase in TERMINAL else None),
        last_retrain_time=old.last_retrain_time,
        next_retrain_time=old.next_retrain_time,
        retrain_count=old.retrain_count,
        retrains=old.retrains,
        retrain_message=old.retrain_message,
        message=message,
        conditions=conditions,
    )
    stopped = tuple((exp.api_version(), "TrainingRun", name) for name in decision.to_stop)
    plan = Plan(status={}, children=tuple(children), deletions=stopped, events=tuple(events + phase_events),
                metrics=_gauges(status))
    return _with_retrain(exp, status, observed, now, plan)


def _with_retrain(exp: Experiment, status: ExperimentStatus, observed: ExperimentObserved, now: datetime,
                  plan: Plan) -> Plan:
    """`plan` with `status` and what spec.retrain decides for it (a finished Experiment may
    start a retrain: see reconcile.retrain)."""
    outcome = retraining.decide(exp.model_copy(update={"status": status}), observed.retrain, now)
    status = status.model_copy(update=outcome.status)
    child = (outcome.child,) if outcome.child is not None else ()
    return dataclasses.replace(plan, status=status.dump(), children=plan.children + child,
                               events=plan.events + outcome.events, requeue_after=outcome.requeue_after)


def _start_trials(exp: Experiment, decision: Decision,
                  warm_start: tuple[TrialFacts, ...] = ()) -> tuple[list[dict[str, Any]], list[Event]]:
    """The new trials' manifests, each with its TrialStarted Event."""
    # The warm start's trials, then every started trial in index order: the scored ones
    # teach the sampler, all of them (and the ones this pass starts) are points not to
    # propose again.
    history: list[tuple[dict[str, Any], Any]] = [
        (_searched(exp, t.params), scored_value(exp, t)) for t in (*warm_start, *decision.trials)]
    children, events = [], []
    for index in decision.new_indices:
        proposal = propose(exp.spec.search, history, index, goals(exp))
        history.append((proposal, None))
        manifest = desired_trial(exp, index, proposal)
        children.append(manifest)
        events.append(Event(REASON_TRIAL_STARTED, f"started {manifest['metadata']['name']}: {_format_params(proposal)}"))
    return children, events


def _announce_unrecorded_trials(exp: Experiment, old: ExperimentStatus, decision: Decision) -> list[Event]:
    """Trials created by a pass whose status write never happened (a crash, a lost race)
    are announced now: Events follow the recorded status, not the actions of one pass."""
    return [Event(REASON_TRIAL_STARTED, f"started {t.name}: {_format_params(_searched(exp, t.params))}")
            for t in decision.trials if t.index > old.trials.total]


def _progress_events(
    exp: Experiment, old: ExperimentStatus, decision: Decision, counts: TrialCounts,
    registered: list[tuple[str, str]],
) -> list[Event]:
    """TrialFailed, BestTrialImproved and VersionRegistered (`registered`: pairs of
    TrainingRun and ModelVersion), each once: measured against what the previous status
    recorded."""
    events = []
    newly_failed = counts.failed - old.trials.failed
    if newly_failed > 0:
        for trial in [t for t in decision.trials if t.phase == "Failed"][-newly_failed:]:
            events.append(Event(REASON_TRIAL_FAILED, f"{trial.name} failed: {trial.message or 'no message'}",
                                "Warning"))
    best = decision.ranked[0] if decision.ranked else None
    if best is not None and (old.best_trial is None or old.best_trial.name != best.name):
        was = f" (was {old.best_objective_value:.4g})" if old.best_objective_value is not None else ""
        events.append(Event(REASON_BEST_IMPROVED,
                            f"{best.name}: {exp.spec.objective.metric}={best.objective_value:.4g}{was}"))
    for run, version in registered:
        if version not in old.registered_versions:
            events.append(Event(REASON_VERSION_REGISTERED, f"registered {version} from {run}"))
    return events


def _phase(
    exp: Experiment,
    decision: Decision,
    counts: TrialCounts,
    stop_message: str,
    registered: list[str],
    conditions: list[Condition],
) -> tuple[list[tuple[str, Any, str, str]], str, list[Event]]:
    """Condition updates, the status message and the phase's Events."""
    active = counts.pending + counts.running
    if decision.phase == "Failed":
        reason = decision.stop_reason or REASON_FAILED
        return ([(READY, "False", reason, stop_message), (RUNS_COMPLETE, "True", reason, stop_message)],
                stop_message, [Event(reason, stop_message, "Warning")])
    if decision.phase == "Succeeded":
        best = decision.ranked[0]
        message = f"{stop_message}; best {best.name} {exp.spec.objective.metric}={best.objective_value:.4g}"
        if registered:
            message += f", registered {', '.join(registered)}"
        return ([(READY, "True", REASON_SUCCEEDED, message),
                 (RUNS_COMPLETE, "True", decision.stop_reason or REASON_SUCCEEDED, stop_message)],
                message, [Event(REASON_SUCCEEDED, message)])
    if decision.stop_reason is not None:
        missing = decision.missing_registrations
        message = f"{stop_message}; " + (f"registering {', '.join(missing)}" if missing
                                         else f"waiting for {active} running trials")
        events = []
        old_complete = find_condition(conditions, RUNS_COMPLETE)
        if decision.stop_reason == REASON_EARLY_STOPPED and (old_complete is None
                                                             or old_complete.reason != REASON_EARLY_STOPPED):
            events.append(Event(REASON_EARLY_STOPPED, stop_message))
        # Complete only once no trial runs: "no more start" is not "none is running".
        complete = "True" if active == 0 else "False"
        return ([(READY, "Unknown", REASON_REGISTERING if missing else REASON_RUNNING, message),
                 (RUNS_COMPLETE, complete, decision.stop_reason, message if active else stop_message)],
                message, events)
    message = (f"{counts.succeeded} succeeded, {counts.failed} failed, "
               f"{active} running of {trial_budget(exp.spec.search)} trials")
    reason = REASON_RUNNING if decision.phase == "Running" else REASON_PENDING
    return [(READY, "Unknown", reason, message), (RUNS_COMPLETE, "False", reason, message)], message, []


def _gauges(status: ExperimentStatus) -> dict[str, Any]:
    t = status.trials
    return {
        "phase": status.phase,
        "trials": {"Pending": t.pending, "Running": t.running, "Succeeded": t.succeeded, "Failed": t.failed},
    }
