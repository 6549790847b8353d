"""The data contract of a model family: the schema a dataset must keep, and the checks a
training run makes against it before it fits anything.

Every run describes its dataset (`compute_schema`: columns, kinds, ranges, categories,
missing-value rates) in the `dataSchema` section of its `baseline.json`. The operator
passes a later run of the family the baseline URI of the family's first Validated version
(the contract) and of its champion (the reference distribution) in the training config,
under `dataContract`. `check_dataset` compares the dataset with both and returns the
findings; `spec.validation.data` (the config's `validation.data`) says which checks fail
the run and which only warn. docs/validation.md describes the checks for users.

The checks (names as in `validation.data.checks`):
  missingColumn   a contract column is absent
  newColumn       a column the contract does not know
  typeChange      a column changed kind (numeric <-> categorical); int <-> float is not a change
  outOfRange      more than `maxOutOfRangeFraction` of a numeric column's values fall outside
                  the contract's [min, max] widened by `rangeTolerance` of its span
  unseenCategory  more than `maxUnseenCategoryFraction` of a categorical column's values are
                  categories the contract never saw
  missingRate     a column's missing-value rate exceeds the contract's by more than
                  `maxMissingRateIncrease`
  nonFinite       infinities in a numeric feature, or non-finite values in a numeric target
                  (runs without a contract too)
  drift           PSI of a feature against the champion's training distribution above
                  `maxPsi` (the drift module's `psi`/`categorical_psi`)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import drift
from .config_fields import flag, invalid, number, section
from .errors import UserError

NUMERIC = "numeric"
CATEGORICAL = "categorical"
# A categorical column with more distinct values than this keeps only the count: its
# categories are not part of the contract (an id-like column), so unseenCategory skips it.
MAX_CATEGORIES = 1000
FAIL, WARN, IGNORE = "fail", "warn", "ignore"
ACTIONS = (FAIL, WARN, IGNORE)
CHECKS = ("missingColumn", "newColumn", "typeChange", "outOfRange", "unseenCategory",
          "missingRate", "nonFinite", "drift")
# Defaults of `validation.data`; the operator's `DataValidation` model has the same ones
# (tests/unit/test_validation_defaults.py keeps them equal).
DEFAULT_ACTIONS = {
    "missingColumn": FAIL, "newColumn": WARN, "typeChange": FAIL, "outOfRange": FAIL,
    "unseenCategory": FAIL, "missingRate": FAIL, "nonFinite": FAIL, "drift": WARN,
}
DEFAULT_LIMITS = {
    "rangeTolerance": 0.1,
    "maxOutOfRangeFraction": 0.01,
    "maxUnseenCategoryFraction": 0.0,
    "maxMissingRateIncrease": 0.05,
    "maxPsi": 0.25,
}
REASON = "DataValidationFailed"
REPORT_NAME = "data_report.json"


# -- policy ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataPolicy:
    enabled: bool = True
    actions: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ACTIONS))
    range_tolerance: float = DEFAULT_LIMITS["rangeTolerance"]
    max_out_of_range_fraction: float = DEFAULT_LIMITS["maxOutOfRangeFraction"]
    max_unseen_category_fraction: float = DEFAULT_LIMITS["maxUnseenCategoryFraction"]
    max_missing_rate_increase: float = DEFAULT_LIMITS["maxMissingRateIncrease"]
    max_psi: float = DEFAULT_LIMITS["maxPsi"]


def parse_policy(doc: Any) -> DataPolicy:
    """`validation.data` of the config; every error names the field."""
    where = "validation.data"
    doc = section(doc, where)
    actions = dict(DEFAULT_ACTIONS)
    for name, action in section(doc.get("checks"), f"{where}.checks").items():
        if name not in CHECKS:
            raise invalid(f"{where}.checks.{name}", f"no such check; the checks are {', '.join(CHECKS)}")
        if action not in ACTIONS:
            raise invalid(f"{where}.checks.{name}", f"must be one of {', '.join(ACTIONS)}, got {action!r}")
        actions[name] = action

    def limit(key: str, high: float) -> float:
        return number(doc, key, where, DEFAULT_LIMITS[key], 0.0, high)

    return DataPolicy(
        enabled=flag(doc, "enabled", where), actions=actions,
        range_tolerance=limit("rangeTolerance", 1e6),
        max_out_of_range_fraction=limit("maxOutOfRangeFraction", 1.0),
        max_unseen_category_fraction=limit("maxUnseenCategoryFraction", 1.0),
        max_missing_rate_increase=limit("maxMissingRateIncrease", 1.0),
        max_psi=limit("maxPsi", 1e6),
    )


@dataclass(frozen=True)
class ContractRef:
    """A baseline.json the operator names: the ModelVersion it belongs to and its URI."""

    version: str
    uri: str


def parse_contract(doc: Any) -> tuple[ContractRef | None, ContractRef | None]:
    """(schema, reference) from the config's `dataContract`; both optional."""
    if doc is None:
        return None, None
    if not isinstance(doc, dict):
        raise UserError("InvalidConfig", "config field dataContract: must be an object with schema and reference")
    refs = []
    for key in ("schema", "reference"):
        ref = doc.get(key)
        if ref is None:
            refs.append(None)
            continue
        if not (isinstance(ref, dict) and isinstance(ref.get("uri"), str) and ref["uri"].startswith("s3://")
                and isinstance(ref.get("version"), str)):
            raise UserError("InvalidConfig", f"config field dataContract.{key}: must be "
                            "{\"version\": \"<model>-v<N>\", \"uri\": \"s3://.../baseline.json\"}")
        refs.append(ContractRef(ref["version"], ref["uri"]))
    return refs[0], refs[1]


