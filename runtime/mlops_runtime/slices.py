"""Metrics per slice of the held-out split: per value of a feature, or per bin of a numeric
feature cut at given edges. Every metric of the run per slice, with its row count, goes to
`slices.json`; the summary carries the one metric each slice is judged on (`metric`, default
the run's first metric), which the ModelVersion's slice gate compares between the best and
the worst slice. A slice with fewer than `minRows` rows is reported, not judged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config_fields import invalid, number, section

REPORT_NAME = "slices.json"
DEFAULT_MIN_ROWS = 30
MISSING = "(missing)"
# The summary (4096 bytes for everything) keeps the most populous values of each slice.
SUMMARY_VALUES = 12


@dataclass(frozen=True)
class SliceSpec:
    feature: str
    edges: tuple[float, ...] | None = None
    metric: str | None = None
    min_rows: int = DEFAULT_MIN_ROWS


def parse_slices(doc: Any) -> list[SliceSpec]:
    """`validation.slices` of the config; every error names the field."""
    if doc is None:
        return []
    if not isinstance(doc, list):
        raise invalid("validation.slices", "must be a list of {feature, edges}")
    specs = []
    for i, item in enumerate(doc):
        where = f"validation.slices[{i}]"
        item = section(item, where)
        if not isinstance(item.get("feature"), str) or not item["feature"]:
            raise invalid(f"{where}.feature", "required, a column name")
        edges = item.get("edges")
        if edges is not None:
            if (not isinstance(edges, list) or not edges
                    or not all(isinstance(e, (int, float)) and not isinstance(e, bool) and math.isfinite(e)
                               for e in edges)
                    or any(b <= a for a, b in zip(edges, edges[1:]))):
                raise invalid(f"{where}.edges", "must be increasing finite numbers")
            edges = tuple(float(e) for e in edges)
        metric = item.get("metric")
        if metric is not None and not isinstance(metric, str):
            raise invalid(f"{where}.metric", "must be a metric name")
        min_rows = number(item, "minRows", where, DEFAULT_MIN_ROWS, 1, 1e9, integer=True)
        specs.append(SliceSpec(item["feature"], edges, metric, min_rows))
    return specs


def check_specs(specs: Sequence[SliceSpec], columns: Sequence[str], numeric: Sequence[str],
                metric_names: Sequence[str]) -> None:
    """Before the fit: every slice names a column, edges only on numeric ones, a metric the
    run computes."""
    for i, spec in enumerate(specs):
        where = f"validation.slices[{i}]"
        if spec.feature not in columns:
            raise invalid(f"{where}.feature", f"{spec.feature!r} is not a column of the dataset; "
                          f"its columns are {list(columns)[:50]}")
        if spec.edges is not None and spec.feature not in numeric:
            raise invalid(f"{where}.edges", f"{spec.feature!r} is categorical; "
                          "edges bin a numeric feature, leave them out to slice by value")
        if spec.metric is not None and spec.metric not in metric_names:
            raise invalid(f"{where}.metric", f"{spec.metric!r} is not among the run's metrics "
                          f"({', '.join(metric_names)})")


def bin_label(low: float, high: float) -> str:
    return f"[{low:g}, {high:g})"


def slice_labels(values: Any, edges: tuple[float, ...] | None) -> np.ndarray:
    """The slice each row falls in, as text: the value itself, or its bin
    `[low, high)` with open outer bins; missing values form a slice of their own."""
    if edges is None:
        return np.array([MISSING if _missing(v) else str(v) for v in values], dtype=object)
    bounds = (-math.inf, *edges, math.inf)
    labels = np.array([bin_label(lo, hi) for lo, hi in zip(bounds, bounds[1:])], dtype=object)
    array = np.asarray(values, dtype=np.float64)
    out = labels[np.searchsorted(np.asarray(edges), array, side="right")]
    out[np.isnan(array)] = MISSING
    return out


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def compute_slices(specs: Sequence[SliceSpec], X_test: Any, y_test: Any, y_pred: Any, proba: Any | None,
                   model: Any, task: str, metric_names: list[str]) -> list[dict[str, Any]]:
    """The `slices.json` entries: per slice, every value with its rows and all metrics."""
    from .evaluation import evaluate_outputs

    y_true = np.asarray(y_test)
    predictions = np.asarray(y_pred)
    out = []
    for spec in specs:
        labels = slice_labels(X_test[spec.feature].to_numpy(), spec.edges)
        values = []
        for label in sorted(set(labels), key=lambda v: (-int(np.sum(labels == v)), v)):
            mask = labels == label
            metrics = evaluate_outputs(model, task, metric_names, y_true[mask], predictions[mask],
                                       proba[mask] if proba is not None else None)
            rows = int(mask.sum())
            values.append({"value": label, "rows": rows, "judged": rows >= spec.min_rows, "metrics": metrics})
        entry: dict[str, Any] = {"feature": spec.feature, "metric": spec.metric or metric_names[0],
                                 "minRows": spec.min_rows, "values": values}
        if spec.edges is not None:
            entry["edges"] = list(spec.edges)
        out.append(entry)
    return out


def summary(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The slices as the run's summary carries them: the judged metric only."""
    out = []
    for entry in entries:
        metric = entry["metric"]
        values = [{"value": v["value"], "rows": v["rows"], "score": _rounded(v["metrics"].get(metric))}
                  for v in entry["values"][:SUMMARY_VALUES]]
        item: dict[str, Any] = {"feature": entry["feature"], "metric": metric, "minRows": entry["minRows"],
                                "values": values}
        if len(entry["values"]) > SUMMARY_VALUES:
            item["truncated"] = len(entry["values"]) - SUMMARY_VALUES
        out.append(item)
    return out


def _rounded(value: float | None) -> float | None:
    return round(value, 6) if value is not None else None
