"""How a pod's container becomes a local process: pure translations, no I/O.

The local executor runs the same pod specs the operator creates for a cluster. What the
container image and the cluster network would provide, these functions provide on this
machine: the interpreter of the running instance instead of the image's `python`, values
of Secrets and ConfigMaps resolved into the environment, volume mount paths mapped to
folders, a free local port instead of the container port, and in-cluster Service URLs
(`http://name.ns.svc:8080`) rewritten to the Service's local port.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Obj = dict[str, Any]
PYTHON_NAMES = frozenset({"python", "python3", "/usr/bin/python", "/usr/bin/python3",
                          "/usr/local/bin/python", "/usr/local/bin/python3"})
# The kubelet's limit for a termination message.
TERMINATION_MESSAGE_LIMIT = 4096
# FallbackToLogsOnError uses the last 80 lines or 2048 bytes of the log, whichever is smaller.
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
LOCAL_HOST = "127.0.0.1"

# A URL whose host is a cluster DNS name of a Service: name, name.ns, name.ns.svc,
# name.ns.svc.cluster.local; the port is optional.
_SERVICE_URL = re.compile(
    r"(?P<scheme>https?)://(?P<host>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*)"
    r"(?::(?P<port>\d+))?"
)

ServicePort = Callable[[str, str, bool], int | None]
"""(namespace, service name, certain) -> the local port where that Service answers, or None.
`certain` is True for `.svc` names, which designate a Service even before it exists."""


class PodSpecError(ValueError):
    """The pod cannot run locally; the message says why, like the kubelet's
    CreateContainerConfigError would."""


@dataclass(frozen=True)
class Container:
    """The one container of a pod that the local executor runs."""

    name: str
    image: str
    argv: tuple[str, ...]
    env: tuple[Obj, ...]
    env_from: tuple[Obj, ...]
    mounts: tuple[Obj, ...]
    readiness_path: str | None
    # The port the readiness probe targets (a named port resolved), else the first containerPort.
    port: int | None
    termination_message_path: str
    fallback_to_logs: bool


def the_container(pod_spec: Mapping[str, Any]) -> Container:
    """The single container of `pod_spec` (init containers and sidecars are not run locally)."""
    containers = pod_spec.get("containers") or []
    if len(containers) != 1:
        raise PodSpecError(f"local mode runs pods with exactly one container, found {len(containers)}")
    container = containers[0]
    argv = local_argv(container.get("command") or [], container.get("args") or [])
    probe = container.get("readinessProbe") or {}
    http_get = probe.get("httpGet") or {}
    return Container(
        name=str(container.get("name", "main")),
        image=str(container.get("image", "")),
        argv=tuple(argv),
        env=tuple(container.get("env") or ()),
        env_from=tuple(container.get("envFrom") or ()),
        mounts=tuple(container.get("volumeMounts") or ()),
        readiness_path=str(http_get["path"]) if "path" in http_get else None,
        port=container_port(container),
        termination_message_path=str(container.get("terminationMessagePath", "/dev/termination-log")),
        fallback_to_logs=container.get("terminationMessagePolicy") == "FallbackToLogsOnError",
    )


def container_port(container: Mapping[str, Any]) -> int | None:
    """The port a server container answers on: its readiness probe's (a port name resolved
    against `ports`), else its first containerPort."""
    ports = [p for p in container.get("ports") or () if "containerPort" in p]
    probe_port = ((container.get("readinessProbe") or {}).get("httpGet") or {}).get("port")
    if isinstance(probe_port, int) or (isinstance(probe_port, str) and probe_port.isdigit()):
        return int(probe_port)
    named = [int(p["containerPort"]) for p in ports if probe_port is not None and p.get("name") == probe_port]
    if named:
        return named[0]
    return int(ports[0]["containerPort"]) if ports else None


def local_argv(command: list[str], args: list[str]) -> list[str]:
    """`command` + `args` with the image's Python replaced by this interpreter. Without a
    command the image's entrypoint would run; the runtime image has none, so the args are
    the whole command line."""
    argv = [str(part) for part in [*command, *args]]
    if not argv:
        raise PodSpecError("the container has neither command nor args: nothing to run locally")
    if argv[0] in PYTHON_NAMES:
        argv[0] = sys.executable
    return argv


def with_listen_address(argv: list[str], port: int, host: str = LOCAL_HOST) -> list[str]:
    """`argv` with `--port` and `--host` set to the local address (replaced where given,
    appended where not)."""
    result = _set_option(argv, "--port", str(port))
    return _set_option(result, "--host", host)


def _set_option(argv: list[str], option: str, value: str) -> list[str]:
    result: list[str] = []
    found = False
    skip_next = False
    for index, part in enumerate(argv):
        if skip_next:
            skip_next = False
            continue
        if part == option and index + 1 < len(argv):
            result += [option, value]
            found = skip_next = True
        elif part.startswith(option + "="):
            result.append(f"{option}={value}")
            found = True
        else:
            result.append(part)
    return result if found else [*result, option, value]


def rewrite_service_urls(text: str, namespace: str, service_port: ServicePort) -> str:
    """Replace in-cluster Service URLs in `text` by `http://127.0.0.1:<local port>`; URLs of
    hosts that are not Services are left alone."""

    def replace(match: re.Match[str]) -> str:
        target = service_of_host(match["host"], namespace)
        if target is None:
            return match[0]
        port = service_port(*target)
        if port is None:
            return match[0]
        return f"{match['scheme']}://{LOCAL_HOST}:{port}"

    return _SERVICE_URL.sub(replace, text)


def service_of_host(host: str, namespace: str) -> tuple[str, str, bool] | None:
    """(namespace, name, certain) that a cluster DNS host name may designate, or None for
    hosts that cannot be a Service. `name` and `name.ns` are Services only if one exists
    (certain=False); `name.ns.svc[.cluster.local]` always is (certain=True)."""
    parts = host.split(".")
    if len(parts) == 1:
        return (namespace, parts[0], False)
    if len(parts) == 2:
        return (parts[1], parts[0], False)
    if parts[2:] in (["svc"], ["svc", "cluster", "local"]):
        return (parts[1], parts[0], True)
    return None


def resolve_env(
    container: Container,
    namespace: str,
    pod_name: str,
    secret: Callable[[str, str], Obj | None],
    config_map: Callable[[str, str], Obj | None],
    pod_ip: str = LOCAL_HOST,
) -> dict[str, str]:
    """The container's environment as the kubelet would build it. Missing Secrets,
    ConfigMaps or keys raise PodSpecError unless marked optional."""
    env: dict[str, str] = {}
    for source in container.env_from:
        prefix = str(source.get("prefix", ""))
        if "secretRef" in source:
            ref = source["secretRef"]
            data = _secret_data(secret(namespace, ref["name"]), ref, "Secret")
        elif "configMapRef" in source:
            ref = source["configMapRef"]
            data = _config_map_data(config_map(namespace, ref["name"]), ref, "ConfigMap")
        else:
            continue
        env.update({prefix + key: value for key, value in data.items()})
    for entry in container.env:
        name = str(entry["name"])
        if "value" in entry:
            env[name] = _expand(str(entry["value"]), env)
            continue
        value_from = entry.get("valueFrom") or {}
        value = _env_value_from(value_from, namespace, pod_name, secret, config_map, pod_ip)
        if value is not None:
            env[name] = value
    return env


def _expand(value: str, env: Mapping[str, str]) -> str:
    # Kubernetes expands $(VAR) references to variables defined earlier in the list.
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), value)


def _env_value_from(
    value_from: Mapping[str, Any],
    namespace: str,
    pod_name: str,
    secret: Callable[[str, str], Obj | None],
    config_map: Callable[[str, str], Obj | None],
    pod_ip: str = LOCAL_HOST,
) -> str | None:
    if "secretKeyRef" in value_from:
        ref = value_from["secretKeyRef"]
        data = _secret_data(secret(namespace, ref["name"]), ref, "Secret")
        return _key(data, ref, "Secret")
    if "configMapKeyRef" in value_from:
        ref = value_from["configMapKeyRef"]
        data = _config_map_data(config_map(namespace, ref["name"]), ref, "ConfigMap")
        return _key(data, ref, "ConfigMap")
    if "fieldRef" in value_from:
        field = value_from["fieldRef"].get("fieldPath", "")
        return {
            "metadata.name": pod_name,
            "metadata.namespace": namespace,
            "status.podIP": pod_ip,
            "status.hostIP": LOCAL_HOST,
            "spec.nodeName": "local",
        }.get(field, "")
    return None


def _secret_data(obj: Obj | None, ref: Mapping[str, Any], kind: str) -> dict[str, str]:
    if obj is None:
        if ref.get("optional"):
            return {}
        raise PodSpecError(f'{kind.lower()} "{ref.get("name")}" not found')
    data = {key: base64.b64decode(value).decode() for key, value in (obj.get("data") or {}).items()}
    data.update({key: str(value) for key, value in (obj.get("stringData") or {}).items()})
    return data


def _config_map_data(obj: Obj | None, ref: Mapping[str, Any], kind: str) -> dict[str, str]:
    if obj is None:
        if ref.get("optional"):
            return {}
        raise PodSpecError(f'{kind.lower()} "{ref.get("name")}" not found')
    return {key: str(value) for key, value in (obj.get("data") or {}).items()}


def _key(data: Mapping[str, str], ref: Mapping[str, Any], kind: str) -> str | None:
    key = str(ref.get("key", ""))
    if key in data:
        return data[key]
    if ref.get("optional"):
        return None
    raise PodSpecError(f'couldn\'t find key {key} in {kind} {ref.get("name")}')


def volume_files(
    pod_spec: Mapping[str, Any],
    container: Container,
    namespace: str,
    secret: Callable[[str, str], Obj | None],
    config_map: Callable[[str, str], Obj | None],
) -> dict[str, dict[str, str]]:
    """For each mount of the container: mountPath -> {relative file path: content}.
    ConfigMap and Secret volumes carry files; emptyDir and others are empty folders."""
    volumes = {str(v["name"]): v for v in pod_spec.get("volumes") or []}
    mounted: dict[str, dict[str, str]] = {}
    for mount in container.mounts:
        volume = volumes.get(str(mount["name"]))
        if volume is None:
            raise PodSpecError(f'volume "{mount["name"]}" is mounted but not declared')
        if "configMap" in volume:
            source = volume["configMap"]
            data = _config_map_data(config_map(namespace, source["name"]), source, "ConfigMap")
        elif "secret" in volume:
            source = volume["secret"]
            ref = {"name": source.get("secretName"), "optional": source.get("optional")}
            data = _secret_data(secret(namespace, str(source.get("secretName"))), ref, "Secret")
        else:
            mounted[str(mount["mountPath"])] = {}
            continue
        files = _projected(data, source.get("items"))
        sub_path = mount.get("subPath")
        if sub_path:
            files = {Path(str(mount["mountPath"])).name: files[sub_path]} if sub_path in files else {}
            mounted[str(Path(str(mount["mountPath"])).parent)] = files
        else:
            mounted[str(mount["mountPath"])] = files
    return mounted


def _projected(data: Mapping[str, str], items: list[Obj] | None) -> dict[str, str]:
    if not items:
        return dict(data)
    return {str(item["path"]): data[str(item["key"])] for item in items if item["key"] in data}


def map_paths(argv: list[str], mounts: Mapping[str, Path]) -> list[str]:
    """Replace container paths under a mount path (alone or as `--opt=PATH`) by the local
    folder that holds that mount; the longest mount path wins."""
    ordered = sorted(mounts.items(), key=lambda item: len(item[0]), reverse=True)

    def local(part: str) -> str:
        for mount_path, folder in ordered:
            prefix = mount_path.rstrip("/")
            if part == prefix or part.startswith(prefix + "/"):
                return str(folder) + part[len(prefix):]
        return part

    result = []
    for part in argv:
        option, sep, value = part.partition("=")
        if sep and option.startswith("-"):
            result.append(f"{option}={local(value)}")
        else:
            result.append(local(part))
    return result


def template_hash(template: Mapping[str, Any]) -> str:
    """A short stable hash of a pod template, as the Deployment controller's
    pod-template-hash: a changed template means new pods."""
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def termination_message(written: str, log_tail: str, failed: bool, fallback_to_logs: bool) -> str:
    """What the kubelet reports as the container's termination message."""
    message = written
    if not message.strip() and failed and fallback_to_logs:
        lines = log_tail.splitlines()[-FALLBACK_LOG_LINES:]
        message = "\n".join(lines)[-FALLBACK_LOG_BYTES:]
    return message.encode()[:TERMINATION_MESSAGE_LIMIT].decode(errors="ignore")


def labels_match(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A Service's map selector, or a Deployment's `{matchLabels, matchExpressions}`."""
    if not selector:
        return False
    structured = "matchLabels" in selector or "matchExpressions" in selector
    equalities = (selector.get("matchLabels") or {}) if structured else selector
    expressions = (selector.get("matchExpressions") or []) if structured else []
    if any(labels.get(key) != value for key, value in equalities.items()):
        return False
    return all(_expression_matches(expression, labels) for expression in expressions)


def _expression_matches(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, operator = expression["key"], expression["operator"]
    values = expression.get("values") or []
    present = key in labels
    if operator == "In":
        return present and labels[key] in values
    if operator == "NotIn":
        return not (present and labels[key] in values)
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    return False
