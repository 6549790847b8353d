"""ModelVersion: the immutable record of one trained model, its gates and where it serves."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .common import (
    DNS_LABEL_NAME,
    ApiModel,
    CrossFieldRule,
    DnsLabel,
    FreeFormObject,
    ImportPath,
    Kind,
    Metrics,
    StatusModel,
    age_column,
    ready_column,
)
from .conditions import Condition
from .ml import (
    DataReportSummary,
    FeatureImportance,
    GateResult,
    Lineage,
    Objective,
    Signature,
    SliceResult,
    Validation,
)

SHA256_PATTERN = r"^[0-9a-f]{64}$"
REASON_SPEC_IMMUTABLE = "SpecImmutable"
"""Condition/Event reason when a ModelVersion's spec is changed after creation."""


class Artifact(ApiModel):
    # The server loads an ONNX form only with its sha256, and serves onnx only from one.
    cross_field_rules = (
        CrossFieldRule("onnxSha256", "required with onnxUri (and only with it)",
                       "has(self.onnxUri) == has(self.onnxSha256)",
                       lambda m: (m.onnx_uri is None) == (m.onnx_sha256 is None)),
        CrossFieldRule("onnxUri", "required when servingFormat is onnx",
                       "!has(self.servingFormat) || self.servingFormat != 'onnx' || has(self.onnxUri)",
                       lambda m: m.serving_format != "onnx" or m.onnx_uri is not None),
    )

    uri: str = Field(pattern=r"^s3://", description="Prefix holding every artifact of the run.")
    model_uri: str = Field(pattern=r"^s3://.+\.skops$")
    sha256: str = Field(pattern=SHA256_PATTERN)
    size: int | None = Field(default=None, ge=0)
    onnx_uri: str | None = Field(default=None, pattern=r"^s3://.+\.onnx$")
    onnx_sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)
    serving_format: Literal["onnx", "skops"] = "skops"


class ModelVersionSpec(ApiModel):
    model: DnsLabel
    version: int = Field(ge=1, description="Monotonic per model family: 1, 2, 3, ...")
    artifact: Artifact
    estimator: ImportPath | None = None
    params: FreeFormObject = Field(default_factory=dict)
    metrics: Metrics = Field(default_factory=dict)
    objective: Objective | None = None
    signature: Signature | None = None
    lineage: Lineage = Field(default_factory=Lineage)
    validation: Validation = Field(default_factory=Validation)
    top_features: list[FeatureImportance] | None = Field(
        default=None, description="Permutation importance on the held-out split (importance.json)."
    )
    slices: list[SliceResult] | None = Field(default=None, description="Metric per slice (slices.json).")
    data_report: DataReportSummary | None = Field(default=None, description="Summary of data_report.json.")


Role = Literal["none", "champion", "challenger", "previous", "retired", "rolledBack"]


class ServingRef(StatusModel):
    service: str
    role: Role


class ModelVersionStatus(StatusModel):
    phase: Literal["Pending", "Validated", "Rejected"] = "Pending"
    observed_generation: int | None = None
    gates: list[GateResult] = Field(default_factory=list)
    role: Role = Field(default="none", description="Where it serves now, across InferenceServices.")
    served_by: list[ServingRef] = Field(default_factory=list)
    validated_time: str | None = None
    spec_hash: str | None = Field(
        default=None, description="Hash of the spec as first validated; a later change is refused."
    )
    message: str | None = None
    top_features: str | None = Field(
        default=None, description="Top features by permutation importance, e.g. 'petal_width=0.41, ...'."
    )
    data_report: str | None = Field(default=None, description="The data contract's verdict on the training data.")
    conditions: list[Condition] = Field(default_factory=list)


class ModelVersion(Kind):
    cross_field_rules = (DNS_LABEL_NAME,)
    kind: ClassVar[str] = "ModelVersion"
    plural: ClassVar[str] = "modelversions"
    singular: ClassVar[str] = "modelversion"
    short_names: ClassVar[tuple[str, ...]] = ("mv",)
    printer_columns: ClassVar[tuple[dict, ...]] = (
        {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
        {"name": "Version", "type": "integer", "jsonPath": ".spec.version"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Role", "type": "string", "jsonPath": ".status.role"},
        {"name": "Format", "type": "string", "jsonPath": ".spec.artifact.servingFormat"},
        {"name": "Run", "type": "string", "jsonPath": ".spec.lineage.trainingRun", "priority": 1},
        {"name": "Top Features", "type": "string", "jsonPath": ".status.topFeatures", "priority": 1},
        {"name": "Data", "type": "string", "jsonPath": ".status.dataReport", "priority": 1},
        ready_column(),
        age_column(),
    )

    spec: ModelVersionSpec
    status: ModelVersionStatus | None = None
