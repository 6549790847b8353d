"""The router's control surface, attacked from the data plane (issue 18).

The router runs as a real process with the command line of the operator's own Deployment
builder (`desired_router_deployment`), its ConfigMap and admin Secret as the operator builds
them, translated to this machine by the local executor's pod-spec functions (Service URLs to
local ports, mount paths to folders), exactly as local mode runs it. The variants are two tiny
HTTP servers that say who they are; a third one plays the attacker.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlops_operator.api.inference_service import InferenceService, TrafficSplit
from mlops_operator.local import podspec
from mlops_operator.reconcile import inference_service as logic
from mlops_runtime.router import DEFAULT_ADMIN_HOST, parse_args
from mlops_runtime.serving_process import ServerProcess, free_port

NS = "team-a"
TOKEN = "a-token-the-operator-made"
METADATA = "http://169.254.169.254"


class Upstream:
    """An HTTP server that answers every request with its own name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hits = 0
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                upstream.hits += 1
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                body = json.dumps({"predictions": [upstream.name], "ready": True}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def isvc() -> InferenceService:
    return InferenceService.model_validate({
        "apiVersion": "mlops.seed.io/v1alpha1", "kind": "InferenceService",
        "metadata": {"name": "iris", "namespace": NS}, "spec": {"model": "iris"}})


def write_configmap(folder: Path, config: dict[str, Any]) -> None:
    """Write router.json as the kubelet updates a ConfigMap volume: a new file swapped in."""
    folder.mkdir(parents=True, exist_ok=True)
    staged = folder / ".router.json.new"
    staged.write_text(json.dumps(config))
    staged.replace(folder / logic.ROUTER_CONFIG_KEY)


class Pod:
    """The operator's router pod, as local mode runs it."""

    def __init__(self, tmp: Path, upstreams: dict[str, Upstream], extra_args: list[str] = ()) -> None:
        service = isvc()
        self.ports = {logic.champion_name("iris"): upstreams["champion"].url,
                      logic.challenger_name("iris"): upstreams["challenger"].url}
        deployment = logic.desired_router_deployment(service)
        pod_spec = deployment["spec"]["template"]["spec"]
        container = podspec.the_container(pod_spec)
        self.config_dir = tmp / "router-config"
        self.admin_dir = tmp / "router-admin"
        secret = logic.desired_router_admin_secret(service, TOKEN)
        files = podspec.volume_files(pod_spec, container, NS, lambda ns, name: secret,
                                     lambda ns, name: self.config_map(service))
        assert set(files) == {"/tmp", logic.ROUTER_CONFIG_DIR, logic.ROUTER_ADMIN_DIR}
        self.admin_dir.mkdir()
        for name, text in files[logic.ROUTER_ADMIN_DIR].items():
            (self.admin_dir / name).write_text(text)
        self.write_config(json.loads(files[logic.ROUTER_CONFIG_DIR][logic.ROUTER_CONFIG_KEY]))
        mounts = {logic.ROUTER_CONFIG_DIR: self.config_dir, logic.ROUTER_ADMIN_DIR: self.admin_dir, "/tmp": tmp}
        program, module, *args = container.argv
        assert module == "-m"
        module, *args = args
        args = [self.local_url(part) for part in podspec.map_paths(args, mounts)]
        self.process = ServerProcess(module, [*strip_listen_address(args), "--config-poll", "0.1",
                                              "--log-level", "info", *extra_args],
                                     log_path=tmp / "router.log")

    def config_map(self, service: InferenceService) -> dict[str, Any]:
        config = logic.router_config(service, TrafficSplit(), challenger_routed=False)
        return logic.desired_router_config_map(service, config)

    def local_url(self, text: str) -> str:
        def port(namespace: str, name: str, certain: bool) -> int | None:
            url = self.ports.get(name)
            return int(url.rsplit(":", 1)[1]) if url and namespace == NS else None

        return podspec.rewrite_service_urls(text, NS, port)

    def write_config(self, config: dict[str, Any]) -> None:
        """What the operator does to change the split: rewrite the ConfigMap (and what the
        local executor does to a mounted ConfigMap: Service URLs to local ports)."""
        write_configmap(self.config_dir, {k: self.local_url(v) if isinstance(v, str) else v
                                          for k, v in config.items()})


def strip_listen_address(args: list[str]) -> list[str]:
    """The pod's `--port 8080`: ServerProcess gives the local port and host instead."""
    out, skip = [], False
    for part in args:
        if skip:
            skip = False
        elif part in ("--port", "--host"):
            skip = True
        else:
            out.append(part)
    return out


@pytest.fixture()
def upstreams() -> Iterator[dict[str, Upstream]]:
    servers = {name: Upstream(name) for name in ("champion", "challenger", "attacker")}
    yield servers
    for server in servers.values():
        server.close()


@pytest.fixture()
def pod(tmp_path: Path, upstreams: dict[str, Upstream]) -> Iterator[Pod]:
    pod = Pod(tmp_path, upstreams)
    pod.process.start().wait_ready(timeout=30)
    yield pod
    pod.process.stop()


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def answered_by(url: str) -> str:
    answer = httpx.post(url + "/predict", json={"instances": [[1, 2, 3, 4]]})
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"][0]


def wait_for(condition: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


# -- the pod the operator builds --------------------------------------------------------------


def test_the_operator_gives_the_router_no_admin_port_its_variants_and_a_token_file() -> None:
    container = logic.desired_router_deployment(isvc())["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert "--admin-port" not in args, "config changes come only from the ConfigMap"
    assert args[args.index("--admin-token-file") + 1] == logic.ROUTER_ADMIN_TOKEN_FILE
    assert args[args.index("--upstream") + 1] == logic.service_url(logic.challenger_name("iris"), NS)
    assert [p["containerPort"] for p in container["ports"]] == [logic.PORT]
    assert not [e for e in container["env"] if "valueFrom" in e], "the token is a file, not an env variable"


def test_the_admin_port_listens_on_localhost_and_never_without_a_token(tmp_path: Path) -> None:
    settings = parse_args(["--champion", "http://a:8080", "--admin-port", "9000", "--admin-token", "t"])
    assert settings.admin_host == DEFAULT_ADMIN_HOST == "127.0.0.1"
    with pytest.raises(SystemExit):
        parse_args(["--champion", "http://a:8080", "--admin-port", "9000"])
    with pytest.raises(SystemExit):
        parse_args(["--champion", "http://a:8080", "--admin-port", "8080", "--admin-token", "t"])
    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(SystemExit):
        parse_args(["--champion", "http://a:8080", "--admin-token-file", str(empty)])


# -- from the Service port --------------------------------------------------------------------


def test_reading_the_config_needs_the_token(pod: Pod) -> None:
    url = pod.process.url
    assert httpx.get(url + "/admin/config").status_code == 401
    assert httpx.get(url + "/admin/config", headers=auth("wrong")).status_code == 401
    assert httpx.get(url + "/admin/config", headers={"authorization": TOKEN}).status_code == 401
    seen = httpx.get(url + "/admin/config", headers=auth(TOKEN))
    assert seen.status_code == 200 and seen.json()["champion"] == pod.ports[logic.champion_name("iris")]


def test_a_secret_made_anew_brings_a_new_token(pod: Pod) -> None:
    url = pod.process.url
    (pod.admin_dir / logic.ROUTER_ADMIN_KEY).write_text("the-new-token")  # the kubelet's update
    assert httpx.get(url + "/admin/config", headers=auth("the-new-token")).status_code == 200
    assert httpx.get(url + "/admin/config", headers=auth(TOKEN)).status_code == 401


def test_no_change_is_possible_from_the_service_port(pod: Pod, upstreams: dict[str, Upstream]) -> None:
    url = pod.process.url
    for headers in ({}, auth("wrong"), auth(TOKEN)):
        for doc in ({"champion": upstreams["attacker"].url}, {"champion": METADATA}, {"weight": 100}):
            answer = httpx.put(url + "/admin/config", json=doc, headers=headers)
            assert answer.status_code == 405, answer.text
            assert "ConfigMap" in answer.json()["error"]
    for method in ("POST", "PATCH", "DELETE"):
        assert httpx.request(method, url + "/admin/config", json={"champion": METADATA}).status_code == 405
    assert answered_by(url) == "champion"
    assert upstreams["attacker"].hits == 0
    assert httpx.get(url + "/admin/config", headers=auth(TOKEN)).json()["weight"] == 0


def test_a_config_file_naming_a_foreign_upstream_is_not_applied(pod: Pod, upstreams: dict[str, Upstream]) -> None:
    url = pod.process.url
    challenger = logic.service_url(logic.challenger_name("iris"), NS)
    for champion in (upstreams["attacker"].url, METADATA, "http://iris-champion.team-b.svc:8080"):
        pod.write_config({"champion": champion, "challenger": None, "weight": 0, "mode": "canary"})
        wait_for(lambda: "is not one of the upstreams this router was started with" in pod.process.log_tail(50_000)
                 and champion.rstrip("/") in pod.process.log_tail(50_000), f"refusal of {champion} not logged")
        assert answered_by(url) == "champion"
    # The variants the operator configured still work: the challenger takes all traffic.
    pod.write_config({"champion": logic.service_url(logic.champion_name("iris"), NS),
                      "challenger": challenger, "weight": 100, "mode": "canary"})
    wait_for(lambda: httpx.get(url + "/admin/config", headers=auth(TOKEN)).json()["weight"] == 100,
             "the operator's own change was not applied")
    assert answered_by(url) == "challenger"
    assert upstreams["attacker"].hits == 0


# -- the admin port, for a person with kubectl port-forward and the token ---------------------


def test_the_admin_port_needs_the_token_and_accepts_only_the_variants(
        tmp_path: Path, upstreams: dict[str, Upstream]) -> None:
    admin_port = free_port()
    pod = Pod(tmp_path, upstreams, ["--admin-port", str(admin_port)])
    pod.process.start().wait_ready(timeout=30)
    admin = f"http://{DEFAULT_ADMIN_HOST}:{admin_port}/admin/config"
    try:
        assert httpx.put(admin, json={"weight": 5}).status_code == 401
        assert httpx.put(admin, json={"weight": 5}, headers=auth("wrong")).status_code == 401
        for champion in (upstreams["attacker"].url, METADATA + "/latest/meta-data"):
            refused = httpx.put(admin, json={"champion": champion}, headers=auth(TOKEN))
            assert refused.status_code == 400 and "not one of the upstreams" in refused.json()["error"]
        assert httpx.get(f"http://{DEFAULT_ADMIN_HOST}:{admin_port}/predict").status_code == 404
        assert answered_by(pod.process.url) == "champion"
        challenger = pod.ports[logic.challenger_name("iris")]
        moved = httpx.put(admin, json={"challenger": challenger, "weight": 100}, headers=auth(TOKEN))
        assert moved.status_code == 200 and moved.json()["weight"] == 100
        assert answered_by(pod.process.url) == "challenger"
        assert upstreams["attacker"].hits == 0
    finally:
        pod.process.stop()
