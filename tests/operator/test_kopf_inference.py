"""The InferenceService through the kopf wiring against kmock's Kubernetes API emulator.

`mlops run` runs in its own process with a kubeconfig that points at the emulator, as it
would against a cluster. The test plays the Deployment controller (it marks Deployments
ready) and the data plane: `spec.rollout.analysis.prometheusURL` points at a small HTTP
server that answers the Prometheus query API with counters of a deterministic traffic
world, split by the weights in the router ConfigMap the operator wrote. Waits poll with a
deadline; nothing sleeps for a fixed time."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mlops_operator.api.inference_service import APPROVAL_ANNOTATION, TrafficSplit
from mlops_operator.cluster.kubernetes import KubernetesCluster
from mlops_operator.cluster.port import NotFound
from operator_process import call, eventually, running_operator

pytestmark = pytest.mark.timeout(900)  # generous: every wait below has its own deadline
WAIT = 120.0  # seconds any one condition may take on a loaded machine

API = "mlops.seed.io/v1alpha1"
NS = "serving"


@pytest.fixture
async def cluster(k8s_emulator: Any, tmp_path: Path) -> AsyncIterator[KubernetesCluster]:
    watched = ("/inferenceservices", "/modelversions", "/deployments")
    async with running_operator(k8s_emulator, tmp_path, NS, watched) as cluster:
        yield cluster


class FakePrometheus:
    """Answers `/api/v1/query` for the operator's queries with counters of a traffic world
    that serves each request by the weights in the router ConfigMap (what the router does)."""

    def __init__(self, cluster: KubernetesCluster, rps: float = 400.0) -> None:
        self.cluster, self.rps = cluster, rps
        self.lock = threading.Lock()
        self.last = time.monotonic()
        self.counts = {v: {"requests": 0.0, "correct": 0.0, "incorrect": 0.0} for v in ("champion", "challenger")}
        self.versions: dict[str, str] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _split(self) -> TrafficSplit:
        try:
            cm = self.cluster.get("v1", "ConfigMap", NS, "iris-router-config")
        except NotFound:
            return TrafficSplit()
        config = json.loads(cm["data"]["router.json"])
        weight = config["weight"] if config["challenger"] else 0
        return TrafficSplit(champion=100 - weight, challenger=weight)

    def _advance(self) -> None:
        split = self._split()
        with self.lock:
            now = time.monotonic()
            n = self.rps * (now - self.last)
            self.last = now
            for variant, share in (("champion", split.champion), ("challenger", split.challenger)):
                served = n * share / 100
                self.counts[variant]["requests"] += served
                self.counts[variant]["correct"] += served * 0.95
                self.counts[variant]["incorrect"] += served * 0.05

    def answer(self, query: str) -> list[dict[str, Any]]:
        self._advance()
        with self.lock:
            counts = {v: dict(c) for v, c in self.counts.items()}
        if query.startswith("mlops_router_weight{"):
            return [{"metric": {"service": "iris"}, "value": [0, str(self._split().challenger)]}]
        if query.startswith("sum by (service, variant, code) (mlops_router_requests_total"):
            return [{"metric": {"service": "iris", "variant": v, "code": "200"}, "value": [0, str(c["requests"])]}
                    for v, c in counts.items()]
        if "mlops_router_request_duration_seconds_bucket" in query:
            return [{"metric": {"service": "iris", "variant": v, "le": le}, "value": [0, str(c["requests"])]}
                    for v, c in counts.items() for le in ("0.01", "+Inf")]
        if query.startswith("sum by (model, version, outcome) (mlops_feedback_total"):
            versions = query.split('version=~"')[1].split('"')[0].split("|")
            series = []
            for variant, version in zip(("champion", "challenger"), versions):
                for outcome in ("correct", "incorrect"):
                    series.append({"metric": {"model": "iris", "version": version, "outcome": outcome},
                                   "value": [0, str(counts[variant][outcome])]})
            return series
        return []

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        prometheus = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query).get("query", [""])[0]
                body = json.dumps({"status": "success",
                                   "data": {"resultType": "vector", "result": prometheus.answer(query)}}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> FakePrometheus:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def model_version(version: int) -> dict[str, Any]:
    name = f"iris-v{version}"
    prefix = f"s3://mlops/{NS}/iris/iris-t{version:03d}/"
    return {"apiVersion": API, "kind": "ModelVersion", "metadata": {"name": name, "namespace": NS},
            "spec": {"model": "iris", "version": version, "metrics": {"accuracy": 0.9},
                     "artifact": {"uri": prefix, "modelUri": prefix + "model.skops", "sha256": "ab" * 32}}}


def mark_ready(cluster: KubernetesCluster) -> int:
    """The Deployment controller: every Deployment's replicas are up."""
    changed = 0
    for deployment in cluster.list("apps/v1", "Deployment", NS):
        replicas = deployment["spec"]["replicas"]
        wanted = {"replicas": replicas, "readyReplicas": replicas, "updatedReplicas": replicas,
                  "availableReplicas": replicas}
        if {k: (deployment.get("status") or {}).get(k) for k in wanted} != wanted:
            cluster.patch_status("apps/v1", "Deployment", NS, deployment["metadata"]["name"], wanted)
            changed += 1
    return changed


def phase(cluster: KubernetesCluster) -> str | None:
    return (cluster.get(API, "InferenceService", NS, "iris").get("status") or {}).get("phase")


