"""kopf wiring for the four kinds: thin and level-based.

Every kind has one reconcile function, registered for resume, create and update and as a
timer (which also honours the plans' `requeue_after`), that runs
`controllers.<kind>.sync(cluster, object, now)`; everything it decides is in `reconcile/`
and everything it writes goes through `cluster.apply.apply_plan`. Events of
children (Jobs, their Pods, Deployments, TrainingRuns and retrains of an Experiment,
InferenceServices for the ModelVersions they serve) wake their parent at once instead of at
the next tick.

Syncs of one object never overlap: a per-object lock serialises the handler and the
wake-ups from children (kopf already runs one handler at a time per object; the wake-ups
come from other objects' workers).

Run with `mlops run` (kopf on this module), which passes `memo.metrics_port` and
`memo.metrics_host`. A program embedding the operator may inject `memo.cluster` (any
implementation of the cluster port) and `memo.settings`.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import kopf

from . import metrics
from .api.common import GROUP, VERSION
from .cluster.port import Cluster, NotFound, Obj
from .controllers import settings_from_env, sync_for
from .reconcile.common import (
    EXPERIMENT_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MODEL_LABEL,
    TRAINING_RUN_LABEL,
    is_invalid_spec,
)
from .reconcile.plan import Plan
from .reconcile.retrain import RETRAIN_OF_LABEL

API_VERSION = f"{GROUP}/{VERSION}"
FINALIZER = f"{GROUP}/finalizer"
INFERENCE_SERVICE_LABEL = f"{GROUP}/inferenceservice"
DEFAULT_METRICS_PORT = 9090
# Level-based: every object is looked at this often even when nothing happens. This is
# also how a plan's `requeue_after` is honoured (a TemporaryError would make kopf record a
# failing handler in the object's annotations for as long as, say, a canary runs).
# InferenceServices tick fastest (canary intervals); ModelVersions are woken by their
# InferenceServices' events and only need a slow safety net.
TIMER_INTERVALS = {"experiments": 10.0, "trainingruns": 10.0, "modelversions": 60.0, "inferenceservices": 5.0}
KINDS = {
    "experiments": "Experiment",
    "trainingruns": "TrainingRun",
    "modelversions": "ModelVersion",
    "inferenceservices": "InferenceService",
}
MANAGED = {MANAGED_BY_LABEL: MANAGED_BY}

_locks: dict[tuple[str, str | None, str], threading.Lock] = {}
_locks_guard = threading.Lock()
# Wake-ups waiting for their object's lock. One waiting wake-up reads the object fresh once
# it holds the lock, so it stands for every event that came while it waited: 200 trials
# changing at once wake their Experiment a few times, not 200 times (each sync lists them all).
_waiting: set[tuple[str, str | None, str]] = set()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    # kopf's own state (handler progress, the last handled spec) lives in annotations under
    # our group, next to nothing else of ours.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    # No handler needs a finalizer: every child is owned (garbage-collected) and ModelVersions
    # outlive their Experiment on purpose. Named anyway, so kopf never invents another.
    settings.persistence.finalizer = FINALIZER
    # Our Events are written by apply_plan with the reasons of docs; kopf's own "Handler
    # succeeded" events would drown them. Warnings and errors still become Events.
    settings.posting.level = logging.WARNING
    # Reconnect watches every 5 minutes even when idle: load balancers and proxies drop
    # silent connections without telling the client, and a watch that hangs unnoticed
    # misses every change; the client timeout is a little longer than the server's so that
    # the server ends the request first.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    # Sync handlers run in kopf's thread pool; the controllers are blocking HTTP calls.
    settings.execution.max_workers = int(os.environ.get("MLOPS_WORKERS", "8"))
    # One replica (Deployment strategy Recreate): no peering objects needed.
    settings.peering.standalone = True
    if memo.get("cluster") is None:
        memo.cluster = _default_cluster()
    if memo.get("settings") is None:
        memo.settings = settings_from_env()
    port = memo.get("metrics_port")
    port = int(os.environ.get("MLOPS_METRICS_PORT", DEFAULT_METRICS_PORT)) if port is None else int(port)
    if port:
        from prometheus_client import start_http_server

        start_http_server(port, addr=memo.get("metrics_host") or os.environ.get("MLOPS_METRICS_ADDRESS", "0.0.0.0"))
        logger.info("metrics on port %d", port)


def _default_cluster() -> Cluster:
    from kubernetes.config import ConfigException

    from .cluster.kubernetes import KubernetesCluster

    try:
        return KubernetesCluster.in_cluster()
    except ConfigException:
        return KubernetesCluster.from_kubeconfig()


def _lock_for(kind: str, namespace: str | None, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault((kind, namespace, name), threading.Lock())


def reconcile_object(kind: str, obj: Obj, memo: kopf.Memo) -> Plan:
    """One sync of `obj` under its lock."""
    meta = obj["metadata"]
    with _lock_for(kind, meta.get("namespace"), meta["name"]):
        return sync_locked(kind, obj, memo)


def sync_locked(kind: str, obj: Obj, memo: kopf.Memo) -> Plan:
    """One sync of `obj`; the caller holds its lock."""
    sync = sync_for(kind)
    now = datetime.now(UTC)
    if kind == "ModelVersion":
        return sync(memo.cluster, obj, now)
    return sync(memo.cluster, obj, now, settings=memo.settings)


def _reconcile_handler(kind: str, body: kopf.Body, memo: kopf.Memo, *, permanent: bool) -> None:
    """Sync; an invalid spec (already written to status, with its Event) is a permanent
    error for the create/update/resume handler, and no error for the timer (a timer that
    raised it would stop for good, and the next spec fix comes as an update anyway)."""
    plan = reconcile_object(kind, copy.deepcopy(dict(body)), memo)
    if permanent and is_invalid_spec(plan):
        raise kopf.PermanentError(str(plan.status.get("message") or "invalid spec"))


def _wake(kind: str, namespace: str | None, name: str, memo: kopf.Memo, logger: logging.Logger) -> None:
    """Sync the object `kind/name` now (it is read fresh: the event came from a child),
    unless a wake-up of it is already waiting, which will read it after this event."""
    key = (kind, namespace, name)
    with _locks_guard:
        if key in _waiting:
            return
        _waiting.add(key)
    try:
        with _lock_for(kind, namespace, name):
            # From here on, a new event must wake it again: what it changes may come after the read.
            with _locks_guard:
                _waiting.discard(key)
            try:
                obj = memo.cluster.get(API_VERSION, kind, namespace, name)
            except NotFound:
                return
            sync_locked(kind, obj, memo)
    except Exception as error:  # the parent's own handlers and timer retry; do not kill the watch
        logger.warning("waking %s %s/%s failed: %s", kind, namespace, name, error)
    finally:
        with _locks_guard:
            _waiting.discard(key)


def _register(plural: str) -> Callable[..., None]:
    kind = KINDS[plural]

    @kopf.on.resume(GROUP, VERSION, plural, id=f"reconcile-{plural}")
    @kopf.on.create(GROUP, VERSION, plural, id=f"reconcile-{plural}")
    @kopf.on.update(GROUP, VERSION, plural, id=f"reconcile-{plural}")
    def reconcile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        _reconcile_handler(kind, body, memo, permanent=True)

    @kopf.timer(GROUP, VERSION, plural, interval=TIMER_INTERVALS[plural], id=f"tick-{plural}")
    def tick(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        _reconcile_handler(kind, body, memo, permanent=False)

    reconcile.__name__ = f"reconcile_{kind.lower()}"
    return reconcile


reconcile_experiment = _register("experiments")
reconcile_training_run = _register("trainingruns")
reconcile_model_version = _register("modelversions")
reconcile_inference_service = _register("inferenceservices")


@kopf.on.event("batch", "v1", "jobs", labels={**MANAGED, TRAINING_RUN_LABEL: kopf.PRESENT})
def job_changed(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    _wake("TrainingRun", body.metadata.namespace, body.metadata.labels[TRAINING_RUN_LABEL], memo, logger)


@kopf.on.event("", "v1", "pods", labels={**MANAGED, TRAINING_RUN_LABEL: kopf.PRESENT})
def trainer_pod_changed(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    if (body.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        _wake("TrainingRun", body.metadata.namespace, body.metadata.labels[TRAINING_RUN_LABEL], memo, logger)


@kopf.on.event(GROUP, VERSION, "trainingruns", labels={EXPERIMENT_LABEL: kopf.PRESENT})
def trial_changed(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    if body.get("status"):  # the Experiment counts phases: only status moves matter
        _wake("Experiment", body.metadata.namespace, body.metadata.labels[EXPERIMENT_LABEL], memo, logger)


@kopf.on.event("apps", "v1", "deployments", labels={**MANAGED, INFERENCE_SERVICE_LABEL: kopf.PRESENT})
def deployment_changed(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    _wake("InferenceService", body.metadata.namespace, body.metadata.labels[INFERENCE_SERVICE_LABEL], memo, logger)


@kopf.on.event(GROUP, VERSION, "inferenceservices")
def service_changed(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """ModelVersions show where they serve: wake those the service names now."""
    status = body.get("status") or {}
    named = {status.get("champion"), status.get("challenger"), status.get("previous"),
             *(status.get("rolledBackVersions") or ())} - {None}
    model = (body.get("spec") or {}).get("model")
    if not model:
        return
    for mv in memo.cluster.list(API_VERSION, "ModelVersion", body.metadata.namespace, {MODEL_LABEL: model}):
        name = mv["metadata"]["name"]
        if name in named or (mv.get("status") or {}).get("role", "none") != "none":
            try:
                reconcile_object("ModelVersion", mv, memo)
            except Exception as error:
                logger.warning("waking ModelVersion %s failed: %s", name, error)


@kopf.on.event(GROUP, VERSION, "experiments", labels={RETRAIN_OF_LABEL: kopf.PRESENT})
def retrain_changed(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """A parent Experiment records its retrains' outcome and may start the next one."""
    if body.get("status"):
        _wake("Experiment", body.metadata.namespace, body.metadata.labels[RETRAIN_OF_LABEL], memo, logger)


@kopf.on.event(GROUP, VERSION, "experiments")
def experiment_event(type: str, body: kopf.Body, **_: Any) -> None:
    """A deleted Experiment's gauges go with it (no finalizer needed for that)."""
    if type == "DELETED":
        metrics.forget_experiment(body.metadata.namespace or "default", body.metadata.name)
        with _locks_guard:
            _locks.pop(("Experiment", body.metadata.namespace, body.metadata.name), None)
