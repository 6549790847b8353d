"""TrainingRun controller: observe the trainer Job and its pods, reconcile, apply."""

from __future__ import annotations

from datetime import datetime

from .. import metrics
from ..api.training_run import TrainingRun
from ..cluster.port import Cluster, NotFound, Obj
from ..reconcile import training_run as logic
from ..reconcile.common import Settings, estimator_problem, image_problem
from ..reconcile.plan import Plan
from . import meta_of, parse, run_sync, settings_from_env, status_phase
from .registry import versions_of_model

JOB_NAME_LABEL = "job-name"


def observe_training_run(cluster: Cluster, obj: Obj) -> logic.TrainingRunObserved:
    if status_phase(obj) in logic.TERMINAL:
        return logic.TrainingRunObserved()  # a record: nothing to look at
    namespace, name = meta_of(obj)
    job_name = logic.job_name(name)
    try:
        job = cluster.get("batch/v1", "Job", namespace, job_name)
    except NotFound:
        # The Job is about to be created: its config names the family's data contract.
        model = str((obj.get("spec") or {}).get("model") or "")
        return logic.TrainingRunObserved(contract=logic.data_contract(versions_of_model(cluster, namespace, model)))
    facts = logic.job_facts(job)
    trainer = None
    if facts.complete or facts.failed:
        pods = cluster.list("v1", "Pod", namespace, {JOB_NAME_LABEL: job_name})
        trainer = logic.trainer_result(pods)
    return logic.TrainingRunObserved(job=facts, trainer=trainer)


def sync(cluster: Cluster, obj: Obj, now: datetime, settings: Settings | None = None) -> Plan:
    settings = settings or settings_from_env()

    def checks(run: TrainingRun) -> list[str]:
        problems = (estimator_problem(run.spec.estimator, settings.allowed_estimators),
                    image_problem(run.spec.image, settings.allowed_images))
        return [problem for problem in problems if problem]

    def step(current: Obj):
        run = parse(TrainingRun, current, checks)
        observed = observe_training_run(cluster, current)
        plan = logic.reconcile(run, observed, now, settings)
        seen = {("batch/v1", "Job", logic.job_name(run.metadata.name)): None} if observed.job is None else None
        return plan, seen

    plan = run_sync("TrainingRun", cluster, obj, now, step)
    if plan.metrics.get("training_run_failed"):
        namespace, _ = meta_of(obj)
        metrics.TRAINING_RUNS_FAILED.labels(namespace or "default", str(obj["spec"].get("model"))).inc()
    return plan
