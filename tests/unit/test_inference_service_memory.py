"""The InferenceService controller against the in-memory cluster: children, the router's
ConfigMap weights following the steps, status, Events and the canary metrics. The data plane
is the deterministic traffic world, driven by the weights in the ConfigMap the controller
wrote (what the router would read)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from _inference_world import NS, WorldReader, inference_service, model_version
from _rollout_world import T0, Behaviour, World
from prometheus_client import REGISTRY

from mlops_operator.api.inference_service import TrafficSplit
from mlops_operator.cluster.memory import InMemoryCluster
from mlops_operator.cluster.port import NotFound
from mlops_operator.controllers import inference_service as controller

MV = "mlops.seed.io/v1alpha1"


class Harness:
    def __init__(self, svc_doc, *versions, world: World | None = None, name: str = "iris") -> None:
        self.now = T0
        self.cluster = InMemoryCluster(now=lambda: self.now)
        self.name = name
        self.world = world or World()
        self.reader = WorldReader(self.world, routers_use=self.routers)
        for doc in versions:
            self.add_version(doc)
        self.cluster.create(svc_doc)
        self.configs: list[dict] = []

    def add_version(self, doc) -> None:
        status = doc.pop("status")
        self.cluster.create(doc)
        self.cluster.patch_status(MV, "ModelVersion", NS, doc["metadata"]["name"], status)

    def obj(self) -> dict:
        return self.cluster.get(MV, "InferenceService", NS, self.name)

    def status(self) -> dict:
        return self.obj().get("status") or {}

    def sync(self):
        return controller.sync(self.cluster, self.obj(), self.now, metrics_reader=self.reader)

    def kubelet(self) -> None:
        """Every Deployment's pods come up at once."""
        for deployment in self.cluster.list("apps/v1", "Deployment", NS):
            replicas = deployment["spec"]["replicas"]
            wanted = {"observedGeneration": deployment["metadata"]["generation"], "replicas": replicas,
                      "readyReplicas": replicas, "updatedReplicas": replicas, "availableReplicas": replicas}
            if deployment.get("status") != wanted:
                self.cluster.patch_status("apps/v1", "Deployment", NS, deployment["metadata"]["name"], wanted)

    def routers(self) -> list[dict]:
        """The router re-reads its file: it uses what the ConfigMap says."""
        return [self.router_config()]

    def router_config(self) -> dict:
        try:
            cm = self.cluster.get("v1", "ConfigMap", NS, f"{self.name}-router-config")
        except NotFound:  # before the first reconcile: no router yet, the champion would get it all
            return {"champion": None, "challenger": None, "weight": 0, "mode": "canary"}
        return json.loads(cm["data"]["router.json"])

    def split(self) -> TrafficSplit:
        config = self.router_config()
        weight = config["weight"] if config["challenger"] else 0
        mode = config["mode"] if config["challenger"] else "canary"
        return TrafficSplit(champion=100 - weight, challenger=weight, mode=mode)

    def run(self, seconds: int, *, until=lambda h: False) -> None:
        for _ in range(seconds):
            self.world.serve(self.split(), 1.0)
            self.now += timedelta(seconds=1)
            self.sync()
            config = self.router_config()
            if not self.configs or self.configs[-1] != config:
                self.configs.append(config)
            if until(self):
                return
            self.kubelet()

    def events(self) -> list[tuple[str, str, str]]:
        return [(e["type"], e["reason"], e["message"]) for e in self.cluster.list("v1", "Event", NS)]


def weights(configs) -> list[int]:
    out: list[int] = []
    for config in configs:
        weight = config["weight"] if config["challenger"] else 0
        if not out or out[-1] != weight:
            out.append(weight)
    return out


