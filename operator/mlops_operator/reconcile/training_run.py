"""TrainingRun: one training attempt as one batch/v1 Job, and its result read back from the
Job's conditions and the trainer container's termination message.

A run reads its spec when it creates its Job; a Job's pod template is immutable, and a
finished run is a record, so a terminal run (Succeeded or Failed) never creates a Job again
(even after `ttlSecondsAfterFinished` removed the old one). To train again, create a new
TrainingRun."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from ..api.conditions import Condition, rfc3339
from ..api.conditions import (
    READY,
    REASON_FAILED,
    REASON_JOB_CREATED,
    REASON_RUNNING,
    REASON_SUCCEEDED,
    SUCCEEDED,
)
from ..api.ml import DataReportSummary, FeatureImportance, Signature, SliceResult
from ..api.naming import child_name
from ..api.training_run import TrainingRun, TrainingRunStatus
from .common import (
    Settings,
    camel_reason,
    child_labels,
    clear_stalled,
    restricted_container_security_context,
    restricted_pod_security_context,
    with_conditions,
)
from .plan import Event, Plan

TRAINER_ROLE = "trainer"
CONTAINER = "trainer"
COMMAND = ["python", "-m", "mlops_runtime.train"]
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
EXIT_INTERNAL_ERROR = 1
EXIT_USER_ERROR = 2
EXIT_INFRASTRUCTURE = 75
# A Job reported Complete before its pod's termination message is visible waits this long
# for it, then the run fails with ResultMissing.
RESULT_GRACE = timedelta(seconds=60)
RESULT_RECHECK_SECONDS = 5.0
MESSAGE_LIMIT = 2048
REASON_RESULT_MISSING = "ResultMissing"
TERMINAL = ("Succeeded", "Failed")

_SUMMARY_FIELDS = {
    "artifactUri": "artifact_uri",
    "modelUri": "model_uri",
    "sha256": "sha256",
    "size": "size",
    "onnxUri": "onnx_uri",
    "onnxSha256": "onnx_sha256",
    "servingFormat": "serving_format",
    "datasetSha256": "dataset_sha256",
    "task": "task",
    "durationSeconds": "duration_seconds",
    "sklearnVersion": "sklearn_version",
}


@dataclass(frozen=True)
class JobFacts:
    """What matters of the trainer Job."""

    name: str
    complete: bool = False
    failed: bool = False
    failure_reason: str | None = None
    failure_message: str | None = None
    active: int = 0
    start_time: str | None = None
    finish_time: str | None = None


@dataclass(frozen=True)
class TrainerResult:
    """The newest terminated trainer container among the Job's pods."""

    exit_code: int | None
    message: str
    reason: str | None = None


@dataclass(frozen=True)
class BaselineRef:
    """A ModelVersion's baseline.json, as the trainer's config names it."""

    version: str
    uri: str


@dataclass(frozen=True)
class DataContract:
    """What a new run of the family checks its dataset against: the data schema of the
    family's first Validated version, and the training distribution of its champion."""

    schema: BaselineRef | None = None
    reference: BaselineRef | None = None

    def config(self) -> dict[str, Any]:
        return {key: {"version": ref.version, "uri": ref.uri}
                for key, ref in (("schema", self.schema), ("reference", self.reference)) if ref is not None}


@dataclass(frozen=True)
class TrainingRunObserved:
    job: JobFacts | None = None
    trainer: TrainerResult | None = None
    contract: DataContract | None = None


def _baseline_ref(version: Mapping[str, Any]) -> BaselineRef | None:
    uri = ((version.get("spec") or {}).get("artifact") or {}).get("uri")
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        return None
    return BaselineRef(version["metadata"]["name"], uri.rstrip("/") + "/baseline.json")


def data_contract(versions: Iterable[Mapping[str, Any]]) -> DataContract | None:
    """Condense the family's ModelVersions: the lowest-numbered Validated one fixes the
    schema; the champion (the newest, if several services serve the family) is the
    reference. None for a family with neither."""
    def number(version: Mapping[str, Any]) -> int:
        value = (version.get("spec") or {}).get("version")
        return value if isinstance(value, int) else 0

    ordered = sorted(versions, key=number)
    validated = [v for v in ordered if (v.get("status") or {}).get("phase") == "Validated"]
    champions = [v for v in validated if (v.get("status") or {}).get("role") == "champion"]
    schema = _baseline_ref(validated[0]) if validated else None
    reference = _baseline_ref(champions[-1]) if champions else None
    if schema is None and reference is None:
        return None
    return DataContract(schema, reference)


