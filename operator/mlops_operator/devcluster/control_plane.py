"""etcd, kube-apiserver and kube-controller-manager on 127.0.0.1, started and stopped by pid.

The API server runs as envtest starts one, plus what this project's tests need to prove:
`--authorization-mode=Node,RBAC` with the default admission plugins, a token file holding
one admin token (group `system:masters`), service-account tokens signed with a key made
here, a self-signed serving certificate (`--cert-dir`). The controller manager runs the
controllers the operator relies on: Job, Deployment and ReplicaSet, the garbage collector,
namespaces, service accounts and their tokens, EndpointSlices and TTL-after-finished; each
with its own service-account credentials, so RBAC applies to them as on a cluster.

Everything lives in one folder: data, certificates, logs, `admin.kubeconfig`, and
`control-plane.json` (ports and pids), from which `stop_recorded()` stops a control plane
that another process started.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from mlops_operator.devcluster.build import Binaries
from mlops_operator.local.processes import is_alive, start_ticks, terminate_group
from mlops_operator.local.proxy import free_port

# The dev cluster passes its Pod network's service CIDR (devcluster/network.py); this
# default, from the same RFC 2544 benchmarking range, serves a control plane without one.
SERVICE_CLUSTER_IP_RANGE = "198.19.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
CONTROLLERS = (
    "job-controller",
    "deployment-controller",
    "replicaset-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "endpointslice-controller",
    "endpoints-controller",
    "ttl-after-finished-controller",
    "root-ca-certificate-publisher-controller",
)
STATE_FILE = "control-plane.json"
# Processes this one started, kept so that they are reaped (no zombies) when they stop.
_children: dict[int, subprocess.Popen[bytes]] = {}


class ControlPlaneError(RuntimeError):
    """A component did not start; the message names it and the tail of its log."""


@dataclass
class ControlPlane:
    """A running control plane: where it answers and how to reach it as admin."""

    directory: Path
    api_url: str
    admin_token: str
    etcd_url: str
    pids: dict[str, list[int]] = field(default_factory=dict)

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "admin.kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.directory / "certs" / "apiserver.crt"

    @property
    def service_account_key(self) -> Path:
        return self.directory / "sa.key"

    def save(self) -> None:
        state = {**asdict(self), "directory": str(self.directory)}
        (self.directory / STATE_FILE).write_text(json.dumps(state, indent=2))

    def stop(self, grace: float = 10.0) -> None:
        """Stop every component by pid, the controller manager first, etcd last."""
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            pid, ticks = (self.pids.get(name) or [0, 0])[:2]
            if pid and is_alive(pid, ticks):
                terminate_group(pid, ticks, grace, _children.pop(pid, None))
        self.pids.clear()
        self.save()

    def kubeconfig_for(self, user: str, token: str, path: Path) -> Path:
        """A kubeconfig that authenticates with `token` (a service account's, say)."""
        path.write_text(yaml.safe_dump(_kubeconfig(self.api_url, self.ca_file, user, token)))
        return path


def start(directory: Path, binaries: Binaries, timeout: float = 180.0, log: Callable[[str], None] = lambda _: None,
          service_cidr: str = SERVICE_CLUSTER_IP_RANGE) -> ControlPlane:
    """Start etcd, kube-apiserver and kube-controller-manager with their state in `directory`."""
    directory = Path(directory).resolve()
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    (directory / "certs").mkdir(exist_ok=True)
    _write_service_account_key(directory / "sa.key", directory / "sa.pub")
    admin_token = secrets.token_hex(16)
    (directory / "tokens.csv").write_text(f'{admin_token},mlops-admin,mlops-admin,"system:masters"\n')
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    plane = ControlPlane(directory, f"https://127.0.0.1:{api_port}", admin_token, f"http://127.0.0.1:{etcd_port}")
    try:
        plane.pids["etcd"] = _spawn(directory, "etcd", [
            str(binaries.path("etcd")),
            "--name=mlops", f"--data-dir={directory / 'etcd'}",
            f"--listen-client-urls={plane.etcd_url}", f"--advertise-client-urls={plane.etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=mlops=http://127.0.0.1:{peer_port}",
            # A test database: durability across power loss buys nothing, fsync costs seconds.
            "--unsafe-no-fsync", "--log-level=warn",
        ])
        plane.save()
        _wait(lambda: _http_ok(f"{plane.etcd_url}/health"), timeout, "etcd", directory, plane.pids["etcd"])
        log(f"etcd answers at {plane.etcd_url}")
        plane.pids["kube-apiserver"] = _spawn(directory, "kube-apiserver", [
            str(binaries.path("kube-apiserver")),
            f"--etcd-servers={plane.etcd_url}",
            f"--cert-dir={directory / 'certs'}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
            # Its endpoint reconciler refuses a loopback address for the `kubernetes` Service;
            # nothing here reaches the API through that Service.
            "--endpoint-reconciler-type=none",
            f"--service-cluster-ip-range={service_cidr}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={directory / 'sa.pub'}",
            f"--service-account-signing-key-file={directory / 'sa.key'}",
            "--authorization-mode=Node,RBAC",
            f"--token-auth-file={directory / 'tokens.csv'}",
            "--allow-privileged=false",
            "--enable-priority-and-fairness=false",
            "--v=1",
        ])
        plane.save()
        _wait(lambda: _http_ok(f"{plane.api_url}/readyz", admin_token), timeout, "kube-apiserver", directory,
              plane.pids["kube-apiserver"])
        log(f"kube-apiserver answers at {plane.api_url}")
        plane.kubeconfig.write_text(yaml.safe_dump(_kubeconfig(plane.api_url, plane.ca_file, "mlops-admin", admin_token)))
        plane.pids["kube-controller-manager"] = _spawn(directory, "kube-controller-manager", [
            str(binaries.path("kube-controller-manager")),
            f"--kubeconfig={plane.kubeconfig}",
            f"--authentication-kubeconfig={plane.kubeconfig}",
            f"--authorization-kubeconfig={plane.kubeconfig}",
            f"--controllers={','.join(CONTROLLERS)}",
            f"--service-account-private-key-file={directory / 'sa.key'}",
            f"--root-ca-file={plane.ca_file}",
            "--use-service-account-credentials",
            "--leader-elect=false",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            # Finished pods are collected by their Jobs' owners; no need for the threshold.
            "--concurrent-gc-syncs=5",
            "--v=1",
        ])
        plane.save()
        _wait(lambda: _controllers_running(plane), timeout, "kube-controller-manager", directory,
              plane.pids["kube-controller-manager"])
        log("kube-controller-manager runs")
    except BaseException:
        plane.stop(grace=5.0)
        raise
    return plane


def load(directory: Path) -> ControlPlane | None:
    """The control plane recorded in `directory`, or None."""
    path = Path(directory) / STATE_FILE
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    state["directory"] = Path(state["directory"])
    return ControlPlane(**state)


def running(plane: ControlPlane) -> bool:
    pid, ticks = (plane.pids.get("kube-apiserver") or [0, 0])[:2]
    return bool(pid) and is_alive(pid, ticks)


# ---------------------------------------------------------------- helpers


def _spawn(directory: Path, name: str, argv: list[str]) -> list[int]:
    log_file = open(directory / "logs" / f"{name}.log", "ab")
    try:
        process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=directory, start_new_session=True)
    finally:
        log_file.close()
    _children[process.pid] = process
    return [process.pid, start_ticks(process.pid) or 0]


