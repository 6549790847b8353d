"""Issue 18, the operator's side: images from an allow-list, refused before any Pod exists;
the router's admin token Secret; the NetworkPolicies of an InferenceService."""

from __future__ import annotations

from typing import Any

import pytest
from _inference_world import NS as ISVC_NS
from _inference_world import inference_service, model_version
from _training_world import API, NS, SETTINGS, World, experiment_manifest

from mlops_operator.api.inference_service import InferenceService
from mlops_operator.controllers import inference_service as isvc_controller
from mlops_operator.controllers import settings_from_env
from mlops_operator.reconcile import inference_service as logic
from mlops_operator.reconcile.common import DEFAULT_ALLOWED_IMAGES, Settings, image_allowed, image_problem

EVIL = "docker.io/attacker/miner:latest"


# --------------------------------------------------------------------------- the allow-list


@pytest.mark.parametrize("image,entry,allowed", [
    ("mlops-runtime:0.1.0", "mlops-runtime", True),
    ("mlops-runtime@sha256:" + "a" * 64, "mlops-runtime", True),
    ("mlops-runtime-evil:0.1.0", "mlops-runtime", False),
    ("mlops-runtime", "mlops-runtime", False),  # no tag: whatever :latest is today
    ("ghcr.io/seed/mlops-runtime:1.2", "ghcr.io/seed/", True),
    ("ghcr.io/seedy/mlops-runtime:1.2", "ghcr.io/seed/", False),
    ("ghcr.io/seed/../evil/x:1", "ghcr.io/seed/", False),
    ("ghcr.io/seed/mlops-runtime:1.2", "ghcr.io/seed/mlops-runtime:1.2", True),
    ("ghcr.io/seed/mlops-runtime:1.3", "ghcr.io/seed/mlops-runtime:1.2", False),
])
def test_an_image_matches_an_entry_by_registry_path_repository_or_exactly(image, entry, allowed):
    assert image_allowed(image, entry) is allowed


def test_the_default_allows_the_project_runtime_and_nothing_else():
    assert Settings().allowed_images == DEFAULT_ALLOWED_IMAGES
    assert image_problem("mlops-runtime:0.1.0", DEFAULT_ALLOWED_IMAGES) is None
    assert image_problem("docker.io/library/mlops-runtime:0.2.0", DEFAULT_ALLOWED_IMAGES) is None
    problem = image_problem(EVIL, DEFAULT_ALLOWED_IMAGES)
    assert problem.startswith("spec.image:") and EVIL in problem and "MLOPS_ALLOWED_IMAGES" in problem


def test_the_operator_setting_comes_from_its_environment():
    settings = settings_from_env({"MLOPS_ALLOWED_IMAGES": "ghcr.io/seed/, registry.local/ml/runtime:2",
                                  "MLOPS_PROMETHEUS_NAMESPACE": "observability", "POD_NAMESPACE": "ops"})
    assert settings.allowed_images == ("ghcr.io/seed/", "registry.local/ml/runtime:2")
    assert (settings.prometheus_namespace, settings.operator_namespace) == ("observability", "ops")
    assert settings_from_env({}).allowed_images == DEFAULT_ALLOWED_IMAGES


def training_run(name: str, image: str) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "TrainingRun", "metadata": {"name": name, "namespace": NS},
            "spec": {"model": "iris", "dataset": {"uri": "sklearn://iris"},
                     "estimator": "sklearn.linear_model.LogisticRegression", "image": image}}


def refusal(obj: dict[str, Any]) -> tuple[str, str, str]:
    (ready,) = [c for c in obj["status"]["conditions"] if c["type"] == "Ready"]
    return ready["status"], ready["reason"], ready["message"]


