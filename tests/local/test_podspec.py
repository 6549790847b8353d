"""The pure translations from a pod spec to a local process."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import pytest

from mlops_operator.local import podspec

SECRETS = {("default", "mlops-s3"): {"data": {"KEY": base64.b64encode(b"s3cr3t").decode()}}}
CONFIG_MAPS = {("default", "router-config"): {"data": {"router.json": '{"champion": "http://iris-champion.default.svc:8080"}'}}}


def secret(namespace: str, name: str) -> dict | None:
    return SECRETS.get((namespace, name))


def config_map(namespace: str, name: str) -> dict | None:
    return CONFIG_MAPS.get((namespace, name))


def container(**fields: object) -> podspec.Container:
    return podspec.the_container({"containers": [{"name": "main", "command": ["python", "-m", "x"], **fields}]})


def test_the_image_python_becomes_this_interpreter() -> None:
    assert podspec.local_argv(["python3", "-m", "mlops_runtime.train"], ["--x"]) == [
        sys.executable, "-m", "mlops_runtime.train", "--x"]
    assert podspec.local_argv([], ["/bin/echo", "hi"]) == ["/bin/echo", "hi"]
    with pytest.raises(podspec.PodSpecError, match="neither command nor args"):
        podspec.local_argv([], [])


def test_only_single_container_pods_run() -> None:
    with pytest.raises(podspec.PodSpecError, match="exactly one container, found 2"):
        podspec.the_container({"containers": [{"name": "a"}, {"name": "b"}]})


@pytest.mark.parametrize(("argv", "expected"), [
    (["serve", "--port", "8080"], ["serve", "--port", "5000", "--host", "127.0.0.1"]),
    (["serve", "--port=8080", "--host", "0.0.0.0"], ["serve", "--port=5000", "--host", "127.0.0.1"]),
    (["serve"], ["serve", "--port", "5000", "--host", "127.0.0.1"]),
])
def test_servers_listen_on_the_given_local_port(argv: list[str], expected: list[str]) -> None:
    assert podspec.with_listen_address(argv, 5000) == expected


def test_service_urls_are_rewritten_to_local_ports_and_others_left_alone() -> None:
    ports = {("default", "iris-champion"): 4001, ("prod", "iris"): 4002}

    def port(namespace: str, name: str, certain: bool) -> int | None:
        return ports.get((namespace, name))

    text = ("http://iris-champion.default.svc:8080/predict http://iris.prod.svc.cluster.local "
            "http://iris-champion:8080 http://example.com:80 http://unknown.default.svc:8080 http://127.0.0.1:9")
    assert podspec.rewrite_service_urls(text, "default", port) == (
        "http://127.0.0.1:4001/predict http://127.0.0.1:4002 "
        "http://127.0.0.1:4001 http://example.com:80 http://unknown.default.svc:8080 http://127.0.0.1:9")


def test_host_names_tell_whether_they_must_be_services() -> None:
    assert podspec.service_of_host("a.b.svc", "x") == ("b", "a", True)
    assert podspec.service_of_host("a.b.svc.cluster.local", "x") == ("b", "a", True)
    assert podspec.service_of_host("a", "x") == ("x", "a", False)
    assert podspec.service_of_host("a.b", "x") == ("b", "a", False)
    assert podspec.service_of_host("www.example.com", "x") is None


def test_env_is_resolved_from_values_secrets_config_maps_and_fields() -> None:
    c = container(
        env=[
            {"name": "A", "value": "1"},
            {"name": "B", "value": "$(A)-2"},
            {"name": "S", "valueFrom": {"secretKeyRef": {"name": "mlops-s3", "key": "KEY"}}},
            {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "router-config", "key": "router.json"}}},
            {"name": "P", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "O", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}}},
        ],
        envFrom=[{"secretRef": {"name": "mlops-s3"}, "prefix": "X_"}],
    )
    env = podspec.resolve_env(c, "default", "pod-1", secret, config_map)
    assert env == {"X_KEY": "s3cr3t", "A": "1", "B": "1-2", "S": "s3cr3t",
                   "C": CONFIG_MAPS[("default", "router-config")]["data"]["router.json"], "P": "pod-1"}


def test_a_missing_secret_or_key_is_a_config_error() -> None:
    with pytest.raises(podspec.PodSpecError, match='secret "absent" not found'):
        podspec.resolve_env(container(env=[{"name": "S", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]),
                            "default", "p", secret, config_map)
    with pytest.raises(podspec.PodSpecError, match="couldn't find key NOPE"):
        podspec.resolve_env(container(env=[{"name": "S", "valueFrom": {"secretKeyRef": {"name": "mlops-s3", "key": "NOPE"}}}]),
                            "default", "p", secret, config_map)


def test_volume_files_and_mount_paths() -> None:
    spec = {
        "containers": [{"name": "router", "command": ["python"], "volumeMounts": [
            {"name": "config", "mountPath": "/etc/mlops/router"},
            {"name": "tmp", "mountPath": "/tmp"},
        ]}],
        "volumes": [
            {"name": "config", "configMap": {"name": "router-config", "items": [{"key": "router.json", "path": "router.json"}]}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    c = podspec.the_container(spec)
    files = podspec.volume_files(spec, c, "default", secret, config_map)
    assert files == {"/etc/mlops/router": {"router.json": CONFIG_MAPS[("default", "router-config")]["data"]["router.json"]},
                     "/tmp": {}}
    mapped = podspec.map_paths(
        ["--config-file", "/etc/mlops/router/router.json", "--cache=/tmp/c", "/etc/other"],
        {"/etc/mlops/router": Path("/local/cfg"), "/tmp": Path("/local/tmp")})
    assert mapped == ["--config-file", "/local/cfg/router.json", "--cache=/local/tmp/c", "/etc/other"]


def test_template_hash_changes_with_the_template_only() -> None:
    a = {"spec": {"containers": [{"name": "x", "env": [{"name": "A", "value": "1"}]}]}}
    b = {"spec": {"containers": [{"name": "x", "env": [{"name": "A", "value": "2"}]}]}}
    assert podspec.template_hash(a) == podspec.template_hash({"spec": {"containers": [{"env": [{"value": "1", "name": "A"}], "name": "x"}]}})
    assert podspec.template_hash(a) != podspec.template_hash(b)


def test_termination_message_is_cut_and_falls_back_to_logs() -> None:
    assert podspec.termination_message("x" * 5000, "", False, False) == "x" * 4096
    log = "\n".join(f"line {i}" for i in range(200))
    fallback = podspec.termination_message("", log, True, True)
    assert fallback.endswith("line 199") and len(fallback.encode()) <= 2048 and "line 119" not in fallback
    assert podspec.termination_message("", log, True, False) == ""
    assert podspec.termination_message("", log, False, True) == ""


def test_label_selectors() -> None:
    labels = {"app": "iris", "role": "champion"}
    assert podspec.labels_match({"app": "iris"}, labels)
    assert not podspec.labels_match({"app": "iris", "role": "challenger"}, labels)
    assert podspec.labels_match({"matchLabels": {"app": "iris"},
                                 "matchExpressions": [{"key": "role", "operator": "In", "values": ["champion"]}]}, labels)
    assert not podspec.labels_match({"matchExpressions": [{"key": "role", "operator": "DoesNotExist"}]}, labels)
    assert not podspec.labels_match({}, labels)
