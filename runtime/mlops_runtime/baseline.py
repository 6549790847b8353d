"""The training data's reference distribution (`baseline.json`) and the model's input
signature (`signature.json`), both plain JSON documents; the formats are in
docs/contracts.md under "Artifacts". The drift detector compares live traffic with the
baseline; the model server checks requests against the signature.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BINS = 10
# A numeric feature with at most this many distinct training values gets one bin per value
# (binary flags, counts, ratings): quantile edges would collapse them into one or two bins,
# where PSI cannot see a 0/1 feature move from 30 % to 90 % ones.
MAX_DISCRETE_VALUES = 20
SAMPLE_SIZE = 1000
QUANTILES = {"p01": 0.01, "p05": 0.05, "p25": 0.25, "p50": 0.50, "p75": 0.75, "p95": 0.95, "p99": 0.99}


def json_value(value: Any) -> Any:
    """numpy scalars -> plain JSON values (int, float, str, bool)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


# The bin edges (0 %, 10 % ... 100 %) and the reported quantiles, computed in one pass.
LEVELS = np.concatenate([np.linspace(0.0, 1.0, BINS + 1), list(QUANTILES.values())])


def binning_convention(max_discrete_values: int = MAX_DISCRETE_VALUES) -> dict[str, Any]:
    """How the features' bins were made, kept in baseline.json so that the model server and any
    offline check bin live data the same way (drift.py reads the bins, never re-derives them)."""
    return {"numeric": f"quantiles ({BINS} bins, outer bins open)", "quantileBins": BINS,
            "maxDiscreteValues": max_discrete_values,
            "discrete": "one bin per training value, plus one for values never seen in training",
            "categorical": "one bin per category, plus one for unseen categories",
            "missing": "a bin of its own when either side has missing values"}


def _bins(present: np.ndarray, cuts: np.ndarray, max_discrete_values: int) -> dict[str, Any]:
    """One bin per value for a feature with few distinct values (a constant one included),
    else the quantile bins: `values` + `fractions`, or `edges` + `fractions`."""
    values, counts = np.unique(present, return_counts=True)
    if len(values) <= max_discrete_values:
        return {"binning": "values", "values": values.tolist(), "edges": [],
                "fractions": (counts / len(present)).tolist()}
    edges = np.unique(cuts[: BINS + 1])
    counts, _ = np.histogram(present, bins=edges)
    return {"binning": "quantiles", "edges": edges.tolist(), "fractions": (counts / len(present)).tolist()}


def _summary(present: np.ndarray, cuts: np.ndarray, sample: np.ndarray, missing: float,
             max_discrete_values: int = MAX_DISCRETE_VALUES) -> dict[str, Any]:
    """The numeric summary of the non-missing values `present`, given their quantiles at
    `LEVELS` and a sorted sample."""
    return {
        "kind": "numeric",
        **_bins(present, cuts, max_discrete_values),
        "quantiles": {key: float(value) for key, value in zip(QUANTILES, cuts[BINS + 1:], strict=True)},
        "mean": float(present.mean()),
        "std": float(present.std()),
        "missingFraction": missing,
        "sample": sample.tolist(),
    }


def numeric_summary(values: np.ndarray, seed: int = 0, max_discrete_values: int = MAX_DISCRETE_VALUES) -> dict[str, Any]:
    """Histogram over 10 quantile bins, quantiles, moments and a sorted sample (for KS) of
    the non-missing values; `values` is a float array that may hold NaN."""
    total = len(values)
    present = values[~np.isnan(values)]
    missing = (total - len(present)) / total if total else 0.0
    if len(present) == 0:
        return {"kind": "numeric", "binning": "quantiles", "edges": [], "fractions": [], "quantiles": {}, "mean": None,
                "std": None, "missingFraction": missing, "sample": []}
    if len(present) > SAMPLE_SIZE:
        sample = np.random.default_rng(seed).choice(present, SAMPLE_SIZE, replace=False)
    else:
        sample = present
    return _summary(present, np.quantile(present, LEVELS), np.sort(sample), missing, max_discrete_values)


