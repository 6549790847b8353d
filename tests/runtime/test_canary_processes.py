"""The canary with real processes: models trained by the training runtime into the S3 fixture,
the model servers and the router the controller's Deployments describe, run on 127.0.0.1;
real traffic and label feedback through the router; the controller reading the real
`/metrics` through `MetricsReader`. A test-side kubelet turns the controller's Deployments
into processes and its ConfigMap into the router's config file (as local mode does).

A good challenger is promoted; a wrong model (a majority-class dummy: no errors, poor
accuracy) and a challenger that dies mid-rollout are rolled back; clients never see an error.

Nothing here depends on the machine's speed: the controller's clock is the test's (it moves
a quarter second per pass), each pass waits for a fixed amount of new client traffic, and
every wait is for a condition (a process ready, the router serving the projected config,
traffic flowing) with a generous deadline.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sklearn.datasets import load_iris

from trainer import train_all
from mlops_operator.cluster.memory import InMemoryCluster
from mlops_operator.cluster.port import NotFound
from mlops_operator.controllers import inference_service as controller
from mlops_operator.local import proxy
from mlops_operator.local.proxy import ServiceProxy
from mlops_operator.metrics_reader import MetricsReader
from mlops_operator.reconcile import inference_service as logic
from mlops_operator.reconcile.common import Settings
from mlops_runtime.serving_process import ServerProcess, free_port

NS = "canary"
MV_API = "mlops.seed.io/v1alpha1"
IRIS = load_iris()
ROWS = [(row.tolist(), int(label)) for row, label in zip(IRIS.data, IRIS.target)]
RUN_TIMEOUT = 600.0  # a deadline for a loaded machine, not an expectation
PASS = timedelta(seconds=0.25)  # the controller's clock moves this much per pass
REQUESTS_PER_PASS = 16  # 128 per 2 s interval: 32 at a 25 % step, minSampleSize is 20
pytestmark = pytest.mark.timeout(1500)


def wait_for(condition, what: str, timeout: float = 120.0, every: float = 0.02) -> None:
    """Poll `condition` until it holds; an AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def train_versions(s3: Any, bucket: str, tmp: Path) -> dict[str, dict[str, Any]]:
    configs = {
        "iris-v1": ("sklearn.linear_model.LogisticRegression", {"max_iter": 500}),
        "iris-v2": ("sklearn.linear_model.LogisticRegression", {"max_iter": 500, "C": 0.5}),
        "iris-v3": ("sklearn.dummy.DummyClassifier", {"strategy": "most_frequent"}),
    }
    return train_all(s3, tmp, {
        name: {"dataset": {"uri": "sklearn://iris"}, "estimator": estimator, "params": params,
               "onnx": False, "output": f"s3://{bucket}/{NS}/iris/{name}/"}
        for name, (estimator, params) in configs.items()})


@pytest.fixture(scope="module")
def trained(s3: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    bucket = f"canary-{uuid.uuid4().hex[:12]}"
    s3.client().make_bucket(bucket)
    return train_versions(s3, bucket, tmp_path_factory.mktemp("train"))


def model_version_doc(name: str, version: int, summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": MV_API, "kind": "ModelVersion",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"model": "iris", "version": version,
                 "artifact": {"uri": summary["artifactUri"], "modelUri": summary["modelUri"],
                              "sha256": summary["sha256"], "servingFormat": "skops"},
                 "metrics": summary["metrics"]},
    }


def write_configmap(folder: Path, text: str) -> None:
    """Update `folder` as the kubelet updates a ConfigMap volume: a new directory, then an
    atomic swap of the `..data` symlink that `router.json` links through."""
    stamp = folder / f"..{time.time_ns()}"
    stamp.mkdir()
    (stamp / "router.json").write_text(text)
    link = folder / "..data_tmp"
    link.symlink_to(stamp.name)
    os.replace(link, folder / "..data")
    if not (folder / "router.json").is_symlink():
        (folder / "router.json").symlink_to("..data/router.json")


