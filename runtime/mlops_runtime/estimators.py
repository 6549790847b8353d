"""Estimators by import path, from an allow-list, with parameters checked before fitting,
wrapped in a pipeline that takes raw records (categorical columns one-hot encoded inside).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import UserError

DEFAULT_ALLOWED = ("sklearn.",)


def is_allowed(path: str, allowed: Iterable[str]) -> bool:
    """An entry ending in "." allows a module prefix; any other entry one exact path."""
    return any(path.startswith(entry) if entry.endswith(".") else path == entry for entry in allowed)


def resolve_estimator(path: str, allowed: Iterable[str] = DEFAULT_ALLOWED) -> type:
    """The estimator class at `path`, if the allow-list admits it (checked before importing)."""
    allowed = tuple(allowed)
    module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute or not all(part.isidentifier() for part in path.split(".")):
        raise UserError("UnknownEstimator", f"estimator {path!r} is not an import path like sklearn.linear_model.Ridge")
    if not is_allowed(path, allowed):
        raise UserError(
            "EstimatorNotAllowed",
            f"estimator {path!r} is not in the allow-list {list(allowed)}; "
            "use a scikit-learn estimator or ask the operator's administrator to extend allowedEstimators",
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise UserError("UnknownEstimator", f"estimator {path!r}: module {module_name!r} cannot be imported") from None
    estimator = getattr(module, attribute, None)
    if estimator is None:
        public = [name for name in dir(module) if not name.startswith("_")]
        hint = difflib.get_close_matches(attribute, public, n=3)
        raise UserError(
            "UnknownEstimator",
            f"estimator {path!r}: {module_name} has no {attribute!r}"
            + (f"; did you mean {', '.join(module_name + '.' + h for h in hint)}?" if hint else ""),
        )
    from sklearn.base import is_classifier, is_regressor

    if not isinstance(estimator, type) or not hasattr(estimator, "fit") or not hasattr(estimator, "get_params"):
        raise UserError("UnknownEstimator", f"{path!r} is not a scikit-learn estimator class")
    try:
        probe = estimator()
    except TypeError as error:
        raise UserError("UnknownEstimator", f"{path!r} cannot be built without arguments: {error}") from None
    if not (is_classifier(probe) or is_regressor(probe)):
        raise UserError("UnknownEstimator", f"{path!r} is neither a classifier nor a regressor")
    return estimator


def check_params(estimator: type, params: Mapping[str, Any], path: str) -> None:
    """Every parameter name must be one of the estimator's own (`get_params()`)."""
    valid = sorted(estimator().get_params(deep=False))
    unknown = [name for name in params if name not in valid]
    if unknown:
        hints = {name: difflib.get_close_matches(name, valid, n=1) for name in unknown}
        suggestions = "; ".join(f"{name!r} -> did you mean {h[0]!r}?" for name, h in hints.items() if h)
        raise UserError(
            "UnknownParameter",
            f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for {path}"
            + (f" ({suggestions})" if suggestions else "")
            + f"; valid parameters: {', '.join(valid)}",
        )


def check_estimator(path: str, params: Mapping[str, Any], allowed: Iterable[str] = DEFAULT_ALLOWED) -> None:
    """Every check a run makes on its estimator before any data is read (allow-list, import,
    parameter names), raising the same UserError. The operator calls it to judge an
    Experiment once, before any trial exists, so the two can never disagree. Parameters
    addressed to a pipeline step (`step__param`) are left to the run, which builds the steps."""
    own = {name: value for name, value in params.items() if "__" not in name}
    check_params(resolve_estimator(path, allowed), own, path)


def build_estimator(path: str, params: Mapping[str, Any], seed: int, allowed: Iterable[str] = DEFAULT_ALLOWED) -> Any:
    estimator = resolve_estimator(path, allowed)
    check_params(estimator, params, path)
    arguments = dict(params)
    if "random_state" in estimator().get_params(deep=False) and "random_state" not in arguments:
        arguments["random_state"] = seed
    try:
        return estimator(**arguments)
    except TypeError as error:
        raise UserError("InvalidParameter", f"{path}: {error}") from None


def task_of(estimator: Any) -> str:
    from sklearn.base import is_classifier

    return "classification" if is_classifier(estimator) else "regression"


def build_pipeline(estimator: Any, categorical: list[str]) -> Any:
    """Numeric-only data: the estimator itself. With categorical columns: one-hot encoding of
    those columns (unknown categories ignored at predict time) in front of the estimator,
    so the saved model takes the raw records."""
    if not categorical:
        return estimator
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    encode = ColumnTransformer(
        [("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical)],
        remainder="passthrough",
        verbose_feature_names_out=False,
    )
    return Pipeline([("preprocess", encode), ("model", estimator)])
