"""Controllers: one module per kind, each exposing `sync(cluster, obj, now) -> Plan`.

A sync is parse -> observe -> decide -> act: validate the object with its API model (an
invalid spec gets Ready=False/Stalled with reason InvalidSpec and a Warning Event, nothing
else), condense the children it can see through the cluster port into an `Observed`
dataclass, call the pure `reconcile.<kind>.reconcile`, and carry the plan out with
`cluster.apply.apply_plan`. The kopf handlers and the local mode call the same functions,
so they behave alike on a real API server and on the in-memory cluster.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .. import metrics
from ..cluster.apply import apply_plan
from ..cluster.port import Cluster, Conflict, Obj
from ..reconcile.common import (
    DEFAULT_ALLOWED_ESTIMATORS,
    DEFAULT_ALLOWED_IMAGES,
    DEFAULT_OPERATOR_NAMESPACE,
    DEFAULT_PROMETHEUS_NAMESPACE,
    Settings,
    describe_validation_error,
    invalid_spec_plan,
)
from ..reconcile.plan import Plan

# A sync whose status write lost a race (Conflict even after apply_plan's own retry) starts
# over from a fresh read this many times before giving up until the next event.
CONFLICT_ATTEMPTS = 3

K = TypeVar("K", bound=BaseModel)


def settings_from_env(environ: dict[str, str] | None = None) -> Settings:
    """The operator's environment: AWS_ENDPOINT_URL (default S3 endpoint of trainer pods),
    MLOPS_ALLOWED_ESTIMATORS (comma-separated import paths or package prefixes ending in '.'),
    MLOPS_ALLOWED_IMAGES (comma-separated images, repositories, or registry paths ending in '/'),
    MLOPS_PROMETHEUS_NAMESPACE (may scrape the model servers and routers), POD_NAMESPACE (the
    operator's own, from the downward API)."""
    env = os.environ if environ is None else environ
    allowed = _comma_list(env.get("MLOPS_ALLOWED_ESTIMATORS", ""))
    images = _comma_list(env.get("MLOPS_ALLOWED_IMAGES", ""))
    return Settings(
        s3_endpoint=env.get("AWS_ENDPOINT_URL") or None,
        code_version=code_version(),
        allowed_estimators=allowed or DEFAULT_ALLOWED_ESTIMATORS,
        allowed_images=images or DEFAULT_ALLOWED_IMAGES,
        prometheus_namespace=env.get("MLOPS_PROMETHEUS_NAMESPACE") or DEFAULT_PROMETHEUS_NAMESPACE,
        operator_namespace=env.get("POD_NAMESPACE") or DEFAULT_OPERATOR_NAMESPACE,
    )


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


_CODE_VERSION: str | None = None


def code_version() -> str:
    global _CODE_VERSION
    if _CODE_VERSION is None:
        try:
            from importlib.metadata import version

            _CODE_VERSION = version("mlops-operator")
        except Exception:  # not installed as a distribution (running from a source tree)
            _CODE_VERSION = "0.1.0"
    return _CODE_VERSION


class InvalidSpec(ValueError):
    """Raised by a parse step; the message names the field."""


def parse(model: type[K], obj: Obj, checks: Callable[[K], list[str]] | None = None) -> K:
    """Validate `obj` with its API model, then the operator-only `checks`."""
    try:
        parsed = model.model_validate(obj)
    except ValidationError as error:
        raise InvalidSpec(describe_validation_error(error)) from None
    problems = checks(parsed) if checks else []
    if problems:
        raise InvalidSpec("; ".join(problems))
    return parsed


def run_sync(
    kind: str,
    cluster: Cluster,
    obj: Obj,
    now: datetime,
    step: Callable[[Obj], tuple[Plan, dict[tuple[str, str, str], Obj | None] | None]],
) -> Plan:
    """Run `step` (parse, observe, decide; returns the plan and what it saw of the children)
    and apply its plan; an InvalidSpec becomes the invalid-spec plan. On a lost status race
    the object is read again and the step repeated. Counts reconciles and their duration."""
    started = time.perf_counter()
    ok = False
    try:
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                plan, observed = step(obj)
            except InvalidSpec as error:
                plan, observed = invalid_spec_plan(obj, str(error), now), None
            try:
                apply_plan(cluster, obj, plan, observed=observed, now=lambda: now)
                ok = True
                return plan
            except Conflict:
                if attempt == CONFLICT_ATTEMPTS:
                    raise
                meta = obj["metadata"]
                obj = cluster.get(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        raise AssertionError("unreachable")  # pragma: no cover
    finally:
        metrics.record_reconcile(kind, time.perf_counter() - started, ok)


def sync_for(kind: str) -> Callable[..., Plan]:
    """The `sync` of a kind by its name (Experiment, TrainingRun, ModelVersion, InferenceService)."""
    from . import experiment, model_version, training_run

    table: dict[str, Callable[..., Plan]] = {
        "Experiment": experiment.sync,
        "TrainingRun": training_run.sync,
        "ModelVersion": model_version.sync,
    }
    if kind == "InferenceService":
        from . import inference_service

        return inference_service.sync
    return table[kind]


def meta_of(obj: Obj) -> tuple[str | None, str]:
    meta = obj["metadata"]
    return meta.get("namespace"), meta["name"]


def status_phase(obj: Obj) -> Any:
    return (obj.get("status") or {}).get("phase")
