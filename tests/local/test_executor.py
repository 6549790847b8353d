"""The local executor against hand-written Jobs, Deployments and Services in an in-memory
cluster, running real processes (tiny Python commands and a tiny HTTP server)."""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mlops_operator.local.executor import Executor, PortBook, S3Settings
from mlops_operator.local.processes import ProcessTable, is_alive
from mlops_operator.local.proxy import ServiceProxy
from mlops_operator.local.state import LocalCluster

TINY_SERVER = str(Path(__file__).with_name("tiny_server.py"))
S3 = S3Settings(endpoint="http://127.0.0.1:9", access_key="local", secret_key="local-secret")


@pytest.fixture
def cluster() -> LocalCluster:
    cluster = LocalCluster()
    cluster.create({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "mlops-s3", "namespace": "default"},
        "data": {"AWS_ACCESS_KEY_ID": base64.b64encode(b"local").decode(),
                 "AWS_SECRET_ACCESS_KEY": base64.b64encode(b"local-secret").decode()},
    })
    return cluster


@pytest.fixture
def executor(cluster: LocalCluster, tmp_path: Path) -> Iterator[Executor]:
    proxy = ServiceProxy()
    processes = ProcessTable(tmp_path / "pids.json")
    executor = Executor(cluster, tmp_path, processes, proxy, PortBook(), S3, max_jobs=2)
    yield executor
    pids = [m.pid for m in processes.running()]
    executor.shutdown(grace=2.0)
    proxy.stop()
    assert not [pid for pid in pids if is_alive(pid)]


def run_until(executor: Executor, done: Callable[[], Any], timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        executor.step()
        result = done()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def job(name: str, code: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "backoffLimit": 0,
            **spec,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "trainer",
                        "image": "mlops-runtime:0.1.0",
                        "command": ["python", "-c", code],
                        "env": [
                            {"name": "GREETING", "value": "hello"},
                            {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "mlops-s3", "key": "AWS_ACCESS_KEY_ID"}}},
                            {"name": "AWS_ENDPOINT_URL", "value": "http://minio.mlops.svc:9000"},
                        ],
                    }],
                },
            },
        },
    }


def job_status(cluster: LocalCluster, name: str) -> dict[str, Any]:
    return cluster.get("batch/v1", "Job", "default", name).get("status") or {}


def job_condition(cluster: LocalCluster, name: str) -> dict[str, Any] | None:
    conditions = job_status(cluster, name).get("conditions") or []
    return next((c for c in conditions if c["type"] in ("Complete", "Failed") and c["status"] == "True"), None)


def pods_of(cluster: LocalCluster, job_name: str) -> list[dict[str, Any]]:
    return cluster.list("v1", "Pod", "default", {"job-name": job_name})


WRITE_SUMMARY = (
    "import json, os; "
    "summary = {k: os.environ.get(k) for k in ('GREETING', 'AWS_ACCESS_KEY_ID', 'AWS_ENDPOINT_URL')}; "
    "open(os.environ['MLOPS_TERMINATION_LOG'], 'w').write(json.dumps(summary))"
)


