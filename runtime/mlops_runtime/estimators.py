"""Estimators and the preprocessing steps before them, by import path from one allow-list,
with parameters checked before fitting, built into one scikit-learn Pipeline that takes raw
records: the saved model is the whole pipeline.

    steps: [{name: scaler, estimator: sklearn.preprocessing.StandardScaler, params: {...}},
            {name: impute, estimator: sklearn.impute.SimpleImputer, columns: [age, income]}]

Steps with `columns` apply to those columns only (one ColumnTransformer branch; consecutive
steps with the same columns chain); string columns no step claims are one-hot encoded, as
without steps. Steps without `columns` then apply in order to everything, then the estimator.
Parameters address a step as `<step>__<param>` (`scaler__with_mean`); the estimator's own
take no prefix or its lower-cased class name, as `make_pipeline` names it (`svc__C`).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError

DEFAULT_ALLOWED = ("sklearn.",)
COLUMNS_STEP = "preprocess"   # the ColumnTransformer's name in the pipeline
MAX_STEPS = 16


def is_allowed(path: str, allowed: Iterable[str]) -> bool:
    """An entry ending in "." allows a module prefix; any other entry one exact path."""
    return any(path.startswith(entry) if entry.endswith(".") else path == entry for entry in allowed)


def _resolve_class(path: str, allowed: Iterable[str], what: str) -> type:
    """The class at `path`, if the allow-list admits it (checked before importing)."""
    allowed = tuple(allowed)
    module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute or not all(part.isidentifier() for part in path.split(".")):
        raise UserError("UnknownEstimator", f"{what} {path!r} is not an import path like sklearn.linear_model.Ridge")
    if not is_allowed(path, allowed):
        raise UserError(
            "EstimatorNotAllowed",
            f"{what} {path!r} is not in the allow-list {list(allowed)}; "
            "use a scikit-learn class or ask the operator's administrator to extend allowedEstimators",
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise UserError("UnknownEstimator", f"{what} {path!r}: module {module_name!r} cannot be imported") from None
    cls = getattr(module, attribute, None)
    if cls is None:
        public = [name for name in dir(module) if not name.startswith("_")]
        hint = difflib.get_close_matches(attribute, public, n=3)
        raise UserError(
            "UnknownEstimator",
            f"{what} {path!r}: {module_name} has no {attribute!r}"
            + (f"; did you mean {', '.join(module_name + '.' + h for h in hint)}?" if hint else ""),
        )
    if not isinstance(cls, type) or not hasattr(cls, "fit") or not hasattr(cls, "get_params"):
        raise UserError("UnknownEstimator", f"{what} {path!r} is not a scikit-learn estimator class")
    try:
        cls()
    except TypeError as error:
        raise UserError("UnknownEstimator", f"{what} {path!r} cannot be built without arguments: {error}"
                        + ("; declare its parts as steps instead (spec.steps)" if "steps" in str(error) else "")
                        ) from None
    return cls


def resolve_estimator(path: str, allowed: Iterable[str] = DEFAULT_ALLOWED) -> type:
    """The estimator class at `path`, if the allow-list admits it (checked before importing)."""
    from sklearn.base import is_classifier, is_regressor

    estimator = _resolve_class(path, allowed, "estimator")
    probe = estimator()
    if not (is_classifier(probe) or is_regressor(probe)):
        raise UserError("UnknownEstimator", f"{path!r} is neither a classifier nor a regressor"
                        + ("; put transformers in steps" if hasattr(probe, "transform") else ""))
    return estimator


def resolve_step(path: str, allowed: Iterable[str] = DEFAULT_ALLOWED) -> type:
    """A preprocessing step's class: from the same allow-list, and a transformer."""
    step = _resolve_class(path, allowed, "step")
    if not hasattr(step, "transform"):
        raise UserError("UnknownEstimator", f"step {path!r} is not a transformer (it has no transform); "
                        "only the last part of a model, spec.estimator, predicts")
    return step


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


