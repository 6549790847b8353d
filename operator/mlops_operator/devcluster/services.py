"""Services on the Pod network: kube-proxy's part, in userspace.

Every Service's ClusterIP:port listens in the cluster network namespace (`ServiceProxy` with
its sockets there) and forwards each TCP connection to a Ready endpoint of the Service's
EndpointSlices, the ones the real kube-controller-manager's endpointslice controller writes
from the Pods' Ready condition, round-robin. The same pass hands the Services' ClusterIPs to
the Pod network, which writes them into every Pod's hosts file.

Pure: `routes` and `cluster_ips`. I/O: `ServiceRouting`, which polls the API.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from mlops_operator.cluster.kubernetes import KubernetesCluster
from mlops_operator.cluster.port import ClusterError
from mlops_operator.cluster.resources import Resource, register
from mlops_operator.devcluster.network import NETNS_DIR, NetnsPodNetwork
from mlops_operator.local.proxy import Address, ServiceProxy

log = logging.getLogger("mlops.services")
ENDPOINT_SLICE = register(Resource("discovery.k8s.io/v1", "EndpointSlice", "endpointslices"))
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# How often Services and EndpointSlices are read: a Pod turning Ready is routed to within it.
POLL_SECONDS = 0.5

Obj = Mapping[str, Any]


def _has_cluster_ip(service: Obj) -> bool:
    ip = (service.get("spec") or {}).get("clusterIP")
    return bool(ip) and ip != "None"


def cluster_ips(services: Iterable[Obj]) -> dict[tuple[str, str], str]:
    """(namespace, name) -> ClusterIP of every Service that has one."""
    return {(s["metadata"]["namespace"], s["metadata"]["name"]): s["spec"]["clusterIP"]
            for s in services if _has_cluster_ip(s)}


def ready_endpoints(slices: Iterable[Obj], port_name: str) -> list[Address]:
    """The (address, port) pairs of the endpoints whose `ready` condition holds (absent
    means ready, as the API documents), for the Service port named `port_name`."""
    found: list[Address] = []
    for endpoint_slice in slices:
        ports = [p for p in endpoint_slice.get("ports") or () if (p.get("name") or "") == port_name and p.get("port")]
        for endpoint in endpoint_slice.get("endpoints") or ():
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            found += [(address, int(port["port"])) for port in ports for address in endpoint.get("addresses") or ()]
    return sorted(set(found))


def routes(services: Iterable[Obj], slices: Iterable[Obj]) -> dict[Address, list[Address]]:
    """ClusterIP:port -> the Ready endpoints behind it, for every TCP port of every Service."""
    by_service: dict[tuple[str, str], list[Obj]] = {}
    for endpoint_slice in slices:
        meta = endpoint_slice.get("metadata") or {}
        service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if service:
            by_service.setdefault((meta.get("namespace"), service), []).append(endpoint_slice)
    table: dict[Address, list[Address]] = {}
    for service in services:
        if not _has_cluster_ip(service):
            continue
        key = (service["metadata"]["namespace"], service["metadata"]["name"])
        for port in service["spec"].get("ports") or ():
            if port.get("protocol", "TCP") != "TCP":
                continue
            table[(service["spec"]["clusterIP"], int(port["port"]))] = ready_endpoints(
                by_service.get(key, []), port.get("name") or "")
    return table


class ServiceRouting:
    """Keeps the proxy's listeners and the Pods' hosts files in step with the API."""

    def __init__(self, kube: KubernetesCluster, network: NetnsPodNetwork) -> None:
        self.kube = kube
        self.network = network
        self.proxy = ServiceProxy(netns=NETNS_DIR / network.plan.name)
        self._applied: dict[Address, list[Address]] = {}

    def sync(self) -> None:
        services = self.kube.list("v1", "Service")
        slices = self.kube.list(ENDPOINT_SLICE.api_version, ENDPOINT_SLICE.kind)
        self.network.set_services(cluster_ips(services))
        wanted = routes(services, slices)
        for listen, backends in wanted.items():
            if self._applied.get(listen) != backends:
                try:
                    self.proxy.set_backends(listen, backends)
                except OSError as error:
                    log.warning("cannot listen on %s:%s: %s", *listen, error)
                    continue
                self._applied[listen] = backends
        for listen in [a for a in self._applied if a not in wanted]:
            self.proxy.close(listen)
            del self._applied[listen]

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.sync()
            except ClusterError as error:
                log.warning("services: %s", error)
            stop.wait(POLL_SECONDS)
        self.proxy.stop()
