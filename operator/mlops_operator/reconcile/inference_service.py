"""InferenceService: which versions serve, the children that serve them, and the rollout.

Pure: `reconcile(isvc, observed, now) -> Plan`. The children:

- `<svc>-champion` Deployment + Service: the champion's model server;
- `<svc>-challenger` Deployment + Service: the challenger's, only while there is one (and
  while the routers drain it after a rollout);
- `<svc>-router` Deployment: the router, reading its weights from
- `<svc>-router-config` ConfigMap (key `router.json`, mounted at /etc/mlops/router; the
  router re-reads the file when it changes, so weight changes restart nothing);
- `<svc>-router-admin` Secret: the token the router's `/admin/config` asks for (mounted as a
  file; the operator reads the router's config with it; it never changes once made);
- `<svc>` Service: the stable entry point, selecting the router;
- `<svc>-servers` and `<svc>-router` NetworkPolicies: only the router (and the Prometheus and
  operator namespaces) reach the model servers; the router accepts only its Service's port.

The rollout's decisions live in `rollout.state_machine`; this module resolves the versions,
feeds the state machine and turns its state into children, status, conditions and Events.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from collections.abc import Iterable
from typing import Any

from ..api.common import parse_duration
from ..api.conditions import (
    AVAILABLE,
    DRIFTED,
    PROGRESSING,
    READY,
    REASON_ANALYSIS_INCONCLUSIVE,
    REASON_AVAILABLE,
    REASON_DEPLOYMENTS_NOT_READY,
    REASON_MODEL_VERSION_NOT_FOUND,
    REASON_MODEL_VERSION_NOT_VALIDATED,
    REASON_PAUSED,
    REASON_PENDING,
    REASON_PROMOTED,
    REASON_PROMOTING,
    REASON_ROLLED_BACK,
    REASON_ROLLOUT_STARTED,
    REASON_STABLE,
    REASON_STEP_ADVANCED,
    find_condition,
)
from ..api.inference_service import (
    APPROVAL_ANNOTATION,
    HISTORY_SIZE,
    CounterSnapshot,
    DriftStatus,
    HistoryEntry,
    InferenceService,
    InferenceServiceSpec,
    InferenceServiceStatus,
    TrafficSplit,
    VersionRef,
)
from ..api.model_version import ModelVersion
from ..api.naming import child_name
from ..rollout import state_machine as sm
from . import drift as drift_logic
from .common import (
    GROUP_PREFIX,
    Settings,
    child_labels,
    image_problem,
    restricted_container_security_context,
    restricted_pod_security_context,
    spec_hash,
    with_conditions,
)
from .plan import Event, Plan

PORT = 8080
CHAMPION, CHALLENGER, ROUTER = "champion", "challenger", "router"
ROLE_LABEL = f"{GROUP_PREFIX}role"
MODEL_VERSION_LABEL = f"{GROUP_PREFIX}modelversion"
SERVICE_LABEL = f"{GROUP_PREFIX}inferenceservice"
ROUTER_CONFIG_DIR = "/etc/mlops/router"
ROUTER_CONFIG_KEY = "router.json"
ROUTER_CONFIG_FILE = f"{ROUTER_CONFIG_DIR}/{ROUTER_CONFIG_KEY}"
ROUTER_ADMIN_DIR = "/etc/mlops/router-admin"
ROUTER_ADMIN_KEY = "token"
ROUTER_ADMIN_TOKEN_FILE = f"{ROUTER_ADMIN_DIR}/{ROUTER_ADMIN_KEY}"
SCRAPE_ANNOTATIONS = {"prometheus.io/scrape": "true", "prometheus.io/port": str(PORT), "prometheus.io/path": "/metrics"}
# Stable phases look again this often so that a policy can pick up new ModelVersions even
# when nothing else triggers a reconcile.
RESOLVE_EVERY_SECONDS = 30.0


# ---------------------------------------------------------------- observations


@dataclass(frozen=True)
class DeploymentState:
    """A Deployment as the reconciler needs it: which version its template runs, whether it
    has rolled out (`ready`: `rollout_pending` is None, only pods of that template serve),
    and whether it answers meanwhile (`available`: as many available pods as desired, of
    any template; None: the same as `ready`)."""

    version: str | None
    ready: bool
    available: bool | None = None

    @property
    def answering(self) -> bool:
        return self.ready if self.available is None else self.available


@dataclass(frozen=True)
class Observed:
    model_versions: tuple[ModelVersion, ...] = ()
    champion: DeploymentState | None = None
    challenger: DeploymentState | None = None
    router: DeploymentState | None = None
    metrics: CounterSnapshot | None = None
    metrics_error: str | None = None
    routers_in_sync: bool | None = None
    settings: Settings = field(default_factory=Settings)
    drift: DriftStatus | None = None  # a fresh reading of the champion's drift gauges, if one was made
    # The router's admin token: the one in its Secret, or a fresh random one the wiring made
    # because the Secret does not exist yet (the reconciler itself draws no randomness).
    router_admin_token: str | None = None
    router_admin_secret_exists: bool = False
    # The service's NetworkPolicies as they are: name -> spec (None: not observed, apply all).
    network_policies: dict[str, Any] | None = None


def rollout_pending(deployment: dict[str, Any]) -> str | None:
    """Why the Deployment has not rolled out yet, in the words of `kubectl rollout status`;
    None once it has: the controller has seen the current generation, every desired replica
    runs the current template and is available, and no pod of an older template is left.

    Counting ready pods is not enough: while a new template rolls in, one ready old pod and
    one unready new pod show `readyReplicas: 1, updatedReplicas: 1` for one replica, and
    traffic sent to the Service then would still reach the old version."""
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    # Absent counts as 0 on both sides, as in the API's Go types.
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    if int(status.get("observedGeneration") or 0) < generation:
        return "waiting for the Deployment spec update to be observed"
    wanted = int(spec.get("replicas", 1))
    replicas, updated, available = (int(status.get(key) or 0)
                                    for key in ("replicas", "updatedReplicas", "availableReplicas"))
    if updated < wanted:
        return f"{updated} of {wanted} new replicas have been updated"
    if replicas > updated:
        return f"{replicas - updated} old replicas are pending termination"
    if available < updated:
        return f"{available} of {updated} updated replicas are available"
    return None


def deployment_state(deployment: dict[str, Any] | None) -> DeploymentState | None:
    """Condense a Deployment: the version its template runs, whether it has rolled out and
    whether it answers (a rolling update keeps it available, not rolled out)."""
    if deployment is None:
        return None
    template = (deployment.get("spec") or {}).get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    wanted = int((deployment.get("spec") or {}).get("replicas", 1))
    available = int((deployment.get("status") or {}).get("availableReplicas") or 0) >= wanted
    return DeploymentState(version=labels.get(MODEL_VERSION_LABEL), ready=rollout_pending(deployment) is None,
                           available=available)


# ---------------------------------------------------------------- names and URLs


def champion_name(svc: str) -> str:
    return child_name(svc, CHAMPION)


def challenger_name(svc: str) -> str:
    return child_name(svc, CHALLENGER)


def router_name(svc: str) -> str:
    return child_name(svc, ROUTER)


def router_config_name(svc: str) -> str:
    return child_name(svc, "router-config")


def router_admin_secret_name(svc: str) -> str:
    return child_name(svc, "router-admin")


def service_url(service: str, namespace: str) -> str:
    return f"http://{service}.{namespace}.svc:{PORT}"


def namespace_of(isvc: InferenceService) -> str:
    return isvc.metadata.namespace or "default"


def spec_problems(isvc: InferenceService, settings: Settings) -> list[str]:
    """What the CRD cannot judge: an image outside the operator's allow-list (it would run
    with the namespace's S3 credentials)."""
    problem = image_problem(isvc.spec.image, settings.allowed_images)
    return [problem] if problem else []


