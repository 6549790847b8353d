"""Open Inference Protocol (V2) conformance, proven with the clients users have: tritonclient's
HTTP client and KServe's InferenceRESTClient drive health, metadata, JSON and binary inference,
outputs selection, request ids and errors, against a model server directly and through the
router (real processes on 127.0.0.1, started as the operator's pods start them).

The model predicts string labels, so `predict` is a BYTES output: the binary form of BYTES
(length-prefixed elements) is exercised as well as the fixed-size FP64 of `predict_proba`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from tritonclient.utils import InferenceServerException

from mlops_runtime.model_io import dump_skops
from mlops_runtime.serving_process import ServerProcess

NAME, VERSION = "iris", "v7"
IRIS = load_iris()
X = IRIS.data.astype(np.float64)
SPECIES = np.asarray(IRIS.target_names)[IRIS.target]
FEATURES = list(IRIS.feature_names)


@pytest.fixture(scope="module")
def model() -> LogisticRegression:
    return LogisticRegression(max_iter=500).fit(X, SPECIES)


def write_version(folder: Path, model: Any) -> tuple[Path, str]:
    """model.skops and signature.json as the trainer lays them out; (model path, sha256)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = dump_skops(model)
    (folder / "model.skops").write_bytes(data)
    (folder / "signature.json").write_text(json.dumps({
        "task": "classification", "target": "species", "classes": list(model.classes_),
        "features": [{"name": name, "kind": "numeric", "dtype": "float64"} for name in FEATURES]}))
    return folder / "model.skops", hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def stack(model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    tmp = tmp_path_factory.mktemp("v2")
    path, sha = write_version(tmp / "iris-t007", model)

    def serve(role: str, sha256: str, log: str) -> ServerProcess:
        return ServerProcess("mlops_runtime.serve", [
            "--model-uri", str(path), "--sha256", sha256, "--name", NAME, "--version", VERSION,
            "--role", role, "--log-level", "warning"], log_path=tmp / log)

    champion, challenger = serve("champion", sha, "champion.log"), serve("challenger", sha, "challenger.log")
    broken = serve("champion", "0" * 64, "broken.log")  # a refused artifact: live, never ready
    processes = [champion, challenger, broken]
    try:
        for proc in processes:
            proc.start()
        champion.wait_ready()
        challenger.wait_ready()
        broken.wait_live()
        # half the requests go to each variant, so both of the router's paths answer
        router = ServerProcess("mlops_runtime.router", [
            "--champion", champion.url, "--challenger", challenger.url, "--weight", "50", "--name", NAME,
            "--log-level", "warning"], log_path=tmp / "router.log")
        processes.append(router)
        router.start().wait_ready()
        broken_router = ServerProcess("mlops_runtime.router", [
            "--champion", broken.url, "--name", NAME, "--log-level", "warning"], log_path=tmp / "broken-router.log")
        processes.append(broken_router)
        broken_router.start().wait_live()
        yield {"server": champion, "router": router, "broken": broken, "broken-router": broken_router}
    finally:
        for proc in processes:
            proc.stop()


TARGETS = ["server", "router"]


def triton_client(proc: ServerProcess) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=f"{proc.host}:{proc.port}")


