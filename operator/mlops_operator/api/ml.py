"""ML vocabulary shared by several kinds: datasets, objectives, validation gates,
signatures and lineage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import ApiModel, CrossFieldRule, FreeFormValue, ImportPath, MetricName, StatusModel

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


class Objective(ApiModel):
    metric: MetricName = "accuracy"
    goal: Literal["maximize", "minimize"] = "maximize"


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


class Validation(ApiModel):
    gates: list[ValidationGate] = Field(default_factory=list, max_length=32)
    compare_with_champion_of: str | None = Field(
        default=None,
        description="InferenceService whose champion the gates compare with; "
        "default: the champion of any InferenceService serving this model.",
    )


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
