"""A serving world on the real control plane, shared by the tests of one module: a namespace
with the S3 Secret, the operator as `mlops run` under its own ServiceAccount (killed with -9
and started again by the tests, `OperatorProcess`), the resources the tests apply, and how
a test reaches an InferenceService: the ClusterIP of its Service, which the Pod network
routes from the host.

Without a Pod network (Pod IPs on loopback) nothing can serve: `pod_network_problem` names
what is missing, and the serving tests skip with it.
"""

from __future__ import annotations

import base64
import ipaddress
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from control_plane_world import Cluster, OperatorProcess, conditions, eventually
from mlops_operator.cluster.port import NotFound
from mlops_operator.local.traffic import StatusWatch, Traffic, iris_rows

API = "mlops.seed.io/v1alpha1"
MANAGER = "argocd-controller"


@dataclass
class ServingWorld:
    cluster: Cluster
    namespace: str
    operator: OperatorProcess
    # Objects as `kubectl get -o json` showed them at the moments the tests care about.
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)

    # ------------------------------------------------------------------ objects

    def apply(self, *documents: dict[str, Any]) -> None:
        """Server-side apply as a GitOps controller does, into this namespace."""
        docs = [{**d, "metadata": {**d["metadata"], "namespace": self.namespace}} for d in documents]
        self.cluster.kubectl("apply", "--server-side", f"--field-manager={MANAGER}", "-f", "-",
                             input=yaml.safe_dump_all(docs))

    def get(self, kind: str, name: str, api_version: str = API) -> dict[str, Any]:
        return self.cluster.admin.get(api_version, kind, self.namespace, name)

    def list(self, kind: str, api_version: str = API, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        return self.cluster.admin.list(api_version, kind, self.namespace, labels)

    def kubectl_json(self, resource: str, name: str) -> dict[str, Any]:
        """The object as `kubectl get -o json` prints it."""
        import json

        result = self.cluster.kubectl("get", resource, name, "-n", self.namespace, "-o", "json")
        return json.loads(result.stdout)

    def status(self, kind: str, name: str) -> dict[str, Any]:
        try:
            return self.get(kind, name).get("status") or {}
        except NotFound:
            return {}

    def wait_status(self, kind: str, name: str, what: str, check: Any, timeout: float = 300) -> dict[str, Any]:
        """The object's status once `check(status)` holds."""
        return eventually(lambda: (s := self.status(kind, name)) and check(s) and s, what, timeout=timeout,
                          interval=0.25)

    def events(self, name: str, reason: str) -> list[dict[str, Any]]:
        return [e for e in self.list("Event", "v1") if e["reason"] == reason and e["involvedObject"]["name"] == name]

    def condition(self, kind: str, name: str, type_: str) -> dict[str, Any] | None:
        return conditions(self.get(kind, name)).get(type_)

    # ------------------------------------------------------------------ serving

    def service_url(self, service: str) -> str:
        return self.cluster.service_url(self.namespace, service)

    def pod_ips(self, labels: dict[str, str]) -> list[str]:
        return [p["status"]["podIP"] for p in self.list("Pod", "v1", labels)
                if (p.get("status") or {}).get("podIP")]

    def traffic(self, service: str, rows: list[list[float]] | None = None, labels: list[int] | None = None,
                rate: float = 24.0, **options: Any) -> Traffic:
        """Steady traffic with label feedback to the Service's ClusterIP. 8 clients share the
        rate: it holds while a prediction and its feedback take up to 8 / rate seconds."""
        if rows is None:
            rows, labels = iris_rows()
        return Traffic(self.service_url(service), rows, labels or [], rate=rate, **{"workers": 8, **options})

    def answers_once(self, service: str) -> bool:
        """Whether one prediction sent through the Service is answered."""
        rows, labels = iris_rows()
        probe = self.traffic(service, rows[:1], labels[:1], max_requests=1, workers=1, timeout=5).start()
        return probe.wait(10) and probe.snapshot().answered == 1

    @staticmethod
    def wait_answers_after(traffic: Traffic, moment: float, what: str, version: str | None = None,
                           count: int = 20) -> None:
        """Until `count` requests sent after `moment` (time.time()) were answered (by `version`),
        so that "none from the old version after it" means something."""
        def answered() -> bool:
            after = traffic.snapshot().versions_sent_after(moment)
            return (after[version] if version else sum(after.values())) >= count

        eventually(answered, what, timeout=60)

    def watch(self, name: str) -> StatusWatch:
        """Every change of the InferenceService's phase, stage, champion and weight, as the API server has it."""
        return StatusWatch(read=lambda: self.status("InferenceService", name) or None, period=0.1)


def pod_network_problem(world: ServingWorld, labels: dict[str, str]) -> str | None:
    """Why the Pods selected by `labels` cannot serve through a Service, or None. The API
    refuses loopback Pod addresses in EndpointSlices, so a Service needs Pod IPs of a
    network of their own (docs/control-plane.md, "Not yet: a Pod network")."""
    ips = eventually(lambda: world.pod_ips(labels), f"a Pod IP for {labels}", timeout=300)
    if all(ipaddress.ip_address(ip).is_loopback for ip in ips):
        return (f"needs the Pod network (branch `net`: a network namespace and a Pod IP per Pod, Services on "
                f"ClusterIPs through a proxy fed by the EndpointSlices): the serving Pods have {sorted(set(ips))}")
    return None


def create_namespace(cluster: Cluster, s3: Any) -> str:
    """A fresh namespace holding the S3 Secret the trainers and model servers read (`mlops-s3`)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    keys = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
    for document in ({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
                     {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mlops-s3", "namespace": name},
                      "data": {k: base64.b64encode(v.encode()).decode() for k, v in keys.items()}}):
        cluster.admin.create(document)
    return name


@contextmanager
def serving_world(cluster: Cluster, operator_kubeconfig: Path, s3: Any, log: Path,
                  quiet: bool = False) -> Iterator[ServingWorld]:
    """The world in a fresh namespace; the operator stopped (its log's tail printed unless
    `quiet`) and the namespace deleted at the end."""
    import os

    namespace = create_namespace(cluster, s3)
    env = {**os.environ, "KUBECONFIG": str(operator_kubeconfig), "AWS_ENDPOINT_URL": s3.endpoint}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    operator = OperatorProcess(operator_kubeconfig, log, env)
    operator.start()
    try:
        yield ServingWorld(cluster, namespace, operator)
    finally:
        operator.stop()
        if not quiet:
            print(operator.output()[-20000:])
        try:
            cluster.admin.delete("v1", "Namespace", None, namespace)
        except NotFound:
            pass


def rate_of(report: Any) -> float:
    """Requests per second over the span of the report's answers."""
    times = [a.sent_at for a in report.answers]
    span = max(times) - min(times) if len(times) > 1 else 0.0
    return (len(times) - 1) / span if span > 0 else 0.0
