"""The canary on the real control plane, under steady client traffic through the
InferenceService's Service (its ClusterIP, routed by the Pod network), with the operator as
its own ServiceAccount. One namespace and one champion serve the whole module, in order:

1. the challenger of examples/iris-canary/ walks 10 -> 25 -> 50 -> 100 % at the example's
   10 s interval with 0 failed requests; the operator is killed with -9 at the 50 % step and
   started again: the weight never jumps, the rollout resumes at its step and promotes; from
   the moment the status says Promoted no answer comes from the old version (each answer
   names its model_version);
2. a worse challenger (tests/local/manifests/worse.yaml) is rolled back with 0 client-visible
   errors, and the Event and the condition name the failed check with its numbers;
3. traffic shifted away from the training data makes the service Drifted, the Experiment's
   `retrain.onDrift` starts a retrain, and its version is canaried to a verdict, no manual step;
4. Argo CD's health scripts, run on the objects these runs left (kubectl get -o json);
5. deleting the InferenceService: the garbage collector removes its Deployments, Services,
   ConfigMaps and Secret (ownerReferences).

The walk (1) is the example's rollout as the example has it: its steps and its 10 s interval.
The rollback (2) and the retrain's canary (3) are about the verdict, not the pace: they keep the
example's steps and analysis thresholds but analyse every 2 s (the operator's 5 s InferenceService
timer then sets the pace: one analysis per tick) under 48 requests/s instead of 24, so that the
challenger's share gathers the labels a verdict needs in one or two ticks, not in 10 s intervals.
The analysis' bounds are valid at every look, so looking more often makes no false verdict
likelier; the worse challenger still meets its first analyses at 10 %, where the champion's
many labels keep it from passing on thin evidence.

Waits are for conditions, with deadlines sized for a loaded two-core machine. Traffic goes to
the loopback-routed Pod network only.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from argocd_health import health
from control_plane_world import ROOT, Cluster, eventually, load_yaml
from mlops_operator.local.traffic import Sighting, iris_rows
from mlops_operator.rollout.state_machine import parse_time
from serving_world import ServingWorld, pod_network_problem, rate_of, serving_world

pytestmark = pytest.mark.timeout(900)

CANARY = ROOT / "examples" / "iris-canary"
MANIFESTS = ROOT / "tests" / "local" / "manifests"
SERVICE = "iris"
SERVING = {"mlops.seed.io/inferenceservice": SERVICE}
STEPS = [10, 25, 50, 100]
# The rollback and the retrain's canary: analyses as often as the operator looks (docstring).
QUICK_INTERVAL = "2s"
QUICK_RATE = 48.0


def champion_documents() -> list[dict[str, Any]]:
    """A one-trial champion Experiment of the iris family that retrains when the service drifts,
    and the InferenceService of examples/iris-canary/ with drift read every 2 s over 60 rows."""
    [experiment] = [d for d in load_yaml(MANIFESTS / "quick-champion.yaml") if d["kind"] == "Experiment"]
    experiment["spec"]["retrain"] = {"onDrift": {"enabled": True, "service": SERVICE, "persistence": 2}}
    return [experiment, inference_service()]


def inference_service(interval: str | None = None) -> dict[str, Any]:
    """The InferenceService of examples/iris-canary/ with drift read every 2 s over 60 rows;
    its rollout analysed every `interval` instead of the example's, if given."""
    [isvc] = load_yaml(CANARY / "inferenceservice.yaml")
    isvc["spec"]["drift"] = {"interval": "2s", "window": 60}
    # A machine shared with other heavy jobs stalls a process for seconds now and then; the
    # router then skips the challenger, which counts as its errors. One failed analysis is
    # forgiven (its evidence restarts), a worse challenger fails twice.
    isvc["spec"]["rollout"]["analysis"]["failureLimit"] = 2
    if interval is not None:
        isvc["spec"]["rollout"]["interval"] = interval
    return isvc


