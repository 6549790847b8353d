"""Proposals are pure: same (space, history, seed, index) -> same params; grids are full
factorials capped by maxTrials; ranges, ints, log scales, steps and categories hold."""

from __future__ import annotations

import importlib
import json
import math
import statistics
from collections import Counter

import pytest

from mlops_operator.api.experiment import Search
from mlops_operator.search import propose, search_size, trial_budget
from mlops_operator.search.random_search import draw
from mlops_operator.search.space import dimensions

NOW = __import__("datetime").datetime(2026, 3, 1, 12, 0, tzinfo=__import__("datetime").UTC)


def make_search(algorithm: str = "random", max_trials: int = 20, seed: int = 0, **space) -> Search:
    return Search.model_validate(
        {"algorithm": algorithm, "maxTrials": max_trials, "parallelism": 1, "seed": seed, "space": space}
    )


MIXED = {
    "C": {"min": 0.001, "max": 1000, "distribution": "logUniform"},
    "depth": {"type": "int", "min": 2, "max": 9},
    "alpha": {"min": 0.0, "max": 1.0, "step": 0.1},
    "kernel": {"values": ["linear", "rbf", "poly"]},
}


def check_in_space(params: dict) -> None:
    assert 0.001 <= params["C"] <= 1000 and isinstance(params["C"], float)
    assert isinstance(params["depth"], int) and 2 <= params["depth"] <= 9
    assert 0.0 <= params["alpha"] <= 1.0
    assert math.isclose(params["alpha"] * 10, round(params["alpha"] * 10), abs_tol=1e-9)
    assert params["kernel"] in ("linear", "rbf", "poly")