def metric(name: str, **labels) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_children_are_owned_and_labelled_and_the_service_becomes_stable():
    h = Harness(inference_service(name="stable-svc", champion={"modelVersion": "iris-v1"}), model_version(1),
                name="stable-svc")
    h.sync()
    owner_uid = h.obj()["metadata"]["uid"]
    children = [*h.cluster.list("apps/v1", "Deployment", NS), *h.cluster.list("v1", "Service", NS),
                *h.cluster.list("v1", "ConfigMap", NS)]
    assert sorted(f"{c['kind']}/{c['metadata']['name']}" for c in children) == [
        "ConfigMap/stable-svc-router-config", "Deployment/stable-svc-champion", "Deployment/stable-svc-router",
        "Service/stable-svc", "Service/stable-svc-champion"]
    for child in children:
        assert child["metadata"]["ownerReferences"][0]["uid"] == owner_uid
        assert child["metadata"]["labels"]["mlops.seed.io/inferenceservice"] == "stable-svc"
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "mlops-operator"
    assert h.status()["phase"] == "Stable"
    assert next(c for c in h.status()["conditions"] if c["type"] == "Ready")["status"] == "False"
    h.kubelet()
    h.now += timedelta(seconds=1)
    h.sync()
    status = h.status()
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["status"] == "True"
    assert status["champion"] == "iris-v1" and status["url"] == "http://stable-svc.ml.svc:8080"
    assert metric("mlops_canary_phase_info", namespace=NS, service="stable-svc", phase="Stable") == 1.0


