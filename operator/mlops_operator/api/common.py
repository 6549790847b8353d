"""Building blocks shared by the four kinds: the camelCase base model, metadata,
resources, durations, free-form values and the Kind base class that the CRD generator reads."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, GetJsonSchemaHandler, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

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

# A Kubernetes quantity ("500m", "1Gi", 2): int-or-string in the CRD, strings checked with the
# apiserver's own quantity grammar (resource.Quantity), so "lots" is refused before a Pod is.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY = re.compile(QUANTITY_PATTERN)


def _quantity(value: int | str) -> int | str:
    if isinstance(value, str) and (len(value) > 64 or not _QUANTITY.fullmatch(value)):
        raise ValueError(f"{value!r:.70} is not a Kubernetes quantity (e.g. 500m, 2, 512Mi, 1Gi)")
    return value


# Checked after the union (so an error names the field, not a branch of the union); the CRD
# gets the same pattern on the string branch.
Quantity = Annotated[
    int | str,
    AfterValidator(_quantity),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string", "pattern": QUANTITY_PATTERN, "maxLength": 64}]}),
]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
DURATION_PATTERN = r"^(\d+(\.\d+)?(ms|s|m|h))+$"
# Bounded so that the apiserver's CEL cost estimate of `duration(...)` stays small.
Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32, examples=["30s", "5m", "1h30m"])]

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Service names are DNS-1035 labels: they start with a letter.
DNS_1035_LABEL_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
# A container image reference: not empty, no spaces (which images may run is the operator's
# allow-list, MLOPS_ALLOWED_IMAGES, judged before any Pod exists).
ImageRef = Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[a-z0-9][A-Za-z0-9._/:@\-]*$")]
# S3 bucket names (the AWS rules MinIO and SeaweedFS enforce): 3-63 of a-z 0-9 . -
BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$"
# numpy's and scikit-learn's random_state must fit in 32 bits.
MAX_SEED = 2**32 - 1
# A Job that runs longer than a week is a mistake, not a training run; unbounded, it holds
# its node and its S3 credentials forever.
MAX_ACTIVE_DEADLINE_SECONDS = 7 * 24 * 3600
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


# --------------------------------------------------------------------------- cross-field rules


@dataclass(frozen=True)
class CrossFieldRule:
    """A rule between fields, written once and enforced by both layers: `cel` becomes one of
    the CRD's `x-kubernetes-validations` (crdgen), `holds` a pydantic validator. `cel` must
    guard every optional field with `has()`: the apiserver fills in only the defaults the
    schema states, and a field the user left out is absent, not null."""

    field: str  # the JSON name the error names, relative to the model ("steps")
    message: str
    cel: str
    holds: Callable[[Any], bool]
    field_path: bool = True  # point the apiserver's error at `field` (only for schema fields)

    def validation(self) -> dict[str, str]:
        rule = {"rule": self.cel, "message": f"{self.field}: {self.message}"}
        if self.field_path:
            rule["fieldPath"] = "." + self.field
        return rule


def broken_rules(model: Any, rules: tuple[CrossFieldRule, ...]) -> list[str]:
    return [f"{rule.field}: {rule.message}" for rule in rules if not rule.holds(model)]


class CrossFieldRules:
    """Mixin: a model's `cross_field_rules` (its own, not inherited) checked after
    validation, and emitted into its JSON schema for the CRD."""

    cross_field_rules: ClassVar[tuple[CrossFieldRule, ...]] = ()

    @model_validator(mode="after")
    def _check_cross_field_rules(self) -> Any:
        broken = broken_rules(self, type(self).__dict__.get("cross_field_rules", ()))
        if broken:
            raise ValueError("; ".join(broken))
        return self

    @classmethod
    def cel_validations(cls) -> list[dict[str, str]]:
        return [rule.validation() for rule in cls.__dict__.get("cross_field_rules", ())]

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler(core_schema)
        validations = cls.cel_validations()
        if validations:
            handler.resolve_ref_schema(schema)["x-kubernetes-validations"] = validations
        return schema


def at_least(field: str, minimum: str) -> CrossFieldRule:
    """`field` (an optional Duration) is at least `minimum`."""
    attribute = to_snake(field)
    return CrossFieldRule(
        field, f"must be at least {minimum}",
        f"!has(self.{field}) || duration(self.{field}) >= duration('{minimum}')",
        lambda m: getattr(m, attribute) is None or parse_duration(getattr(m, attribute)) >= parse_duration(minimum),
    )


def to_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def parse_duration(text: str) -> timedelta:
    """'1h30m' -> timedelta; the schema's pattern has already vouched for the syntax."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {text!r}: use e.g. 30s, 5m, 1h30m")
    return timedelta(seconds=sum(float(n) * units[u] for n, u in _DURATION_PART.findall(text)))


class ApiModel(CrossFieldRules, BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are a user error. Strict
    types, as the CRD's: "10" is not an integer and "true" not a boolean, in local mode too."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        strict=True,
    )

    def dump(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusModel(ApiModel):
    """Status is written by the operator; tolerate fields from newer operator versions."""

    model_config = ConfigDict(extra="ignore", strict=False)


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

    bucket: Annotated[str, Field(min_length=3, max_length=63, pattern=BUCKET_PATTERN)] = DEFAULT_BUCKET
    secret_name: DnsLabel = Field(
        default=DEFAULT_S3_SECRET,
        description="Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.",
    )
    endpoint: str | None = Field(
        default=None,
        pattern=r"^https?://[^/\s]+",
        max_length=2048,
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


def name_rule(pattern: str, what: str) -> CrossFieldRule:
    """metadata.name matches `pattern` and fits a label value (63): the name becomes part of
    the children's names and the value of their `mlops.seed.io/<kind>` label. The apiserver
    itself only asks for a DNS-1123 subdomain; local mode asks the same as the CRD."""
    compiled = re.compile(pattern)
    return CrossFieldRule(
        "metadata.name", f"must be {what} of at most 63 characters",
        f"size(self.metadata.name) <= 63 && self.metadata.name.matches('{pattern}')",
        lambda k: len(k.metadata.name) <= 63 and compiled.fullmatch(k.metadata.name) is not None,
        field_path=False,
    )


DNS_LABEL_NAME = name_rule(DNS_LABEL_PATTERN, "a DNS-1123 label (a-z, 0-9, '-')")


class Kind(CrossFieldRules, BaseModel):
    """A custom resource. Subclasses declare the CRD's names as ClassVars and their
    `spec`/`status` models; `apiVersion`/`kind` are checked on input and added on output.
    `cross_field_rules` of a Kind become rules at the CRD's root (they may read
    metadata.name)."""

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