@pytest.fixture(scope="module")
def world(control_plane: Cluster, operator_kubeconfig: Path, pod_s3: Any,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServingWorld]:
    log = tmp_path_factory.mktemp("canary-operator") / "operator.log"
    with serving_world(control_plane, operator_kubeconfig, pod_s3, log) as world:
        world.apply(*champion_documents())
        world.wait_status("ModelVersion", "iris-v1", "the champion iris-v1 Validated",
                          lambda s: s.get("phase") == "Validated", timeout=600)
        yield world
        assert world.operator.forbidden() == [], "\n".join(world.operator.forbidden())


@pytest.fixture(scope="module")
def served(world: ServingWorld) -> ServingWorld:
    """The champion answering through the Service; skips when the Pods have no network."""
    problem = pod_network_problem(world, SERVING)
    if problem:
        pytest.skip(problem)
    world.wait_status("InferenceService", SERVICE, "the champion iris-v1 Ready and Stable",
                      lambda s: s.get("champion") == "iris-v1" and s.get("phase") == "Stable"
                      and any(c["type"] == "Ready" and c["status"] == "True" for c in s.get("conditions", [])))
    eventually(lambda: world.answers_once(SERVICE), "a first prediction through the Service", timeout=60)
    return world


def weights_in_order(sightings: list[Sighting]) -> list[int]:
    """The challenger weights the status went through, each once, in order (0s left out)."""
    seen: list[int] = []
    for s in sightings:
        if s.weight and (not seen or seen[-1] != s.weight):
            seen.append(s.weight)
    return seen


def fail_if_rolled_back(world: ServingWorld, version: str) -> bool:
    """False while `version` is not rolled back; fails the test with the analysis when it is."""
    status = world.status("InferenceService", SERVICE)
    assert version not in status.get("rolledBackVersions", []), json.dumps(status.get("lastAnalysis"), indent=1)
    return False


def history_time(status: dict[str, Any], action: str, version: str) -> float:
    [entry] = [h for h in status["history"] if h["action"] == action and h["version"] == version]
    return parse_time(entry["time"]).timestamp()


def test_the_example_challenger_walks_every_step_survives_a_kill_9_at_50_and_is_promoted_gap_free(
        served: ServingWorld) -> None:
    world = served
    watch = world.watch(SERVICE).start()
    traffic = world.traffic(SERVICE).start()
    try:
        world.apply(*load_yaml(CANARY / "retrain.yaml"))
        world.wait_status("ModelVersion", "iris-v2", "the challenger iris-v2 Validated",
                          lambda s: s.get("phase") == "Validated", timeout=600)
        eventually(lambda: any(s.weight == 50 for s in watch.sightings) or fail_if_rolled_back(world, "iris-v2"),
                   "the canary at 50 %", timeout=300)
        world.operator.kill()
        killed_at = time.time()
        # Nobody runs the control loop now; the data plane answers on at 50 %, from both versions.
        eventually(lambda: len(traffic.snapshot().versions_sent_after(killed_at)) == 2
                   and sum(traffic.snapshot().versions_sent_after(killed_at).values()) >= 40,
                   "answers from both versions while the operator is down", timeout=60)
        config = world.get("ConfigMap", "iris-router-config", "v1")["data"]["router.json"]
        assert json.loads(config)["weight"] == 50, config
        world.operator.start()
        restarted_at = time.time()
        status = world.wait_status("InferenceService", SERVICE, "iris-v2 promoted and the rollout finished",
                                   lambda s: s.get("champion") == "iris-v2" and s.get("rolloutStage") is None,
                                   timeout=300)
        world.snapshots["isvc promoted"] = world.kubectl_json("isvc", SERVICE)
        promoted_seen = watch.first(phase="Promoted")
        assert promoted_seen is not None
        world.wait_answers_after(traffic, promoted_seen + 2, "answers after the promotion", "iris-v2")
    finally:
        report = traffic.stop()
        sightings = watch.stop()

    assert report.failures == [], "\n".join(report.failures[:20])
    assert report.sent > 200 and rate_of(report) >= 20, (report.sent, rate_of(report))
    # Every step, in order; the kill at 50 % neither repeated a step nor skipped one.
    assert weights_in_order(sightings) == STEPS, sightings
    assert all(s.time >= restarted_at for s in sightings if s.weight == 100), (restarted_at, sightings)
    # Each step was entered once (a restarted operator that started the step again would say it again).
    advanced = [(e["message"], e.get("count") or 1) for e in world.events(SERVICE, "StepAdvanced")]
    for index, weight in enumerate(STEPS):
        said = f"step {index + 1}/{len(STEPS)}: {weight}% of traffic to iris-v2"
        assert sum(n for m, n in advanced if m == said) == 1, (said, advanced)
    # The zero-gap promotion: Promoting seen, then not one answer from the old version.
    stages = [(s.phase, s.stage) for s in sightings]
    assert ("Progressing", "Promoting") in stages, stages
    promoted_at = history_time(status, "Promoted", "iris-v2")
    for moment in (promoted_at, promoted_seen):
        after = report.versions_sent_after(moment)
        assert after["iris-v1"] == 0 and after["iris-v2"] > 0, after
    assert world.operator.forbidden() == [], "\n".join(world.operator.forbidden())


