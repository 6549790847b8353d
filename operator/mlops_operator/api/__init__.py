"""The four kinds of mlops.seed.io/v1alpha1 as pydantic models: the single source of the
schema (the CRDs in crds/ are generated from these)."""

from __future__ import annotations

from typing import Any

from .common import API_VERSION, GROUP, VERSION, Kind, parse_duration
from .conditions import Condition, set_condition
from .experiment import Experiment, ExperimentSpec, ExperimentStatus
from .inference_service import InferenceService, InferenceServiceSpec, InferenceServiceStatus
from .model_version import ModelVersion, ModelVersionSpec, ModelVersionStatus
from .training_run import TrainingRun, TrainingRunSpec, TrainingRunStatus

ALL_KINDS: tuple[type[Kind], ...] = (Experiment, TrainingRun, ModelVersion, InferenceService)
KINDS_BY_NAME: dict[str, type[Kind]] = {k.kind: k for k in ALL_KINDS}


def parse_manifest(doc: dict[str, Any]) -> Kind:
    """Validate one manifest of ours into its model; raises ValueError for unknown kinds
    and pydantic.ValidationError (naming the field) for bad content."""
    if doc.get("apiVersion") != API_VERSION:
        raise ValueError(f"apiVersion: expected {API_VERSION}, got {doc.get('apiVersion')!r}")
    kind_cls = KINDS_BY_NAME.get(doc.get("kind", ""))
    if kind_cls is None:
        raise ValueError(f"kind: expected one of {sorted(KINDS_BY_NAME)}, got {doc.get('kind')!r}")
    return kind_cls.model_validate(doc)


__all__ = [
    "ALL_KINDS",
    "API_VERSION",
    "Condition",
    "Experiment",
    "ExperimentSpec",
    "ExperimentStatus",
    "GROUP",
    "InferenceService",
    "InferenceServiceSpec",
    "InferenceServiceStatus",
    "KINDS_BY_NAME",
    "Kind",
    "ModelVersion",
    "ModelVersionSpec",
    "ModelVersionStatus",
    "TrainingRun",
    "TrainingRunSpec",
    "TrainingRunStatus",
    "VERSION",
    "parse_duration",
    "parse_manifest",
    "set_condition",
]
