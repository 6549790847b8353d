"""The kopf wiring of the training loop against kmock's Kubernetes API emulator over HTTP.

The operator runs as `mlops run` in its own process and finds the emulator through a
kubeconfig, as it would find a cluster; the test plays the Job controller and the kubelet.
Waits poll for a condition with a deadline; nothing sleeps for a fixed time."""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mlops_operator.cluster.kubernetes import KubernetesCluster
from operator_process import call, eventually, running_operator

pytestmark = pytest.mark.timeout(90)

API = "mlops.seed.io/v1alpha1"
NS = "team-a"


@pytest.fixture
async def cluster(k8s_emulator: Any, tmp_path: Path) -> AsyncIterator[KubernetesCluster]:
    watched = ("/experiments", "/trainingruns", "/modelversions", "/jobs", "/pods")
    async with running_operator(k8s_emulator, tmp_path, NS, watched) as cluster:
        yield cluster


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