def test_a_training_run_with_a_foreign_image_never_gets_a_job():
    world = World()
    world.create(training_run("evil", EVIL))
    world.create(training_run("good", "mlops-runtime:0.1.0"))
    for _ in range(3):
        world.sync_all()
        world.tick()
    jobs = [j["metadata"]["labels"]["mlops.seed.io/trainingrun"] for j in world.objects("Job")]
    assert jobs == ["good"], "the allowed image runs, the foreign one does not"
    status, reason, message = refusal(world.get("TrainingRun", "evil"))
    assert (status, reason) == ("False", "InvalidSpec") and "spec.image" in message and EVIL in message
    assert [e["type"] for e in world.events(reason="InvalidSpec", name="evil")] == ["Warning"]
    assert not world.objects("Pod")


def test_an_experiment_with_a_foreign_image_starts_no_trial():
    world = World()
    world.create(experiment_manifest(image=EVIL))
    for _ in range(3):
        world.sync_all()
        world.tick()
    assert world.objects("TrainingRun") == [] and world.objects("Job") == []
    status, reason, message = refusal(world.get("Experiment", "iris"))
    assert (status, reason) == ("False", "InvalidSpec") and "spec.image" in message
    assert world.events(reason="InvalidSpec", name="iris")


def test_an_inference_service_with_a_foreign_image_gets_no_deployment():
    world = World()  # its in-memory cluster; the service lives in the inference world's namespace
    cluster = world.cluster
    doc = model_version(1)
    status = doc.pop("status")
    cluster.create(doc)
    cluster.patch_status(API, "ModelVersion", ISVC_NS, doc["metadata"]["name"], status)
    manifest = inference_service(champion={"policy": "bestValidated"})
    manifest["spec"]["image"] = EVIL
    cluster.create(manifest)
    obj = cluster.get(API, "InferenceService", ISVC_NS, "iris")
    isvc_controller.sync(cluster, obj, world.clock, metrics_reader=object(), settings=SETTINGS)
    assert cluster.list("apps/v1", "Deployment", ISVC_NS) == []
    assert cluster.list("v1", "Secret", ISVC_NS) == []
    status_, reason, message = refusal(cluster.get(API, "InferenceService", ISVC_NS, "iris"))
    assert (status_, reason) == ("False", "InvalidSpec") and EVIL in message


# --------------------------------------------------------------------------- children


def isvc(name: str = "iris") -> InferenceService:
    return InferenceService.model_validate({"apiVersion": API, "kind": "InferenceService",
                                            "metadata": {"name": name, "namespace": NS}, "spec": {"model": "iris"}})


def test_the_admin_token_round_trips_through_its_secret():
    secret = logic.desired_router_admin_secret(isvc(), "s3cr3t-token")
    assert secret["metadata"]["name"] == "iris-router-admin" and secret["type"] == "Opaque"
    assert logic.token_of_router_admin_secret(secret) == "s3cr3t-token"
    assert logic.token_of_router_admin_secret(None) is None
    assert logic.token_of_router_admin_secret({"data": {"token": "!!not base64"}}) is None


def test_the_controller_makes_the_token_once_and_keeps_it():
    world = World()
    cluster = world.cluster
    doc = model_version(1)
    status = doc.pop("status")
    cluster.create(doc)
    cluster.patch_status(API, "ModelVersion", ISVC_NS, doc["metadata"]["name"], status)
    cluster.create(inference_service(champion={"policy": "bestValidated"}))
    tokens = []
    for _ in range(3):
        obj = cluster.get(API, "InferenceService", ISVC_NS, "iris")
        isvc_controller.sync(cluster, obj, world.clock, metrics_reader=object(), settings=SETTINGS)
        secret = cluster.get("v1", "Secret", ISVC_NS, "iris-router-admin")
        tokens.append(logic.token_of_router_admin_secret(secret))
    assert tokens[0] and len(tokens[0]) >= 32 and tokens == [tokens[0]] * 3
    router = cluster.get("apps/v1", "Deployment", ISVC_NS, "iris-router")
    volumes = {v["name"]: v for v in router["spec"]["template"]["spec"]["volumes"]}
    assert volumes["router-admin"]["secret"]["secretName"] == "iris-router-admin"
    # A deleted Secret is made anew (with a new token: the old one is gone with it).
    cluster.delete("v1", "Secret", ISVC_NS, "iris-router-admin")
    obj = cluster.get(API, "InferenceService", ISVC_NS, "iris")
    isvc_controller.sync(cluster, obj, world.clock, metrics_reader=object(), settings=SETTINGS)
    again = logic.token_of_router_admin_secret(cluster.get("v1", "Secret", ISVC_NS, "iris-router-admin"))
    assert again and again != tokens[0]