# ---------------------------------------------------------------- version resolution


@dataclass(frozen=True)
class Resolution:
    version: str | None
    problem: tuple[str, str] | None = None  # (reason, message)
    rejected: bool = False  # the named version was Rejected: it will never serve


def validated(mv: ModelVersion) -> bool:
    return mv.status is not None and mv.status.phase == "Validated"


def objective_key(mv: ModelVersion) -> tuple[bool, float, int]:
    """Sort key, best last: versions with the objective's metric before those without, then
    by the metric in the objective's direction, then the newer version."""
    metric, goal = ("accuracy", "maximize") if mv.spec.objective is None else (
        mv.spec.objective.metric, mv.spec.objective.goal)
    value = mv.spec.metrics.get(metric)
    if value is None:
        return (False, 0.0, mv.spec.version)
    return (True, value if goal == "maximize" else -value, mv.spec.version)


def resolve(ref: VersionRef, versions: dict[str, ModelVersion], model: str, role: str,
            excluded: frozenset[str] = frozenset(), newer_than: int | None = None) -> Resolution:
    """The ModelVersion `ref` designates now, or why there is none."""
    if ref.model_version is not None:
        mv = versions.get(ref.model_version)
        if mv is None:
            return Resolution(None, (REASON_MODEL_VERSION_NOT_FOUND,
                                     f"spec.{role}.modelVersion: ModelVersion {ref.model_version!r} of model "
                                     f"{model!r} not found in this namespace"))
        if not validated(mv):
            phase = mv.status.phase if mv.status else "Pending"
            return Resolution(None, (REASON_MODEL_VERSION_NOT_VALIDATED,
                                     f"spec.{role}.modelVersion: ModelVersion {ref.model_version!r} is {phase}, "
                                     f"not Validated"), rejected=phase == "Rejected")
        return Resolution(ref.model_version)
    candidates = [mv for mv in versions.values() if validated(mv) and mv.metadata.name not in excluded]
    if ref.policy == "latestValidated":
        candidates = [mv for mv in candidates if newer_than is None or mv.spec.version > newer_than]
        best = max(candidates, key=lambda mv: mv.spec.version, default=None)
    else:
        best = max(candidates, key=objective_key, default=None)
    if best is None:
        if role == CHALLENGER:
            return Resolution(None)  # nothing newer (or better) yet: no rollout, no problem
        return Resolution(None, (REASON_MODEL_VERSION_NOT_FOUND,
                                 f"spec.{role}.policy {ref.policy}: no Validated ModelVersion of model {model!r}"))
    return Resolution(best.metadata.name)


