"""TrainingRun: one training attempt; owns one batch/v1 Job."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .common import (
    DEFAULT_RUNTIME_IMAGE,
    DNS_LABEL_NAME,
    MAX_ACTIVE_DEADLINE_SECONDS,
    MAX_SEED,
    ApiModel,
    ArtifactLocation,
    DnsLabel,
    ImageRef,
    FreeFormObject,
    ImportPath,
    Kind,
    MetricName,
    Metrics,
    ResourceRequirements,
    StatusModel,
    age_column,
    ready_column,
)
from .conditions import Condition
from .ml import (
    CrossValidation,
    DataReportSummary,
    Dataset,
    FeatureImportance,
    Objective,
    PipelineSteps,
    Signature,
    SliceResult,
    Validation,
)


class TrainingRunSpec(ApiModel):
    model: DnsLabel = Field(description="Model family the result belongs to.")
    experiment: DnsLabel | None = Field(default=None, description="Experiment that started it, if any.")
    dataset: Dataset
    estimator: ImportPath
    params: FreeFormObject = Field(default_factory=dict)
    steps: PipelineSteps = Field(default_factory=list)
    metrics: list[MetricName] | None = None
    objective: Objective | None = Field(
        default=None, description="Objective the value in status.objectiveValue is read from."
    )
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    cross_validation: CrossValidation | None = None
    image: ImageRef = DEFAULT_RUNTIME_IMAGE
    resources: ResourceRequirements | None = None
    artifacts: ArtifactLocation = Field(default_factory=ArtifactLocation)
    active_deadline_seconds: int = Field(default=3600, ge=1, le=MAX_ACTIVE_DEADLINE_SECONDS)
    backoff_limit: int = Field(default=0, ge=0, le=10)
    ttl_seconds_after_finished: int | None = Field(default=3600, ge=0)
    onnx: bool = True
    validation: Validation | None = Field(
        default=None, description="The trainer applies data, slices and importance; the gates judge the "
        "ModelVersion of a standalone run (an Experiment's versions use the Experiment's).",
    )


class TrainingRunStatus(StatusModel):
    phase: Literal["Pending", "Running", "Succeeded", "Failed"] = "Pending"
    observed_generation: int | None = None
    job_name: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    metrics: Metrics = Field(default_factory=dict)
    objective_value: float | None = None
    artifact_uri: str | None = None
    model_uri: str | None = None
    sha256: str | None = None
    size: int | None = Field(default=None, ge=0)
    onnx_uri: str | None = None
    onnx_sha256: str | None = None
    serving_format: Literal["onnx", "skops"] | None = None
    dataset_sha256: str | None = None
    task: Literal["classification", "regression"] | None = None
    duration_seconds: float | None = None
    sklearn_version: str | None = Field(default=None, description="scikit-learn version that trained the model.")
    signature: Signature | None = Field(default=None, description="Input signature, when the summary carries it.")
    data_report: DataReportSummary | None = Field(default=None, description="The data contract's verdict.")
    top_features: list[FeatureImportance] | None = None
    slices: list[SliceResult] | None = None
    failure_reason: str | None = None
    message: str | None = Field(default=None, description="Why it failed, from the container's termination message.")
    conditions: list[Condition] = Field(default_factory=list)


class TrainingRun(Kind):
    cross_field_rules = (DNS_LABEL_NAME,)
    kind: ClassVar[str] = "TrainingRun"
    plural: ClassVar[str] = "trainingruns"
    singular: ClassVar[str] = "trainingrun"
    short_names: ClassVar[tuple[str, ...]] = ("tr",)
    printer_columns: ClassVar[tuple[dict, ...]] = (
        {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
        {"name": "Estimator", "type": "string", "jsonPath": ".spec.estimator", "priority": 1},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Objective", "type": "number", "jsonPath": ".status.objectiveValue"},
        {"name": "Format", "type": "string", "jsonPath": ".status.servingFormat", "priority": 1},
        {"name": "Job", "type": "string", "jsonPath": ".status.jobName", "priority": 1},
        ready_column(),
        age_column(),
    )

    spec: TrainingRunSpec
    status: TrainingRunStatus | None = None