# -- the schema --------------------------------------------------------------------------


@dataclass(frozen=True)
class NumericStats:
    missing: float  # fraction of rows
    infinite: int
    low: float | None  # of the finite values
    high: float | None


def numeric_stats(matrix: np.ndarray) -> tuple[np.ndarray, list[NumericStats]]:
    """(the matrix with infinities as NaN, per column stats), in a few passes over all
    columns at once: per-column numpy calls would cost more than the checks."""
    import warnings

    rows = matrix.shape[0]
    infinite = np.isinf(matrix)
    finite = np.where(infinite, np.nan, matrix)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column has no min
        lows, highs = np.nanmin(finite, axis=0), np.nanmax(finite, axis=0)
    missing = np.isnan(matrix).sum(axis=0) / rows if rows else np.zeros(matrix.shape[1])
    stats = [NumericStats(float(m), int(i), None if math.isnan(lo) else float(lo), None if math.isnan(hi) else float(hi))
             for m, i, lo, hi in zip(missing, infinite.sum(axis=0), lows, highs)] if rows else \
        [NumericStats(0.0, 0, None, None) for _ in range(matrix.shape[1])]
    return finite, stats


@dataclass(frozen=True)
class Columns:
    """A dataset's columns as the checks read them: the numeric ones converted to float once,
    as views of one matrix, with their stats."""

    names: tuple[str, ...]
    numbers: Mapping[str, np.ndarray]  # numeric columns, NaN where missing or infinite
    stats: Mapping[str, NumericStats]
    texts: Mapping[str, Any]  # categorical columns, pandas Series
    dtypes: Mapping[str, str]

    def is_numeric(self, name: str) -> bool:
        return name in self.numbers


def columns_of(X: Any, numeric: list[str]) -> Columns:
    numeric_set = set(numeric)
    in_order = [name for name in X.columns if name in numeric_set]
    frame = X if len(in_order) == X.shape[1] else X[in_order]  # no copy of an all-numeric frame
    matrix = frame.to_numpy(dtype=np.float64, na_value=np.nan) if in_order else np.empty((len(X), 0))
    finite, stats = numeric_stats(matrix)
    return Columns(
        names=tuple(X.columns),
        numbers={name: finite[:, j] for j, name in enumerate(in_order)},
        stats=dict(zip(in_order, stats, strict=True)),
        texts={name: X[name] for name in X.columns if name not in numeric_set},
        dtypes={name: str(dtype) for name, dtype in X.dtypes.items()},
    )


