"""The local executor: the Job and Deployment controllers and kube-proxy of the embedded
default, for the objects in an in-memory cluster, over the kubelet part it shares with the
node stand-in (`pod_runner.PodRunner`).

- A batch/v1 Job gets a Pod object and a process built from the pod template's container
  (`podspec`); when the process exits, the Pod shows `terminated` with its exit code and
  the termination message the container wrote, and the Job shows `succeeded`/`failed` and
  its `Complete`/`Failed` condition, as the real controllers would. `backoffLimit`,
  `activeDeadlineSeconds` and a limit of concurrent training processes (queued pods stay
  Pending) are respected.
- An apps/v1 Deployment gets one server process per replica (up to MAX_REPLICAS), each on a
  free port, probed on its readiness path; its status carries replicas, readyReplicas,
  availableReplicas and the Available condition. A changed pod template starts new
  processes and stops the old ones only once the new ones are all ready.
- A v1 Service gets one stable local port (`ServiceProxy`, in the local instance a
  `ProxyProcess` that outlives it), forwarding to the ready processes its selector
  matches; in-cluster URLs in args, env and mounted ConfigMaps are rewritten to these
  ports. Server pods whose processes outlived an earlier instance are adopted, not
  restarted: the data plane does not depend on the control plane being alive.

Everything it learns it writes to the cluster through the port, so the operator's observe
code reads the same fields it reads from a real cluster.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from mlops_operator.cluster.port import AlreadyExists, Cluster
from mlops_operator.local import podspec
from mlops_operator.local.pod_runner import (
    CONFIG_ERROR_RETRY,
    CONFIG_MAP,
    POD,
    PROBE_PERIOD,
    SECRET,
    LocalPod,
    PodRunner,
    S3Settings,
    _key,
    _meta,
    parse_timestamp,
    process_key,
    timestamp,
    utcnow,
)
from mlops_operator.local.processes import Managed, ProcessTable
from mlops_operator.local.proxy import ProxyProcess, ServiceProxy, free_port

log = logging.getLogger(__name__)

__all__ = ["CONFIG_MAP", "DEPLOYMENT", "JOB", "POD", "SECRET", "SERVICE", "Executor", "LocalPod", "PortBook",
           "S3Settings", "job_finished", "utcnow"]

Obj = dict[str, Any]
JOB = ("batch/v1", "Job")
DEPLOYMENT = ("apps/v1", "Deployment")
SERVICE = ("v1", "Service")
EVENT = ("v1", "Event")

DEFAULT_BACKOFF_LIMIT = 6  # the Job API's default
# A safety bound on processes per Deployment on one machine (more is asked, this many run).
MAX_REPLICAS = 8


def _suffix(length: int = 5) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # the API server's generateName alphabet
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _condition_true(obj: Mapping[str, Any], kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


def job_finished(job: Mapping[str, Any]) -> bool:
    return _condition_true(job, "Complete") or _condition_true(job, "Failed")


class PortBook:
    """Stable local ports of Services, by `namespace/name`: kept in the instance's state so
    a Service answers on the same port after a restart of the instance."""

    def __init__(self, ports: Mapping[str, int] | None = None) -> None:
        self._ports = dict(ports or {})

    def port(self, namespace: str, name: str) -> int:
        key = f"{namespace}/{name}"
        if key not in self._ports:
            self._ports[key] = free_port()
        return self._ports[key]

    def known(self, namespace: str, name: str) -> int | None:
        return self._ports.get(f"{namespace}/{name}")

    def reassign(self, namespace: str, name: str) -> int:
        self._ports[f"{namespace}/{name}"] = free_port()
        return self._ports[f"{namespace}/{name}"]

    def as_dict(self) -> dict[str, int]:
        return dict(self._ports)


class Executor(PodRunner):
    def __init__(
        self,
        cluster: Cluster,
        workdir: Path,
        processes: ProcessTable,
        proxy: ServiceProxy | ProxyProcess,
        ports: PortBook,
        s3: S3Settings | None,
        max_jobs: int | None = None,
        clock: Callable[[], datetime] = utcnow,
        notes: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(cluster, workdir, processes, s3, clock)
        self.proxy = proxy
        self.ports = ports
        self.max_jobs = max_jobs or os.cpu_count() or 1
        self._notes = notes or (lambda line: None)
        self._job_pods: dict[tuple[str, str], LocalPod] = {}
        self._deployment_pods: dict[tuple[str, str], list[LocalPod]] = {}
        self._deployment_notes: set[tuple[str, str]] = set()
        self._service_backends: dict[int, list[int]] = {}
        self._service_failures: set[str] = set()
        self._started = False

    # ---------------------------------------------------------------- the step

    def step(self) -> float | None:
        """Bring processes in line with the objects and the objects' status in line with
        the processes. Returns the seconds after which it wants to look again (None: only
        when something changes)."""
        now = self.clock()
        if not self._started:
            self._adopt_server_pods(now)
            self._started = True
        waits = [
            self._sync_jobs(now),
            self._sync_deployments(now),
        ]
        self._sync_services()
        pending = [w for w in waits if w is not None]
        return min(pending) if pending else None

    def shutdown(self, grace: float = 5.0) -> None:
        """Close the Service ports and stop every process; objects are left as they are,
        so that the next instance restarts what was running."""
        for port in self.proxy.ports():
            self.proxy.close(port)
        self._service_backends.clear()
        self.processes.stop_all(grace)
        self._job_pods.clear()
        self._deployment_pods.clear()

    def service_url(self, namespace: str, name: str) -> str | None:
        port = self.ports.known(namespace, name)
        return None if port is None else f"http://{podspec.LOCAL_HOST}:{port}"

    def local_url(self, url: str, namespace: str = "default") -> str:
        """An in-cluster URL as reachable from this machine."""
        return podspec.rewrite_service_urls(url, namespace, self._service_port)

    # ---------------------------------------------------------------- Jobs

    def _sync_jobs(self, now: datetime) -> float | None:
        jobs = sorted(self.cluster.list(*JOB), key=lambda j: str(_meta(j).get("creationTimestamp", "")))
        seen: set[tuple[str, str]] = set()
        waits: list[float] = []
        for job in jobs:
            key = _key(job)
            seen.add(key)
            wait = self._sync_job(job, now)
            if wait is not None:
                waits.append(wait)
        for key in [k for k in self._job_pods if k not in seen]:
            self._abandon_job_pod(self._job_pods.pop(key), delete=True)
        self._start_queued_jobs(now)
        # Exits need no polling: the process table wakes the instance when one ends.
        if any(p.retry_at is not None for p in self._job_pods.values()):
            waits.append(CONFIG_ERROR_RETRY)
        return min(waits) if waits else None

    def _sync_job(self, job: Obj, now: datetime) -> float | None:
        key = _key(job)
        pod = self._job_pods.get(key)
        if job_finished(job) or _meta(job).get("deletionTimestamp"):
            if pod is not None:
                self._abandon_job_pod(self._job_pods.pop(key), delete=False)
            return self._expire_finished_job(job, now)
        if pod is None:
            self._forget_stale_pods(job)
            pod = self._new_job_pod(job, now)
            self._job_pods[key] = pod
        status = job.get("status") or {}
        if not status.get("startTime"):
            self._patch_status(JOB, key, {"startTime": timestamp(now), "active": 1})
        if pod.process is not None and pod.process.poll() is not None:
            return self._job_pod_exited(job, pod, now)
        deadline = (job.get("spec") or {}).get("activeDeadlineSeconds")
        started = parse_timestamp(status.get("startTime")) or now
        if deadline is not None:
            remaining = float(deadline) - (now - started).total_seconds()
            if remaining <= 0:
                self._job_deadline_exceeded(job, pod, now)
                return None
            return remaining
        return None

    def _expire_finished_job(self, job: Obj, now: datetime) -> float | None:
        """The TTL-after-finished controller: delete a finished Job (its pods follow by
        garbage collection) `ttlSecondsAfterFinished` after it finished."""
        ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
        status = job.get("status") or {}
        finished = parse_timestamp(status.get("completionTime")) or next(
            (parse_timestamp(c.get("lastTransitionTime")) for c in status.get("conditions") or []
             if c.get("type") in ("Complete", "Failed") and c.get("status") == "True"), None)
        if ttl is None or finished is None or _meta(job).get("deletionTimestamp"):
            return None
        remaining = float(ttl) - (now - finished).total_seconds()
        if remaining > 0:
            return remaining
        self._delete(JOB, _key(job))
        return None

    def _forget_stale_pods(self, job: Obj) -> None:
        """Pods of this Job left Pending or Running by an earlier instance have no process
        any more: delete them, a fresh pod takes over (a lost node, not a failed run)."""
        namespace, name = _key(job)
        for pod in self.cluster.list(*POD, namespace=namespace, label_selector={"job-name": name}):
            phase = (pod.get("status") or {}).get("phase")
            if phase in (None, "Pending", "Running"):
                self._delete(POD, _key(pod))

    def _new_job_pod(self, job: Obj, now: datetime) -> LocalPod:
        namespace, job_name = _key(job)
        meta = _meta(job)
        template = (job.get("spec") or {}).get("template") or {}
        name = f"{job_name[:57]}-{_suffix()}"
        controller_uid = str(meta.get("uid", ""))
        labels = {
            **((template.get("metadata") or {}).get("labels") or {}),
            "job-name": job_name,
            "batch.kubernetes.io/job-name": job_name,
            "controller-uid": controller_uid,
            "batch.kubernetes.io/controller-uid": controller_uid,
        }
        owner = _owner_reference(job)
        pod = self._local_pod(namespace, name, (namespace, job_name), podspec.template_hash(template), labels, now)
        pod.uid = self._create_pod_object(pod, template, owner, now)
        return pod

    def _start_queued_jobs(self, now: datetime) -> None:
        running = sum(1 for p in self._job_pods.values() if p.process is not None)
        queued = [p for p in self._job_pods.values() if p.process is None]
        for pod in sorted(queued, key=lambda p: p.created):
            if running >= self.max_jobs:
                break
            if pod.retry_at is not None and time.monotonic() < pod.retry_at:
                continue
            job = self._get(JOB, pod.owner)
            if job is None:
                continue
            template = (job.get("spec") or {}).get("template") or {}
            if self._start(pod, template, now, server=False):
                running += 1

    def _job_pod_exited(self, job: Obj, pod: LocalPod, now: datetime) -> float | None:
        terminated = self._terminated_state(pod, now)
        self._update_pod_status(pod, "Succeeded" if terminated["exitCode"] == 0 else "Failed", {"terminated": terminated})
        self.processes.forget(pod.process)  # type: ignore[arg-type]
        pod.process = None
        key = _key(job)
        status = job.get("status") or {}
        del self._job_pods[key]
        if terminated["exitCode"] == 0:
            self._patch_status(JOB, key, {
                "active": None,  # the API omits zero counts
                "ready": None,
                "succeeded": int(status.get("succeeded") or 0) + 1,
                "completionTime": timestamp(now),
                "conditions": [
                    *_other_conditions(status, ("SuccessCriteriaMet", "Complete")),
                    _job_condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods", now),
                    _job_condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods", now),
                ],
            })
            return None
        rule = failure_policy_action(job, int(terminated["exitCode"]))
        failed = int(status.get("failed") or 0) + (0 if rule and rule[0] == "Ignore" else 1)
        if rule and rule[0] == "FailJob":
            message = (f"Container {pod.container_name} for pod {pod.namespace}/{pod.name} failed with exit code "
                       f"{terminated['exitCode']} matching FailJob rule at index {rule[1]}")
            self._fail_job(key, status, failed, "PodFailurePolicy", message, now)
            return None
        backoff_limit = (job.get("spec") or {}).get("backoffLimit", DEFAULT_BACKOFF_LIMIT)
        if failed > int(backoff_limit):
            self._fail_job(key, status, failed, "BackoffLimitExceeded", "Job has reached the specified backoff limit", now)
            return None
        self._patch_status(JOB, key, {"failed": failed, "active": 1})
        self._job_pods[key] = self._new_job_pod(job, now)
        return 0.0

    def _job_deadline_exceeded(self, job: Obj, pod: LocalPod, now: datetime) -> None:
        key = _key(job)
        if pod.process is not None:
            self.processes.stop(pod.process, grace=2.0)
            terminated = self._terminated_state(pod, now)
            terminated["reason"] = "DeadlineExceeded"
            self._update_pod_status(pod, "Failed", {"terminated": terminated})
            pod.process = None
        else:
            self._update_pod_status(pod, "Failed", {"waiting": {"reason": "DeadlineExceeded"}})
        del self._job_pods[key]
        status = job.get("status") or {}
        failed = int(status.get("failed") or 0) + 1
        self._fail_job(key, status, failed, "DeadlineExceeded", "Job was active longer than specified deadline", now)

    def _fail_job(self, key: tuple[str, str], status: Mapping[str, Any], failed: int, reason: str, message: str, now: datetime) -> None:
        self._patch_status(JOB, key, {
            "active": None,
            "ready": None,
            "failed": failed,
            "conditions": [
                *_other_conditions(status, ("FailureTarget", "Failed")),
                _job_condition("FailureTarget", reason, message, now),
                _job_condition("Failed", reason, message, now),
            ],
        })
        job = self._get(JOB, key)
        if job is not None:
            self._event(job, "Warning", reason, message, "job-controller")

    def _abandon_job_pod(self, pod: LocalPod, delete: bool) -> None:
        if pod.process is not None:
            self.processes.stop(pod.process, grace=2.0)
            pod.process = None
        if delete:
            self._delete(POD, (pod.namespace, pod.name))

    # ---------------------------------------------------------------- Deployments

    def _sync_deployments(self, now: datetime) -> float | None:
        waits: list[float] = []
        seen: set[tuple[str, str]] = set()
        for deployment in self.cluster.list(*DEPLOYMENT):
            key = _key(deployment)
            seen.add(key)
            wait = self._sync_deployment(deployment, now)
            if wait is not None:
                waits.append(wait)
        for key in [k for k in self._deployment_pods if k not in seen]:
            pods = self._deployment_pods.pop(key)
            self._retire(pods, list(pods))
        return min(waits) if waits else None

    def _sync_deployment(self, deployment: Obj, now: datetime) -> float | None:
        key = _key(deployment)
        spec = deployment.get("spec") or {}
        template = spec.get("template") or {}
        desired_hash = podspec.template_hash(template)
        wanted = int(spec.get("replicas", 1))
        if wanted > MAX_REPLICAS and key not in self._deployment_notes:
            self._deployment_notes.add(key)
            self._notes(f"deployment {key[0]}/{key[1]}: {wanted} replicas asked, local mode runs {MAX_REPLICAS}")
        replicas = 0 if _meta(deployment).get("deletionTimestamp") else min(wanted, MAX_REPLICAS)
        pods = self._deployment_pods.setdefault(key, [])
        wait: float | None = None
        for pod in pods:
            wait = _earliest(wait, self.watch_server(pod, template if pod.template_hash == desired_hash else None, now))

        current = [p for p in pods if p.template_hash == desired_hash]
        outdated = [p for p in pods if p.template_hash != desired_hash]
        surplus = sorted(current, key=lambda p: (p.ready, p.created))[: max(0, len(current) - replicas)]
        if replicas == 0 or (outdated and ((spec.get("strategy") or {}).get("type")) == "Recreate"):
            self._retire(pods, outdated + surplus if replicas else list(pods))
        elif surplus:
            self._retire(pods, surplus)
        current = [p for p in pods if p.template_hash == desired_hash]
        for _ in range(replicas - len(current)):
            pod = self._new_server_pod(deployment, template, desired_hash, now)
            pods.append(pod)
            self._start(pod, template, now, server=True)
            wait = _earliest(wait, PROBE_PERIOD)
        current = [p for p in pods if p.template_hash == desired_hash]
        if replicas and sum(p.ready for p in current) >= replicas:
            # No gap: the old pods go only once every new one serves.
            self._retire(pods, [p for p in pods if p.template_hash != desired_hash])
        self._write_deployment_status(deployment, pods, desired_hash, replicas, now)
        return wait

    def _retire(self, pods: list[LocalPod], leaving: list[LocalPod]) -> None:
        self._drain(leaving)
        for pod in leaving:
            self._stop_server(pod, delete=True)
            pods.remove(pod)

    def _adopt_server_pods(self, now: datetime) -> None:
        """Pods of Deployments left by an earlier instance: the ones whose process still
        runs (adopted into the process table) serve on, as pods outlive a restarted
        kubelet; the others have no process any more and are deleted (their Deployment
        makes new ones)."""
        for body in self.cluster.list(*POD):
            owner = next((ref for ref in _meta(body).get("ownerReferences") or [] if ref.get("kind") == "Deployment"),
                         None)
            if owner is None:
                continue
            namespace, name = _key(body)
            managed = self.processes.get(process_key(namespace, name))
            pod = self._adopted_pod(body, (namespace, str(owner.get("name"))), managed, now)
            if pod is None:
                if managed is not None:
                    self.processes.stop(managed, grace=2.0)
                self._delete(POD, (namespace, name))
                continue
            self._deployment_pods.setdefault(pod.owner, []).append(pod)

    def _adopted_pod(self, body: Obj, owner: tuple[str, str], managed: Managed | None, now: datetime) -> LocalPod | None:
        """The LocalPod of a Pod object whose process an earlier instance left running;
        None when there is none to adopt."""
        status = body.get("status") or {}
        labels = dict(_meta(body).get("labels") or {})
        if managed is None or managed.poll() is not None or not status.get("localPort") \
                or "pod-template-hash" not in labels:
            return None
        namespace, name = _key(body)
        created = parse_timestamp(_meta(body).get("creationTimestamp")) or now
        pod = self._local_pod(namespace, name, owner, labels["pod-template-hash"], labels, created)
        pod.uid, pod.port, pod.process = str(_meta(body).get("uid", "")), int(status["localPort"]), managed
        pod.started = parse_timestamp(status.get("startTime")) or now
        [container_status, *_] = status.get("containerStatuses") or [{}]
        pod.restarts = int(container_status.get("restartCount") or 0)
        try:
            container = podspec.the_container(body.get("spec") or {})
        except podspec.PodSpecError:
            return None
        pod.container_name, pod.readiness_path = container.name, container.readiness_path or "/"
        # Ready as it was: its Service keeps sending to it (the proxy already does) until a
        # probe says otherwise; a pod that was not ready yet is probed as usual.
        pod.ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        return pod

    def _new_server_pod(self, deployment: Obj, template: Obj, template_hash: str, now: datetime) -> LocalPod:
        namespace, name = _key(deployment)
        labels = {**((template.get("metadata") or {}).get("labels") or {}), "pod-template-hash": template_hash}
        pod_name = f"{name[:46]}-{template_hash}-{_suffix()}"
        pod = self._local_pod(namespace, pod_name, (namespace, name), template_hash, labels, now)
        pod.port = free_port()
        pod.uid = self._create_pod_object(pod, template, _owner_reference(deployment), now)
        return pod



    def _drain(self, pods: list[LocalPod]) -> None:
        """Take pods out of their Services before they are stopped, so that no new
        connection reaches a process that is going away (the endpoints controller removes
        a terminating pod before the kubelet signals it)."""
        if any(p.ready for p in pods):
            for pod in pods:
                pod.ready = False
            self._sync_services()

    def _stop_server(self, pod: LocalPod, delete: bool) -> None:
        if pod.process is not None:
            self.processes.stop(pod.process, grace=3.0)
            pod.process = None
        pod.ready = False
        if delete:
            self._delete(POD, (pod.namespace, pod.name))

    def _write_deployment_status(self, deployment: Obj, pods: list[LocalPod], desired_hash: str, replicas: int,
                                 now: datetime) -> None:
        counts = deployment_counts(pods, desired_hash, replicas)
        spec = deployment.get("spec") or {}
        available = counts["availableReplicas"] >= replicas - max_unavailable(spec, replicas) or replicas == 0
        old = deployment.get("status") or {}
        status: Obj = {"observedGeneration": int(_meta(deployment).get("generation") or 1), **counts}
        complete = counts["replicas"] == counts["updatedReplicas"] == counts["availableReplicas"] == replicas
        status["conditions"] = [
            _deployment_condition(old, "Available", available,
                                  "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                                  "Deployment has minimum availability." if available
                                  else "Deployment does not have minimum availability.", now),
            _deployment_condition(old, "Progressing", True,
                                  "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated",
                                  "ReplicaSet has successfully progressed." if complete
                                  else "ReplicaSet is progressing.", now),
        ]
        if _without_times(status) != _without_times({k: old.get(k) for k in status}):
            self._patch_status(DEPLOYMENT, _key(deployment), status)

    # ---------------------------------------------------------------- Services

    def _sync_services(self) -> None:
        live_ports: set[int] = set()
        for service in self.cluster.list(*SERVICE):
            namespace, name = _key(service)
            port = self.ports.port(namespace, name)
            selector = (service.get("spec") or {}).get("selector") or {}
            backends = sorted(
                pod.port
                for pods in self._deployment_pods.values()
                for pod in pods
                if pod.ready and pod.port is not None and pod.namespace == namespace
                and podspec.labels_match(selector, pod.labels)
            )
            live_ports.add(port)
            self._publish_service_port(service, port)
            if self._service_backends.get(port) != backends or port not in self.proxy.ports():
                try:
                    self.proxy.set_backends(port, backends)
                except OSError as error:
                    if f"{namespace}/{name}" not in self._service_failures:
                        self._service_failures.add(f"{namespace}/{name}")
                        self._notes(f"service {namespace}/{name}: local port {port} unavailable ({error}); "
                                    f"it moves to port {self.ports.reassign(namespace, name)}")
                    continue
                self._service_backends[port] = backends
        for port in [p for p in self.proxy.ports() if p not in live_ports]:
            self.proxy.close(port)
            self._service_backends.pop(port, None)

    def _publish_service_port(self, service: Obj, port: int) -> None:
        """Show the local address in the Service's status, where a load balancer's would be."""
        ingress = [{"ip": podspec.LOCAL_HOST, "ports": [{"port": port, "protocol": "TCP"}]}]
        if ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") != ingress:
            self._patch_status(SERVICE, _key(service), {"loadBalancer": {"ingress": ingress}})

    def _service_port(self, namespace: str, name: str, certain: bool) -> int | None:
        if certain or self._get(SERVICE, (namespace, name)) is not None:
            return self.ports.port(namespace, name)
        return None

    # ---------------------------------------------------------------- processes



    def _unstartable(self, pod: LocalPod, terminated: Obj, now: datetime) -> None:
        self._update_pod_status(pod, "Failed", {"terminated": terminated})
        job = self._get(JOB, pod.owner)
        self._job_pods.pop(pod.owner, None)
        if job is None:
            return
        status = job.get("status") or {}
        failed = int(status.get("failed") or 0) + 1
        backoff_limit = (job.get("spec") or {}).get("backoffLimit", DEFAULT_BACKOFF_LIMIT)
        if failed > int(backoff_limit):
            self._fail_job(pod.owner, status, failed, "BackoffLimitExceeded", "Job has reached the specified backoff limit", now)
        else:
            self._patch_status(JOB, pod.owner, {"failed": failed, "active": 1})
            self._job_pods[pod.owner] = self._new_job_pod(job, now)






    # ---------------------------------------------------------------- Pod objects

    def _create_pod_object(self, pod: LocalPod, template: Obj, owner: Obj, now: datetime) -> str:
        spec = dict(template.get("spec") or {})
        containers = spec.get("containers") or [{}]
        pod.container_name = str(containers[0].get("name", "main"))
        spec["nodeName"] = "local"
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod.name,
                "namespace": pod.namespace,
                "labels": pod.labels,
                "annotations": dict((template.get("metadata") or {}).get("annotations") or {}),
                "ownerReferences": [owner],
            },
            "spec": spec,
        }
        try:
            created = self.cluster.create(body)
        except AlreadyExists:
            created = self.cluster.get(*POD, pod.namespace, pod.name)
        self._update_pod_status(pod, "Pending", {"waiting": {"reason": "ContainerCreating"}})
        return str(_meta(created).get("uid", ""))


    # ---------------------------------------------------------------- cluster access









def _owner_reference(owner: Obj) -> Obj:
    meta = _meta(owner)
    return {
        "apiVersion": owner.get("apiVersion"),
        "kind": owner.get("kind"),
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def failure_policy_action(job: Mapping[str, Any], exit_code: int) -> tuple[str, int] | None:
    """The first `podFailurePolicy` rule matching the container's exit code:
    (action, rule index), or None. Pod-condition rules never match locally (no evictions)."""
    rules = (((job.get("spec") or {}).get("podFailurePolicy") or {}).get("rules")) or []
    for index, rule in enumerate(rules):
        on_exit = rule.get("onExitCodes")
        if not on_exit:
            continue
        values = set(on_exit.get("values") or [])
        matches = exit_code in values if on_exit.get("operator", "In") == "In" else exit_code not in values
        if matches and exit_code != 0:
            return (str(rule.get("action")), index)
    return None


def deployment_counts(pods: list[LocalPod], desired_hash: str, replicas: int) -> dict[str, int]:
    """The replica counts of a Deployment's status, as the Deployment controller derives
    them from its ReplicaSets: `replicas` every pod of any template (a crash-looping or
    still-starting pod counts, as does an old pod not yet retired), `updatedReplicas` the
    pods of the current template, `readyReplicas` and `availableReplicas` the ready ones
    (`minReadySeconds` is 0 here), `unavailableReplicas` the pods the ReplicaSets want
    (all of them during a surge) that are not available."""
    ready = sum(1 for p in pods if p.ready)
    return {
        "replicas": len(pods),
        "updatedReplicas": sum(1 for p in pods if p.template_hash == desired_hash),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": max(0, max(replicas, len(pods)) - ready),
    }


def max_unavailable(deployment_spec: Mapping[str, Any], replicas: int) -> int:
    """`strategy.rollingUpdate.maxUnavailable` as a number of pods (a percentage rounds
    down, as the Deployment controller does); 25 % by default."""
    value = (((deployment_spec.get("strategy") or {}).get("rollingUpdate")) or {}).get("maxUnavailable", "25%")
    if isinstance(value, str) and value.endswith("%"):
        return int(replicas * float(value[:-1]) / 100)
    return int(value)


def _job_condition(kind: str, reason: str, message: str, now: datetime) -> Obj:
    moment = timestamp(now)
    return {"type": kind, "status": "True", "reason": reason, "message": message,
            "lastProbeTime": moment, "lastTransitionTime": moment}


def _other_conditions(status: Mapping[str, Any], replaced: tuple[str, ...]) -> list[Obj]:
    return [c for c in status.get("conditions") or [] if c.get("type") not in replaced]


def _deployment_condition(old_status: Mapping[str, Any], kind: str, true: bool, reason: str, message: str, now: datetime) -> Obj:
    value = "True" if true else "False"
    previous = next((c for c in old_status.get("conditions") or [] if c.get("type") == kind), None)
    transition = previous.get("lastTransitionTime") if previous and previous.get("status") == value else timestamp(now)
    return {"type": kind, "status": value, "reason": reason, "message": message,
            "lastUpdateTime": timestamp(now), "lastTransitionTime": transition}


def _without_times(status: Mapping[str, Any]) -> Obj:
    result = dict(status)
    result["conditions"] = [
        {k: v for k, v in c.items() if k not in ("lastUpdateTime", "lastTransitionTime")}
        for c in status.get("conditions") or []
    ]
    return result


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)

