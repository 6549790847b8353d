"""The pure InferenceService reconciler: children built to the runtime's contract, version
resolution, and the status it writes."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from _inference_world import NS, inference_service, model_version, sha
from podsecurity import violations

from mlops_operator.api.inference_service import InferenceService, InferenceServiceStatus
from mlops_operator.api.model_version import ModelVersion
from mlops_operator.reconcile import inference_service as logic
from mlops_operator.reconcile.common import Settings

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
READY = logic.DeploymentState(version=None, ready=True)


def isvc(**kw) -> InferenceService:
    return InferenceService.model_validate(inference_service(**kw))


def mvs(*docs) -> tuple[ModelVersion, ...]:
    return tuple(ModelVersion.model_validate(d) for d in docs)


def by_name(plan, kind: str) -> dict[str, dict]:
    return {c["metadata"]["name"]: c for c in plan.children if c["kind"] == kind}


def condition(plan, type_: str) -> dict:
    return next(c for c in plan.status["conditions"] if c["type"] == type_)


def test_champion_deployment_follows_the_serving_contract():
    svc = isvc(champion={"modelVersion": "iris-v1"})
    mv = mvs(model_version(1))[0]
    deployment = logic.desired_server_deployment(svc, mv, "champion", Settings(s3_endpoint="http://minio:9000"))
    labels = {
        "app.kubernetes.io/managed-by": "mlops-operator",
        "app.kubernetes.io/part-of": "mlops",
        "app.kubernetes.io/component": "champion",
        "mlops.seed.io/inferenceservice": "iris",
        "mlops.seed.io/model": "iris",
        "mlops.seed.io/role": "champion",
        "mlops.seed.io/modelversion": "iris-v1",
    }
    prefix = "s3://mlops/ml/iris/iris-t001/"
    assert deployment == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "iris-champion", "namespace": NS, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"mlops.seed.io/inferenceservice": "iris", "mlops.seed.io/role": "champion"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels, "annotations": {"prometheus.io/scrape": "true",
                                                               "prometheus.io/port": "8080",
                                                               "prometheus.io/path": "/metrics"}},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                        "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "server",
                        "image": "mlops-runtime:0.1.0",
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["python", "-m"],
                        "args": ["mlops_runtime.serve", "--model-uri", prefix + "model.skops",
                                 "--sha256", sha("iris-v1"), "--drift-interval", "60", "--drift-window", "1000",
                                 "--workers", "1", "--max-batch-rows", "256", "--port", "8080", "--name", "iris",
                                 "--version", "iris-v1", "--role", "champion"],
                        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                        "env": [
                            {"name": "AWS_ENDPOINT_URL", "value": "http://minio:9000"},
                            {"name": "AWS_ACCESS_KEY_ID",
                             "valueFrom": {"secretKeyRef": {"name": "mlops-s3", "key": "AWS_ACCESS_KEY_ID"}}},
                            {"name": "AWS_SECRET_ACCESS_KEY",
                             "valueFrom": {"secretKeyRef": {"name": "mlops-s3", "key": "AWS_SECRET_ACCESS_KEY"}}},
                            {"name": "HOME", "value": "/tmp"},
                            {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
                        ],
                        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"},
                                           "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 3},
                        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"},
                                          "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 6},
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
                                            "seccompProfile": {"type": "RuntimeDefault"}},
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    }],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def test_onnx_is_served_only_when_the_version_says_so():
    svc = isvc()
    onnx_mv, skops_mv = mvs(model_version(2, onnx=True), model_version(1))
    onnx_args = logic.serve_args(svc, onnx_mv, "challenger")
    assert onnx_args[onnx_args.index("--onnx-uri") + 1] == "s3://mlops/ml/iris/iris-t002/model.onnx"
    assert onnx_args[onnx_args.index("--onnx-sha256") + 1] == sha("iris-v2onnx")
    assert onnx_args[-2:] == ["--role", "challenger"]
    assert "--onnx-uri" not in logic.serve_args(svc, skops_mv, "champion")


def plan_for(svc_doc, *versions, **observed):
    observed.setdefault("champion", READY)
    observed.setdefault("router", READY)
    return logic.reconcile(InferenceService.model_validate(svc_doc), logic.Observed(model_versions=mvs(*versions),
                                                                                    **observed), NOW)


def test_every_pod_is_restricted_and_the_router_reads_its_weights_from_the_config_map():
    plan = plan_for(inference_service(champion={"modelVersion": "iris-v1"}, challenger={"policy": "latestValidated"}),
                    model_version(1), model_version(2))
    deployments = by_name(plan, "Deployment")
    assert set(deployments) == {"iris-champion", "iris-challenger", "iris-router"}
    for deployment in deployments.values():
        assert violations(deployment["spec"]["template"]["spec"]) == []
    router = deployments["iris-router"]["spec"]["template"]["spec"]
    assert router["containers"][0]["args"] == [
        "mlops_runtime.router", "--port", "8080", "--champion", "http://iris-champion.ml.svc:8080",
        "--upstream", "http://iris-challenger.ml.svc:8080", "--config-file", "/etc/mlops/router/router.json",
        "--admin-token-file", "/etc/mlops/router-admin/token", "--name", "iris"]
    assert {"name": "router-config", "configMap": {"name": "iris-router-config"}} in router["volumes"]
    assert {"name": "router-config", "mountPath": "/etc/mlops/router", "readOnly": True} in \
        router["containers"][0]["volumeMounts"]
    assert "env" not in router["containers"][0] or all(
        e["name"] not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") for e in router["containers"][0]["env"])
    services = by_name(plan, "Service")
    assert services["iris"]["spec"]["selector"] == {"mlops.seed.io/inferenceservice": "iris",
                                                    "mlops.seed.io/role": "router"}
    assert services["iris-challenger"]["spec"]["selector"]["mlops.seed.io/role"] == "challenger"


def test_no_validated_version_leaves_the_service_pending_with_a_reason():
    plan = plan_for(inference_service(), model_version(1, phase="Pending"), champion=None, router=None)
    assert plan.status["phase"] == "Pending"
    assert plan.children == ()
    ready = condition(plan, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ModelVersionNotFound")
    assert "no Validated ModelVersion of model 'iris'" in ready["message"]
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "ModelVersionNotFound")]


def test_a_named_champion_that_is_not_validated_gets_its_reason():
    plan = plan_for(inference_service(champion={"modelVersion": "iris-v1"}), model_version(1, phase="Rejected"))
    ready = condition(plan, "Ready")
    assert ready["reason"] == "ModelVersionNotValidated" and "is Rejected, not Validated" in ready["message"]
    assert plan.status["phase"] == "Failed"


def test_best_validated_picks_the_best_objective_among_validated_versions():
    plan = plan_for(inference_service(champion={"policy": "bestValidated"}),
                    model_version(1, accuracy=0.91), model_version(2, accuracy=0.97),
                    model_version(3, accuracy=0.99, phase="Rejected"), model_version(4, accuracy=0.93))
    assert plan.status["champion"] == "iris-v2"
    assert plan.status["history"][0]["action"] == "Initial"
    assert by_name(plan, "Deployment")["iris-champion"]["metadata"]["labels"]["mlops.seed.io/modelversion"] == "iris-v2"


def test_stable_status_has_url_split_and_conditions():
    plan = plan_for(inference_service(), model_version(1))
    status = plan.status
    assert status["phase"] == "Stable"
    assert status["url"] == "http://iris.ml.svc:8080"
    assert status["split"] == "100/0" and status["traffic"] == {"champion": 100, "challenger": 0, "mode": "canary"}
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True", "Available": "True", "Progressing": "False"}
    config = json.loads(by_name(plan, "ConfigMap")["iris-router-config"]["data"]["router.json"])
    assert config == {"champion": "http://iris-champion.ml.svc:8080", "challenger": None, "weight": 0,
                      "mode": "canary"}
    assert ("apps/v1", "Deployment", "iris-challenger") in plan.deletions


def test_not_ready_deployments_make_the_service_unavailable():
    plan = plan_for(inference_service(), model_version(1), champion=logic.DeploymentState("iris-v1", False))
    assert condition(plan, "Available")["reason"] == "DeploymentsNotReady"
    assert condition(plan, "Ready")["status"] == "False"
    assert "champion Deployment" in condition(plan, "Ready")["message"]


def test_latest_validated_challenger_starts_a_rollout_by_itself():
    doc = inference_service(challenger={"policy": "latestValidated"})
    doc["status"] = InferenceServiceStatus(champion="iris-v1", last_applied_hash=None).dump()
    first = plan_for(doc, model_version(1))
    assert first.status["phase"] == "Stable" and "challenger" not in first.status
    plan = plan_for({**doc, "status": first.status}, model_version(1), model_version(2),
                    model_version(3, phase="Rejected"), model_version(4, phase="Pending"))
    assert plan.status["challenger"] == "iris-v2" and plan.status["rolloutStage"] == "Starting"
    assert plan.status["phase"] == "Progressing"
    assert [e.reason for e in plan.events] == ["RolloutStarted"]
    assert "latestValidated" in plan.events[0].message
    # Deployed, but no traffic until it is ready.
    assert "iris-challenger" in by_name(plan, "Deployment")
    assert json.loads(by_name(plan, "ConfigMap")["iris-router-config"]["data"]["router.json"])["challenger"] is None


def test_latest_validated_never_picks_a_rolled_back_version():
    doc = inference_service(champion={"modelVersion": "iris-v1"}, challenger={"policy": "latestValidated"})
    doc["status"] = {"champion": "iris-v1", "rolledBackVersions": ["iris-v3"]}
    plan = plan_for(doc, model_version(1), model_version(2), model_version(3))
    assert plan.status["challenger"] == "iris-v2"
    doc["status"] = {"champion": "iris-v1", "rolledBackVersions": ["iris-v2", "iris-v3"]}
    plan = plan_for(doc, model_version(1), model_version(2), model_version(3))
    assert "challenger" not in plan.status and plan.status["phase"] == "Stable"


def test_a_missing_named_challenger_is_reported_and_the_champion_keeps_serving():
    doc = inference_service(champion={"modelVersion": "iris-v1"}, challenger={"modelVersion": "iris-v9"})
    plan = plan_for(doc, model_version(1))
    assert plan.status["champion"] == "iris-v1" and plan.status["phase"] == "Stable"
    progressing = condition(plan, "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "ModelVersionNotFound")
    assert "'iris-v9'" in progressing["message"]
    assert condition(plan, "Ready")["status"] == "True"
    assert "iris-champion" in by_name(plan, "Deployment")
    assert [(e.type, e.reason) for e in plan.events] == [("Normal", "Stable"), ("Warning", "ModelVersionNotFound")]
    # The same problem again: no second Event.
    again = plan_for({**doc, "status": plan.status}, model_version(1))
    assert [e.reason for e in again.events] == []


def test_changing_spec_champion_switches_at_once_and_keeps_the_previous():
    doc = inference_service(champion={"modelVersion": "iris-v1"})
    plan = plan_for(doc, model_version(1), model_version(2))
    promoted = {**plan.status, "champion": "iris-v2", "previous": "iris-v1"}
    # The user rolls back to v1 by naming it: the promoted v2 must not come back by policy.
    doc = inference_service(champion={"modelVersion": "iris-v1"}, challenger={"policy": "latestValidated"})
    doc["status"] = {**promoted, "lastAppliedHash": "something-else"}
    plan = plan_for(doc, model_version(1), model_version(2))
    assert plan.status["champion"] == "iris-v1" and plan.status["previous"] == "iris-v2"
    assert plan.status["history"][-1]["action"] == "ManualRollback"
    assert plan.status["rolledBackVersions"] == ["iris-v2"]
    assert "challenger" not in plan.status


def test_reconciling_twice_is_idempotent():
    doc = inference_service(challenger={"policy": "latestValidated"})
    versions = (model_version(1), model_version(2))
    first = plan_for(doc, *versions)
    second = plan_for({**doc, "status": first.status}, *versions)
    assert second.children == first.children
    assert second.status == first.status or {k for k in second.status if second.status[k] != first.status[k]} <= {
        "stageStartedTime"}
    assert second.events == ()


@pytest.mark.parametrize("name", ["iris", "a" * 60])
def test_child_names_fit_in_a_dns_label(name):
    assert len(logic.challenger_name(name)) <= 63 and len(logic.router_config_name(name)) <= 63


@pytest.mark.parametrize("limits, workers", [
    (None, 1), ({}, 1), ({"memory": "1Gi"}, 1),
    ({"cpu": 1}, 1), ({"cpu": 2}, 2), ({"cpu": "500m"}, 1), ({"cpu": "1500m"}, 2),
    ({"cpu": "2"}, 2), ({"cpu": "2.5"}, 3), ({"cpu": "2000m"}, 2), ({"cpu": "100m"}, 1),
])
def test_model_server_workers_follow_the_cpu_limit(limits, workers):
    assert logic.serving_workers(limits) == workers


def test_the_deployment_runs_one_worker_per_core_of_its_cpu_limit():
    resources = {"limits": {"cpu": "1500m", "memory": "1Gi"}, "requests": {"cpu": "1"}}
    svc = isvc(resources=resources)
    (mv,) = mvs(model_version(1))
    args = logic.serve_args(svc, mv, "champion")
    assert args[args.index("--workers") + 1] == "2"
    no_limit = logic.serve_args(isvc(), mv, "champion")
    assert no_limit[no_limit.index("--workers") + 1] == "1"


def test_the_deployment_batches_as_the_spec_says():
    (mv,) = mvs(model_version(1))
    default = logic.serve_args(isvc(), mv, "champion")
    assert default[default.index("--max-batch-rows") + 1] == "256"
    off = logic.serve_args(isvc(batching={"maxBatchRows": 1}), mv, "champion")
    assert off[off.index("--max-batch-rows") + 1] == "1"
