"""The model server as a real process: artifacts made by the real trainer on the SeaweedFS S3
fixture, requests over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_iris

from trainer import train_all
from mlops_runtime.model_io import load_skops
from mlops_runtime.serving_process import ServerProcess
from mlops_runtime.store import ArtifactStore

MAX_BODY = 64 * 1024
IRIS = load_iris(as_frame=True).frame.drop(columns=["target"])


# -- fixtures: trained versions and running servers -------------------------------------------





def houses(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    city = rng.choice(["oslo", "rome", "lima"], rows)
    area = rng.uniform(20, 200, rows).round(1)
    price = area * np.select([city == "oslo", city == "rome"], [5.0, 4.0], 2.0) + rng.normal(0, 10, rows)
    return pd.DataFrame({"area": area, "city": city, "price": price.round(2)})


@pytest.fixture(scope="module")
def versions(s3: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    bucket = f"serve-{uuid.uuid4().hex[:12]}"
    s3.client().make_bucket(bucket)
    store = ArtifactStore.from_env(s3.env)
    store.put_bytes(f"s3://{bucket}/data/houses.csv", houses(300, 1).to_csv(index=False).encode())
    summaries = train_all(s3, tmp_path_factory.mktemp("train"), {
        "iris": {"dataset": {"uri": "sklearn://iris"}, "estimator": "sklearn.linear_model.LogisticRegression",
                 "params": {"max_iter": 500}, "output": f"s3://{bucket}/default/iris/iris-t001/"},
        "houses": {"dataset": {"uri": f"s3://{bucket}/data/houses.csv", "target": "price"},
                   "estimator": "sklearn.linear_model.Ridge", "output": f"s3://{bucket}/default/houses/h-t001/"},
    })
    for summary in summaries.values():
        summary["model"] = load_skops(store.get_verified(summary["modelUri"], summary["sha256"]))
    summaries["bucket"] = {"name": bucket}
    return summaries


def serve_args(summary: dict[str, Any], name: str, onnx: bool = True, *extra: str) -> list[str]:
    args = ["--model-uri", summary["modelUri"], "--sha256", summary["sha256"], "--name", name,
            "--version", "v1", "--max-body-bytes", str(MAX_BODY), "--log-level", "warning", *extra]
    if onnx:
        assert summary["onnxUri"], f"the trainer made no ONNX form: {summary.get('onnx')}"
        args += ["--onnx-uri", summary["onnxUri"], "--onnx-sha256", summary["onnxSha256"]]
    return args


@pytest.fixture(scope="module")
def servers(versions: dict[str, Any], s3: Any, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, ServerProcess]]:
    logs = tmp_path_factory.mktemp("serve-logs")
    procs = {
        "onnx": ServerProcess("mlops_runtime.serve", serve_args(versions["iris"], "iris"), s3.env,
                              log_path=logs / "onnx.log"),
        "skops": ServerProcess("mlops_runtime.serve", serve_args(
            versions["iris"], "iris", False, "--drift-interval", "0.2", "--drift-window", "200",
            "--drift-min-rows", "50"), s3.env, log_path=logs / "skops.log"),
        "houses": ServerProcess("mlops_runtime.serve", serve_args(versions["houses"], "houses"), s3.env,
                                log_path=logs / "houses.log"),
    }
    try:
        for proc in procs.values():
            proc.start()
        for proc in procs.values():
            proc.wait_ready(timeout=60)
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


def metric_samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url + "/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict, name: str, **labels: str) -> float:
    matches = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls)]
    return sum(matches)


# -- predictions ----------------------------------------------------------------------------------


def test_with_workers_readiness_waits_for_every_worker_again_after_one_dies(versions: dict, s3: Any,
                                                                            tmp_path: Path) -> None:
    import os
    import signal

    server = ServerProcess("mlops_runtime.serve", serve_args(versions["iris"], "iris", True, "--workers", "2"),
                           s3.env, log_path=tmp_path / "workers.log")
    with server:
        server.wait_ready(timeout=60)
        ready = httpx.get(server.url + "/v2/health/ready")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
        assert len(children) == 2
        os.kill(int(children[0]), signal.SIGKILL)

        def readiness() -> tuple[int, str]:
            answer = httpx.get(server.url + "/v2/health/ready", headers={"connection": "close"})
            return answer.status_code, answer.json().get("reason", "")

        deadline = time.monotonic() + 60
        while (state := readiness()) == (200, ""):  # until the supervisor has reaped the dead worker
            assert time.monotonic() < deadline, "readiness never noticed the dead worker"
        assert state == (400, "1 of 2 worker processes have loaded the model")
        while (state := readiness())[0] != 200:  # the replacement loads its model
            assert time.monotonic() < deadline, f"never ready again: {state}"
            # the probe reaches the loaded worker (1 of 2) or the replacement itself (loading)
            assert state[1] == "1 of 2 worker processes have loaded the model" or state[1].startswith("loading "), state
        assert len(Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()) == 2


def test_workers_ready_counts_live_workers_only(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from mlops_runtime.serve import workers_ready

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    for name in (f"ready-{os.getpid()}", f"ready-{gone.pid}", "ready-notapid", "metrics.db"):
        (tmp_path / name).touch()
    assert workers_ready(tmp_path) == 1  # this process; the exited one and the stray files do not count
    (tmp_path / f"ready-{os.getppid()}").touch()
    assert workers_ready(tmp_path) == 2


@pytest.mark.parametrize("backend", ["onnx", "skops"])
def test_predictions_equal_the_in_memory_model(servers: dict, versions: dict, backend: str) -> None:
    model = versions["iris"]["model"]
    url = servers[backend].url
    expected_labels = model.predict(IRIS).tolist()
    expected_proba = model.predict_proba(IRIS)
    meta = httpx.get(url + "/v2/models/iris").json()
    assert meta["parameters"]["backend"] == ("onnx" if backend == "onnx" else "sklearn")
    assert meta["parameters"]["onnx_threads"] == ({"intra_op": 1, "inter_op": 1} if backend == "onnx" else None)
    assert [i["name"] for i in meta["inputs"]] == list(IRIS.columns)

    rows = httpx.post(url + "/predict", json={"instances": IRIS.to_numpy().tolist()}).json()
    assert rows["predictions"] == expected_labels
    np.testing.assert_allclose(rows["probabilities"], expected_proba, atol=1e-4, rtol=0)
    assert rows["classes"] == [0, 1, 2] and rows["model"] == "iris" and rows["version"] == "v1"
    assert rows["role"] == "champion"

    records = httpx.post(url + "/predict", json={"instances": IRIS.iloc[40:60].to_dict(orient="records")}).json()
    assert records["predictions"] == expected_labels[40:60]

    matrix = httpx.post(url + "/v2/models/iris/infer", json={"inputs": [
        {"name": "input-0", "shape": [150, 4], "datatype": "FP64", "data": IRIS.to_numpy().ravel().tolist()}]}).json()
    assert matrix["outputs"][0]["data"] == expected_labels
    np.testing.assert_allclose(np.reshape(matrix["outputs"][1]["data"], (150, 3)), expected_proba, atol=1e-4)

    per_feature = httpx.post(url + "/v2/models/iris/infer", json={"id": f"v2-{backend}", "inputs": [
        {"name": c, "shape": [150], "datatype": "FP64", "data": IRIS[c].tolist()} for c in IRIS.columns]}).json()
    assert per_feature["outputs"][0]["data"] == expected_labels
    assert per_feature["id"] == f"v2-{backend}" == per_feature["parameters"]["request_id"]

    for i in (0, 77, 149):
        one = httpx.post(url + "/predict", json={"instances": [IRIS.iloc[i].tolist()]},
                         headers={"x-request-id": f"req-{backend}-{i}"})
        assert one.json()["predictions"] == [expected_labels[i]]
        assert one.headers["x-request-id"] == f"req-{backend}-{i}" == one.json()["request_id"]


def test_categorical_records_and_regression(servers: dict, versions: dict) -> None:
    model = versions["houses"]["model"]
    url = servers["houses"].url
    frame = houses(40, seed=9).drop(columns=["price"])
    frame.loc[3, "city"] = "paris"  # a category training never saw: the encoder ignores it
    answer = httpx.post(url + "/predict", json={"instances": frame.to_dict(orient="records")})
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["predictions"], model.predict(frame), rtol=1e-6, atol=1e-4)
    assert "probabilities" not in answer.json()
    assert httpx.get(url + "/v2/models/houses").json()["platform"] == "onnxruntime"
    bad = httpx.post(url + "/predict", json={"instances": [{"area": 50, "city": 3}]})
    assert bad.status_code == 400 and "categorical feature 'city' must be a string" in bad.json()["error"]

    first = httpx.post(url + "/predict", json={"instances": [{"area": 100.0, "city": "oslo"}]}).json()
    feedback = httpx.post(url + "/feedback", json={"request_id": first["request_id"],
                                                   "label": first["predictions"][0] + 10.0})
    assert feedback.status_code == 200 and feedback.json()["mean_abs_error"] == pytest.approx(10.0)
    samples = metric_samples(url)
    assert sample(samples, "mlops_online_abs_error", model="houses") == pytest.approx(10.0)
    assert sample(samples, "mlops_feedback_total", outcome="observed") == 1


# -- bad input -----------------------------------------------------------------------------------

BAD_REQUESTS = [
    ("/predict", b"{not json", 400, "not valid JSON"),
    ("/predict", b"[1, 2]", 400, "must be a JSON object"),
    ("/predict", b'{"rows": [[1, 2, 3, 4]]}', 400, "missing field 'instances'"),
    ("/predict", b'{"instances": []}', 400, "instances is empty"),
    ("/predict", b'{"instances": [[5.1, 3.5, 1.4]]}', 400, "expected 4 values"),
    ("/predict", b'{"instances": [{"sepal length (cm)": 1, "petal colour": 2}]}', 400, "missing feature(s)"),
    ("/predict", b'{"instances": [[5.1, 3.5, 1.4, "wide"]]}', 400, "'petal width (cm)' must be a number"),
    ("/predict", b'{"instances": [[5.1, null, 1.4, 0.2]]}', 400, "cannot take missing values"),
    ("/predict", b'{"instances": [[' + b"1.0," * (MAX_BODY // 4) + b"1.0]]}", 413, "over the limit"),
    ("/v2/models/iris/infer", b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}',
     400, "expected 4 features"),
    ("/v2/models/iris/infer", b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", '
                              b'"data": [1, 2, 3, 1e300]}]}', 400, "feature 'petal width (cm)' is 1e+300"),
    ("/predict", b'{"instances": [[1e39, 3.5, 1.4, 0.2]]}', 400, "row 0: feature 'sepal length (cm)' is 1e+39"),
    ("/v2/models/iris/versions/v9/infer", b'{"inputs": []}', 404, "version 'v9' is not served here"),
    ("/v2/models/iris/infer", b'{"instances": [[1, 2, 3, 4]]}', 400, "missing field 'inputs'"),
    ("/v2/models/tulip/infer", b'{"inputs": []}', 404, "model 'tulip' is not served here"),
]


@pytest.mark.parametrize("backend", ["onnx", "skops"])
def test_bad_input_answers_4xx_naming_the_problem_and_the_server_keeps_serving(servers: dict,
                                                                              backend: str) -> None:
    url = servers[backend].url
    with httpx.Client(base_url=url) as client:
        for path, body, status, message in BAD_REQUESTS:
            answer = client.post(path, content=body, headers={"content-type": "application/json"})
            assert answer.status_code == status, (path, body[:80], answer.text)
            assert message in answer.json()["error"], (path, answer.json())
            good = client.post("/predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]})
            assert good.status_code == 200 and good.json()["predictions"] == [0]
        assert client.get("/predict").status_code == 405
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200


def test_a_tampered_artifact_never_becomes_ready(versions: dict, s3: Any, tmp_path: Path) -> None:
    store = ArtifactStore.from_env(s3.env)
    iris = versions["iris"]
    prefix = f"s3://{versions['bucket']['name']}/default/iris/tampered/"
    original = store.get_bytes(iris["modelUri"])
    store.put_bytes(prefix + "model.skops", original[:-1] + bytes([original[-1] ^ 1]))
    server = ServerProcess("mlops_runtime.serve", ["--model-uri", prefix + "model.skops", "--sha256",
                                                   iris["sha256"], "--name", "iris"],
                           s3.env, log_path=tmp_path / "serve.log")
    with server:
        server.wait_live()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:  # it must stay not-ready, not just start that way
            status, body = server.ready_state()
            assert status == 400 and body["ready"] is False  # V2: a 4xx health answer reads as false
            time.sleep(0.2)
        assert "sha256 mismatch" in body["reason"] and iris["sha256"] in body["reason"]
        refused = httpx.post(server.url + "/predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]})
        assert refused.status_code == 503 and "sha256 mismatch" in refused.json()["error"]
        assert httpx.get(server.url + "/v2/health/live").status_code == 200
    assert "sha256 mismatch" in server.log_tail()


# -- metrics, feedback, drift -------------------------------------------------------------------


def test_metrics_count_the_requests_sent(servers: dict) -> None:
    url = servers["onnx"].url
    before = metric_samples(url)
    labels_seen: list[int] = []
    with httpx.Client(base_url=url) as client:
        for k in range(7):
            rows = IRIS.iloc[k * 20:k * 20 + k + 1].to_numpy().tolist()  # 1..7 rows: 28 predictions
            labels_seen += client.post("/predict", json={"instances": rows}).json()["predictions"]
        for _ in range(3):
            assert client.post("/predict", json={"instances": []}).status_code == 400
        assert client.post("/predict", content=b"x" * (MAX_BODY + 1)).status_code == 413
    after = metric_samples(url)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    ident = {"model": "iris", "version": "v1", "role": "champion"}
    assert delta("mlops_inference_requests_total", code="200", **ident) == 7
    assert delta("mlops_inference_requests_total", code="400", **ident) == 3
    assert delta("mlops_inference_requests_total", code="413", **ident) == 1
    assert delta("mlops_inference_request_duration_seconds_count", **ident) == 11
    for label in (0, 1, 2):
        assert delta("mlops_inference_predictions_total", **{"class": str(label)}, **ident) == labels_seen.count(label)
    assert len(labels_seen) == 28
    assert sample(after, "mlops_inference_in_flight", **ident) == 0


def test_feedback_updates_online_accuracy(servers: dict) -> None:
    url = servers["onnx"].url
    with httpx.Client(base_url=url) as client:
        predicted = {}
        for i in range(10):
            rid = f"fb-{uuid.uuid4().hex}"
            answer = client.post("/predict", json={"instances": [IRIS.iloc[i * 15].tolist()]},
                                 headers={"x-request-id": rid}).json()
            predicted[rid] = answer["predictions"][0]
        ids = list(predicted)
        for rid in ids[:6]:  # right
            assert client.post("/feedback", json={"request_id": rid, "label": predicted[rid]}).status_code == 200
        wrong = client.post("/feedback", json={"request_id": ids[6], "label": (predicted[ids[6]] + 1) % 3}).json()
        assert wrong["outcomes"] == ["incorrect"] and wrong["accuracy"] == pytest.approx(6 / 7)
        again = client.post("/feedback", json={"request_id": ids[6], "label": 0})
        assert again.status_code == 404 and "already scored" in again.json()["error"]
        unknown = client.post("/feedback", json={"request_id": "never-seen", "label": 0})
        assert unknown.status_code == 404 and "unknown request id 'never-seen'" in unknown.json()["error"]
        mismatch = client.post("/feedback", json={"request_id": ids[7], "label": [0, 1]})
        assert mismatch.status_code == 400 and "predicted 1 row(s)" in mismatch.json()["error"]
        batch = client.post("/feedback", json={"items": [
            {"request_id": ids[7], "label": predicted[ids[7]]},
            {"request_id": ids[8], "label": (predicted[ids[8]] + 1) % 3},
            {"request_id": "nobody", "label": 1}]}).json()
        assert batch["scored_items"] == 2 and batch["unknown"] == ["nobody"]
        assert batch["accuracy"] == pytest.approx(7 / 9)
    samples = metric_samples(url)
    assert sample(samples, "mlops_online_accuracy", model="iris") == pytest.approx(7 / 9)
    assert sample(samples, "mlops_feedback_total", outcome="correct") == 7
    assert sample(samples, "mlops_feedback_total", outcome="incorrect") == 2


def wait_for_gauge(url: str, name: str, feature: str, accept: Any, timeout: float = 60.0) -> float:
    deadline = time.monotonic() + timeout
    value = float("nan")
    while time.monotonic() < deadline:
        value = sample(metric_samples(url), name, feature=feature)
        if accept(value):
            return value
        time.sleep(0.1)
    raise AssertionError(f"{name}{{feature={feature!r}}} stayed at {value}")


def test_drift_gauges_follow_the_inputs(servers: dict) -> None:
    url = servers["skops"].url  # drift every 0.2 s over the last 200 rows
    shifted = IRIS.sample(200, replace=True, random_state=1).copy()
    shifted["petal length (cm)"] += 4.0
    with httpx.Client(base_url=url) as client:
        for start in range(0, 200, 50):
            assert client.post("/predict", json={"instances": shifted.iloc[start:start + 50].to_numpy().tolist()}
                               ).status_code == 200
        drifted = wait_for_gauge(url, "mlops_feature_drift_psi", "petal length (cm)", lambda v: v > 1.0)
        assert wait_for_gauge(url, "mlops_feature_drift_ks", "petal length (cm)", lambda v: v > 0.5) > 0.5
        calm = IRIS.sample(200, replace=True, random_state=2)
        assert client.post("/predict", json={"instances": calm.to_numpy().tolist()}).status_code == 200
    settled = wait_for_gauge(url, "mlops_feature_drift_psi", "petal length (cm)", lambda v: v < 0.25)
    assert settled < drifted
    assert sample(metric_samples(url), "mlops_feature_drift_psi", feature="sepal width (cm)") < 0.25


def test_workers_share_one_port_and_their_metrics_add_up(versions: dict, s3: Any, tmp_path: Path) -> None:
    server = ServerProcess("mlops_runtime.serve", serve_args(versions["iris"], "iris", True, "--workers", "2"),
                           s3.env, log_path=tmp_path / "workers.log")
    with server:
        server.wait_ready(timeout=60)
        codes: Counter[int] = Counter()
        for i in range(40):  # a new connection each time, so the kernel spreads them over the workers
            answer = httpx.post(server.url + "/predict", json={"instances": [IRIS.iloc[i].tolist()]},
                                headers={"connection": "close"})
            codes[answer.status_code] += 1
            if answer.status_code == 200:
                assert answer.json()["predictions"] == versions["iris"]["model"].predict(IRIS.iloc[[i]]).tolist()
        # each worker adds its counts to the shared files every FLUSH_SECONDS (and the scraped
        # one at the scrape): wait until all 40 have arrived
        deadline = time.monotonic() + 30
        samples = metric_samples(server.url)
        while sample(samples, "mlops_inference_request_duration_seconds_count") < 40 and time.monotonic() < deadline:
            time.sleep(0.1)
            samples = metric_samples(server.url)
        assert set(codes) == {200}  # ready only once every worker has loaded: no 503 from a late one
        for code, count in codes.items():
            assert sample(samples, "mlops_inference_requests_total", code=str(code)) == count
        assert sample(samples, "mlops_inference_request_duration_seconds_count") == 40


@pytest.mark.parametrize("backend", ["onnx", "skops"])
def test_concurrent_requests_each_get_their_own_rows_and_every_row_is_counted(servers: dict, versions: dict,
                                                                              backend: str) -> None:
    """Batching may put these requests into shared calls; whatever it does, each answer is its
    own row's, each id is its own, and mlops_batch_size accounts for every row."""
    model, url = versions["iris"]["model"], servers[backend].url
    rows = IRIS.to_numpy()
    before = sample(metric_samples(url), "mlops_batch_size_sum")

    async def fire() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            answers = await asyncio.gather(*(client.post("/predict", json={"instances": [row.tolist()]},
                                                         headers={"x-request-id": f"batch-{i}"})
                                             for i, row in enumerate(rows)))
        return [a.json() for a in answers]

    answers = asyncio.run(fire())
    assert [a["request_id"] for a in answers] == [f"batch-{i}" for i in range(len(rows))]
    assert [a["predictions"][0] for a in answers] == model.predict(IRIS).tolist()
    np.testing.assert_allclose([a["probabilities"][0] for a in answers], model.predict_proba(IRIS), atol=1e-4, rtol=0)
    assert sample(metric_samples(url), "mlops_batch_size_sum") - before == len(rows)
