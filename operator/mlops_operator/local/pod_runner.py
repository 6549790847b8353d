"""How a Pod becomes a process on this machine: the kubelet's part, shared by the local
executor (the embedded default) and the node stand-in of the real-control-plane tier.

A `PodRunner` starts a pod's one container as a local process, built by `podspec` from the
pod spec (command, args, env with secretKeyRef/configMapKeyRef/fieldRef resolved, emptyDir,
ConfigMap and Secret volumes materialised as folders); it probes readiness, restarts a
crashed server container with back-off (restartPolicy Always), and reports the Pod's status
as the kubelet does: phase, the Ready condition, and containerStatuses with the
`terminated` state and the termination message read from `terminationMessagePath`.

Where a pod's process runs on the network is a `PodNetwork`'s business: local mode keeps
every pod on the host's loopback with a free port per server (`HostNetwork`); the node
stand-in gives each Pod a network namespace and address of its own
(`mlops_operator.devcluster.network`).

Which pods exist and what their end means (a Job's success, a Deployment's availability)
is not its business: the local executor plays the controllers, and on a real control plane
the real controllers do.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from mlops_operator.cluster.port import Cluster, ClusterError, NotFound
from mlops_operator.local import podspec
from mlops_operator.local.processes import Managed, ProcessTable, atomic_write
from mlops_operator.local.proxy import free_port, port_is_free

log = logging.getLogger(__name__)

Obj = dict[str, Any]
POD = ("v1", "Pod")
SECRET = ("v1", "Secret")
CONFIG_MAP = ("v1", "ConfigMap")

PROBE_TIMEOUT = 0.5
PROBE_PERIOD = 0.2
CONFIG_ERROR_RETRY = 2.0
MAX_RESTART_DELAY = 30.0
# Environment passed through from the host to every process: what a container image
# would provide (a PATH, a locale, a home), nothing else.
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "TZ")
# One core per process: on a small machine, BLAS threads of parallel trials fight.
PROCESS_DEFAULT_ENV = {
    "PYTHONUNBUFFERED": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
S3_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "MINIO_ENDPOINT")


def utcnow() -> datetime:
    return datetime.now(UTC)


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def process_key(namespace: str, name: str) -> str:
    """A pod's process in the process table (and pids.json)."""
    return f"pod/{namespace}/{name}"


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = _meta(obj)
    return (str(meta.get("namespace") or "default"), str(meta["name"]))


@dataclass
class LocalPod:
    """One pod run on this machine: its Pod object's identity and its process."""

    namespace: str
    name: str
    uid: str
    owner: tuple[str, str]
    template_hash: str
    labels: dict[str, str]
    directory: Path
    log_path: Path
    termination_log: Path
    created: datetime
    process: Managed | None = None
    port: int | None = None
    ready: bool = False
    started: datetime | None = None
    address: PodAddress | None = None
    restarts: int = 0
    restart_at: float | None = None
    retry_at: float | None = None
    waiting: tuple[str, str] | None = None
    last_terminated: Obj | None = None
    readiness_path: str = "/"
    container_name: str = "main"
    image: str = ""
    fallback_to_logs: bool = False
    mounts: dict[str, Path] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PodAddress:
    """Where a pod's process runs: the address it answers on (status.podIP, where its
    readiness probes go), the address its servers bind, and the command prefix that puts
    the process into the pod's network (none: the host's)."""

    ip: str
    listen_host: str
    command_prefix: tuple[str, ...] = ()


class PodNetwork(Protocol):
    """Gives pods their place on the network; `PodRunner` asks it once per pod (attach),
    for each start of a server (server_port), and when the pod is gone (detach)."""

    def attach(self, pod: LocalPod) -> PodAddress: ...

    def server_port(self, pod: LocalPod, container_port: int | None) -> int: ...

    def detach(self, pod: LocalPod) -> None: ...


class HostNetwork:
    """Local mode: every pod shares the host's loopback, so two servers cannot both have
    their containerPort; each gets a free port of its own, kept across restarts while free."""

    def attach(self, pod: LocalPod) -> PodAddress:
        return PodAddress(podspec.LOCAL_HOST, podspec.LOCAL_HOST)

    def server_port(self, pod: LocalPod, container_port: int | None) -> int:
        if pod.port is not None and port_is_free(pod.port):
            return pod.port
        return free_port()

    def detach(self, pod: LocalPod) -> None:
        pass


