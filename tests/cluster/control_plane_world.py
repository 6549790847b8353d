"""Shared by the control-plane tier's fixtures and tests: waiting for conditions, the
running cluster, the operator as a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mlops_operator.cluster.kubernetes import KubernetesCluster
from mlops_operator.cluster.port import NotFound

ROOT = Path(__file__).resolve().parents[2]
RBAC = ROOT / "manifests" / "base" / "rbac.yaml"
OPERATOR_NAMESPACE = "mlops-system"
OPERATOR_ACCOUNT = "mlops-operator"
MLOPS = Path(sys.executable).parent / "mlops"
T = TypeVar("T")


def eventually(check: Callable[[], T], what: str, timeout: float = 120.0, interval: float = 0.2) -> T:
    """The first truthy result of `check` (NotFound counts as not yet), or an AssertionError
    naming `what` and the last value seen. Deadlines are generous: the machine may be busy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except NotFound:
            last = None
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last seen: {last!r}")
        time.sleep(interval)


@dataclass
class Cluster:
    """The running control plane, as the tests use it; `network` is its Pod network's plan
    (`mlops_operator.devcluster.network.NetworkPlan`)."""

    plane: Any
    admin: KubernetesCluster
    network: Any = None

    def service_url(self, namespace: str, name: str, port: int | None = None) -> str:
        """`http://<ClusterIP>:<port>` of a Service (its first port unless given): the host
        routes the service CIDR into the cluster's network, where the service proxy listens."""
        spec = self.admin.get("v1", "Service", namespace, name)["spec"]
        return f"http://{spec['clusterIP']}:{port or spec['ports'][0]['port']}"

    def pod_netns(self, pod: dict[str, Any]) -> Path:
        """Where the network namespace of `pod` is mounted while it exists."""
        return Path("/run/netns") / self.network.pod_netns(pod["metadata"]["uid"])

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
        from mlops_operator.devcluster.cluster import kubectl

        result = kubectl(self.plane, *args, input=input, check=False, kubeconfig=kubeconfig)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def log(self, name: str) -> str:
        return (self.plane.directory / "logs" / f"{name}.log").read_text(errors="replace")


@dataclass
class OperatorProcess:
    """`mlops run` as its own process; `kill()` is a kill -9, `start()` starts it again."""

    kubeconfig: Path
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    logs: list[str] = field(default_factory=list)

    def start(self) -> None:
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                [str(MLOPS), "run", "--all-namespaces", "--standalone", "--metrics-port", "0", "--liveness-port", "0"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()

    def kill(self) -> None:
        """kill -9: no handler runs, nothing is flushed."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def forbidden(self) -> list[str]:
        """Lines of the operator's log that report a refusal by RBAC. The API server's
        NamespaceLifecycle refusal (a 403 as well: "unable to create new content in namespace X
        because it is being terminated") is no RBAC refusal: an operator watching every
        namespace meets it in the namespace an earlier test is deleting."""
        return [line for line in self.output().splitlines()
                if (" 403" in line or "forbidden" in line.lower()) and "because it is being terminated" not in line]


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or ()}


def load_yaml(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)
