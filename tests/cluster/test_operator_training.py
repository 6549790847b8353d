"""The training loop on the real control plane, with the operator as its own ServiceAccount.

The real Job controller creates the trainer Pods, the node stand-in runs
`python -m mlops_runtime.train` against the test S3 server, and the operator reads the
termination messages through the API, under the ClusterRole of manifests/base/rbac.yaml:
any 403 in its log fails the test. Waits are for conditions, with deadlines sized for a
busy two-core machine."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import yaml

from control_plane_world import ROOT, Cluster, OperatorProcess, conditions, eventually, load_yaml

pytestmark = pytest.mark.timeout(900)

API = "mlops.seed.io/v1alpha1"
ARGO = "argocd-controller"


def experiment(name: str, trials: int, parallelism: int) -> dict[str, Any]:
    return {
        "apiVersion": API, "kind": "Experiment", "metadata": {"name": name},
        "spec": {
            "model": name,
            "dataset": {"uri": "sklearn://iris"},
            "estimator": "sklearn.linear_model.LogisticRegression",
            "params": {"max_iter": 300},
            "search": {"algorithm": "grid", "maxTrials": trials, "parallelism": parallelism,
                       "space": {"C": {"values": [round(0.05 * (i + 1), 2) for i in range(trials)]}}},
            "objective": {"metric": "accuracy", "goal": "maximize"},
            "metrics": ["accuracy"],
            "validation": {"gates": [{"metric": "accuracy", "threshold": 0.5}]},
        },
    }


def apply_as(cluster: Cluster, manager: str, namespace: str, document: dict[str, Any]) -> str:
    """Server-side apply of the user's resource, as a GitOps controller does."""
    document = {**document, "metadata": {**document["metadata"], "namespace": namespace}}
    result = cluster.kubectl("apply", "--server-side", f"--field-manager={manager}", "-f", "-",
                             input=yaml.safe_dump(document), check=False)
    assert result.returncode == 0, f"apply as {manager} failed:\n{result.stderr}"
    return result.stdout


def listed(cluster: Cluster, api_version: str, kind: str, namespace: str) -> list[dict[str, Any]]:
    return cluster.admin.list(api_version, kind, namespace)


