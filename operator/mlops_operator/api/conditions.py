"""Status conditions (the metav1.Condition shape) and the one function that sets them.

Condition types and what their statuses mean:

- `Ready` (every kind): True when the object does what it was asked for (Experiment
  finished and registered, TrainingRun succeeded, ModelVersion validated, InferenceService
  serving); False with a reason when it cannot; Unknown while it is still working.
- `Succeeded` (TrainingRun): True once trained, False once failed; absent before.
- `RunsComplete` (Experiment): True when no trial runs and no more will start.
- `Validated` (ModelVersion): True when every gate passed, False when one failed.
- `Available` (InferenceService): True when the champion and router are ready.
- `Progressing` (InferenceService): True during a rollout.
- `Drifted` (InferenceService): True when the champion's highest feature PSI exceeds
  spec.drift.psiThreshold, False when it does not; absent until drift was first measured.
- `Stalled` (every kind): True when the operator gave up (invalid spec, permanent error).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from .common import StatusModel

ConditionStatus = Literal["True", "False", "Unknown"]

READY = "Ready"
SUCCEEDED = "Succeeded"
RUNS_COMPLETE = "RunsComplete"
VALIDATED = "Validated"
AVAILABLE = "Available"
PROGRESSING = "Progressing"
STALLED = "Stalled"
DRIFTED = "Drifted"

# Reasons (CamelCase, shared with Events of the same transition).
REASON_INVALID_SPEC = "InvalidSpec"
REASON_PENDING = "Pending"
REASON_RUNNING = "Running"
REASON_SUCCEEDED = "Succeeded"
REASON_FAILED = "Failed"
REASON_TRIAL_STARTED = "TrialStarted"
REASON_TRIAL_SUCCEEDED = "TrialSucceeded"
REASON_TRIAL_FAILED = "TrialFailed"
REASON_MAX_FAILED_TRIALS = "MaxFailedTrialsReached"
REASON_MAX_TRIALS = "MaxTrialsReached"
REASON_EARLY_STOPPED = "EarlyStopped"
REASON_BEST_IMPROVED = "BestTrialImproved"
REASON_VERSION_REGISTERED = "VersionRegistered"
REASON_VALIDATED = "Validated"
REASON_REJECTED = "Rejected"
REASON_GATE_FAILED = "GateFailed"
REASON_ARTIFACT_MISSING = "ArtifactMissing"
REASON_JOB_CREATED = "JobCreated"
REASON_JOB_FAILED = "JobFailed"
REASON_DEADLINE_EXCEEDED = "DeadlineExceeded"
REASON_MODEL_VERSION_NOT_FOUND = "ModelVersionNotFound"
REASON_MODEL_VERSION_NOT_VALIDATED = "ModelVersionNotValidated"
REASON_DEPLOYMENTS_NOT_READY = "DeploymentsNotReady"
REASON_AVAILABLE = "Available"
REASON_ROLLOUT_STARTED = "RolloutStarted"
REASON_STEP_ADVANCED = "StepAdvanced"
REASON_ANALYSIS_PASSED = "AnalysisPassed"
REASON_ANALYSIS_FAILED = "AnalysisFailed"
REASON_ANALYSIS_INCONCLUSIVE = "AnalysisInconclusive"
REASON_PAUSED = "Paused"
REASON_PROMOTING = "Promoting"
REASON_PROMOTED = "Promoted"
REASON_ROLLED_BACK = "RolledBack"
REASON_STABLE = "Stable"
REASON_DRIFT_DETECTED = "DriftDetected"
REASON_RETRAIN_TRIGGERED = "RetrainTriggered"
REASON_RETRAIN_HELD_BACK = "RetrainHeldBack"
REASON_NO_DRIFT = "NoDrift"
REASON_DRIFT_NOT_MEASURED = "NotMeasured"


class Condition(StatusModel):
    type: str = Field(pattern=r"^[A-Z][A-Za-z0-9]*$", max_length=316)
    status: ConditionStatus
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: str = Field(description="RFC 3339 time the status last changed.")
    observed_generation: int | None = Field(default=None, ge=0)


def rfc3339(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def find_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """Upsert the condition of `type_`; keep lastTransitionTime unless the status flips.
    Other types are left as they are (we never touch conditions we do not own)."""
    old = find_condition(conditions, type_)
    changed_status = old is None or old.status != status
    new = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=rfc3339(now) if changed_status else old.last_transition_time,
        observed_generation=generation,
    )
    if old is None:
        return [*conditions, new]
    return [new if c.type == type_ else c for c in conditions]


def is_true(conditions: list[Condition], type_: str) -> bool:
    found = find_condition(conditions, type_)
    return found is not None and found.status == "True"


def is_stale(condition: Condition, generation: int | None) -> bool:
    """A condition observed for an older generation says nothing about the current spec."""
    return (
        generation is not None
        and condition.observed_generation is not None
        and condition.observed_generation < generation
    )