def wanted_challenger(spec: InferenceServiceSpec, status: InferenceServiceStatus,
                      versions: dict[str, ModelVersion]) -> Resolution | None:
    """The version spec.challenger designates now (never the champion nor a rolled-back one),
    or None while there is no champion or no spec.challenger."""
    if status.champion is None or spec.challenger is None:
        return None
    champion_mv = versions.get(status.champion)
    excluded = frozenset({*status.rolled_back_versions, status.champion})
    return resolve(spec.challenger, versions, spec.model, CHALLENGER, excluded,
                   newer_than=champion_mv.spec.version if champion_mv else None)


def rollout_due(isvc: InferenceService, model_versions: Iterable[ModelVersion]) -> str | None:
    """The challenger a rollout would start on at the next reconcile, when none is under way:
    a status that reads settled (Stable, Promoted, RolledBack) is not final while this names one."""
    status = isvc.status or InferenceServiceStatus()
    if status.rollout_stage is not None:
        return None
    versions = {mv.metadata.name: mv for mv in model_versions if mv.spec.model == isvc.spec.model}
    wanted = wanted_challenger(isvc.spec, status, versions)
    return wanted.version if wanted is not None and wanted.version != status.champion else None


# ---------------------------------------------------------------- children


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "timeoutSeconds": 2,
            "failureThreshold": failures}


def _pod_spec(container: dict[str, Any], volumes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "automountServiceAccountToken": False,
        "securityContext": restricted_pod_security_context(),
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}, *volumes],
    }


def _container(isvc: InferenceService, args: list[str], env: list[dict[str, Any]],
               mounts: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "server",
        "image": isvc.spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m"],
        "args": args,
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": [*env, {"name": "HOME", "value": "/tmp"}, {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
        "readinessProbe": _probe("/v2/health/ready", 5, 3),
        "livenessProbe": _probe("/v2/health/live", 10, 6),
        "securityContext": restricted_container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *mounts],
    }
    if isvc.spec.resources is not None:
        container["resources"] = isvc.spec.resources.dump()
    return container


def serve_args(isvc: InferenceService, mv: ModelVersion, role: str) -> list[str]:
    """The serving runtime's command line (docs/contracts.md, "Serving runtime")."""
    artifact = mv.spec.artifact
    args = ["mlops_runtime.serve", "--model-uri", artifact.model_uri, "--sha256", artifact.sha256]
    if artifact.serving_format == "onnx" and artifact.onnx_uri and artifact.onnx_sha256:
        args += ["--onnx-uri", artifact.onnx_uri, "--onnx-sha256", artifact.onnx_sha256]
    args += drift_args(isvc)
    args += ["--workers", str(serving_workers(isvc.spec.resources.limits if isvc.spec.resources else None))]
    args += ["--max-batch-rows", str(isvc.spec.batching.max_batch_rows)]
    return args + ["--port", str(PORT), "--name", isvc.spec.model, "--version", mv.metadata.name, "--role", role]