def _numeric_schema(name: str, stats: NumericStats, dtype: str) -> dict[str, Any]:
    return {"name": name, "kind": NUMERIC, "dtype": dtype, "missingFraction": stats.missing,
            "min": stats.low, "max": stats.high}


def _categorical_schema(name: str, values: Any) -> dict[str, Any]:
    total = len(values)
    categories = values.dropna().unique()
    column: dict[str, Any] = {"name": name, "kind": CATEGORICAL, "dtype": str(values.dtype),
                              "missingFraction": float(values.isna().sum()) / total if total else 0.0,
                              "distinct": int(len(categories))}
    if len(categories) <= MAX_CATEGORIES:
        column["categories"] = sorted(str(c) for c in categories)
    return column


def compute_schema(X: Any, y: Any, numeric: list[str], target: str, task: str,
                   columns: Columns | None = None) -> dict[str, Any]:
    """The `dataSchema` section of baseline.json: every feature column and the target, over
    the whole dataset (before the split, as the next run's check sees its dataset)."""
    columns = columns or columns_of(X, numeric)
    features = [_numeric_schema(name, columns.stats[name], columns.dtypes[name]) if columns.is_numeric(name)
                else _categorical_schema(name, columns.texts[name]) for name in columns.names]
    if task == "regression" or y.dtype.kind in "biuf":
        _, (stats,) = numeric_stats(y.to_numpy(dtype=np.float64, na_value=np.nan).reshape(-1, 1))
        target_schema = _numeric_schema(target, stats, str(y.dtype))
    else:
        target_schema = _categorical_schema(target, y)
    return {"rows": int(len(X)), "columns": features, "target": target_schema}


# -- the checks --------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    check: str
    column: str
    message: str
    severity: str  # fail | warn
    value: float | None = None
    limit: float | None = None

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"check": self.check, "column": self.column, "severity": self.severity,
                               "message": self.message}
        if self.value is not None:
            doc["value"] = _round(self.value)
        if self.limit is not None:
            doc["limit"] = _round(self.limit)
        return doc


def _round(value: float) -> float | None:
    return round(float(value), 6) if math.isfinite(value) else None


@dataclass(frozen=True)
class DataReport:
    findings: tuple[Finding, ...]
    schema: ContractRef | None
    reference: ContractRef | None
    columns_checked: int
    psi: Mapping[str, float] = field(default_factory=dict)
    enabled: bool = True

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == FAIL]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARN]

    @property
    def passed(self) -> bool:
        return not self.failures

    def failure_message(self) -> str:
        """The TrainingRun's message: every failing column named, grouped by check."""
        against = f" against the data contract of {self.schema.version}" if self.schema else ""
        message = (f"the dataset failed validation{against}, nothing was fitted: "
                   + "; ".join(f.message for f in self.failures))
        if self.warnings:  # a renamed column is a missing one (fails) plus a new one (warns)
            message += "; warnings: " + "; ".join(f.message for f in self.warnings)
        return message

    def summary(self) -> dict[str, Any]:
        """What goes into the run's summary and the ModelVersion (a few hundred bytes)."""
        summary: dict[str, Any] = {
            "passed": self.passed,
            "failures": len(self.failures),
            "warnings": len(self.warnings),
            "columnsChecked": self.columns_checked,
        }
        if not self.enabled:
            summary["disabled"] = True
        if self.schema:
            summary["contract"] = self.schema.version
        if self.reference:
            summary["reference"] = self.reference.version
        if self.psi:
            worst = max(self.psi, key=lambda k: self.psi[k])
            summary["maxPsi"] = {"feature": worst, "value": _round(self.psi[worst])}
        problems = self.failures + self.warnings
        if problems:
            summary["problems"] = [f"{f.check}:{f.column}" for f in problems[:10]]
        return summary

    def document(self) -> dict[str, Any]:
        """`data_report.json`."""
        return {
            **self.summary(),
            "contractUri": self.schema.uri if self.schema else None,
            "referenceUri": self.reference.uri if self.reference else None,
            "findings": [f.document() for f in self.findings],
            "psi": {k: _round(v) for k, v in self.psi.items()},
        }


