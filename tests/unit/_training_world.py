"""A small world for control-loop tests: the in-memory cluster, the controllers, and the
test playing the Job controller and the kubelet (Job status, a Pod with the trainer's
termination message), as Kubernetes would."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from mlops_operator.cluster.memory import InMemoryCluster
from mlops_operator.controllers import experiment, model_version, training_run
from mlops_operator.reconcile.common import Settings

API = "mlops.seed.io/v1alpha1"
NS = "team-a"
SETTINGS = Settings(s3_endpoint="http://s3.test:9000", code_version="0.1.0")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def experiment_manifest(name: str = "iris", model: str = "iris", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "dataset": {"uri": "sklearn://iris"},
        "estimator": "sklearn.linear_model.LogisticRegression",
        "params": {"max_iter": 200},
        "search": {"algorithm": "random", "maxTrials": 6, "parallelism": 2, "maxFailedTrials": 2, "seed": 1,
                   "space": {"C": {"min": 0.01, "max": 100, "distribution": "logUniform"}}},
        "objective": {"metric": "accuracy", "goal": "maximize"},
    }
    body.update(spec)
    return {"apiVersion": API, "kind": "Experiment", "metadata": {"name": name, "namespace": NS}, "spec": body}


def score(params: dict[str, Any]) -> float:
    """A made-up accuracy that depends only on the params: best near C = 1."""
    import math

    return round(0.99 - abs(math.log10(float(params.get("C", 1.0)))) / 20, 6)


def success_summary(run: dict[str, Any], accuracy: float) -> dict[str, Any]:
    name = run["metadata"]["name"]
    prefix = f"s3://mlops/{NS}/{run['spec']['model']}/{name}/"
    return {"status": "Succeeded", "metrics": {"accuracy": accuracy, "f1_macro": accuracy - 0.01},
            "artifactUri": prefix, "modelUri": prefix + "model.skops", "sha256": sha(name), "size": 1234,
            "servingFormat": "skops", "datasetSha256": sha("iris"), "task": "classification",
            "durationSeconds": 0.5, "sklearnVersion": "1.9.1"}


@dataclass
class World:
    clock: datetime = field(default_factory=lambda: datetime(2026, 1, 1, tzinfo=UTC))
    cluster: InMemoryCluster = field(init=False)
    pods_made: int = 0

    def __post_init__(self) -> None:
        self.cluster = InMemoryCluster(now=lambda: self.clock, seed=0)

    def tick(self, seconds: float = 1.0) -> None:
        self.clock += timedelta(seconds=seconds)

    def stamp(self) -> str:
        return self.clock.strftime("%Y-%m-%dT%H:%M:%SZ")

    # -- the operator ---------------------------------------------------------------

    def objects(self, kind: str, **labels: str) -> list[dict[str, Any]]:
        api = "batch/v1" if kind == "Job" else ("v1" if kind in ("Pod", "Event") else API)
        return self.cluster.list(api, kind, NS, labels or None)

    def sync_all(self, cluster: Any = None) -> None:
        """One pass of every controller over every object (as the local loop does)."""
        cluster = cluster or self.cluster
        for obj in self.objects("Experiment"):
            experiment.sync(cluster, obj, self.clock, SETTINGS)
        for obj in self.objects("TrainingRun"):
            training_run.sync(cluster, obj, self.clock, SETTINGS)
        for obj in self.objects("ModelVersion"):
            model_version.sync(cluster, obj, self.clock)

    def settle(self, passes: int = 20) -> None:
        """Sync until nothing changes any more."""
        for _ in range(passes):
            before = self.cluster.revision
            self.sync_all()
            if self.cluster.revision == before:
                return
        raise AssertionError("the controllers did not settle")

    # -- the Job controller and kubelet ----------------------------------------------

    def finish_job(self, job_name: str, *, exit_code: int = 0, message: str = "",
                   job_condition: str | None = None, reason: str | None = None) -> None:
        job = self.cluster.get("batch/v1", "Job", NS, job_name)
        self.pods_made += 1
        pod_name = f"{job_name}-{self.pods_made:05d}"
        self.cluster.create({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": NS,
                         "labels": {"job-name": job_name, "controller-uid": job["metadata"]["uid"]},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name,
                                              "uid": job["metadata"]["uid"], "controller": True}]},
            "spec": job["spec"]["template"]["spec"],
        })
        self.cluster.patch_status("v1", "Pod", NS, pod_name, {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [{"name": "trainer", "state": {"terminated": {
                "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                "message": message, "finishedAt": self.stamp()}}}],
        })
        condition = job_condition or ("Complete" if exit_code == 0 else "Failed")
        status: dict[str, Any] = {"startTime": self.stamp(), "active": 0,
                                  "conditions": [{"type": condition, "status": "True", "lastTransitionTime": self.stamp(),
                                                  **({"reason": reason} if reason else {})}]}
        if condition == "Complete":
            status["completionTime"] = self.stamp()
            status["succeeded"] = 1
        else:
            status["failed"] = 1
        self.cluster.patch_status("batch/v1", "Job", NS, job_name, status)

    def start_job(self, job_name: str) -> None:
        self.cluster.patch_status("batch/v1", "Job", NS, job_name, {"startTime": self.stamp(), "active": 1})

    def run_for(self, job: dict[str, Any]) -> dict[str, Any]:
        return self.cluster.get(API, "TrainingRun", NS, job["metadata"]["labels"]["mlops.seed.io/trainingrun"])

    def finish_running_jobs(self, outcome: Callable[[dict[str, Any]], tuple[int, str]] | None = None) -> int:
        """Finish every unfinished Job; `outcome(run) -> (exit code, termination message)`,
        default: success with `score(params)`."""
        finished = 0
        for job in self.objects("Job"):
            if (job.get("status") or {}).get("conditions"):
                continue
            run = self.run_for(job)
            if outcome is None:
                code, message = 0, json.dumps(success_summary(run, score(run["spec"]["params"])))
            else:
                code, message = outcome(run)
            self.finish_job(job["metadata"]["name"], exit_code=code, message=message,
                            reason="PodFailurePolicy" if code == 2 else None)
            finished += 1
        return finished

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self.cluster.create(manifest)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return self.cluster.get(API, kind, NS, name)

    def events(self, reason: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.objects("Event")
                if (reason is None or e["reason"] == reason)
                and (name is None or e["involvedObject"]["name"] == name)]
