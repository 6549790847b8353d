"""ML vocabulary shared by several kinds: datasets, objectives, validation gates,
signatures and lineage."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from .common import ApiModel, CrossFieldRule, FreeFormObject, FreeFormValue, ImportPath, MetricName, StatusModel

BUILTIN_DATASETS = ("iris", "wine", "breast_cancer", "diabetes", "digits", "linnerud")
DATASET_URI_PATTERN = r"^(sklearn://(" + "|".join(BUILTIN_DATASETS) + r")|s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/.+)$"

# Metrics where smaller is better; every other metric is maximised.
LOWER_IS_BETTER = frozenset({"log_loss", "rmse", "mae", "mse"})


def greater_is_better(metric: str) -> bool:
    base = metric.removeprefix("cv_").removesuffix("_mean")
    return base not in LOWER_IS_BETTER


class Dataset(ApiModel):
    """`sklearn://<name>` for the datasets that ship with scikit-learn, or
    `s3://bucket/key.csv|.parquet` with a `target` column."""

    cross_field_rules = (
        CrossFieldRule("target", "required for an s3:// dataset (name of the label column)",
                       "!self.uri.startsWith('s3://') || has(self.target)",
                       lambda m: not m.uri.startswith("s3://") or bool(m.target)),
    )

    uri: str = Field(pattern=DATASET_URI_PATTERN, max_length=1024)
    target: str | None = Field(default=None, min_length=1, max_length=253)
    test_size: float = Field(default=0.2, gt=0.0, lt=1.0)
    format: Literal["csv", "parquet"] | None = Field(
        default=None, description="Inferred from the key's extension when omitted."
    )


# A step's name prefixes its parameters in `params` and the search space (`scaler__with_mean`),
# so it is an identifier without a double underscore.
STEP_NAME_PATTERN = r"^[a-z](_?[a-z0-9])*$"
MAX_PIPELINE_STEPS = 16
COLUMNS_STAGE = "preprocess"  # the runtime's name for the per-column stage (mlops_runtime.estimators)


class PipelineStep(ApiModel):
    """One preprocessing step before the estimator: a transformer by import path, from the
    same allow-list as the estimator. The saved model is the whole pipeline."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": f"self.name != '{COLUMNS_STAGE}'",
                    "message": f"{COLUMNS_STAGE!r} names the per-column stage of the pipeline; choose another name",
                    "fieldPath": ".name",
                }
            ]
        }
    }

    name: str = Field(
        pattern=STEP_NAME_PATTERN, max_length=63,
        description="Names the step; its parameters are <name>__<param> in params and search.space.",
    )
    estimator: ImportPath = Field(description="A transformer class, e.g. sklearn.preprocessing.StandardScaler.")
    params: FreeFormObject = Field(default_factory=dict, description="The step's fixed parameters.")
    columns: list[str] | None = Field(
        default=None, min_length=1, max_length=1024,
        description="Only these columns (steps listing the same columns one after the other chain); "
        "default: every column. String columns no step lists are one-hot encoded first.",
    )

    @model_validator(mode="after")
    def _name_is_not_the_columns_stage(self) -> PipelineStep:
        if self.name == COLUMNS_STAGE:
            raise ValueError(f"name: {COLUMNS_STAGE!r} names the per-column stage of the pipeline; choose another name")
        return self


def _unique_step_names(steps: list[PipelineStep]) -> list[PipelineStep]:
    names = [step.name for step in steps]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"steps: step name(s) {repeated} used more than once")
    return steps


