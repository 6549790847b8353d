"""InferenceService controller: observe the serving Deployments, the model's ModelVersions,
(during a rollout, when an analysis is due) the data plane's metrics and (every
spec.drift.interval) the champion's drift gauges; reconcile; apply; update the canary metrics.

`sync(cluster, obj, now, *, metrics_reader=None)`: the kopf handlers and the local loop call
it alike. The reader defaults to scraping the pods (their Services when no pod addresses are
known) by in-cluster DNS; local mode passes a `MetricsReader(url_for=..., use_pod_ips=False)`
that maps Services to its local ports.

Drift is read through the same reader: a reader with a `read_drift(target) -> samples` method
is asked; a `MetricsReader` is scraped (the champion's pods, its Service, or Prometheus when
`spec.rollout.analysis.prometheusURL` is set); any other reader (a test's source of canary
counters) has no drift gauges to offer.
"""

from __future__ import annotations

import secrets
import threading
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError

from .. import metrics
from ..api.inference_service import CounterSnapshot, DriftStatus, InferenceService, InferenceServiceStatus
from ..api.model_version import ModelVersion
from ..cluster.port import Cluster, ClusterError, NotFound, Obj
from ..metrics_reader import AnalysisTarget, MetricsReader, MetricsUnavailable
from ..reconcile import drift as drift_logic
from ..reconcile import inference_service as logic
from ..reconcile.common import Settings
from ..reconcile.plan import Plan
from ..rollout import state_machine as sm
from . import meta_of, parse, run_sync, settings_from_env

PHASES = ("Pending", "Stable", "Progressing", "Paused", "Promoted", "RolledBack", "Failed")


class Reader(Protocol):
    """What the controller needs of a metrics reader (MetricsReader, or a test's source)."""

    def read(self, target: AnalysisTarget, time: str) -> CounterSnapshot: ...

    def router_configs(self, target: AnalysisTarget) -> list[dict[str, Any]]: ...


def observe_model_versions(cluster: Cluster, namespace: str, model: str) -> tuple[ModelVersion, ...]:
    """The model's ModelVersions that parse (a broken one is its own controller's problem)."""
    found = []
    for obj in cluster.list("mlops.seed.io/v1alpha1", "ModelVersion", namespace):
        if (obj.get("spec") or {}).get("model") != model:
            continue
        try:
            found.append(ModelVersion.model_validate(obj))
        except ValidationError:
            continue
    return tuple(found)


def _deployment(cluster: Cluster, namespace: str, name: str) -> logic.DeploymentState | None:
    try:
        return logic.deployment_state(cluster.get("apps/v1", "Deployment", namespace, name))
    except NotFound:
        return None


def _pod_urls(cluster: Cluster, namespace: str, service: str, role: str, port: int) -> tuple[str, ...]:
    """Base URLs of the running pods of one role; empty when they cannot be listed."""
    selector = {logic.SERVICE_LABEL: service, logic.ROLE_LABEL: role}
    try:
        pods = cluster.list("v1", "Pod", namespace, selector)
    except ClusterError:
        return ()
    urls = []
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") == "Running" and status.get("podIP"):
            urls.append(f"http://{status['podIP']}:{port}")
    return tuple(sorted(urls))


def observe_router_admin_token(cluster: Cluster, isvc: InferenceService) -> tuple[str, bool]:
    """(token, whether its Secret exists): the token in the router's admin Secret, or a new
    random one while there is none (the plan then creates the Secret with it)."""
    name = logic.router_admin_secret_name(isvc.metadata.name)
    try:
        token = logic.token_of_router_admin_secret(cluster.get("v1", "Secret", logic.namespace_of(isvc), name))
    except NotFound:
        token = None
    return (token, True) if token else (secrets.token_urlsafe(32), False)


def observe_network_policies(cluster: Cluster, isvc: InferenceService) -> dict[str, Any]:
    """name -> spec of the NetworkPolicies labelled as this service's (one list call)."""
    found = cluster.list("networking.k8s.io/v1", "NetworkPolicy", logic.namespace_of(isvc),
                         {logic.SERVICE_LABEL: isvc.metadata.name})
    return {p["metadata"]["name"]: p.get("spec") for p in found}


def analysis_target(cluster: Cluster, isvc: InferenceService, status: InferenceServiceStatus,
                    use_pod_ips: bool, router_token: str | None = None) -> AnalysisTarget:
    namespace, name = logic.namespace_of(isvc), isvc.metadata.name

    def urls(role: str) -> tuple[str, ...]:
        return _pod_urls(cluster, namespace, name, role, logic.PORT) if use_pod_ips else ()

    return AnalysisTarget(
        namespace=namespace,
        service=name,
        model=isvc.spec.model,
        champion_version=status.champion,
        challenger_version=status.challenger,
        mode=isvc.spec.rollout.strategy,
        router_service=name,
        champion_service=logic.champion_name(name),
        challenger_service=logic.challenger_name(name),
        router_urls=urls(logic.ROUTER),
        champion_urls=urls(logic.CHAMPION),
        challenger_urls=urls(logic.CHALLENGER),
        prometheus_url=isvc.spec.rollout.analysis.prometheus_url,
        port=logic.PORT,
        router_token=router_token,
    )


# ---------------------------------------------------------------- drift gauges


def read_drift_samples(reader: Any, target: AnalysisTarget) -> list[Any] | None:
    """The drift gauges `reader` offers (None: it offers none); raises MetricsUnavailable."""
    custom = getattr(reader, "read_drift", None)
    return list(custom(target)) if callable(custom) else None