class LocalKubelet:
    """Runs the controller's Deployments as processes, gives each Service a stable local
    port (local mode's ServiceProxy) that forwards to its current pod, and projects the router
    ConfigMap into a config file and its admin Secret into a token file (URLs mapped). Stable
    Service addresses matter: the router accepts only the upstreams on its command line."""

    def __init__(self, cluster: InMemoryCluster, s3: Any, tmp: Path) -> None:
        self.cluster, self.s3, self.tmp = cluster, s3, tmp
        self.processes: dict[str, tuple[str, ServerProcess]] = {}  # deployment -> (template key, process)
        self.services: dict[str, str] = {}  # service name -> local base URL, once a pod serves it
        self.proxy = ServiceProxy()
        self.service_ports: dict[str, int] = {}
        self.config_dir = tmp / "router-config"
        self.config_dir.mkdir()
        self.admin_dir = tmp / "router-admin"
        self.admin_dir.mkdir()
        self.config_text: str | None = None
        self.stopped: list[ServerProcess] = []
        self.on_change: Any = None  # called with the running processes when they change

    def url_for(self, service: str, namespace: str, port: int) -> str:
        return self.services.get(service, f"http://127.0.0.1:9/{service}")

    def service_port(self, service: str) -> int:
        if service not in self.service_ports:
            self.service_ports[service] = free_port()
        return self.service_ports[service]

    def _local(self, text: str) -> str:
        return re.sub(rf"http://([a-z0-9-]+)\.{NS}\.svc:8080",
                      lambda m: f"http://127.0.0.1:{self.service_port(m[1])}", text)

    def _serve(self, service: str, process: ServerProcess) -> None:
        """The Service moves to `process` (new connections go there)."""
        self.proxy.set_backends(self.service_port(service), [process.port])
        self.services[service] = f"http://127.0.0.1:{self.service_port(service)}"

    def project_admin_token(self) -> None:
        for secret in self.cluster.list("v1", "Secret", NS):
            token = logic.token_of_router_admin_secret(secret)
            if token:
                (self.admin_dir / logic.ROUTER_ADMIN_KEY).write_text(token)

    def _start(self, name: str, container: dict[str, Any]) -> ServerProcess:
        module, *args = container["args"]
        cut = args.index("--port")
        args = args[:cut] + args[cut + 2:]  # ServerProcess picks the port
        if module == "mlops_runtime.router":
            self.project_admin_token()
            args = [a.replace(logic.ROUTER_ADMIN_DIR, str(self.admin_dir)).replace(logic.ROUTER_CONFIG_DIR,
                                                                                 str(self.config_dir))
                    for a in args]
            args += ["--config-poll", "0.2", "--health-interval", "0.3"]
        args += ["--log-level", "warning"]
        process = ServerProcess(module, self._local(" ".join(args)).split(" "), env=self.s3.env,
                                log_path=self.tmp / f"{name}-{time.time_ns()}.log")
        return process.start()

    def step(self) -> None:
        deployments = {d["metadata"]["name"]: d for d in self.cluster.list("apps/v1", "Deployment", NS)}
        for name, (_, process) in list(self.processes.items()):
            if name not in deployments:
                process.stop()
                self.stopped.append(process)
                del self.processes[name]
                self.services.pop(name, None)
                self.proxy.set_backends(self.service_port(name), [])
                if self.on_change is not None:
                    self.on_change([p for _, p in self.processes.values()])
        # Model servers first: the router's config needs their URLs.
        for name in sorted(deployments, key=lambda n: n.endswith("-router")):
            deployment = deployments[name]
            template = deployment["spec"]["template"]
            key = json.dumps(template, sort_keys=True)
            current = self.processes.get(name)
            if current is None or current[0] != key:
                if name.endswith("-router"):
                    self.project_config()
                process = self._start(name, template["spec"]["containers"][0])
                process.wait_ready(timeout=90) if not name.endswith("-router") else process.wait_live(timeout=60)
                # A rolling update: the Service moves to the new pod, the router's file follows
                # (it polls every 0.2 s), then the old pod goes, after a grace period.
                self._serve(name, process)
                if name.endswith("-router"):
                    self._serve(name.removesuffix("-router"), process)
                self.processes[name] = (key, process)
                self.project_config(force=True)
                if current is not None:
                    # The old pod goes once nothing routes to it: the router serves the new
                    # config (its SIGTERM lets requests in flight finish).
                    current[1].stop()
                    self.stopped.append(current[1])
                if self.on_change is not None:
                    self.on_change([p for _, p in self.processes.values()])
            replicas = deployment["spec"]["replicas"]
            ready = {"observedGeneration": deployment["metadata"]["generation"], "replicas": replicas,
                     "readyReplicas": replicas, "updatedReplicas": replicas, "availableReplicas": replicas}
            if deployment.get("status") != ready:
                self.cluster.patch_status("apps/v1", "Deployment", NS, name, ready)
        self.project_config()

    def project_config(self, force: bool = False) -> None:
        """Write the ConfigMap's router.json (URLs mapped) as the kubelet would, then wait
        until the router serves it: it polls the file, and what the test does next (stop an
        old pod, count traffic at a new weight) must not race that poll."""
        try:
            cm = self.cluster.list("v1", "ConfigMap", NS)
        except NotFound:
            return
        for item in cm:
            text = self._local(item["data"]["router.json"])
            if force or text != self.config_text:
                write_configmap(self.config_dir, text)
                self.config_text = text
                self.wait_router_follows()

    def wait_router_follows(self) -> None:
        router = self.processes.get("iris-router")
        if router is None or self.config_text is None:
            return
        wanted = json.loads(self.config_text)

        token_file = self.admin_dir / logic.ROUTER_ADMIN_KEY

        def serves_it() -> bool:
            # Reading the config takes the admin token the operator put in its Secret.
            headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"} if token_file.exists() else {}
            try:
                answer = httpx.get(router[1].url + "/admin/config", headers=headers, timeout=5)
                view = answer.json()
            except (httpx.HTTPError, ValueError):
                return False
            if answer.status_code != 200:
                return False
            challenger = (wanted.get("challenger") or "").rstrip("/") or None
            return (view["champion"] == wanted["champion"].rstrip("/") and view["challenger"] == challenger
                    and float(view["weight"]) == float(wanted.get("weight") or 0)
                    and view["mode"] == wanted.get("mode", "canary"))

        wait_for(serves_it, "the router to serve the projected config")

    def router_logs(self) -> str:
        """What the routers (running and stopped) logged: why a client got an error."""
        routers = [p for name, (_, p) in self.processes.items() if name.endswith("-router")]
        routers += [p for p in self.stopped if p.module == "mlops_runtime.router"]
        return "\n".join(p.log_tail() for p in routers)

    def stop_all(self) -> None:
        for _, process in self.processes.values():
            process.stop()
        self.proxy.stop()