def test_a_worse_challenger_is_rolled_back_with_no_client_error_and_the_failed_check_is_named(
        served: ServingWorld) -> None:
    world = served
    world.apply(inference_service(interval=QUICK_INTERVAL))
    traffic = world.traffic(SERVICE, rate=QUICK_RATE).start()
    try:
        world.apply(*load_yaml(MANIFESTS / "worse.yaml"))
        status = world.wait_status("InferenceService", SERVICE, "the worse iris-v3 rolled back",
                                   lambda s: "iris-v3" in s.get("rolledBackVersions", [])
                                   and s.get("rolloutStage") is None, timeout=600)
        world.snapshots["isvc rolled back"] = world.kubectl_json("isvc", SERVICE)
        rolled_back_at = history_time(status, "RolledBack", "iris-v3")
        world.wait_answers_after(traffic, rolled_back_at + 2, "answers after the rollback")
    finally:
        report = traffic.stop()

    assert report.failures == [], "\n".join(report.failures[:20])
    assert report.by_version["iris-v3"] > 0, report.by_version  # it did serve part of the traffic
    assert report.versions_sent_after(rolled_back_at + 2)["iris-v3"] == 0
    assert status["phase"] == "RolledBack" and status["champion"] == "iris-v2"
    # The check that failed, with its numbers (a one-split tree: online accuracy, from the feedback).
    failed = [c for c in status["lastAnalysis"]["checks"] if c["verdict"] == "Fail"]
    assert failed and all(re.search(r"\d+\.\d+%", c["message"]) for c in failed), failed
    assert "onlineAccuracy" in {c["name"] for c in failed}, failed
    progressing = world.condition("InferenceService", SERVICE, "Progressing")
    assert progressing and progressing["status"] == "False" and progressing["reason"] == "RolledBack", progressing
    [event] = world.events(SERVICE, "RolledBack")
    assert event["type"] == "Warning" and event["message"].startswith("rolled back iris-v3; all traffic to iris-v2")
    for check in failed:
        assert check["message"] in progressing["message"], (check["message"], progressing["message"])
        assert check["message"] in event["message"], (check["message"], event["message"])