def triton_inputs(rows: np.ndarray, binary: bool) -> list[triton.InferInput]:
    tensor = triton.InferInput("input-0", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    return [tensor]


def texts(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values.reshape(-1)]


# -- health and metadata -----------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_triton_health_and_metadata(stack: dict, target: str) -> None:
    client = triton_client(stack[target])
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(NAME) and client.is_model_ready(NAME, VERSION)
    assert not client.is_model_ready(NAME, "v1")   # a version that is not served is not ready
    assert not client.is_model_ready("tulip")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    metadata = client.get_model_metadata(NAME, VERSION)
    assert metadata["versions"] == [VERSION]
    assert [i["name"] for i in metadata["inputs"]] == FEATURES
    assert [(o["name"], o["datatype"]) for o in metadata["outputs"]] == [("predict", "BYTES"),
                                                                          ("predict_proba", "FP64")]
    with pytest.raises(InferenceServerException, match="version 'v1' is not served here"):
        client.get_model_metadata(NAME, "v1")


@pytest.mark.parametrize("target", ["broken", "broken-router"])
def test_not_ready_reads_as_false_to_both_clients(stack: dict, target: str) -> None:
    proc = stack[target]
    client = triton_client(proc)
    assert client.is_server_live()
    assert client.is_server_ready() is False and client.is_model_ready(NAME) is False
    status, body = proc.ready_state()
    assert status == 400 and body["ready"] is False  # the protocol's "4xx is false"

    async def kserve_view() -> tuple[bool, bool]:
        async with InferenceRESTClient(RESTConfig(protocol="v2")) as kclient:
            live = await kclient.is_server_live(proc.url)
            model_ready = await kclient.is_model_ready(proc.url, NAME)
            # KServe's is_server_ready raises on every non-2xx answer (it does so against KServe's own
            # server too, which answers 503); a 2xx "not ready" would pass a Kubernetes probe.
            with pytest.raises(httpx.HTTPStatusError, match="400"):
                await kclient.is_server_ready(proc.url)
            return live, model_ready

    import asyncio

    assert asyncio.run(kserve_view()) == (True, False)


# -- inference with tritonclient ---------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("binary_in", "binary_out"), [(False, False), (True, False), (False, True), (True, True)])
def test_triton_inference_json_and_binary(stack: dict, model: Any, target: str, binary_in: bool,
                                          binary_out: bool) -> None:
    client = triton_client(stack[target])
    rows = X[::7]
    outputs = [triton.InferRequestedOutput("predict", binary_data=binary_out),
               triton.InferRequestedOutput("predict_proba", binary_data=binary_out)]
    for _ in range(4):  # through the router, both variants answer
        result = client.infer(NAME, triton_inputs(rows, binary_in), model_version=VERSION, outputs=outputs)
        assert texts(result.as_numpy("predict")) == model.predict(rows).tolist()
        np.testing.assert_allclose(result.as_numpy("predict_proba"), model.predict_proba(rows), atol=1e-9)
        assert result.as_numpy("predict_proba").shape == (len(rows), 3)
        sizes = [o.get("parameters", {}).get("binary_data_size") for o in result.get_response()["outputs"]]
        assert (sizes[0] is not None) == binary_out and (sizes[1] is not None) == binary_out


@pytest.mark.parametrize("target", TARGETS)
def test_triton_default_request_binary_everywhere(stack: dict, model: Any, target: str) -> None:
    """With no outputs named, tritonclient asks for every output in binary (binary_data_output)."""
    result = triton_client(stack[target]).infer(NAME, triton_inputs(X[:5], binary=True))
    assert [o["name"] for o in result.get_response()["outputs"]] == ["predict", "predict_proba"]
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    assert texts(result.as_numpy("predict")) == model.predict(X[:5]).tolist()


@pytest.mark.parametrize("target", TARGETS)
def test_triton_outputs_selection(stack: dict, model: Any, target: str) -> None:
    client = triton_client(stack[target])
    only = client.infer(NAME, triton_inputs(X[:3], binary=True),
                        outputs=[triton.InferRequestedOutput("predict_proba", binary_data=True)])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["predict_proba"]
    assert only.as_numpy("predict") is None
    np.testing.assert_allclose(only.as_numpy("predict_proba"), model.predict_proba(X[:3]), atol=1e-9)
    with pytest.raises(InferenceServerException, match="unknown output\\(s\\) 'bogus'; this model has outputs "
                                                       "'predict', 'predict_proba'"):
        client.infer(NAME, triton_inputs(X[:3], binary=False), outputs=[triton.InferRequestedOutput("bogus")])


@pytest.mark.parametrize("target", TARGETS)
def test_triton_request_ids_are_echoed_unchanged(stack: dict, target: str) -> None:
    client = triton_client(stack[target])
    for request_id in ("order-42", "x" * 300, "tab\there", "naïve-ünïcode"):
        result = client.infer(NAME, triton_inputs(X[:1], binary=True), request_id=request_id)
        assert result.get_response()["id"] == request_id
    # the body's id wins over a header
    header_too = client.infer(NAME, triton_inputs(X[:1], binary=False), request_id="from-body",
                              headers={"x-request-id": "from-header"})
    assert header_too.get_response()["id"] == "from-body"
    generated = client.infer(NAME, triton_inputs(X[:1], binary=False))
    assert len(generated.get_response()["id"]) >= 16


@pytest.mark.parametrize("target", TARGETS)
def test_triton_errors_name_the_problem(stack: dict, target: str) -> None:
    client = triton_client(stack[target])
    overflow = X[:2].copy()
    overflow[1, 2] = np.inf
    with pytest.raises(InferenceServerException, match="row 1: feature 'petal length \\(cm\\)' is inf") as raised:
        client.infer(NAME, triton_inputs(overflow, binary=True))
    assert raised.value.status() == "400"
    huge = X[:1].copy()
    huge[0, 0] = 1e300
    with pytest.raises(InferenceServerException, match="feature 'sepal length \\(cm\\)' is 1e\\+300"):
        client.infer(NAME, triton_inputs(huge, binary=False))
    small = triton.InferInput("input-0", [1, 4], "INT8")
    small.set_data_from_numpy(np.array([[1, 2, 3, 4]], dtype=np.int8), binary_data=True)
    assert texts(client.infer(NAME, [small]).as_numpy("predict"))  # a datatype that fits is fine
    text = triton.InferInput("input-0", [1, 4], "BYTES")
    text.set_data_from_numpy(np.array([["1", "2", "3", "4"]], dtype=object), binary_data=True)
    with pytest.raises(InferenceServerException, match="the features are numeric but the datatype is BYTES"):
        client.infer(NAME, [text])
    with pytest.raises(InferenceServerException, match="model 'tulip' is not served here"):
        client.infer("tulip", triton_inputs(X[:1], binary=False))
    with pytest.raises(InferenceServerException, match="version 'v1' is not served here"):
        client.infer(NAME, triton_inputs(X[:1], binary=False), model_version="v1")


# -- inference with KServe's client --------------------------------------------------------------


def kserve_request(rows: np.ndarray, binary_in: bool, binary_out: bool, request_id: str | None = None,
                   outputs: list[str] | None = None) -> InferRequest:
    tensor = InferInput("input-0", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows, binary_data=binary_in)
    requested = [RequestedOutput(name, parameters={"binary_data": binary_out}) for name in outputs] \
        if outputs else None
    return InferRequest(NAME, [tensor], request_id=request_id, request_outputs=requested,
                        parameters={"binary_data_output": binary_out})


@pytest.mark.parametrize("target", TARGETS)
async def test_kserve_health_inference_outputs_ids_and_errors(stack: dict, model: Any, target: str) -> None:
    url = stack[target].url
    rows = X[3::11]
    async with InferenceRESTClient(RESTConfig(protocol="v2")) as client:
        assert await client.is_server_live(url) and await client.is_server_ready(url)
        assert await client.is_model_ready(url, NAME) and not await client.is_model_ready(url, "tulip")
        for binary_in in (False, True):
            for binary_out in (False, True):
                answer = await client.infer(url, kserve_request(rows, binary_in, binary_out, f"k-{binary_in}"),
                                            model_name=NAME)
                assert answer.id == f"k-{binary_in}"
                by_name = {o.name: o for o in answer.outputs}
                assert texts(by_name["predict"].as_numpy()) == model.predict(rows).tolist()
                np.testing.assert_allclose(by_name["predict_proba"].as_numpy().reshape(len(rows), 3),
                                           model.predict_proba(rows), atol=1e-9)
        only = await client.infer(url, kserve_request(rows, True, True, outputs=["predict"]), model_name=NAME)
        assert [o.name for o in only.outputs] == ["predict"]
        with pytest.raises(httpx.HTTPStatusError, match="unknown output\\(s\\) 'bogus'"):
            await client.infer(url, kserve_request(rows, False, False, outputs=["bogus"]), model_name=NAME)
        overflow = rows.copy()
        overflow[0, 3] = -np.inf
        with pytest.raises(httpx.HTTPStatusError, match="feature 'petal width \\(cm\\)' is -inf") as raised:
            await client.infer(url, kserve_request(overflow, True, False), model_name=NAME)
        assert raised.value.response.status_code == 400


# -- what the clients cannot send: the protocol's required fields, on the wire ----------------------


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("tensor", "message"), [
    ({"shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}, "inputs[0]: missing field 'name'"),
    ({"name": "x", "shape": [1, 4], "data": [1, 2, 3, 4]}, "inputs[0] 'x': missing field 'datatype'"),
    ({"name": "x", "datatype": "FP64", "data": [1, 2, 3, 4]}, "inputs[0] 'x': missing field 'shape'"),
    ({"name": "x", "shape": [1, 4], "datatype": "BYTES", "data": [1, 2, 3, 4]},
     "row 0, feature 'sepal length (cm)': datatype BYTES holds strings"),
    ({"name": "x", "shape": [1, 4], "datatype": "INT8", "data": [1, 2, 3, 1000]},
     "row 0, feature 'petal width (cm)': 1000 is outside the range of INT8"),
    ({"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1e308, 2, 3, 4]},
     "feature 'sepal length (cm)' is 1e+308"),
])
def test_raw_http_refusals_are_400_naming_the_input(stack: dict, target: str, tensor: dict, message: str) -> None:
    answer = httpx.post(stack[target].url + f"/v2/models/{NAME}/infer", json={"id": "raw-1", "inputs": [tensor]})
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"] and answer.json()["request_id"] == "raw-1"


@pytest.mark.parametrize("target", TARGETS)
def test_binary_without_its_header_says_what_is_missing(stack: dict, target: str) -> None:
    header = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                       "parameters": {"binary_data_size": 16}}]})
    body = header + np.arange(4, dtype="<f4").tobytes()
    url = stack[target].url + f"/v2/models/{NAME}/infer"
    missing = httpx.post(url, content=body, headers={"content-type": "application/octet-stream"})
    assert missing.status_code == 400
    assert "needs the Inference-Header-Content-Length header" in missing.json()["error"]
    given = httpx.post(url, content=body, headers={"inference-header-content-length": str(len(header))})
    assert given.status_code == 200 and given.headers["content-type"] == "application/json"
    assert given.json()["outputs"][0]["name"] == "predict"


