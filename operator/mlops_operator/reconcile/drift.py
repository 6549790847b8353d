"""The champion's drift as an InferenceService status: pure decisions, no I/O.

The model server computes per-feature drift of its recent inputs against the training
baseline every `spec.drift.interval` and exports it as the gauges
`mlops_feature_drift_psi{model,version,feature}` and `mlops_feature_drift_ks{...}`. The
controller reads them (at most once per interval: `read_due`) through the metrics reader and
hands the samples here:

- `features_from_samples`: the champion's features, the worst pod per feature (each pod
  measures its own window; one drifting replica is drift), highest PSI first;
- `reading`: the new `DriftStatus` (None when there are no gauges yet: no traffic), with
  `since` kept from the previous reading while the PSI stays above the threshold. A feature
  drifts when its PSI is above the threshold *and* its chi-square p-value (gauge
  `mlops_feature_drift_p_value`) is below `falseAlarmRate / features`: PSI alone on a small
  window of many features is mostly noise (runtime/mlops_runtime/drift.py);
- `next_drift`: what status.drift becomes (a reading of another version than the champion
  is dropped: after a promotion the old champion's drift says nothing);
- `drift_condition` / `drift_events`: the `Drifted` condition and the Event when it turns True.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from ..api.common import parse_duration
from ..api.conditions import (
    DRIFTED,
    REASON_DRIFT_DETECTED,
    REASON_DRIFT_NOT_MEASURED,
    REASON_NO_DRIFT,
    Condition,
    ConditionStatus,
    find_condition,
    rfc3339,
)
from ..api.inference_service import DRIFT_FEATURES, Drift, DriftStatus, FeatureDrift
from .plan import Event

PSI_METRIC = "mlops_feature_drift_psi"
KS_METRIC = "mlops_feature_drift_ks"
P_VALUE_METRIC = "mlops_feature_drift_p_value"
DAY_SECONDS = 86400.0


class DriftSample(Protocol):
    """One gauge sample (metrics_reader.Sample has this shape)."""

    name: str
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class GaugeSample:
    name: str
    labels: Mapping[str, str]
    value: float


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def read_due(spec: Drift, previous: DriftStatus | None, champion: str | None, now: datetime,
             last_attempt: datetime | None = None) -> bool:
    """Whether the controller should read the gauges now: drift watched, a champion serving,
    and `spec.drift.interval` passed since the last reading (stored in status, so a restart
    keeps the pace) or, before any reading exists, since the last attempt."""
    if not spec.enabled or champion is None:
        return False
    interval = parse_duration(spec.interval)
    if previous is not None and previous.version == champion:
        last = parse_time(previous.time)
        if last_attempt is not None and last_attempt > last:
            last = last_attempt
    else:
        last = last_attempt
    return last is None or now < last or now - last >= interval


def features_from_samples(samples: Iterable[DriftSample], model: str, version: str) -> list[FeatureDrift]:
    """The drift gauges of `model`/`version`, worst pod per feature (highest score, lowest
    p-value), highest PSI first."""
    scores: dict[str, dict[str, float]] = {PSI_METRIC: {}, KS_METRIC: {}, P_VALUE_METRIC: {}}
    for sample in samples:
        if sample.name not in scores:
            continue
        labels = sample.labels
        feature = labels.get("feature")
        if not feature or labels.get("model") != model or labels.get("version") != version:
            continue
        if sample.value != sample.value:  # NaN: nothing measured for this feature
            continue
        into = scores[sample.name]
        worst = min if sample.name == P_VALUE_METRIC else max
        into[feature] = worst(into.get(feature, sample.value), sample.value)
    psi, ks, p = scores[PSI_METRIC], scores[KS_METRIC], scores[P_VALUE_METRIC]
    names = sorted(set(psi) | set(ks), key=lambda n: (-psi.get(n, -1.0), n))
    return [FeatureDrift(name=n, psi=psi.get(n), ks=ks.get(n), p_value=p.get(n)) for n in names]


def adjusted_p_value(features: list[FeatureDrift], threshold: float) -> float | None:
    """The smallest p-value among the features whose PSI is above the threshold, times the
    number of features scored (Bonferroni); None when no such feature has a p-value (none is
    above the threshold, or an older server exports none: then the threshold alone decides)."""
    scored = [f for f in features if f.psi is not None]
    tested = [f.p_value for f in scored if f.psi > threshold and f.p_value is not None]  # type: ignore[operator]
    return min(1.0, min(tested) * len(scored)) if tested else None


def reading(features: list[FeatureDrift], version: str, threshold: float, previous: DriftStatus | None,
            now: datetime, false_alarm_rate: float = 0.01, interval: str = "1m") -> DriftStatus | None:
    """The status of one reading; None when no feature has a PSI yet."""
    scored = [f for f in features if f.psi is not None]
    if not scored:
        return None

    def drifting(f: FeatureDrift) -> bool:
        return f.psi > threshold and (f.p_value is None or f.p_value * len(scored) < false_alarm_rate)  # type: ignore[operator]

    significant = [f for f in scored if drifting(f)]
    drifted = bool(significant)
    worst = significant[0] if significant else scored[0]
    held = previous is not None and previous.version == version and previous.drifted
    since = None
    if drifted:
        since = previous.since if held and previous.since else rfc3339(now)  # type: ignore[union-attr]
    consecutive = (previous.consecutive + 1 if held else 1) if drifted else 0  # type: ignore[union-attr]
    return DriftStatus(time=rfc3339(now), version=version, max_psi=float(scored[0].psi),  # type: ignore[arg-type]
                       feature=worst.name, features=features[:DRIFT_FEATURES], threshold=threshold,
                       drifted=drifted, p_value=adjusted_p_value(scored, threshold), consecutive=consecutive,
                       feature_count=len(scored),
                       readings_per_day=DAY_SECONDS / max(1.0, parse_duration(interval).total_seconds()),
                       since=since)


def next_drift(previous: DriftStatus | None, new: DriftStatus | None, champion: str | None) -> DriftStatus | None:
    """status.drift after this pass: the new reading, else the previous one while it still
    describes the champion."""
    if new is not None and new.version == champion:
        return new
    if previous is not None and previous.version == champion:
        return previous
    return None


def drift_condition(drift: DriftStatus | None, had_condition: bool, champion: str | None,
                    enabled: bool = True) -> tuple[str, ConditionStatus, str, str] | None:
    """The Drifted condition, or None to leave it out (never measured)."""
    if drift is None:
        if not had_condition:
            return None
        why = f"no drift reading of {champion or 'a champion'} yet" if enabled else "spec.drift.enabled is false"
        return (DRIFTED, "Unknown", REASON_DRIFT_NOT_MEASURED, why)
    if drift.drifted:
        return (DRIFTED, "True", REASON_DRIFT_DETECTED, describe(drift))
    if drift.p_value is not None:
        return (DRIFTED, "False", REASON_NO_DRIFT,
                f"{drift.version}: max PSI {drift.max_psi:.3g} ({drift.feature}) above {drift.threshold:g} but not "
                f"significant (p={drift.p_value:.2g} over {drift.feature_count} features): sampling noise")
    return (DRIFTED, "False", REASON_NO_DRIFT,
            f"{drift.version}: max PSI {drift.max_psi:.3g} ({drift.feature}) within {drift.threshold:g}")


def describe(drift: DriftStatus) -> str:
    worst = next((f for f in drift.features if f.name == drift.feature), None)
    psi = worst.psi if worst is not None and worst.psi is not None else drift.max_psi
    significance = f", p={drift.p_value:.2g} over {drift.feature_count} features" if drift.p_value is not None else ""
    return f"{drift.version}: feature {drift.feature} PSI {psi:.3g} > {drift.threshold:g}{significance} since {drift.since}"


def drift_events(old: list[Condition], new: list[Condition]) -> tuple[Event, ...]:
    """A Warning when Drifted turns True (once per episode)."""
    after = find_condition(new, DRIFTED)
    before = find_condition(old, DRIFTED)
    if after is not None and after.status == "True" and (before is None or before.status != "True"):
        return (Event(REASON_DRIFT_DETECTED, after.message, "Warning"),)
    return ()