class TestGrid:
    def test_full_factorial_in_order(self):
        search = make_search("grid", 100, a={"values": [1, 2]}, b={"values": ["x", "y", "z"]})
        assert search_size(search) == 6
        points = [propose(search, [], i) for i in range(1, 7)]
        assert points == [
            {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"},
            {"a": 2, "b": "x"}, {"a": 2, "b": "y"}, {"a": 2, "b": "z"},
        ]

    def test_capped_by_max_trials(self):
        search = make_search("grid", 4, a={"values": [1, 2, 3]}, b={"values": [True, False]})
        assert search_size(search) == 6
        assert trial_budget(search) == 4

    def test_budget_is_grid_size_when_smaller(self):
        assert trial_budget(make_search("grid", 50, a={"values": [1, 2, 3]})) == 3

    def test_past_the_end_is_an_error(self):
        with pytest.raises(ValueError, match="past the end of the grid"):
            propose(make_search("grid", 10, a={"values": [1, 2]}), [], 3)

    def test_ranges_step_int_and_log(self):
        search = make_search(
            "grid", 1000,
            s={"min": 0, "max": 1, "step": 0.25},
            i={"type": "int", "min": 1, "max": 3},
            lg={"min": 0.01, "max": 100, "distribution": "logUniform"},
        )
        values = {name: sorted({propose(search, [], k)[name] for k in range(1, search_size(search) + 1)})
                  for name in ("s", "i", "lg")}
        assert values["s"] == [0.0, 0.25, 0.5, 0.75, 1.0]
        assert values["i"] == [1, 2, 3]
        assert values["lg"] == [0.01, 0.1, 1.0, 10.0, 100.0]
        assert search_size(search) == 5 * 3 * 5

    def test_empty_space_is_one_trial(self):
        assert search_size(make_search("grid", 5)) == 1
        assert propose(make_search("grid", 5), [], 1) == {}


class TestRandom:
    def test_reproducible_and_independent_of_objective_values(self):
        search = make_search("random", seed=3, **MIXED)
        first = [propose(search, [], i) for i in range(1, 11)]
        again = [propose(search, [({"C": 1.0}, 0.5)], i) for i in range(1, 11)]
        assert first == again
        for params in first:
            check_in_space(params)

    def test_integer_end_values_get_their_fair_share(self):
        # Rounding a uniform draw gave 2 and 5 half the share of 3 and 4 (332/640/698/330).
        search = make_search("random", seed=0, n={"type": "int", "min": 2, "max": 5})
        draws = [draw(dimensions(search.space), 0, i) ["n"] for i in range(1, 2001)]
        counts = Counter(draws)
        assert set(counts) == {2, 3, 4, 5}
        for value in (2, 3, 4, 5):  # binomial(2000, 1/4): 500 +- 4 standard deviations (77)
            assert abs(counts[value] - 500) < 77, counts

    def test_stepped_end_values_get_their_fair_share(self):
        dims = dimensions(make_search("random", a={"min": 0.0, "max": 1.0, "step": 0.5}).space)
        counts = Counter(draw(dims, 1, i)["a"] for i in range(1, 1501))
        assert all(abs(counts[v] - 500) < 80 for v in (0.0, 0.5, 1.0)), counts

    def test_log_uniform_ints_stay_in_range_and_favour_small_values(self):
        dims = dimensions(make_search("random", k={"type": "int", "min": 1, "max": 100,
                                                  "distribution": "logUniform"}).space)
        values = [draw(dims, 2, i)["k"] for i in range(1, 2001)]
        assert min(values) == 1 and max(values) == 100
        assert sum(v < 10 for v in values) > 0.4 * len(values)  # half the log range lies below 10

    @pytest.mark.parametrize("algorithm", ["random", "bayesian"])
    def test_a_finite_space_is_sampled_without_repeats_and_caps_the_budget(self, algorithm):
        space = {"a": {"values": ["x", "y", "z"]}, "b": {"type": "int", "min": 1, "max": 4}}
        search = make_search(algorithm, max_trials=50, seed=7, **space)
        assert search_size(search) == 12 and trial_budget(search) == 12
        history: list[tuple[dict, float | None]] = []
        for i in range(1, 13):
            params = propose(search, history, i)
            history.append((params, float(params["b"]) + (params["a"] == "y")))
        assert len({(p["a"], p["b"]) for p, _ in history}) == 12
        with pytest.raises(ValueError, match="every one of the 12 points"):
            propose(search, history, 13)

    def test_running_and_failed_trials_are_not_repeated(self):
        search = make_search("random", seed=3, a={"values": [1, 2]})
        first = propose(search, [], 1)
        assert propose(search, [(first, None)], 2) != first

    def test_seed_and_index_change_the_proposal(self):
        a = make_search("random", seed=1, **MIXED)
        b = make_search("random", seed=2, **MIXED)
        assert propose(a, [], 1) != propose(a, [], 2)
        assert propose(a, [], 1) != propose(b, [], 1)

    def test_log_uniform_covers_the_decades(self):
        search = make_search("random", seed=0, C={"min": 0.001, "max": 1000, "distribution": "logUniform"})
        decades = {math.floor(math.log10(propose(search, [], i)["C"])) for i in range(1, 200)}
        assert decades >= {-3, -2, -1, 0, 1, 2}

    def test_int_range_reaches_both_ends(self):
        search = make_search("random", seed=0, n={"type": "int", "min": 1, "max": 3})
        assert {propose(search, [], i)["n"] for i in range(1, 100)} == {1, 2, 3}

    def test_index_starts_at_one(self):
        with pytest.raises(ValueError):
            propose(make_search("random", **MIXED), [], 0)


def objective(params: dict) -> float:
    """A smooth function with its maximum at x = 0.7."""
    return -((params["x"] - 0.7) ** 2)


class TestBayesian:
    def run(self, seed: int, trials: int = 14) -> list[tuple[dict, float]]:
        search = make_search("bayesian", max_trials=trials, seed=seed, x={"min": 0.0, "max": 1.0})
        history: list[tuple[dict, float]] = []
        for i in range(1, trials + 1):
            params = propose(search, history, i)
            history.append((params, objective(params)))
        return history

    def test_deterministic(self):
        assert self.run(seed=5, trials=7) == self.run(seed=5, trials=7)

    def test_first_trials_are_random(self):
        search = make_search("bayesian", seed=5, x={"min": 0.0, "max": 1.0})
        random = make_search("random", seed=5, x={"min": 0.0, "max": 1.0})
        history = [({"x": 0.1}, -0.36), ({"x": 0.9}, -0.04)]
        for i in range(1, search.initial_random_trials + 1):
            assert propose(search, history, i) == propose(random, history, i)

    def test_model_finds_the_optimum_better_than_chance(self):
        history = self.run(seed=11)
        best_model = max(value for _, value in history[3:])
        best_random_start = max(value for _, value in history[:3])
        assert best_model >= best_random_start
        assert best_model > -0.01  # within 0.1 of the optimum x = 0.7

    def test_minimize_uses_the_other_end(self):
        search = make_search("bayesian", seed=0, x={"min": 0.0, "max": 1.0})
        search = search.model_copy(update={"initial_random_trials": 1})
        history = [({"x": 0.0}, 0.0), ({"x": 0.5}, 0.5), ({"x": 1.0}, 1.0)]
        assert propose(search, history, 4, maximize=True)["x"] > 0.5
        assert propose(search, history, 4, maximize=False)["x"] < 0.5

    def test_mixed_space_stays_in_space_and_avoids_repeats(self):
        search = make_search("bayesian", seed=2, **MIXED)
        history: list[tuple[dict, float]] = []
        for i in range(1, 10):
            params = propose(search, history, i)
            check_in_space(params)
            assert params not in [p for p, _ in history]
            history.append((params, -abs(math.log10(params["C"])) + (params["kernel"] == "rbf")))

    def test_the_study_cache_changes_nothing_but_the_cost(self):
        from mlops_operator.search import bayesian

        search = make_search("bayesian", max_trials=20, seed=4, **MIXED).model_copy(
            update={"initial_random_trials": 2})

        def run(clear: bool) -> list[dict]:
            history: list[tuple[dict, float | None]] = []
            for i in range(1, 16):
                if clear:
                    bayesian.clear_cache()
                params = propose(search, history, i)
                # A failed trial now and then: it must be ignored the same way in both runs.
                history.append((params, None if i % 5 == 0 else -abs(math.log10(params["C"]) - 1)))
            return [p for p, _ in history]

        assert run(clear=False) == run(clear=True)

    def test_tpe_beats_random_on_a_smooth_problem_over_seeds(self):
        space = {"x": {"min": -2.0, "max": 2.0}, "y": {"min": -2.0, "max": 2.0},
                 "k": {"values": ["a", "b", "c"]}}

        def score(p: dict) -> float:
            return -((p["x"] - 0.8) ** 2) - (p["y"] + 0.5) ** 2 - 0.3 * (p["k"] != "b")

        def best(algorithm: str, seed: int) -> float:
            search = make_search(algorithm, max_trials=30, seed=seed, **space)
            history: list[tuple[dict, float | None]] = []
            for i in range(1, 31):
                params = propose(search, history, i)
                history.append((params, score(params)))
            return max(v for _, v in history)

        seeds = range(7)
        assert statistics.median(best("bayesian", s) for s in seeds) > statistics.median(
            best("random", s) for s in seeds)


def test_a_restarted_experiment_proposes_exactly_the_same_trials():
    """Two runs of the same bayesian Experiment, trial by trial through the reconciler; the
    second restarts between passes: its status write is lost, the search modules are
    re-imported and everything it knows is read back from JSON as the API serves it."""
    from mlops_operator.api.experiment import Experiment
    from mlops_operator.reconcile import experiment as reconcile_experiment
    from mlops_operator.reconcile.experiment import ExperimentObserved, trial_facts

    spec = {"model": "iris", "dataset": {"uri": "sklearn://iris"}, "estimator": "sklearn.svm.SVC",
            "search": {"algorithm": "bayesian", "maxTrials": 12, "parallelism": 2, "seed": 9, "initialRandomTrials": 3,
                       "space": {"C": {"min": 0.01, "max": 100, "distribution": "logUniform"},
                                 "degree": {"type": "int", "min": 1, "max": 5},
                                 "kernel": {"values": ["rbf", "poly", "linear"]}}}}

    def score(params: dict) -> float:
        return -abs(math.log10(params["C"]) - 1) - 0.1 * params["degree"] + (params["kernel"] == "rbf")

    def run(restart_at: set[int]) -> list[dict]:
        runs: dict[str, dict] = {}  # name -> TrainingRun as the API holds it
        status: dict | None = None
        for pass_number in range(40):
            if pass_number in restart_at:
                importlib.reload(importlib.import_module("mlops_operator.search.bayesian"))
                importlib.reload(importlib.import_module("mlops_operator.search.random_search"))
                runs = json.loads(json.dumps(runs))
            doc = {"apiVersion": "mlops.seed.io/v1alpha1", "kind": "Experiment",
                   "metadata": {"name": "iris", "namespace": "ns", "generation": 1}, "spec": spec}
            if status is not None:
                doc["status"] = status
            exp = Experiment.model_validate(doc)
            facts = tuple(trial_facts(r) for r in runs.values())
            plan = reconcile_experiment.reconcile(exp, ExperimentObserved(trials=facts), NOW)
            for child in plan.children:
                if child["kind"] == "TrainingRun":
                    runs[child["metadata"]["name"]] = json.loads(json.dumps(child))
            if pass_number not in restart_at:
                status = plan.status
            # The oldest running trial finishes between passes.
            running = [r for r in runs.values() if "status" not in r]
            if running:
                oldest = min(running, key=lambda r: r["metadata"]["name"])
                oldest["status"] = {"phase": "Succeeded", "objectiveValue": score(oldest["spec"]["params"])}
        return [runs[name]["spec"]["params"] for name in sorted(runs)]

    plain = run(set())
    assert len(plain) == 12
    assert run({3, 7, 8, 15}) == plain


def test_tpe_proposals_respect_steps_ints_and_log_ranges():
    space = {"lr": {"min": 0.001, "max": 1.0, "distribution": "logUniform"},
             "n": {"type": "int", "min": 10, "max": 100, "step": 10},
             "k": {"type": "int", "min": 1, "max": 64, "distribution": "logUniform"},
             "f": {"min": 0.0, "max": 1.0, "step": 0.25}}
    search = make_search("bayesian", max_trials=30, seed=1, **space).model_copy(update={"initial_random_trials": 3})
    history: list[tuple[dict, float | None]] = []
    for i in range(1, 16):
        p = propose(search, history, i)
        assert 0.001 <= p["lr"] <= 1.0
        assert isinstance(p["n"], int) and p["n"] in range(10, 101, 10)
        assert isinstance(p["k"], int) and 1 <= p["k"] <= 64
        assert p["f"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        history.append((p, -abs(math.log10(p["lr"]) + 1) - abs(p["n"] - 50) / 100 - p["f"]))
