"""checkov's Kubernetes checks on what a cluster runs: `kubectl kustomize manifests/` and the
objects the operator creates for the example InferenceService (and a trainer Job of the
example Experiment). Every failure must be one of the justified ones below, each explained
in docs/cluster.md ("checkov"); a justification nobody needs any more fails too.

checkov cannot share the project's virtualenv (it pins packaging<24 and boto3, which pytest 9
and kubernetes 37 cannot use), so it runs from its own: `.venv-checkov/` (made by .ci/run),
`$MLOPS_CHECKOV`, or `checkov` on PATH. It runs with `--skip-download`: no network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from test_manifests import render

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_DOC = ROOT / "docs" / "cluster.md"

NS = "team-a"  # the children's namespace (a user's; checkov flags `default` itself)
SHIPPED = ("Deployment.mlops-system.mlops-operator", "StatefulSet.mlops-system.mlops-minio",
           "Job.mlops-system.mlops-bucket-init")
SERVERS = (f"Deployment.{NS}.iris-champion", f"Deployment.{NS}.iris-challenger")
ROUTER = f"Deployment.{NS}.iris-router"
TRAINER = f"Job.{NS}.iris-t001-trainer"
TRAINER_POD = f"Pod.{NS}.iris-t001-trainer."  # checkov names a Job's pod by its labels after this

# (check id, resource or resource prefix ending in '.') -> why the failure is kept; each id is
# explained in docs/cluster.md, "checkov".
JUSTIFIED: dict[tuple[str, str], str] = {
    **{("CKV_K8S_43", r): "image by tag, not digest" for r in (*SHIPPED, *SERVERS, ROUTER, TRAINER)},
    **{("CKV_K8S_15", r): "imagePullPolicy IfNotPresent" for r in (*SHIPPED, *SERVERS, ROUTER, TRAINER)},
    **{("CKV_K8S_35", r): "S3 credentials as environment variables"
       for r in (*SHIPPED[1:], *SERVERS, TRAINER)},
    **{("CKV_K8S_11", r): "no CPU limit: spec.resources is the user's" for r in (*SERVERS, ROUTER, TRAINER)},
    ("CKV_K8S_38", SHIPPED[0]): "the operator talks to the API server",
    ("CKV2_K8S_6", TRAINER_POD): "trainer pods listen on no port; no per-run NetworkPolicy",
}


def justification(failure: tuple[str, str]) -> tuple[str, str] | None:
    check, resource = failure
    for key in JUSTIFIED:
        if key[0] == check and (resource == key[1] or key[1].endswith(".") and resource.startswith(key[1])):
            return key
    return None


def checkov() -> str | None:
    for candidate in (os.environ.get("MLOPS_CHECKOV"), str(ROOT / ".venv-checkov" / "bin" / "checkov"),
                      shutil.which("checkov")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def operator_children() -> list[dict[str, Any]]:
    """What the operator creates for examples/iris: the InferenceService's children while a
    challenger rolls out, and the trainer Job of the Experiment's first trial."""
    from _inference_world import model_version

    from mlops_operator.api.experiment import Experiment
    from mlops_operator.api.inference_service import InferenceService
    from mlops_operator.api.model_version import ModelVersion
    from mlops_operator.api.training_run import TrainingRun
    from mlops_operator.reconcile import experiment as trials
    from mlops_operator.reconcile import inference_service as serving
    from mlops_operator.reconcile.common import Settings
    from mlops_operator.reconcile.training_run import desired_job

    settings = Settings(s3_endpoint="http://mlops-minio.mlops-system.svc:9000")
    (doc,) = [d for d in yaml.safe_load_all((ROOT / "examples/iris/inferenceservice.yaml").read_text()) if d]
    service = InferenceService.model_validate({**doc, "metadata": {**doc["metadata"], "namespace": NS}})
    versions = [ModelVersion.model_validate(model_version(n, namespace=NS)) for n in (1, 2)]
    observed = serving.Observed(model_versions=tuple(versions), settings=settings, router_admin_token="token")
    plan = serving.reconcile(service, observed, datetime(2026, 1, 1, tzinfo=UTC))
    children = list(plan.children)
    children += [serving.desired_server_deployment(service, versions[1], serving.CHALLENGER, settings),
                 serving.desired_service(service, serving.challenger_name("iris"), serving.CHALLENGER)]
    (exp_doc,) = [d for d in yaml.safe_load_all((ROOT / "examples/iris/experiment.yaml").read_text()) if d]
    experiment = Experiment.model_validate({**exp_doc, "metadata": {**exp_doc["metadata"], "namespace": NS}})
    trial = trials.desired_trial(experiment, 1, {})
    trial["metadata"]["namespace"] = NS
    return [*children, desired_job(TrainingRun.model_validate(trial), settings)]


def run_checkov(tmp_path: Path, objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    binary = checkov()
    if binary is None:
        message = "checkov is missing: python3 -m venv .venv-checkov && .venv-checkov/bin/pip install checkov"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    result = subprocess.run([binary, "-f", str(path), "--framework", "kubernetes", "--quiet", "--compact",
                             "--skip-download", "-o", "json"], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads(result.stdout)
    return report if isinstance(report, dict) else report[0]


def failures(report: dict[str, Any]) -> set[tuple[str, str]]:
    return {(check["check_id"], check["resource"]) for check in report["results"]["failed_checks"]}


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("checkov")
    return {"manifests": run_checkov(tmp, render(ROOT / "manifests"), "manifests"),
            "children": run_checkov(tmp, operator_children(), "children")}


@pytest.mark.parametrize("which", ["manifests", "children"])
def test_every_checkov_failure_is_justified(reports: dict[str, dict[str, Any]], which: str) -> None:
    report = reports[which]
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 100, report["summary"]
    unexplained = sorted(f for f in failures(report) if justification(f) is None)
    assert not unexplained, f"checkov fails on {which} without a justification in docs/cluster.md: {unexplained}"


def test_no_justification_is_stale_and_each_is_documented(reports: dict[str, dict[str, Any]]) -> None:
    failed = failures(reports["manifests"]) | failures(reports["children"])
    used = {justification(f) for f in failed}
    assert not set(JUSTIFIED) - used, f"justified but passing now: {sorted(set(JUSTIFIED) - used)}"
    doc = CLUSTER_DOC.read_text()
    for check_id in {check for check, _ in JUSTIFIED}:
        assert check_id in doc, f"{check_id} is kept but docs/cluster.md does not say why"


def test_the_network_policy_and_probe_checks_pass(reports: dict[str, dict[str, Any]]) -> None:
    """What issue 18 found failing and this change fixed stays fixed: every shipped and
    serving pod has a NetworkPolicy, readiness and liveness probes."""
    failed = {(check, resource) for check, resource in failures(reports["manifests"]) | failures(reports["children"])
              if not resource.startswith(TRAINER_POD)}
    assert not {c for c, _ in failed} & {"CKV2_K8S_6", "CKV_K8S_8", "CKV_K8S_9"}, failed
