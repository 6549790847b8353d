"""`mlops local` commands as a user runs them: bad input loses nothing, an instance runs in
the background and outlives the command, `apply` changes it, `get` reads it (or the saved
state when it is down), `down` stops every process by pid, a second `up` resumes.

The resources here are plain Deployments, Services and Jobs (no training), so these run in
seconds; tests/local/test_local_e2e.py runs the whole loop.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops_operator.local import client
from mlops_operator.local.processes import is_alive

TINY_SERVER = str(Path(__file__).with_name("tiny_server.py"))


def mlops(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlops_operator", "local", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=600)


def web(flavour: str) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
         "spec": {"selector": {"matchLabels": {"app": "web"}},
                  "template": {"metadata": {"labels": {"app": "web"}},
                               "spec": {"containers": [{
                                   "name": "server", "image": "x", "command": ["python", TINY_SERVER],
                                   "args": ["--port", "8080"], "env": [{"name": "FLAVOUR", "value": flavour}],
                                   "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
         "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080}]}},
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "hello"},
         "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [{
             "name": "main", "image": "x", "command": ["python", "-c", "print('hello')"]}]}}}},
    ]


def write(path: Path, documents: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(documents))
    return path


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read().decode()


def test_invalid_resources_are_reported_by_file_and_field_and_nothing_starts(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: mlops.seed.io/v1alpha1\nkind: Experiment\nmetadata: {name: iris}\n"
        "spec: {model: iris, dataset: {uri: 'sklearn://iris'}, estimator: sklearn.tree.DecisionTreeClassifier,"
        " search: {maxTrials: 0}}\n"
        "---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n"
    )
    result = mlops(tmp_path, "up", "-f", str(bad), "--exit-when-settled")
    assert result.returncode == 2
    assert "nothing was applied" in result.stderr
    assert "bad.yaml (document 1) Experiment/iris: spec.search.maxTrials:" in result.stderr
    assert "(document 2) Widget/w: kind 'Widget'" in result.stderr
    assert not (tmp_path / ".mlops").exists()


def test_commands_without_an_instance_say_what_to_do(tmp_path: Path) -> None:
    up = mlops(tmp_path, "up")
    assert up.returncode == 2 and "give the resources with -f PATH" in up.stderr
    get = mlops(tmp_path, "get", "experiments")
    assert get.returncode == 1 and "no local instance and no saved state" in get.stderr
    unknown = mlops(tmp_path, "get", "widgets")
    assert unknown.returncode == 2 and 'resource type "widgets"' in unknown.stderr
    down = mlops(tmp_path, "down")
    assert down.returncode == 0 and "no local instance was running" in down.stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a dozen commands, each a Python start-up: minutes on a loaded machine
def test_an_instance_runs_in_the_background_is_changed_listed_stopped_and_resumed(tmp_path: Path) -> None:
    state = tmp_path / ".mlops"
    up = mlops(tmp_path, "up", "-f", str(write(tmp_path / "web.yaml", web("one"))), "--exit-when-settled")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "deployments.apps/web created" in up.stdout and "jobs.batch/hello created" in up.stdout
        control = client.attach(client.StateDir(state))
        assert control is not None and is_alive(control.pid)  # it outlived `up`

        services = mlops(tmp_path, "get", "svc", "-o", "json")
        [service] = json.loads(services.stdout)["items"]
        port = service["status"]["loadBalancer"]["ingress"][0]["ports"][0]["port"]
        url = f"http://127.0.0.1:{port}"
        assert fetch(url + "/env/FLAVOUR") == "one"

        table = mlops(tmp_path, "get", "deployments")
        assert table.returncode == 0
        assert table.stdout.splitlines()[0].split() == ["NAMESPACE", "NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
        assert table.stdout.splitlines()[1].split()[:5] == ["default", "web", "1/1", "1", "1"]

        again = mlops(tmp_path, "apply", "-f", str(write(tmp_path / "web.yaml", web("two"))))
        assert again.returncode == 0
        assert "deployments.apps/web configured" in again.stdout and "services/web unchanged" in again.stdout
        settled = mlops(tmp_path, "up", "--exit-when-settled")
        assert settled.returncode == 0 and "using the running local instance" in settled.stdout
        assert fetch(url + "/env/FLAVOUR") == "two"  # settled: the new pod serves, the old one is gone

        second = subprocess.run([sys.executable, "-m", "mlops_operator.local.instance", str(state)],
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 1 and "already runs" in second.stderr

        # Ctrl-C as a terminal sends it, whatever the suite was started from: a shell's background
        # job (`.ci/run &`) hands its children SIGINT ignored, and Python keeps it ignored.
        follower = subprocess.Popen([sys.executable, "-m", "mlops_operator", "local", "up"], cwd=tmp_path,
                                    stdout=subprocess.PIPE, text=True,
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        assert follower.stdout is not None
        for line in follower.stdout:
            if "keeps running" in line:
                break
        follower.send_signal(signal.SIGINT)
        rest, _ = follower.communicate(timeout=300)
        assert follower.returncode == 0 and "detached: the local instance keeps running" in rest
        assert is_alive(control.pid) and fetch(url + "/env/FLAVOUR") == "two"

        ours = client.own_pids(state)
        assert len(ours) == 4  # the instance, the S3 server, the Service proxy, the web server (the Job is done)
    finally:
        down = mlops(tmp_path, "down")
    assert down.returncode == 0, down.stderr
    assert [pid for pid in ours if is_alive(pid)] == []
    assert json.loads((state / "pids.json").read_text()) == {}

    saved = mlops(tmp_path, "get", "jobs")
    assert saved.returncode == 0 and "the local instance is down" in saved.stderr
    assert saved.stdout.splitlines()[1].split()[:4] == ["default", "hello", "Complete", "1/1"]

    resumed = mlops(tmp_path, "up", "--exit-when-settled")
    try:
        assert resumed.returncode == 0 and "resuming" in resumed.stdout
        assert fetch(url + "/env/FLAVOUR") == "two"  # the same port, the changed spec
    finally:
        assert mlops(tmp_path, "down").returncode == 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_instance_whose_folder_is_removed_stops_with_its_processes(tmp_path: Path) -> None:
    up = mlops(tmp_path, "up", "-f", str(write(tmp_path / "web.yaml", web("one"))), "--exit-when-settled")
    assert up.returncode == 0, up.stdout + up.stderr
    ours = client.own_pids(tmp_path / ".mlops")
    assert len(ours) == 4  # the instance, the S3 server, the Service proxy, the web server
    shutil.rmtree(tmp_path / ".mlops")
    deadline = time.monotonic() + 300
    while any(is_alive(pid) for pid in ours) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [pid for pid in ours if is_alive(pid)] == []
    assert not (tmp_path / ".mlops").exists()
