"""Serving on the real control plane: examples/iris/ applied with kubectl, the operator as
`mlops run` under its own ServiceAccount, and a client request through the
InferenceService's Service answered by the champion.

How a test sends traffic to a Service (the Pod network, docs/control-plane.md):
- `control_plane.service_url(namespace, name)` is `http://<ClusterIP>:<port>` of a Service;
  the host routes the service CIDR into the cluster's network namespace, where the node
  stand-in's service proxy forwards each connection to a Ready endpoint of the Service's
  EndpointSlices (round-robin). Send plain HTTP to it from the test process:
  `urllib.request.urlopen(control_plane.service_url(ns, "iris") + "/predict", ...)`.
- A Pod's own address is `status.podIP` (198.18.x.y), reachable from the host too, as the
  operator scrapes it for canary metrics.
- Inside Pods, `<svc>.<ns>.svc[.cluster.local]` resolve to ClusterIPs (per-Pod hosts files);
  the session's S3 is at `pod_s3.endpoint`, which the `operator` fixture passes to Pods.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from control_plane_world import ROOT, Cluster, OperatorProcess, conditions, eventually, load_yaml

pytestmark = pytest.mark.timeout(900)

API = "mlops.seed.io/v1alpha1"
EXAMPLE = ROOT / "examples" / "iris"


def predict(url: str, rows: list[list[float]]) -> dict[str, Any]:
    request = urllib.request.Request(url + "/predict", data=json.dumps({"instances": rows}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def answered(url: str, rows: list[list[float]]) -> dict[str, Any] | None:
    try:
        return predict(url, rows)
    except OSError:
        return None


def serving(cluster: Cluster, namespace: str) -> dict[str, Any] | None:
    isvc = cluster.admin.get(API, "InferenceService", namespace, "iris")
    ready = conditions(isvc).get("Ready", {}).get("status") == "True"
    return isvc if ready and (isvc.get("status") or {}).get("champion") else None


def test_the_iris_example_serves_through_its_service(
        control_plane: Cluster, operator: OperatorProcess, namespace: str) -> None:
    for document in [*load_yaml(EXAMPLE / "experiment.yaml"), *load_yaml(EXAMPLE / "inferenceservice.yaml")]:
        control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(document))

    isvc = eventually(lambda: serving(control_plane, namespace), "the InferenceService to serve a champion",
                      timeout=600, interval=1.0)
    champion = isvc["status"]["champion"]
    version = control_plane.admin.get(API, "ModelVersion", namespace, champion)
    assert version["status"]["phase"] == "Validated"

    # The client's request goes to the ClusterIP of the `iris` Service, which selects the
    # router; the router reaches http://iris-champion.<ns>.svc:8080 by name.
    url = control_plane.service_url(namespace, "iris")
    answer = eventually(lambda: answered(url, [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]),
                        "the iris Service to answer", timeout=120)
    assert answer["predictions"] == [0, 2]
    assert (answer["version"], answer["role"]) == (champion, "champion")

    # Each serving Pod runs on its own Pod IP, on the containerPort of the pod spec.
    pods = control_plane.admin.list("v1", "Pod", namespace, {"mlops.seed.io/inferenceservice": "iris"})
    ips = {pod["status"].get("podIP") for pod in pods if pod["status"].get("phase") == "Running"}
    assert len(ips) >= 2 and all(ip and ip.startswith("198.18.") for ip in ips)
    assert operator.forbidden() == []
