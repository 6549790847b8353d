"""The control-plane tier: a real etcd, kube-apiserver and kube-controller-manager on
127.0.0.1, our CRDs applied server-side, and the node stand-in running Pods as processes.

One control plane per session (`mlops_operator.devcluster.cluster.up`, the same code as
`mlops dev cluster up`), stopped by pid at the end. Without Go, or when the build fails, the
tier is skipped with what is missing; with `MLOPS_REQUIRE_CONTROL_PLANE=1` (set by
`.ci/run`) that is a failure instead.

Each test gets a fresh namespace with the S3 credentials Secret; the operator runs as
`mlops run` under the ServiceAccount, ClusterRole and ClusterRoleBinding of
`manifests/base/rbac.yaml`, exactly as shipped, with a token of its own (TokenRequest).

Pods run in network namespaces of their own (docs/control-plane.md, "Pod network"): their
127.0.0.1 is not the host's, so they and the operator reach the session's S3 server through
`pod_s3`, a forwarder on the host end of the cluster's veth. Tests reach a Service with
`control_plane.service_url(namespace, name)` (its ClusterIP, routed from the host).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from control_plane_world import (
    OPERATOR_ACCOUNT,
    OPERATOR_NAMESPACE,
    RBAC,
    Cluster,
    OperatorProcess,
)
from mlops_operator.cluster.kubernetes import KubernetesCluster
from mlops_operator.cluster.port import NotFound


_BUILD_PROBLEM = pytest.StashKey[str]()


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Build the binaries (or find them cached) before any test runs: a cold build takes
    minutes, which no test's timeout should count."""
    here = Path(__file__).parent
    if not any(Path(str(item.path)).is_relative_to(here) for item in items):
        return
    from mlops_operator.devcluster import build

    try:
        build.build(log=lambda line: print(f"\n{line}", file=sys.stderr))
    except build.ControlPlaneUnavailable as error:
        config.stash[_BUILD_PROBLEM] = str(error)


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from mlops_operator import crdgen
    from mlops_operator.devcluster import build, cluster
    from mlops_operator.devcluster.control_plane import ControlPlaneError

    required = os.environ.get("MLOPS_REQUIRE_CONTROL_PLANE") == "1"
    problem = request.config.stash.get(_BUILD_PROBLEM, None)
    if problem is not None:
        if required:
            pytest.fail(f"the control-plane tier cannot run: {problem}", pytrace=False)
        pytest.skip(f"the control-plane tier needs its binaries: {problem}")
    directory = tmp_path_factory.mktemp("control-plane")
    try:
        plane = cluster.up(directory, crdgen.default_crds_dir(), log=lambda line: print(line, file=sys.stderr))
    except build.ControlPlaneUnavailable as error:
        if required:
            pytest.fail(f"the control-plane tier cannot run: {error}", pytrace=False)
        pytest.skip(f"the control-plane tier needs its binaries: {error}")
    except ControlPlaneError as error:
        pytest.fail(f"the control plane did not start: {error}", pytrace=False)
    try:
        from mlops_operator.devcluster import network

        admin = KubernetesCluster.from_kubeconfig(str(plane.kubeconfig))
        yield Cluster(plane, admin, network.load(directory))
    finally:
        cluster.down(directory)


@pytest.fixture
def namespace(control_plane: Cluster, s3: Any) -> Iterator[str]:
    """A fresh namespace holding the S3 Secret the trainers read (`mlops-s3`)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    control_plane.admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    control_plane.admin.create({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mlops-s3", "namespace": name},
        "data": {"AWS_ACCESS_KEY_ID": base64.b64encode(s3.access_key.encode()).decode(),
                 "AWS_SECRET_ACCESS_KEY": base64.b64encode(s3.secret_key.encode()).decode()},
    })
    yield name
    try:
        control_plane.admin.delete("v1", "Namespace", None, name)
    except NotFound:
        pass


@pytest.fixture(scope="session")
def operator_kubeconfig(control_plane: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig with a token of the operator's own ServiceAccount, bound to exactly the
    ClusterRole of manifests/base/rbac.yaml."""
    admin = control_plane.admin
    try:
        admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}})
    except Exception:
        pass
    documents = [doc for doc in yaml.safe_load_all(RBAC.read_text()) if doc]
    for doc in documents:
        if doc["kind"] == "ServiceAccount":
            doc["metadata"]["namespace"] = OPERATOR_NAMESPACE
        for subject in doc.get("subjects") or ():
            subject.setdefault("namespace", OPERATOR_NAMESPACE)
    control_plane.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(documents))
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"expirationSeconds": 86400}}
    response = admin._request(
        "POST", f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/serviceaccounts/{OPERATOR_ACCOUNT}/token", body=request)
    token = response["status"]["token"]
    path = tmp_path_factory.mktemp("operator") / "kubeconfig"
    return control_plane.plane.kubeconfig_for(f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}",
                                              token, path)


@pytest.fixture(scope="session")
def pod_s3(control_plane: Cluster, s3: Any) -> Iterator[Any]:
    """The session's S3 server as Pods reach it: a TCP forwarder listening on the host end
    of the cluster's veth (which the operator on the host reaches too), to the server on the
    host's loopback. The operator passes this endpoint into the Pods' env."""
    from mlops_operator.local.proxy import ServiceProxy, free_port

    target = urlsplit(s3.endpoint)
    host = control_plane.network.host_ip
    listen = (host, free_port(host))
    forwarder = ServiceProxy()
    forwarder.set_backends(listen, [(target.hostname, target.port)])
    try:
        yield dataclasses.replace(s3, endpoint=f"http://{host}:{listen[1]}")
    finally:
        forwarder.stop()


@pytest.fixture
def operator(control_plane: Cluster, operator_kubeconfig: Path, pod_s3: Any, tmp_path: Path
             ) -> Iterator[OperatorProcess]:
    env = {**os.environ, "KUBECONFIG": str(operator_kubeconfig), "AWS_ENDPOINT_URL": pod_s3.endpoint}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    process = OperatorProcess(operator_kubeconfig, tmp_path / "operator.log", env)
    process.start()
    try:
        yield process
    finally:
        process.stop()
        print(process.output()[-20000:])
