"""Pure helpers shared by the training reconcilers: labels, the `restricted` security
context, settings handed in by the wiring, summaries of invalid specs, and condition sets."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mlops_runtime.estimators import is_allowed
from pydantic import ValidationError

from ..api.conditions import (
    READY,
    REASON_INVALID_SPEC,
    STALLED,
    Condition,
    ConditionStatus,
    set_condition,
)
from .plan import Event, Plan

GROUP_PREFIX = "mlops.seed.io/"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "mlops-operator"
PART_OF_LABEL = "app.kubernetes.io/part-of"
PART_OF = "mlops"
COMPONENT_LABEL = "app.kubernetes.io/component"
MODEL_LABEL = f"{GROUP_PREFIX}model"
EXPERIMENT_LABEL = f"{GROUP_PREFIX}experiment"
TRAINING_RUN_LABEL = f"{GROUP_PREFIX}trainingrun"
TRIAL_INDEX_LABEL = f"{GROUP_PREFIX}trial-index"

# The runtime image's non-root user (distroless "nonroot").
NON_ROOT_UID = 65532
DEFAULT_ALLOWED_ESTIMATORS = ("sklearn.",)
# The project's runtime image, any tag or digest, by its short and its registry name (kind
# loads it under the short one). A cluster that publishes elsewhere lists its registry path.
DEFAULT_ALLOWED_IMAGES = ("mlops-runtime", "docker.io/library/mlops-runtime")
DEFAULT_PROMETHEUS_NAMESPACE = "monitoring"
DEFAULT_OPERATOR_NAMESPACE = "mlops-system"


@dataclass(frozen=True)
class Settings:
    """What the operator's environment contributes to desired state; the wiring reads it
    (env, flags) and hands it in, so reconcilers stay pure."""

    s3_endpoint: str | None = None
    code_version: str = "0.1.0"
    allowed_estimators: tuple[str, ...] = DEFAULT_ALLOWED_ESTIMATORS
    allowed_images: tuple[str, ...] = DEFAULT_ALLOWED_IMAGES
    # Who may reach the data plane besides its own router: the namespace of the Prometheus
    # that scrapes /metrics, and the operator's (it reads the pods' metrics and the routers'
    # config for canary analysis).
    prometheus_namespace: str = DEFAULT_PROMETHEUS_NAMESPACE
    operator_namespace: str = DEFAULT_OPERATOR_NAMESPACE


def child_labels(owner_kind: str, owner_name: str, component: str, model: str | None = None) -> dict[str, str]:
    """The labels every child carries (docs/contracts.md, "Names")."""
    labels = {
        MANAGED_BY_LABEL: MANAGED_BY,
        PART_OF_LABEL: PART_OF,
        COMPONENT_LABEL: component,
        f"{GROUP_PREFIX}{owner_kind.lower()}": owner_name,
    }
    if model:
        labels[MODEL_LABEL] = model
    return labels


def restricted_pod_security_context() -> dict[str, Any]:
    """Pod Security Standard `restricted` at pod level."""
    return {
        "runAsNonRoot": True,
        "runAsUser": NON_ROOT_UID,
        "runAsGroup": NON_ROOT_UID,
        "fsGroup": NON_ROOT_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_container_security_context() -> dict[str, Any]:
    """`restricted` at container level, plus a read-only root filesystem (writable paths
    come from an emptyDir at /tmp)."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def image_allowed(image: str, entry: str) -> bool:
    """Whether `image` matches one allow-list entry: `registry/path/` (ending in '/') allows
    every image under that path; `repository` allows any tag or digest of it; `repo:tag` or
    `repo@sha256:...` exactly that image."""
    if entry.endswith("/"):
        return image.startswith(entry) and ".." not in image
    if ":" in entry.rsplit("/", 1)[-1] or "@" in entry:
        return image == entry
    return image.startswith((entry + ":", entry + "@"))


