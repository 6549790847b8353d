"""The kopf wiring of the training loop against kmock's Kubernetes API emulator over HTTP.

The operator runs as `mlops run` in its own process and finds the emulator through a
kubeconfig, as it would find a cluster; the test plays the Job controller and the kubelet.
Waits poll for a condition with a deadline; nothing sleeps for a fixed time."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest
import yaml

from mlops_operator.cluster.kubernetes import KubernetesCluster
from mlops_operator.cluster.port import NotFound

pytestmark = pytest.mark.timeout(90)

API = "mlops.seed.io/v1alpha1"
NS = "team-a"
MLOPS = Path(sys.executable).parent / "mlops"
T = TypeVar("T")


@pytest.fixture
def emulator(k8s_emulator: Any) -> Any:
    return k8s_emulator


@pytest.fixture
def kubeconfig(emulator: Any, tmp_path: Path) -> Path:
    token = emulator.api_client.configuration.api_key["BearerToken"]
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": emulator.url, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "kmock", "user": {"token": token}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": NS}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


async def call(fn: Callable[..., T], *args: Any) -> T:
    """Blocking cluster calls run off the test's event loop."""
    return await asyncio.to_thread(fn, *args)


async def eventually(check: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while True:
        try:
            last = await call(check)
        except NotFound:
            last = None
        if last:
            return last
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def cluster(emulator: Any, kubeconfig: Path, tmp_path: Path) -> AsyncIterator[KubernetesCluster]:
    """`mlops run` in its own process, as a user starts it, with a kubeconfig that points at
    the emulator; the test talks to the emulator through its own KubernetesCluster."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "AWS_ENDPOINT_URL": "http://s3.test:9000"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    log = (tmp_path / "operator.log").open("wb")
    process = subprocess.Popen(
        [str(MLOPS), "run", "--all-namespaces", "--standalone", "--metrics-port", "0", "--liveness-port", "0"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def watching() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the operator exited with {process.returncode}:\n{_log(tmp_path)}")
        paths = {r.url.path for r in emulator.requests() if r.params.get("watch") == "true"}
        wanted = ("/experiments", "/trainingruns", "/modelversions", "/jobs", "/pods")
        return all(any(p.endswith(w) for p in paths) for w in wanted)

    try:
        # The emulator streams only changes made after a watch opened.
        await eventually(watching, "the operator's watches", timeout=60)
        yield KubernetesCluster(emulator.api_client, apply_strategy="merge")
    except BaseException:
        print(_log(tmp_path))
        raise
    finally:
        _stop(process)
        log.close()
        if os.environ.get("SHOW_OPERATOR_LOG"):
            print(_log(tmp_path))


def _log(tmp_path: Path) -> str:
    return (tmp_path / "operator.log").read_text(errors="replace")[-20000:]


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def experiment(name: str, **spec: Any) -> dict[str, Any]:
    body = {
        "model": "iris",
        "dataset": {"uri": "sklearn://iris"},
        "estimator": "sklearn.linear_model.LogisticRegression",
        "search": {"algorithm": "grid", "maxTrials": 2, "parallelism": 2,
                   "space": {"C": {"values": [0.1, 1.0]}}},
        "objective": {"metric": "accuracy", "goal": "maximize"},
        "validation": {"gates": [{"metric": "accuracy", "threshold": 0.5}]},
    }
    body.update(spec)
    return {"apiVersion": API, "kind": "Experiment", "metadata": {"name": name, "namespace": NS}, "spec": body}


def summary(run: dict[str, Any]) -> str:
    name = run["metadata"]["name"]
    prefix = f"s3://mlops/{NS}/iris/{name}/"
    accuracy = 0.9 + float(run["spec"]["params"]["C"]) / 100
    return json.dumps({"status": "Succeeded", "metrics": {"accuracy": accuracy}, "artifactUri": prefix,
                       "modelUri": prefix + "model.skops", "sha256": "ab" * 32, "size": 100,
                       "servingFormat": "skops", "datasetSha256": "cd" * 32, "task": "classification"})


def complete_job(cluster: KubernetesCluster, job: dict[str, Any], message: str) -> None:
    """What the Job controller and the kubelet do for a pod that ran to completion."""
    name = job["metadata"]["name"]
    pod = f"{name}-x1"
    labels = {**job["spec"]["template"]["metadata"]["labels"], "job-name": name,
              "controller-uid": job["metadata"]["uid"]}
    cluster.create({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod, "namespace": NS, "labels": labels},
                    "spec": job["spec"]["template"]["spec"]})
    cluster.patch_status("v1", "Pod", NS, pod, {"phase": "Succeeded", "containerStatuses": [
        {"name": "trainer", "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": message,
                                                     "finishedAt": "2026-01-01T00:01:00Z"}}}]})
    cluster.patch_status("batch/v1", "Job", NS, name, {
        "startTime": "2026-01-01T00:00:10Z", "completionTime": "2026-01-01T00:01:00Z", "succeeded": 1,
        "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T00:01:00Z"}]})


def owner(obj: dict[str, Any]) -> tuple[str, str, str]:
    ref = obj["metadata"]["ownerReferences"][0]
    return ref["kind"], ref["name"], ref["uid"]


def ready(obj: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or () if c["type"] == "Ready"), None)


async def test_experiment_to_validated_versions(cluster: KubernetesCluster) -> None:
    exp = await call(cluster.create, experiment("iris"))
    exp_uid = exp["metadata"]["uid"]

    def trials() -> list[dict[str, Any]]:
        runs = cluster.list(API, "TrainingRun", NS, {"mlops.seed.io/experiment": "iris"})
        return runs if len(runs) == 2 else []

    runs = await eventually(trials, "two TrainingRuns")
    assert sorted(r["metadata"]["name"] for r in runs) == ["iris-t001", "iris-t002"]
    for run in runs:
        assert owner(run) == ("Experiment", "iris", exp_uid)
        assert run["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "mlops-operator"

    def jobs() -> list[dict[str, Any]]:
        found = cluster.list("batch/v1", "Job", NS, {"app.kubernetes.io/managed-by": "mlops-operator"})
        return found if len(found) == 2 else []

    found = await eventually(jobs, "two Jobs")
    uids = {r["metadata"]["name"]: r["metadata"]["uid"] for r in await call(trials)}
    for job in found:
        run_name = job["metadata"]["labels"]["mlops.seed.io/trainingrun"]
        assert owner(job) == ("TrainingRun", run_name, uids[run_name])
        assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["python", "-m", "mlops_runtime.train"]

    for job in found:
        run = await call(cluster.get, API, "TrainingRun", NS, job["metadata"]["labels"]["mlops.seed.io/trainingrun"])
        await call(complete_job, cluster, job, summary(run))

    def finished() -> dict[str, Any] | None:
        obj = cluster.get(API, "Experiment", NS, "iris")
        return obj if (obj.get("status") or {}).get("phase") == "Succeeded" else None

    done = await eventually(finished, "the Experiment to succeed")
    assert done["status"]["bestTrial"]["name"] == "iris-t002"
    assert done["status"]["modelVersion"] == "iris-v1"
    assert ready(done)["status"] == "True"

    def validated() -> dict[str, Any] | None:
        mv = cluster.get(API, "ModelVersion", NS, "iris-v1")
        return mv if (mv.get("status") or {}).get("phase") == "Validated" else None

    mv = await eventually(validated, "iris-v1 to be validated")
    assert mv["spec"]["lineage"]["trainingRun"] == "iris-t002"
    assert mv["spec"]["artifact"]["sha256"] == "ab" * 32
    assert mv["status"]["gates"][0]["passed"] is True
    assert not mv["metadata"].get("ownerReferences")

    def events() -> set[str]:
        reasons = {e["reason"] for e in cluster.list("v1", "Event", NS)}
        wanted = {"TrialStarted", "BestTrialImproved", "VersionRegistered", "Validated", "Succeeded"}
        return reasons if wanted <= reasons else set()

    await eventually(events, "the Events of the run")


async def test_invalid_spec_gives_ready_false_and_an_event(cluster: KubernetesCluster) -> None:
    # The CRD cannot know the operator's estimator allow-list; the emulator validates nothing.
    await call(cluster.create, experiment("bad", estimator="subprocess.Popen"))

    def refused() -> dict[str, Any] | None:
        obj = cluster.get(API, "Experiment", NS, "bad")
        condition = ready(obj)
        return condition if condition and condition["reason"] == "InvalidSpec" else None

    condition = await eventually(refused, "Ready=False/InvalidSpec")
    assert condition["status"] == "False"
    assert condition["message"].startswith("spec.estimator: 'subprocess.Popen' is not in the operator's allow-list")

    def warned() -> list[dict[str, Any]]:
        return [e for e in cluster.list("v1", "Event", NS)
                if e["reason"] == "InvalidSpec" and e["involvedObject"]["name"] == "bad"]

    event = (await eventually(warned, "an InvalidSpec Event"))[0]
    assert event["type"] == "Warning" and "spec.estimator" in event["message"]
    assert await call(cluster.list, API, "TrainingRun", NS, {"mlops.seed.io/experiment": "bad"}) == []