@pytest.mark.parametrize("target", TARGETS)
def test_an_id_is_a_string_and_an_empty_one_is_none(stack: dict, target: str) -> None:
    url = stack[target].url + f"/v2/models/{NAME}/infer"
    inputs = [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": X[0].tolist()}]
    number = httpx.post(url, json={"id": 42, "inputs": inputs})
    assert number.status_code == 400 and "id must be a string, got int" in number.json()["error"]
    empty = httpx.post(url, json={"id": "", "inputs": inputs})
    assert empty.status_code == 200 and len(empty.json()["id"]) == 32


def test_router_keeps_the_body_id_and_the_variant_header_agrees(stack: dict) -> None:
    url = stack["router"].url + f"/v2/models/{NAME}/infer"
    body = {"id": "through-the-router", "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64",
                                                    "data": X[0].tolist()}]}
    variants = set()
    for _ in range(6):
        answer = httpx.post(url, json=body, headers={"x-request-id": "ignored-header"})
        assert answer.json()["id"] == "through-the-router" == answer.headers["x-request-id"]
        variants.add(answer.headers["x-mlops-variant"])
    assert variants == {"champion", "challenger"}
    generated = httpx.post(url, json={"inputs": body["inputs"]})
    assert generated.json()["id"] == generated.headers["x-request-id"] and len(generated.json()["id"]) == 32
