"""The router: its pure split and config logic, then real processes (trainer, two model servers,
the router) over real HTTP on 127.0.0.1 with artifacts on the SeaweedFS S3 fixture."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_iris

from trainer import train_all
from mlops_runtime.router import (
    ConfigError,
    RouterConfig,
    challenger_turn,
    merge_feedback,
    parse_config,
    predictions_of,
    sticky_bucket,
)
from mlops_runtime.serving_process import ServerProcess, free_port

IRIS = load_iris(as_frame=True).frame.drop(columns=["target"])
ROWS = IRIS.to_numpy().tolist()
TOKEN = "router-admin-secret"


# -- pure logic ---------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [0, 1, 5, 10, 25, 33.33, 50, 90, 99.5, 100])
def test_split_is_exact_over_every_window_of_1000_in_10000_decisions(weight: float) -> None:
    turns = [challenger_turn(i, weight) for i in range(10_000)]
    prefix = [0]
    for turn in turns:
        prefix.append(prefix[-1] + turn)
    expected = 1_000 * weight / 100
    worst = max(abs(prefix[start + 1_000] - prefix[start] - expected) for start in range(9_001))
    assert worst <= 1  # 0.1 % of the window; the contract asks for 1 %
    assert abs(sum(turns) - 10_000 * weight / 100) <= 1


def test_sticky_buckets_are_stable_and_spread() -> None:
    assert sticky_bucket(b"user-42") == sticky_bucket(b"user-42")
    buckets = Counter(sticky_bucket(f"user-{i}".encode()) // 10 for i in range(20_000))
    assert len(buckets) == 10 and all(1_800 < n < 2_200 for n in buckets.values())


def test_config_parsing_names_the_bad_field() -> None:
    base = parse_config({"champion": "http://a:8080/", "challenger": "http://b:8080", "weight": 10})
    assert base == RouterConfig("http://a:8080", "http://b:8080", 10.0, "canary", None)
    assert parse_config({"weight": 25, "mode": "shadow"}, base=base).weight == 25.0
    assert parse_config({"challenger": None}, base=base).challenger is None
    for doc, message in [({"weight": 101}, "weight must be a number from 0 to 100"),
                         ({"weight": "10"}, "weight must be a number"),
                         ({"mode": "blue-green"}, "mode must be 'canary' or 'shadow'"),
                         ({"champion": "a:8080"}, "champion must be an http://host:port URL"),
                         ({"challenger": "https://b"}, "challenger must be an http://host:port URL"),
                         ({"replicas": 2}, "unknown field(s) ['replicas']"),
                         ([1], "must be a JSON object")]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]")):
            parse_config(doc, base=base)
    with pytest.raises(ConfigError, match="champion is required"):
        parse_config({"weight": 5})


def test_predictions_are_read_from_both_response_shapes() -> None:
    assert predictions_of(b'{"predictions": [1, 2]}') == [1, 2]
    assert predictions_of(b'{"outputs": [{"name": "predict", "data": ["a"]}]}') == ["a"]
    assert predictions_of(b"not json") is None
    head = (b'{"outputs": [{"name": "predict_proba", "parameters": {"binary_data_size": 8}}, '
            b'{"name": "predict", "parameters": {"binary_data_size": 4}}]}')
    body = head + b"PPPPPPPP" + b"LLLL"
    assert predictions_of(body, str(len(head)).encode()) == b"LLLL"  # the predict bytes, after predict_proba's
    assert predictions_of(body, b"9999") is None and predictions_of(body, b"x") is None


def test_feedback_answers_merge_across_variants() -> None:
    single = merge_feedback({"champion": (404, b'{"error": "unknown"}'), "challenger": (200, b'{"outcomes": []}')})
    assert single == (200, b'{"outcomes": []}')
    status, body = merge_feedback({
        "champion": (200, b'{"scored_items": 1, "unknown": ["b", "c"]}'),
        "challenger": (200, b'{"scored_items": 1, "unknown": ["a", "c"]}')})
    assert status == 200 and json.loads(body)["unknown"] == ["c"]


# -- real processes ------------------------------------------------------------------------------





def write_configmap(folder: Path, doc: dict[str, Any]) -> None:
    """Update a folder the way the kubelet updates a ConfigMap volume: write a new timestamped
    directory, then swap the `..data` symlink atomically; `router.json` links through it."""
    stamp = folder / f"..{time.time_ns()}"
    stamp.mkdir()
    (stamp / "router.json").write_text(json.dumps(doc))
    tmp_link = folder / "..data_tmp"
    tmp_link.symlink_to(stamp.name)
    os.replace(tmp_link, folder / "..data")
    if not (folder / "router.json").is_symlink():
        (folder / "router.json").symlink_to("..data/router.json")


@pytest.fixture(scope="module")
def stack(s3: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    bucket = f"router-{uuid.uuid4().hex[:12]}"
    s3.client().make_bucket(bucket)
    tmp = tmp_path_factory.mktemp("router")
    versions = train_all(s3, tmp, {
        "champion": {"dataset": {"uri": "sklearn://iris"}, "estimator": "sklearn.linear_model.LogisticRegression",
                     "params": {"max_iter": 500}, "output": f"s3://{bucket}/default/iris/iris-t001/"},
        # a one-split tree: it disagrees with the champion on about a third of iris
        "challenger": {"dataset": {"uri": "sklearn://iris"}, "estimator": "sklearn.tree.DecisionTreeClassifier",
                       "params": {"max_depth": 1}, "output": f"s3://{bucket}/default/iris/iris-t002/"},
    })

    def serve(summary: dict[str, Any], version: str, role: str, sha256: str | None = None) -> ServerProcess:
        return ServerProcess("mlops_runtime.serve", [
            "--model-uri", summary["modelUri"], "--sha256", sha256 or summary["sha256"], "--name", "iris",
            "--version", version, "--role", role, "--log-level", "warning"], s3.env,
            log_path=tmp / f"{version}.log")

    champion = serve(versions["champion"], "v1", "champion")
    challenger = serve(versions["challenger"], "v2", "challenger")
    broken = serve(versions["challenger"], "v3", "challenger", sha256="0" * 64)  # never ready: infer answers 503
    configmap = tmp / "configmap"
    configmap.mkdir()
    router_port = free_port()
    processes = [champion, challenger, broken]
    try:
        for proc in processes:
            proc.start()
        for proc in (champion, challenger):
            proc.wait_ready(timeout=60)
        broken.wait_live(timeout=60)
        write_configmap(configmap, {"champion": champion.url, "challenger": challenger.url, "weight": 0,
                                    "mode": "canary"})
        # The admin port (localhost, token) takes the changes these tests make; the variants
        # and the two unusable champions of the readiness test are its allowed upstreams.
        unreachable = f"http://127.0.0.1:{free_port()}"
        router = ServerProcess("mlops_runtime.router", [
            "--champion", champion.url, "--config-file", str(configmap / "router.json"), "--name", "iris",
            "--upstream", challenger.url, "--upstream", broken.url, "--upstream", unreachable,
            "--config-poll", "0.2", "--health-interval", "0.3", "--admin-token", TOKEN,
            "--admin-port", str(free_port()), "--log-level", "warning"],
            port=router_port, log_path=tmp / "router.log")
        processes.append(router)
        router.start().wait_ready(timeout=30)
        yield {"router": router, "champion": champion, "challenger": challenger, "broken": broken,
               "configmap": configmap, "unreachable": unreachable}
    finally:
        for proc in processes:
            proc.stop()


AUTH = {"authorization": f"Bearer {TOKEN}"}


def admin_url(router: ServerProcess) -> str:
    port = router.args[router.args.index("--admin-port") + 1]
    return f"http://127.0.0.1:{port}/admin/config"


def put_config(router: ServerProcess, **doc: Any) -> dict[str, Any]:
    answer = httpx.put(admin_url(router), json=doc, headers=AUTH)
    assert answer.status_code == 200, answer.text
    return answer.json()


def get_config(router: ServerProcess) -> dict[str, Any]:
    answer = httpx.get(router.url + "/admin/config", headers=AUTH)
    assert answer.status_code == 200, answer.text
    return answer.json()


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics").text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and set(labels.items()) <= set(s.labels.items()))


async def fire(url: str, bodies: list[Any], concurrency: int = 16,
               headers: list[dict[str, str]] | None = None) -> list[tuple[int, dict[str, str], Any]]:
    """POST every body to `url`, `concurrency` at a time; (status, headers, json) in order."""
    results: list[Any] = [None] * len(bodies)
    queue = iter(range(len(bodies)))

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in queue:
            async with session.post(url, json=bodies[i], headers=(headers[i] if headers else None)) as response:
                results[i] = (response.status, dict(response.headers), await response.json())

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return results


def test_canary_split_holds_within_one_percent_and_metrics_match(stack: dict) -> None:
    router = stack["router"]
    put_config(router, champion=stack["champion"].url, challenger=stack["challenger"].url, weight=10,
               mode="canary", stickyHeader=None)
    before = {v: metric(router.url, "mlops_router_requests_total", variant=v, code="200")
              for v in ("champion", "challenger")}
    served_before = metric(stack["challenger"].url, "mlops_inference_requests_total", code="200")
    n = 10_000
    results = asyncio.run(fire(router.url + "/predict", [{"instances": [ROWS[i % 150]]} for i in range(n)]))
    assert all(status == 200 for status, _, _ in results)
    variants = Counter(headers["x-mlops-variant"] for _, headers, _ in results)
    roles = Counter(body["role"] for _, _, body in results)
    assert variants == roles and sum(variants.values()) == n
    assert abs(variants["challenger"] - n * 0.10) <= n * 0.01
    for variant in ("champion", "challenger"):
        counted = metric(router.url, "mlops_router_requests_total", variant=variant, code="200") - before[variant]
        assert counted == variants[variant]
    assert metric(stack["challenger"].url, "mlops_inference_requests_total", code="200") - served_before \
        == variants["challenger"]
    assert metric(router.url, "mlops_router_weight") == 10


def test_sticky_header_keeps_a_user_on_one_variant(stack: dict) -> None:
    router = stack["router"]
    put_config(router, challenger=stack["challenger"].url, weight=30, mode="canary", stickyHeader="x-user")
    users = [f"user-{i}" for i in range(200)]
    bodies = [{"instances": [ROWS[i % 150]]} for i in range(600)]
    headers = [{"x-user": users[i % 200]} for i in range(600)]
    results = asyncio.run(fire(router.url + "/predict", bodies, headers=headers))
    by_user: dict[str, set[str]] = {}
    for (status, response_headers, _), sent in zip(results, headers):
        assert status == 200
        by_user.setdefault(sent["x-user"], set()).add(response_headers["x-mlops-variant"])
    assert all(len(variants) == 1 for variants in by_user.values())
    on_challenger = [u for u, v in by_user.items() if v == {"challenger"}]
    assert on_challenger == [u for u in users if sticky_bucket(u.encode()) < 30]
    put_config(router, stickyHeader=None)


def test_shadow_mode_never_changes_a_response(stack: dict) -> None:
    router, champion = stack["router"], stack["champion"]
    put_config(router, challenger=stack["challenger"].url, weight=50, mode="shadow")
    before = {o: metric(router.url, "mlops_router_shadow_total", outcome=o) for o in ("agree", "disagree", "error")}
    bodies = [{"instances": [row]} for row in ROWS]
    through_router = asyncio.run(fire(router.url + "/predict", bodies))
    direct = asyncio.run(fire(champion.url + "/predict", bodies))
    for (status, headers, body), (_, _, expected) in zip(through_router, direct):
        assert status == 200 and headers["x-mlops-variant"] == "champion"
        assert body["version"] == "v1" and body["predictions"] == expected["predictions"]
        # Batching may stack a row with other requests' rows, and a sum over a matrix can differ
        # from the sum over one row in the last bit: equal to 1e-12, not bit for bit.
        assert np.allclose(body["probabilities"], expected["probabilities"], rtol=0, atol=1e-12)
    deadline = time.monotonic() + 60  # generous: a loaded machine
    while time.monotonic() < deadline:
        delta = {o: metric(router.url, "mlops_router_shadow_total", outcome=o) - before[o] for o in before}
        if sum(delta.values()) >= len(bodies):
            break
        time.sleep(0.1)
    assert sum(delta.values()) == len(bodies) and delta["error"] == 0
    assert delta["disagree"] > 10 and delta["agree"] > 50  # the stump really differs, and it was compared
    assert 0 < metric(router.url, "mlops_router_shadow_agreement_ratio") < 1


@pytest.mark.parametrize("failure", ["connection refused", "answers 503"])
def test_a_bad_challenger_causes_no_client_error(stack: dict, failure: str) -> None:
    router = stack["router"]
    bad = stack["unreachable"] if failure == "connection refused" else stack["broken"].url
    put_config(router, challenger=bad, weight=50, mode="canary")
    fallbacks = metric(router.url, "mlops_router_fallbacks_total")
    results = asyncio.run(fire(router.url + "/predict", [{"instances": [ROWS[i % 150]]} for i in range(200)]))
    assert [status for status, _, _ in results] == [200] * 200
    assert {body["role"] for _, _, body in results} == {"champion"}
    assert metric(router.url, "mlops_router_fallbacks_total") - fallbacks == 100
    put_config(router, challenger=stack["challenger"].url, weight=0)


def test_request_id_passes_through_and_feedback_reaches_the_variant_that_served(stack: dict) -> None:
    router = stack["router"]
    put_config(router, challenger=stack["challenger"].url, weight=50, mode="canary")
    ids = [f"rt-{uuid.uuid4().hex}" for _ in range(20)]
    served = {}
    for i, rid in enumerate(ids):
        answer = httpx.post(router.url + "/predict", json={"instances": [ROWS[i * 7]]}, headers={"x-request-id": rid})
        assert answer.headers["x-request-id"] == rid == answer.json()["request_id"]
        served[rid] = (answer.headers["x-mlops-variant"], answer.json()["predictions"][0])
    assert {variant for variant, _ in served.values()} == {"champion", "challenger"}
    generated = httpx.post(router.url + "/predict", json={"instances": [ROWS[0]]})
    assert len(generated.headers["x-request-id"]) == 32 == len(generated.json()["request_id"])
    for rid, (_, label) in served.items():
        feedback = httpx.post(router.url + "/feedback", json={"request_id": rid, "label": label})
        assert feedback.status_code == 200 and feedback.json()["outcomes"] == ["correct"], feedback.text
    for variant in ("champion", "challenger"):
        scored = sum(1 for v, _ in served.values() if v == variant)
        url = stack[variant].url
        assert metric(url, "mlops_feedback_total", outcome="correct") >= scored
        assert metric(url, "mlops_online_accuracy") == 1.0
    unknown = httpx.post(router.url + "/feedback", json={"request_id": "nobody", "label": 1})
    assert unknown.status_code == 404 and "unknown request id" in unknown.json()["error"]
    put_config(router, weight=0)


def test_config_file_changes_apply_without_a_restart(stack: dict) -> None:
    router, configmap = stack["router"], stack["configmap"]

    def config_seen(accept: Any) -> dict[str, Any]:
        deadline = time.monotonic() + 60  # generous: a loaded machine
        while time.monotonic() < deadline:
            seen = get_config(router)
            if accept(seen):
                return seen
            time.sleep(0.1)
        raise AssertionError(f"router config stayed {seen}")

    write_configmap(configmap, {"champion": stack["champion"].url, "challenger": stack["challenger"].url,
                                "weight": 37.5, "mode": "shadow"})
    seen = config_seen(lambda c: c["weight"] == 37.5)
    assert seen["mode"] == "shadow" and seen["configFile"].endswith("router.json")
    write_configmap(configmap, {"champion": stack["champion"].url, "weight": 250})  # invalid: kept out
    deadline = time.monotonic() + 60  # generous: a loaded machine
    while "weight must be a number from 0 to 100" not in router.log_tail(20_000):
        assert time.monotonic() < deadline, router.log_tail()
        time.sleep(0.1)
    assert get_config(router)["weight"] == 37.5
    write_configmap(configmap, {"champion": stack["champion"].url, "challenger": stack["challenger"].url,
                                "weight": 12, "mode": "canary"})
    config_seen(lambda c: c["weight"] == 12 and c["mode"] == "canary")


def test_admin_endpoint_validates_and_needs_the_token(stack: dict) -> None:
    router = stack["router"]
    assert httpx.put(admin_url(router), json={"weight": 5}).status_code == 401
    assert httpx.put(router.url + "/admin/config", json={"weight": 5}, headers=AUTH).status_code == 405
    for doc, message in [({"weight": 150}, "weight must be a number from 0 to 100"),
                         ({"mode": "blue"}, "mode must be 'canary' or 'shadow'"),
                         ({"colour": 1}, "unknown field(s)")]:
        answer = httpx.put(admin_url(router), json=doc, headers=AUTH)
        assert answer.status_code == 400 and message in answer.json()["error"]
    assert put_config(router, weight=7)["weight"] == 7
    assert get_config(router)["weight"] == 7


def test_router_is_ready_only_while_the_champion_is(stack: dict) -> None:
    router = stack["router"]
    assert httpx.get(router.url + "/v2/health/ready").status_code == 200
    put_config(router, champion=stack["broken"].url)
    not_ready = httpx.get(router.url + "/v2/health/ready")
    assert not_ready.status_code == 400 and "champion not ready" in not_ready.json()["reason"]
    put_config(router, champion=stack["unreachable"])
    assert "champion unreachable" in httpx.get(router.url + "/v2/health/ready").json()["reason"]
    assert httpx.get(router.url + "/v2/health/live").status_code == 200
    put_config(router, champion=stack["champion"].url)
    assert httpx.get(router.url + "/v2/health/ready").status_code == 200
    assert httpx.get(router.url + "/v2/models/iris").json()["versions"] == ["v1"]
