"""`mlops local ...` and `mlops run` where a newcomer's first hour went wrong (issue #15): an
empty file, `down` in a fresh folder, a pipe closed early, no cluster, deleting what failed,
and an `up` that answers only for what it applied."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops_operator import cli
from mlops_operator.local import client, settle
from mlops_operator.local import state as saved_state
from mlops_operator.local.processes import is_alive
from mlops_operator.local.seaweed import SeaweedServer
from test_local_cli import web  # a Deployment (then a Service and a Job) of the tiny server


def mlops(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlops_operator", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=300, env=env)


def write(path: Path, documents: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(documents))
    return path


# -- without an instance -----------------------------------------------------------------------


def test_an_empty_file_is_an_error_and_nothing_starts(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    for command in ("up", "apply"):
        result = mlops(tmp_path, "local", command, "-f", "empty.yaml")
        assert result.returncode == 2, result.stdout + result.stderr
        assert "empty.yaml: no resources in this file" in result.stderr
    assert not (tmp_path / ".mlops").exists()


def test_down_in_a_fresh_folder_creates_nothing(tmp_path: Path) -> None:
    result = mlops(tmp_path, "local", "down")
    assert result.returncode == 0 and "no local instance was running" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_down_with_a_state_folder_but_no_instance_writes_no_pid_file(tmp_path: Path) -> None:
    (tmp_path / ".mlops").mkdir()
    result = mlops(tmp_path, "local", "down")
    assert result.returncode == 0 and "no local instance was running" in result.stdout
    assert list((tmp_path / ".mlops").iterdir()) == []


def test_output_into_a_pipe_closed_early_ends_quietly(tmp_path: Path) -> None:
    # Enough saved objects that the JSON outgrows the pipe's buffer while `head` has gone.
    objects = [{"apiVersion": "mlops.seed.io/v1alpha1", "kind": "ModelVersion",
                "metadata": {"name": f"iris-v{i}", "namespace": "default", "uid": str(i),
                             "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"model": "iris", "version": i, "metrics": {"accuracy": 0.9},
                         "artifact": {"uri": "s3://x/", "modelUri": "s3://x/m", "sha256": "ab" * 32}}}
               for i in range(1, 600)]
    (tmp_path / ".mlops").mkdir()
    saved_state.save(tmp_path / ".mlops" / "state.json", saved_state.SavedState(objects, {}, {}))
    command = f"{sys.executable} -m mlops_operator local get mlops -o json | head -1"
    result = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.stdout == "{\n"
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr


def test_run_without_a_cluster_says_so_in_one_line_and_fails(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    env["HOME"] = str(tmp_path)
    result = mlops(tmp_path, "run", "--all-namespaces", "--metrics-port", "0", "--liveness-port", "0", env=env)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("error: no Kubernetes cluster is configured") and "mlops local up" in line
    assert result.stdout == ""


def test_what_counts_as_a_configured_cluster(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert "no kubeconfig at" in cli.no_cluster_reason({}, home)
    assert cli.no_cluster_reason({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, home) is None
    config = tmp_path / "config"
    config.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    assert "has no current-context" in cli.no_cluster_reason({"KUBECONFIG": str(config)}, home)
    config.write_text("apiVersion: v1\nkind: Config\ncurrent-context: kind-mlops\n")
    assert cli.no_cluster_reason({"KUBECONFIG": f"{tmp_path / 'missing'}{os.pathsep}{config}"}, home) is None
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text(config.read_text())
    assert cli.no_cluster_reason({}, home) is None


def test_the_s3_servers_logs_stay_in_its_folder(tmp_path: Path) -> None:
    server = SeaweedServer(tmp_path / "s3").start(timeout=60)
    pid = server.pid
    try:
        assert glob.glob(str(tmp_path / "s3" / "logs" / "weed.*"))
    finally:
        server.stop()
    assert glob.glob(f"/tmp/weed.*.{pid}") == []


# -- what one `up` answers for ---------------------------------------------------------------


def test_the_scope_of_an_up_is_what_it_applied_and_what_that_owns() -> None:
    def obj(kind: str, name: str, uid: str, owner: str | None = None) -> dict[str, Any]:
        refs = [{"uid": owner, "kind": "x", "name": "x"}] if owner else []
        return {"kind": kind, "metadata": {"name": name, "namespace": "default", "uid": uid, "ownerReferences": refs}}

    objects = [obj("Experiment", "iris", "1"), obj("TrainingRun", "iris-t001", "2", owner="1"),
               obj("Job", "iris-t001-trainer", "3", owner="2"), obj("Experiment", "badest", "4"),
               obj("TrainingRun", "badest-t001", "5", owner="4")]
    scoped = settle.owned_by(objects, [("Experiment", "default", "iris")])
    assert [o["metadata"]["name"] for o in scoped] == ["iris", "iris-t001", "iris-t001-trainer"]
    assert settle.owned_by(objects, [("Experiment", "other", "iris")]) == []


def broken_job() -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "broken"},
            "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [{
                "name": "main", "image": "x", "command": ["python", "-c", "raise SystemExit(3)"]}]}}}}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a dozen commands, each a Python start-up: minutes on a loaded machine
def test_delete_removes_what_failed_and_an_up_answers_only_for_what_it_applied(tmp_path: Path) -> None:
    state = tmp_path / ".mlops"
    try:
        failing = mlops(tmp_path, "local", "up", "-f", str(write(tmp_path / "broken.yaml", [broken_job()])),
                        "--exit-when-settled")
        assert failing.returncode == 1, failing.stdout + failing.stderr
        assert "settled, 1 failed:" in failing.stdout and "Job default/broken: Failed" in failing.stdout

        # Something else, applied later: the earlier failure is reported, not counted.
        up = mlops(tmp_path, "local", "up", "-f", str(write(tmp_path / "web.yaml", web("one")[:1])),
                   "--exit-when-settled")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "settled: nothing failed" in up.stdout
        assert "1 failed earlier (not applied by this command" in up.stdout
        assert "Job default/broken: Failed" in up.stdout

        gone = mlops(tmp_path, "local", "delete", "job", "broken")
        assert gone.returncode == 0 and "jobs.batch/broken deleted" in gone.stdout, gone.stderr
        again = mlops(tmp_path, "local", "delete", "job", "broken")
        assert again.returncode == 1 and "jobs.batch/broken not found" in again.stdout
        everything = mlops(tmp_path, "local", "up", "--exit-when-settled")
        assert everything.returncode == 0 and "settled: nothing failed" in everything.stdout, everything.stdout

        # The Deployment goes with the file it came from, its pods and their process with it.
        [pod] = json.loads(mlops(tmp_path, "local", "get", "pods", "-o", "json").stdout)["items"]
        pids = set(client.own_pids(state))
        deleted = mlops(tmp_path, "local", "delete", "-f", str(tmp_path / "web.yaml"))
        assert deleted.returncode == 0 and "deployments.apps/web deleted" in deleted.stdout, deleted.stderr
        settled = mlops(tmp_path, "local", "up", "--exit-when-settled")
        assert settled.returncode == 0, settled.stdout + settled.stderr
        assert json.loads(mlops(tmp_path, "local", "get", "pods", "-o", "json").stdout)["items"] == []
        left = set(client.own_pids(state))
        assert len(pids - left) == 1, (pod["metadata"]["name"], pids, left)  # the web server's process
        usage = mlops(tmp_path, "local", "delete", "mlops", "x")
        assert usage.returncode == 2 and "names several kinds" in usage.stderr
        log = (state / "logs" / "instance.log").read_text()
        assert "starting the local instance" in log  # the instance's own log is not empty
    finally:
        down = mlops(tmp_path, "local", "down")
    assert down.returncode == 0, down.stderr
    assert [pid for pid in pids if is_alive(pid)] == []


def test_the_state_on_disk_knows_a_deployment_before_the_executor_starts_its_process(tmp_path: Path) -> None:
    """The instance's pass order, with the controllers and the executor played by the test:
    what a pass decided is saved before the executor acts on it."""
    import threading

    from mlops_operator.local.instance import Instance

    instance = Instance(tmp_path / ".mlops")
    instance.paths.root.mkdir()
    instance.paths.instance_file.write_text("{}")
    instance.cluster = saved_state.LocalCluster()
    instance.ports = type("Ports", (), {"as_dict": lambda self: {}})()
    instance.credentials = {}
    seen: list[list[str]] = []

    class Controllers:
        passes = 0

        def run_pass(self) -> None:
            if not instance.cluster.list("apps/v1", "Deployment"):
                instance.cluster.create(web("one")[0] | {"metadata": {"name": "web", "namespace": "default"}})
            return None

    class Executor:
        def step(self) -> None:
            saved = saved_state.load(instance.paths.state_file)
            seen.append([o["metadata"]["name"] for o in (saved.objects if saved else []) if o["kind"] == "Deployment"])
            instance.stopping.set()
            return None

    instance.loop, instance.executor = Controllers(), Executor()
    instance.progress = type("Quiet", (), {"observe": lambda self, cluster: None})()
    thread = threading.Thread(target=instance.serve)
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    assert seen == [["web"]]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_experiment_no_trial_could_run_is_refused_once_and_settles_as_failed(tmp_path: Path) -> None:
    bad = {"apiVersion": "mlops.seed.io/v1alpha1", "kind": "Experiment", "metadata": {"name": "badest"},
           "spec": {"model": "bad", "dataset": {"uri": "sklearn://iris"},
                    "estimator": "sklearn.ensemble.RandomForestClasifier", "search": {"maxTrials": 1}}}
    try:
        up = mlops(tmp_path, "local", "up", "-f", str(write(tmp_path / "bad.yaml", [bad])), "--exit-when-settled",
                   "--timeout", "600")
        assert up.returncode == 1, up.stdout + up.stderr
        assert "settled, 1 failed:" in up.stdout
        assert "Experiment default/badest: InvalidSpec: spec.estimator:" in up.stdout
        assert "did you mean sklearn.ensemble.RandomForestClassifier" in up.stdout
        assert up.stdout.count("did you mean") == 2  # the Warning once, the summary once
        assert "search over sklearn.ensemble.RandomForestClasifier" not in up.stdout  # no search starts
        runs = mlops(tmp_path, "local", "get", "trainingruns", "-o", "json")
        assert json.loads(runs.stdout)["items"] == []
    finally:
        assert mlops(tmp_path, "local", "down").returncode == 0
