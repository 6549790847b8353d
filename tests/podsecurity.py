"""The Pod Security Standard `restricted` as a checker for pod specs, plus one rule of ours.

`violations(pod_spec)` returns one readable message per broken rule (an empty list means
the pod would be admitted into a namespace labelled
`pod-security.kubernetes.io/enforce: restricted`, and meets our own rule on top):

- baseline: no hostNetwork/hostPID/hostIPC, no Windows HostProcess, no privileged
  containers, no added capabilities beyond NET_BIND_SERVICE, no hostPath volumes, no host
  ports, AppArmor not Unconfined, SELinux type from the allowed set with no user or role,
  default /proc mount, seccomp not Unconfined, only the safe sysctls;
- restricted: only configMap, csi, downwardAPI, emptyDir, ephemeral, persistentVolumeClaim,
  projected and secret volumes; allowPrivilegeEscalation false; runAsNonRoot true; runAsUser
  not 0; seccomp RuntimeDefault or Localhost; capabilities drop ALL;
- ours: readOnlyRootFilesystem true in every container (writable paths are emptyDirs).

Source: https://kubernetes.io/docs/concepts/security/pod-security-standards/ (v1.30 and later).
Pod annotations (the deprecated AppArmor ones) are outside a pod spec and not checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Obj = dict[str, Any]

ALLOWED_VOLUME_SOURCES = frozenset({
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
})
ALLOWED_ADDED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
ALLOWED_SECCOMP = frozenset({"RuntimeDefault", "Localhost"})
ALLOWED_APPARMOR = frozenset({"RuntimeDefault", "Localhost"})
ALLOWED_SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
})
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
# Kinds whose pod template sits at spec.template.spec.
TEMPLATED_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"})


def pod_spec_of(obj: Obj) -> Obj:
    """The pod spec inside a Pod, a workload with a pod template, or a CronJob."""
    kind = obj.get("kind")
    if kind == "Pod":
        return obj["spec"]
    if kind in TEMPLATED_KINDS:
        return obj["spec"]["template"]["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    raise ValueError(f"{kind!r} has no pod template")


def violations(pod_spec: Obj, *, require_read_only_root: bool = True) -> list[str]:
    """Every rule of `restricted` (and ours) that `pod_spec` breaks, as messages."""
    found = list(_pod_level(pod_spec))
    pod_context = pod_spec.get("securityContext") or {}
    for list_name, container in _containers(pod_spec):
        where = f"{list_name}[{container.get('name', '?')}]"
        found.extend(f"{where}: {message}" for message in _container_level(container, pod_context, list_name))
        if require_read_only_root and list_name != "ephemeralContainers":
            if (container.get("securityContext") or {}).get("readOnlyRootFilesystem") is not True:
                found.append(f"{where}: securityContext.readOnlyRootFilesystem must be true")
    return found


def _containers(pod_spec: Obj) -> Iterator[tuple[str, Obj]]:
    for list_name in CONTAINER_LISTS:
        for container in pod_spec.get(list_name) or []:
            yield list_name, container


def _pod_level(spec: Obj) -> Iterator[str]:
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            yield f"spec.{field} must not be true"
    context = spec.get("securityContext") or {}
    if (context.get("windowsOptions") or {}).get("hostProcess"):
        yield "spec.securityContext.windowsOptions.hostProcess must not be true"
    if context.get("runAsUser") == 0:
        yield "spec.securityContext.runAsUser must not be 0"
    if context.get("runAsNonRoot") is False:
        yield "spec.securityContext.runAsNonRoot must not be false"
    yield from _profile_rules("spec.securityContext", context)
    for sysctl in context.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            yield f"spec.securityContext.sysctls: {sysctl.get('name')!r} is not a safe sysctl"
    for volume in spec.get("volumes") or []:
        sources = set(volume) - {"name"}
        for source in sorted(sources - ALLOWED_VOLUME_SOURCES):
            yield f"volume {volume.get('name')!r}: {source} volumes are not allowed"


def _profile_rules(path: str, context: Obj) -> Iterator[str]:
    """Rules that read the same way at pod and container level: seccomp, AppArmor, SELinux."""
    seccomp = (context.get("seccompProfile") or {}).get("type")
    if seccomp is not None and seccomp not in ALLOWED_SECCOMP:
        yield f"{path}.seccompProfile.type must be RuntimeDefault or Localhost, not {seccomp}"
    apparmor = (context.get("appArmorProfile") or {}).get("type")
    if apparmor is not None and apparmor not in ALLOWED_APPARMOR:
        yield f"{path}.appArmorProfile.type must be RuntimeDefault or Localhost, not {apparmor}"
    selinux = context.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in ALLOWED_SELINUX_TYPES:
        yield f"{path}.seLinuxOptions.type {selinux['type']!r} is not allowed"
    for field in ("user", "role"):
        if selinux.get(field):
            yield f"{path}.seLinuxOptions.{field} must not be set"


def _container_level(container: Obj, pod_context: Obj, list_name: str) -> Iterator[str]:
    context = container.get("securityContext") or {}
    if context.get("privileged"):
        yield "securityContext.privileged must not be true"
    if (context.get("windowsOptions") or {}).get("hostProcess"):
        yield "securityContext.windowsOptions.hostProcess must not be true"
    if context.get("procMount", "Default") != "Default":
        yield f"securityContext.procMount must be Default, not {context['procMount']}"
    yield from _profile_rules("securityContext", context)
    if context.get("allowPrivilegeEscalation") is not False:
        yield "securityContext.allowPrivilegeEscalation must be false"
    capabilities = context.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        yield "securityContext.capabilities.drop must include ALL"
    for added in sorted(set(capabilities.get("add") or []) - ALLOWED_ADDED_CAPABILITIES):
        yield f"securityContext.capabilities.add: {added} is not allowed"
    non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
    if non_root is not True:
        yield "runAsNonRoot must be true (in the container's or the pod's securityContext)"
    if context.get("runAsUser") == 0:
        yield "securityContext.runAsUser must not be 0"
    # A disallowed value is reported where it is set (_profile_rules); here only its absence.
    if (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type") is None:
        yield "seccompProfile.type must be set to RuntimeDefault or Localhost (container or pod securityContext)"
    if list_name != "ephemeralContainers":
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                yield f"ports: hostPort {port['hostPort']} is not allowed"