class DriftAttempts:
    """When each InferenceService's drift was last asked for: before the first reading exists
    (no traffic yet) nothing in status paces the reads, so this does (per process; a restart
    only costs one early read)."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str, str], datetime] = {}
        self._lock = threading.Lock()

    def last(self, key: tuple[str, str, str]) -> datetime | None:
        with self._lock:
            return self._last.get(key)

    def record(self, key: tuple[str, str, str], now: datetime) -> None:
        with self._lock:
            self._last[key] = now


DRIFT_ATTEMPTS = DriftAttempts()


def observe_drift(cluster: Cluster, isvc: InferenceService, status: InferenceServiceStatus, now: datetime,
                  reader: Reader, attempts: DriftAttempts) -> DriftStatus | None:
    """A fresh reading of the champion's drift when one is due, else None. A failed read is
    no reading: drift is a slow signal and the next interval tries again."""
    key = (logic.namespace_of(isvc), isvc.metadata.name, isvc.metadata.uid or "")
    if not drift_logic.read_due(isvc.spec.drift, status.drift, status.champion, now, attempts.last(key)):
        return None
    attempts.record(key, now)
    target = analysis_target(cluster, isvc, status, bool(getattr(reader, "use_pod_ips", False)))
    try:
        samples = read_drift_samples(reader, target)
    except MetricsUnavailable:
        return None
    if not samples:
        return None
    champion = status.champion or ""
    features = drift_logic.features_from_samples(samples, isvc.spec.model, champion)
    spec = isvc.spec.drift
    return drift_logic.reading(features, champion, spec.psi_threshold, status.drift, now,
                               false_alarm_rate=spec.false_alarm_rate, interval=spec.interval)


def observe_inference_service(cluster: Cluster, isvc: InferenceService, now: datetime, reader: Reader,
                              settings: Settings, drift_attempts: DriftAttempts | None = None) -> logic.Observed:
    namespace, name = logic.namespace_of(isvc), isvc.metadata.name
    status = isvc.status or InferenceServiceStatus()
    metrics_snapshot: CounterSnapshot | None = None
    metrics_error: str | None = None
    routers_in_sync: bool | None = None
    router_token, router_secret_exists = observe_router_admin_token(cluster, isvc)
    wants_metrics = sm.wants_metrics(status, isvc.spec.rollout, now)
    if wants_metrics or status.rollout_stage == "Finalizing":
        target = analysis_target(cluster, isvc, status, bool(getattr(reader, "use_pod_ips", False)), router_token)
        if wants_metrics:
            try:
                metrics_snapshot = reader.read(target, sm.timestamp(now))
            except MetricsUnavailable as error:
                metrics_error = str(error)
        else:
            try:
                configs = reader.router_configs(target)
                routers_in_sync = bool(configs) and all(not c.get("challenger") for c in configs)
            except MetricsUnavailable:
                routers_in_sync = None
    return logic.Observed(
        model_versions=observe_model_versions(cluster, namespace, isvc.spec.model),
        champion=_deployment(cluster, namespace, logic.champion_name(name)),
        challenger=_deployment(cluster, namespace, logic.challenger_name(name)),
        router=_deployment(cluster, namespace, logic.router_name(name)),
        metrics=metrics_snapshot,
        metrics_error=metrics_error,
        routers_in_sync=routers_in_sync,
        settings=settings,
        drift=observe_drift(cluster, isvc, status, now, reader, drift_attempts or DRIFT_ATTEMPTS),
        router_admin_token=router_token,
        router_admin_secret_exists=router_secret_exists,
        network_policies=observe_network_policies(cluster, isvc),
    )


def record_canary_metrics(namespace: str, service: str, plan: Plan, now: datetime) -> None:
    facts = plan.metrics
    if not facts:
        return
    metrics.CANARY_WEIGHT.labels(namespace, service).set(facts["weight"])
    metrics.CANARY_INTERVAL.labels(namespace, service).set(facts["interval_seconds"])
    for phase in PHASES:
        metrics.CANARY_PHASE_INFO.labels(namespace, service, phase).set(1 if phase == facts["phase"] else 0)
    if facts["progressed"]:
        metrics.CANARY_LAST_PROGRESS.labels(namespace, service).set(now.timestamp())
    if facts["promoted"]:
        metrics.CANARY_PROMOTIONS.labels(namespace, service).inc()
    if facts["rolled_back"]:
        metrics.CANARY_ROLLBACKS.labels(namespace, service).inc()
    if facts["verdict"]:
        metrics.ANALYSIS_VERDICTS.labels(namespace, service, facts["verdict"]).inc()


def sync(cluster: Cluster, obj: Obj, now: datetime, *, metrics_reader: Reader | None = None,
         settings: Settings | None = None, drift_attempts: DriftAttempts | None = None) -> Plan:
    reader = metrics_reader if metrics_reader is not None else MetricsReader(use_pod_ips=True)
    settings = settings or settings_from_env()
    # The rollout's whole state is the status: decide from the stored one, not from a body an
    # event carried a moment ago (another sync may have moved the rollout on since).
    namespace, name = meta_of(obj)
    try:
        obj = cluster.get(obj["apiVersion"], obj["kind"], namespace, name)
    except NotFound:
        return Plan(status={})

    def step(current: Obj):
        isvc = parse(InferenceService, current, lambda i: logic.spec_problems(i, settings))
        observed = observe_inference_service(cluster, isvc, now, reader, settings, drift_attempts)
        return logic.reconcile(isvc, observed, now), None

    plan = run_sync("InferenceService", cluster, obj, now, step)
    record_canary_metrics(namespace or "default", name, plan, now)
    return plan
