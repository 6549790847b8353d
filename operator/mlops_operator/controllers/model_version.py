"""ModelVersion controller: observe the InferenceServices of the model (roles, champion),
reconcile, apply."""

from __future__ import annotations

from datetime import datetime

from .. import metrics
from ..api.inference_service import InferenceService
from ..api.model_version import ModelVersion
from ..cluster.port import Cluster, NotFound, Obj
from ..reconcile import model_version as logic
from ..reconcile.plan import Plan
from . import meta_of, parse, run_sync, status_phase


def observe_model_version(cluster: Cluster, obj: Obj, mv: ModelVersion) -> logic.ModelVersionObserved:
    namespace, _ = meta_of(obj)
    services = tuple(
        logic.service_facts(s)
        for s in cluster.list(InferenceService.api_version(), "InferenceService", namespace)
        if (s.get("spec") or {}).get("model") == mv.spec.model
    )
    champion = None
    if (status_phase(obj) or "Pending") == "Pending":
        service = logic.champion_service(mv, services)
        if service is not None and service.champion:
            try:
                record = cluster.get(ModelVersion.api_version(), "ModelVersion", namespace, service.champion)
                record_spec = record.get("spec") or {}
                champion = logic.ChampionFacts(
                    name=service.champion, service=service.name, metrics=record_spec.get("metrics") or {},
                    top_features=tuple(f.get("feature") for f in record_spec.get("topFeatures") or ()
                                       if isinstance(f, dict) and isinstance(f.get("feature"), str)))
            except NotFound:
                champion = None
    return logic.ModelVersionObserved(services=services, champion=champion)


def sync(cluster: Cluster, obj: Obj, now: datetime) -> Plan:
    def step(current: Obj):
        mv = parse(ModelVersion, current)
        return logic.reconcile(mv, observe_model_version(cluster, current, mv), now), None

    plan = run_sync("ModelVersion", cluster, obj, now, step)
    phase = plan.metrics.get("model_version_phase")
    if phase:
        namespace, _ = meta_of(obj)
        metrics.MODEL_VERSIONS.labels(namespace or "default", str(obj["spec"].get("model")), phase).inc()
    return plan