@dataclass(frozen=True)
class S3Settings:
    endpoint: str
    access_key: str
    secret_key: str


class PodRunner:
    """The kubelet of one machine, over the cluster port."""

    # The address a pod's status shows (podIP, hostIP).
    host_ip = podspec.LOCAL_HOST

    def __init__(
        self,
        cluster: Cluster,
        workdir: Path,
        processes: ProcessTable,
        s3: S3Settings | None,
        clock: Callable[[], datetime] = utcnow,
        network: PodNetwork | None = None,
    ) -> None:
        self.cluster = cluster
        self.workdir = Path(workdir)
        self.processes = processes
        self.s3 = s3
        self.clock = clock
        self.network: PodNetwork = network if network is not None else HostNetwork()

    def local_url(self, url: str, namespace: str = "default") -> str:
        """An in-cluster URL as the process must call it (unchanged where the host can
        resolve cluster names itself)."""
        return url

    def _unstartable(self, pod: LocalPod, terminated: Obj, now: datetime) -> None:
        """A run-to-completion pod whose process could not even start has failed."""
        self._update_pod_status(pod, "Failed", {"terminated": terminated})

    def watch_server(self, pod: LocalPod, template: Obj | None, now: datetime) -> float | None:
        """Restart a crashed server (with back-off), probe a starting one, refresh its
        mounted ConfigMaps. Returns the seconds until it wants a look again."""
        if pod.process is not None and pod.process.poll() is not None:
            terminated = self._terminated_state(pod, now)
            self.processes.forget(pod.process)
            pod.process = None
            pod.ready = False
            pod.restarts += 1
            pod.last_terminated = terminated
            delay = min(MAX_RESTART_DELAY, 2.0 ** (pod.restarts - 1))
            pod.restart_at = time.monotonic() + delay
            self._update_pod_status(pod, "Running", {"waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {delay:.0f}s restarting failed container (exit code {terminated['exitCode']})",
            }})
            self._event_for_pod(pod, "Warning", "BackOff", f"Back-off restarting failed container, exit code {terminated['exitCode']}: see {pod.log_path}")
            return delay
        if pod.process is None:
            if template is None:
                return None
            if pod.restart_at is not None and time.monotonic() < pod.restart_at:
                return pod.restart_at - time.monotonic()
            if pod.retry_at is not None and time.monotonic() < pod.retry_at:
                return pod.retry_at - time.monotonic()
            self._start(pod, template, now, server=True)
            return PROBE_PERIOD
        if template is not None:
            self._refresh_volumes(pod, template)
        if not pod.ready:
            if self._probe(pod):
                pod.ready = True
                self._update_pod_status(pod, "Running", {"running": {"startedAt": timestamp(pod.started or now)}})
                return None
            return PROBE_PERIOD
        return None

    def _probe(self, pod: LocalPod) -> bool:
        host = pod.address.ip if pod.address is not None else podspec.LOCAL_HOST
        url = f"http://{host}:{pod.port}{pod.readiness_path}"
        try:
            with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT) as response:
                return 200 <= response.status < 400
        except urllib.error.HTTPError:
            return False
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _local_pod(self, namespace: str, name: str, owner: tuple[str, str], template_hash: str, labels: dict[str, str], now: datetime) -> LocalPod:
        directory = self.workdir / "pods" / namespace / name
        return LocalPod(
            namespace=namespace,
            name=name,
            uid="",
            owner=owner,
            template_hash=template_hash,
            labels=labels,
            directory=directory,
            log_path=self.workdir / "logs" / namespace / f"{name}.log",
            termination_log=directory / "termination-log",
            created=now,
        )

    def _start(self, pod: LocalPod, template: Obj, now: datetime, server: bool) -> bool:
        """Start the pod's process; a pod that cannot start yet (a missing Secret) stays
        Pending and is retried, as the kubelet does."""
        pod_spec = template.get("spec") or {}
        try:
            container = podspec.the_container(pod_spec)
        except podspec.PodSpecError as error:
            self._config_error(pod, str(error))
            return False
        try:
            # The pod's sandbox: its place on the network, kept across container restarts.
            if pod.address is None:
                pod.address = self.network.attach(pod)
            if server:
                pod.port = self.network.server_port(pod, container.port)
            argv, env = self._command(pod, pod_spec, container, server)
        except podspec.PodSpecError as error:
            self._config_error(pod, str(error))
            return False
        except OSError as error:
            return self._start_failed(pod, error, now, server)
        pod.retry_at = None
        pod.directory.mkdir(parents=True, exist_ok=True)
        pod.termination_log.unlink(missing_ok=True)
        pod.termination_log.touch()
        try:
            pod.process = self.processes.spawn(process_key(pod.namespace, pod.name), argv, env, pod.directory, pod.log_path)
        except OSError as error:
            return self._start_failed(pod, error, now, server)
        pod.started = now
        pod.ready = False
        pod.readiness_path = container.readiness_path or "/"
        pod.fallback_to_logs = container.fallback_to_logs
        state = {"running": {"startedAt": timestamp(now)}}
        self._update_pod_status(pod, "Running", state)
        return True

    def release_network(self, pod: LocalPod) -> None:
        """The pod is gone for good: give its place on the network back."""
        if pod.address is not None:
            self.network.detach(pod)
            pod.address = None

    def _start_failed(self, pod: LocalPod, error: OSError, now: datetime, server: bool) -> bool:
        pod.process = None
        terminated = {"exitCode": 128, "reason": "StartError", "message": str(error),
                      "startedAt": timestamp(now), "finishedAt": timestamp(now)}
        if server:
            pod.restarts += 1
            pod.restart_at = time.monotonic() + min(MAX_RESTART_DELAY, 2.0 ** (pod.restarts - 1))
            self._update_pod_status(pod, "Running", {"waiting": {"reason": "CrashLoopBackOff", "message": str(error)}})
        else:
            self._unstartable(pod, terminated, now)
        return False

    def _config_error(self, pod: LocalPod, message: str) -> None:
        first = pod.waiting != ("CreateContainerConfigError", message)
        pod.waiting = ("CreateContainerConfigError", message)
        pod.retry_at = time.monotonic() + CONFIG_ERROR_RETRY
        if first:
            self._update_pod_status(pod, "Pending", {"waiting": {"reason": "CreateContainerConfigError", "message": message}})
            self._event_for_pod(pod, "Warning", "Failed", f"Error: {message}")

    def _command(self, pod: LocalPod, pod_spec: Obj, container: podspec.Container, server: bool) -> tuple[list[str], dict[str, str]]:
        address = pod.address or PodAddress(podspec.LOCAL_HOST, podspec.LOCAL_HOST)
        env_of_pod = podspec.resolve_env(container, pod.namespace, pod.name, self._secret, self._config_map,
                                         pod_ip=address.ip)
        env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
        env.update(PROCESS_DEFAULT_ENV)
        pod.mounts = self._materialise_volumes(pod, pod_spec, container)
        mounts: dict[str, Path] = {**pod.mounts, container.termination_message_path: pod.termination_log}
        for name, value in env_of_pod.items():
            [mapped] = podspec.map_paths([value], mounts)
            env[name] = self.local_url(mapped, pod.namespace)
        env["HOSTNAME"] = pod.name
        env["MLOPS_TERMINATION_LOG"] = str(pod.termination_log)
        if self.s3 is not None:
            for variable in S3_ENDPOINT_VARIABLES:
                if variable in env or variable == "AWS_ENDPOINT_URL":
                    env[variable] = self.s3.endpoint
        # argv[0] is already a program of this machine (the image's python became this
        # interpreter): only the arguments can name paths inside the container's mounts.
        program, *arguments = container.argv
        argv = [program, *(self.local_url(part, pod.namespace) for part in podspec.map_paths(arguments, mounts))]
        if server:
            argv = podspec.with_listen_address(argv, int(pod.port or 0), address.listen_host)
        return [*address.command_prefix, *argv], env

    def _materialise_volumes(self, pod: LocalPod, pod_spec: Obj, container: podspec.Container) -> dict[str, Path]:
        """Write mounted ConfigMaps and Secrets as files under the pod's folder, with
        in-cluster URLs rewritten; returns mountPath -> local folder."""
        volumes = podspec.volume_files(pod_spec, container, pod.namespace, self._secret, self._config_map)
        folders: dict[str, Path] = {}
        for index, (mount_path, files) in enumerate(sorted(volumes.items())):
            folder = pod.directory / "volumes" / f"{index}-{mount_path.strip('/').replace('/', '_') or 'root'}"
            folder.mkdir(parents=True, exist_ok=True)
            for relative, content in files.items():
                rendered = self.local_url(content, pod.namespace)
                target = folder / relative
                if pod.files.get(str(target)) != rendered:
                    atomic_write(target, rendered)
                    pod.files[str(target)] = rendered
            folders[mount_path] = folder
        return folders

    def _refresh_volumes(self, pod: LocalPod, template: Obj) -> None:
        pod_spec = template.get("spec") or {}
        try:
            container = podspec.the_container(pod_spec)
            self._materialise_volumes(pod, pod_spec, container)
        except podspec.PodSpecError as error:
            log.warning("pod %s/%s: volumes not refreshed: %s", pod.namespace, pod.name, error)

    def _terminated_state(self, pod: LocalPod, now: datetime) -> Obj:
        """The container's `terminated` state as the kubelet reports it; death by a
        signal is exit code 128 + the signal's number."""
        assert pod.process is not None
        code = pod.process.poll() or 0
        exit_code = 128 - code if code < 0 else code
        try:
            written = pod.termination_log.read_text(errors="replace")
        except OSError:
            written = ""
        try:
            tail = _tail(pod.log_path, 8192)
        except OSError:
            tail = ""
        message = podspec.termination_message(written, tail, exit_code != 0, pod.fallback_to_logs)
        state: Obj = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": timestamp(pod.started or now),
            "finishedAt": timestamp(now),
        }
        if message:
            state["message"] = message
        return state

    def _update_pod_status(self, pod: LocalPod, phase: str, state: Obj) -> None:
        container_status: Obj = {
            "name": pod.container_name,
            "ready": pod.ready,
            "started": "running" in state,
            "restartCount": pod.restarts,
            "state": state,
        }
        if pod.last_terminated is not None:
            container_status["lastState"] = {"terminated": pod.last_terminated}
        status: Obj = {
            "phase": phase,
            "hostIP": self.host_ip,
            "podIP": self.host_ip,
            "containerStatuses": [container_status],
            "conditions": [{"type": "Ready", "status": "True" if pod.ready else "False"}],
        }
        if pod.started is not None:
            status["startTime"] = timestamp(pod.started)
        if pod.port is not None:
            status["localPort"] = pod.port
        self._patch_status(POD, (pod.namespace, pod.name), status)

    def _get(self, kind: tuple[str, str], key: tuple[str, str]) -> Obj | None:
        try:
            return self.cluster.get(kind[0], kind[1], key[0], key[1])
        except NotFound:
            return None

    def _secret(self, namespace: str, name: str) -> Obj | None:
        return self._get(SECRET, (namespace, name))

    def _config_map(self, namespace: str, name: str) -> Obj | None:
        return self._get(CONFIG_MAP, (namespace, name))

    def _patch_status(self, kind: tuple[str, str], key: tuple[str, str], status: Obj) -> None:
        try:
            self.cluster.patch_status(kind[0], kind[1], key[0], key[1], status)
        except NotFound:
            pass

    def _delete(self, kind: tuple[str, str], key: tuple[str, str]) -> None:
        try:
            self.cluster.delete(kind[0], kind[1], key[0], key[1])
        except NotFound:
            pass

    def _event_for_pod(self, pod: LocalPod, type_: str, reason: str, message: str) -> None:
        body = self._get(POD, (pod.namespace, pod.name))
        if body is not None:
            self._event(body, type_, reason, message, "kubelet")

    def _event(self, obj: Obj, type_: str, reason: str, message: str, component: str) -> None:
        namespace, name = _key(obj)
        now = timestamp(self.clock())
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{secrets.token_hex(8)}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": name,
                "namespace": namespace,
                "uid": _meta(obj).get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message,
            "source": {"component": component, "host": "local"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.cluster.create(event)
        except ClusterError as error:
            log.warning("event not recorded: %s", error)


def _tail(path: Path, size: int) -> str:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - size))
        return handle.read().decode(errors="replace")
