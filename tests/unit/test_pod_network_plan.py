"""The Pod network's decisions, without a network: addresses of a cluster slot, the commands
they imply, Pods' hosts files, and which endpoints a Service routes to."""

from __future__ import annotations

import pytest

from mlops_operator.devcluster.network import (
    NetworkError,
    NetworkPlan,
    cluster_commands,
    free_slot,
    hosts_file,
    owner_of_netns,
    pod_commands,
    resolv_conf,
)
from mlops_operator.devcluster.services import cluster_ips, routes
from mlops_operator.local.podspec import container_port


def test_a_slot_takes_its_own_slice_of_the_benchmarking_range() -> None:
    plan = NetworkPlan("mlops-abc123", 2)
    assert (plan.pod_cidr, plan.service_cidr) == ("198.18.32.0/20", "198.19.32.0/20")
    assert (plan.gateway, plan.pod_ip(2), plan.pod_ip(300)) == ("198.18.32.1", "198.18.32.2", "198.18.33.44")
    assert (plan.host_ip, plan.cluster_link_ip) == ("169.254.77.9", "169.254.77.10")
    assert plan.host_veth == "mlhabc123" and len(plan.host_veth) <= 15
    assert plan.pod_netns("6f1c-2a9e-44d0-b1c2") == "mlops-abc123-6f1c2a9e44d0"
    with pytest.raises(NetworkError):
        plan.pod_ip(1)  # the gateway's
    with pytest.raises(NetworkError):
        plan.pod_ip(4095)  # the broadcast address of the /20


def test_the_first_free_slot_is_taken_and_a_full_machine_says_so() -> None:
    assert free_slot(set()) == 0 and free_slot({0, 1, 3}) == 2
    with pytest.raises(NetworkError, match="in use"):
        free_slot(set(range(16)))


def test_the_host_routes_only_the_two_cidrs_through_the_veth() -> None:
    plan = NetworkPlan("mlops-abc123", 0)
    commands = cluster_commands(plan)
    host_routes = [c for c in commands if c[0] == "route"]
    assert host_routes == [["route", "add", "198.18.0.0/20", "via", "169.254.77.2", "dev", "mlhabc123"],
                           ["route", "add", "198.19.0.0/20", "via", "169.254.77.2", "dev", "mlhabc123"]]
    # Forwarding is switched on inside the cluster namespace only, and every ClusterIP is local there.
    assert ["netns", "exec", "mlops-abc123", "sysctl", "-qw", "net.ipv4.ip_forward=1"] in commands
    assert ["-n", "mlops-abc123", "route", "add", "local", "198.19.0.0/20", "dev", "lo"] in commands
    pod = pod_commands(plan, "mlops-abc123-p", "vp2", "198.18.0.2")
    assert pod[-1] == ["-n", "mlops-abc123-p", "route", "add", "default", "via", "198.18.0.1"]
    assert ["-n", "mlops-abc123-p", "addr", "add", "198.18.0.2/20", "dev", "eth0"] in pod
    # A reused address is reachable at once: the bridge forgets the MAC of the Pod that had it.
    assert ["-n", "mlops-abc123", "neigh", "flush", "to", "198.18.0.2"] in pod


def test_a_pods_hosts_file_names_every_service_and_its_own_namespaces_by_short_name() -> None:
    text = hosts_file("198.18.0.7", "router-x", "team", {("team", "iris-champion"): "198.19.0.10",
                                                         ("other", "db"): "198.19.0.11"})
    lines = text.splitlines()
    assert "198.18.0.7\trouter-x" in lines
    assert "198.19.0.11\tdb.other.svc db.other.svc.cluster.local" in lines
    assert "198.19.0.10\tiris-champion.team.svc iris-champion.team.svc.cluster.local iris-champion" in lines
    assert resolv_conf("team").startswith("search team.svc.cluster.local svc.cluster.local cluster.local\n")


def test_namespaces_belong_to_their_cluster_by_name() -> None:
    clusters = {"mlops-aaaaaa", "mlops-bbbbbb"}
    assert owner_of_netns("mlops-aaaaaa", clusters) == "mlops-aaaaaa"
    assert owner_of_netns("mlops-bbbbbb-0123456789ab", clusters) == "mlops-bbbbbb"
    assert owner_of_netns("mlops-cccccc", clusters) is None
    assert owner_of_netns("mlops-aaaaaab", clusters) is None


def _service(name: str, ip: str | None, ports: list[dict]) -> dict:
    return {"metadata": {"namespace": "ns", "name": name}, "spec": {"clusterIP": ip, "ports": ports}}


def _slice(service: str, ports: list[dict], endpoints: list[tuple[str, bool | None]]) -> dict:
    return {"metadata": {"namespace": "ns", "labels": {"kubernetes.io/service-name": service}},
            "ports": ports,
            "endpoints": [{"addresses": [address], "conditions": {} if ready is None else {"ready": ready}}
                          for address, ready in endpoints]}


def test_a_service_port_routes_to_the_ready_endpoints_of_its_slices_on_the_target_port() -> None:
    services = [
        _service("web", "198.19.0.5", [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]),
        _service("headless", "None", [{"port": 80}]),
        _service("empty", "198.19.0.6", [{"port": 8080}]),
    ]
    slices = [
        _slice("web", [{"name": "http", "port": 8080}], [("198.18.0.2", True), ("198.18.0.3", False)]),
        _slice("web", [{"name": "http", "port": 8080}], [("198.18.0.4", None)]),  # no condition: ready
        _slice("headless", [{"port": 80}], [("198.18.0.9", True)]),
    ]
    assert routes(services, slices) == {
        ("198.19.0.5", 80): [("198.18.0.2", 8080), ("198.18.0.4", 8080)],
        ("198.19.0.6", 8080): [],  # listens, waits for an endpoint
    }
    assert cluster_ips(services) == {("ns", "web"): "198.19.0.5", ("ns", "empty"): "198.19.0.6"}


def test_a_server_containers_port_is_its_probes_else_its_first() -> None:
    ports = [{"name": "metrics", "containerPort": 9090}, {"name": "http", "containerPort": 8080}]
    assert container_port({"ports": ports, "readinessProbe": {"httpGet": {"port": "http"}}}) == 8080
    assert container_port({"ports": ports, "readinessProbe": {"httpGet": {"port": 7000}}}) == 7000
    assert container_port({"ports": ports}) == 9090
    assert container_port({}) is None