def _instantiate(cls: type, params: Mapping[str, Any], seed: int, path: str) -> Any:
    check_params(cls, params, path)
    arguments = dict(params)
    if "random_state" in cls().get_params(deep=False) and "random_state" not in arguments:
        arguments["random_state"] = seed
    try:
        return cls(**arguments)
    except TypeError as error:
        raise UserError("InvalidParameter", f"{path}: {error}") from None


def build_estimator(path: str, params: Mapping[str, Any], seed: int, allowed: Iterable[str] = DEFAULT_ALLOWED) -> Any:
    return _instantiate(resolve_estimator(path, allowed), params, seed, path)


# -- pipeline steps --------------------------------------------------------------------------


@dataclass(frozen=True)
class StepSpec:
    name: str
    estimator: str
    params: Mapping[str, Any] = field(default_factory=dict)
    columns: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """As the config gave it (for lineage.json)."""
        doc: dict[str, Any] = {"name": self.name, "estimator": self.estimator, "params": dict(self.params)}
        if self.columns is not None:
            doc["columns"] = list(self.columns)
        return doc


@dataclass(frozen=True)
class Step:
    spec: StepSpec
    transformer: Any


def _step_name_problem(name: Any) -> str | None:
    if not isinstance(name, str) or not name.isidentifier() or "__" in name or name.startswith("_"):
        return "must be an identifier without '__' (it prefixes the step's parameters: <name>__<param>)"
    if name == COLUMNS_STEP:
        return f"{COLUMNS_STEP!r} is the name of the per-column stage; choose another"
    return None


def parse_steps(doc: Any) -> tuple[StepSpec, ...]:
    """The `steps` of a training config; every error names steps[i] and the field."""
    if doc is None:
        return ()
    if not isinstance(doc, list) or len(doc) > MAX_STEPS:
        raise UserError("InvalidConfig", f"config field steps: must be a list of at most {MAX_STEPS} steps")
    specs: list[StepSpec] = []
    for i, step in enumerate(doc):
        where = f"config field steps[{i}]"
        if not isinstance(step, dict):
            raise UserError("InvalidConfig", f"{where}: must be an object with name, estimator, params, columns")
        unknown = sorted(set(step) - {"name", "estimator", "params", "columns"})
        if unknown:
            raise UserError("InvalidConfig", f"{where}: unknown field(s) {unknown}")
        problem = _step_name_problem(step.get("name"))
        if problem:
            raise UserError("InvalidConfig", f"{where}.name: {problem}")
        if any(s.name == step["name"] for s in specs):
            raise UserError("InvalidConfig", f"{where}.name: {step['name']!r} names two steps")
        if not isinstance(step.get("estimator"), str) or not step["estimator"]:
            raise UserError("InvalidConfig", f"{where}.estimator: required, an import path such as "
                                             "sklearn.preprocessing.StandardScaler")
        params = step.get("params") or {}
        if not isinstance(params, dict):
            raise UserError("InvalidConfig", f"{where}.params: must be an object of the step's parameters")
        columns = step.get("columns")
        if columns is not None and (not isinstance(columns, list) or not columns
                                    or not all(isinstance(c, str) and c for c in columns)):
            raise UserError("InvalidConfig", f"{where}.columns: must be a non-empty list of column names")
        specs.append(StepSpec(step["name"], step["estimator"], dict(params),
                              tuple(columns) if columns is not None else None))
    return tuple(specs)


def estimator_step_name(path: str) -> str:
    """The estimator's name in the pipeline: its class name in lower case, as make_pipeline
    names steps (sklearn.svm.SVC -> svc)."""
    return path.rpartition(".")[2].lower()


