"""The analysis inputs as the metrics reader condenses them, from exposition text produced by
the runtime's own metric classes (the router's and the model server's), so that the names,
labels and counting rules of both sides are checked against each other."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from mlops_operator.metrics_reader import AnalysisTarget, parse_exposition, prometheus_queries, snapshot_from_samples
from mlops_runtime.router import RouterMetrics
from mlops_runtime.serving_metrics import ServerMetrics

TARGET = AnalysisTarget(namespace="ml", service="iris", model="iris", champion_version="iris-v1",
                        challenger_version="iris-v2")


def exposition() -> str:
    router_registry = CollectorRegistry()
    router = RouterMetrics(router_registry, "iris")
    other = RouterMetrics(CollectorRegistry(), "other-service")
    for _ in range(90):
        router.answered("champion", 200, 0.004)
    for _ in range(8):
        router.answered("challenger", 200, 0.02)
    router.answered("challenger", 503, 0.03)  # answered 5xx, then retried on the champion
    router.fallbacks.inc()
    router.fallbacks.inc()  # a turn skipped while the challenger was unhealthy
    router.answered("champion", 200, 0.004)
    router.answered("champion", 200, 0.004)
    other.answered("challenger", 500, 1.0)
    for outcome, n in (("agree", 5), ("disagree", 2), ("error", 1)):
        for _ in range(n):
            router.shadow_outcome(outcome)
    router.flush()  # what the router does before every scrape
    text = generate_latest(router_registry).decode()
    for version, role, correct, incorrect in (("iris-v1", "champion", 40, 2), ("iris-v2", "challenger", 3, 4)):
        registry = CollectorRegistry()
        server = ServerMetrics(registry, "iris", version, role, [0, 1, 2])
        server.feedback_children["correct"].inc(correct)
        server.feedback_children["incorrect"].inc(incorrect)
        server.request_done(200, 0.002)
        server.flush()  # what the server does before every scrape
        text += generate_latest(registry).decode()
    unrelated = CollectorRegistry()
    ServerMetrics(unrelated, "wine", "iris-v2", "challenger", [0]).feedback_children["correct"].inc(99)
    return text + generate_latest(unrelated).decode()


def test_router_and_server_counters_become_one_snapshot():
    snapshot = snapshot_from_samples(parse_exposition(exposition()), TARGET, "t")
    assert snapshot.champion.requests == 92 and snapshot.champion.errors == 0
    # 9 answered by the challenger + 1 skipped turn; errors: the 5xx and the skipped turn.
    assert snapshot.challenger.requests == 10 and snapshot.challenger.errors == 2
    assert snapshot.fallbacks == 2
    assert snapshot.challenger.latency_buckets["0.025"] == 8 and snapshot.challenger.latency_buckets["+Inf"] == 9
    assert (snapshot.champion.feedback_correct, snapshot.champion.feedback_incorrect) == (40, 2)
    assert (snapshot.challenger.feedback_correct, snapshot.challenger.feedback_incorrect) == (3, 4)
    assert (snapshot.shadow_agree, snapshot.shadow_disagree, snapshot.shadow_error) == (5, 2, 1)


def test_shadow_latency_comes_from_the_challengers_server():
    shadow = AnalysisTarget(**{**TARGET.__dict__, "mode": "shadow"})
    snapshot = snapshot_from_samples(parse_exposition(exposition()), shadow, "t")
    assert snapshot.challenger.latency_buckets["0.0025"] == 1 and snapshot.challenger.latency_buckets["+Inf"] == 1


def test_prometheus_queries_select_the_service_and_versions():
    queries = prometheus_queries(TARGET)
    assert queries["mlops_router_requests_total"] == (
        'sum by (service, variant, code) (mlops_router_requests_total{service="iris",namespace=~"ml|"})')
    assert queries["mlops_feedback_total"] == (
        'sum by (model, version, outcome) (mlops_feedback_total{model="iris",version=~"iris-v1|iris-v2",'
        'namespace=~"ml|"})')
