"""The model server's request path keeps its counts in plain ints and its ids from a counter:
what reaches Prometheus and the caller must be exactly what the per-request calls gave."""

from __future__ import annotations

import os

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from mlops_runtime import http_asgi
from mlops_runtime.serving_metrics import LATENCY_BUCKETS, LatencyTally, ServerMetrics
from mlops_runtime.serving_model import Batch

SECONDS = [0.0001, 0.0005, 0.0007, 0.001, 0.003, 0.004, 0.2, 9.9, 10.0, 12.0, 0.0025]


def test_latency_tally_exposes_exactly_what_observe_would() -> None:
    direct, tallied = CollectorRegistry(), CollectorRegistry()
    per_request = Histogram("h", "latency", ["m"], buckets=LATENCY_BUCKETS, registry=direct).labels("x")
    tally = LatencyTally(Histogram("h", "latency", ["m"], buckets=LATENCY_BUCKETS, registry=tallied).labels("x"))
    for seconds in SECONDS:
        per_request.observe(seconds)
        tally.observe(seconds)
    tally.flush()
    tally.flush()  # nothing new: adds nothing
    assert generate_latest(tallied) == generate_latest(direct)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, {"model": "iris", "version": "v1", "role": "champion", **labels})
    return 0.0 if value is None else value


def test_server_metrics_reach_prometheus_at_flush() -> None:
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry, "iris", "v1", "champion", [0, 1, 2])
    for code in (200, 200, 400, 418):
        metrics.request_started()
    assert sample(registry, "mlops_inference_in_flight") == 0  # not flushed yet
    metrics.flush()
    assert sample(registry, "mlops_inference_in_flight") == 4
    for code in (200, 200, 400, 418):
        metrics.request_done(code, 0.002)
    metrics.count_predictions([1])
    metrics.count_predictions([np.int64(2)])
    metrics.count_predictions([0, 2, 2, 7])  # 7: a class the signature did not list
    assert sample(registry, "mlops_inference_requests_total", code="200") == 0
    metrics.flush()
    assert sample(registry, "mlops_inference_in_flight") == 0
    assert sample(registry, "mlops_inference_requests_total", code="200") == 2
    assert sample(registry, "mlops_inference_requests_total", code="418") == 1
    assert sample(registry, "mlops_inference_request_duration_seconds_count") == 4
    counts = {c: sample(registry, "mlops_inference_predictions_total", **{"class": c}) for c in "0127"}
    assert counts == {"0": 1, "1": 1, "2": 3, "7": 1}


def test_request_ids_are_unique_hex_and_a_forked_child_draws_its_own_prefix() -> None:
    ids = {http_asgi.new_request_id() for _ in range(10_000)}
    assert len(ids) == 10_000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, http_asgi.new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child[:16] != http_asgi.new_request_id()[:16]


def test_plainly_valid_is_false_whenever_a_check_could_find_something() -> None:
    assert Batch.of_matrix(np.array([[1.0, -2.0], [3e38, 0.0]])).plainly_valid()
    for bad in (np.nan, np.inf, -np.inf, 3.5e38, -1e300):
        for at in range(3):  # first, middle, last: min() and max() alone would skip a NaN placed after a number
            row = [1.0, 2.0]
            row.insert(at, bad)
            assert not Batch.of_matrix(np.array([row])).plainly_valid(), (bad, at)
    assert not Batch.of_matrix(np.array([[np.inf, -np.inf]])).plainly_valid()  # their sum is NaN
    assert Batch.of_matrix(np.array([[3e38, 3e38, -1.0]])).plainly_valid()  # each within float32; their sum is not
    assert not Batch(rows=1, columns=[np.array(["a"], dtype=object)]).plainly_valid()