def experiment_done(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    obj = cluster.admin.get(API, "Experiment", namespace, name)
    return obj if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None


def test_iris_example_trains_to_a_validated_version_as_the_operators_service_account(
        control_plane: Cluster, operator: OperatorProcess, namespace: str) -> None:
    [document] = load_yaml(ROOT / "examples" / "iris" / "experiment.yaml")
    apply_as(control_plane, ARGO, namespace, document)
    done = eventually(lambda: experiment_done(control_plane, namespace, "iris"), "the iris Experiment to finish",
                      timeout=600, interval=1.0)
    assert done["status"]["phase"] == "Succeeded", json.dumps(done["status"], indent=1)

    runs = listed(control_plane, API, "TrainingRun", namespace)
    assert len(runs) == 6
    jobs = {job["metadata"]["name"]: job for job in listed(control_plane, "batch/v1", "Job", namespace)}
    for run in runs:
        status = run["status"]
        assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
        # Read by the operator from the trainer's termination message, written by the stand-in.
        assert status["artifactUri"].startswith(f"s3://mlops/{namespace}/iris/{run['metadata']['name']}/")
        assert len(status["sha256"]) == 64 and 0.5 < status["metrics"]["accuracy"] <= 1.0
        job = jobs[status["jobName"]]
        assert any(c["type"] == "Complete" and c["status"] == "True" for c in job["status"]["conditions"])
        # Owned by its TrainingRun, created by the real Job controller's pods.
        assert job["metadata"]["ownerReferences"][0]["uid"] == run["metadata"]["uid"]
    pods = listed(control_plane, "v1", "Pod", namespace)
    assert pods and all(pod["spec"]["nodeName"] == "mlops-node" for pod in pods)

    versions = eventually(lambda: [mv for mv in listed(control_plane, API, "ModelVersion", namespace)
                                   if (mv.get("status") or {}).get("phase") == "Validated"],
                          "a Validated ModelVersion", timeout=180)
    assert [mv["metadata"]["name"] for mv in versions] == ["iris-v1"]
    assert conditions(versions[0])["Ready"]["status"] == "True"
    reasons = {e["reason"] for e in listed(control_plane, "v1", "Event", namespace)}
    assert {"TrialStarted", "BestTrialImproved", "VersionRegistered", "Validated", "Succeeded"} <= reasons
    assert operator.forbidden() == [], "\n".join(operator.forbidden())


def test_a_gitops_apply_and_the_operator_never_conflict_and_deletion_collects_children(
        control_plane: Cluster, operator: OperatorProcess, namespace: str) -> None:
    document = experiment("ssa", trials=3, parallelism=3)
    stop = threading.Event()
    outputs: list[str] = []

    def keep_applying() -> None:
        # Argo CD re-applies the Git state on every sync, while the operator writes status.
        while not stop.is_set():
            outputs.append(apply_as(control_plane, ARGO, namespace, document))
            stop.wait(0.5)

    applier = threading.Thread(target=keep_applying, daemon=True)
    outputs.append(apply_as(control_plane, ARGO, namespace, document))
    applier.start()
    try:
        done = eventually(lambda: experiment_done(control_plane, namespace, "ssa"), "the Experiment to finish",
                          timeout=600, interval=1.0)
    finally:
        stop.set()
        applier.join(30)
    assert done["status"]["phase"] == "Succeeded"
    assert len(outputs) >= 2 and all("serverside-applied" in out for out in outputs)

    managed = done["metadata"]["managedFields"]
    spec_owners = {entry["manager"] for entry in managed if "f:spec" in (entry.get("fieldsV1") or {})}
    assert spec_owners == {ARGO}, f"the spec is written by {spec_owners}"
    jobs = listed(control_plane, "batch/v1", "Job", namespace)
    assert len(jobs) == 3
    for job in jobs:
        appliers = {e["manager"] for e in job["metadata"]["managedFields"] if e["operation"] == "Apply"}
        assert appliers == {"mlops-operator"}, job["metadata"]["managedFields"]
    assert operator.forbidden() == [], "\n".join(operator.forbidden())

    registered = [mv["metadata"]["name"] for mv in listed(control_plane, API, "ModelVersion", namespace)]
    assert registered
    control_plane.admin.delete(API, "Experiment", namespace, "ssa")
    eventually(lambda: not listed(control_plane, API, "TrainingRun", namespace)
               and not listed(control_plane, "batch/v1", "Job", namespace),
               "the garbage collector to remove the TrainingRuns and their Jobs", timeout=180)
    # ModelVersions outlive the Experiment that registered them, on purpose.
    assert [mv["metadata"]["name"] for mv in listed(control_plane, API, "ModelVersion", namespace)] == registered


def test_kill_minus_nine_three_times_leaves_exactly_one_of_everything(
        control_plane: Cluster, operator: OperatorProcess, namespace: str) -> None:
    trials = 12
    apply_as(control_plane, ARGO, namespace, experiment("restarts", trials=trials, parallelism=3))

    def runs_at_least(count: int, phase: str | None = None) -> bool:
        runs = listed(control_plane, API, "TrainingRun", namespace)
        return sum(1 for r in runs if phase is None or (r.get("status") or {}).get("phase") == phase) >= count

    # Right after the first trials are created, mid-search, and near the end.
    for wait_for in (lambda: runs_at_least(1), lambda: runs_at_least(5, "Succeeded"),
                     lambda: runs_at_least(10, "Succeeded")):
        eventually(wait_for, "the next kill point", timeout=600, interval=0.2)
        operator.kill()
        operator.start()
    done = eventually(lambda: experiment_done(control_plane, namespace, "restarts"), "the Experiment to finish",
                      timeout=900, interval=1.0)
    assert done["status"]["phase"] == "Succeeded", json.dumps(done["status"], indent=1)
    runs = listed(control_plane, API, "TrainingRun", namespace)
    jobs = listed(control_plane, "batch/v1", "Job", namespace)
    assert sorted(r["metadata"]["name"] for r in runs) == [f"restarts-t{i:03d}" for i in range(1, trials + 1)]
    assert len(jobs) == trials
    versions = eventually(lambda: listed(control_plane, API, "ModelVersion", namespace), "the ModelVersion")
    assert len(versions) == 1
    assert operator.forbidden() == [], "\n".join(operator.forbidden())


def test_no_watch_event_is_lost_in_a_burst(control_plane: Cluster, operator: OperatorProcess, namespace: str) -> None:
    from mlops_operator.kopf_handlers import TIMER_INTERVALS

    def model_version(name: str, version: int) -> dict[str, Any]:
        prefix = f"s3://mlops/{namespace}/burst/{name}/"
        return {"apiVersion": API, "kind": "ModelVersion", "metadata": {"name": name, "namespace": namespace},
                "spec": {"model": "burst", "version": version,
                         "artifact": {"uri": prefix, "modelUri": prefix + "model.skops", "sha256": "0" * 64}}}

    # The operator is watching once it has handled an object created after its start.
    control_plane.admin.create(model_version("probe", 100))
    eventually(lambda: control_plane.admin.get(API, "ModelVersion", namespace, "probe").get("status"),
               "the operator to start watching", timeout=180)
    names = [f"burst-{i:02d}" for i in range(20)]
    for index, name in enumerate(names):
        control_plane.admin.create(model_version(name, index + 1))
    interval = TIMER_INTERVALS["modelversions"]
    # Each gets its first status from its ADDED event; the timer would take `interval`.
    eventually(lambda: all(control_plane.admin.get(API, "ModelVersion", namespace, n).get("status")
                           for n in names),
               f"all 20 ModelVersions to get a status within one timer interval ({interval:.0f} s)",
               timeout=interval, interval=0.2)


def test_what_only_the_operator_can_judge_gives_ready_false_and_a_warning_event(
        control_plane: Cluster, operator: OperatorProcess, namespace: str) -> None:
    # The CRD cannot know the operator's estimator allow-list: the API server accepts this.
    document = experiment("bad", trials=2, parallelism=2)
    document["spec"]["estimator"] = "subprocess.Popen"
    apply_as(control_plane, ARGO, namespace, document)

    def refused() -> dict[str, Any] | None:
        condition = conditions(control_plane.admin.get(API, "Experiment", namespace, "bad")).get("Ready")
        return condition if condition and condition["reason"] == "InvalidSpec" else None

    condition = eventually(refused, "Ready=False/InvalidSpec")
    assert condition["status"] == "False"
    assert condition["message"].startswith("spec.estimator: 'subprocess.Popen' is not in the operator's allow-list")
    events = eventually(lambda: [e for e in listed(control_plane, "v1", "Event", namespace)
                                 if e["reason"] == "InvalidSpec" and e["involvedObject"]["name"] == "bad"],
                        "an InvalidSpec Event")
    assert events[0]["type"] == "Warning" and "spec.estimator" in events[0]["message"]
    assert listed(control_plane, API, "TrainingRun", namespace) == []
    assert operator.forbidden() == [], "\n".join(operator.forbidden())
