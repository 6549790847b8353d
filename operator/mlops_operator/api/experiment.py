"""Experiment: a hyperparameter search that trains TrainingRuns and registers the best."""

from __future__ import annotations

import re

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from .common import (
    DEFAULT_RUNTIME_IMAGE,
    DNS_LABEL_NAME,
    MAX_ACTIVE_DEADLINE_SECONDS,
    MAX_SEED,
    CrossFieldRule,
    ApiModel,
    ArtifactLocation,
    DnsLabel,
    ImageRef,
    Duration,
    FreeFormObject,
    FreeFormValue,
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
from .ml import CrossValidation, Dataset, Objective, PipelineSteps, Validation

LEADERBOARD_SIZE = 10
PARETO_SIZE = 20
DEFAULT_PARALLELISM = 2
RETRAIN_HISTORY = 20


class SearchParameter(ApiModel):
    """One hyperparameter's search space: a typed range (`min`, `max`, optional `step`,
    uniform or log-uniform) or a list of `values`, never both."""

    model_config = {
        "json_schema_extra": {
            "oneOf": [{"required": ["values"]}, {"required": ["min", "max"]}],
        }
    }
    cross_field_rules = (
        CrossFieldRule("min", "must not be greater than max",
                       "!has(self.min) || !has(self.max) || self.min <= self.max",
                       lambda m: m.min is None or m.max is None or m.min <= m.max),
        CrossFieldRule("min", "a logUniform range needs min > 0",
                       "!has(self.distribution) || self.distribution != 'logUniform' || !has(self.min) || self.min > 0.0",
                       lambda m: m.distribution != "logUniform" or m.min is None or m.min > 0),
    )

    type: Literal["float", "int", "categorical"] | None = Field(
        default=None, description="float or int for a range (default float); categorical for values."
    )
    min: float | None = None
    max: float | None = None
    step: float | None = Field(default=None, gt=0)
    distribution: Literal["uniform", "logUniform"] = "uniform"
    values: Annotated[list[FreeFormValue], Field(min_length=1, max_length=1000)] | None = None

    @model_validator(mode="after")
    def _range_or_values(self) -> SearchParameter:
        has_range = self.min is not None or self.max is not None
        if has_range and self.values is not None:
            raise ValueError("values: give either min/max or values, not both")
        if self.values is None:
            if self.min is None or self.max is None:
                raise ValueError("min: a range needs both min and max (or give values)")
        return self

    @property
    def is_range(self) -> bool:
        return self.values is None

    @property
    def is_int(self) -> bool:
        return self.type == "int"


class EarlyStopping(ApiModel):
    """Stop starting trials when the objective reaches `targetValue`, or when `patience`
    completed trials in a row did not improve on the best."""

    target_value: float | None = None
    patience: int | None = Field(default=None, ge=1)


class Search(ApiModel):
    cross_field_rules = (
        CrossFieldRule("parallelism", "must not exceed maxTrials",
                       "!has(self.parallelism) || !has(self.maxTrials) || self.parallelism <= self.maxTrials",
                       lambda m: m.parallelism is None or m.parallelism <= m.max_trials),
    )

    algorithm: Literal["grid", "random", "bayesian"] = "random"
    space: dict[str, SearchParameter] = Field(default_factory=dict, max_length=64)
    max_trials: int = Field(default=10, ge=1, le=10000)
    parallelism: int | None = Field(
        default=None, ge=1, le=1000,
        description=f"Trials running at once; unset: {DEFAULT_PARALLELISM}, or maxTrials when that is smaller.",
    )
    max_failed_trials: int = Field(default=3, ge=0, le=10000)
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Makes random and bayesian proposals reproducible.")
    initial_random_trials: int = Field(
        default=10, ge=1, le=100,
        description="Bayesian search starts with this many random trials (optuna's default for TPE).",
    )
    early_stopping: EarlyStopping | None = None
    warm_start_from: list[DnsLabel] = Field(
        default_factory=list,
        max_length=10,
        description="Experiments in this namespace whose finished trials (params and results) the bayesian "
        "model starts from; their params are never tried again.",
    )

    def running_at_once(self) -> int:
        """How many trials may be pending or running together. The default follows a small
        maxTrials, so `search: {maxTrials: 1}` is valid as written."""
        return min(DEFAULT_PARALLELISM, self.max_trials) if self.parallelism is None else self.parallelism


class DriftRetrain(ApiModel):
    cross_field_rules = (
        CrossFieldRule("service", "name the InferenceService whose drift triggers a retrain",
                       "!has(self.enabled) || !self.enabled || has(self.service)",
                       lambda m: not m.enabled or m.service is not None),
    )

    enabled: bool = False
    service: DnsLabel | None = Field(
        default=None, description="InferenceService whose drift gauges trigger a retrain."
    )
    psi_threshold: float = Field(default=0.25, gt=0)
    cooldown: Duration = Field(
        default="6h", description="Least time between the last retrain (of any cause) and a drift-triggered one."
    )
    persistence: int = Field(
        default=3, ge=1, le=100, description="Consecutive drifted readings before a drift-triggered retrain."
    )
    false_alarm_per_day: float = Field(
        default=0.01, gt=0.0, lt=1.0,
        description="Chance per day that unshifted traffic triggers a retrain: the reading's p-value must be "
        "below this divided by the readings per day (Bonferroni over a day's readings).",
    )


def _cron_field(atom: str) -> str:
    item = f"([*]|{atom}(-{atom})?)(/[1-9][0-9]*)?"
    return f"{item}(,{item})*"


_MONTHS = "jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec"
_DAYS = "sun|mon|tue|wed|thu|fri|sat"
# Five cron fields, each within its range, or a macro: the same regular expression for
# pydantic and for the CRD's CEL rule (RE2 and Rust regex agree on it; no backslashes, so it
# reads the same inside a CEL string).
CRON_PATTERN = (
    "^(@(hourly|daily|weekly|monthly|yearly)|"
    + "[ ]+".join(_cron_field(atom) for atom in (
        "[0-5]?[0-9]",
        "([01]?[0-9]|2[0-3])",
        "(0?[1-9]|[12][0-9]|3[01])",
        f"(0?[1-9]|1[0-2]|{_MONTHS}|{_MONTHS.upper()})",
        f"([0-7]|{_DAYS}|{_DAYS.upper()})",
    ))
    + ")$"
)
_CRON = re.compile(CRON_PATTERN)


class Retrain(ApiModel):
    """Run the whole search again as a new Experiment `<exp>-r<N>` on a schedule, on drift,
    or both (docs/retrain.md)."""

    cross_field_rules = (
        CrossFieldRule("schedule", "is not a valid cron expression: five fields (minute hour day-of-month month "
                       "day-of-week, UTC) or @hourly, @daily, @weekly, @monthly, @yearly",
                       f"!has(self.schedule) || self.schedule.matches('{CRON_PATTERN}')",
                       lambda m: m.schedule is None or _CRON.fullmatch(m.schedule) is not None),
    )

    schedule: str | None = Field(
        default=None,
        max_length=256,
        description="Cron schedule (5 fields, UTC) for a fresh run of the whole search.",
    )
    on_drift: DriftRetrain | None = None
    max_retrains_per_day: int = Field(
        default=4, ge=1, le=RETRAIN_HISTORY, description="At most this many retrains in any 24 hours."
    )


class ExperimentSpec(ApiModel):
    model: DnsLabel = Field(description="Model family that registered versions belong to.")
    dataset: Dataset
    estimator: ImportPath
    params: FreeFormObject = Field(default_factory=dict, description="Fixed hyperparameters.")
    steps: PipelineSteps = Field(default_factory=list)
    search: Search = Field(default_factory=Search)
    objective: Objective = Field(default_factory=Objective)
    secondary_objectives: list[Objective] = Field(
        default_factory=list,
        max_length=3,
        description="More objectives to trade off against spec.objective (multi-objective search): "
        "status.paretoFront lists the trials no other trial beats on every objective, and the registered "
        "version is the Pareto-optimal trial with the best spec.objective among those within every limit.",
    )
    metrics: list[MetricName] | None = Field(default=None, description="Metrics to compute (default: all for the task).")
    cross_validation: CrossValidation | None = None
    validation: Validation = Field(default_factory=Validation)
    register_policy: Literal["registerBest", "registerAll", "none"] = Field(
        default="registerBest",
        description="Register the best trial (default), every succeeded trial, or nothing.",
    )
    image: ImageRef = DEFAULT_RUNTIME_IMAGE
    resources: ResourceRequirements | None = None
    artifacts: ArtifactLocation = Field(default_factory=ArtifactLocation)
    active_deadline_seconds: int = Field(default=3600, ge=1, le=MAX_ACTIVE_DEADLINE_SECONDS)
    backoff_limit: int = Field(default=0, ge=0, le=10)
    onnx: bool = Field(default=True, description="Also export an ONNX form when it is exact.")
    retrain: Retrain | None = None


class TrialCounts(StatusModel):
    total: int = 0
    pending: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0


class TrialSummary(StatusModel):
    name: str
    phase: str | None = None
    objective_value: float | None = None
    params: FreeFormObject = Field(default_factory=dict)
    metrics: Metrics = Field(default_factory=dict)


class RetrainRecord(StatusModel):
    name: str = Field(description="The Experiment the retrain created.")
    time: str
    reason: str = ""


class ExperimentStatus(StatusModel):
    phase: Literal["Pending", "Running", "Succeeded", "Failed"] = "Pending"
    observed_generation: int | None = None
    trials: TrialCounts = Field(default_factory=TrialCounts)
    best_trial: TrialSummary | None = None
    best_objective_value: float | None = None
    leaderboard: list[TrialSummary] = Field(default_factory=list, max_length=LEADERBOARD_SIZE)
    pareto_front: list[TrialSummary] | None = Field(
        default=None,
        max_length=PARETO_SIZE,
        description="With spec.secondaryObjectives: the succeeded trials no other trial beats on every "
        "objective, the preferred first.",
    )
    model_version: str | None = Field(default=None, description="The ModelVersion it registered.")
    registered_versions: list[str] = Field(default_factory=list)
    start_time: str | None = None
    completion_time: str | None = None
    last_retrain_time: str | None = None
    next_retrain_time: str | None = Field(default=None, description="When spec.retrain.schedule fires next.")
    retrain_count: int | None = Field(default=None, ge=0, description="Retrains started so far.")
    retrains: list[RetrainRecord] | None = Field(
        default=None, max_length=RETRAIN_HISTORY, description="The latest retrains, oldest first."
    )
    retrain_message: str | None = Field(
        default=None,
        description="Why a due retrain waits (one still running, the daily cap), or why drift cannot trigger one.",
    )
    message: str | None = None
    conditions: list[Condition] = Field(default_factory=list)


class Experiment(Kind):
    cross_field_rules = (DNS_LABEL_NAME,)
    kind: ClassVar[str] = "Experiment"
    plural: ClassVar[str] = "experiments"
    singular: ClassVar[str] = "experiment"
    short_names: ClassVar[tuple[str, ...]] = ("exp",)
    printer_columns: ClassVar[tuple[dict, ...]] = (
        {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Trials", "type": "integer", "jsonPath": ".status.trials.total"},
        {"name": "Succeeded", "type": "integer", "jsonPath": ".status.trials.succeeded"},
        {"name": "Metric", "type": "string", "jsonPath": ".spec.objective.metric"},
        {"name": "Best", "type": "number", "jsonPath": ".status.bestObjectiveValue"},
        {"name": "Version", "type": "string", "jsonPath": ".status.modelVersion"},
        ready_column(),
        age_column(),
    )

    spec: ExperimentSpec
    status: ExperimentStatus | None = None