# Decimal SI suffixes a CPU quantity may carry (binary ones, Ki..., are for bytes).
_CPU_SUFFIXES = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9}


def cpu_cores(quantity: int | str) -> float:
    """A Kubernetes CPU quantity ("500m", "2", 1.5, "1e3m") in cores."""
    if isinstance(quantity, (int, float)):
        return float(quantity)
    text = quantity.strip()
    suffix = text[-1] if text and text[-1] in _CPU_SUFFIXES else ""
    return float(text[:len(text) - len(suffix)]) * _CPU_SUFFIXES[suffix]


def serving_workers(limits: dict[str, int | str] | None) -> int:
    """Model-server worker processes: one per core of the CPU limit, rounded up (a Python
    process computes on one core at a time); 1 without a limit, where nothing says how many
    cores the pod may use."""
    if not limits or "cpu" not in limits:
        return 1
    return max(1, math.ceil(cpu_cores(limits["cpu"]) - 1e-9))


# The serving runtime reports nothing until its window holds this many rows (its default).
SERVER_DRIFT_MIN_ROWS = 100


def drift_args(isvc: InferenceService) -> list[str]:
    """The server computes drift as often, and over as many recent rows, as spec.drift says."""
    drift = isvc.spec.drift
    if not drift.enabled:
        return []
    seconds = parse_duration(drift.interval).total_seconds()
    args = ["--drift-interval", f"{seconds:g}", "--drift-window", str(drift.window)]
    if drift.window < SERVER_DRIFT_MIN_ROWS:
        args += ["--drift-min-rows", str(drift.window)]
    return args


def s3_env(isvc: InferenceService, settings: Settings) -> list[dict[str, Any]]:
    secret = isvc.spec.artifacts.secret_name
    env: list[dict[str, Any]] = []
    endpoint = isvc.spec.artifacts.endpoint or settings.s3_endpoint
    if endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": endpoint})
    return env + [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
                  for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]


def _labels(isvc: InferenceService, role: str, version: str | None = None) -> dict[str, str]:
    labels = child_labels("InferenceService", isvc.metadata.name, role, isvc.spec.model)
    labels[ROLE_LABEL] = role
    if version:
        labels[MODEL_VERSION_LABEL] = version
    return labels


def _selector(isvc: InferenceService, role: str) -> dict[str, str]:
    return {SERVICE_LABEL: isvc.metadata.name, ROLE_LABEL: role}


def _deployment(isvc: InferenceService, name: str, role: str, replicas: int, pod_spec: dict[str, Any],
                version: str | None = None) -> dict[str, Any]:
    labels = _labels(isvc, role, version)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace_of(isvc), "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": _selector(isvc, role)},
            # Never fewer ready pods than asked for while a new version rolls in.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels, "annotations": dict(SCRAPE_ANNOTATIONS)},
                "spec": pod_spec,
            },
        },
    }


def desired_server_deployment(isvc: InferenceService, mv: ModelVersion, role: str,
                              settings: Settings) -> dict[str, Any]:
    """The model server of `mv` in `role` (champion or challenger)."""
    container = _container(isvc, serve_args(isvc, mv, role), s3_env(isvc, settings), [])
    name = champion_name(isvc.metadata.name) if role == CHAMPION else challenger_name(isvc.metadata.name)
    replicas = isvc.spec.replicas
    return _deployment(isvc, name, role, replicas, _pod_spec(container, []), version=mv.metadata.name)


def router_args(isvc: InferenceService) -> list[str]:
    """The router's command line. The two variants' Services are the only upstreams it will
    accept from its config file; the admin token comes from the mounted Secret. No admin
    port: the router's config changes only through the ConfigMap (docs/security.md)."""
    namespace, name = namespace_of(isvc), isvc.metadata.name
    return ["mlops_runtime.router", "--port", str(PORT),
            "--champion", service_url(champion_name(name), namespace),
            "--upstream", service_url(challenger_name(name), namespace),
            "--config-file", ROUTER_CONFIG_FILE, "--admin-token-file", ROUTER_ADMIN_TOKEN_FILE, "--name", name]