def job_facts(job: dict[str, Any]) -> JobFacts:
    """Condense a batch/v1 Job as the API serves it."""
    status = job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or () if c.get("status") == "True"}
    failed = conditions.get("Failed")
    complete = conditions.get("Complete")
    finish = status.get("completionTime") or (failed or complete or {}).get("lastTransitionTime")
    return JobFacts(
        name=job["metadata"]["name"],
        complete=complete is not None,
        failed=failed is not None and complete is None,
        failure_reason=(failed or {}).get("reason"),
        failure_message=(failed or {}).get("message"),
        active=int(status.get("active") or 0),
        start_time=status.get("startTime"),
        finish_time=finish,
    )


def trainer_result(pods: list[dict[str, Any]]) -> TrainerResult | None:
    """The trainer container of the pod that terminated last (with backoffLimit > 0 a Job
    has several pods; the newest attempt tells what happened)."""
    newest: tuple[str, TrainerResult] | None = None
    for pod in pods:
        statuses = (pod.get("status") or {}).get("containerStatuses") or ()
        for container in statuses:
            if container.get("name") != CONTAINER:
                continue
            terminated = (container.get("state") or {}).get("terminated") or \
                (container.get("lastState") or {}).get("terminated")
            if not terminated:
                continue
            key = str(terminated.get("finishedAt") or pod["metadata"].get("creationTimestamp") or "")
            result = TrainerResult(
                exit_code=terminated.get("exitCode"),
                message=str(terminated.get("message") or ""),
                reason=terminated.get("reason"),
            )
            if newest is None or key >= newest[0]:
                newest = (key, result)
    return newest[1] if newest else None


def job_name(run_name: str) -> str:
    return child_name(run_name, TRAINER_ROLE)


def artifact_prefix(run: TrainingRun) -> str:
    namespace = run.metadata.namespace or "default"
    return f"s3://{run.spec.artifacts.bucket}/{namespace}/{run.spec.model}/{run.metadata.name}/"


def train_config(run: TrainingRun, settings: Settings, contract: DataContract | None = None) -> dict[str, Any]:
    """The runtime's config (docs/contracts.md, "Training runtime")."""
    spec = run.spec
    config: dict[str, Any] = {
        "dataset": spec.dataset.dump(),
        "estimator": spec.estimator,
        "params": spec.params,
        "seed": spec.seed,
        "output": artifact_prefix(run),
        "onnx": spec.onnx,
        "allowedEstimators": list(settings.allowed_estimators),
        "lineage": {
            "namespace": run.metadata.namespace or "default",
            "model": spec.model,
            "trainingRun": run.metadata.name,
            "experiment": spec.experiment,
            "image": spec.image,
        },
    }
    if spec.steps:
        config["steps"] = [step.dump() for step in spec.steps]
    if spec.metrics is not None:
        config["metrics"] = list(spec.metrics)
    if spec.cross_validation is not None:
        config["crossValidation"] = spec.cross_validation.dump()
    if spec.validation is not None:
        config["validation"] = spec.validation.dump()
    if contract is not None:
        config["dataContract"] = contract.config()
    if spec.experiment is None:
        del config["lineage"]["experiment"]
    return config


def desired_job(run: TrainingRun, settings: Settings, contract: DataContract | None = None) -> dict[str, Any]:
    """The trainer Job (without owner reference: the wiring adopts it)."""
    spec = run.spec
    labels = child_labels("TrainingRun", run.metadata.name, TRAINER_ROLE, spec.model)
    if spec.experiment:
        labels["mlops.seed.io/experiment"] = spec.experiment
    secret = spec.artifacts.secret_name
    env: list[dict[str, Any]] = [
        {"name": "MLOPS_TRAIN_CONFIG",
         "value": json.dumps(train_config(run, settings, contract), sort_keys=True, separators=(",", ":"))},
    ]
    endpoint = spec.artifacts.endpoint or settings.s3_endpoint
    if endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": endpoint})
    env += [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    ]
    # Read-only root filesystem: everything that writes (HOME, caches) goes to /tmp.
    env += [{"name": "HOME", "value": "/tmp"}, {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(COMMAND),
        "env": env,
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": restricted_container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if spec.resources is not None:
        container["resources"] = spec.resources.dump()
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "activeDeadlineSeconds": spec.active_deadline_seconds,
        "podFailurePolicy": {
            "rules": [
                # A user error (bad config, data, estimator, parameter) or an internal error
                # of the runtime fails the same way on every attempt: stop at once.
                {"action": "FailJob",
                 "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                 "values": [EXIT_INTERNAL_ERROR, EXIT_USER_ERROR]}},
                # An infrastructure error (S3 unreachable) is worth another attempt.
                {"action": "Count",
                 "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_INFRASTRUCTURE]}},
                # A pod evicted or preempted did not fail: retry without using up the budget.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": {
            "metadata": {"labels": dict(labels)},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "securityContext": restricted_pod_security_context(),
                "containers": [container],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            },
        },
    }
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(run.metadata.name), "namespace": run.metadata.namespace, "labels": labels},
        "spec": job_spec,
    }


def parse_summary(message: str | None) -> dict[str, Any] | None:
    """The runtime's one-line JSON summary: the whole termination message, or its last JSON
    line when the kubelet fell back to the log tail."""
    if not message:
        return None
    text = message.strip()
    candidates = [text] + [line.strip() for line in reversed(text.splitlines()) if line.strip().startswith("{")]
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict) and "status" in value:
            return value
    return None


