"""Building blocks shared by the four kinds: the camelCase base model, metadata,
resources, durations, free-form values and the Kind base class that the CRD generator reads."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel

GROUP = "mlops.seed.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "mlops"
DEFAULT_RUNTIME_IMAGE = "mlops-runtime:0.1.0"
DEFAULT_BUCKET = "mlops"
DEFAULT_S3_SECRET = "mlops-s3"

# Free-form values (hyperparameters) are the only places the schema lets anything through:
# the runtime checks them against the estimator's get_params() instead.
FreeFormObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]
FreeFormValue = Annotated[Any, WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True})]

# A Kubernetes quantity ("500m", "1Gi", 2): int-or-string in the CRD.
Quantity = int | str

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
DURATION_PATTERN = r"^(\d+(\.\d+)?(ms|s|m|h))+$"
Duration = Annotated[str, Field(pattern=DURATION_PATTERN, examples=["30s", "5m", "1h30m"])]

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
ImportPath = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$",
        max_length=200,
        description="Dotted import path of an estimator class, e.g. sklearn.ensemble.RandomForestClassifier.",
    ),
]
MetricName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=63)]
Metrics = dict[str, float]


def parse_duration(text: str) -> timedelta:
    """'1h30m' -> timedelta; the schema's pattern has already vouched for the syntax."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {text!r}: use e.g. 30s, 5m, 1h30m")
    return timedelta(seconds=sum(float(n) * units[u] for n, u in _DURATION_PART.findall(text)))


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are a user error."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def dump(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusModel(ApiModel):
    """Status is written by the operator; tolerate fields from newer operator versions."""

    model_config = ConfigDict(extra="ignore")


class ObjectMeta(BaseModel):
    """The parts of metadata the operator reads; everything else passes through."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    name: str = Field(min_length=1, max_length=253)
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = Field(default=None, alias="resourceVersion")
    creation_timestamp: str | None = Field(default=None, alias="creationTimestamp")
    deletion_timestamp: str | None = Field(default=None, alias="deletionTimestamp")


class ResourceRequirements(ApiModel):
    """Container resources, as in a Pod spec."""

    requests: dict[str, Quantity] | None = None
    limits: dict[str, Quantity] | None = None


class ArtifactLocation(ApiModel):
    """Where artifacts go and which Secret holds the S3 credentials (never the credentials
    themselves: they stay in the Secret)."""

    bucket: Annotated[str, Field(min_length=3, max_length=63)] = DEFAULT_BUCKET
    secret_name: DnsLabel = Field(
        default=DEFAULT_S3_SECRET,
        description="Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.",
    )
    endpoint: str | None = Field(
        default=None,
        description="S3 endpoint URL; defaults to the operator's AWS_ENDPOINT_URL.",
    )


class PrinterColumn(BaseModel):
    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: str = Field(alias="jsonPath")
    description: str | None = None
    priority: int = 0


def ready_column() -> dict[str, Any]:
    return {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'}


def age_column() -> dict[str, Any]:
    return {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


class Kind(BaseModel):
    """A custom resource. Subclasses declare the CRD's names as ClassVars and their
    `spec`/`status` models; `apiVersion`/`kind` are checked on input and added on output."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    group: ClassVar[str] = GROUP
    version: ClassVar[str] = VERSION
    kind: ClassVar[str]
    plural: ClassVar[str]
    singular: ClassVar[str]
    short_names: ClassVar[tuple[str, ...]]
    categories: ClassVar[tuple[str, ...]] = (CATEGORY,)
    printer_columns: ClassVar[tuple[dict[str, Any], ...]]

    metadata: ObjectMeta

    @classmethod
    def api_version(cls) -> str:
        return f"{cls.group}/{cls.version}"

    @model_validator(mode="before")
    @classmethod
    def _strip_type_meta(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("apiVersion" in data or "kind" in data):
            data = dict(data)
            api_version, kind = data.pop("apiVersion", None), data.pop("kind", None)
            if api_version is not None and api_version != cls.api_version():
                raise ValueError(f"apiVersion: expected {cls.api_version()}, got {api_version}")
            if kind is not None and kind != cls.kind:
                raise ValueError(f"kind: expected {cls.kind}, got {kind}")
        return data

    def to_manifest(self) -> dict[str, Any]:
        body = self.model_dump(by_alias=True, exclude_none=True, mode="json")
        return {"apiVersion": self.api_version(), "kind": self.kind, **body}