def split_params(params: Mapping[str, Any], steps: Sequence[StepSpec], estimator: str
                 ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the estimator's parameters, each step's) from one flat mapping, such as a search
    proposal merged over fixed params: `C` and `svc__C` go to the estimator, `scaler__x` to
    the step named scaler."""
    own = estimator_step_name(estimator)
    names = [s.name for s in steps]
    if own in names:
        raise UserError("InvalidConfig", f"step name {own!r} is the estimator's ({estimator}); choose another")
    estimator_params: dict[str, Any] = {}
    step_params: dict[str, dict[str, Any]] = {name: {} for name in names}
    for key, value in params.items():
        prefix, separator, rest = key.partition("__")
        if not separator:
            estimator_params[key] = value
        elif prefix == own:
            estimator_params[rest] = value
        elif prefix in step_params:
            step_params[prefix][rest] = value
        else:
            raise UserError("UnknownParameter",
                            f"parameter {key!r}: there is no step named {prefix!r}; the steps are "
                            f"{', '.join(map(repr, [*names, own]))} (the last is the estimator)")
    return estimator_params, step_params


def build_steps(specs: Sequence[StepSpec], step_params: Mapping[str, Mapping[str, Any]], seed: int,
                allowed: Iterable[str] = DEFAULT_ALLOWED) -> list[Step]:
    """Each step built from the allow-list, its params (fixed, then searched) checked."""
    allowed = tuple(allowed)
    built = []
    for spec in specs:
        cls = resolve_step(spec.estimator, allowed)
        params = {**spec.params, **step_params.get(spec.name, {})}
        built.append(Step(spec, _instantiate(cls, params, seed, f"step {spec.name!r} ({spec.estimator})")))
    return built


def build_model(path: str, params: Mapping[str, Any], specs: Sequence[StepSpec], seed: int,
                allowed: Iterable[str] = DEFAULT_ALLOWED) -> tuple[Any, list[Step]]:
    """(the estimator, the steps before it), parameters split and checked; nothing fitted."""
    estimator_params, step_params = split_params(params, specs, path)
    return build_estimator(path, estimator_params, seed, allowed), build_steps(specs, step_params, seed, allowed)


def task_of(estimator: Any) -> str:
    from sklearn.base import is_classifier

    return "classification" if is_classifier(estimator) else "regression"


def build_pipeline(estimator: Any, categorical: list[str], steps: Sequence[Step] = (),
                   columns: Sequence[str] | None = None) -> Any:
    """The model that takes the raw records. No steps and numeric-only data: the estimator
    itself. Otherwise a Pipeline: the per-column stage (steps with `columns`, then one-hot
    encoding, unknown categories ignored, of the string columns no step claims; other columns
    pass through), the steps without `columns` in order, the estimator."""
    if not steps and not categorical:
        return estimator
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    branches = _column_branches([s for s in steps if s.spec.columns is not None], columns)
    claimed = {c for _, _, cols in branches for c in cols}
    unclaimed = [c for c in categorical if c not in claimed]
    if unclaimed:
        branches.append(("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False), unclaimed))
    stages: list[tuple[str, Any]] = []
    if branches:
        stages.append((COLUMNS_STEP, ColumnTransformer(branches, remainder="passthrough",
                                                       verbose_feature_names_out=False)))
    stages.extend((s.spec.name, s.transformer) for s in steps if s.spec.columns is None)
    stages.append((type(estimator).__name__.lower(), estimator))
    return Pipeline(stages)


def _column_branches(steps: Sequence[Step], columns: Sequence[str] | None) -> list[tuple[str, Any, list[str]]]:
    """ColumnTransformer branches: consecutive steps with the same columns chain into one."""
    from sklearn.pipeline import Pipeline

    groups: list[list[Step]] = []
    for step in steps:
        if groups and groups[-1][0].spec.columns == step.spec.columns:
            groups[-1].append(step)
        else:
            groups.append([step])
    owner: dict[str, str] = {}
    branches = []
    for group in groups:
        first = group[0].spec
        if columns is not None:
            unknown = [c for c in first.columns if c not in columns]
            if unknown:
                raise UserError("InvalidConfig", f"step {first.name!r}: unknown column(s) "
                                f"{', '.join(map(repr, unknown))}; the data has {', '.join(map(repr, columns))}")
        for column in first.columns:
            if column in owner:
                raise UserError("InvalidConfig", f"column {column!r} is in steps {owner[column]!r} and "
                                f"{first.name!r} with different column lists; steps on one column chain "
                                "only when they list the same columns, one after the other")
            owner[column] = first.name
        transformer = group[0].transformer if len(group) == 1 else \
            Pipeline([(s.spec.name, s.transformer) for s in group])
        branches.append((first.name, transformer, list(first.columns)))
    return branches