class Traffic:
    """Clients calling the stable Service (the router) with iris rows, sending each answer's
    true label back as feedback. Records every status a client saw."""

    def __init__(self, url_of_router, threads: int = 3) -> None:
        self.url_of_router = url_of_router
        self.statuses: Counter[int] = Counter()
        self.feedback: Counter[int] = Counter()
        self.versions: Counter[str] = Counter()
        self.stop_flag = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(seed,), daemon=True) for seed in range(threads)]
        self.errors: list[str] = []

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        wait_for(lambda: self.statuses[200] >= 20, "clients to be answered")  # traffic flows
        return self

    def made(self) -> int:
        return sum(self.statuses.values())

    def wait_for_more(self, requests: int) -> None:
        """Block until the clients made `requests` more calls: what one controller pass sees
        does not depend on how fast the machine is."""
        target = self.made() + requests
        wait_for(lambda: self.made() >= target, f"{requests} more client requests")

    def __exit__(self, *exc: object) -> None:
        self.stop_flag.set()
        for thread in self.threads:
            thread.join(15)

    def _run(self, seed: int) -> None:
        rows = list(ROWS)
        random.Random(seed).shuffle(rows)
        with httpx.Client(timeout=10.0) as client:
            i = 0
            while not self.stop_flag.is_set():
                row, label = rows[i % len(rows)]
                i += 1
                url = self.url_of_router()
                try:
                    answer = client.post(url + "/predict", json={"instances": [row]})
                except httpx.HTTPError as error:
                    self.errors.append(f"{type(error).__name__}: {error}")
                    self.statuses[0] += 1
                    continue
                self.statuses[answer.status_code] += 1
                if answer.status_code != 200:
                    self.errors.append(answer.text[:300])
                    continue
                self.versions[answer.json()["version"]] += 1
                request_id = answer.headers["x-request-id"]
                feedback = client.post(url + "/feedback", json={"request_id": request_id, "label": label})
                self.feedback[feedback.status_code] += 1