def test_a_job_runs_to_completion_with_the_pod_spec_env(cluster: LocalCluster, executor: Executor) -> None:
    created = cluster.create(job("train", WRITE_SUMMARY))
    condition = run_until(executor, lambda: job_condition(cluster, "train"))
    assert condition["type"] == "Complete"
    status = job_status(cluster, "train")
    assert status["succeeded"] == 1 and "active" not in status
    assert status["startTime"] and status["completionTime"]
    [pod] = pods_of(cluster, "train")
    assert pod["metadata"]["labels"]["controller-uid"] == created["metadata"]["uid"]
    assert pod["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["containerStatuses"][0]["name"] == "trainer"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0 and terminated["reason"] == "Completed"
    assert json.loads(terminated["message"]) == {
        "GREETING": "hello",
        "AWS_ACCESS_KEY_ID": "local",  # from the Secret
        "AWS_ENDPOINT_URL": S3.endpoint,  # pointed at the embedded S3 server
    }


def test_a_failing_job_reports_the_message_and_respects_the_backoff_limit(cluster: LocalCluster, executor: Executor) -> None:
    fail = "import os, sys; open(os.environ['MLOPS_TERMINATION_LOG'], 'w').write('bad parameter'); sys.exit(2)"
    cluster.create(job("once", fail))
    cluster.create(job("twice", fail, backoffLimit=1))
    condition = run_until(executor, lambda: job_condition(cluster, "once"))
    assert condition["type"] == "Failed" and condition["reason"] == "BackoffLimitExceeded"
    [pod] = pods_of(cluster, "once")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"], terminated["message"]) == (2, "Error", "bad parameter")
    assert pod["status"]["phase"] == "Failed"

    condition = run_until(executor, lambda: job_condition(cluster, "twice"))
    assert condition["reason"] == "BackoffLimitExceeded"
    assert job_status(cluster, "twice")["failed"] == 2
    assert len(pods_of(cluster, "twice")) == 2


def test_a_job_past_its_deadline_is_stopped(cluster: LocalCluster, executor: Executor) -> None:
    cluster.create(job("slow", "import time; time.sleep(60)", activeDeadlineSeconds=1))
    run_until(executor, lambda: executor.processes.running())
    [process] = executor.processes.running()
    condition = run_until(executor, lambda: job_condition(cluster, "slow"))
    assert condition["type"] == "Failed" and condition["reason"] == "DeadlineExceeded"
    assert not is_alive(process.pid)


def test_jobs_beyond_the_process_limit_wait_pending(cluster: LocalCluster, executor: Executor) -> None:
    executor.max_jobs = 1
    cluster.create(job("first", "import time; time.sleep(1)"))
    cluster.create(job("second", "pass"))
    executor.step()
    phases = {name: pods_of(cluster, name)[0]["status"]["phase"] for name in ("first", "second")}
    assert phases == {"first": "Running", "second": "Pending"}
    assert job_status(cluster, "second")["active"] == 1
    run_until(executor, lambda: job_condition(cluster, "second"))
    assert job_condition(cluster, "first")["type"] == "Complete"


def test_a_pod_waits_for_a_missing_secret(cluster: LocalCluster, executor: Executor) -> None:
    manifest = job("needs-secret", WRITE_SUMMARY)
    manifest["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "later", "key": "token"}}})
    cluster.create(manifest)
    executor.step()
    [pod] = pods_of(cluster, "needs-secret")
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "CreateContainerConfigError" and "later" in waiting["message"]
    events = [e for e in cluster.list("v1", "Event") if e["involvedObject"]["name"] == pod["metadata"]["name"]]
    assert events and events[0]["type"] == "Warning"
    cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "later", "namespace": "default"},
                    "stringData": {"token": "t"}})
    assert run_until(executor, lambda: job_condition(cluster, "needs-secret"), timeout=120)["type"] == "Complete"


def test_a_deleted_job_stops_its_process(cluster: LocalCluster, executor: Executor) -> None:
    cluster.create(job("doomed", "import time; time.sleep(60)"))
    run_until(executor, lambda: executor.processes.running())
    [process] = executor.processes.running()
    cluster.delete("batch/v1", "Job", "default", "doomed")
    run_until(executor, lambda: not is_alive(process.pid))
    assert pods_of(cluster, "doomed") == []


def deployment(name: str, args: list[str], env_value: str = "one", volumes: list[Any] | None = None,
               mounts: list[Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [{
                        "name": "server",
                        "image": "mlops-runtime:0.1.0",
                        "command": ["python", TINY_SERVER],
                        "args": ["--port", "8080", *args],
                        "env": [{"name": "FLAVOUR", "value": env_value}],
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
                        "volumeMounts": mounts or [],
                    }],
                    "volumes": volumes or [],
                },
            },
        },
    }


def service(name: str, app: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": {"app": app}, "ports": [{"port": 8080, "targetPort": 8080}]},
    }


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def ready(cluster: LocalCluster, name: str) -> bool:
    status = cluster.get("apps/v1", "Deployment", "default", name).get("status") or {}
    return status.get("readyReplicas") == 1 and status.get("updatedReplicas") == 1 and status.get("replicas") == 1