def test_a_healthy_challenger_walks_the_steps_and_is_promoted():
    h = Harness(inference_service(name="good", champion={"modelVersion": "iris-v1"},
                                  challenger={"policy": "latestValidated"}), model_version(1), name="good")
    h.run(5)
    assert h.status()["phase"] == "Stable" and "challenger" not in h.status()
    h.add_version(model_version(2))  # continuous delivery: a newer Validated version appears
    h.run(200, until=lambda h: h.status()["phase"] == "Stable" and "previous" in h.status())
    status = h.status()
    assert weights(h.configs) == [0, 10, 25, 50, 100, 0]
    assert (status["champion"], status["previous"], status.get("challenger")) == ("iris-v2", "iris-v1", None)
    assert status["history"][-1]["action"] == "Promoted" and status["history"][-1]["replaced"] == "iris-v1"
    assert "errorRate.challenger" in status["history"][-1]["metrics"]
    champion = h.cluster.get("apps/v1", "Deployment", NS, "good-champion")
    assert champion["spec"]["template"]["metadata"]["labels"]["mlops.seed.io/modelversion"] == "iris-v2"
    assert "--version" in champion["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not h.cluster.list("apps/v1", "Deployment", NS, {"mlops.seed.io/role": "challenger"})
    reasons = [reason for _, reason, _ in h.events()]
    for reason in ("RolloutStarted", "StepAdvanced", "Promoted"):
        assert reason in reasons
    assert metric("mlops_canary_promotions_total", namespace=NS, service="good") == 1.0
    assert metric("mlops_canary_weight", namespace=NS, service="good") == 0.0
    assert metric("mlops_analysis_verdicts_total", namespace=NS, service="good", verdict="Pass") >= 4


def test_zero_gap_promotion_routes_everything_to_the_challenger_until_the_champion_is_ready():
    h = Harness(inference_service(name="gap", champion={"modelVersion": "iris-v1"},
                                  challenger={"modelVersion": "iris-v2"}), model_version(1), model_version(2),
                name="gap")
    h.run(200, until=lambda h: h.status().get("rolloutStage") == "Promoting")
    # The kubelet is slow now: the champion's new pods are not ready yet.
    for _ in range(3):
        h.now += timedelta(seconds=1)
        h.sync()
        assert h.router_config()["weight"] == 100 and h.router_config()["challenger"]
        assert h.status()["champion"] == "iris-v1"
    h.kubelet()
    h.now += timedelta(seconds=1)
    h.sync()
    assert h.status()["champion"] == "iris-v2" and h.router_config()["challenger"] is None
    # The challenger Deployment stays until the routers say they no longer use it.
    assert h.cluster.list("apps/v1", "Deployment", NS, {"mlops.seed.io/role": "challenger"})
    h.now += timedelta(seconds=1)
    h.sync()
    assert not h.cluster.list("apps/v1", "Deployment", NS, {"mlops.seed.io/role": "challenger"})


def test_a_bad_challenger_is_rolled_back_within_one_interval():
    world = World(challenger=Behaviour(error_rate=0.3))
    h = Harness(inference_service(name="bad", champion={"modelVersion": "iris-v1"},
                                  challenger={"policy": "latestValidated"}), model_version(1), model_version(2),
                world=world, name="bad")
    h.run(100, until=lambda h: h.status()["phase"] == "RolledBack")
    status = h.status()
    assert weights(h.configs) == [0, 10, 0]
    step_started = next(c for c in h.configs if c["weight"] == 10)
    assert h.router_config()["challenger"] is None and h.router_config()["weight"] == 0
    assert status["rolledBackVersions"] == ["iris-v2"] and status["champion"] == "iris-v1"
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "RolledBack"
    assert "challenger error rate 30.00%" in progressing["message"]
    warning = [m for t, r, m in h.events() if r == "RolledBack"]
    assert warning and "30.00%" in warning[0]
    assert step_started is not None
    assert metric("mlops_canary_rollbacks_total", namespace=NS, service="bad") == 1.0
    # It is never tried again, and the champion keeps serving.
    h.run(30)
    assert h.status()["phase"] == "RolledBack" and "challenger" not in h.status()
    assert not h.cluster.list("apps/v1", "Deployment", NS, {"mlops.seed.io/role": "challenger"})


def test_the_rollback_takes_at_most_one_interval_after_the_errors_start():
    world = World()
    h = Harness(inference_service(name="spike", champion={"modelVersion": "iris-v1"},
                                  challenger={"modelVersion": "iris-v2"}), model_version(1), model_version(2),
                world=world, name="spike")
    h.run(200, until=lambda h: h.router_config()["weight"] == 25)
    world.challenger.error_rate = 0.2
    spiked_at = h.now
    h.run(60, until=lambda h: h.router_config()["challenger"] is None)
    assert h.status()["phase"] == "RolledBack"
    assert h.now - spiked_at <= timedelta(seconds=10)


@pytest.mark.parametrize("stop_at", [10, 25, 50, 100])
def test_an_operator_restart_at_each_step_keeps_the_weights(stop_at):
    h = Harness(inference_service(name=f"restart-{stop_at}", champion={"modelVersion": "iris-v1"},
                                  challenger={"modelVersion": "iris-v2"}), model_version(1), model_version(2),
                name=f"restart-{stop_at}")
    h.run(200, until=lambda h: h.router_config()["weight"] == stop_at)
    before_config, before_status = h.router_config(), h.status()
    # A new operator process: a fresh reader, nothing but the cluster's state to go on.
    h.reader = WorldReader(h.world, routers_use=h.routers)
    h.now += timedelta(milliseconds=100)
    h.sync()
    assert h.router_config() == before_config
    after = h.status()
    for key in ("currentStep", "traffic", "split", "champion", "challenger", "stepStartedTime"):
        assert after.get(key) == before_status.get(key), key
    for key in ("windowBaseline", "rolloutBaseline"):  # a window, once started, keeps its start
        if before_status.get(key) is not None:
            assert after.get(key) == before_status.get(key), key
    h.run(200, until=lambda h: h.status()["phase"] == "Stable" and "previous" in h.status())
    assert h.status()["champion"] == "iris-v2"


def test_paused_spec_holds_the_weights_and_reports_paused():
    h = Harness(inference_service(name="paused", champion={"modelVersion": "iris-v1"},
                                  challenger={"modelVersion": "iris-v2"}), model_version(1), model_version(2),
                name="paused")
    h.run(200, until=lambda h: h.router_config()["weight"] == 25)
    obj = h.obj()
    obj["spec"]["rollout"]["paused"] = True
    h.cluster.replace(obj)
    h.run(60)
    assert h.router_config()["weight"] == 25 and h.status()["phase"] == "Paused"
    assert "Paused" in [r for _, r, _ in h.events()]
    [paused] = [e for e in h.cluster.list("v1", "Event", NS) if e["reason"] == "Paused"]
    assert paused.get("count", 1) == 1  # announced once, not on every pass while paused
    obj = h.obj()
    obj["spec"]["rollout"]["paused"] = False
    h.cluster.replace(obj)
    h.run(200, until=lambda h: "previous" in h.status() and h.status()["phase"] == "Stable")
    assert h.status()["champion"] == "iris-v2"


def test_metrics_are_read_only_when_an_analysis_is_due():
    h = Harness(inference_service(name="reads", champion={"modelVersion": "iris-v1"},
                                  challenger={"modelVersion": "iris-v2"}), model_version(1), model_version(2),
                name="reads")
    h.run(60)
    # About one read to start each window and one per 10 s interval, not one per reconcile.
    assert 0 < len(h.reader.reads) <= 60 // 10 + 6
    assert {t.challenger_service for t in h.reader.reads} == {"reads-challenger"}