def test_drift_starts_a_retrain_whose_version_is_canaried_to_a_verdict_without_a_manual_step(
        served: ServingWorld) -> None:
    world = served
    world.apply(inference_service(interval=QUICK_INTERVAL))
    rows, labels = iris_rows()
    # Inputs far from the training data: every feature scaled up threefold.
    shifted = world.traffic(SERVICE, [[v * 3.0 + 2.0 for v in row] for row in rows], labels).start()
    try:
        drift = world.wait_status("InferenceService", SERVICE, "the service Drifted",
                                  lambda s: (s.get("drift") or {}).get("drifted"), timeout=300)["drift"]
        retrain = eventually(lambda: world.list("Experiment", labels={"mlops.seed.io/retrain-of": "iris"}),
                             "the drift-triggered retrain Experiment", timeout=300)
    finally:
        report = shifted.stop()
    assert report.failures == [], "\n".join(report.failures[:20])
    assert drift["version"] == "iris-v2" and drift["maxPsi"] > 0.25
    [child] = retrain
    assert child["metadata"]["name"] == "iris-r1"
    assert child["metadata"]["annotations"]["mlops.seed.io/retrain-reason"].startswith(
        "drift on InferenceService iris: iris-v2")

    # The world is back to normal; the retrained version goes through the canary on its own.
    traffic = world.traffic(SERVICE, rate=QUICK_RATE).start()
    try:
        version = eventually(lambda: world.status("Experiment", "iris-r1").get("modelVersion"),
                             "the retrain's ModelVersion", timeout=600)
        status = world.wait_status("InferenceService", SERVICE, f"{version}'s canary to a verdict",
                                   lambda s: any(h["version"] == version and h["action"] in ("Promoted", "RolledBack")
                                                 for h in s.get("history", [])) and s.get("rolloutStage") is None,
                                   timeout=600)
    finally:
        report = traffic.stop()
    assert report.failures == [], "\n".join(report.failures[:20])
    [verdict] = [h for h in status["history"] if h["version"] == version]
    assert verdict["action"] in ("Promoted", "RolledBack")
    world.snapshots["isvc after the retrain"] = world.kubectl_json("isvc", SERVICE)
    world.snapshots["experiment retrained"] = world.kubectl_json("experiment", "iris")


def test_argo_cd_health_of_the_trained_objects(world: ServingWorld) -> None:
    experiment = world.kubectl_json("experiment", "iris")
    version = world.kubectl_json("modelversion", "iris-v1")
    assert experiment["status"]["phase"] == "Succeeded"
    assert health(experiment)[0] == "Healthy", health(experiment)
    assert health(version)[0] == "Healthy", health(version)


def test_argo_cd_health_of_the_canary_outcomes(served: ServingWorld) -> None:
    snapshots = served.snapshots
    missing = {"isvc promoted", "isvc rolled back"} - set(snapshots)
    assert not missing, f"the canary tests above did not record {missing}"
    assert health(snapshots["isvc promoted"])[0] == "Healthy", health(snapshots["isvc promoted"])
    state, message = health(snapshots["isvc rolled back"])
    assert state == "Degraded" and message.startswith("RolledBack: "), (state, message)
    worse = served.kubectl_json("modelversion", "iris-v3")
    assert health(worse)[0] == "Healthy"  # a Validated version that lost its canary is still a valid record
    if "isvc after the retrain" in snapshots:
        # A promoted retrain is Healthy (phase Promoted, then Stable); a rolled-back one Degraded.
        after = snapshots["isvc after the retrain"]
        verdict = after["status"]["history"][-1]["action"]
        expected = {"Promoted": "Healthy", "RolledBack": "Degraded"}[verdict]
        assert health(after)[0] == expected, (verdict, after["status"]["phase"], health(after))
        assert health(snapshots["experiment retrained"])[0] == "Healthy"


def test_deleting_the_inference_service_collects_its_children_through_the_garbage_collector(
        world: ServingWorld) -> None:
    children = {("apps/v1", "Deployment"), ("v1", "Service"), ("v1", "ConfigMap"), ("v1", "Secret")}

    def owned() -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for api_version, kind in children:
            for obj in world.list(kind, api_version):
                if any(r.get("kind") == "InferenceService" for r in obj["metadata"].get("ownerReferences") or []):
                    found.setdefault(kind, []).append(obj["metadata"]["name"])
        return found

    before = eventually(lambda: (o := owned()) and {"Deployment", "Service", "ConfigMap"} <= set(o) and o,
                        "the InferenceService's children", timeout=120)
    assert {"iris-champion", "iris-router"} <= set(before["Deployment"]), before
    assert {"iris", "iris-champion"} <= set(before["Service"]), before
    assert "iris-router-config" in before["ConfigMap"], before
    world.cluster.admin.delete("mlops.seed.io/v1alpha1", "InferenceService", world.namespace, SERVICE)
    eventually(lambda: not owned() and not world.list("Pod", "v1", SERVING),
               "the garbage collector to remove every child and their Pods", timeout=180)
    # What the operator never owned stays: the S3 Secret, the ModelVersions.
    assert world.get("Secret", "mlops-s3", "v1")
    assert world.get("ModelVersion", "iris-v1")