def image_problem(image: str, allowed: tuple[str, ...]) -> str | None:
    """Why `image` may not run with the namespace's S3 credentials (None: it may). Checked
    before any Job or Deployment exists, so a refused image never gets a Pod."""
    if any(image_allowed(image, entry) for entry in allowed):
        return None
    return (f"spec.image: {image!r} is not in the operator's image allow-list ({', '.join(allowed)}); "
            "ask the operator's administrator to extend MLOPS_ALLOWED_IMAGES")


def estimator_problem(estimator: str, allowed: tuple[str, ...], field: str = "spec.estimator") -> str | None:
    """Why `estimator` may not run (None: it may). An allowed entry ending in '.' is a
    prefix (a package), otherwise an exact import path."""
    if is_allowed(estimator, allowed):
        return None
    return f"{field}: {estimator!r} is not in the operator's allow-list ({', '.join(allowed)})"


# A model-level rule's message starts with the field it names ("parallelism: must not ...").
_FIELD_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z][A-Za-z0-9]*)*): (.*)$", re.DOTALL)


def describe_validation_error(error: ValidationError, root: str = "") -> str:
    """'spec.search.parallelism: must not exceed maxTrials; ...': each problem with its field
    (a cross-field rule's field joins the path of the model it belongs to)."""
    parts = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"])
        where = f"{root}.{loc}" if root and loc else (loc or root)
        message = str(item["msg"]).removeprefix("Value error, ")
        named = _FIELD_PREFIX.match(message)
        if named and ";" not in message:
            where, message = (f"{where}.{named[1]}" if where else named[1]), named[2]
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def parse_conditions(raw: Any) -> list[Condition]:
    """Conditions of a status we did not validate (the spec was invalid): keep those that
    parse, drop the rest."""
    conditions = []
    for item in raw if isinstance(raw, list) else []:
        try:
            conditions.append(Condition.model_validate(item))
        except ValidationError:
            continue
    return conditions


def invalid_spec_plan(obj: Mapping[str, Any], message: str, now: datetime) -> Plan:
    """The whole reaction to a spec the operator cannot act on: Ready=False and Stalled=True
    with reason InvalidSpec, a Warning Event once, nothing created."""
    status = dict(obj.get("status") or {})
    generation = (obj.get("metadata") or {}).get("generation")
    conditions = parse_conditions(status.get("conditions"))
    already = any(c.type == STALLED and c.reason == REASON_INVALID_SPEC and c.message == message
                  and c.observed_generation == generation for c in conditions)
    conditions = set_condition(conditions, READY, "False", REASON_INVALID_SPEC, message, generation, now)
    conditions = set_condition(conditions, STALLED, "True", REASON_INVALID_SPEC, message, generation, now)
    status["conditions"] = [c.dump() for c in conditions]
    status["message"] = message
    if generation is not None:
        status["observedGeneration"] = generation
    events = () if already else (Event(REASON_INVALID_SPEC, message, "Warning"),)
    return Plan(status=status, events=events)


def is_invalid_spec(plan: Plan) -> bool:
    return any(
        c.get("type") == STALLED and c.get("reason") == REASON_INVALID_SPEC and c.get("status") == "True"
        for c in plan.status.get("conditions") or ()
    )


def with_conditions(
    conditions: list[Condition],
    updates: list[tuple[str, ConditionStatus, str, str]],
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    for type_, status, reason, message in updates:
        conditions = set_condition(conditions, type_, status, reason, message, generation, now)
    return conditions


def clear_stalled(conditions: list[Condition], generation: int | None, now: datetime) -> list[Condition]:
    """Once the spec is valid again, Stalled (if we set it) turns False."""
    if any(c.type == STALLED for c in conditions):
        return set_condition(conditions, STALLED, "False", "SpecValid", "", generation, now)
    return conditions


def camel_reason(text: str | None, default: str) -> str:
    """A condition reason (CamelCase, letters and digits) from free text."""
    if not text:
        return default
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", text):
        return text
    words = re.findall(r"[A-Za-z0-9]+", text)
    reason = "".join(w[:1].upper() + w[1:] for w in words)
    return reason if reason[:1].isalpha() else default


def spec_hash(spec: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