def _finding(policy: DataPolicy, check: str, column: str, message: str,
             value: float | None = None, limit: float | None = None) -> Finding | None:
    action = policy.actions.get(check, DEFAULT_ACTIONS[check])
    if action == IGNORE:
        return None
    return Finding(check, column, message, action, value, limit)


def check_non_finite(columns: Columns, y: Any, target: str, policy: DataPolicy) -> list[Finding | None]:
    out: list[Finding | None] = []
    for name, stats in columns.stats.items():
        count = stats.infinite
        if count:
            out.append(_finding(policy, "nonFinite", name, f"column {name!r} holds {count} infinite value"
                                f"{'s' if count > 1 else ''}; replace them or leave the cell empty", count, 0))
    if y.dtype.kind in "biuf":
        array = y.to_numpy(dtype=np.float64, na_value=np.nan)
        count = int((~np.isfinite(array)).sum())
        if count:
            out.append(_finding(policy, "nonFinite", target, f"target {target!r} holds {count} non-finite "
                                f"value{'s' if count > 1 else ''} (inf or NaN)", count, 0))
    return out


def check_column(name: str, columns: Columns, expected: Mapping[str, Any], policy: DataPolicy,
                 version: str) -> list[Finding | None]:
    """One column present in both the dataset and the contract."""
    numeric = columns.is_numeric(name)
    kind = NUMERIC if numeric else CATEGORICAL
    if kind != expected.get("kind"):
        return [_finding(policy, "typeChange", name, f"column {name!r} is {kind} ({columns.dtypes[name]}) but "
                         f"{expected.get('kind')} ({expected.get('dtype')}) in {version}")]
    out: list[Finding | None] = []
    if numeric:
        stats = columns.stats[name]
        missing = stats.missing
    else:
        texts = columns.texts[name]
        absent_mask = texts.isna()
        missing = float(absent_mask.mean()) if len(texts) else 0.0
    allowed = float(expected.get("missingFraction") or 0.0) + policy.max_missing_rate_increase
    if missing > allowed + 1e-12:
        out.append(_finding(policy, "missingRate", name, f"column {name!r} is {missing:.1%} missing, "
                            f"above {allowed:.1%} ({expected.get('missingFraction', 0.0):.1%} in {version} "
                            f"+ {policy.max_missing_rate_increase:.1%})", missing, allowed))
    if numeric and expected.get("min") is not None and expected.get("max") is not None and stats.low is not None:
        low, high = float(expected["min"]), float(expected["max"])
        slack = policy.range_tolerance * (high - low)
        finite = columns.numbers[name]  # NaN compares false: missing values are not outside
        outside = int(np.count_nonzero((finite < low - slack) | (finite > high + slack)))
        present = len(finite) - round(stats.missing * len(finite))
        fraction = outside / present if present else 0.0
        if outside and fraction > policy.max_out_of_range_fraction:
            out.append(_finding(policy, "outOfRange", name,
                                f"column {name!r} has {fraction:.1%} of values outside [{low:.4g}, {high:.4g}] "
                                f"(seen {stats.low:.4g} to {stats.high:.4g}; {version}'s range "
                                f"+ {policy.range_tolerance:g} of its span allowed)",
                                fraction, policy.max_out_of_range_fraction))
    if not numeric and expected.get("categories") is not None:
        present = texts[~absent_mask].astype(str)
        unseen_mask = ~present.isin(set(expected["categories"]))
        fraction = float(unseen_mask.mean()) if len(present) else 0.0
        if unseen_mask.any() and fraction > policy.max_unseen_category_fraction:
            unseen = sorted(present[unseen_mask].unique())
            shown = ", ".join(repr(c) for c in unseen[:5]) + (" ..." if len(unseen) > 5 else "")
            out.append(_finding(policy, "unseenCategory", name,
                                f"column {name!r} has categories {version} never saw: {shown} "
                                f"({fraction:.1%} of rows)", fraction, policy.max_unseen_category_fraction))
    return out


