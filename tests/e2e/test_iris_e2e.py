"""The iris example on a kind cluster: trained by Jobs, registered, validated, promoted to
champion, and answering predictions through its Service."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

# `Kube` (tests/e2e/conftest.py): kubectl pinned to the kind context; typed loosely here
# because conftest modules are not imported by name (tests/conftest.py shares the name).
Kube = Any
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "iris"
INVALID_EDIT = ("maxTrials: 6", "maxTrials: -1")
# Training six small trials and rolling out the winner; generous for a CI runner.
READY_TIMEOUT = "900s"
# Two textbook flowers: a setosa and a virginica.
SAMPLES = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


@contextmanager
def port_forward(kube: Kube, namespace: str, service: str, port: int) -> Iterator[int]:
    """`kubectl port-forward` to a free local port, stopped (by pid) on exit."""
    process = subprocess.Popen(
        [kube.kubectl, "--context", kube.context, "-n", namespace, "port-forward", f"svc/{service}", f":{port}",
         "--address", "127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # "Forwarding from 127.0.0.1:NNNNN -> 8080"
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert match, f"port-forward did not start: {line!r} {process.stderr.read() if process.poll() else ''}"
        yield int(match.group(1))
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_crds_are_served(deployed: Kube) -> None:
    for kind in ("experiment", "trainingrun", "modelversion", "inferenceservice"):
        assert "FIELDS:" in deployed.run("explain", f"{kind}.spec")
    deployed.run("get", "mlops", "--all-namespaces")


def test_the_api_server_rejects_an_invalid_experiment(deployed: Kube, namespace: str) -> None:
    """Schema validation in the CRD: the user sees the problem at `kubectl apply`."""
    bad = (EXAMPLE / "experiment.yaml").read_text().replace(*INVALID_EDIT)
    try:
        deployed.run("apply", "-n", namespace, "-f", "-", stdin=bad)
    except AssertionError as error:
        assert "maxTrials" in str(error)
    else:
        raise AssertionError("an Experiment with maxTrials: -1 was accepted")


def test_iris_reaches_a_promoted_champion_that_answers(deployed: Kube, namespace: str) -> None:
    deployed.run("apply", "-n", namespace, "-f", str(EXAMPLE))
    deployed.run("wait", "-n", namespace, "--for=condition=Ready", f"--timeout={READY_TIMEOUT}",
                 "experiment/iris", timeout=960)
    deployed.run("wait", "-n", namespace, "--for=condition=Ready", f"--timeout={READY_TIMEOUT}",
                 "inferenceservice/iris", timeout=960)

    service = deployed.get("-n", namespace, "inferenceservice/iris")
    champion = service["status"]["champion"]
    version = deployed.get("-n", namespace, f"modelversion/{champion}")
    assert version["status"]["phase"] == "Validated"
    runs = deployed.get("-n", namespace, "trainingruns", "-l", "mlops.seed.io/experiment=iris")["items"]
    assert any(run["status"].get("phase") == "Succeeded" for run in runs)

    url = urlsplit(service["status"]["url"])  # http://<service>.<namespace>.svc:<port>
    with port_forward(deployed, namespace, url.hostname.split(".")[0], url.port or 80) as local_port:
        response = httpx.post(f"http://127.0.0.1:{local_port}/predict", json={"instances": SAMPLES}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["predictions"]) == 2
    assert body["predictions"][0] != body["predictions"][1], "a setosa and a virginica got the same class"


def test_the_example_is_what_these_tests_expect() -> None:
    """Needs no cluster: the files applied above exist, and name what the tests wait for."""
    import yaml

    documents = {path.name: yaml.safe_load(path.read_text()) for path in EXAMPLE.glob("*.yaml")}
    assert documents["experiment.yaml"]["metadata"]["name"] == "iris"
    assert documents["inferenceservice.yaml"]["metadata"]["name"] == "iris"
    assert INVALID_EDIT[0] in (EXAMPLE / "experiment.yaml").read_text()
