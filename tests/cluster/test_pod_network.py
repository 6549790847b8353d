"""The Pod network of the node stand-in: a network namespace and an address per Pod, Services
on ClusterIPs routed to Ready endpoints of the real EndpointSlices, cluster names in Pods'
hosts files, and nothing of it left behind.

The host reaches Pod IPs and ClusterIPs through the cluster's veth (as the operator does when
it scrapes Pods); Pods reach Services by name."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from control_plane_world import Cluster, eventually
from mlops_operator.devcluster import cluster, network
from mlops_operator.devcluster.network import NetnsPodNetwork
from mlops_operator.devcluster.services import ENDPOINT_SLICE, SERVICE_NAME_LABEL
from mlops_operator.local.pod_runner import LocalPod

pytestmark = pytest.mark.timeout(300)

TINY_SERVER = Path(__file__).resolve().parents[1] / "local" / "tiny_server.py"
PORT = 8080


def server_pod(name: str, namespace: str, labels: dict[str, str], *extra_args: str) -> dict[str, Any]:
    """A Pod whose one container listens on 8080 (as every model server does) and is
    probed ready at /ready."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"containers": [{
                "name": "server", "image": "mlops-runtime:0.1.0", "command": [sys.executable, str(TINY_SERVER)],
                "args": ["--port", str(PORT), *extra_args], "ports": [{"name": "http", "containerPort": PORT}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1}}]}}


def service(name: str, namespace: str, selector: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": selector, "ports": [{"name": "http", "port": PORT, "targetPort": "http"}]}}


def get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def answers(url: str) -> str | None:
    try:
        return get(url)
    except OSError:
        return None


def ready_pod(cluster_: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    pod = cluster_.admin.get("v1", "Pod", namespace, name)
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions") or ())
    return pod if ready else None


def endpoint_addresses(cluster_: Cluster, namespace: str, name: str) -> dict[str, bool]:
    """Address -> ready, over the EndpointSlices the real controller made for Service `name`."""
    slices = cluster_.admin.list(ENDPOINT_SLICE.api_version, ENDPOINT_SLICE.kind, namespace, {SERVICE_NAME_LABEL: name})
    return {address: bool((endpoint.get("conditions") or {}).get("ready"))
            for s in slices for endpoint in s.get("endpoints") or () for address in endpoint["addresses"]}


def test_two_pods_on_8080_get_their_own_ips_and_both_answer(control_plane: Cluster, namespace: str) -> None:
    for name in ("one", "two"):
        control_plane.admin.create(server_pod(name, namespace, {"app": name}))
    pods = [eventually(lambda n=name: ready_pod(control_plane, namespace, n), f"pod {name} ready")
            for name in ("one", "two")]
    ips = [pod["status"]["podIP"] for pod in pods]
    assert len(set(ips)) == 2
    for pod, ip in zip(pods, ips):
        assert pod["status"]["podIPs"] == [{"ip": ip}]
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(control_plane.network.pod_cidr)
        # From the host, as the operator scrapes a Pod: each answers as itself on 8080.
        assert get(f"http://{ip}:{PORT}/env/HOSTNAME") == pod["metadata"]["name"]
        assert control_plane.pod_netns(pod).exists()


def test_a_service_routes_only_to_ready_pods_and_answers_on_its_cluster_ip(
        control_plane: Cluster, namespace: str, tmp_path: Path) -> None:
    labels = {"app": "web"}
    ready_file = tmp_path / "late-ready"
    control_plane.admin.create(server_pod("early", namespace, labels))
    control_plane.admin.create(server_pod("late", namespace, labels, "--ready-file", str(ready_file)))
    control_plane.admin.create(service("web", namespace, labels))
    early = eventually(lambda: ready_pod(control_plane, namespace, "early"), "pod early ready")
    late = eventually(lambda: control_plane.admin.get("v1", "Pod", namespace, "late")["status"].get("podIP"),
                      "pod late to get an address")

    # The endpointslice controller lists both Pods, only the probed-ready one as ready.
    eventually(lambda: endpoint_addresses(control_plane, namespace, "web")
               == {early["status"]["podIP"]: True, late: False}, "the EndpointSlice to list early ready, late not")
    cluster_ip = control_plane.admin.get("v1", "Service", namespace, "web")["spec"]["clusterIP"]
    assert ipaddress.ip_address(cluster_ip) in ipaddress.ip_network(control_plane.network.service_cidr)
    url = control_plane.service_url(namespace, "web") + "/env/HOSTNAME"
    eventually(lambda: answers(url), "the ClusterIP to answer")
    assert {get(url) for _ in range(8)} == {"early"}

    ready_file.touch()  # the late Pod's probe passes from now on
    eventually(lambda: endpoint_addresses(control_plane, namespace, "web")
               == {early["status"]["podIP"]: True, late: True}, "the EndpointSlice to list both ready")
    eventually(lambda: {get(url) for _ in range(8)} == {"early", "late"}, "round-robin over both ready pods")


SERVICE_CALLER = """
import sys, urllib.request
results = {}
for url in sys.argv[2:]:
    try:
        results[url] = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError as error:
        results[url] = f"error: {error}"
open(sys.argv[1], "w").write(__import__("json").dumps(results))
"""


def test_a_pod_resolves_services_by_name_and_reaches_them(control_plane: Cluster, namespace: str) -> None:
    labels = {"app": "named"}
    control_plane.admin.create(server_pod("named", namespace, labels))
    control_plane.admin.create(service("named", namespace, labels))
    eventually(lambda: ready_pod(control_plane, namespace, "named"), "pod named ready")
    eventually(lambda: answers(control_plane.service_url(namespace, "named") + "/ready"), "the ClusterIP to answer")
    urls = [f"http://{host}:{PORT}/env/HOSTNAME"
            for host in (f"named.{namespace}.svc", f"named.{namespace}.svc.cluster.local", "named")]
    control_plane.admin.create({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "caller", "namespace": namespace},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": "mlops-runtime:0.1.0",
            "command": ["python", "-c", SERVICE_CALLER, "/dev/termination-log", *urls]}]}})

    def finished() -> dict[str, Any] | None:
        status = control_plane.admin.get("v1", "Pod", namespace, "caller").get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = eventually(finished, "the caller pod to finish")
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert json.loads(terminated["message"]) == {url: "named" for url in urls}
    # A finished Pod's sandbox is gone, as the kubelet tears it down.
    pod = control_plane.admin.get("v1", "Pod", namespace, "caller")
    eventually(lambda: not control_plane.pod_netns(pod).exists(), "the finished pod's netns to be deleted")