def check_schema(columns: Columns, schema: Mapping[str, Any], policy: DataPolicy, version: str) -> list[Finding | None]:
    expected = {c["name"]: c for c in schema.get("columns") or ()}
    out: list[Finding | None] = []
    out += [_finding(policy, "missingColumn", name, f"column {name!r} of {version} is missing")
            for name in expected if name not in columns.dtypes]
    out += [_finding(policy, "newColumn", name, f"column {name!r} is not in {version}'s schema")
            for name in columns.names if name not in expected]
    for name in columns.names:
        if name in expected:
            out += check_column(name, columns, expected[name], policy, version)
    return out


def feature_psi(columns: Columns, reference: Mapping[str, Any]) -> dict[str, float]:
    """PSI per feature against a champion's baseline.json (the drift module's functions);
    a feature whose kind changed is left to the schema check."""
    scores = {}
    for feature in reference.get("features") or ():
        name = feature.get("name")
        if name not in columns.dtypes:
            continue
        categorical = feature.get("kind", NUMERIC) == CATEGORICAL
        if categorical == columns.is_numeric(name):
            continue
        if categorical:
            value = drift.categorical_psi(feature, columns.texts[name].to_numpy(dtype=object))
        else:
            value = drift.psi(feature, columns.numbers[name])
        if math.isfinite(value):
            scores[name] = value
    return scores


def check_dataset(
    X: Any, y: Any, numeric: list[str], target: str, policy: DataPolicy,
    schema: Mapping[str, Any] | None = None, schema_ref: ContractRef | None = None,
    reference: Mapping[str, Any] | None = None, reference_ref: ContractRef | None = None,
    columns: Columns | None = None,
) -> DataReport:
    """Every check at once: a report names every problem, not only the first."""
    if not policy.enabled:
        return DataReport((), schema_ref, reference_ref, 0, enabled=False)
    columns = columns or columns_of(X, numeric)
    found = check_non_finite(columns, y, target, policy)
    if schema is not None:
        found += check_schema(columns, schema, policy, schema_ref.version if schema_ref else "the contract")
    psi: dict[str, float] = {}
    if reference is not None:
        psi = feature_psi(columns, reference)
        version = reference_ref.version if reference_ref else "the champion"
        for name, value in psi.items():
            if value > policy.max_psi:
                found.append(_finding(policy, "drift", name, f"column {name!r} drifted from {version}'s "
                                      f"training data: PSI {value:.3f} > {policy.max_psi:g}", value, policy.max_psi))
    findings = tuple(f for f in found if f is not None)
    return DataReport(findings, schema_ref, reference_ref, len(columns.names), psi)


def load_baseline(store: Any, ref: ContractRef) -> dict[str, Any]:
    """A baseline.json the contract names; a missing one fails the run (a contract that
    cannot be read is not skipped silently)."""
    import json

    from .store import ArtifactNotFound

    try:
        document = json.loads(store.get_bytes(ref.uri))
    except ArtifactNotFound:
        raise UserError(REASON, f"the data contract {ref.uri} of {ref.version} does not exist; restore it, or "
                        "set spec.validation.data.enabled: false to train without the contract") from None
    except ValueError:
        raise UserError(REASON, f"the data contract {ref.uri} of {ref.version} is not valid JSON") from None
    if not isinstance(document, dict):
        raise UserError(REASON, f"the data contract {ref.uri} of {ref.version} is not a baseline document")
    return document


def schema_of(baseline: Mapping[str, Any], ref: ContractRef) -> dict[str, Any]:
    schema = baseline.get("dataSchema")
    if not isinstance(schema, dict):
        raise UserError(REASON, f"{ref.version}'s baseline {ref.uri} has no dataSchema (trained by an older "
                        "runtime); set spec.validation.data.enabled: false, or retrain it")
    return schema