def test_a_deployment_serves_behind_a_stable_service_port_across_a_template_change(
    cluster: LocalCluster, executor: Executor
) -> None:
    cluster.create(deployment("web", []))
    cluster.create(service("web", "web"))
    run_until(executor, lambda: ready(cluster, "web"))
    status = cluster.get("apps/v1", "Deployment", "default", "web")["status"]
    assert status["availableReplicas"] == 1 and status["observedGeneration"] == 1
    assert {c["type"]: c["status"] for c in status["conditions"]}["Available"] == "True"
    url = executor.service_url("default", "web")
    assert url is not None
    first_pid = int(fetch(url + "/pid"))
    assert fetch(url + "/env/FLAVOUR") == "one"

    cluster.apply(deployment("web", [], env_value="two"))
    answers: list[str] = []

    def rolled() -> bool:
        answers.append(fetch(url + "/env/FLAVOUR"))  # raises if the service ever stops answering
        return ready(cluster, "web") and answers[-1] == "two"

    run_until(executor, rolled)
    assert set(answers) <= {"one", "two"}
    assert executor.service_url("default", "web") == url
    assert not is_alive(first_pid)
    assert cluster.get("apps/v1", "Deployment", "default", "web")["status"]["observedGeneration"] == 2

    second_pid = int(fetch(url + "/pid"))
    cluster.delete("apps/v1", "Deployment", "default", "web")
    run_until(executor, lambda: not is_alive(second_pid))


def test_a_crashed_server_is_restarted(cluster: LocalCluster, executor: Executor) -> None:
    cluster.create(deployment("crashy", []))
    cluster.create(service("crashy", "crashy"))
    run_until(executor, lambda: ready(cluster, "crashy"))
    url = executor.service_url("default", "crashy")
    pid = int(fetch(url + "/pid"))
    os.kill(pid, signal.SIGKILL)
    run_until(executor, lambda: not ready(cluster, "crashy"))
    [pod] = cluster.list("v1", "Pod", "default", {"app": "crashy"})
    assert pod["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 137
    run_until(executor, lambda: ready(cluster, "crashy"))
    assert int(fetch(url + "/pid")) != pid


def test_a_mounted_config_map_is_materialised_with_service_urls_rewritten(
    cluster: LocalCluster, executor: Executor
) -> None:
    def router_config(weight: int) -> dict[str, Any]:
        content = {"champion": "http://champion.default.svc:8080", "weight": weight,
                   "external": "http://example.com:8080"}
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "router-config", "namespace": "default"},
                "data": {"router.json": json.dumps(content)}}

    cluster.create(router_config(10))
    cluster.create(service("champion", "champion"))
    cluster.create(deployment("champion", []))
    cluster.create(deployment(
        "router",
        ["--config-file", "/etc/mlops/router/router.json"],
        volumes=[{"name": "config", "configMap": {"name": "router-config"}}],
        mounts=[{"name": "config", "mountPath": "/etc/mlops/router", "readOnly": True}],
    ))
    cluster.create(service("router", "router"))
    run_until(executor, lambda: ready(cluster, "router") and ready(cluster, "champion"))
    router = executor.service_url("default", "router")
    champion = executor.service_url("default", "champion")
    config = json.loads(fetch(router + "/config"))
    assert config == {"champion": champion, "weight": 10, "external": "http://example.com:8080"}
    assert fetch(config["champion"] + "/ready") == "ok"

    cluster.apply(router_config(50))
    run_until(executor, lambda: json.loads(fetch(router + "/config"))["weight"] == 50)


def test_shutdown_stops_every_process_and_empties_the_record(cluster: LocalCluster, executor: Executor, tmp_path: Path) -> None:
    cluster.create(job("long", "import time; time.sleep(60)"))
    cluster.create(deployment("web", []))
    run_until(executor, lambda: ready(cluster, "web") and len(executor.processes.running()) == 2)
    recorded = json.loads((tmp_path / "pids.json").read_text())
    pids = [entry["pid"] for entry in recorded.values()]
    assert len(pids) == 2 and all(is_alive(pid) for pid in pids)
    executor.shutdown(grace=2.0)
    assert not [pid for pid in pids if is_alive(pid)]
    assert json.loads((tmp_path / "pids.json").read_text()) == {}