def test_deleting_a_pod_removes_its_network_namespace(control_plane: Cluster, namespace: str) -> None:
    control_plane.admin.create(server_pod("doomed", namespace, {"app": "doomed"}))
    pod = eventually(lambda: ready_pod(control_plane, namespace, "doomed"), "pod doomed ready")
    netns = control_plane.pod_netns(pod)
    assert netns.exists()
    assert (Path("/etc/netns") / netns.name / "hosts").exists()
    control_plane.admin.delete("v1", "Pod", namespace, "doomed")
    eventually(lambda: not netns.exists(), "the deleted pod's netns to be gone")
    assert not (Path("/etc/netns") / netns.name).exists()
    assert answers(f"http://{pod['status']['podIP']}:{PORT}/ready") is None


def test_down_leaves_no_namespace_veth_or_route(tmp_path: Path) -> None:
    """A cluster network with a Pod attached, as `up` leaves it, removed by `down`."""
    plan = network.create(tmp_path)
    try:
        pods = NetnsPodNetwork(plan)
        pod = LocalPod("ns", "p", "0123456789abcdef", ("ns", "p"), "", {}, tmp_path, tmp_path / "log",
                       tmp_path / "termination", datetime.now(UTC))
        pods.attach(pod)
        found = network.leftovers(plan)
        assert [f"netns {plan.name}", f"netns {plan.pod_netns(pod.uid)}", f"link {plan.host_veth}"] == found[:3]
        routes = " ".join(found[3:])
        assert plan.pod_cidr in routes and plan.service_cidr in routes
    finally:
        cluster.down(tmp_path)
    assert network.leftovers(plan) == []
    assert not (network.RECORDS / f"{plan.name}.json").exists()


def test_up_deletes_the_network_of_a_crashed_run(tmp_path: Path) -> None:
    crashed = network.create(tmp_path / "crashed")
    record = network.RECORDS / f"{crashed.name}.json"
    # As if its creator had died with no control plane: a pid that no process has now.
    gone = subprocess.Popen(["true"])
    gone.wait()
    record.write_text(json.dumps({**json.loads(record.read_text()), "creator": [gone.pid, 0]}))
    fresh = network.create(tmp_path / "fresh")
    try:
        assert network.leftovers(crashed) == []
        assert Path(f"/run/netns/{fresh.name}").exists()
    finally:
        network.destroy(fresh)
    assert network.leftovers(fresh) == []