def desired_router_deployment(isvc: InferenceService) -> dict[str, Any]:
    """The router. Its weights come from the mounted ConfigMap, not from its arguments, so
    that a weight change rewrites a file instead of rolling the router's pods."""
    mounts = [{"name": "router-config", "mountPath": ROUTER_CONFIG_DIR, "readOnly": True},
              {"name": "router-admin", "mountPath": ROUTER_ADMIN_DIR, "readOnly": True}]
    container = _container(isvc, router_args(isvc), [], mounts)
    volumes = [{"name": "router-config", "configMap": {"name": router_config_name(isvc.metadata.name)}},
               {"name": "router-admin", "secret": {"secretName": router_admin_secret_name(isvc.metadata.name),
                                                   "defaultMode": 0o440}}]
    return _deployment(isvc, router_name(isvc.metadata.name), ROUTER, isvc.spec.router_replicas,
                       _pod_spec(container, volumes))


def desired_router_admin_secret(isvc: InferenceService, token: str) -> dict[str, Any]:
    """The router's admin token, with the random value the wiring drew; in the plan only while
    the Secret does not exist, so the token is stable (a deleted Secret is made anew)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": router_admin_secret_name(isvc.metadata.name), "namespace": namespace_of(isvc),
                     "labels": _labels(isvc, ROUTER)},
        "type": "Opaque",
        "data": {ROUTER_ADMIN_KEY: base64.b64encode(token.encode()).decode()},
    }


def token_of_router_admin_secret(secret: dict[str, Any] | None) -> str | None:
    """The token in an observed router admin Secret, or None."""
    encoded = ((secret or {}).get("data") or {}).get(ROUTER_ADMIN_KEY)
    if not encoded:
        return None
    try:
        return base64.b64decode(encoded).decode() or None
    except (ValueError, UnicodeDecodeError):
        return None


def router_config(isvc: InferenceService, split: TrafficSplit, challenger_routed: bool) -> dict[str, Any]:
    """The router's config file (docs/contracts.md, "Router")."""
    namespace = namespace_of(isvc)
    return {
        "champion": service_url(champion_name(isvc.metadata.name), namespace),
        "challenger": service_url(challenger_name(isvc.metadata.name), namespace) if challenger_routed else None,
        "weight": split.challenger if challenger_routed else 0,
        "mode": split.mode if challenger_routed else "canary",
    }


def desired_router_config_map(isvc: InferenceService, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": router_config_name(isvc.metadata.name), "namespace": namespace_of(isvc),
                     "labels": _labels(isvc, ROUTER)},
        "data": {ROUTER_CONFIG_KEY: json.dumps(config, sort_keys=True, separators=(",", ":"))},
    }


def desired_service(isvc: InferenceService, name: str, role: str, service_type: str = "ClusterIP") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace_of(isvc), "labels": _labels(isvc, role)},
        "spec": {
            "type": service_type,
            "selector": _selector(isvc, role),
            "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


OPERATOR_POD_LABELS = {"app.kubernetes.io/name": "mlops-operator"}
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def _network_policy(isvc: InferenceService, name: str, pods: dict[str, Any],
                    ingress: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace_of(isvc), "labels": _labels(isvc, ROUTER)},
        "spec": {"podSelector": pods, "policyTypes": ["Ingress"], "ingress": ingress},
    }


def _from_namespace(namespace: str, pods: dict[str, str] | None = None) -> dict[str, Any]:
    peer: dict[str, Any] = {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}}}
    if pods:
        peer["podSelector"] = {"matchLabels": dict(pods)}
    return peer


def desired_network_policies(isvc: InferenceService, settings: Settings) -> list[dict[str, Any]]:
    """The model servers take traffic from their router only (and /metrics scrapes, and the
    operator's reads, which share the port); the router takes traffic on its Service's port
    only, from wherever the Service is exposed to. docs/security.md, "NetworkPolicies"."""
    name = isvc.metadata.name
    port = [{"protocol": "TCP", "port": PORT}]
    servers = {"matchLabels": {SERVICE_LABEL: name},
               "matchExpressions": [{"key": ROLE_LABEL, "operator": "In", "values": [CHAMPION, CHALLENGER]}]}
    router_pods = {"podSelector": {"matchLabels": _selector(isvc, ROUTER)}}
    observers = [_from_namespace(settings.prometheus_namespace),
                 _from_namespace(settings.operator_namespace, OPERATOR_POD_LABELS)]
    return [
        _network_policy(isvc, child_name(name, "servers"), servers,
                        [{"from": [router_pods, *observers], "ports": port}]),
        _network_policy(isvc, child_name(name, ROUTER), {"matchLabels": _selector(isvc, ROUTER)},
                        [{"ports": port}]),
    ]


