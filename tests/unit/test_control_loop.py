"""The training control loop on the in-memory cluster: the controllers as the operator runs
them, the test playing the Job controller and the kubelet."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mlops_operator.cluster.port import Conflict
from mlops_operator.controllers import experiment, model_version, training_run
from mlops_operator.reconcile.training_run import desired_job

from _training_world import API, NS, SETTINGS, World, experiment_manifest, score, success_summary


def run_experiment(world: World, rounds: int = 20) -> dict[str, Any]:
    """Alternate operator passes and Job completions until the Experiment is finished."""
    for _ in range(rounds):
        world.settle()
        phase = world.get("Experiment", "iris")["status"]["phase"]
        if phase in ("Succeeded", "Failed"):
            return world.get("Experiment", "iris")
        world.tick()
        world.finish_running_jobs()
        world.tick()
    raise AssertionError("the experiment did not finish")


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def test_full_experiment():
    world = World()
    exp = world.create(experiment_manifest())
    world.settle()

    runs = world.objects("TrainingRun")
    assert [r["metadata"]["name"] for r in runs] == ["iris-t001", "iris-t002"]
    for run in runs:
        ref = run["metadata"]["ownerReferences"][0]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("Experiment", "iris", exp["metadata"]["uid"], True)
        labels = run["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "mlops-operator"
        assert labels["mlops.seed.io/experiment"] == "iris" and labels["mlops.seed.io/model"] == "iris"
    jobs = world.objects("Job")
    assert [j["metadata"]["name"] for j in jobs] == ["iris-t001-trainer", "iris-t002-trainer"]
    for job in jobs:
        ref = job["metadata"]["ownerReferences"][0]
        assert (ref["kind"], ref["controller"]) == ("TrainingRun", True)
        assert job["metadata"]["labels"]["mlops.seed.io/trainingrun"] == ref["name"]
    # The Job is what the pure builder makes, adopted.
    run = world.get("TrainingRun", "iris-t001")
    from mlops_operator.api.training_run import TrainingRun
    assert jobs[0]["spec"] == desired_job(TrainingRun.model_validate(run), SETTINGS)["spec"]

    done = run_experiment(world)
    status = done["status"]
    assert status["phase"] == "Succeeded"
    assert status["trials"] == {"total": 6, "pending": 0, "running": 0, "succeeded": 6, "failed": 0}
    runs = {r["metadata"]["name"]: r for r in world.objects("TrainingRun")}
    best = max(runs.values(), key=lambda r: (score(r["spec"]["params"]), -int(r["metadata"]["name"][-3:])))
    assert status["bestTrial"]["name"] == best["metadata"]["name"]
    assert status["bestObjectiveValue"] == score(best["spec"]["params"])
    assert [t["name"] for t in status["leaderboard"]] == sorted(
        runs, key=lambda n: (-score(runs[n]["spec"]["params"]), n))
    assert status["modelVersion"] == "iris-v1" and status["registeredVersions"] == ["iris-v1"]
    assert condition(done, "Ready")["status"] == "True"

    mv = world.get("ModelVersion", "iris-v1")
    assert "ownerReferences" not in mv["metadata"]  # the record outlives the Experiment
    assert mv["spec"]["version"] == 1
    assert mv["spec"]["lineage"]["trainingRun"] == best["metadata"]["name"]
    assert mv["spec"]["artifact"]["modelUri"].endswith(f"/{best['metadata']['name']}/model.skops")
    assert mv["spec"]["params"] == best["spec"]["params"]
    assert mv["status"]["phase"] == "Validated"

    reasons = {e["reason"] for e in world.events(name="iris")}
    assert {"TrialStarted", "BestTrialImproved", "VersionRegistered", "Succeeded"} <= reasons
    assert len(world.events("TrialStarted")) == 6

    # Level-based: another pass changes nothing.
    before = world.cluster.revision
    world.sync_all()
    assert world.cluster.revision == before


class CrashAfter:
    """A cluster that dies (raises) after `writes` successful writes, like an operator killed
    in the middle of applying a plan."""

    def __init__(self, inner, writes: int) -> None:
        self.inner, self.left = inner, writes

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name not in ("create", "apply", "patch", "patch_status", "replace", "delete"):
            return attr

        def write(*args, **kwargs):
            if self.left <= 0:
                raise KeyboardInterrupt("operator killed")
            self.left -= 1
            return attr(*args, **kwargs)
        return write


def outcome(world: World) -> tuple:
    runs = sorted((r["metadata"]["name"], json.dumps(r["spec"]["params"], sort_keys=True))
                  for r in world.objects("TrainingRun"))
    mvs = sorted((m["metadata"]["name"], m["spec"]["lineage"]["trainingRun"]) for m in world.objects("ModelVersion"))
    exp = world.get("Experiment", "iris")["status"]
    return runs, mvs, exp["phase"], exp["bestTrial"]["name"], exp["trials"]


@pytest.mark.parametrize("algorithm", ["random", "bayesian", "grid"])
@pytest.mark.parametrize("crash_after", [1, 2, 3])
def test_restart_in_the_middle(algorithm, crash_after):
    space = {"C": {"values": [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]}} if algorithm == "grid" else None
    manifest = experiment_manifest()
    manifest["spec"]["search"]["algorithm"] = algorithm
    if space:
        manifest["spec"]["search"]["space"] = space

    reference = World()
    reference.create(manifest)
    run_experiment(reference)

    world = World()
    world.create(manifest)
    world.settle()
    world.tick()
    world.finish_running_jobs()
    world.tick()
    # The operator dies part-way through the pass that records the results and starts trials.
    crashing = CrashAfter(world.cluster, crash_after)
    with pytest.raises(KeyboardInterrupt):
        for _ in range(5):
            world.sync_all(crashing)
    # A new operator, nothing in memory: it starts from what the cluster holds.
    run_experiment(world)
    assert outcome(world) == outcome(reference)
    assert len(world.objects("TrainingRun")) == 6


def test_registration_is_not_repeated_after_a_crash_before_the_status_write():
    world = World()
    world.create(experiment_manifest(search={"algorithm": "random", "maxTrials": 2, "parallelism": 2, "seed": 1,
                                             "space": {"C": {"min": 0.1, "max": 10}}}))
    world.settle()
    world.finish_running_jobs()
    for obj in world.objects("TrainingRun"):
        training_run.sync(world.cluster, obj, world.clock, SETTINGS)
    # Registration creates the version, then the operator dies before the status write.
    with pytest.raises(KeyboardInterrupt):
        experiment.sync(CrashAfter(world.cluster, 1), world.get("Experiment", "iris"), world.clock, SETTINGS)
    assert [m["metadata"]["name"] for m in world.objects("ModelVersion")] == ["iris-v1"]
    world.settle()
    assert [m["metadata"]["name"] for m in world.objects("ModelVersion")] == ["iris-v1"]
    assert world.get("Experiment", "iris")["status"]["modelVersion"] == "iris-v1"


class StaleWrites:
    """Another writer touches the object right before each of our first `times` status
    writes, so each carries a stale resourceVersion."""

    def __init__(self, inner, times: int) -> None:
        self.inner, self.left = inner, times
        self.conflicts = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def patch_status(self, api_version, kind, namespace, name, status, resource_version=None):
        if self.left > 0:
            self.left -= 1
            self.inner.patch(api_version, kind, namespace, name,
                             {"metadata": {"annotations": {"touched": str(self.left)}}})
        try:
            return self.inner.patch_status(api_version, kind, namespace, name, status, resource_version)
        except Conflict:
            self.conflicts += 1
            raise


@pytest.mark.parametrize("times", [1, 2, 4])
def test_conflicts_on_status_writes(times):
    world = World()
    world.create(experiment_manifest())
    cluster = StaleWrites(world.cluster, times)
    experiment.sync(cluster, world.get("Experiment", "iris"), world.clock, SETTINGS)
    assert cluster.conflicts == times
    exp = world.get("Experiment", "iris")
    assert exp["status"]["trials"]["total"] == 2
    assert exp["metadata"]["annotations"]["touched"] == "0"
    assert [r["metadata"]["name"] for r in world.objects("TrainingRun")] == ["iris-t001", "iris-t002"]
    assert len(world.events("TrialStarted")) == 2


def test_conflicts_beyond_the_retries_raise_and_the_next_pass_recovers():
    world = World()
    world.create(experiment_manifest())
    cluster = StaleWrites(world.cluster, 100)
    with pytest.raises(Conflict):
        experiment.sync(cluster, world.get("Experiment", "iris"), world.clock, SETTINGS)
    world.settle()
    assert world.get("Experiment", "iris")["status"]["trials"]["total"] == 2
    assert len(world.objects("TrainingRun")) == 2


def failing(run: dict[str, Any]) -> tuple[int, str]:
    return 2, json.dumps({"status": "Failed", "reason": "UnknownParameter",
                          "message": f"{run['metadata']['name']}: unknown parameter 'C'",
                          "metrics": {"accuracy": 0.1}})


def test_max_failed_trials():
    world = World()
    world.create(experiment_manifest())  # maxFailedTrials 2, parallelism 2
    for _ in range(5):
        world.settle()
        if world.get("Experiment", "iris")["status"]["phase"] == "Failed":
            break
        world.finish_running_jobs(failing)
        world.tick()
    exp = world.get("Experiment", "iris")
    assert exp["status"]["phase"] == "Failed"
    # Two failures are tolerated; trials 3 and 4 (started together) fail together.
    assert exp["status"]["trials"]["failed"] == 4
    assert len(world.objects("TrainingRun")) == 4
    ready = condition(exp, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "MaxFailedTrialsReached")
    assert len(world.events("MaxFailedTrialsReached", "iris")) == 1
    assert len(world.events("TrialFailed", "iris")) == 4
    run = world.get("TrainingRun", "iris-t001")
    assert run["status"]["failureReason"] == "UnknownParameter"
    assert run["status"]["message"] == "iris-t001: unknown parameter 'C'"
    assert run["status"]["metrics"] == {"accuracy": 0.1}
    assert world.objects("ModelVersion") == []
    # Nothing more starts once Failed, even when the remaining trials finish.
    world.finish_running_jobs()
    world.settle()
    assert len(world.objects("TrainingRun")) == 4


def test_early_stop():
    world = World()
    world.create(experiment_manifest(search={
        "algorithm": "random", "maxTrials": 50, "parallelism": 2, "seed": 1,
        "space": {"C": {"min": 0.01, "max": 100, "distribution": "logUniform"}},
        "earlyStopping": {"targetValue": 0.9}}))
    exp = run_experiment(world)
    assert exp["status"]["phase"] == "Succeeded"
    assert exp["status"]["trials"]["total"] < 50
    assert condition(exp, "RunsComplete")["reason"] == "EarlyStopped"
    assert exp["status"]["bestObjectiveValue"] >= 0.9


class Interleaved:
    """Runs `other()` once, right before the first ModelVersion create goes through: both
    registrations have already chosen their version number from the same observation."""

    def __init__(self, inner, other) -> None:
        self.inner, self.other = inner, other

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def create(self, obj):
        if obj["kind"] == "ModelVersion" and self.other is not None:
            other, self.other = self.other, None
            other()
        return self.inner.create(obj)


def test_two_experiments_register_one_model_at_once():
    world = World()
    search = {"algorithm": "random", "maxTrials": 2, "parallelism": 2, "seed": 3,
              "space": {"C": {"min": 0.1, "max": 10}}}
    world.create(experiment_manifest("iris-a", search=search, registerPolicy="registerAll"))
    world.create(experiment_manifest("iris-b", search=search, registerPolicy="registerAll"))
    world.settle()
    world.finish_running_jobs()
    for obj in world.objects("TrainingRun"):
        training_run.sync(world.cluster, obj, world.clock, SETTINGS)

    def other() -> None:
        experiment.sync(world.cluster, world.get("Experiment", "iris-b"), world.clock, SETTINGS)

    experiment.sync(Interleaved(world.cluster, other), world.get("Experiment", "iris-a"), world.clock, SETTINGS)
    world.settle()
    mvs = world.objects("ModelVersion")
    assert sorted(m["spec"]["version"] for m in mvs) == [1, 2, 3, 4]
    assert sorted(m["metadata"]["name"] for m in mvs) == ["iris-v1", "iris-v2", "iris-v3", "iris-v4"]
    assert len({m["spec"]["lineage"]["trainingRun"] for m in mvs}) == 4
    # Each Experiment's versions were registered in its trial order: monotonic.
    for exp_name in ("iris-a", "iris-b"):
        exp = world.get("Experiment", exp_name)
        assert exp["status"]["phase"] == "Succeeded"
        versions = [world.get("ModelVersion", n) for n in exp["status"]["registeredVersions"]]
        assert [v["spec"]["lineage"]["trainingRun"] for v in versions] == [f"{exp_name}-t001", f"{exp_name}-t002"]
        numbers = [v["spec"]["version"] for v in versions]
        assert numbers == sorted(numbers)
    # iris-b went first (interleaved into iris-a's registration); iris-a lost the race for v1.
    assert world.get("Experiment", "iris-b")["status"]["registeredVersions"] == ["iris-v1", "iris-v2"]
    assert world.get("Experiment", "iris-a")["status"]["registeredVersions"] == ["iris-v3", "iris-v4"]


def test_version_number_skips_a_hand_made_record_without_labels():
    world = World()
    world.create({"apiVersion": API, "kind": "ModelVersion", "metadata": {"name": "iris-v1", "namespace": NS},
                  "spec": {"model": "iris", "version": 1, "artifact": {
                      "uri": "s3://mlops/x/", "modelUri": "s3://mlops/x/model.skops", "sha256": "f" * 64}}})
    world.create(experiment_manifest(search={"algorithm": "random", "maxTrials": 1, "parallelism": 1,
                                             "space": {"C": {"min": 0.1, "max": 10}}}))
    run_experiment(world)
    assert world.get("Experiment", "iris")["status"]["modelVersion"] == "iris-v2"


def make_champion(world: World, version: str, service: str = "iris") -> None:
    world.create({"apiVersion": API, "kind": "InferenceService", "metadata": {"name": service, "namespace": NS},
                  "spec": {"model": "iris"}})
    world.cluster.patch_status(API, "InferenceService", NS, service, {"champion": version, "phase": "Stable"})


@pytest.mark.parametrize("min_change, phase", [(0.0, "Validated"), (0.5, "Rejected")])
def test_gates_against_the_champion(min_change, phase):
    world = World()
    search = {"algorithm": "grid", "maxTrials": 1, "parallelism": 1, "space": {"C": {"values": [0.1]}}}
    world.create(experiment_manifest("first", search=search))
    run_experiment_named(world, "first")
    make_champion(world, "iris-v1")
    better = {"algorithm": "grid", "maxTrials": 1, "parallelism": 1, "space": {"C": {"values": [1.0]}}}
    world.create(experiment_manifest("second", search=better, validation={"gates": [
        {"metric": "accuracy", "threshold": 0.5, "minAbsoluteChange": min_change}]}))
    run_experiment_named(world, "second")
    mv = world.get("ModelVersion", "iris-v2")
    assert mv["status"]["phase"] == phase
    gate = mv["status"]["gates"][0]
    assert (gate["champion"], gate["championValue"], gate["value"]) == ("iris-v1", score({"C": 0.1}), score({"C": 1.0}))
    assert world.events("Validated" if phase == "Validated" else "Rejected", "iris-v2")
    champion = world.get("ModelVersion", "iris-v1")
    assert champion["status"]["role"] == "champion"
    assert champion["status"]["servedBy"] == [{"service": "iris", "role": "champion"}]
    assert mv["status"]["role"] == "none"
    # The service moves on to v2: v1 is previous, then retired once no service names it.
    world.cluster.patch_status(API, "InferenceService", NS, "iris", {"champion": "iris-v2", "previous": "iris-v1"})
    world.settle()
    assert world.get("ModelVersion", "iris-v1")["status"]["role"] == "previous"
    assert world.get("ModelVersion", "iris-v2")["status"]["role"] == "champion"
    world.cluster.patch_status(API, "InferenceService", NS, "iris", {"previous": None})
    world.settle()
    assert world.get("ModelVersion", "iris-v1")["status"]["role"] == "retired"
    # The verdict is part of the record: it does not change with the champion.
    assert world.get("ModelVersion", "iris-v2")["status"]["phase"] == phase


def run_experiment_named(world: World, name: str) -> None:
    for _ in range(10):
        world.settle()
        if world.get("Experiment", name)["status"]["phase"] in ("Succeeded", "Failed"):
            return
        world.finish_running_jobs()
        world.tick()
    raise AssertionError(f"{name} did not finish")


@pytest.mark.parametrize("change, message", [
    ({"estimator": "os.system"}, "spec.estimator: 'os.system' is not in the operator's allow-list"),
    ({"search": {"parallelism": 5, "maxTrials": 2}}, "spec.search.parallelism: must not exceed maxTrials"),
    ({"metrics": ["f1_macro"]}, "spec.objective.metric: 'accuracy' is not among spec.metrics"),
])
def test_invalid_spec(change, message):
    world = World()
    world.create(experiment_manifest(**change))
    world.settle()
    exp = world.get("Experiment", "iris")
    ready = condition(exp, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert ready["message"].startswith(message)
    assert condition(exp, "Stalled")["status"] == "True"
    events = world.events("InvalidSpec", "iris")
    assert len(events) == 1 and events[0]["type"] == "Warning" and events[0]["message"].startswith(message)
    assert world.objects("TrainingRun") == []
    # Fixing the spec resumes the Experiment.
    fixed = {**{key: None for key in change}, **experiment_manifest()["spec"]}
    world.cluster.patch(API, "Experiment", NS, "iris", {"spec": fixed})
    world.settle()
    exp = world.get("Experiment", "iris")
    assert condition(exp, "Stalled")["status"] == "False"
    assert condition(exp, "Ready")["reason"] == "Running"
    assert len(world.objects("TrainingRun")) == 2


def test_training_run_made_by_hand():
    world = World()
    world.create({"apiVersion": API, "kind": "TrainingRun", "metadata": {"name": "manual", "namespace": NS},
                  "spec": {"model": "wine", "dataset": {"uri": "sklearn://wine"},
                           "estimator": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 10},
                           "objective": {"metric": "accuracy"}}})
    world.settle()
    job = world.cluster.get("batch/v1", "Job", NS, "manual-trainer")
    assert job["metadata"]["labels"]["mlops.seed.io/model"] == "wine"
    assert world.get("TrainingRun", "manual")["status"]["phase"] == "Pending"
    world.start_job("manual-trainer")
    world.settle()
    assert world.get("TrainingRun", "manual")["status"]["phase"] == "Running"
    run = world.get("TrainingRun", "manual")
    world.finish_job("manual-trainer", message=json.dumps(success_summary(run, 0.91)))
    world.settle()
    run = world.get("TrainingRun", "manual")
    assert run["status"]["phase"] == "Succeeded" and run["status"]["objectiveValue"] == 0.91
    # The Job's TTL removes it: the finished run stays a record and trains nothing again.
    world.cluster.delete("batch/v1", "Job", NS, "manual-trainer")
    world.settle()
    assert world.objects("Job") == []
    assert world.get("TrainingRun", "manual")["status"]["phase"] == "Succeeded"


def test_failed_trial_keeps_the_log_tail():
    world = World()
    world.create(experiment_manifest(search={"algorithm": "random", "maxTrials": 1, "parallelism": 1,
                                             "maxFailedTrials": 0, "space": {"C": {"min": 1, "max": 2}}}))
    world.settle()
    world.finish_job("iris-t001-trainer", exit_code=137, message="loading data\nKilled", job_condition="Failed",
                     reason="BackoffLimitExceeded")
    world.settle()
    run = world.get("TrainingRun", "iris-t001")
    assert (run["status"]["phase"], run["status"]["failureReason"], run["status"]["message"]) == (
        "Failed", "BackoffLimitExceeded", "loading data\nKilled")
    assert world.get("Experiment", "iris")["status"]["phase"] == "Failed"
    assert world.events("TrialFailed", "iris")[0]["message"] == "iris-t001 failed: loading data\nKilled"


def test_model_version_sync_without_experiment():
    world = World()
    world.create({"apiVersion": API, "kind": "ModelVersion", "metadata": {"name": "iris-v5", "namespace": NS},
                  "spec": {"model": "iris", "version": 5, "metrics": {"accuracy": 0.5},
                           "artifact": {"uri": "s3://mlops/x/", "modelUri": "s3://mlops/x/model.skops",
                                        "sha256": "f" * 64},
                           "validation": {"gates": [{"metric": "accuracy", "threshold": 0.8}]}}})
    model_version.sync(world.cluster, world.get("ModelVersion", "iris-v5"), world.clock)
    mv = world.get("ModelVersion", "iris-v5")
    assert mv["status"]["phase"] == "Rejected"
    assert mv["status"]["gates"][0]["message"] == "accuracy=0.5 below the threshold 0.8"


def test_operator_metrics():
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before_ok = sample("mlops_reconcile_total", kind="Experiment", result="success")
    before_failed = sample("mlops_training_runs_failed_total", namespace=NS, model="metrics")
    world = World()
    world.create(experiment_manifest("metrics", model="metrics", search={
        "algorithm": "random", "maxTrials": 3, "parallelism": 3, "maxFailedTrials": 3,
        "space": {"C": {"min": 0.1, "max": 10}}}))
    world.settle()
    assert sample("mlops_trials", namespace=NS, experiment="metrics", phase="Pending") == 3
    assert sample("mlops_experiment_info", namespace=NS, experiment="metrics", phase="Running") == 1
    world.finish_running_jobs(lambda run: failing(run) if run["metadata"]["name"].endswith("1")
                              else (0, json.dumps(success_summary(run, 0.9))))
    world.settle()
    assert sample("mlops_trials", namespace=NS, experiment="metrics", phase="Succeeded") == 2
    assert sample("mlops_trials", namespace=NS, experiment="metrics", phase="Failed") == 1
    assert sample("mlops_experiment_info", namespace=NS, experiment="metrics", phase="Succeeded") == 1
    assert sample("mlops_experiment_info", namespace=NS, experiment="metrics", phase="Running") == 0
    assert sample("mlops_training_runs_failed_total", namespace=NS, model="metrics") == before_failed + 1
    assert sample("mlops_model_versions_total", namespace=NS, model="metrics", phase="Validated") == 1
    assert sample("mlops_reconcile_total", kind="Experiment", result="success") > before_ok
    assert sample("mlops_reconcile_duration_seconds_count", kind="TrainingRun") > 0


def test_spec_change_while_running():
    world = World()
    world.create(experiment_manifest())  # maxTrials 6, parallelism 2
    world.settle()
    world.finish_running_jobs()
    world.settle()
    assert len(world.objects("TrainingRun")) == 4
    # Budget fields apply at once; a new estimator applies to the trials started from now on.
    spec = experiment_manifest()["spec"]
    spec["search"] = {**spec["search"], "maxTrials": 8, "parallelism": 4}
    spec["estimator"] = "sklearn.svm.SVC"
    world.cluster.patch(API, "Experiment", NS, "iris", {"spec": spec})
    world.settle()
    runs = {r["metadata"]["name"]: r["spec"]["estimator"] for r in world.objects("TrainingRun")}
    assert len(runs) == 6  # t003, t004 still running: 4 - 2 = 2 more
    assert [runs[f"iris-t00{i}"] for i in range(1, 7)] == [
        "sklearn.linear_model.LogisticRegression"] * 4 + ["sklearn.svm.SVC"] * 2
    exp = world.get("Experiment", "iris")
    assert exp["metadata"]["generation"] == 2 and exp["status"]["observedGeneration"] == 2
    assert condition(exp, "Ready")["observedGeneration"] == 2
    done = run_experiment(world)
    assert done["status"]["trials"]["total"] == 8 and done["status"]["phase"] == "Succeeded"


def test_invalid_training_run():
    world = World()
    world.create({"apiVersion": API, "kind": "TrainingRun", "metadata": {"name": "bad", "namespace": NS},
                  "spec": {"model": "wine", "dataset": {"uri": "sklearn://wine"}, "estimator": "os.system"}})
    world.settle()
    run = world.get("TrainingRun", "bad")
    assert (condition(run, "Ready")["status"], condition(run, "Ready")["reason"]) == ("False", "InvalidSpec")
    assert world.objects("Job") == []
    assert [e["type"] for e in world.events("InvalidSpec", "bad")] == ["Warning"]
