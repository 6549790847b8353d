"""InferenceService: a champion, an optional challenger rolled out as a measured canary
(or shadow), promotion and rollback on evidence, drift watch."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from .common import (
    DEFAULT_RUNTIME_IMAGE,
    DNS_1035_LABEL_PATTERN,
    ApiModel,
    ArtifactLocation,
    CrossFieldRule,
    DnsLabel,
    ImageRef,
    Duration,
    Kind,
    ResourceRequirements,
    StatusModel,
    age_column,
    at_least,
    name_rule,
    ready_column,
)
from .conditions import Condition

HISTORY_SIZE = 20
DRIFT_FEATURES = 20
APPROVAL_ANNOTATION = "mlops.seed.io/approve-step"
"""Set to the index of the step to release a manual gate (or `all` to approve every step)."""


class VersionRef(ApiModel):
    """A ModelVersion by name, or a policy that picks one: `bestValidated` (best objective
    among Validated versions) or `latestValidated` (newest Validated version)."""

    cross_field_rules = (
        CrossFieldRule("modelVersion", "give exactly one of modelVersion or policy",
                       "has(self.modelVersion) != has(self.policy)",
                       lambda m: (m.model_version is None) != (m.policy is None), field_path=False),
    )

    model_version: DnsLabel | None = None
    policy: Literal["bestValidated", "latestValidated"] | None = None


class Analysis(ApiModel):
    """Checks made at every interval of a rollout; see docs for the statistics."""

    max_error_rate: float = Field(default=0.01, ge=0.0, le=1.0, description="Challenger 5xx fraction allowed.")
    max_p95_latency_ms: float = Field(default=200.0, gt=0.0)
    max_accuracy_drop: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="How much lower the challenger's online accuracy may be before it counts as worse.",
    )
    min_sample_size: int = Field(
        default=50, ge=1, description="Requests (and feedback labels) needed before a verdict; fewer is Inconclusive."
    )
    confidence: float = Field(
        default=0.95,
        gt=0.5,
        lt=1.0,
        description="1 - the chance of rolling back a challenger as good as the champion, over the whole rollout "
        "(anytime-valid bounds: every step and interval included).",
    )
    max_latency_tail_increase: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="How much larger the challenger's share of requests slower than the champion's p95 bucket "
        "may be (0.05: up to 10% of its requests against the champion's 5%).",
    )
    failure_limit: int = Field(default=1, ge=1, description="Failed analyses before rolling back.")
    # The wire name is spelled as users know it from Flagger and the issue: prometheusURL.
    prometheus_url: str | None = Field(
        default=None,
        alias="prometheusURL",
        pattern=r"^https?://[^/\s]+",
        max_length=2048,
        description="Query this Prometheus; otherwise scrape the pods' /metrics directly.",
    )
    require_feedback: bool = Field(
        default=True,
        description="Hold each step (Inconclusive) until both versions have minSampleSize feedback labels; "
        "set false for services that get no label feedback (regression, or no feedback loop).",
    )
    min_agreement: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Shadow strategy: lowest share of mirrored requests where both versions must agree.",
    )


Step = Annotated[int, Field(ge=1, le=100)]


# Shorter rollout intervals only make analyses Inconclusive (too few requests) and load
# the operator; the tests drive canaries at 1 s.
MIN_ROLLOUT_INTERVAL = "1s"
# The model server computes drift this often: at 0 s it busy-loops (issue 18).
MIN_DRIFT_INTERVAL = "1s"


class Rollout(ApiModel):
    # `steps` has no default in the CRD (pydantic fills it in): a shadow or analysis-only
    # rollout leaves it out, so every rule on it is guarded by has().
    cross_field_rules = (
        CrossFieldRule("steps", "must end at 100",
                       "!has(self.steps) || (size(self.steps) > 0 && self.steps[size(self.steps) - 1] == 100)",
                       lambda m: bool(m.steps) and m.steps[-1] == 100),
        CrossFieldRule("steps", "must be strictly increasing",
                       "!has(self.steps) || (self.steps.isSorted() && self.steps.all(x, self.steps.exists_one(y, y == x)))",
                       lambda m: all(b > a for a, b in zip(m.steps, m.steps[1:]))),
        at_least("interval", MIN_ROLLOUT_INTERVAL),
    )

    strategy: Literal["canary", "shadow"] = "canary"
    steps: list[Step] = Field(default_factory=lambda: [10, 25, 50, 100], min_length=1, max_length=20)
    interval: Duration = "1m"
    shadow_iterations: int = Field(
        default=3, ge=1, le=100, description="Shadow strategy: analyses of mirrored traffic before the switch."
    )
    analysis: Analysis = Field(default_factory=Analysis)
    paused: bool = Field(default=False, description="Manual gate: hold at the current step.")
    manual_approval: bool = Field(
        default=False,
        description=f"Hold before each step until the annotation {APPROVAL_ANNOTATION} approves it.",
    )


class Drift(ApiModel):
    """Watch the champion's per-feature drift (PSI and KS against the training baseline)."""

    cross_field_rules = (at_least("interval", MIN_DRIFT_INTERVAL),)

    enabled: bool = True
    psi_threshold: float = Field(
        default=0.25, gt=0.0,
        description="A feature drifts when its PSI exceeds this and its change is significant (falseAlarmRate).",
    )
    false_alarm_rate: float = Field(
        default=0.01, gt=0.0, lt=1.0,
        description="Chance that a reading of unshifted traffic says Drifted: each feature's chi-square p-value "
        "must be below this divided by the number of features.",
    )
    interval: Duration = Field(
        default="1m", description="How often the server computes drift and the operator reads it."
    )
    window: int = Field(default=1000, ge=10, le=1_000_000, description="Recent input rows compared with the baseline.")