def test_python_in_the_pod_spec_runs_this_interpreter(cluster: LocalCluster, executor: Executor) -> None:
    cluster.create(job("which", "import os, sys; open(os.environ['MLOPS_TERMINATION_LOG'], 'w').write(sys.executable)"))
    run_until(executor, lambda: job_condition(cluster, "which"))
    [pod] = pods_of(cluster, "which")
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == sys.executable


def test_a_fail_job_rule_of_the_pod_failure_policy_stops_retries(cluster: LocalCluster, executor: Executor) -> None:
    policy = {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [2]}},
        {"action": "Count", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [75]}},
    ]}
    cluster.create(job("user-error", "import sys; sys.exit(2)", backoffLimit=3, podFailurePolicy=policy))
    condition = run_until(executor, lambda: job_condition(cluster, "user-error"))
    assert condition["type"] == "Failed" and condition["reason"] == "PodFailurePolicy"
    assert "exit code 2" in condition["message"]
    assert len(pods_of(cluster, "user-error")) == 1


def test_a_finished_job_is_deleted_after_its_ttl_with_its_pods(cluster: LocalCluster, executor: Executor) -> None:
    cluster.create(job("short-lived", "pass", ttlSecondsAfterFinished=0))
    run_until(executor, lambda: not cluster.list("batch/v1", "Job"))
    assert pods_of(cluster, "short-lived") == []


def test_paths_under_an_empty_dir_mount_point_to_a_local_folder(cluster: LocalCluster, executor: Executor, tmp_path: Path) -> None:
    manifest = job("scratch", "import os; open(os.environ['MLOPS_TERMINATION_LOG'], 'w').write(os.environ['HOME'])")
    pod_spec = manifest["spec"]["template"]["spec"]
    pod_spec["volumes"] = [{"name": "tmp", "emptyDir": {}}]
    pod_spec["containers"][0]["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]
    pod_spec["containers"][0]["env"].append({"name": "HOME", "value": "/tmp"})
    cluster.create(manifest)
    run_until(executor, lambda: job_condition(cluster, "scratch"))
    [pod] = pods_of(cluster, "scratch")
    home = Path(pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    assert home.is_dir() and tmp_path in home.parents


def test_the_interpreter_is_never_taken_for_a_path_inside_a_mount(cluster: LocalCluster, executor: Executor) -> None:
    """This checkout's python may live under a folder a pod mounts (a clone under /tmp, an
    emptyDir at /tmp): it is a program of this machine, never remapped into the pod's folder."""
    manifest = job("interpreter", "import os, sys; open(os.environ['MLOPS_TERMINATION_LOG'], 'w').write(sys.executable)")
    pod_spec = manifest["spec"]["template"]["spec"]
    pod_spec["volumes"] = [{"name": "shadow", "emptyDir": {}}]
    pod_spec["containers"][0]["volumeMounts"] = [{"name": "shadow", "mountPath": str(Path(sys.executable).parent)}]
    cluster.create(manifest)
    run_until(executor, lambda: job_condition(cluster, "interpreter"))
    [pod] = pods_of(cluster, "interpreter")
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == sys.executable


def test_each_replica_is_a_process_behind_the_service(cluster: LocalCluster, executor: Executor) -> None:
    manifest = deployment("pair", [])
    manifest["spec"]["replicas"] = 2
    cluster.create(manifest)
    cluster.create(service("pair", "pair"))

    def both_ready() -> bool:
        status = cluster.get("apps/v1", "Deployment", "default", "pair").get("status") or {}
        return status.get("readyReplicas") == 2 and status.get("replicas") == 2

    run_until(executor, both_ready)
    url = executor.service_url("default", "pair")
    assert len({fetch(url + "/pid") for _ in range(6)}) == 2  # round robin over both
    manifest["spec"]["replicas"] = 1
    cluster.apply(manifest)
    run_until(executor, lambda: (cluster.get("apps/v1", "Deployment", "default", "pair").get("status") or {})
              .get("replicas") == 1)
    assert len({fetch(url + "/pid") for _ in range(4)}) == 1
