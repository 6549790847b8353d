"""Bayesian search: optuna's tree-structured Parzen estimator (TPE, multivariate) driven
through its ask-and-tell interface.

A proposal depends on nothing but its inputs: an in-memory study holding the recorded
trials (their params, as the TrainingRuns hold them, and their objective values, in
trial-index order) and a sampler seeded by (spec.search.seed, trial index). The same inputs
give the same trial, so a restarted operator proposes exactly what it would have. (A cache
keeps recent studies so the next proposal only adds the new trials, and recorded trials
skip optuna's deep copy; neither changes anything but the cost.)

Why TPE: on the benchmark (bench/search_quality.py) it beat random search where the former
Gaussian-process proposals did not, and it costs a few ms per proposal at 200 trials where
the GP cost seconds (optuna's own GP sampler needs torch; CMA-ES needs the `cmaes` package
and handles no categories).

Each dimension maps to one optuna distribution: values -> categorical over their indices
(any JSON value can be a choice), a stepped range -> an int over the step index, an int range
-> an int (log-scaled for logUniform), a float range -> a float (log-scaled for logUniform).
A recorded trial whose params lie outside the current space (the spec changed) is left out.
"""

from __future__ import annotations

import copy
import functools
import math
import threading
from datetime import UTC, datetime
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .random_search import STREAM_TPE
from .space import Dimension, same_value

# (params, objective value(s) or None): one float, or one per objective when there are several.
History = Sequence[tuple[Mapping[str, Any], float | tuple[float, ...] | None]]


def _distribution(dim: Dimension):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    p = dim.parameter
    if p.values is not None:
        return CategoricalDistribution(tuple(range(len(p.values))))
    lo, hi = float(p.min), float(p.max)  # type: ignore[arg-type]
    log = p.distribution == "logUniform"
    if p.step is not None and not log:
        return IntDistribution(0, (dim.levels or 1) - 1)
    if p.is_int:
        return IntDistribution(int(math.ceil(lo)), max(int(math.ceil(lo)), int(math.floor(hi))), log=log)
    return FloatDistribution(lo, hi, log=log)


def _to_optuna(dim: Dimension, value: Any) -> Any | None:
    """A recorded value in the distribution's terms; None when it is not in the space."""
    p = dim.parameter
    if p.values is not None:
        return next((i for i, v in enumerate(p.values) if same_value(v, value)), None)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    lo, hi = float(p.min), float(p.max)  # type: ignore[arg-type]
    if not lo - 1e-12 <= value <= hi + 1e-12:
        return None
    if p.step is not None and p.distribution != "logUniform":
        return int(round((value - lo) / p.step))
    if p.is_int:
        return int(round(value))
    return min(max(float(value), lo), hi)


def _from_optuna(dim: Dimension, value: Any) -> Any:
    p = dim.parameter
    if p.values is not None:
        return p.values[int(value)]
    if p.step is not None and p.distribution != "logUniform":
        return dim.level(int(value))
    return dim.snap(float(value))  # ints rounded, a log range's step applied


def sampler_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index, STREAM_TPE]).generate_state(1)[0])


def tpe_point(dims: Sequence[Dimension], history: History, maximize: bool | Sequence[bool], seed: int,
              index: int) -> dict[str, Any]:
    """Propose trial `index` from the scored trials in `history`. `maximize` is one goal, or
    one per objective (multi-objective TPE; each scored trial then has a tuple of values)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    goals = (maximize,) if isinstance(maximize, bool) else tuple(maximize)
    distributions = {dim.name: _distribution(dim) for dim in dims}
    recorded: list[tuple[tuple[Any, ...], tuple[float, ...]]] = []
    for params, value in history:
        values = (value,) if isinstance(value, (int, float)) else value
        if values is None or len(values) != len(goals) or not all(math.isfinite(v) for v in values):
            continue
        converted = tuple(_to_optuna(dim, params.get(dim.name)) for dim in dims)
        if any(v is None for v in converted):
            continue
        recorded.append((converted, tuple(float(v) for v in values)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate TPE is marked experimental
        sampler = optuna.samplers.TPESampler(seed=sampler_seed(seed, index), multivariate=True,
                                             n_startup_trials=0)
        with _LOCK:
            study = _study_of(distributions, tuple("maximize" if g else "minimize" for g in goals), recorded)
            study.sampler = sampler
            asked = study.ask(distributions)
            # The asked trial stays in the cached study as failed: TPE learns nothing from it.
            study.tell(asked, state=optuna.trial.TrialState.FAIL)
    return {dim.name: _from_optuna(dim, asked.params[dim.name]) for dim in dims}


# Studies of recent proposals, so that the next proposal only adds the trials completed
# since (adding a trial deep-copies it: rebuilding 200 trials costs more than 50 ms). A
# cached study gives exactly what a fresh one gives: same completed trials in the same
# order, failed ones ignored by TPE, and a sampler seeded by the trial index
# (tests/unit/test_search.py compares the two).
_STUDIES: OrderedDict[tuple[str, tuple[str, ...], str], tuple[Any, list]] = OrderedDict()
_CACHED_STUDIES = 16
_LOCK = threading.Lock()
# Recorded trials carry a fixed time: TPE does not read it, and a proposal must not depend on the clock.
_RECORDED_AT = datetime(2000, 1, 1, tzinfo=UTC)


def _study_of(distributions: dict[str, Any], directions: tuple[str, ...],
              recorded: list[tuple[tuple[Any, ...], tuple[float, ...]]]):
    import optuna

    key = (repr(sorted(distributions.items())), directions, repr(recorded[:1]))
    study, known = _STUDIES.pop(key, (None, []))
    if study is None or known != recorded[: len(known)]:
        study, known = optuna.create_study(directions=list(directions)), []
    names = list(distributions)
    study.add_trials([_recorded_trial(dict(zip(names, params)), distributions, values)
                      for params, values in recorded[len(known):]])
    _STUDIES[key] = (study, list(recorded))
    while len(_STUDIES) > _CACHED_STUDIES:
        _STUDIES.popitem(last=False)
    return study


@functools.cache
def _recorded_trial_type() -> type:
    """FrozenTrial that the storage copies shallowly. `Study.add_trial` validates a trial,
    then the storage deep-copies it, which was half of a proposal's cost at 200 trials; the
    copy shares the params and distributions instead, which nothing changes once a trial is
    complete."""
    from optuna.trial import FrozenTrial

    class RecordedTrial(FrozenTrial):
        def __deepcopy__(self, memo: dict[int, Any]) -> RecordedTrial:
            return copy.copy(self)

    return RecordedTrial


def _recorded_trial(params: dict[str, Any], distributions: dict[str, Any], values: tuple[float, ...]):
    from optuna.trial import TrialState

    return _recorded_trial_type()(
        number=-1, state=TrialState.COMPLETE, value=None, values=list(values), datetime_start=_RECORDED_AT,
        datetime_complete=_RECORDED_AT, params=params, distributions=distributions, user_attrs={},
        system_attrs={}, intermediate_values={}, trial_id=-1)


def clear_cache() -> None:
    with _LOCK:
        _STUDIES.clear()
