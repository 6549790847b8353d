"""The operator's own Prometheus metrics (docs/contracts.md, "Metrics"; every operator row
is defined here, including the canary ones the InferenceService controller updates).

Updated by the controllers, so the kopf operator and the local mode count alike; served by
`prometheus_client.start_http_server` from the kopf startup handler."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram

RECONCILE_TOTAL = Counter(
    "mlops_reconcile_total", "Reconciles by kind and result.", ["kind", "result"]
)
RECONCILE_DURATION = Histogram(
    "mlops_reconcile_duration_seconds", "Time of one reconcile (observe, decide, apply).", ["kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
TRIALS = Gauge("mlops_trials", "Trials of an Experiment by phase.", ["namespace", "experiment", "phase"])
EXPERIMENT_INFO = Gauge("mlops_experiment_info", "1 for the Experiment's current phase.",
                        ["namespace", "experiment", "phase"])
TRAINING_RUNS_FAILED = Counter("mlops_training_runs_failed_total", "TrainingRuns that ended Failed.",
                               ["namespace", "model"])
MODEL_VERSIONS = Counter("mlops_model_versions_total", "ModelVersions validated or rejected.",
                         ["namespace", "model", "phase"])
CANARY_WEIGHT = Gauge("mlops_canary_weight", "Percent of traffic sent to the challenger.", ["namespace", "service"])
CANARY_PHASE_INFO = Gauge("mlops_canary_phase_info", "1 for the InferenceService's current phase.",
                          ["namespace", "service", "phase"])
CANARY_LAST_PROGRESS = Gauge("mlops_canary_last_progress_timestamp_seconds",
                             "Unix time the rollout last moved (step, promotion, rollback).", ["namespace", "service"])
CANARY_INTERVAL = Gauge("mlops_canary_interval_seconds", "The rollout's analysis interval.", ["namespace", "service"])
CANARY_PROMOTIONS = Counter("mlops_canary_promotions_total", "Challengers promoted.", ["namespace", "service"])
CANARY_ROLLBACKS = Counter("mlops_canary_rollbacks_total", "Challengers rolled back.", ["namespace", "service"])
ANALYSIS_VERDICTS = Counter("mlops_analysis_verdicts_total", "Canary analyses by verdict.",
                            ["namespace", "service", "verdict"])

EXPERIMENT_PHASES = ("Pending", "Running", "Succeeded", "Failed")
TRIAL_PHASES = ("Pending", "Running", "Succeeded", "Failed")


def record_reconcile(kind: str, seconds: float, ok: bool) -> None:
    RECONCILE_TOTAL.labels(kind, "success" if ok else "error").inc()
    RECONCILE_DURATION.labels(kind).observe(seconds)


def record_experiment(namespace: str, experiment: str, phase: str, trials: Mapping[str, int]) -> None:
    for name in EXPERIMENT_PHASES:
        EXPERIMENT_INFO.labels(namespace, experiment, name).set(1 if name == phase else 0)
    for name in TRIAL_PHASES:
        TRIALS.labels(namespace, experiment, name).set(trials.get(name, 0))


def forget_experiment(namespace: str, experiment: str) -> None:
    """Drop the series of a deleted Experiment."""
    for name in EXPERIMENT_PHASES:
        for gauge in (EXPERIMENT_INFO, TRIALS):
            try:
                gauge.remove(namespace, experiment, name)
            except KeyError:
                pass
