"""A Deployment counts as rolled out with `kubectl rollout status` semantics, and the
InferenceService reconciler promotes only once the champion Deployment has rolled out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from _inference_world import inference_service, model_version

from mlops_operator.api.inference_service import InferenceService
from mlops_operator.api.model_version import ModelVersion
from mlops_operator.reconcile import inference_service as logic

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def deployment(desired: int = 1, generation: int = 2, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "iris-champion", "generation": generation},
        "spec": {"replicas": desired,
                 "template": {"metadata": {"labels": {logic.MODEL_VERSION_LABEL: "iris-v2"}}}},
        "status": status,
    }


def test_one_ready_old_pod_and_one_unready_new_pod_is_not_rolled_out() -> None:
    # The surge of a one-replica RollingUpdate (maxUnavailable 0, maxSurge 1): the old pod
    # still serves, the new one is loading its model.
    mixed = deployment(observedGeneration=2, replicas=2, updatedReplicas=1, readyReplicas=1, availableReplicas=1)
    assert logic.rollout_pending(mixed) == "1 old replicas are pending termination"
    assert logic.deployment_state(mixed) == logic.DeploymentState(version="iris-v2", ready=False, available=True)


def test_new_pods_ready_while_old_ones_terminate_is_not_rolled_out() -> None:
    both_ready = deployment(observedGeneration=2, replicas=2, updatedReplicas=1, readyReplicas=2,
                            availableReplicas=2)
    assert logic.rollout_pending(both_ready) is not None


def test_only_new_ready_pods_is_rolled_out() -> None:
    done = deployment(observedGeneration=2, replicas=1, updatedReplicas=1, readyReplicas=1, availableReplicas=1)
    assert logic.rollout_pending(done) is None
    assert logic.deployment_state(done) == logic.DeploymentState(version="iris-v2", ready=True, available=True)


@pytest.mark.parametrize(("status", "why"), [
    ({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
     "waiting for the Deployment spec update to be observed"),
    ({}, "waiting for the Deployment spec update to be observed"),
    ({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 0, "availableReplicas": 1},
     "0 of 1 new replicas have been updated"),
    ({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1},
     "0 of 1 updated replicas are available"),
])
def test_what_a_deployment_waits_for(status: dict[str, Any], why: str) -> None:
    assert logic.rollout_pending(deployment(**status)) == why


def test_a_deployment_scaled_to_zero_has_rolled_out() -> None:
    assert logic.rollout_pending(deployment(desired=0, observedGeneration=2)) is None


def test_without_a_generation_the_status_counts_as_current() -> None:
    # An emulator that stamps no generation: 0 <= 0, as the API's Go types compare.
    body = deployment(replicas=1, updatedReplicas=1, availableReplicas=1)
    del body["metadata"]["generation"]
    assert logic.rollout_pending(body) is None


# ---------------------------------------------------------------- promotion ordering


def promoting(champion: logic.DeploymentState) -> logic.Plan:
    raw = inference_service(challenger={"policy": "latestValidated"})
    raw["status"] = {"champion": "iris-v1", "challenger": "iris-v2", "rolloutStage": "Promoting",
                     "currentStep": 3, "stageStartedTime": "2026-01-01T11:59:00.000Z",
                     "lastAppliedHash": None}
    isvc = InferenceService.model_validate(raw)
    isvc = isvc.model_copy(update={"status": isvc.status.model_copy(
        update={"last_applied_hash": logic.spec_hash(isvc.spec.champion.dump())})})
    versions = tuple(ModelVersion.model_validate(model_version(v)) for v in (1, 2))
    ready = logic.DeploymentState(version="iris-v2", ready=True)
    observed = logic.Observed(model_versions=versions, champion=champion, challenger=ready,
                              router=logic.DeploymentState(version=None, ready=True))
    return logic.reconcile(isvc, observed, NOW)


def test_promoting_holds_until_the_champion_deployment_has_rolled_out() -> None:
    mixed = deployment(observedGeneration=2, replicas=2, updatedReplicas=1, readyReplicas=1, availableReplicas=1)
    plan = promoting(logic.deployment_state(mixed))
    assert plan.status["rolloutStage"] == "Promoting"
    # Not Promoted while old pods may answer; the router keeps all traffic on the winner.
    assert plan.status["phase"] == "Progressing"
    conditions = {c["type"]: c for c in plan.status["conditions"]}
    assert (conditions["Progressing"]["status"], conditions["Progressing"]["reason"]) == ("True", "Promoting")
    # A rolling update is not an outage: the old pod answers until the new one is ready.
    assert conditions["Available"]["status"] == conditions["Ready"]["status"] == "True"
    [config] = [c for c in plan.children if c["kind"] == "ConfigMap"]
    assert '"weight":100' in config["data"]["router.json"] and "iris-challenger" in config["data"]["router.json"]
    [champion] = [c for c in plan.children if c["kind"] == "Deployment" and c["metadata"]["name"] == "iris-champion"]
    assert champion["spec"]["template"]["metadata"]["labels"][logic.MODEL_VERSION_LABEL] == "iris-v2"


def test_the_promotion_is_recorded_once_the_champion_deployment_has_rolled_out() -> None:
    done = deployment(observedGeneration=2, replicas=1, updatedReplicas=1, readyReplicas=1, availableReplicas=1)
    plan = promoting(logic.deployment_state(done))
    assert (plan.status["rolloutStage"], plan.status["phase"], plan.status["champion"]) == \
        ("Finalizing", "Promoted", "iris-v2")
    # Only now does the router go back to the champion Service, which serves the winner only.
    [config] = [c for c in plan.children if c["kind"] == "ConfigMap"]
    assert '"challenger":null' in config["data"]["router.json"]