@pytest.fixture
def world(s3: Any, trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    # A Service whose pod died refuses at once, as on a cluster (local mode's proxy instead
    # waits for the pod to come back, which would hide the crash from the router).
    monkeypatch.setattr(proxy, "BACKEND_WAIT_SECONDS", 0.0)
    cluster = InMemoryCluster()
    for version, name in enumerate(("iris-v1", "iris-v2", "iris-v3"), start=1):
        cluster.create(model_version_doc(name, version, trained[name]))
        cluster.patch_status(MV_API, "ModelVersion", NS, name, {"phase": "Validated"})
    kubelet = LocalKubelet(cluster, s3, tmp_path)
    try:
        yield {"cluster": cluster, "kubelet": kubelet, "clock": Clock()}
    finally:
        kubelet.stop_all()


def inference_service(challenger: str | None, **rollout: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": "iris",
        "champion": {"modelVersion": "iris-v1"},
        "rollout": {"steps": [25, 50, 100], "interval": "2s",
                    "analysis": {"minSampleSize": 20, "maxErrorRate": 0.05, "maxP95LatencyMs": 2000,
                                 "maxAccuracyDrop": 0.05, "confidence": 0.95}},
    }
    spec["rollout"].update(rollout)
    if challenger:
        spec["challenger"] = {"modelVersion": challenger}
    return {"apiVersion": MV_API, "kind": "InferenceService", "metadata": {"name": "iris", "namespace": NS},
            "spec": spec}


class Clock:
    """The controller's clock: it moves one PASS per pass, whatever the machine's speed."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def tick(self) -> datetime:
        self.now += PASS
        return self.now


def control_loop(world: dict[str, Any], until, *, during=None, traffic: Traffic | None = None,
                 timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
    """Pass after pass: (with traffic) wait for REQUESTS_PER_PASS more client calls, reconcile
    at the next tick of the clock, let the kubelet catch up; until `until(status)`."""
    cluster, kubelet, clock = world["cluster"], world["kubelet"], world["clock"]
    reader = MetricsReader(url_for=kubelet.url_for, timeout=10.0)
    settings = Settings(s3_endpoint=None)
    deadline = time.monotonic() + timeout
    trail: list[str] = []
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if traffic is not None:
            traffic.wait_for_more(REQUESTS_PER_PASS)
        obj = cluster.get(MV_API, "InferenceService", NS, "iris")
        controller.sync(cluster, obj, clock.tick(), metrics_reader=reader, settings=settings)
        kubelet.step()
        status = cluster.get(MV_API, "InferenceService", NS, "iris").get("status") or {}
        line = f"{status.get('phase')} {status.get('rolloutStage')} {status.get('split')}"
        if not trail or trail[-1] != line:
            trail.append(line)
        if during is not None:
            during(status)
        if until(status):
            return {"status": status, "trail": trail}
        if traffic is None:
            time.sleep(0.05)  # nothing to pace on: do not spin
    last = (status.get("lastAnalysis") or {}).get("message")
    raise AssertionError(f"timed out; trail {trail}; last analysis: {last}")


def serve_champion_only(world: dict) -> None:
    control_loop(world, lambda s: s.get("phase") == "Stable" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in s.get("conditions", [])), timeout=120)


def start_rollout(world: dict, challenger: str) -> None:
    cluster = world["cluster"]
    obj = cluster.get(MV_API, "InferenceService", NS, "iris")
    obj["spec"]["challenger"] = {"modelVersion": challenger}
    cluster.replace(obj)


def test_a_good_challenger_is_promoted_without_a_client_error(world):
    cluster, kubelet = world["cluster"], world["kubelet"]
    cluster.create(inference_service(None))
    serve_champion_only(world)
    with Traffic(lambda: kubelet.services["iris"]) as traffic:
        start_rollout(world, "iris-v2")
        weights: list[str] = []
        result = control_loop(world, lambda s: s.get("phase") == "Stable" and s.get("previous"),
                              during=lambda s: weights.append(s.get("split")), traffic=traffic)
    status = result["status"]
    assert (status["champion"], status["previous"]) == ("iris-v2", "iris-v1"), result["trail"]
    seen = [w for i, w in enumerate(weights) if i == 0 or weights[i - 1] != w]
    assert [w for w in seen if w in ("75/25", "50/50", "0/100")] == ["75/25", "50/50", "0/100"]
    promoted = status["history"][-1]
    assert promoted["action"] == "Promoted" and promoted["metrics"]["onlineAccuracy.challenger"] > 0.85
    assert traffic.statuses[200] > 0 and set(traffic.statuses) == {200}, (traffic.errors[:5], world["kubelet"].router_logs())
    assert traffic.versions["iris-v2"] > 0
    # Feedback racing a switch can reach a variant that no longer serves (404, unknown id): rare.
    assert set(traffic.feedback) <= {200, 404} and traffic.feedback[404] <= 0.01 * traffic.feedback.total()
    # The challenger's process is gone; the champion's serves v2.
    assert "iris-challenger" not in kubelet.processes
    assert httpx.post(kubelet.services["iris"] + "/predict", json={"instances": [ROWS[0][0]]}).json()["version"] \
        == "iris-v2"


def test_a_wrong_model_is_rolled_back_on_online_accuracy_without_a_client_error(world):
    cluster, kubelet = world["cluster"], world["kubelet"]
    cluster.create(inference_service(None))
    serve_champion_only(world)
    with Traffic(lambda: kubelet.services["iris"]) as traffic:
        start_rollout(world, "iris-v3")
        result = control_loop(world, lambda s: s.get("phase") == "RolledBack" and not s.get("rolloutStage"),
                              traffic=traffic)
    status = result["status"]
    assert status["champion"] == "iris-v1" and status["rolledBackVersions"] == ["iris-v3"]
    checks = {c["name"]: c for c in status["lastAnalysis"]["checks"]}
    assert checks["onlineAccuracy"]["verdict"] == "Fail"
    assert checks["errorRate"]["verdict"] != "Fail"  # it answered every request: only its answers were wrong
    # The numbers behind the verdict: a Fail means the whole confidence interval of the drop lies
    # beyond maxAccuracyDrop (0.05), so the point estimates must too. (Not "below 0.5": the
    # majority-class dummy scores whatever share of the step's rows its class had, once 0.54.)
    accuracy = checks["onlineAccuracy"]
    assert accuracy["challenger"] < accuracy["champion"] - 0.05 and accuracy["champion"] > 0.85, accuracy
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "RolledBack" and "online accuracy challenger" in progressing["message"]
    assert set(traffic.statuses) == {200}, (traffic.errors[:5], world["kubelet"].router_logs())
    assert json.loads(kubelet.config_text)["challenger"] is None
    assert "iris-challenger" not in kubelet.processes


def test_a_challenger_that_dies_is_rolled_back_and_clients_never_notice(world):
    cluster, kubelet = world["cluster"], world["kubelet"]
    cluster.create(inference_service(None))
    serve_champion_only(world)
    killed: list[bool] = []

    def kill_at_25(status: dict) -> None:
        if status.get("split") == "75/25" and not killed:
            kubelet.processes["iris-challenger"][1].process.kill()  # a crash, not a shutdown
            killed.append(True)

    with Traffic(lambda: kubelet.services["iris"]) as traffic:
        start_rollout(world, "iris-v2")
        result = control_loop(world, lambda s: s.get("phase") == "RolledBack" and not s.get("rolloutStage"),
                              during=kill_at_25, traffic=traffic)
    status = result["status"]
    assert killed and status["champion"] == "iris-v1" and status["rolledBackVersions"] == ["iris-v2"]
    checks = {c["name"]: c for c in status["lastAnalysis"]["checks"]}
    assert checks["errorRate"]["verdict"] == "Fail" and checks["errorRate"]["challenger"] > 0.05
    assert set(traffic.statuses) == {200}, (traffic.errors[:5], world["kubelet"].router_logs())


def test_shadow_mirrors_then_switches_to_a_good_challenger(world):
    cluster, kubelet = world["cluster"], world["kubelet"]
    cluster.create(inference_service(None, strategy="shadow", shadowIterations=2,
                                     analysis={"minSampleSize": 20, "maxErrorRate": 0.05, "maxP95LatencyMs": 2000,
                                               "maxAccuracyDrop": 0.05, "minAgreement": 0.8}))
    serve_champion_only(world)
    answered_in_shadow: Counter[str] = Counter()

    with Traffic(lambda: kubelet.services["iris"]) as traffic:
        start_rollout(world, "iris-v2")

        def during(status: dict) -> None:
            if status.get("split") == "100/0 shadow":
                answered_in_shadow.update(traffic.versions)

        result = control_loop(world, lambda s: s.get("phase") == "Stable" and s.get("previous"),
                              during=during, traffic=traffic)
    status = result["status"]
    assert "Progressing Analysing 100/0 shadow" in result["trail"]
    assert (status["champion"], status["previous"]) == ("iris-v2", "iris-v1")
    checks = {c["name"]: c for c in status["lastAnalysis"]["checks"]}
    assert checks["agreement"]["verdict"] == "Pass" and checks["agreement"]["challenger"] > 0.8
    assert checks["latencyP95"]["verdict"] == "Pass"  # timed by the challenger's server
    assert answered_in_shadow["iris-v1"] > 0
    assert set(traffic.statuses) == {200}, (traffic.errors[:5], world["kubelet"].router_logs())


class Prometheus:
    """A real Prometheus server scraping the kubelet's processes every second (file_sd)."""

    def __init__(self, tmp: Path) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.skip("the prometheus binary is not installed (Debian package prometheus)")
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        self.targets = tmp / "targets.json"
        self.write_targets([])
        (tmp / "prometheus.yml").write_text(json.dumps({
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
            "scrape_configs": [{"job_name": "mlops", "file_sd_configs": [
                {"files": [str(self.targets)], "refresh_interval": "1s"}]}],
        }))
        self.port = free_port()
        with (tmp / "prometheus.log").open("wb") as log:
            self.popen = subprocess.Popen(
                [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("prometheus did not become ready: " + (tmp / "prometheus.log").read_text()[-2000:])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_targets(self, processes: list[ServerProcess]) -> None:
        doc = [{"targets": [f"127.0.0.1:{p.port}" for p in processes], "labels": {"namespace": NS}}]
        staging = self.targets.with_suffix(".tmp")
        staging.write_text(json.dumps(doc))
        os.replace(staging, self.targets)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def test_analysis_through_a_real_prometheus_rolls_back_a_wrong_model(world, tmp_path):
    cluster, kubelet = world["cluster"], world["kubelet"]
    prometheus = Prometheus(tmp_path / "prometheus")
    kubelet.on_change = prometheus.write_targets
    try:
        doc = inference_service(None)
        doc["spec"]["rollout"]["analysis"]["prometheusURL"] = prometheus.url
        cluster.create(doc)
        serve_champion_only(world)
        prometheus.write_targets([p for _, p in kubelet.processes.values()])
        with Traffic(lambda: kubelet.services["iris"]) as traffic:
            start_rollout(world, "iris-v3")
            result = control_loop(world, lambda s: s.get("phase") == "RolledBack" and not s.get("rolloutStage"),
                                  traffic=traffic)
        status = result["status"]
        assert status["rolledBackVersions"] == ["iris-v3"]
        checks = {c["name"]: c for c in status["lastAnalysis"]["checks"]}
        assert checks["onlineAccuracy"]["verdict"] == "Fail"
        assert checks["onlineAccuracy"]["challenger"] < 0.5 < checks["onlineAccuracy"]["champion"]
        assert set(traffic.statuses) == {200}, (traffic.errors[:5], world["kubelet"].router_logs())
    finally:
        prometheus.stop()
