"""The node stand-in as the kubelet the real controllers expect: Pods of a Job and of a
Deployment, created by the real Job and ReplicaSet controllers, run as processes with their
env (secretKeyRef, configMapKeyRef, fieldRef) and volumes (ConfigMap, emptyDir) resolved;
the termination message read from terminationMessagePath; readiness probed; a deleted
Pod's process stopped and the deletion confirmed."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from control_plane_world import Cluster, eventually
from mlops_operator.local.processes import is_alive

pytestmark = pytest.mark.timeout(300)

SCRIPT = """
import json, os, sys
folder = os.path.dirname(os.path.abspath(__file__))
summary = {name: os.environ.get(name) for name in ("FROM_SECRET", "FROM_CONFIG", "POD_NAME", "POD_NAMESPACE")}
summary["mounted"] = open(os.path.join(folder, "greeting.txt")).read()
open(os.path.join(sys.argv[2], "scratch"), "w").write("an emptyDir is writable")
with open(sys.argv[1], "w") as log:
    log.write(json.dumps(summary))
sys.exit(int(os.environ.get("EXIT_CODE", "0")))
"""


def env_and_volumes() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    env = [
        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "node-test", "key": "password"}}},
        {"name": "FROM_CONFIG", "valueFrom": {"configMapKeyRef": {"name": "node-test", "key": "colour"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    mounts = [{"name": "scripts", "mountPath": "/scripts"}, {"name": "scratch", "mountPath": "/scratch"}]
    volumes = [{"name": "scripts", "configMap": {"name": "node-test"}}, {"name": "scratch", "emptyDir": {}}]
    return env, mounts, volumes


def create_inputs(cluster: Cluster, namespace: str) -> None:
    cluster.admin.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "node-test", "namespace": namespace},
                          "data": {"password": base64.b64encode(b"s3cret").decode()}})
    cluster.admin.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "node-test", "namespace": namespace},
                          "data": {"colour": "teal", "greeting.txt": "hello from a ConfigMap", "run.py": SCRIPT}})


def job(name: str, namespace: str, exit_code: int) -> dict[str, Any]:
    env, mounts, volumes = env_and_volumes()
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": namespace},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "mlops-runtime:0.1.0",
                                "command": ["python", "/scripts/run.py", "/dev/termination-log", "/scratch"],
                                "env": [*env, {"name": "EXIT_CODE", "value": str(exit_code)}],
                                "volumeMounts": mounts}],
                "volumes": volumes}}}}


def pods_of(cluster: Cluster, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
    return cluster.admin.list("v1", "Pod", namespace, selector)


def test_job_pods_run_with_their_env_and_volumes_and_report_the_termination_message(
        control_plane: Cluster, namespace: str) -> None:
    create_inputs(control_plane, namespace)
    control_plane.admin.create(job("works", namespace, 0))
    control_plane.admin.create(job("fails", namespace, 3))

    def finished(name: str, condition: str) -> dict[str, Any] | None:
        obj = control_plane.admin.get("batch/v1", "Job", namespace, name)
        conditions = (obj.get("status") or {}).get("conditions") or []
        return obj if any(c["type"] == condition and c["status"] == "True" for c in conditions) else None

    eventually(lambda: finished("works", "Complete"), "the Job controller to see the pod succeed")
    eventually(lambda: finished("fails", "Failed"), "the Job controller to see the pod fail")

    [pod] = pods_of(control_plane, namespace, {"job-name": "works"})
    assert pod["spec"]["nodeName"] == "mlops-node"
    assert pod["status"]["phase"] == "Succeeded"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0 and terminated["reason"] == "Completed"
    assert json.loads(terminated["message"]) == {
        "FROM_SECRET": "s3cret", "FROM_CONFIG": "teal", "POD_NAME": pod["metadata"]["name"],
        "POD_NAMESPACE": namespace, "mounted": "hello from a ConfigMap"}

    [failed] = pods_of(control_plane, namespace, {"job-name": "fails"})
    assert failed["status"]["phase"] == "Failed"
    assert failed["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


def test_deployment_pods_are_probed_ready_and_a_deleted_pod_stops(
        control_plane: Cluster, namespace: str) -> None:
    server = Path(__file__).resolve().parents[1] / "local" / "tiny_server.py"
    labels = {"app": "tiny"}
    control_plane.admin.create({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "tiny", "namespace": namespace},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"containers": [{
                "name": "server", "image": "mlops-runtime:0.1.0", "command": [sys.executable, str(server)],
                "args": ["--port", "8080"], "ports": [{"containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1}}]}}}})

    def available() -> dict[str, Any] | None:
        status = control_plane.admin.get("apps/v1", "Deployment", namespace, "tiny").get("status") or {}
        return status if status.get("availableReplicas") == 2 and status.get("readyReplicas") == 2 else None

    # The ReplicaSet controller made the Pods; the Deployment controller read their Ready condition.
    eventually(available, "both replicas to be probed ready")
    pods = pods_of(control_plane, namespace, labels)
    assert len(pods) == 2
    for pod in pods:
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert ready["Ready"] == "True" and ready["ContainersReady"] == "True"
        assert pod["status"]["containerStatuses"][0]["ready"] is True

    victim = pods[0]["metadata"]["name"]
    pid = int(pods[0]["status"]["containerStatuses"][0]["containerID"].removeprefix("local://"))
    assert is_alive(pid)
    control_plane.admin.delete("v1", "Pod", namespace, victim)
    # The stand-in stops the process and confirms; the ReplicaSet controller replaces the pod.
    eventually(lambda: victim not in {p["metadata"]["name"] for p in pods_of(control_plane, namespace, labels)},
               "the deleted pod to be gone")
    eventually(lambda: not is_alive(pid), "the deleted pod's process to stop")
    eventually(available, "the replacement to be ready")
