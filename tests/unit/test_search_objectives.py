"""Several objectives and warm starts: the Pareto front, the declared preference that picks
the registered version, multi-objective TPE, and an Experiment that starts from another's
trials. Pure functions first, then whole Experiments on the in-memory cluster."""

from __future__ import annotations

import json
import math
from typing import Any

from _training_world import World, experiment_manifest, success_summary

from mlops_operator.api.experiment import Search
from mlops_operator.api.ml import Objective
from mlops_operator.search import propose
from mlops_operator.search.pareto import dominates, pareto_front, preference_order


def test_dominance_needs_one_strict_improvement_and_no_loss():
    up_down = [True, False]  # maximise the first, minimise the second
    assert dominates((0.9, 10), (0.8, 20), up_down)
    assert dominates((0.9, 10), (0.9, 20), up_down)
    assert not dominates((0.9, 10), (0.9, 10), up_down)
    assert not dominates((0.95, 30), (0.9, 10), up_down)


def test_the_front_keeps_every_trade_off_and_drops_the_dominated():
    points = [("a", (0.90, 100.0)), ("b", (0.95, 300.0)), ("c", (0.85, 50.0)),
              ("d", (0.88, 200.0)), ("e", (0.95, 400.0))]
    assert pareto_front(points, [True, False]) == ["a", "b", "c"]


def test_the_preference_picks_the_best_primary_within_the_limits():
    objectives = [Objective(metric="accuracy"), Objective(metric="model_size_bytes", goal="minimize", limit=150)]
    points = [("a", (0.90, 100.0)), ("b", (0.95, 300.0)), ("c", (0.85, 50.0)), ("d", (0.88, 200.0))]
    # a and c meet the limit (a is better), then b (on the front, too big), then d (dominated).
    assert preference_order(points, objectives) == ["a", "c", "b", "d"]
    unreachable = [objectives[0], Objective(metric="model_size_bytes", goal="minimize", limit=10)]
    assert preference_order(points, unreachable)[0] == "b"  # no limit met: the best on the front


def test_multi_objective_tpe_is_deterministic_and_stays_in_space():
    search = Search.model_validate({"algorithm": "bayesian", "maxTrials": 30, "seed": 3, "parallelism": 1,
                                    "initialRandomTrials": 4,
                                    "space": {"x": {"min": 0.0, "max": 1.0}, "k": {"values": ["a", "b"]}}})

    def run() -> list[dict]:
        history: list[tuple[dict, Any]] = []
        for i in range(1, 13):
            p = propose(search, history, i, [True, False])
            history.append((p, (p["x"] + (p["k"] == "a"), p["x"] ** 2)))
        return [p for p, _ in history]

    first = run()
    assert first == run()
    assert all(0.0 <= p["x"] <= 1.0 and p["k"] in ("a", "b") for p in first)
    assert len({json.dumps(p, sort_keys=True) for p in first}) == len(first)


def size_of(params: dict[str, Any]) -> int:
    """A made-up model size that grows with C, so accuracy (best near C = 1) trades off against it."""
    return int(1000 * (1 + math.log10(float(params["C"])) + 2))


def accuracy_of(params: dict[str, Any]) -> float:
    return round(0.99 - abs(math.log10(float(params["C"]))) / 20, 6)


def run_to_the_end(world: World, name: str, outcome) -> dict[str, Any]:
    for _ in range(30):
        world.settle()
        exp = world.get("Experiment", name)
        if exp["status"]["phase"] in ("Succeeded", "Failed"):
            return exp
        world.tick()
        world.finish_running_jobs(outcome)
        world.tick()
    raise AssertionError(f"{name} did not finish")


def sized(run: dict[str, Any]) -> tuple[int, str]:
    params = run["spec"]["params"]
    summary = success_summary(run, accuracy_of(params))
    summary["size"] = size_of(params)
    return 0, json.dumps(summary)


