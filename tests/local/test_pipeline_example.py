"""The pipeline example end to end in local mode, with real processes: `up -f examples/wine/`
trains StandardScaler + SVC as one model over a search that reaches into both steps,
validates the best version and serves it; its ONNX form passed parity on check data that held
ties (one-vs-one vote ties), and the served model answers like the saved pipeline, over /predict
and over V2 with binary tensors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from minio import Minio
from sklearn.datasets import load_wine

from mlops_operator.local import client
from mlops_operator.local.state import StateDir, load
from mlops_runtime.model_io import load_skops

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def mlops(cwd: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlops_operator", "local", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout)


def get(cwd: Path, kind: str, name: str) -> dict:
    result = mlops(cwd, "get", kind, name, "-o", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_wine_pipeline_is_trained_validated_and_served(tmp_path: Path) -> None:
    state = StateDir(tmp_path / ".mlops")
    try:
        up = mlops(tmp_path, "up", "-f", str(ROOT / "examples" / "wine"), "--exit-when-settled", "--timeout", "300")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "model version wine-v1 validated" in up.stdout
        assert "scaler__with_mean=" in up.stdout and "svc__C=" in up.stdout  # the search reached both steps
        version = get(tmp_path, "mv", "wine-v1")
        assert version["status"]["phase"] == "Validated"
        artifact = version["spec"]["artifact"]
        assert artifact["servingFormat"] == "onnx", artifact

        # what the trainer saved and measured, read from the instance's S3
        status = client.attach(state).status()  # type: ignore[union-attr]
        credentials = load(state.state_file).credentials  # type: ignore[union-attr]
        s3 = Minio(status["s3Endpoint"].removeprefix("http://"), access_key=credentials["accessKey"],
                   secret_key=credentials["secretKey"], secure=False)
        bucket, prefix = artifact["uri"].removeprefix("s3://").split("/", 1)
        metrics = json.loads(s3.get_object(bucket, prefix + "metrics.json").read())
        parity = metrics["onnxParity"]
        assert metrics["onnx"] == "parity passed" and parity["passed"] and parity["labelsIdentical"]
        assert parity["tieRows"] > 0 and parity["outOfRangeRows"] > 0, parity
        model = load_skops(s3.get_object(bucket, prefix + "model.skops").read())
        assert [name for name, _ in model.steps] == ["scaler", "svc"]

        [service] = status["services"]
        url = service["url"]
        X, _ = load_wine(return_X_y=True, as_frame=True)
        expected = model.predict(X).tolist()
        import httpx

        answer = httpx.post(url + "/predict", json={"instances": X.to_numpy().tolist()}, timeout=10).json()
        assert answer["predictions"] == expected and answer["version"] == "wine-v1"
        rows = X.to_numpy(dtype=np.float64)
        tensor = triton.InferInput("input-0", list(rows.shape), "FP64")
        tensor.set_data_from_numpy(rows, binary_data=True)
        result = triton.InferenceServerClient(url.removeprefix("http://")).infer("wine", [tensor])
        assert result.as_numpy("predict").tolist() == expected
        assert httpx.get(url + "/v2/models/wine", timeout=10).json()["platform"] == "onnxruntime"
    finally:
        down = mlops(tmp_path, "down")
    assert down.returncode == 0, down.stdout + down.stderr
