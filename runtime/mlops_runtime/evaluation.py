"""Metrics on the held-out split, and optional k-fold cross-validation on the training split."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np

from .errors import UserError

CLASSIFICATION_METRICS = (
    "accuracy", "precision_macro", "recall_macro", "f1_macro",
    "precision_weighted", "recall_weighted", "f1_weighted", "roc_auc", "log_loss",
)
REGRESSION_METRICS = ("r2", "rmse", "mae")
NEEDS_PROBABILITIES = frozenset({"roc_auc", "log_loss"})


def metrics_for(task: str) -> tuple[str, ...]:
    return CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS


def choose_metrics(task: str, wanted: Iterable[str] | None) -> list[str]:
    """The metrics to compute: all that apply when none are named; a clear error for a name
    that does not exist or does not apply to the task."""
    available = metrics_for(task)
    if wanted is None:
        return list(available)
    chosen: list[str] = []
    for name in wanted:
        if name not in available:
            other = REGRESSION_METRICS if task == "classification" else CLASSIFICATION_METRICS
            why = f"it is a {'regression' if task == 'classification' else 'classification'} metric" if name in other \
                else "no such metric"
            raise UserError(
                "InvalidMetric",
                f"metric {name!r} cannot be computed for this {task} run ({why}); "
                f"choose from {', '.join(available)}",
            )
        if name not in chosen:
            chosen.append(name)
    return chosen


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def classification_metrics(
    names: list[str], y_true: Any, y_pred: Any, proba: np.ndarray | None, classes: np.ndarray
) -> dict[str, float]:
    out: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined precision for an absent class: reported as 0
        for name in names:
            try:
                value = _classification_metric(name, y_true, y_pred, proba, classes)
            except ValueError:
                value = None  # e.g. a test label the model never saw: undefined, left out
            if value is not None and (finite := _finite(value)) is not None:
                out[name] = finite
    return out


def _classification_metric(name: str, y_true: Any, y_pred: Any, proba: np.ndarray | None,
                           classes: np.ndarray) -> float | None:
    from sklearn import metrics as m

    if name == "accuracy":
        return m.accuracy_score(y_true, y_pred)
    if name.startswith(("precision_", "recall_", "f1_")):
        kind, average = name.split("_", 1)
        scorer = {"precision": m.precision_score, "recall": m.recall_score, "f1": m.f1_score}[kind]
        return scorer(y_true, y_pred, average=average, zero_division=0)
    if name in NEEDS_PROBABILITIES and proba is not None:
        return _probability_metric(name, y_true, proba, classes)
    return None


def _probability_metric(name: str, y_true: Any, proba: np.ndarray, classes: np.ndarray) -> float | None:
    from sklearn import metrics as m

    if name == "log_loss":
        return m.log_loss(y_true, proba, labels=classes)
    present = np.unique(y_true)
    if len(present) < 2:
        return None  # ROC AUC is undefined when the test split holds one class
    try:
        if len(classes) == 2:
            return m.roc_auc_score(y_true, proba[:, 1])
        return m.roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=classes)
    except ValueError:
        return None  # e.g. a class absent from the test split in one-vs-rest


def regression_metrics(names: list[str], y_true: Any, y_pred: Any) -> dict[str, float]:
    from sklearn import metrics as m

    values = {
        "r2": lambda: m.r2_score(y_true, y_pred),
        "rmse": lambda: math.sqrt(m.mean_squared_error(y_true, y_pred)),
        "mae": lambda: m.mean_absolute_error(y_true, y_pred),
    }
    out = {}
    for name in names:
        finite = _finite(values[name]())
        if finite is not None:
            out[name] = finite
    return out


def evaluate(model: Any, task: str, names: list[str], X_test: Any, y_test: Any) -> tuple[dict[str, float], Any]:
    """(metrics on the test split, predictions) for a fitted model."""
    y_pred = model.predict(X_test)
    if task == "regression":
        return regression_metrics(names, y_test, y_pred), y_pred
    proba = None
    if NEEDS_PROBABILITIES.intersection(names) and hasattr(model, "predict_proba"):
        try:
            proba = model.predict_proba(X_test)
        except AttributeError:  # e.g. SVC(probability=False) exposes the method but refuses
            proba = None
    return classification_metrics(names, y_test, y_pred, proba, model.classes_), y_pred


def evaluate_outputs(
    model: Any, task: str, names: list[str], y_test: Any, y_pred: Any, proba: Any | None
) -> dict[str, float]:
    """The metrics of `evaluate` from outputs the caller already has."""
    if task == "regression":
        return regression_metrics(names, y_test, y_pred)
    return classification_metrics(names, y_test, y_pred, proba, model.classes_)


def sklearn_scoring(name: str, task: str, n_classes: int) -> tuple[str, float]:
    """(scikit-learn scorer name, sign to turn its value into ours)."""
    if name == "roc_auc":
        return ("roc_auc" if n_classes == 2 else "roc_auc_ovr"), 1.0
    if name == "log_loss":
        return "neg_log_loss", -1.0
    if name == "rmse":
        return "neg_root_mean_squared_error", -1.0
    if name == "mae":
        return "neg_mean_absolute_error", -1.0
    return name, 1.0


def cross_validation_metrics(
    model: Any, task: str, names: list[str], X: Any, y: Any, folds: int, seed: int
) -> dict[str, float]:
    """`cv_<metric>_mean` and `cv_<metric>_std` over k folds of the training split."""
    from sklearn.model_selection import KFold, StratifiedKFold, cross_validate

    if not 2 <= folds <= len(X):
        raise UserError("InvalidConfig", f"crossValidation.folds must be between 2 and {len(X)}, got {folds}")
    n_classes = int(np.unique(y).size) if task == "classification" else 0
    if task == "classification":
        smallest = int(np.min(np.unique(y, return_counts=True)[1]))
        splitter: Any = (StratifiedKFold(folds, shuffle=True, random_state=seed) if smallest >= folds
                         else KFold(folds, shuffle=True, random_state=seed))
    else:
        splitter = KFold(folds, shuffle=True, random_state=seed)
    usable = [n for n in names if not (n in NEEDS_PROBABILITIES and not hasattr(model, "predict_proba"))]
    scoring = {name: sklearn_scoring(name, task, n_classes)[0] for name in usable}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = cross_validate(model, X, y, cv=splitter, scoring=scoring, error_score=np.nan)
    out: dict[str, float] = {}
    for name in usable:
        sign = sklearn_scoring(name, task, n_classes)[1]
        scores = sign * np.asarray(results[f"test_{name}"], dtype=np.float64)
        if np.all(np.isfinite(scores)):
            out[f"cv_{name}_mean"] = float(scores.mean())
            out[f"cv_{name}_std"] = float(scores.std())
    return out
