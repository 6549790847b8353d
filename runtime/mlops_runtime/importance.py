"""Permutation importance on the held-out split: how much the model's score drops when one
feature's values are shuffled. Written to `importance.json`; the top features go into the
run's summary and the ModelVersion.

The numbers are those of `sklearn.inspection.permutation_importance(model, X, y,
n_repeats=R, random_state=seed)` with the estimator's default score (accuracy for a
classifier, R² for a regressor): the same seeds, the same permutations, the same means and
standard deviations (tests/runtime/test_importance.py holds them equal). What differs is the
cost: scikit-learn predicts once per feature and repeat, and for a forest of 300 trees that
per-call overhead, not the rows, is what costs. Here the permuted copies of all features are
stacked and predicted in a few large calls, so importance costs a few predictions of the
split, not features x repeats of them. The held-out rows are capped (`maxRows`, a seeded
subsample) so a large test split stays cheap too.

The cost is bounded against the fit's, deterministically (so the numbers depend only on the
data and the seed, never on the machine's speed): the permuted rows predicted in all, which
is features x rows x repeats, may add up to at most `rowBudget` times the training rows.
Past that the repeats go down (to one), then the rows. importance.json records the repeats
and rows actually used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config_fields import flag, number, section

REPORT_NAME = "importance.json"
# Defaults of `validation.importance`; the operator's `ImportanceSpec` has the same ones.
DEFAULT_REPEATS = 5
DEFAULT_MAX_ROWS = 1000
DEFAULT_TOP_K = 5
DEFAULT_ROW_BUDGET = 2.5
# Fewer held-out rows than this make permutation importance noise; the budget never goes below.
MIN_ROWS = 50
# Rows per predict call: the stacked copies are cut into batches of about this many rows.
BATCH_ROWS = 50_000


@dataclass(frozen=True)
class ImportanceConfig:
    enabled: bool = True
    repeats: int = DEFAULT_REPEATS
    max_rows: int = DEFAULT_MAX_ROWS
    top_k: int = DEFAULT_TOP_K
    row_budget: float = DEFAULT_ROW_BUDGET


def parse_config(doc: Any) -> ImportanceConfig:
    """`validation.importance` of the config; every error names the field."""
    where = "validation.importance"
    doc = section(doc, where)
    return ImportanceConfig(
        enabled=flag(doc, "enabled", where),
        repeats=number(doc, "repeats", where, DEFAULT_REPEATS, 1, 50, integer=True),
        max_rows=number(doc, "maxRows", where, DEFAULT_MAX_ROWS, 10, 100_000, integer=True),
        top_k=number(doc, "topK", where, DEFAULT_TOP_K, 1, 50, integer=True),
        row_budget=number(doc, "rowBudget", where, DEFAULT_ROW_BUDGET, 0.1, 1e6),
    )


def within_budget(features: int, rows: int, train_rows: int, config: ImportanceConfig) -> tuple[int, int]:
    """(repeats, rows) to use: as many as asked while features x rows x repeats stays within
    `row_budget` x the training rows; one repeat and fewer rows (not below MIN_ROWS) past that."""
    budget = config.row_budget * max(1, train_rows)
    rows = min(rows, config.max_rows)
    repeats = int(min(config.repeats, max(1, budget // max(1, features * rows))))
    if features * rows * repeats > budget:
        rows = max(min(MIN_ROWS, rows), int(budget // max(1, features)))
    return repeats, rows


def held_out_rows(X: Any, y: Any, max_rows: int, seed: int) -> tuple[Any, Any]:
    """At most `max_rows` rows of the held-out split, the same ones for the same seed."""
    if len(X) <= max_rows:
        return X.reset_index(drop=True), y.reset_index(drop=True)
    rows = np.sort(np.random.default_rng(seed).choice(len(X), max_rows, replace=False))
    return X.iloc[rows].reset_index(drop=True), y.iloc[rows].reset_index(drop=True)


def default_score(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The estimator's own `score`: accuracy for a classifier, R² for a regressor."""
    if task == "classification":
        return float(np.mean(y_pred == y_true))
    from sklearn.metrics import r2_score

    return float(r2_score(y_true, y_pred))