def test_a_multi_objective_experiment_shows_its_front_and_registers_the_preferred_version():
    world = World()
    manifest = experiment_manifest(
        search={"algorithm": "bayesian", "maxTrials": 10, "parallelism": 2, "maxFailedTrials": 0, "seed": 5,
                "initialRandomTrials": 4, "space": {"C": {"min": 0.01, "max": 100, "distribution": "logUniform"}}},
        secondaryObjectives=[{"metric": "model_size_bytes", "goal": "minimize", "limit": 2500}],
    )
    world.create(manifest)
    exp = run_to_the_end(world, "iris", sized)
    status = exp["status"]
    assert status["phase"] == "Succeeded"

    runs = {r["metadata"]["name"]: r["spec"]["params"] for r in world.objects("TrainingRun")}
    points = {n: (accuracy_of(p), size_of(p)) for n, p in runs.items()}
    front = {n for n, v in points.items() if not any(dominates(w, v, [True, False]) for w in points.values())}
    assert {t["name"] for t in status["paretoFront"]} == front
    for entry in status["paretoFront"]:  # each shows its value on every objective
        assert (entry["metrics"]["accuracy"], entry["metrics"]["model_size_bytes"]) == points[entry["name"]]
    within = [n for n in front if points[n][1] <= 2500]
    assert within, "the test's limit should leave a choice"
    preferred = max(within, key=lambda n: (points[n][0], -int(n[-3:])))
    assert status["bestTrial"]["name"] == preferred == status["paretoFront"][0]["name"]
    mv = world.get("ModelVersion", status["modelVersion"])
    assert mv["spec"]["lineage"]["trainingRun"] == preferred
    best_accuracy = max(points, key=lambda n: (points[n][0], -int(n[-3:])))
    assert points[best_accuracy][1] > 2500 and preferred != best_accuracy  # the limit changed the pick


def test_a_warm_started_experiment_models_from_the_first_trial_and_repeats_nothing():
    world = World()
    space = {"C": {"values": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]}}
    world.create(experiment_manifest(
        name="first", search={"algorithm": "random", "maxTrials": 5, "parallelism": 5, "seed": 1, "space": space}))
    run_to_the_end(world, "first", None)
    world.create(experiment_manifest(
        name="second", search={"algorithm": "bayesian", "maxTrials": 4, "parallelism": 1, "seed": 1,
                               "initialRandomTrials": 5, "space": space, "warmStartFrom": ["first", "missing"]}))
    run_to_the_end(world, "second", None)

    def params(exp: str) -> list[float]:
        runs = sorted(world.objects("TrainingRun", **{"mlops.seed.io/experiment": exp}),
                      key=lambda r: r["metadata"]["name"])
        return [r["spec"]["params"]["C"] for r in runs]

    first, second = params("first"), params("second")
    assert len(first) == 5 and len(second) == 4
    assert not set(first) & set(second)  # the warm start's points are never tried again
    # Five known trials >= initialRandomTrials: the first trial already comes from TPE,
    # given the first Experiment's results (without them it would be the random point).
    warm = Search.model_validate({"algorithm": "bayesian", "maxTrials": 4, "seed": 1, "parallelism": 1,
                                  "initialRandomTrials": 5, "space": space})
    results = [({"C": c}, accuracy_of({"C": c})) for c in first]
    assert second[0] == propose(warm, results, 1)["C"]
    assert second[0] != propose(warm, [], 1)["C"]


def test_warm_start_trials_are_scored_by_this_experiments_objective():
    from mlops_operator.api.experiment import Experiment
    from mlops_operator.controllers.experiment import observe_warm_start

    world = World()
    world.create(experiment_manifest(name="by-f1", objective={"metric": "f1_macro", "goal": "maximize"}))
    run_to_the_end(world, "by-f1", None)
    second = world.create(experiment_manifest(
        name="by-accuracy", search={"algorithm": "bayesian", "maxTrials": 2, "parallelism": 1, "seed": 1,
                                    "warmStartFrom": ["by-f1"], "space": {"C": {"min": 0.01, "max": 100}}}))
    facts = observe_warm_start(world.cluster, second, Experiment.model_validate(second))
    assert len(facts) == 6
    for fact in facts:  # the other Experiment's objectiveValue is its f1_macro
        assert fact.objective_value == fact.metrics["accuracy"] == accuracy_of(fact.params)


def test_the_front_agrees_with_pairwise_dominance():
    import numpy as np

    rng = np.random.default_rng(0)
    maximize = [True, False, True]
    points = [(f"t{i}", tuple(float(v) for v in rng.integers(0, 6, 3))) for i in range(600)]  # ties included
    expected = [n for n, v in points if not any(dominates(w, v, maximize) for _, w in points)]
    assert pareto_front(points, maximize) == expected