def numeric_summaries(matrix: np.ndarray, seed: int = 0,
                      max_discrete_values: int = MAX_DISCRETE_VALUES) -> list[dict[str, Any]]:
    """`numeric_summary` of each column of a 2-D float array. Columns without missing values
    go through numpy together (one quantile call, one sort; the sample is the same seeded
    rows for every column), which keeps wide datasets cheap."""
    rows, width = matrix.shape
    summaries: list[dict[str, Any] | None] = [None] * width
    complete = np.flatnonzero(~np.isnan(matrix).any(axis=0)) if rows else np.arange(0)
    if len(complete):
        block = matrix[:, complete]
        cuts = np.quantile(block, LEVELS, axis=0)
        if rows > SAMPLE_SIZE:
            block_sample = block[np.random.default_rng(seed).choice(rows, SAMPLE_SIZE, replace=False)]
        else:
            block_sample = block
        block_sample = np.sort(block_sample, axis=0)
        for j, column in enumerate(complete):
            summaries[column] = _summary(block[:, j], cuts[:, j], block_sample[:, j], 0.0, max_discrete_values)
    for column in range(width):
        if summaries[column] is None:
            summaries[column] = numeric_summary(matrix[:, column], seed, max_discrete_values)
    return [s for s in summaries if s is not None]


def categorical_summary(values: Any) -> dict[str, Any]:
    """Categories (most frequent first) with their fractions among non-missing values."""
    total = len(values)
    present = values.dropna()
    counts = present.value_counts()
    return {
        "kind": "categorical",
        "categories": [json_value(c) for c in counts.index],
        "fractions": (counts.to_numpy() / max(1, len(present))).tolist(),
        "missingFraction": (total - len(present)) / total if total else 0.0,
    }


def feature_baselines(X: Any, numeric: list[str], seed: int,
                      max_discrete_values: int = MAX_DISCRETE_VALUES) -> list[dict[str, Any]]:
    numeric_in_order = [name for name in X.columns if name in numeric]
    matrix = X[numeric_in_order].to_numpy(dtype=np.float64, na_value=np.nan)
    by_name = dict(zip(numeric_in_order, numeric_summaries(matrix, seed, max_discrete_values), strict=True))
    return [{"name": name, **(by_name[name] if name in by_name else categorical_summary(X[name]))}
            for name in X.columns]


def compute_baseline(
    X: Any, y: Any, numeric: list[str], task: str, classes: list[Any], seed: int,
    features: list[dict[str, Any]] | None = None, max_discrete_values: int = MAX_DISCRETE_VALUES,
) -> dict[str, Any]:
    """`features` may be computed ahead with `feature_baselines` (the trainer does it while
    the model fits, with the same `max_discrete_values`)."""
    if features is None:
        features = feature_baselines(X, numeric, seed, max_discrete_values)
    if task == "classification":
        counts = y.value_counts()
        fractions = {json_value(k): v / len(y) for k, v in counts.items()}
        target: dict[str, Any] = {
            "kind": "categorical",
            "classes": classes,
            "fractions": [float(fractions.get(c, 0.0)) for c in classes],
        }
    else:
        target = numeric_summary(y.to_numpy(dtype=np.float64, na_value=np.nan), seed)
    return {"rows": int(len(X)), "binning": binning_convention(max_discrete_values), "features": features,
            "target": target}


def signature_features(X: Any, numeric: list[str]) -> list[dict[str, Any]]:
    features = []
    for name in X.columns:
        feature: dict[str, Any] = {"name": name, "dtype": str(X[name].dtype),
                                   "kind": "numeric" if name in numeric else "categorical"}
        if name not in numeric:
            feature["categories"] = sorted(json_value(c) for c in X[name].dropna().unique())
        features.append(feature)
    return features


def compute_signature(
    X: Any, numeric: list[str], task: str, target: str, classes: list[Any], onnx_inputs: list[str] | None = None,
    features: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    if features is None:
        features = signature_features(X, numeric)
    signature: dict[str, Any] = {"task": task, "target": target, "features": features}
    if task == "classification":
        signature["classes"] = classes
    if onnx_inputs is not None:
        signature["onnxInputs"] = onnx_inputs
    return signature


def input_example(X: Any, rows: int = 5) -> dict[str, Any]:
    """A few raw records as the model server takes them (missing values as null)."""
    head = X.head(rows)
    records = [
        {name: (None if _is_missing(value) else json_value(value)) for name, value in record.items()}
        for record in head.to_dict(orient="records")
    ]
    return {"instances": records}


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))
