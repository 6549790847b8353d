"""spec.retrain on the in-memory cluster: the controllers as the operator runs them, the
test playing the Job controller and the kubelet, and the clock.

The loop closes: a finished Experiment retrains on its schedule (or on its InferenceService's
drift) as `<exp>-r<N>`, the retrain registers a new ModelVersion, and an InferenceService
with `challenger: latestValidated` starts rolling it out."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from _training_world import API, NS, SETTINGS, World, experiment_manifest
from test_control_loop import CrashAfter

from mlops_operator.api.experiment import ExperimentSpec
from mlops_operator.controllers import experiment
from mlops_operator.controllers import inference_service as isvc_controller
from mlops_operator.reconcile.retrain import parse_time

SEARCH = {"algorithm": "random", "maxTrials": 2, "parallelism": 2, "seed": 1,
          "space": {"C": {"min": 0.1, "max": 10}}}


def finish(world: World, name: str, rounds: int = 20) -> dict[str, Any]:
    """Operator passes and Job completions until Experiment `name` is finished."""
    for _ in range(rounds):
        world.settle()
        exp = world.get("Experiment", name)
        if (exp.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return exp
        world.tick()
        world.finish_running_jobs()
        world.tick()
    raise AssertionError(f"{name} did not finish")


def retrains(world: World) -> list[str]:
    return sorted(e["metadata"]["name"] for e in world.objects("Experiment", **{"mlops.seed.io/retrain-of": "iris"}))


class NoMetrics:
    def read(self, target, time):
        from mlops_operator.metrics_reader import MetricsUnavailable

        raise MetricsUnavailable("no data plane in this test")

    def router_configs(self, target):
        return []


def sync_service(world: World) -> dict[str, Any]:
    obj = world.get("InferenceService", "iris")
    isvc_controller.sync(world.cluster, obj, world.clock, metrics_reader=NoMetrics(), settings=SETTINGS)
    return world.get("InferenceService", "iris").get("status") or {}


def test_scheduled_retrain_creates_a_child_that_registers_a_version_the_canary_picks_up():
    world = World()
    parent = world.create(experiment_manifest(search=SEARCH, retrain={"schedule": "0 * * * *"}))
    done = finish(world, "iris")
    assert done["status"]["phase"] == "Succeeded" and done["status"]["modelVersion"] == "iris-v1"
    assert done["status"]["nextRetrainTime"] == "2026-01-01T01:00:00Z"
    assert done["status"]["retrainCount"] == 0 and retrains(world) == []

    world.create({"apiVersion": API, "kind": "InferenceService", "metadata": {"name": "iris", "namespace": NS},
                  "spec": {"model": "iris", "champion": {"modelVersion": "iris-v1"},
                           "challenger": {"policy": "latestValidated"}}})
    assert sync_service(world)["champion"] == "iris-v1"

    world.clock = world.clock.replace(minute=59)
    world.settle()
    assert retrains(world) == []
    world.clock = world.clock.replace(hour=1, minute=0, second=3)
    world.settle()
    assert retrains(world) == ["iris-r1"]

    child = world.get("Experiment", "iris-r1")
    meta = child["metadata"]
    assert meta["ownerReferences"] == [{"apiVersion": API, "kind": "Experiment", "name": "iris",
                                        "uid": parent["metadata"]["uid"], "controller": True,
                                        "blockOwnerDeletion": True}]
    assert meta["labels"]["mlops.seed.io/experiment"] == "iris"
    assert meta["labels"]["mlops.seed.io/retrain-of"] == "iris"
    assert meta["annotations"]["mlops.seed.io/retrain-reason"] == \
        "schedule '0 * * * *' fired at 2026-01-01T01:00:00Z"
    # The parent's spec (its defaults filled in), without retrain: no recursion.
    parent_spec = ExperimentSpec.model_validate(world.get("Experiment", "iris")["spec"])
    assert child["spec"] == parent_spec.model_copy(update={"retrain": None}).dump()
    assert "retrain" not in child["spec"] and child["spec"]["model"] == "iris"

    status = world.get("Experiment", "iris")["status"]
    assert status["retrainCount"] == 1 and status["lastRetrainTime"] == "2026-01-01T01:00:03Z"
    assert status["retrains"] == [{"name": "iris-r1", "time": "2026-01-01T01:00:03Z",
                                   "reason": "schedule '0 * * * *' fired at 2026-01-01T01:00:00Z"}]
    assert status["nextRetrainTime"] == "2026-01-01T02:00:00Z"
    assert len(world.events("RetrainTriggered", "iris")) == 1

    # The retrain runs its own search and registers the family's next version...
    finish(world, "iris-r1")
    assert sorted(m["metadata"]["name"] for m in world.objects("ModelVersion")) == ["iris-v1", "iris-v2"]
    assert world.get("ModelVersion", "iris-v2")["spec"]["lineage"]["experiment"] == "iris-r1"
    world.settle()
    assert world.get("ModelVersion", "iris-v2")["status"]["phase"] == "Validated"
    # ... which the InferenceService rolls out as its challenger: the loop is closed.
    isvc = sync_service(world)
    assert (isvc["champion"], isvc["challenger"], isvc["rolloutStage"]) == ("iris-v1", "iris-v2", "Starting")

    # The child never retrains by itself; the parent's next fire makes iris-r2.
    world.clock = world.clock.replace(hour=2, minute=0, second=1)
    world.settle()
    assert retrains(world) == ["iris-r1", "iris-r2"]
    assert len(world.events("RetrainTriggered", "iris")) == 2


def drifted(world: World, max_psi: float = 0.6) -> None:
    world.cluster.patch_status(API, "InferenceService", NS, "iris", {"drift": {
        "time": world.stamp(), "version": "iris-v1", "maxPsi": max_psi, "feature": "petal_length",
        "features": [{"name": "petal_length", "psi": max_psi, "ks": 0.4}], "threshold": 0.25,
        "drifted": True, "since": world.stamp(), "consecutive": 3}})


def test_drift_retrains_once_then_waits_for_the_cooldown():
    world = World()
    world.create(experiment_manifest(search=SEARCH, retrain={
        "onDrift": {"enabled": True, "service": "iris", "psiThreshold": 0.3, "cooldown": "2h"}}))
    finish(world, "iris")
    assert world.get("Experiment", "iris")["status"]["retrainMessage"] == (
        "spec.retrain.onDrift.service: no InferenceService 'iris' in this namespace; drift cannot trigger a retrain")
    world.create({"apiVersion": API, "kind": "InferenceService", "metadata": {"name": "iris", "namespace": NS},
                  "spec": {"model": "iris", "champion": {"modelVersion": "iris-v1"}}})
    world.settle()
    assert retrains(world) == []
    assert "retrainMessage" not in world.get("Experiment", "iris")["status"]

    drifted(world, max_psi=0.28)  # drifted for the service (0.25), not for the retrain (0.3)
    world.tick(60)
    world.settle()
    assert retrains(world) == []

    drifted(world, max_psi=0.6)
    world.tick(60)
    world.settle()
    assert retrains(world) == ["iris-r1"]
    reason = world.get("Experiment", "iris-r1")["metadata"]["annotations"]["mlops.seed.io/retrain-reason"]
    assert reason.startswith("drift on InferenceService iris: iris-v1 feature petal_length PSI 0.6 > 0.3")
    # Still drifted while the retrain runs, and after it finished, within the cooldown: no second one.
    for _ in range(3):
        world.tick(600)
        world.settle()
    assert retrains(world) == ["iris-r1"]
    finish(world, "iris-r1")
    world.tick(1800)
    world.settle()
    assert retrains(world) == ["iris-r1"]
    status = world.get("Experiment", "iris")["status"]
    # The held-back retrain says why, in the status and once in an Event.
    assert "held back by onDrift.cooldown=2h after iris-r1 until" in status["retrainMessage"]
    assert [e for e in world.events("RetrainHeldBack", "iris") if "onDrift.cooldown=2h" in str(e)]
    assert status["retrainCount"] == 1
    assert len(world.events("RetrainTriggered", "iris")) == 1
    # After the cooldown, drift that persists retrains again.
    first = world.get("Experiment", "iris")["status"]["lastRetrainTime"]
    world.clock = parse_time(first) + timedelta(hours=2)
    world.settle()
    assert retrains(world) == ["iris-r1", "iris-r2"]


def test_a_crash_after_creating_the_child_and_a_fresh_controller_make_no_duplicate():
    world = World()
    world.create(experiment_manifest(search=SEARCH, retrain={"schedule": "@hourly"}))
    finish(world, "iris")
    world.clock = world.clock.replace(hour=1, minute=0, second=30)
    # The pass creates iris-r1, then the operator dies before it writes the parent's status.
    with pytest.raises(KeyboardInterrupt):
        experiment.sync(CrashAfter(world.cluster, 1), world.get("Experiment", "iris"), world.clock, SETTINGS)
    assert retrains(world) == ["iris-r1"]
    assert "retrains" not in world.get("Experiment", "iris")["status"] or \
        world.get("Experiment", "iris")["status"]["retrains"] == []
    # A new operator, nothing in memory, a little later: it finds the child and records it.
    world.tick(30)
    world.settle()
    assert retrains(world) == ["iris-r1"]
    status = world.get("Experiment", "iris")["status"]
    assert status["retrainCount"] == 1
    assert [r["name"] for r in status["retrains"]] == ["iris-r1"]
    assert status["lastRetrainTime"] == "2026-01-01T01:00:30Z"
    assert len(world.events("RetrainTriggered", "iris")) == 1
    # Past the next fire, while iris-r1 still runs: it waits, and says why.
    world.clock = world.clock.replace(hour=2, minute=0, second=5)
    world.sync_all()
    assert retrains(world) == ["iris-r1"]
    assert "waiting for iris-r1 to finish" in world.get("Experiment", "iris")["status"]["retrainMessage"]
    finish(world, "iris-r1")
    world.settle()
    assert retrains(world) == ["iris-r1", "iris-r2"]


def test_an_invalid_schedule_is_reported_on_the_experiment():
    world = World()
    world.create(experiment_manifest(search=SEARCH, retrain={"schedule": "0 25 * * *"}))
    world.settle()
    status = world.get("Experiment", "iris")["status"]
    assert status["message"].startswith("spec.retrain.schedule: is not a valid cron expression")
    assert world.objects("TrainingRun") == []
