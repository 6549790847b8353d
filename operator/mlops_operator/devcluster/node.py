"""The node stand-in: the scheduler and the kubelet of one Node, on this machine.

A real control plane without a kubelet leaves every Pod Pending. The stand-in registers one
Node, binds each unscheduled Pod to it (`pods/binding`, as kube-scheduler does), and runs
the Pods bound to it as local processes through `PodRunner`, the same code that runs pods
in local mode: the pod spec's command, args and env (secretKeyRef, configMapKeyRef and
fieldRef resolved), emptyDir, ConfigMap and Secret volumes, readiness probes, and the Pod
status the kubelet writes (phase, conditions, containerStatuses with the terminated state
and the termination message read from `terminationMessagePath`). A Pod being deleted has
its process stopped and is then removed with a zero grace period, as the kubelet confirms a
deletion.

With `--network PLAN` (the `network.json` of `devcluster.network.create`) each Pod runs in a
network namespace of its own with a Pod IP (`NetnsPodNetwork`), and a thread of this process
serves the Services' ClusterIPs (`devcluster.services.ServiceRouting`).

Run it as `python -m mlops_operator.devcluster.node --kubeconfig FILE --workdir DIR [--network PLAN]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from mlops_operator.cluster.kubernetes import KubernetesCluster
from mlops_operator.cluster.port import ClusterError, NotFound
from mlops_operator.cluster.resources import Resource, register
from mlops_operator.local.pod_runner import POD, LocalPod, PodRunner, _key, _meta, timestamp
from mlops_operator.devcluster.network import NetnsPodNetwork, NetworkPlan
from mlops_operator.local.processes import ProcessTable

log = logging.getLogger("mlops.node")
# The operator never touches Nodes; only the stand-in does.
NODE_RESOURCE = register(Resource("v1", "Node", "nodes", namespaced=False, has_status_subresource=True))

Obj = dict[str, Any]
NODE_NAME = "mlops-node"
# How often the stand-in looks at the Pods when nothing woke it; a watch wakes it at once.
RESYNC_SECONDS = 1.0


class NodeStandIn(PodRunner):
    def __init__(self, cluster: KubernetesCluster, workdir: Path, node_name: str = NODE_NAME,
                 network: NetnsPodNetwork | None = None) -> None:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(cluster, workdir, ProcessTable(workdir / "pids.json", on_exit=self.wake), s3=None,
                         network=network)
        self.pod_network = network
        self.kube: KubernetesCluster = cluster
        self.node_name = node_name
        self._pods: dict[str, LocalPod] = {}  # by Pod uid
        self._done: set[str] = set()  # uids of pods that ran to completion here
        self._wake = threading.Event()

    def wake(self) -> None:
        self._wake.set()

    # ---------------------------------------------------------------- the Node

    def register(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": {"kubernetes.io/hostname": self.node_name,
                                                            "kubernetes.io/os": "linux"}},
        }
        try:
            self.kube.create(node)
        except ClusterError as error:
            if error.status_code != 409:
                raise
        self.heartbeat()

    def heartbeat(self) -> None:
        now = timestamp(self.clock())
        self.kube.patch_status("v1", "Node", None, self.node_name, {
            "capacity": {"cpu": "2", "memory": "16Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "16Gi", "pods": "110"},
            "addresses": [{"type": "InternalIP", "address": self.host_ip},
                          {"type": "Hostname", "address": self.node_name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "the mlops node stand-in runs pods as local processes",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "nodeInfo": {"kubeletVersion": "v1.37.2-mlops", "operatingSystem": "linux", "architecture": "amd64",
                         "containerRuntimeVersion": "local://processes", "kernelVersion": "", "osImage": "",
                         "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
        })

    # ---------------------------------------------------------------- one pass

    def step(self) -> None:
        now = self.clock()
        pods = self.kube.list(*POD)
        seen: set[str] = set()
        for pod in pods:
            spec = pod.get("spec") or {}
            uid = str(_meta(pod).get("uid"))
            seen.add(uid)
            if not spec.get("nodeName"):
                self._bind(pod)
            elif spec["nodeName"] == self.node_name:
                self._sync_pod(pod, now)
        for uid in [u for u in self._pods if u not in seen]:
            self._stop(self._pods.pop(uid))
        self._done &= seen

    def _bind(self, pod: Obj) -> None:
        namespace, name = _key(pod)
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "namespace": namespace},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name}}
        try:
            self.kube._request("POST", f"/api/v1/namespaces/{namespace}/pods/{name}/binding", body=binding)
        except ClusterError as error:  # bound meanwhile, or gone
            log.debug("binding %s/%s: %s", namespace, name, error)

    def _sync_pod(self, pod: Obj, now: datetime) -> None:
        meta = _meta(pod)
        uid = str(meta.get("uid"))
        spec = pod.get("spec") or {}
        local = self._pods.get(uid)
        if meta.get("deletionTimestamp"):
            if local is not None:
                self._stop(self._pods.pop(uid))
            self._confirm_deletion(pod)
            return
        phase = (pod.get("status") or {}).get("phase")
        if local is None:
            if uid in self._done or phase in ("Succeeded", "Failed"):
                return
            if phase == "Running":
                # Running before this stand-in started: its process is gone with the old one.
                self._update_lost(pod, now)
                return
            local = self._new_local_pod(pod, now)
            self._pods[uid] = local
            self._start(local, {"spec": spec}, now, server=self._restarts(spec))
            return
        if self._restarts(spec):
            self.watch_server(local, {"spec": spec}, now)
            return
        if local.process is None:
            if local.retry_at is not None and time.monotonic() >= local.retry_at:
                self._start(local, {"spec": spec}, now, server=False)
            return
        if local.process.poll() is not None:
            terminated = self._terminated_state(local, now)
            self.processes.forget(local.process)
            local.process = None
            self._update_pod_status(local, "Succeeded" if terminated["exitCode"] == 0 else "Failed",
                                    {"terminated": terminated})
            self.release_network(local)
            self._done.add(uid)
            del self._pods[uid]

    @staticmethod
    def _restarts(spec: Mapping[str, Any]) -> bool:
        return spec.get("restartPolicy", "Always") == "Always"

    def _new_local_pod(self, pod: Obj, now: datetime) -> LocalPod:
        namespace, name = _key(pod)
        meta = _meta(pod)
        local = self._local_pod(namespace, name, (namespace, name), "", dict(meta.get("labels") or {}), now)
        local.uid = str(meta.get("uid"))
        containers = (pod.get("spec") or {}).get("containers") or [{}]
        local.container_name = str(containers[0].get("name", "main"))
        local.image = str(containers[0].get("image", ""))
        return local

    def _update_lost(self, pod: Obj, now: datetime) -> None:
        namespace, name = _key(pod)
        containers = (pod.get("spec") or {}).get("containers") or [{}]
        terminated = {"exitCode": 137, "reason": "ContainerStatusUnknown",
                      "message": "The container could not be located when the pod was terminated",
                      "startedAt": timestamp(now), "finishedAt": timestamp(now)}
        local = self._new_local_pod(pod, now)
        local.container_name = str(containers[0].get("name", "main"))
        self._update_pod_status(local, "Failed", {"terminated": terminated})
        self._done.add(local.uid)

    def _stop(self, local: LocalPod) -> None:
        if local.process is not None:
            self.processes.stop(local.process, grace=5.0)
            local.process = None
        self.release_network(local)

    def _confirm_deletion(self, pod: Obj) -> None:
        namespace, name = _key(pod)
        options = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                   "preconditions": {"uid": _meta(pod).get("uid")}}
        try:
            self.kube._request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body=options)
        except (NotFound, ClusterError) as error:
            log.debug("confirming deletion of %s/%s: %s", namespace, name, error)

    # ---------------------------------------------------------------- status as the kubelet writes it

    def _update_pod_status(self, pod: LocalPod, phase: str, state: Obj) -> None:
        now = timestamp(self.clock())
        container_status: Obj = {
            "name": pod.container_name,
            "image": pod.image or "local",
            "imageID": "",
            "ready": pod.ready,
            "started": "running" in state,
            "restartCount": pod.restarts,
            "state": state,
        }
        if pod.process is not None:
            container_status["containerID"] = f"local://{pod.process.pid}"
        if pod.last_terminated is not None:
            container_status["lastState"] = {"terminated": pod.last_terminated}
        ready = "True" if pod.ready else "False"
        finished = phase in ("Succeeded", "Failed")
        status: Obj = {
            "phase": phase,
            "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}],
            "containerStatuses": [container_status],
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": now,
                 **({"reason": "PodCompleted"} if finished else {})},
                {"type": "Ready", "status": ready, "lastTransitionTime": now,
                 **({"reason": "PodCompleted"} if finished else {})},
            ],
        }
        if pod.address is not None:
            status.update(podIP=pod.address.ip, podIPs=[{"ip": pod.address.ip}])
        if pod.started is not None:
            status["startTime"] = timestamp(pod.started)
        try:
            self.kube.patch_status("v1", "Pod", pod.namespace, pod.name, status)
        except NotFound:
            pass
        except ClusterError as error:
            log.warning("status of pod %s/%s not written: %s", pod.namespace, pod.name, error)

    # ---------------------------------------------------------------- the loop

    def run(self, stop: threading.Event) -> None:
        self.register()
        watcher = threading.Thread(target=self._watch, args=(stop,), daemon=True, name="pod-watch")
        watcher.start()
        if self.pod_network is not None:
            from mlops_operator.devcluster.services import ServiceRouting

            routing = ServiceRouting(self.kube, self.pod_network)
            threading.Thread(target=routing.run, args=(stop,), daemon=True, name="service-routing").start()
        last_heartbeat = time.monotonic()
        while not stop.is_set():
            try:
                self.step()
            except ClusterError as error:
                log.warning("node step: %s", error)
            if time.monotonic() - last_heartbeat > 20:
                self.heartbeat()
                last_heartbeat = time.monotonic()
            self._wake.wait(RESYNC_SECONDS if not self._probing() else 0.2)
            self._wake.clear()
        self.processes.stop_all(grace=5.0)
        if self.pod_network is not None:
            self.pod_network.detach_all()

    def _probing(self) -> bool:
        """A server is starting: probe it more often than the resync."""
        return any(p.process is not None and not p.ready and p.port is not None for p in self._pods.values())

    def _watch(self, stop: threading.Event) -> None:
        """Wake the loop on every Pod event (a new Pod to bind, a deletion to confirm)."""
        from kubernetes import watch

        from kubernetes.client import CoreV1Api

        api = CoreV1Api(self.kube.api_client)
        while not stop.is_set():
            try:
                for _ in watch.Watch().stream(api.list_pod_for_all_namespaces, timeout_seconds=60,
                                              _request_timeout=90):
                    self._wake.set()
                    if stop.is_set():
                        return
            except Exception as error:  # a dropped watch is reopened; the resync covers the gap
                log.debug("pod watch: %s", error)
                stop.wait(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlops_operator.devcluster.node", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--node-name", default=NODE_NAME)
    parser.add_argument("--network", type=Path, help="the cluster network's plan (network.json): a netns per Pod")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cluster = KubernetesCluster.from_kubeconfig(args.kubeconfig)
    network = NetnsPodNetwork(NetworkPlan(**json.loads(args.network.read_text()))) if args.network else None
    stand_in = NodeStandIn(cluster, args.workdir, args.node_name, network)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: (stop.set(), stand_in.wake()))
    log.info("node %s: running pods of %s", args.node_name, cluster.api_client.configuration.host)
    stand_in.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
