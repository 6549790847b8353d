"""The trainer's three checks, as train.py calls them: the data contract before the fit,
permutation importance and slice metrics after it. The config's `validation` (data,
slices, importance) and `dataContract` are parsed here; the work is in `data_contract`,
`importance` and `slices`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from . import data_contract, importance, slices
from .config_fields import section
from .errors import UserError


@dataclass(frozen=True)
class ValidationConfig:
    data: data_contract.DataPolicy = field(default_factory=data_contract.DataPolicy)
    schema: data_contract.ContractRef | None = None
    reference: data_contract.ContractRef | None = None
    slices: tuple[slices.SliceSpec, ...] = ()
    importance: importance.ImportanceConfig = field(default_factory=importance.ImportanceConfig)


def parse_validation(validation: Any, contract: Any) -> ValidationConfig:
    """The config's `validation` and `dataContract`; the operator's gates (`validation.gates`,
    `compareWithChampionOf`) are the ModelVersion's business and ignored here."""
    validation = section(validation, "validation")
    schema, reference = data_contract.parse_contract(contract)
    return ValidationConfig(
        data=data_contract.parse_policy(validation.get("data")),
        schema=schema,
        reference=reference,
        slices=tuple(slices.parse_slices(validation.get("slices"))),
        importance=importance.parse_config(validation.get("importance")),
    )


def load_contract(config: ValidationConfig, store: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the contract's data schema, the reference baseline) from S3; one read when both are
    the same version's (a family whose first version is its champion)."""
    if not config.data.enabled:
        return None, None
    read: dict[str, dict[str, Any]] = {}

    def baseline(ref: data_contract.ContractRef) -> dict[str, Any]:
        if ref.uri not in read:
            read[ref.uri] = data_contract.load_baseline(store, ref)
        return read[ref.uri]

    schema = data_contract.schema_of(baseline(config.schema), config.schema) if config.schema else None
    return schema, (baseline(config.reference) if config.reference else None)


def validate_dataset(config: ValidationConfig, X: Any, y: Any, numeric: list[str], target: str, task: str,
                     contract: tuple[dict[str, Any] | None, dict[str, Any] | None]
                     ) -> tuple[data_contract.DataReport, dict[str, Any]]:
    """(report, this dataset's schema), before anything is fitted; `contract` is what
    `load_contract` read."""
    columns = data_contract.columns_of(X, numeric)
    schema_doc, reference_doc = contract
    report = data_contract.check_dataset(X, y, numeric, target, config.data, schema_doc, config.schema,
                                         reference_doc, config.reference, columns)
    return report, data_contract.compute_schema(X, y, numeric, target, task, columns)


def enforce(report: data_contract.DataReport, store: Any, output: str) -> None:
    """A failed report goes to S3 where the model would have gone, and fails the run with
    reason DataValidationFailed: no fit starts."""
    if report.passed:
        return
    from .store import join_uri

    store.put_bytes(join_uri(output, data_contract.REPORT_NAME),
                    json.dumps(report.document(), allow_nan=False).encode(), "application/json")
    raise UserError(data_contract.REASON, report.failure_message())


def check_slices(config: ValidationConfig, columns: list[str], numeric: list[str], metric_names: list[str]) -> None:
    slices.check_specs(config.slices, columns, numeric, metric_names)


@dataclass(frozen=True)
class Explanation:
    importance: dict[str, Any] | None
    slices: list[dict[str, Any]]

    def documents(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.importance is not None:
            out[importance.REPORT_NAME] = self.importance
        if self.slices:
            out[slices.REPORT_NAME] = {"slices": self.slices}
        return out

    def summary(self, top_k: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.importance is not None:
            out["topFeatures"] = importance.top_features(self.importance, top_k)
        if self.slices:
            out["slices"] = slices.summary(self.slices)
        return out


def explain(config: ValidationConfig, model: Any, X_test: Any, y_test: Any, task: str, seed: int,
            metric_names: list[str], reference: tuple[Any, Any | None] | None, train_rows: int,
            lap: Any = lambda name: None) -> Explanation:
    """Importance and slices of the fitted model on the held-out split. `reference` is
    (predictions, probabilities) on X_test when the caller has them."""
    document = None
    if config.importance.enabled:
        document = importance.compute_importance(model, X_test, y_test, task, seed, config.importance, train_rows)
        lap("importance")
    entries: list[dict[str, Any]] = []
    if config.slices:
        if reference is None:
            from .model_io import sklearn_reference

            reference = sklearn_reference(model, X_test)
        entries = slices.compute_slices(config.slices, X_test, y_test, reference[0], reference[1], model, task,
                                        metric_names)
        lap("slices")
    return Explanation(document, entries)