def _wait(ready: Callable[[], bool], timeout: float, name: str, directory: Path, pid: list[int]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if not is_alive(*pid[:2]):
            break
        time.sleep(0.2)
    tail = (directory / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
    state = "exited" if not is_alive(*pid[:2]) else f"was not ready within {timeout:.0f} s"
    raise ControlPlaneError(f"{name} {state}; the end of its log:\n{tail}")


def _insecure_context() -> ssl.SSLContext:
    # Readiness polling only: the serving certificate is made by the server as it starts.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _http_ok(url: str, token: str | None = None) -> bool:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=2, context=_insecure_context() if url.startswith("https") else None) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _controllers_running(plane: ControlPlane) -> bool:
    """The controller manager has created the default service account of `default`: its
    service-account controller (and so the manager) is up."""
    return _http_ok(f"{plane.api_url}/api/v1/namespaces/default/serviceaccounts/default", plane.admin_token)


def _write_service_account_key(private: Path, public: Path) -> None:
    if private.exists() and public.exists():
        return
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()))
    os.chmod(private, 0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))


def _kubeconfig(server: str, ca_file: Path, user: str, token: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "mlops-dev", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": f"mlops-dev-{user}", "context": {"cluster": "mlops-dev", "user": user}}],
        "current-context": f"mlops-dev-{user}",
    }


def stop_recorded(directory: Path, grace: float = 10.0) -> bool:
    """Stop the control plane recorded in `directory`; False when none was running."""
    plane = load(directory)
    if plane is None or not any(is_alive(*(p[:2])) for p in plane.pids.values() if p):
        return False
    plane.stop(grace)
    return True


