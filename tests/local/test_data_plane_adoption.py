"""What lets the data plane outlive the local instance: processes adopted from the pid
record, the Service ports served by a process of their own, and server pods adopted by a
new executor instead of being restarted."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from test_executor import S3, cluster, deployment, fetch, run_until, service  # noqa: F401

from mlops_operator.local.executor import Executor, PortBook
from mlops_operator.local.processes import UNKNOWN_EXIT_CODE, ProcessTable, is_alive, read_recorded
from mlops_operator.local.proxy import PROXY_KEY, ProxyProcess, ServiceProxy
from mlops_operator.local.state import LocalCluster


def wait_for(condition, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def sleeper(table: ProcessTable, key: str, tmp_path: Path) -> int:
    return table.spawn(key, [sys.executable, "-c", "import time; time.sleep(120)"], {}, tmp_path,
                       tmp_path / f"{key.replace('/', '_')}.log").pid


def test_a_new_table_adopts_the_processes_it_keeps_and_stops_the_others(tmp_path: Path) -> None:
    pids = tmp_path / "pids.json"
    first = ProcessTable(pids)
    kept, other = sleeper(first, "keep", tmp_path), sleeper(first, "other", tmp_path)
    exits = threading.Event()
    second = ProcessTable(pids, on_exit=exits.set)  # the first one's owner died
    assert second.adopt_recorded(lambda key: key == "keep") == []
    assert not is_alive(other) and is_alive(kept)
    assert set(read_recorded(pids)) == {"keep"}
    adopted = second.get("keep")
    assert adopted is not None and adopted.pid == kept and adopted.poll() is None
    # Not its child, yet its end is noticed (and woken up on), with an unknown status.
    os.kill(kept, signal.SIGKILL)
    assert exits.wait(10)
    assert adopted.poll() == UNKNOWN_EXIT_CODE
    second.stop_all(grace=1.0)
    assert read_recorded(pids) == {}


class Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def backend() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()


def test_the_proxy_process_is_recorded_guarded_adopted_and_stopped(tmp_path: Path, backend: int) -> None:
    from mlops_operator.local.proxy import RECORD_NAME, free_port

    record, log = tmp_path / RECORD_NAME, tmp_path / "proxy.log"
    table = ProcessTable(tmp_path / "pids.json")
    proxy = ProxyProcess.attach_or_start(table, record, log)
    port = free_port()
    proxy.set_backends(port, [backend])
    assert fetch(f"http://127.0.0.1:{port}/") == "hello"
    assert read_recorded(tmp_path / "pids.json")[PROXY_KEY]["pid"] == proxy.pid
    assert record.stat().st_mode & 0o077 == 0  # the token is the owner's only
    control = json.loads(record.read_text())["controlPort"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{control}/backends/{port}",
                                                      data=b'{"backends": [1]}', method="PUT"), timeout=5)
    assert refused.value.code == 401

    # A new owner (the instance restarted) adopts it: same process, same ports, same backends.
    table_after = ProcessTable(tmp_path / "pids.json")
    assert table_after.adopt_recorded(lambda key: key == PROXY_KEY) == []
    adopted = ProxyProcess.attach_or_start(table_after, record, log)
    assert adopted.pid == proxy.pid
    assert adopted.ports() == [port] and adopted.backends(port) == [backend]
    assert fetch(f"http://127.0.0.1:{port}/") == "hello"

    pid = adopted.pid
    adopted.stop(grace=2.0)
    assert pid is not None and not is_alive(pid) and not record.exists()
    assert PROXY_KEY not in read_recorded(tmp_path / "pids.json")


def test_the_proxy_process_stops_when_its_record_is_removed(tmp_path: Path) -> None:
    from mlops_operator.local.proxy import RECORD_NAME

    table = ProcessTable(tmp_path / "pids.json")
    proxy = ProxyProcess.attach_or_start(table, tmp_path / RECORD_NAME, tmp_path / "proxy.log")
    (tmp_path / RECORD_NAME).unlink()
    wait_for(lambda: proxy.pid is not None and not is_alive(proxy.pid))
    table.stop_all(grace=1.0)


def test_a_new_executor_adopts_the_serving_pods_of_the_old_one(cluster: LocalCluster, tmp_path: Path) -> None:
    ports = PortBook()
    first_proxy = ServiceProxy()
    first = Executor(cluster, tmp_path, ProcessTable(tmp_path / "pids.json"), first_proxy, ports, S3)
    cluster.create(deployment("web", []))
    cluster.create(service("web", "web"))
    run_until(first, lambda: (cluster.get("apps/v1", "Deployment", "default", "web").get("status") or {})
              .get("readyReplicas") == 1)
    url = first.service_url("default", "web")
    pid = int(fetch(url + "/pid"))
    [pod] = cluster.list("v1", "Pod", "default", {"app": "web"})
    first_proxy.stop()  # the first instance is gone; its server process is not

    processes = ProcessTable(tmp_path / "pids.json")
    survivors = {f"pod/default/{pod['metadata']['name']}"}
    assert processes.adopt_recorded(lambda key: key in survivors) == []
    proxy = ServiceProxy()
    second = Executor(cluster, tmp_path, processes, proxy, PortBook(ports.as_dict()), S3)
    try:
        for _ in range(10):
            second.step()
        assert second.service_url("default", "web") == url
        assert int(fetch(url + "/pid")) == pid  # the same process serves on
        assert [p["metadata"]["name"] for p in cluster.list("v1", "Pod", "default", {"app": "web"})] == \
            [pod["metadata"]["name"]]
        status = cluster.get("apps/v1", "Deployment", "default", "web")["status"]
        assert (status["replicas"], status["readyReplicas"], status["updatedReplicas"]) == (1, 1, 1)
    finally:
        second.shutdown(grace=2.0)
        proxy.stop()
    assert not is_alive(pid)


def test_a_rollout_step_or_a_new_router_weight_changes_the_fingerprint_saved_before_the_data_plane_acts() -> None:
    from mlops_operator.local.instance import rollout_fingerprint

    def isvc(stage: str | None, step: int | None) -> dict:
        return {"metadata": {"name": "iris", "namespace": "default"},
                "status": {"rolloutStage": stage, "currentStep": step, "champion": "iris-v1", "challenger": "iris-v2",
                           "lastAnalysis": {"time": stage}}}

    def config(weight: int) -> dict:
        return {"metadata": {"name": "iris-router-config", "namespace": "default"},
                "data": {"router.json": json.dumps({"weight": weight})}}

    at_10 = rollout_fingerprint([isvc("Analysing", 0)], [config(10)])
    assert rollout_fingerprint([isvc("Analysing", 0)], [config(10)]) == at_10
    assert rollout_fingerprint([isvc("Analysing", 1)], [config(10)]) != at_10
    assert rollout_fingerprint([isvc("Analysing", 0)], [config(25)]) != at_10
    assert rollout_fingerprint([isvc("Starting", None)], [config(10)]) != at_10