# The CRD says the same as the validator: a list keyed by name (the apiserver refuses duplicates).
PipelineSteps = Annotated[
    list[PipelineStep],
    AfterValidator(_unique_step_names),
    Field(
        max_length=MAX_PIPELINE_STEPS,
        description="Preprocessing before the estimator (scalers, imputers, encoders, feature selection...), "
        "in order; the estimator's own parameters may be prefixed with its lower-cased class name (svc__C).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    ),
]


class Objective(ApiModel):
    metric: MetricName = Field(
        default="accuracy",
        description="A metric the trainer computes; as a secondary objective also model_size_bytes "
        "(the artifact's size) or training_seconds.",
    )
    goal: Literal["maximize", "minimize"] = "maximize"
    limit: float | None = Field(
        default=None,
        description="Secondary objectives only: the worst value the registered version may have "
        "(at least this when maximizing, at most when minimizing).",
    )


class CrossValidation(ApiModel):
    folds: int = Field(default=5, ge=2, le=20)


class ValidationGate(ApiModel):
    """An offline gate, MLflow-style: an absolute threshold, and/or a required improvement
    over the current champion (skipped when there is no champion yet)."""

    metric: MetricName
    threshold: float | None = Field(
        default=None, description="The value must be at least this (at most, if lower is better)."
    )
    min_absolute_change: float | None = Field(
        default=None, ge=0.0, description="Required improvement over the champion, in metric units."
    )
    min_relative_change: float | None = Field(
        default=None, ge=0.0, description="Required improvement over the champion, as a fraction of its value."
    )
    greater_is_better: bool | None = Field(
        default=None, description="Defaults from the metric name (log_loss, rmse, mae: lower is better)."
    )

    def higher_is_better(self) -> bool:
        return greater_is_better(self.metric) if self.greater_is_better is None else self.greater_is_better


CheckAction = Literal["fail", "warn", "ignore"]


class DataChecks(ApiModel):
    """What each check of the data contract does when it finds a problem (docs/validation.md)."""

    missing_column: CheckAction = "fail"
    new_column: CheckAction = "warn"
    type_change: CheckAction = "fail"
    out_of_range: CheckAction = "fail"
    unseen_category: CheckAction = "fail"
    missing_rate: CheckAction = "fail"
    non_finite: CheckAction = "fail"
    drift: CheckAction = "warn"


class DataValidation(ApiModel):
    """The data contract, checked by the trainer before it fits: against the schema of the
    family's first Validated version, and the champion's training distribution."""

    enabled: bool = True
    checks: DataChecks = Field(default_factory=DataChecks)
    range_tolerance: float = Field(
        default=0.1, ge=0.0, description="How far beyond the contract's [min, max] a value may go, "
        "as a fraction of that range's span."
    )
    max_out_of_range_fraction: float = Field(default=0.01, ge=0.0, le=1.0)
    max_unseen_category_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    max_missing_rate_increase: float = Field(
        default=0.05, ge=0.0, le=1.0, description="Allowed rise of a column's missing-value rate over the contract's."
    )
    max_psi: float = Field(default=0.25, gt=0.0, description="PSI against the champion's training data.")


class Slice(ApiModel):
    """Metrics per value of a feature (or per bin between `edges`) on the held-out split; with
    `maxGap`, a gate on the gap between the best and the worst judged slice."""

    feature: str = Field(min_length=1, max_length=253)
    edges: list[float] | None = Field(
        default=None, min_length=1, max_length=50,
        description="Increasing bin edges for a numeric feature; the outer bins are open.",
    )
    metric: MetricName | None = Field(
        default=None, description="The metric judged; default: the run's first metric (accuracy, r2)."
    )
    max_gap: float | None = Field(default=None, ge=0.0, description="Best minus worst slice, at most this.")
    min_rows: int = Field(default=30, ge=1, description="Slices with fewer held-out rows are reported, not judged.")

    @model_validator(mode="after")
    def _increasing_edges(self) -> Slice:
        if self.edges and any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError("edges: must be strictly increasing")
        return self


class ImportanceStability(ApiModel):
    """Gate: the champion's `championTop` features must stay among this version's `withinTopK`."""

    champion_top: int = Field(default=3, ge=1, le=20)
    within_top_k: int = Field(default=5, ge=1, le=50)


class Importance(ApiModel):
    """Permutation importance on the held-out split (docs/validation.md)."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.stability) || self.stability.withinTopK <= self.topK",
                    "message": "stability.withinTopK must not exceed topK: only the top topK features are recorded",
                    "fieldPath": ".stability.withinTopK",
                }
            ]
        }
    }

    enabled: bool = True
    repeats: int = Field(default=5, ge=1, le=50)
    max_rows: int = Field(default=1000, ge=10, le=100000, description="Held-out rows used, a seeded subsample.")
    top_k: int = Field(default=5, ge=1, le=50, description="How many top features the status lists.")
    row_budget: float = Field(
        default=2.5, ge=0.1, le=1e6, description="Bound on the cost: features x rows x repeats predicted stay "
        "within this many times the training rows (fewer repeats, then rows, past it).",
    )
    stability: ImportanceStability | None = Field(default=None, description="Off unless set.")

    @model_validator(mode="after")
    def _stability_within_recorded(self) -> Importance:
        if self.stability is not None and self.stability.within_top_k > self.top_k:
            raise ValueError(f"stability.withinTopK ({self.stability.within_top_k}) must not exceed topK "
                             f"({self.top_k}): only the top {self.top_k} features are recorded")
        return self


class Validation(ApiModel):
    gates: list[ValidationGate] = Field(default_factory=list, max_length=32)
    compare_with_champion_of: str | None = Field(
        default=None,
        description="InferenceService whose champion the gates compare with; "
        "default: the champion of any InferenceService serving this model.",
    )
    # Left out means the defaults (the trainer's are the same), so records stay short.
    data: DataValidation | None = Field(default=None, description="The data contract; default: on.")
    slices: list[Slice] | None = Field(default=None, max_length=16)
    importance: Importance | None = Field(default=None, description="Permutation importance; default: on.")


class FeatureSignature(ApiModel):
    name: str
    dtype: str
    kind: Literal["numeric", "categorical"] = "numeric"
    categories: list[FreeFormValue] | None = None


class Signature(ApiModel):
    task: Literal["classification", "regression"]
    target: str | None = None
    features: list[FeatureSignature] = Field(default_factory=list)
    classes: list[FreeFormValue] | None = None


class DatasetLineage(ApiModel):
    uri: str
    sha256: str | None = None


class Lineage(ApiModel):
    training_run: str | None = None
    experiment: str | None = None
    dataset: DatasetLineage | None = None
    image: str | None = None
    code_version: str | None = None
    sklearn_version: str | None = None
    estimator: ImportPath | None = None


class GateResult(StatusModel):
    metric: str
    passed: bool
    value: float | None = None
    threshold: float | None = None
    champion: str | None = Field(default=None, description="ModelVersion compared with, if any.")
    champion_value: float | None = None
    message: str = ""


class FeatureImportance(StatusModel):
    feature: str
    importance: float | None = None


class SliceValue(StatusModel):
    value: str
    rows: int = Field(ge=0)
    score: float | None = None


class SliceResult(StatusModel):
    """One slice feature as the trainer reported it: the judged metric per value."""

    feature: str
    metric: str
    min_rows: int = Field(default=30, ge=1)
    values: list[SliceValue] = Field(default_factory=list)
    truncated: int | None = Field(default=None, description="Values left out of the record (the least populous).")


class MaxPsi(StatusModel):
    feature: str
    value: float | None = None


class DataReportSummary(StatusModel):
    """The trainer's data validation, in short; the full report is data_report.json."""

    passed: bool
    failures: int = 0
    warnings: int = 0
    columns_checked: int = 0
    disabled: bool | None = None
    contract: str | None = Field(default=None, description="ModelVersion whose data schema was the contract.")
    reference: str | None = Field(default=None, description="ModelVersion whose training data PSI compared with.")
    max_psi: MaxPsi | None = None
    problems: list[str] = Field(default_factory=list, description="check:column, failures first.")