def finite_metrics(raw: Any) -> dict[str, float]:
    if not isinstance(raw, dict):
        return {}
    metrics = {}
    for key, value in raw.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            metrics[str(key)] = float(value)
    return metrics


def _tail(text: str, limit: int = MESSAGE_LIMIT) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-(limit - 3):]


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def succeeded_fields(summary: dict[str, Any], run: TrainingRun) -> dict[str, Any]:
    """Status fields of a successful run from its summary."""
    fields: dict[str, Any] = {}
    for key, attr in _SUMMARY_FIELDS.items():
        value = summary.get(key)
        if value is not None:
            fields[attr] = value
    metrics = finite_metrics(summary.get("metrics"))
    fields["metrics"] = metrics
    if run.spec.objective is not None:
        fields["objective_value"] = metrics.get(run.spec.objective.metric)
    if isinstance(summary.get("signature"), dict):
        try:
            fields["signature"] = Signature.model_validate(summary["signature"])
        except ValidationError:
            pass  # the signature is optional: the server derives it from the artifact
    return fields | evidence_fields(summary)


def evidence_fields(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The data report, top features and slices the summary carries (each optional: a part
    the status model refuses is left out, the rest kept)."""
    fields: dict[str, Any] = {}
    parts = (("dataReport", "data_report", DataReportSummary, False),
             ("topFeatures", "top_features", FeatureImportance, True),
             ("slices", "slices", SliceResult, True))
    for key, attr, model, many in parts:
        raw = summary.get(key)
        try:
            if many and isinstance(raw, list):
                fields[attr] = [model.model_validate(item) for item in raw]
            elif not many and isinstance(raw, dict):
                fields[attr] = model.model_validate(raw)
        except ValidationError:
            continue
    return fields


def _safe_status(status: TrainingRunStatus, fields: dict[str, Any]) -> TrainingRunStatus:
    """`status` updated with `fields` from the summary; a field the status model rejects
    (a runtime newer than the operator, say) is dropped rather than losing the rest."""
    merged = status.model_copy(update=fields)
    try:
        return TrainingRunStatus.model_validate(merged.model_dump())
    except ValidationError as error:
        bad = {str(item["loc"][0]) for item in error.errors() if item["loc"]}
        return status.model_copy(update={k: v for k, v in fields.items() if k not in bad})


@dataclass(frozen=True)
class _Outcome:
    """What one pass concluded about a run that has a Job."""

    status: TrainingRunStatus
    conditions: list[Condition]
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None
    failed: bool = False


def reconcile(
    run: TrainingRun, observed: TrainingRunObserved, now: datetime, settings: Settings | None = None
) -> Plan:
    settings = settings or Settings()
    old = run.status or TrainingRunStatus()
    generation = run.metadata.generation
    conditions = clear_stalled(list(old.conditions), generation, now)
    if old.phase in TERMINAL:
        # A record: nothing to create, nothing to re-read.
        status = old.model_copy(update={"conditions": conditions, "observed_generation": generation})
        return Plan(status=status.dump())

    status = old.model_copy(update={"job_name": job_name(run.metadata.name), "observed_generation": generation})
    job = observed.job
    if job is None:
        # Creating the Job is told by the Ready condition (reason JobCreated), not by an
        # Event: the Job controller posts events about its pods, and runs come by the hundred.
        conditions = with_conditions(conditions, [(READY, "Unknown", REASON_JOB_CREATED, _waiting(run))],
                                     generation, now)
        status = status.model_copy(update={"phase": "Pending", "conditions": conditions})
        return Plan(status=status.dump(), children=(desired_job(run, settings, observed.contract),))
    if job.complete:
        outcome = _completed(run, status, conditions, job, observed.trainer, now)
    elif job.failed:
        outcome = _job_failed(status, conditions, job, observed.trainer, generation, now)
    else:
        running = job.active > 0 or job.start_time is not None
        # Until the pod starts, the condition stays as the pass that created the Job set it.
        reason, message = (REASON_RUNNING, "training") if running else (REASON_JOB_CREATED, _waiting(run))
        outcome = _Outcome(
            status.model_copy(update={"phase": "Running" if running else "Pending",
                                      "start_time": status.start_time or job.start_time}),
            with_conditions(conditions, [(READY, "Unknown", reason, message)], generation, now))
    status = outcome.status.model_copy(update={"conditions": outcome.conditions})
    return Plan(status=status.dump(), events=outcome.events, requeue_after=outcome.requeue_after,
                metrics={"training_run_failed": 1} if outcome.failed else {})


def _completed(
    run: TrainingRun,
    status: TrainingRunStatus,
    conditions: list[Condition],
    job: JobFacts,
    trainer: TrainerResult | None,
    now: datetime,
) -> _Outcome:
    """The Job completed: read the trainer's summary (waiting a little for it to show)."""
    generation = run.metadata.generation
    summary = parse_summary(trainer.message if trainer else None)
    if summary is not None and summary.get("status") == "Succeeded":
        status = _safe_status(status, succeeded_fields(summary, run))
        message = _success_message(status, run)
        status = status.model_copy(update={
            "phase": "Succeeded",
            "start_time": status.start_time or job.start_time,
            "completion_time": job.finish_time or rfc3339(now),
            "failure_reason": None,
            "message": message,
        })
        conditions = with_conditions(conditions, [
            (READY, "True", REASON_SUCCEEDED, message), (SUCCEEDED, "True", REASON_SUCCEEDED, message),
        ], generation, now)
        return _Outcome(status, conditions, (Event(REASON_SUCCEEDED, message),))
    finished = _parse_time(job.finish_time)
    if summary is None and (finished is None or now - finished < RESULT_GRACE):
        status = status.model_copy(update={"phase": "Running", "start_time": status.start_time or job.start_time})
        conditions = with_conditions(
            conditions, [(READY, "Unknown", REASON_RUNNING, "Job complete, waiting for the trainer's result")],
            generation, now)
        return _Outcome(status, conditions, requeue_after=RESULT_RECHECK_SECONDS)
    if summary is None:
        reason = REASON_RESULT_MISSING
        message = "the Job completed but its trainer left no summary in the termination message"
    else:
        reason = camel_reason(summary.get("reason"), REASON_FAILED)
        message = str(summary.get("message") or "the trainer reported a failure")
    status, conditions = _failed(status, conditions, reason, message, summary, job, generation, now)
    return _Outcome(status, conditions, (Event(reason, message, "Warning"),), failed=True)


def _job_failed(
    status: TrainingRunStatus,
    conditions: list[Condition],
    job: JobFacts,
    trainer: TrainerResult | None,
    generation: int | None,
    now: datetime,
) -> _Outcome:
    """The Job failed: the user-facing message is the summary's, else the log tail, else
    the Job's own."""
    summary = parse_summary(trainer.message if trainer else None)
    if summary is not None and summary.get("status") == "Failed":
        reason = camel_reason(summary.get("reason"), job.failure_reason or REASON_FAILED)
        message = str(summary.get("message") or job.failure_message or "training failed")
    else:
        reason = camel_reason(job.failure_reason, REASON_FAILED)
        raw = trainer.message if trainer and trainer.message.strip() else ""
        message = _tail(raw) if raw else (job.failure_message or "the trainer Job failed")
        if trainer is not None and trainer.exit_code is not None and not raw:
            message = f"{message} (exit code {trainer.exit_code}, {trainer.reason or 'Error'})"
    status, conditions = _failed(status, conditions, reason, message, summary, job, generation, now)
    return _Outcome(status, conditions, (Event(reason, message, "Warning"),), failed=True)


def _failed(
    status: TrainingRunStatus,
    conditions: list[Condition],
    reason: str,
    message: str,
    summary: dict[str, Any] | None,
    job: JobFacts,
    generation: int | None,
    now: datetime,
) -> tuple[TrainingRunStatus, list[Condition]]:
    """Phase Failed with the user-facing message; partial metrics are kept."""
    partial = finite_metrics(summary.get("metrics")) if summary else {}
    status = status.model_copy(update=evidence_fields(summary or {}))
    status = status.model_copy(update={
        "phase": "Failed",
        "failure_reason": reason,
        "message": message,
        "metrics": partial or status.metrics,
        "start_time": status.start_time or job.start_time,
        "completion_time": job.finish_time or rfc3339(now),
    })
    conditions = with_conditions(conditions, [
        (READY, "False", REASON_FAILED, message),
        (SUCCEEDED, "False", reason, message),
    ], generation, now)
    return status, conditions


def _waiting(run: TrainingRun) -> str:
    return f"created Job {job_name(run.metadata.name)}; waiting for its pod"


def _success_message(status: TrainingRunStatus, run: TrainingRun) -> str:
    objective = run.spec.objective
    if objective is not None and status.objective_value is not None:
        return f"trained: {objective.metric}={status.objective_value:.4g}"
    shown = ", ".join(f"{k}={v:.4g}" for k, v in list(status.metrics.items())[:3])
    return f"trained: {shown}" if shown else "trained"