class Batching(ApiModel):
    """Adaptive batching in the model server (docs/serving.md, "Batching"): concurrent requests
    share one inference call; a request alone is never held back."""

    max_batch_rows: int = Field(
        default=256, ge=1, le=65536,
        description="Rows one inference call may take from concurrent requests; 1 turns batching off "
        "(bit-for-bit repeatable probabilities).",
    )


class InferenceServiceSpec(ApiModel):
    cross_field_rules = (
        CrossFieldRule(
            "challenger", "names the same ModelVersion as champion: a version cannot be rolled out against itself",
            "!has(self.challenger) || !has(self.challenger.modelVersion) || !has(self.champion)"
            " || !has(self.champion.modelVersion) || self.champion.modelVersion != self.challenger.modelVersion",
            lambda m: m.challenger is None or m.challenger.model_version is None
            or m.challenger.model_version != m.champion.model_version),
    )

    model: DnsLabel
    champion: VersionRef = Field(default_factory=lambda: VersionRef(policy="bestValidated"))
    challenger: VersionRef | None = None
    rollout: Rollout = Field(default_factory=Rollout)
    replicas: int = Field(default=1, ge=0, le=100)
    router_replicas: int = Field(default=1, ge=1, le=100)
    resources: ResourceRequirements | None = None
    image: ImageRef = DEFAULT_RUNTIME_IMAGE
    artifacts: ArtifactLocation = Field(default_factory=ArtifactLocation)
    drift: Drift = Field(default_factory=Drift)
    batching: Batching = Field(default_factory=Batching)
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"


class CheckResult(StatusModel):
    name: Literal["errorRate", "latencyP95", "onlineAccuracy", "agreement"]
    verdict: Literal["Pass", "Fail", "Inconclusive"]
    champion: float | None = None
    challenger: float | None = None
    threshold: float | None = None
    samples: int | None = None
    p_value: float | None = None
    message: str = ""


class AnalysisResult(StatusModel):
    time: str
    step: int
    weight: int
    verdict: Literal["Pass", "Fail", "Inconclusive"]
    checks: list[CheckResult] = Field(default_factory=list)
    message: str = ""


class TrafficSplit(StatusModel):
    champion: int = 100
    challenger: int = 0
    mode: Literal["canary", "shadow"] = "canary"


class HistoryEntry(StatusModel):
    time: str
    action: Literal["Promoted", "RolledBack", "Initial", "ManualRollback"]
    version: str
    replaced: str | None = None
    reason: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)


class VariantCounters(StatusModel):
    """Cumulative counters of one variant (champion or challenger) at one moment."""

    requests: float = 0.0
    errors: float = 0.0
    latency_buckets: dict[str, float] = Field(
        default_factory=dict, description="Cumulative latency histogram: upper bound in seconds -> count."
    )
    feedback_correct: float = 0.0
    feedback_incorrect: float = 0.0


class CounterSnapshot(StatusModel):
    """The analysis inputs read at the start of a window; an analysis judges the difference
    between a later reading and this one, so a restarted operator keeps the same window."""

    time: str
    champion: VariantCounters = Field(default_factory=VariantCounters)
    challenger: VariantCounters = Field(default_factory=VariantCounters)
    shadow_agree: float = 0.0
    shadow_disagree: float = 0.0
    shadow_error: float = 0.0
    fallbacks: float = 0.0
    missing: list[Literal["champion", "challenger"]] = Field(
        default_factory=list, description="Variants whose servers could not be read (their counters are absent)."
    )


