"""Pod Security: the checker in tests/podsecurity.py, and every pod template we ship."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from podsecurity import pod_spec_of, violations

ROOT = Path(__file__).resolve().parents[2]

GOOD_POD_SPEC: dict = {
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
    "initContainers": [{
        "name": "init",
        "image": "busybox:1.36",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }],
    "containers": [{
        "name": "app",
        "image": "app:1.0",
        "ports": [{"name": "http", "containerPort": 8080}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }],
    "volumes": [
        {"name": "tmp", "emptyDir": {}},
        {"name": "config", "configMap": {"name": "c"}},
        {"name": "creds", "secret": {"secretName": "s"}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "d"}},
        {"name": "token", "projected": {"sources": []}},
    ],
}


def _app(spec: dict) -> dict:
    return spec["containers"][0]


def _set(path: str, value: object) -> Callable[[dict], None]:
    """A mutation that sets a dotted path below the pod spec ('containers.0.x.y' style)."""
    def mutate(spec: dict) -> None:
        *parents, last = path.split(".")
        node = spec
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[last] = value
    return mutate


def _delete(path: str) -> Callable[[dict], None]:
    def mutate(spec: dict) -> None:
        *parents, last = path.split(".")
        node = spec
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[last]
    return mutate


# (what is broken, mutation, a fragment the message must contain)
BROKEN = [
    ("host network", _set("hostNetwork", True), "spec.hostNetwork"),
    ("host PID", _set("hostPID", True), "spec.hostPID"),
    ("host IPC", _set("hostIPC", True), "spec.hostIPC"),
    ("host process", _set("securityContext.windowsOptions", {"hostProcess": True}), "hostProcess"),
    ("privileged", _set("containers.0.securityContext.privileged", True), "privileged"),
    ("added capability", _set("containers.0.securityContext.capabilities.add", ["SYS_ADMIN"]), "SYS_ADMIN"),
    ("capabilities not dropped", _set("containers.0.securityContext.capabilities.drop", ["NET_RAW"]),
     "drop must include ALL"),
    ("init container keeps capabilities", _delete("initContainers.0.securityContext.capabilities"),
     "initContainers[init]: securityContext.capabilities.drop"),
    ("hostPath volume", lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
    ("nfs volume", lambda s: s["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}}), "nfs"),
    ("host port", _set("containers.0.ports", [{"containerPort": 80, "hostPort": 80}]), "hostPort 80"),
    ("apparmor unconfined", _set("containers.0.securityContext.appArmorProfile", {"type": "Unconfined"}),
     "appArmorProfile"),
    ("selinux type", _set("securityContext.seLinuxOptions", {"type": "spc_t"}), "spc_t"),
    ("selinux user", _set("containers.0.securityContext.seLinuxOptions", {"user": "root"}), "seLinuxOptions.user"),
    ("proc mount", _set("containers.0.securityContext.procMount", "Unmasked"), "procMount"),
    ("seccomp unconfined in pod", _set("securityContext.seccompProfile", {"type": "Unconfined"}), "Unconfined"),
    ("seccomp unconfined in container", _set("containers.0.securityContext.seccompProfile", {"type": "Unconfined"}),
     "containers[app]: securityContext.seccompProfile"),
    ("no seccomp at all", _delete("securityContext.seccompProfile"), "seccompProfile.type must be set"),
    ("unsafe sysctl", _set("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}]), "kernel.msgmax"),
    ("privilege escalation allowed", _set("containers.0.securityContext.allowPrivilegeEscalation", True),
     "allowPrivilegeEscalation"),
    ("privilege escalation unset", _delete("containers.0.securityContext.allowPrivilegeEscalation"),
     "allowPrivilegeEscalation"),
    ("runAsNonRoot missing", _delete("securityContext.runAsNonRoot"), "runAsNonRoot must be true"),
    ("runAsNonRoot false in container", _set("containers.0.securityContext.runAsNonRoot", False),
     "runAsNonRoot must be true"),
    ("root user in pod", _set("securityContext.runAsUser", 0), "runAsUser must not be 0"),
    ("root user in container", _set("containers.0.securityContext.runAsUser", 0), "runAsUser must not be 0"),
    ("writable root filesystem", _delete("containers.0.securityContext.readOnlyRootFilesystem"),
     "readOnlyRootFilesystem"),
]


def test_a_restricted_pod_spec_passes() -> None:
    assert violations(GOOD_POD_SPEC) == []


@pytest.mark.parametrize(("mutation", "fragment"), [(m, f) for _, m, f in BROKEN], ids=[n for n, _, _ in BROKEN])
def test_each_violation_is_caught(mutation: Callable[[dict], None], fragment: str) -> None:
    spec = copy.deepcopy(GOOD_POD_SPEC)
    mutation(spec)
    found = violations(spec)
    assert any(fragment in message for message in found), found


def test_the_read_only_root_rule_is_ours_and_can_be_left_out() -> None:
    spec = copy.deepcopy(GOOD_POD_SPEC)
    del _app(spec)["securityContext"]["readOnlyRootFilesystem"]
    assert violations(spec, require_read_only_root=False) == []


def test_pod_spec_of_finds_the_template_in_each_workload_kind() -> None:
    template = {"spec": {"template": {"spec": GOOD_POD_SPEC}}}
    assert pod_spec_of({"kind": "Deployment", **template}) is GOOD_POD_SPEC
    assert pod_spec_of({"kind": "Job", **template}) is GOOD_POD_SPEC
    assert pod_spec_of({"kind": "Pod", "spec": GOOD_POD_SPEC}) is GOOD_POD_SPEC
    assert pod_spec_of({"kind": "CronJob", "spec": {"jobTemplate": template}}) is GOOD_POD_SPEC
    with pytest.raises(ValueError, match="ConfigMap"):
        pod_spec_of({"kind": "ConfigMap"})


# --- the pod templates in manifests/ -----------------------------------------------------

def _kubectl() -> str:
    beside = Path(sys.executable).with_name("kubectl")
    return str(beside) if beside.is_file() else "kubectl"


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    result = subprocess.run([_kubectl(), "kustomize", str(ROOT / "manifests")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _find(objects: list[dict], kind: str, name: str) -> dict:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


WORKLOADS = [("Deployment", "mlops-operator"), ("StatefulSet", "mlops-minio"), ("Job", "mlops-bucket-init")]


@pytest.mark.parametrize(("kind", "name"), WORKLOADS)
def test_shipped_workload_is_restricted(rendered: list[dict], kind: str, name: str) -> None:
    assert violations(pod_spec_of(_find(rendered, kind, name))) == []


def test_every_pod_template_in_the_manifests_is_checked(rendered: list[dict]) -> None:
    templated = {(o["kind"], o["metadata"]["name"]) for o in rendered
                 if o["kind"] in {"Pod", "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet"}}
    assert templated == set(WORKLOADS)


@pytest.mark.parametrize(("kind", "name"), [("StatefulSet", "mlops-minio"), ("Job", "mlops-bucket-init")])
def test_pods_that_do_not_talk_to_the_api_get_no_token(rendered: list[dict], kind: str, name: str) -> None:
    assert pod_spec_of(_find(rendered, kind, name))["automountServiceAccountToken"] is False


def test_the_operator_gets_its_own_service_account_token(rendered: list[dict]) -> None:
    spec = pod_spec_of(_find(rendered, "Deployment", "mlops-operator"))
    assert spec["serviceAccountName"] == "mlops-operator"
    assert spec["automountServiceAccountToken"] is True


@pytest.mark.parametrize(("kind", "name"), WORKLOADS)
def test_writable_paths_are_empty_dirs_or_claims(rendered: list[dict], kind: str, name: str) -> None:
    obj = _find(rendered, kind, name)
    spec = pod_spec_of(obj)
    writable = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    writable |= {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
    for container in spec["containers"]:
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert mounts.get("/tmp") in writable, f"{name}: /tmp must be an emptyDir"
        assert set(mounts.values()) <= writable


def test_the_system_namespace_enforces_restricted(rendered: list[dict]) -> None:
    labels = _find(rendered, "Namespace", "mlops-system")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


# --- the pod templates the reconcilers generate ------------------------------------------

def test_the_trainer_job_of_a_training_run_is_restricted() -> None:
    from mlops_operator.api.training_run import TrainingRun
    from mlops_operator.reconcile.common import Settings
    from mlops_operator.reconcile.training_run import desired_job

    run = TrainingRun.model_validate({
        "apiVersion": "mlops.seed.io/v1alpha1", "kind": "TrainingRun",
        "metadata": {"name": "iris-t001", "namespace": "default"},
        "spec": {"model": "iris", "dataset": {"uri": "sklearn://iris"},
                 "estimator": "sklearn.linear_model.LogisticRegression",
                 "resources": {"requests": {"cpu": "100m"}}},
    })
    spec = pod_spec_of(desired_job(run, Settings(s3_endpoint="http://mlops-minio.mlops-system.svc:9000")))
    assert violations(spec) == []
    assert spec["automountServiceAccountToken"] is False


def test_the_model_server_and_router_deployments_are_restricted() -> None:
    from _inference_world import inference_service, model_version

    from mlops_operator.api.inference_service import InferenceService
    from mlops_operator.api.model_version import ModelVersion
    from mlops_operator.reconcile import inference_service as logic
    from mlops_operator.reconcile.common import Settings

    service = InferenceService.model_validate(inference_service())
    version = ModelVersion.model_validate(model_version(1))
    deployments = [
        logic.desired_server_deployment(service, version, role, Settings(s3_endpoint="http://s3:9000"))
        for role in ("champion", "challenger")
    ] + [logic.desired_router_deployment(service)]
    for deployment in deployments:
        spec = pod_spec_of(deployment)
        assert violations(spec) == [], deployment["metadata"]["name"]
        assert spec["automountServiceAccountToken"] is False
        # what the PodMonitor scrapes (docs/contracts.md, "The cluster path")
        assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in spec["containers"][0]["ports"]