async def test_inference_service_is_served_then_walks_a_canary_through_the_wiring(cluster: KubernetesCluster):
    await call(cluster.create, model_version(1))
    await eventually(lambda: (cluster.get(API, "ModelVersion", NS, "iris-v1").get("status") or {}).get(
        "phase") == "Validated", "iris-v1 Validated by the ModelVersion controller", timeout=WAIT)
    with FakePrometheus(cluster) as prometheus:
        isvc = await call(cluster.create, {
            "apiVersion": API, "kind": "InferenceService", "metadata": {"name": "iris", "namespace": NS},
            "spec": {"model": "iris", "challenger": {"policy": "latestValidated"},
                     "rollout": {"steps": [20, 50, 100], "interval": "1s", "manualApproval": True,
                                 "analysis": {"minSampleSize": 20, "prometheusURL": prometheus.url}}}})
        uid = isvc["metadata"]["uid"]

        def children() -> list[dict[str, Any]]:
            found = [*cluster.list("apps/v1", "Deployment", NS), *cluster.list("v1", "Service", NS),
                     *cluster.list("v1", "ConfigMap", NS, {"mlops.seed.io/inferenceservice": "iris"})]
            return found if len(found) == 5 else []

        found = await eventually(children, "the Deployments, Services and ConfigMap", timeout=WAIT)
        assert sorted(f"{c['kind']}/{c['metadata']['name']}" for c in found) == [
            "ConfigMap/iris-router-config", "Deployment/iris-champion", "Deployment/iris-router",
            "Service/iris", "Service/iris-champion"]
        for child in found:
            ref = child["metadata"]["ownerReferences"][0]
            assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("InferenceService", "iris", uid, True)
            assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "mlops-operator"
        champion = next(c for c in found if c["metadata"]["name"] == "iris-champion" and c["kind"] == "Deployment")
        args = champion["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[:2] == ["mlops_runtime.serve", "--model-uri"] and args[-4:] == ["--version", "iris-v1",
                                                                                 "--role", "champion"]

        await call(mark_ready, cluster)

        def stable() -> dict[str, Any] | None:
            status = cluster.get(API, "InferenceService", NS, "iris").get("status") or {}
            ready = next((c for c in status.get("conditions", ()) if c["type"] == "Ready"), {})
            return status if status.get("phase") == "Stable" and ready.get("status") == "True" else None

        status = await eventually(stable, "phase Stable with Ready=True", timeout=WAIT)
        assert status["champion"] == "iris-v1" and status["split"] == "100/0"
        assert status["url"] == "http://iris.serving.svc:8080"

        # Continuous delivery: a newer version is validated, the rollout starts by itself; each
        # step waits for the approval annotation (a manual gate, released through the API).
        await call(cluster.create, model_version(2))
        weights: list[int] = []
        gates: list[str] = []

        def promoted() -> bool:
            mark_ready(cluster)
            config = json.loads(cluster.get("v1", "ConfigMap", NS, "iris-router-config")["data"]["router.json"])
            weight = config["weight"] if config["challenger"] else 0
            if not weights or weights[-1] != weight:
                weights.append(weight)
            obj = cluster.get(API, "InferenceService", NS, "iris")
            status = obj.get("status") or {}
            if status.get("rolloutStage") == "AwaitingApproval":
                assert status["phase"] == "Paused"
                step = 0 if status.get("currentStep") is None else status["currentStep"] + 1
                approval = ",".join(str(i) for i in range(step + 1))
                if not gates or gates[-1] != approval:
                    gates.append(approval)
                    cluster.patch(API, "InferenceService", NS, "iris",
                                  {"metadata": {"annotations": {APPROVAL_ANNOTATION: approval}}})
            return status.get("phase") == "Stable" and status.get("champion") == "iris-v2"

        try:
            await eventually(promoted, "iris-v2 promoted", timeout=3 * WAIT)  # three steps and a promotion
        except AssertionError as error:
            status = await call(lambda: cluster.get(API, "InferenceService", NS, "iris")["status"])
            raise AssertionError(f"{error}; weights {weights}, gates {gates}, status {status}") from None
    final = await call(lambda: cluster.get(API, "InferenceService", NS, "iris")["status"])
    assert gates == ["0", "0,1", "0,1,2"], (weights, final.get("history"), final.get("lastAppliedHash"))
    status = await call(lambda: cluster.get(API, "InferenceService", NS, "iris")["status"])
    assert weights == [0, 20, 50, 100, 0]
    assert status["previous"] == "iris-v1" and status["history"][-1]["action"] == "Promoted"
    await eventually(lambda: not cluster.list("apps/v1", "Deployment", NS, {"mlops.seed.io/role": "challenger"}),
                     "the challenger Deployment deleted", timeout=WAIT)
    # The ModelVersion controller reads the roles from this status. The InferenceService's
    # events wake it at once, usually; a wake-up can observe the service just before its last
    # status write, and then only its 60 s timer would put it right. Rather than wait out a
    # production interval, the test wakes it (an annotation change is an update event) now
    # that the service's final status is written.
    await call(cluster.patch, API, "ModelVersion", NS, "iris-v2",
               {"metadata": {"annotations": {"test.mlops.seed.io/wake": "promoted"}}})
    await eventually(lambda: (cluster.get(API, "ModelVersion", NS, "iris-v2").get("status") or {}).get(
        "role") == "champion", "iris-v2 shown as champion", timeout=WAIT)
