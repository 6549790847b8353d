"""When is the local instance done, and did anything fail? A pure judgement over objects.

Settled: every Experiment Succeeded or Failed, every TrainingRun Succeeded or Failed, every
ModelVersion Validated or Rejected, every InferenceService Stable, Promoted, RolledBack or
Failed; every status current (its observedGeneration is the object's generation, where the
status carries one); every Deployment rolled out and ready, every Job finished.

Deployments of a Failed InferenceService are not waited for. An InferenceService whose
status reads settled while a Validated version its spec.challenger designates waits for its
rollout to start: the operator may not have seen that version yet.

Failed: an object the operator refused (Stalled, reason InvalidSpec: nothing will happen until
its spec changes, so it is settled too), an Experiment or InferenceService in phase Failed, a TrainingRun that failed on its
own (trials of an Experiment are judged by their Experiment, which tolerates up to
`maxFailedTrials`), or a Job of no TrainingRun that failed. Not failures: a Rejected
ModelVersion (its gates did their job) and a RolledBack challenger (the canary did its job;
the champion still serves).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from mlops_operator.api import InferenceService, ModelVersion
from mlops_operator.local.executor import MAX_REPLICAS
from mlops_operator.reconcile.inference_service import rollout_due

Obj = Mapping[str, Any]
TERMINAL_PHASES = {
    "Experiment": {"Succeeded", "Failed"},
    "TrainingRun": {"Succeeded", "Failed"},
    "ModelVersion": {"Validated", "Rejected"},
    "InferenceService": {"Stable", "Promoted", "RolledBack", "Failed"},
}
INFERENCE_SERVICE_LABEL = "mlops.seed.io/inferenceservice"
FAILED_PHASES = {"Experiment": {"Failed"}, "TrainingRun": {"Failed"}, "InferenceService": {"Failed"}}


@dataclass(frozen=True)
class Settlement:
    settled: bool
    failed: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)


def assess(objects: Iterable[Obj], deployments: Iterable[Obj], jobs: Iterable[Obj] = ()) -> Settlement:
    failed: list[str] = []
    waiting: list[str] = []
    given_up: set[tuple[str, str]] = set()
    objects = list(objects)
    model_versions = _parsed(ModelVersion, (o for o in objects if o.get("kind") == "ModelVersion"))
    for obj in objects:
        kind = str(obj.get("kind"))
        if kind not in TERMINAL_PHASES:
            continue
        meta = obj.get("metadata") or {}
        status = obj.get("status") or {}
        name = f"{kind} {meta.get('namespace', 'default')}/{meta.get('name')}"
        phase = status.get("phase")
        observed = status.get("observedGeneration")
        stalled = _stalled(status, meta.get("generation"))
        if stalled is not None:  # the operator refused the spec: nothing will happen until it changes
            failed.append(f"{name}: {stalled}")
            continue
        if phase not in TERMINAL_PHASES[kind] or (observed is not None and observed != meta.get("generation")):
            waiting.append(f"{name} ({phase or 'no status yet'})")
            continue
        if kind == "InferenceService" and phase == "Failed":
            given_up.add((str(meta.get("namespace", "default")), str(meta.get("name"))))
        elif kind == "InferenceService" and (due := _rollout_due(obj, model_versions)) is not None:
            waiting.append(f"{name} ({phase}; a rollout of {due} is due)")
            continue
        if phase in FAILED_PHASES.get(kind, ()) and not (kind == "TrainingRun" and _is_trial(obj)):
            failed.append(f"{name}: {phase}: {status.get('message') or status.get('failureReason') or ''}".rstrip(": "))
    for deployment in deployments:
        meta = deployment.get("metadata") or {}
        service = (meta.get("labels") or {}).get(INFERENCE_SERVICE_LABEL)
        if (str(meta.get("namespace", "default")), str(service)) in given_up:
            continue
        if not deployment_ready(deployment):
            waiting.append(f"Deployment {meta.get('namespace', 'default')}/{meta.get('name')} (not ready)")
    for job in jobs:
        meta = job.get("metadata") or {}
        name = f"Job {meta.get('namespace', 'default')}/{meta.get('name')}"
        finish = _job_finish(job)
        if finish is None:
            waiting.append(f"{name} (running)")
        elif finish == "Failed" and not any(ref.get("kind") == "TrainingRun"
                                            for ref in meta.get("ownerReferences") or []):
            failed.append(f"{name}: Failed")
    return Settlement(settled=not waiting, failed=failed, waiting=waiting)


Key = tuple[str, str, str]  # kind, namespace, name


def key_of(obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return (str(obj.get("kind")), str(meta.get("namespace", "default")), str(meta.get("name")))


def owned_by(objects: Iterable[Obj], roots: Iterable[Key]) -> list[Obj]:
    """The objects named by `roots` and every object they own, transitively (by the uids in
    ownerReferences): what one `up -f` is answerable for."""
    objects = list(objects)
    wanted = set(roots)
    uids = {str(o["metadata"]["uid"]) for o in objects if key_of(o) in wanted and (o.get("metadata") or {}).get("uid")}
    scoped = [o for o in objects if key_of(o) in wanted]
    rest = [o for o in objects if key_of(o) not in wanted]
    while True:
        children = [o for o in rest if any(ref.get("uid") in uids for ref in o["metadata"].get("ownerReferences") or ())]
        if not children:
            return scoped
        scoped += children
        uids |= {str(o["metadata"].get("uid")) for o in children}
        rest = [o for o in rest if o not in children]


def _parsed(model: Any, objects: Iterable[Obj]) -> list[Any]:
    parsed = []
    for obj in objects:
        try:
            parsed.append(model.model_validate(obj))
        except ValidationError:  # not ours to judge here: the operator reports a bad spec itself
            continue
    return parsed


def _rollout_due(isvc: Obj, model_versions: list[ModelVersion]) -> str | None:
    [service] = _parsed(InferenceService, [isvc]) or [None]
    if service is None:
        return None
    namespace = service.metadata.namespace or "default"
    return rollout_due(service, [mv for mv in model_versions if (mv.metadata.namespace or "default") == namespace])


def _stalled(status: Obj, generation: Any) -> str | None:
    """'InvalidSpec: <message>' when the object is Stalled for its current generation."""
    for condition in status.get("conditions") or ():
        if (condition.get("type") == "Stalled" and condition.get("status") == "True"
                and condition.get("observedGeneration") in (None, generation)):
            return f"{condition.get('reason')}: {condition.get('message')}"
    return None


def _job_finish(job: Obj) -> str | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            return str(condition["type"])
    return None


def _is_trial(obj: Obj) -> bool:
    spec = obj.get("spec") or {}
    owners = (obj.get("metadata") or {}).get("ownerReferences") or []
    return bool(spec.get("experiment")) or any(ref.get("kind") == "Experiment" for ref in owners)


def deployment_ready(deployment: Obj) -> bool:
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    wanted = min(int(spec.get("replicas", 1)), MAX_REPLICAS)
    generation = (deployment.get("metadata") or {}).get("generation")
    # As kstatus judges a rollout complete: the new pods are all there, ready, and the old
    # ones are gone.
    return (
        status.get("observedGeneration") == generation
        and int(status.get("replicas") or 0) == wanted
        and int(status.get("readyReplicas") or 0) >= wanted
        and int(status.get("updatedReplicas") or 0) >= wanted
    )