def test_network_policies_let_only_the_router_prometheus_and_operator_reach_the_servers():
    settings = Settings(prometheus_namespace="monitoring", operator_namespace="mlops-system")
    servers, router = logic.desired_network_policies(isvc(), settings)
    assert servers == {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "iris-servers", "namespace": NS, "labels": servers["metadata"]["labels"]},
        "spec": {
            "podSelector": {"matchLabels": {"mlops.seed.io/inferenceservice": "iris"},
                            "matchExpressions": [{"key": "mlops.seed.io/role", "operator": "In",
                                                  "values": ["champion", "challenger"]}]},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [
                {"podSelector": {"matchLabels": {"mlops.seed.io/inferenceservice": "iris",
                                                 "mlops.seed.io/role": "router"}}},
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mlops-system"}},
                 "podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlops-operator"}}},
            ], "ports": [{"protocol": "TCP", "port": 8080}]}],
        },
    }
    assert router["metadata"]["name"] == "iris-router"
    assert router["spec"] == {"podSelector": {"matchLabels": {"mlops.seed.io/inferenceservice": "iris",
                                                              "mlops.seed.io/role": "router"}},
                              "policyTypes": ["Ingress"], "ingress": [{"ports": [{"protocol": "TCP", "port": 8080}]}]}


def test_the_policies_select_the_pods_the_deployments_make():
    """The selectors match the labels of the real pod templates, and nothing else: a
    policy that selects no pod protects nothing."""
    from mlops_operator.local.podspec import labels_match

    service = isvc()
    settings = Settings()
    servers, router = logic.desired_network_policies(service, settings)
    mv = _model_version_object()
    champion = logic.desired_server_deployment(service, mv, logic.CHAMPION, settings)
    challenger = logic.desired_server_deployment(service, mv, logic.CHALLENGER, settings)
    router_deployment = logic.desired_router_deployment(service)

    def labels(deployment: dict[str, Any]) -> dict[str, str]:
        return deployment["spec"]["template"]["metadata"]["labels"]

    assert labels_match(servers["spec"]["podSelector"], labels(champion))
    assert labels_match(servers["spec"]["podSelector"], labels(challenger))
    assert not labels_match(servers["spec"]["podSelector"], labels(router_deployment))
    assert labels_match(router["spec"]["podSelector"], labels(router_deployment))
    assert labels_match(servers["spec"]["ingress"][0]["from"][0]["podSelector"], labels(router_deployment))
    assert not labels_match(servers["spec"]["ingress"][0]["from"][0]["podSelector"], labels(champion))
    other = logic.desired_router_deployment(isvc("other"))
    assert not labels_match(servers["spec"]["ingress"][0]["from"][0]["podSelector"], labels(other))


def _model_version_object():
    from mlops_operator.api.model_version import ModelVersion

    doc = model_version(1)
    doc["metadata"]["namespace"] = NS
    return ModelVersion.model_validate(doc)


def test_policies_are_applied_when_missing_or_changed_and_only_then():
    desired = logic.desired_network_policies(isvc(), Settings())
    assert logic.network_policies_to_apply(desired, None) == desired  # not observed: apply all
    assert logic.network_policies_to_apply(desired, {}) == desired
    current = {p["metadata"]["name"]: p["spec"] for p in desired}
    assert logic.network_policies_to_apply(desired, current) == []
    edited = {**current, "iris-servers": {**current["iris-servers"], "ingress": [{}]}}  # someone opened it up
    assert [p["metadata"]["name"] for p in logic.network_policies_to_apply(desired, edited)] == ["iris-servers"]
