"""Experiment controller: observe the trials, registered versions and (with spec.retrain)
the retrain Experiments and the drift of the watched InferenceService; register what is
due, reconcile, apply."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from pydantic import ValidationError

from .. import metrics
from ..api.experiment import Experiment
from ..api.inference_service import DriftStatus, InferenceService
from ..api.model_version import ModelVersion
from ..api.training_run import TrainingRun
from ..cluster.port import Cluster, NotFound, Obj
from ..reconcile import experiment as logic
from ..reconcile import retrain as retraining
from ..reconcile.common import EXPERIMENT_LABEL, MODEL_LABEL, TRAINING_RUN_LABEL, Settings
from ..reconcile.plan import Event, Plan
from . import meta_of, parse, run_sync, settings_from_env, status_phase
from .registry import register_model_version

REASON_REGISTRATION_FAILED = "RegistrationFailed"


def estimator_problems(exp: Experiment, settings: Settings) -> list[str]:
    """What every trial's run would refuse before fitting (an estimator that does not import,
    a parameter it does not have), judged once here with the runtime's own checks, so a bad
    Experiment is one InvalidSpec and no trials. Searched parameters are checked by name.
    Here rather than in `reconcile`: it imports scikit-learn, which the pure layers need not."""
    from mlops_runtime.errors import UserError
    from mlops_runtime.estimators import check_estimator

    params = {**dict.fromkeys(exp.spec.search.space), **exp.spec.params}
    try:
        check_estimator(exp.spec.estimator, params, settings.allowed_estimators)
    except UserError as error:
        field = "spec.params" if error.reason == "UnknownParameter" else "spec.estimator"
        return [f"{field}: {error.message}"]
    return []


def observe_trials(cluster: Cluster, obj: Obj) -> list[Obj]:
    namespace, name = meta_of(obj)
    return cluster.list(TrainingRun.api_version(), "TrainingRun", namespace, {EXPERIMENT_LABEL: name})


def observe_warm_start(cluster: Cluster, obj: Obj, exp: Experiment) -> tuple[logic.TrialFacts, ...]:
    """The finished trials of the Experiments in spec.search.warmStartFrom (same namespace),
    in that order and by trial index; an Experiment that does not exist contributes none.
    Their objective value is re-read in this Experiment's terms (its objective metric), since
    the other Experiment may have optimised another metric."""
    namespace, _ = meta_of(obj)
    metric = exp.spec.objective.metric
    trials: list[logic.TrialFacts] = []
    for source in exp.spec.search.warm_start_from:
        runs = cluster.list(TrainingRun.api_version(), "TrainingRun", namespace, {EXPERIMENT_LABEL: source})
        facts = sorted((logic.trial_facts(r) for r in runs), key=lambda t: t.index)
        trials += [dataclasses.replace(t, objective_value=t.metrics.get(metric))
                   for t in facts if t.phase in logic.TERMINAL]
    return tuple(trials)


def observe_versions(cluster: Cluster, obj: Obj, model: str) -> tuple[logic.RegisteredVersion, ...]:
    namespace, name = meta_of(obj)
    found = cluster.list(ModelVersion.api_version(), "ModelVersion", namespace,
                         {EXPERIMENT_LABEL: name, MODEL_LABEL: model})
    return tuple(
        logic.RegisteredVersion(
            name=mv["metadata"]["name"],
            training_run=(mv["metadata"].get("labels") or {}).get(TRAINING_RUN_LABEL, ""),
            version=int((mv.get("spec") or {}).get("version") or 0),
        )
        for mv in found
    )


def observe_retrain(cluster: Cluster, obj: Obj, exp: Experiment) -> retraining.RetrainObserved:
    """The retrain Experiments of this object, and status.drift of spec.retrain.onDrift.service."""
    retrain = exp.spec.retrain
    if retrain is None:
        return retraining.RetrainObserved()
    namespace, name = meta_of(obj)
    own_uid = obj["metadata"].get("uid")
    children = cluster.list(Experiment.api_version(), "Experiment", namespace, {retraining.RETRAIN_OF_LABEL: name})
    facts = tuple(retraining.child_facts(c) for c in children if _owned_by(c, own_uid))
    drift: DriftStatus | None = None
    missing = False
    on_drift = retrain.on_drift
    if on_drift is not None and on_drift.enabled and on_drift.service:
        try:
            service = cluster.get(InferenceService.api_version(), "InferenceService", namespace, on_drift.service)
            raw = (service.get("status") or {}).get("drift")
            drift = DriftStatus.model_validate(raw) if raw else None
        except NotFound:
            missing = True
        except ValidationError:  # a status from another operator version: no usable reading
            drift = None
    return retraining.RetrainObserved(children=facts, drift=drift, service_missing=missing)


def sync(cluster: Cluster, obj: Obj, now: datetime, settings: Settings | None = None) -> Plan:
    settings = settings or settings_from_env()

    def step(current: Obj):
        if status_phase(current) in logic.TERMINAL:  # a record: judged when it ran
            exp = parse(Experiment, current, lambda e: logic.spec_problems(e, settings))
            observed = logic.ExperimentObserved(retrain=observe_retrain(cluster, current, exp))
            plan = logic.reconcile(exp, observed, now)
            return plan, _absent(plan)
        # The pure checks first; the runtime's only for an estimator the allow-list admits.
        exp = parse(Experiment, current, lambda e: logic.spec_problems(e, settings) or estimator_problems(e, settings))
        runs = observe_trials(cluster, current)
        own_uid = current["metadata"].get("uid")
        runs = [r for r in runs if _owned_by(r, own_uid)]
        observed = logic.ExperimentObserved(
            trials=tuple(logic.trial_facts(r) for r in runs),
            versions=observe_versions(cluster, current, exp.spec.model),
            retrain=observe_retrain(cluster, current, exp),
            warm_start=observe_warm_start(cluster, current, exp),
        )
        problems: list[Event] = []
        due = logic.registrations_due(exp, observed)
        if due:
            by_name = {r["metadata"]["name"]: r for r in runs}
            added = []
            for name in due:
                try:
                    run = TrainingRun.model_validate(by_name[name])
                    mv, _ = register_model_version(cluster, run, exp, settings)
                except ValueError as error:
                    problems.append(Event(REASON_REGISTRATION_FAILED, str(error), "Warning"))
                    continue
                added.append(logic.RegisteredVersion(
                    name=mv["metadata"]["name"], training_run=name, version=int(mv["spec"]["version"])))
            observed = dataclasses.replace(observed, versions=observed.versions + tuple(added))
        plan = logic.reconcile(exp, observed, now)
        if problems:
            plan = dataclasses.replace(plan, events=plan.events + tuple(problems))
        return plan, _absent(plan)

    plan = run_sync("Experiment", cluster, obj, now, step)
    gauges = plan.metrics
    if "phase" in gauges:
        namespace, name = meta_of(obj)
        metrics.record_experiment(namespace or "default", name, gauges["phase"], gauges["trials"])
    return plan


def _absent(plan: Plan) -> dict[tuple[str, str, str], Obj | None]:
    """The plan's children are new ones (trials, a retrain): apply_plan need not read them first."""
    return {(c["apiVersion"], c["kind"], c["metadata"]["name"]): None for c in plan.children}


def _owned_by(run: Obj, uid: str | None) -> bool:
    """Trials of this Experiment object (not of a deleted one of the same name whose trials
    await garbage collection)."""
    refs = run["metadata"].get("ownerReferences") or ()
    return uid is None or not refs or any(ref.get("uid") == uid for ref in refs)