def permutation_orders(rows: int, random_seed: int, repeats: int) -> list[np.ndarray]:
    """The row order of each repeat as scikit-learn permutes a column: a RandomState from the
    same seed for every column, so one sequence serves all of them; the index is reshuffled
    in place each repeat and applied to the already permuted column, so repeat r's order is
    the composition of the first r shuffles."""
    rng = np.random.RandomState(random_seed)
    index = np.arange(rows)
    order = np.arange(rows)
    out = []
    for _ in range(repeats):
        rng.shuffle(index)
        order = order[index]
        out.append(order)
    return out


def stacked_copies(X: Any, chosen: list[str], order: np.ndarray) -> Any:
    """`len(chosen)` copies of X one under the other, copy k with column `chosen[k]` in the
    permuted `order`. A frame of one numeric dtype is built as one 2-D block (scikit-learn
    converts it without copying); mixed frames column by column, in their own dtypes."""
    import pandas as pd

    rows = len(X)
    dtypes = set(X.dtypes)
    if len(dtypes) == 1 and next(iter(dtypes)).kind in "biuf":
        values = X.to_numpy()
        block = np.tile(values, (len(chosen), 1))
        for k, name in enumerate(chosen):
            j = X.columns.get_loc(name)
            block[k * rows:(k + 1) * rows, j] = values[order, j]
        return pd.DataFrame(block, columns=X.columns, copy=False)
    columns = {}
    for name in X.columns:
        column = X[name].to_numpy()
        values = np.tile(column, len(chosen))
        if name in chosen:
            k = chosen.index(name)
            values[k * rows:(k + 1) * rows] = column[order]
        columns[name] = values
    frame = pd.DataFrame(columns)
    differing = {name: dtype for name, dtype in X.dtypes.items() if frame[name].dtype != dtype}
    return frame.astype(differing) if differing else frame


def permuted_scores(model: Any, X: Any, y: np.ndarray, task: str, random_seed: int, repeats: int) -> np.ndarray:
    """Score with each feature permuted, shape (features, repeats)."""
    names = list(X.columns)
    rows = len(X)
    per_batch = max(1, BATCH_ROWS // max(1, rows))
    scores = np.empty((len(names), repeats))
    for repeat, order in enumerate(permutation_orders(rows, random_seed, repeats)):
        for start in range(0, len(names), per_batch):
            chosen = names[start:start + per_batch]
            predictions = np.asarray(model.predict(stacked_copies(X, chosen, order)))
            for k in range(len(chosen)):
                scores[start + k, repeat] = default_score(task, y, predictions[k * rows:(k + 1) * rows])
    return scores


def compute_importance(model: Any, X_test: Any, y_test: Any, task: str, seed: int,
                       config: ImportanceConfig, train_rows: int | None = None) -> dict[str, Any]:
    """The `importance.json` document, features by decreasing mean importance. Without
    `train_rows` the budget does not apply."""
    repeats, rows = config.repeats, min(len(X_test), config.max_rows)
    if train_rows is not None:
        repeats, rows = within_budget(X_test.shape[1], rows, train_rows, config)
    X, y = held_out_rows(X_test, y_test, rows, seed)
    y_true = y.to_numpy()
    random_seed = np.random.RandomState(seed).randint(np.iinfo(np.int32).max + 1)
    baseline = default_score(task, y_true, np.asarray(model.predict(X)))
    drops = baseline - permuted_scores(model, X, y_true, task, random_seed, repeats)
    features = [
        {"feature": name, "importance": _finite(drops[j].mean()), "std": _finite(drops[j].std())}
        for j, name in enumerate(X.columns)
    ]
    features.sort(key=lambda f: (-(f["importance"] if f["importance"] is not None else -math.inf), f["feature"]))
    return {
        "method": "permutation",
        "scoring": "accuracy" if task == "classification" else "r2",
        "baselineScore": _finite(baseline),
        "repeats": repeats,
        "rows": int(len(X)),
        "heldOutRows": int(len(X_test)),
        "seed": seed,
        "features": features,
    }


def top_features(document: Mapping[str, Any], k: int) -> list[dict[str, Any]]:
    """The first `k` features with their scores, rounded for the summary and the status."""
    return [{"feature": f["feature"], "importance": round(f["importance"], 4) if f["importance"] is not None else None}
            for f in document["features"][:k]]


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