class FeatureDrift(StatusModel):
    name: str
    psi: float | None = None
    ks: float | None = None
    p_value: float | None = Field(default=None, description="Chi-square p-value of the PSI bins (small: a real change).")


class DriftStatus(StatusModel):
    """The champion's drift as last read (the worst pod per feature)."""

    time: str = Field(description="When the gauges were read.")
    version: str = Field(description="The champion version they describe.")
    max_psi: float
    feature: str = Field(description="The feature with the highest PSI.")
    features: list[FeatureDrift] = Field(
        default_factory=list, max_length=DRIFT_FEATURES, description="Highest PSI first."
    )
    threshold: float
    drifted: bool = Field(
        description="Some feature's PSI > spec.drift.psiThreshold with a p-value below falseAlarmRate / features."
    )
    p_value: float | None = Field(
        default=None,
        description="The smallest p-value of a feature above the threshold, times the features (Bonferroni).",
    )
    feature_count: int | None = Field(default=None, ge=0, description="Features scored in the reading.")
    readings_per_day: float | None = Field(default=None, description="86400 s / spec.drift.interval.")
    consecutive: int = Field(default=0, ge=0, description="Readings in a row that found drift.")
    since: str | None = Field(default=None, description="When maxPsi first went above the threshold (while drifted).")


RolloutStage = Literal["Starting", "Analysing", "AwaitingApproval", "Promoting", "Finalizing"]


class InferenceServiceStatus(StatusModel):
    phase: Literal["Pending", "Stable", "Progressing", "Paused", "Promoted", "RolledBack", "Failed"] = "Pending"
    observed_generation: int | None = None
    champion: str | None = None
    challenger: str | None = None
    previous: str | None = None
    traffic: TrafficSplit = Field(default_factory=TrafficSplit)
    split: str | None = Field(default=None, description="Traffic split for kubectl, e.g. 90/10.")
    current_step: int | None = Field(default=None, ge=0, description="Index into spec.rollout.steps.")
    step_started_time: str | None = None
    failed_checks: int = 0
    inconclusive_checks: int = 0
    last_analysis: AnalysisResult | None = None
    history: list[HistoryEntry] = Field(default_factory=list, max_length=HISTORY_SIZE)
    rolled_back_versions: list[str] = Field(default_factory=list)
    rollout_stage: RolloutStage | None = Field(
        default=None,
        description="Where a rollout stands: Starting (challenger deploying), Analysing, AwaitingApproval, "
        "Promoting (champion Deployment updating to the winner), Finalizing (draining the challenger).",
    )
    stage_started_time: str | None = None
    rollout_started_time: str | None = None
    passed_analyses: int = Field(default=0, ge=0, description="Passed analyses in this step (shadow: in total).")
    window_baseline: CounterSnapshot | None = Field(
        default=None, description="Counters at the start of the current analysis window."
    )
    rollout_baseline: CounterSnapshot | None = Field(
        default=None, description="Counters at the start of the rollout (online accuracy is judged since then)."
    )
    draining_version: str | None = Field(
        default=None, description="Version whose challenger Deployment is kept until the routers stop using it."
    )
    last_applied_hash: str | None = None
    drift: DriftStatus | None = None
    url: str | None = None
    message: str | None = None
    conditions: list[Condition] = Field(default_factory=list)


class InferenceService(Kind):
    # Its name is the name of the Service clients call: a DNS-1035 label.
    cross_field_rules = (name_rule(DNS_1035_LABEL_PATTERN, "a DNS-1035 label (a-z, 0-9, '-'; a letter first)"),)
    kind: ClassVar[str] = "InferenceService"
    plural: ClassVar[str] = "inferenceservices"
    singular: ClassVar[str] = "inferenceservice"
    short_names: ClassVar[tuple[str, ...]] = ("isvc", "mlisvc")
    printer_columns: ClassVar[tuple[dict, ...]] = (
        {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
        {"name": "Champion", "type": "string", "jsonPath": ".status.champion"},
        {"name": "Challenger", "type": "string", "jsonPath": ".status.challenger"},
        {"name": "Split", "type": "string", "jsonPath": ".status.split"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "URL", "type": "string", "jsonPath": ".status.url", "priority": 1},
        ready_column(),
        age_column(),
    )

    spec: InferenceServiceSpec
    status: InferenceServiceStatus | None = None