def network_policies_to_apply(desired: list[dict[str, Any]], observed: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The desired policies that are missing or differ from what is there: the policies
    rarely change, and re-applying unchanged ones costs two API calls each per reconcile."""
    if observed is None:
        return desired
    return [p for p in desired if observed.get(p["metadata"]["name"]) != p["spec"]]


def desired_stable_service(isvc: InferenceService) -> dict[str, Any]:
    """`<svc>`: what clients call; it selects the router."""
    return desired_service(isvc, isvc.metadata.name, ROUTER, isvc.spec.service_type)


# ---------------------------------------------------------------- status


def split_text(split: TrafficSplit) -> str:
    text = f"{split.champion}/{split.challenger}"
    return f"{text} shadow" if split.mode == "shadow" else text


def phase_of(status: InferenceServiceStatus, paused: bool, champion_rejected: bool) -> str:
    if status.champion is None:
        return "Failed" if champion_rejected else "Pending"
    stage = status.rollout_stage
    if stage in ("Starting", "Analysing", "AwaitingApproval"):
        return "Paused" if paused or stage == "AwaitingApproval" else "Progressing"
    last = status.history[-1].action if status.history else None
    if stage == "Promoting":
        # Not Promoted yet: old champion pods may still answer until its Deployment has
        # rolled out; only then does the state machine record the promotion.
        return "Progressing"
    if stage == "Finalizing":
        return "Promoted" if last == "Promoted" else "RolledBack"
    return "RolledBack" if last == "RolledBack" else "Stable"


def _progressing_condition(status: InferenceServiceStatus, phase: str,
                           challenger_problem: tuple[str, str] | None) -> tuple[str, str, str]:
    """(status, reason, message) of the Progressing condition."""
    stage = status.rollout_stage
    if stage == "Starting":
        return ("True", REASON_ROLLOUT_STARTED, f"waiting for the challenger Deployment of {status.challenger}")
    if phase == "Paused":
        if stage == "AwaitingApproval":
            target = 0 if status.current_step is None else status.current_step + 1
            return ("True", REASON_PAUSED,
                    f"waiting for approval: annotate {APPROVAL_ANNOTATION}={target} (or all) to continue")
        return ("True", REASON_PAUSED, "spec.rollout.paused is true: holding the current step")
    if stage == "Analysing":
        last = status.last_analysis
        if last is not None and last.verdict == "Inconclusive" and last.step == status.current_step:
            return ("True", REASON_ANALYSIS_INCONCLUSIVE, last.message)
        return ("True", REASON_STEP_ADVANCED, f"step {(status.current_step or 0) + 1}, split {status.split}")
    if stage == "Promoting":
        return ("True", REASON_PROMOTING, f"{status.challenger} passed; serving all traffic from it while the "
                                          f"champion Deployment rolls out to it")
    if stage == "Finalizing" and phase == "Promoted":
        return ("True", REASON_PROMOTED, status.history[-1].reason if status.history else f"serving {status.champion}")
    if challenger_problem is not None:
        return ("False", *challenger_problem)
    if phase == "RolledBack" and status.history:
        entry = status.history[-1]
        return ("False", REASON_ROLLED_BACK, f"{entry.version} rolled back: {entry.reason}")
    return ("False", REASON_STABLE, f"serving {status.champion}")


def _problem_events(old: list, new: list) -> tuple[Event, ...]:
    """A Warning for a condition that turned to a problem reason, once per change."""
    events = []
    for condition in new:
        if condition.reason not in (REASON_MODEL_VERSION_NOT_FOUND, REASON_MODEL_VERSION_NOT_VALIDATED):
            continue
        before = find_condition(old, condition.type)
        if before is None or before.reason != condition.reason or before.message != condition.message:
            events.append(Event(condition.reason, condition.message, "Warning"))
    return tuple(events)


# ---------------------------------------------------------------- reconcile


def _champion_switch(status: InferenceServiceStatus, new: str, versions: dict[str, ModelVersion],
                     now: datetime) -> tuple[InferenceServiceStatus, Event]:
    """The user pointed spec.champion elsewhere: serve it now (the instant rollback). A newer
    champion replaced by an older one counts as rolled back, so a policy does not bring it back."""
    old = status.champion
    if status.rollout_stage is not None:
        status = sm.abort(status, now)
    rolled_back = list(status.rolled_back_versions)
    old_mv, new_mv = versions.get(old or ""), versions.get(new)
    if old and old_mv is not None and new_mv is not None and new_mv.spec.version < old_mv.spec.version \
            and old not in rolled_back:
        rolled_back.append(old)
    entry = HistoryEntry(time=sm.timestamp(now), action="ManualRollback", version=new, replaced=old,
                         reason="spec.champion changed")
    status = status.model_copy(update={"champion": new, "previous": old, "rolled_back_versions": rolled_back,
                                       "history": [*status.history, entry][-HISTORY_SIZE:]})
    return status, Event(REASON_STABLE, f"champion set to {new} by spec.champion (was {old})")


def reconcile(isvc: InferenceService, observed: Observed, now: datetime) -> Plan:
    spec = isvc.spec
    name = isvc.metadata.name
    generation = isvc.metadata.generation
    old_status = isvc.status or InferenceServiceStatus()
    status = old_status
    versions = {mv.metadata.name: mv for mv in observed.model_versions if mv.spec.model == spec.model}
    events: list[Event] = []

    # 1. The champion: from the spec the first time and whenever spec.champion changes;
    #    afterwards promotions move it and status remembers it (the spec is never edited).
    champion_hash = spec_hash(spec.champion.dump())
    champion_problem: tuple[str, str] | None = None
    champion_rejected = False
    if status.champion is None or status.last_applied_hash != champion_hash:
        wanted = resolve(spec.champion, versions, spec.model, CHAMPION)
        champion_problem, champion_rejected = wanted.problem, wanted.rejected
        if wanted.version is not None:
            if status.champion is None:
                entry = HistoryEntry(time=sm.timestamp(now), action="Initial", version=wanted.version,
                                     reason=f"spec.champion ({spec.champion.policy or 'modelVersion'})")
                status = status.model_copy(update={"champion": wanted.version,
                                                   "history": [*status.history, entry][-HISTORY_SIZE:]})
                events.append(Event(REASON_STABLE, f"serving {wanted.version} as champion"))
            elif wanted.version != status.champion:
                status, event = _champion_switch(status, wanted.version, versions, now)
                events.append(event)
            status = status.model_copy(update={"last_applied_hash": champion_hash})

    # 2. The challenger, and whether a rollout starts, continues or stops.
    challenger_problem: tuple[str, str] | None = None
    next_up = wanted_challenger(spec, status, versions)
    if next_up is not None and spec.challenger is not None:
        challenger_problem = next_up.problem
        desired = next_up.version
        if spec.challenger.model_version is not None and desired is None and challenger_problem is None:
            ref = spec.challenger.model_version
            if ref in status.rolled_back_versions:
                challenger_problem = (REASON_ROLLED_BACK, f"spec.challenger.modelVersion: {ref} was rolled back; "
                                      f"name a new version to roll out")
    else:
        desired = None
    stage = status.rollout_stage
    if stage in ("Starting", "Analysing", "AwaitingApproval"):
        current = status.challenger
        still_valid = current in versions and validated(versions[current])
        keep = still_valid and (desired == current or (spec.challenger is not None
                                                       and spec.challenger.policy is not None))
        if not keep:
            status = sm.abort(status, now)
            events.append(Event(REASON_STABLE, f"rollout of {current} stopped: spec.challenger now "
                                               f"designates {desired or 'nothing'}"))
    elif stage is None and desired is not None and desired != status.champion:
        how = spec.challenger.policy or "spec.challenger.modelVersion"  # type: ignore[union-attr]
        outcome = sm.start(status, desired, now, how)
        status = outcome.status
        events += outcome.events

    # 3. One step of the rollout.
    observations = sm.Observations(
        challenger_ready=bool(observed.challenger and observed.challenger.ready
                              and observed.challenger.version == status.challenger),
        champion_ready=bool(observed.champion and observed.champion.ready),
        champion_ready_version=observed.champion.version if observed.champion and observed.champion.ready else None,
        metrics=observed.metrics,
        metrics_error=observed.metrics_error,
        routers_in_sync=observed.routers_in_sync,
        approval=isvc.metadata.annotations.get(APPROVAL_ANNOTATION),
    )
    outcome = sm.advance(status, spec.rollout, observations, now)
    status = outcome.status
    events += outcome.events

    # 4. Children.
    children: list[dict[str, Any]] = []
    deletions: list[tuple[str, str, str]] = []
    split = sm.traffic(status, spec.rollout)
    routed = sm.challenger_routed(status)
    config = router_config(isvc, split, routed)
    if status.champion is not None:
        champion_version = status.challenger if status.rollout_stage == "Promoting" else status.champion
        mv = versions.get(champion_version or "")
        if mv is not None:
            children.append(desired_server_deployment(isvc, mv, CHAMPION, observed.settings))
        children.append(desired_service(isvc, champion_name(name), CHAMPION))
        serving_challenger = status.draining_version if status.rollout_stage == "Finalizing" else status.challenger
        challenger_mv = versions.get(serving_challenger or "")
        if serving_challenger is not None:
            if challenger_mv is not None:
                children.append(desired_server_deployment(isvc, challenger_mv, CHALLENGER, observed.settings))
            children.append(desired_service(isvc, challenger_name(name), CHALLENGER))
        else:
            deletions += [("apps/v1", "Deployment", challenger_name(name)), ("v1", "Service", challenger_name(name))]
        if observed.router_admin_token and not observed.router_admin_secret_exists:
            # Written once: the token never changes, so there is nothing to re-apply.
            children.append(desired_router_admin_secret(isvc, observed.router_admin_token))
        children += [desired_router_config_map(isvc, config), desired_router_deployment(isvc),
                     desired_stable_service(isvc),
                     *network_policies_to_apply(desired_network_policies(isvc, observed.settings),
                                                observed.network_policies)]

    # 5. Status and conditions.
    phase = phase_of(status, spec.rollout.paused, champion_rejected)
    drift = drift_logic.next_drift(old_status.drift, observed.drift, status.champion) if spec.drift.enabled else None
    status = status.model_copy(update={
        "drift": drift,
        "phase": phase,
        "observed_generation": generation,
        "traffic": split,
        "split": split_text(split),
        "url": service_url(name, namespace_of(isvc)) if status.champion else None,
    })
    available, not_ready = _availability(observed)
    if status.champion is None:
        ready = ("False", *(champion_problem or (REASON_PENDING, "no champion yet")))
    elif champion_problem is not None:
        ready = ("True" if available else "False", *champion_problem)
    elif available:
        ready = ("True", REASON_AVAILABLE, f"serving {status.champion} at {status.url}")
    else:
        ready = ("False", REASON_DEPLOYMENTS_NOT_READY, f"waiting for {', '.join(not_ready)}")
    progressing = _progressing_condition(status, phase, challenger_problem)
    availability = ("True", REASON_AVAILABLE, "champion and router ready") if available else \
        ("False", REASON_DEPLOYMENTS_NOT_READY, f"waiting for {', '.join(not_ready)}")
    updates = [(READY, *ready), (AVAILABLE, *availability), (PROGRESSING, *progressing)]
    drifted = drift_logic.drift_condition(drift, find_condition(status.conditions, DRIFTED) is not None,
                                          status.champion, spec.drift.enabled)
    if drifted is not None:
        updates.append(drifted)
    conditions = with_conditions(list(status.conditions), updates, generation, now)
    message = progressing[2] if progressing[0] == "True" or challenger_problem else ready[2]
    status = status.model_copy(update={"conditions": conditions, "message": message})
    events += _problem_events(list(old_status.conditions), conditions)
    events += drift_logic.drift_events(list(old_status.conditions), conditions)
    if phase == "Paused" and old_status.phase != "Paused":
        events.append(Event(REASON_PAUSED, progressing[2]))

    return Plan(
        status=status.dump(),
        children=tuple(children),
        deletions=tuple(deletions),
        events=tuple(events),
        requeue_after=_requeue(status, outcome, spec, champion_problem or challenger_problem),
        metrics={
            "weight": split.challenger,
            "phase": phase,
            "interval_seconds": parse_duration(spec.rollout.interval).total_seconds(),
            "verdict": outcome.analysis.verdict if outcome.analysis else None,
            "promoted": outcome.promoted,
            "rolled_back": outcome.rolled_back,
            "progressed": outcome.progressed,
            "router_config": config,
        },
    )


def _availability(observed: Observed) -> tuple[bool, list[str]]:
    not_ready = [what for what, state in (("champion Deployment", observed.champion),
                                          ("router Deployment", observed.router))
                 if state is None or not state.answering]
    return not not_ready, not_ready


def _requeue(status: InferenceServiceStatus, outcome: sm.Outcome, spec: InferenceServiceSpec,
             problem: tuple[str, str] | None) -> float | None:
    if outcome.requeue_after is not None:
        return outcome.requeue_after
    if status.rollout_stage is not None:
        return sm.POLL.total_seconds()
    if problem is not None or status.champion is None or (spec.challenger and spec.challenger.policy):
        return RESOLVE_EVERY_SECONDS
    if spec.drift.enabled:
        return parse_duration(spec.drift.interval).total_seconds()
    return None
