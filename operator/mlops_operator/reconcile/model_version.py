"""ModelVersion: an immutable record of one trained model, its validation gates, and where
it serves.

- Version numbers are monotonic per model family; `next_version` picks max + 1 and the
  wiring creates `<model>-v<N>` with the API's create-or-AlreadyExists to make sure two
  writers never get the same N (see `controllers.registry.register_model_version`).
- The gates are evaluated once, while the version is Pending: absolute thresholds and
  comparisons with the champion of an InferenceService serving the same model. The result
  (per gate, then Validated or Rejected) is part of the record.
- The spec's hash is kept in status; a later spec change is refused with Ready=False
  (reason SpecImmutable) and an Event, and the validated result stands.
- `status.role`/`servedBy` follow the InferenceServices' status: champion, challenger,
  previous, rolledBack, or retired once a former champion serves no more.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from ..api.conditions import (
    READY,
    REASON_GATE_FAILED,
    REASON_REJECTED,
    REASON_VALIDATED,
    STALLED,
    VALIDATED,
    find_condition,
    rfc3339,
)
from ..api.experiment import Experiment
from ..api.ml import (
    DataReportSummary,
    DatasetLineage,
    FeatureImportance,
    GateResult,
    ImportanceStability,
    Lineage,
    Slice,
    SliceResult,
    Validation,
    ValidationGate,
    greater_is_better,
)
from ..api.model_version import (
    REASON_SPEC_IMMUTABLE,
    Artifact,
    ModelVersion,
    ModelVersionSpec,
    ModelVersionStatus,
    Role,
    ServingRef,
)
from ..api.naming import model_version_name
from ..api.training_run import TrainingRun
from .common import (
    EXPERIMENT_LABEL,
    MODEL_LABEL,
    TRAINING_RUN_LABEL,
    Settings,
    child_labels,
    clear_stalled,
    spec_hash,
    with_conditions,
)
from .plan import Event, Plan

COMPONENT = "model-version"
NO_CHAMPION = "no champion to compare with"
_ROLE_PRIORITY: tuple[Role, ...] = ("champion", "challenger", "rolledBack", "previous")


@dataclass(frozen=True)
class ServiceFacts:
    """An InferenceService of the same model, as far as roles go."""

    name: str
    champion: str | None = None
    challenger: str | None = None
    previous: str | None = None
    rolled_back: tuple[str, ...] = ()
    past_champions: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChampionFacts:
    name: str
    service: str
    metrics: Mapping[str, float] = field(default_factory=dict)
    top_features: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelVersionObserved:
    services: tuple[ServiceFacts, ...] = ()
    champion: ChampionFacts | None = None


def service_facts(obj: Mapping[str, Any]) -> ServiceFacts:
    """Condense an InferenceService as the API serves it."""
    status = obj.get("status") or {}
    past = []
    for entry in status.get("history") or ():
        if entry.get("action") in ("Promoted", "Initial", "ManualRollback") and entry.get("version"):
            past.append(entry["version"])
        if entry.get("replaced"):
            past.append(entry["replaced"])
    return ServiceFacts(
        name=obj["metadata"]["name"],
        champion=status.get("champion"),
        challenger=status.get("challenger"),
        previous=status.get("previous"),
        rolled_back=tuple(status.get("rolledBackVersions") or ()),
        past_champions=tuple(past),
    )


def champion_service(mv: ModelVersion, services: Iterable[ServiceFacts]) -> ServiceFacts | None:
    """The InferenceService whose champion the gates compare with: the one the validation
    names, else the first (by name) serving this model with a champion other than `mv`."""
    wanted = mv.spec.validation.compare_with_champion_of
    for service in sorted(services, key=lambda s: s.name):
        if wanted is not None and service.name != wanted:
            continue
        if service.champion and service.champion != mv.metadata.name:
            return service
    return None


def next_version(existing: Iterable[int]) -> int:
    return max(existing, default=0) + 1


def evaluate_gate(gate: ValidationGate, metrics: Mapping[str, float], champion: ChampionFacts | None) -> GateResult:
    value = metrics.get(gate.metric)
    result = GateResult(metric=gate.metric, passed=False, value=value, threshold=gate.threshold,
                        champion=champion.name if champion else None)
    if value is None:
        return result.model_copy(update={"message": f"{gate.metric} is not among the version's metrics"})
    higher = gate.higher_is_better()
    problems: list[str] = []
    notes: list[str] = []
    if gate.threshold is not None:
        ok = value >= gate.threshold if higher else value <= gate.threshold
        (notes if ok else problems).append(
            f"{gate.metric}={value:.4g} {'>=' if higher else '<='} {gate.threshold:g}" if ok
            else f"{gate.metric}={value:.4g} {'below' if higher else 'above'} the threshold {gate.threshold:g}")
    compares = gate.min_absolute_change is not None or gate.min_relative_change is not None or gate.threshold is None
    champion_value = champion.metrics.get(gate.metric) if champion else None
    if compares:
        if champion is None:
            notes.append(NO_CHAMPION)
        elif champion_value is None:
            notes.append(f"champion {champion.name} has no {gate.metric}: nothing to compare with")
        else:
            improvement = value - champion_value if higher else champion_value - value
            required = max(gate.min_absolute_change or 0.0, (gate.min_relative_change or 0.0) * abs(champion_value))
            beats = improvement >= required
            text = (f"{gate.metric}={value:.4g} {'vs' if beats else 'lost against'} champion {champion.name} "
                    f"{champion_value:.4g} (improvement {improvement:+.4g}, required {required:+.4g})")
            (notes if beats else problems).append(text)
    # A failed gate says what failed first, then what passed (a threshold met does not
    # read as the reason a version lost against the champion).
    return result.model_copy(update={
        "passed": not problems,
        "champion_value": champion_value,
        "message": "; ".join(problems + notes if problems else notes),
    })


def evaluate_slice_gate(gate: Slice, recorded: Iterable[SliceResult]) -> GateResult:
    """The gap between the best and the worst slice of `gate.feature` that has at least
    `minRows` held-out rows; smaller slices are named, not judged."""
    entry = next((r for r in recorded if r.feature == gate.feature), None)
    metric = entry.metric if entry is not None else (gate.metric or "metric")
    result = GateResult(metric=f"{metric} per {gate.feature}", passed=False, threshold=gate.max_gap)
    if entry is None:
        return result.model_copy(update={"message": f"the trainer reported no slices on {gate.feature}"})
    judged = [v for v in entry.values if v.rows >= entry.min_rows and v.score is not None]
    small = [v for v in entry.values if v.rows < entry.min_rows]
    not_judged = (f"; not judged (fewer than {entry.min_rows} rows): "
                  + ", ".join(f"{v.value} (n={v.rows})" for v in small)) if small else ""
    if len(judged) < 2:
        return result.model_copy(update={"passed": True, "message": f"fewer than two slices of {gate.feature} "
                                         f"with {entry.min_rows}+ rows: nothing to compare{not_judged}"})
    ranked = sorted(judged, key=lambda v: v.score or 0.0, reverse=greater_is_better(metric))
    best, worst = ranked[0], ranked[-1]
    gap = abs((best.score or 0.0) - (worst.score or 0.0))
    passed = gate.max_gap is None or gap <= gate.max_gap
    bound = "" if gate.max_gap is None else f" {'<=' if passed else '>'} {gate.max_gap:g}"
    message = (f"worst {gate.feature}={worst.value} {metric}={worst.score:.4g} (n={worst.rows}), "
               f"best {gate.feature}={best.value} {metric}={best.score:.4g} (n={best.rows}), "
               f"gap {gap:.4g}{bound}{not_judged}")
    return result.model_copy(update={"passed": passed, "value": gap, "message": message})


def evaluate_stability_gate(stability: ImportanceStability, top: Iterable[FeatureImportance],
                            champion: ChampionFacts | None) -> GateResult:
    """The champion's top features must stay among this version's top k."""
    result = GateResult(metric="top features", passed=True, champion=champion.name if champion else None)
    if champion is None:
        return result.model_copy(update={"message": NO_CHAMPION})
    if not champion.top_features:
        return result.model_copy(update={"message": f"champion {champion.name} has no recorded importance: "
                                          "nothing to compare with"})
    wanted = champion.top_features[:stability.champion_top]
    mine = [f.feature for f in top][:stability.within_top_k]
    lost = [name for name in wanted if name not in mine]
    shown = ", ".join(mine) or "none recorded"
    if lost:
        return result.model_copy(update={"passed": False, "message": (
            f"champion {champion.name}'s top features {', '.join(lost)} are not among this version's top "
            f"{stability.within_top_k} ({shown})")})
    return result.model_copy(update={"message": f"champion {champion.name}'s top {len(wanted)} features are "
                                     f"among this version's top {stability.within_top_k}"})


def evaluate_gates(spec: ModelVersionSpec, champion: ChampionFacts | None) -> list[GateResult]:
    validation = spec.validation
    gates = [evaluate_gate(gate, spec.metrics, champion) for gate in validation.gates]
    gates += [evaluate_slice_gate(s, spec.slices or ()) for s in validation.slices or () if s.max_gap is not None]
    if validation.importance is not None and validation.importance.stability is not None:
        gates.append(evaluate_stability_gate(validation.importance.stability, spec.top_features or (), champion))
    return gates


def describe_top_features(top: Iterable[FeatureImportance]) -> str | None:
    """The status line `kubectl get mv -o wide` shows."""
    text = ", ".join(f"{f.feature}={f.importance:.3g}" if f.importance is not None else f.feature for f in top)
    return text or None


def describe_data_report(report: DataReportSummary | None) -> str | None:
    if report is None:
        return None
    if report.disabled:
        return "not checked (validation.data.enabled: false)"
    against = f" against {report.contract}" if report.contract else " (no contract yet)"
    text = f"{'passed' if report.passed else 'failed'}{against}"
    if report.warnings:
        text += f", {report.warnings} warning{'s' if report.warnings > 1 else ''}: " + ", ".join(
            p for p in report.problems)
    return text


def serving_role(name: str, services: Iterable[ServiceFacts], old_role: Role) -> tuple[Role, list[ServingRef]]:
    refs: list[ServingRef] = []
    was_champion = False
    for service in sorted(services, key=lambda s: s.name):
        role: Role | None = None
        if service.champion == name:
            role = "champion"
        elif service.challenger == name:
            role = "challenger"
        elif name in service.rolled_back:
            role = "rolledBack"
        elif service.previous == name:
            role = "previous"
        if role is not None:
            refs.append(ServingRef(service=service.name, role=role))
        was_champion = was_champion or name in service.past_champions
    if refs:
        return min((r.role for r in refs), key=_ROLE_PRIORITY.index), refs
    if old_role == "rolledBack":
        return "rolledBack", refs
    if was_champion or old_role in ("champion", "previous", "retired"):
        return "retired", refs
    return "none", refs


def reconcile(mv: ModelVersion, observed: ModelVersionObserved, now: datetime) -> Plan:
    old = mv.status or ModelVersionStatus()
    generation = mv.metadata.generation
    conditions = list(old.conditions)
    current_hash = spec_hash(mv.spec.dump())
    events: list[Event] = []
    metrics: dict[str, Any] = {}
    status = old.model_copy(update={"observed_generation": generation})

    if old.spec_hash is not None and old.spec_hash != current_hash:
        message = ("the spec changed after the version was recorded; a ModelVersion is immutable: "
                   "restore the spec or register a new version")
        previous = find_condition(conditions, STALLED)
        if previous is None or previous.reason != REASON_SPEC_IMMUTABLE or previous.status != "True":
            events.append(Event(REASON_SPEC_IMMUTABLE, message, "Warning"))
        conditions = with_conditions(conditions, [
            (READY, "False", REASON_SPEC_IMMUTABLE, message), (STALLED, "True", REASON_SPEC_IMMUTABLE, message),
        ], generation, now)
    else:
        conditions = clear_stalled(conditions, generation, now)
        status = status.model_copy(update={"spec_hash": current_hash})
        if old.phase == "Pending":
            gates = evaluate_gates(mv.spec, observed.champion)
            failed = [g for g in gates if not g.passed]
            phase = "Rejected" if failed else "Validated"
            if failed:
                message = "rejected: " + "; ".join(f"{g.metric}: {g.message}" for g in failed)
                conditions = with_conditions(conditions, [
                    (VALIDATED, "False", REASON_GATE_FAILED, message), (READY, "False", REASON_REJECTED, message),
                ], generation, now)
                events.append(Event(REASON_REJECTED, message, "Warning"))
            else:
                message = ("validated: " + "; ".join(f"{g.metric}: {g.message}" for g in gates)) if gates \
                    else "validated: no gates"
                conditions = with_conditions(conditions, [
                    (VALIDATED, "True", REASON_VALIDATED, message), (READY, "True", REASON_VALIDATED, message),
                ], generation, now)
                events.append(Event(REASON_VALIDATED, message))
            status = status.model_copy(update={"phase": phase, "gates": gates, "validated_time": rfc3339(now),
                                               "message": message,
                                               "top_features": describe_top_features(mv.spec.top_features or ()),
                                               "data_report": describe_data_report(mv.spec.data_report)})
            metrics["model_version_phase"] = phase
        else:
            ok = old.phase == "Validated"
            message = old.message or ""
            conditions = with_conditions(conditions, [
                (READY, "True" if ok else "False", REASON_VALIDATED if ok else REASON_REJECTED, message),
            ], generation, now)

    role, served_by = serving_role(mv.metadata.name, observed.services, old.role)
    status = status.model_copy(update={"role": role, "served_by": served_by, "conditions": conditions})
    return Plan(status=status.dump(), events=tuple(events), metrics=metrics)


def desired_model_version(
    run: TrainingRun, version: int, experiment: Experiment | None, settings: Settings
) -> dict[str, Any]:
    """ModelVersion `<model>-v<version>` recording the result of `run`. Not owned by the
    Experiment: the record outlives it. Raises ValueError when the run's result cannot make
    a valid record (no artifact, say), naming what is missing."""
    result = run.status
    if result is None or result.phase != "Succeeded":
        raise ValueError(f"TrainingRun {run.metadata.name} has not succeeded")
    spec = run.spec
    try:
        artifact = Artifact(
            uri=result.artifact_uri or "",
            model_uri=result.model_uri or "",
            sha256=result.sha256 or "",
            size=result.size,
            onnx_uri=result.onnx_uri,
            onnx_sha256=result.onnx_sha256,
            serving_format=result.serving_format or ("onnx" if result.onnx_uri else "skops"),
        )
    except ValidationError as error:
        raise ValueError(f"TrainingRun {run.metadata.name} cannot be registered: "
                         f"{_problems(error, 'artifact')}") from None
    try:
        mv_spec = ModelVersionSpec(
            model=spec.model,
            version=version,
            artifact=artifact,
            estimator=spec.estimator,
            params=dict(spec.params),
            metrics=dict(result.metrics),
            objective=spec.objective,
            signature=result.signature,
            lineage=Lineage(
                training_run=run.metadata.name,
                experiment=spec.experiment,
                dataset=DatasetLineage(uri=spec.dataset.uri, sha256=result.dataset_sha256),
                image=spec.image,
                code_version=settings.code_version,
                sklearn_version=result.sklearn_version,
                estimator=spec.estimator,
            ),
            validation=experiment.spec.validation if experiment is not None else (spec.validation or Validation()),
            top_features=result.top_features,
            slices=result.slices,
            data_report=result.data_report,
        )
    except ValidationError as error:
        raise ValueError(f"TrainingRun {run.metadata.name} cannot be registered: {_problems(error, 'spec')}") from None
    labels = child_labels("TrainingRun", run.metadata.name, COMPONENT, spec.model)
    labels[TRAINING_RUN_LABEL] = run.metadata.name
    labels[MODEL_LABEL] = spec.model
    if spec.experiment:
        labels[EXPERIMENT_LABEL] = spec.experiment
    return {
        "apiVersion": ModelVersion.api_version(),
        "kind": "ModelVersion",
        "metadata": {
            "name": model_version_name(spec.model, version),
            "namespace": run.metadata.namespace,
            "labels": labels,
        },
        "spec": mv_spec.dump(),
    }


def _problems(error: ValidationError, root: str) -> str:
    return "; ".join(f"{root}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
