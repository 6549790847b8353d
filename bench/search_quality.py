"""Search quality: does bayesian search (optuna's TPE, see mlops_operator.search.bayesian)
find better hyperparameters than random search for the same budget?

Three scikit-learn tuning problems, each with at least three parameters, a budget of 30
trials and several seeds. Each trial is proposed by the operator's own `propose` (the
function the Experiment reconciler calls) and scored by 3-fold cross-validation on a
small dataset, so the whole benchmark runs in a few minutes on one shared core. Prints the
median (and worst) best objective per algorithm and problem, the proposal times (inside
the runs, and at 200 completed trials), and ends with
`bayesian beats random on K of N problems`.

    .venv/bin/python bench/search_quality.py [--seeds 7] [--budget 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# One BLAS thread: a kernel fit's spinning worker threads would otherwise be timed as the
# next proposal's cost on a small shared machine.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402
from sklearn.datasets import load_diabetes, load_digits, make_friedman1  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.kernel_ridge import KernelRidge  # noqa: E402
from sklearn.model_selection import KFold, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import SVC, SVR  # noqa: E402

from mlops_operator.api.experiment import Search  # noqa: E402
from mlops_operator.search import propose  # noqa: E402


@dataclass(frozen=True)
class Problem:
    name: str
    metric: str
    space: dict[str, Any]
    build: Callable[[dict[str, Any]], Any]
    data: tuple[np.ndarray, np.ndarray]


def _digits() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    rows = np.random.default_rng(0).choice(len(X), 600, replace=False)
    return X[rows] / 16.0, y[rows]


def _friedman() -> tuple[np.ndarray, np.ndarray]:
    return make_friedman1(n_samples=400, noise=1.0, random_state=0)


PROBLEMS = [
    Problem(
        "svc/digits (600 rows)", "accuracy",
        {"C": {"min": 0.01, "max": 1000, "distribution": "logUniform"},
         "gamma": {"min": 1e-5, "max": 1.0, "distribution": "logUniform"},
         "kernel": {"values": ["rbf", "poly", "sigmoid"]},
         "degree": {"type": "int", "min": 2, "max": 5}},
        lambda p: SVC(**p),
        _digits(),
    ),
    Problem(
        "svr/diabetes", "r2",
        {"C": {"min": 0.1, "max": 10000, "distribution": "logUniform"},
         "gamma": {"min": 1e-4, "max": 10.0, "distribution": "logUniform"},
         "epsilon": {"min": 0.01, "max": 100.0, "distribution": "logUniform"}},
        lambda p: make_pipeline(StandardScaler(), SVR(**p)),
        load_diabetes(return_X_y=True),
    ),
    Problem(
        "kernel-ridge/friedman1", "r2",
        {"alpha": {"min": 1e-4, "max": 10.0, "distribution": "logUniform"},
         "gamma": {"min": 1e-3, "max": 10.0, "distribution": "logUniform"},
         "kernel": {"values": ["rbf", "laplacian", "poly"]},
         "degree": {"type": "int", "min": 2, "max": 5}},
        lambda p: make_pipeline(StandardScaler(), KernelRidge(**p)),
        _friedman(),
    ),
]

FOLDS = KFold(n_splits=3, shuffle=True, random_state=0)


def score(problem: Problem, params: dict[str, Any]) -> float:
    X, y = problem.data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return float(cross_val_score(problem.build(params), X, y, cv=FOLDS, scoring=problem.metric).mean())


def run(problem: Problem, algorithm: str, seed: int, budget: int, cache: dict) -> tuple[float, list[float]]:
    """Best objective of one search, and the time of each proposal (seconds)."""
    search = Search.model_validate({"algorithm": algorithm, "maxTrials": budget, "parallelism": 1,
                                    "seed": seed, "space": problem.space})
    history: list[tuple[dict[str, Any], float | None]] = []
    times = []
    for index in range(1, budget + 1):
        started = time.perf_counter()
        params = propose(search, history, index)
        times.append(time.perf_counter() - started)
        key = repr(sorted(params.items()))
        if key not in cache:  # random and bayesian often start at the same points
            cache[key] = score(problem, params)
        history.append((params, cache[key]))
    return max(v for _, v in history if v is not None), times


def proposal_times_at(problem: Problem, completed: int, repeats: int = 5) -> tuple[float, float]:
    """Median seconds of one bayesian proposal with `completed` scored trials: warm (the
    reconciler's case: the previous proposal's study is cached and one trial has completed
    since) and cold (the first proposal after an operator restart builds the study)."""
    from mlops_operator.search import bayesian

    search = Search.model_validate({"algorithm": "bayesian", "maxTrials": completed + 2 * repeats,
                                    "parallelism": 1, "seed": 0, "space": problem.space})
    rng = np.random.default_rng(1)
    random_search = search.model_copy(update={"algorithm": "random"})
    history: list[tuple[dict[str, Any], float | None]] = []
    for index in range(1, completed + 1):
        history.append((propose(random_search, history, index), float(rng.random())))
    warm, cold = [], []
    for k in range(repeats):
        bayesian.clear_cache()
        started = time.perf_counter()
        propose(search, history, len(history) + 1)
        cold.append(time.perf_counter() - started)
        history.append((propose(random_search, history, len(history) + 1), float(rng.random())))
        started = time.perf_counter()
        propose(search, history, len(history) + 1)
        warm.append(time.perf_counter() - started)
    return statistics.median(warm), statistics.median(cold)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=7)
    parser.add_argument("--budget", type=int, default=30)
    args = parser.parse_args(argv)
    if args.seeds < 5 or args.budget < 1:
        parser.error("at least 5 seeds and a positive budget")
    wins = 0
    proposal_times_at(PROBLEMS[0], 12, repeats=1)  # import optuna before anything is timed
    print(f"budget {args.budget} trials, seeds 0..{args.seeds - 1}, objective: 3-fold CV score (maximised)")
    print(f"{'problem':24} {'algorithm':10} {'median best':>12} {'worst best':>11} {'proposal ms (mean/max)':>24}")
    for problem in PROBLEMS:
        cache: dict = {}
        medians = {}
        for algorithm in ("random", "bayesian"):
            bests, times = [], []
            for seed in range(args.seeds):
                best, proposal_times = run(problem, algorithm, seed, args.budget, cache)
                bests.append(best)
                times += proposal_times
            medians[algorithm] = statistics.median(bests)
            print(f"{problem.name:24} {algorithm:10} {medians[algorithm]:12.4f} {min(bests):11.4f} "
                  f"{1000 * statistics.mean(times):11.1f} / {1000 * max(times):8.1f}")
        wins += medians["bayesian"] > medians["random"]
        sys.stdout.flush()
    warm, cold = proposal_times_at(PROBLEMS[0], 200)
    print(f"bayesian proposal at 200 completed trials ({PROBLEMS[0].name} space, median of 5): "
          f"{1000 * warm:.1f} ms in the reconciler, {1000 * cold:.1f} ms for the first one after a restart")
    print(f"bayesian beats random on {wins} of {len(PROBLEMS)} problems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
