"""The InferenceService's drift status: the pure decisions (reconcile.drift, and
reconcile.inference_service with a drift reading), and the controller on the in-memory
cluster with a reader that serves drift gauges (pacing, no-traffic silence, the Event)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from _inference_world import NS, inference_service, model_version
from _rollout_world import T0

from mlops_operator.api.inference_service import Drift, DriftStatus, FeatureDrift, InferenceService
from mlops_operator.api.model_version import ModelVersion
from mlops_operator.cluster.memory import InMemoryCluster
from mlops_operator.controllers import inference_service as controller
from mlops_operator.metrics_reader import AnalysisTarget, MetricsUnavailable, Sample
from mlops_operator.reconcile import drift as logic
from mlops_operator.reconcile import inference_service as isvc_logic

API = "mlops.seed.io/v1alpha1"


def stamp(seconds: float = 0) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def gauges(version: str, psi: dict[str, float], ks: dict[str, float] | None = None,
           model: str = "iris") -> list[Sample]:
    samples = [Sample(logic.PSI_METRIC, {"model": model, "version": version, "feature": f}, v) for f, v in psi.items()]
    samples += [Sample(logic.KS_METRIC, {"model": model, "version": version, "feature": f}, v)
                for f, v in (ks or {}).items()]
    return samples


# ---------------------------------------------------------------- pure


def test_features_take_the_worst_pod_and_sort_by_psi():
    pod_a = gauges("iris-v1", {"sepal_length": 0.05, "petal_length": 0.4}, {"petal_length": 0.3})
    pod_b = gauges("iris-v1", {"sepal_length": 0.15, "petal_length": 0.1}, {"petal_length": 0.5})
    other = gauges("iris-v2", {"sepal_length": 9.0}) + gauges("iris-v1", {"x": 9.0}, model="wine")
    unrelated = [Sample("mlops_inference_requests_total", {"model": "iris", "version": "iris-v1"}, 5.0)]
    features = logic.features_from_samples(pod_a + pod_b + other + unrelated, "iris", "iris-v1")
    assert features == [FeatureDrift(name="petal_length", psi=0.4, ks=0.5),
                        FeatureDrift(name="sepal_length", psi=0.15, ks=None)]


def test_nan_gauges_are_no_measurement():
    assert logic.features_from_samples(gauges("iris-v1", {"a": float("nan")}), "iris", "iris-v1") == []


def test_reading_threshold_and_since():
    t1, t2, t3 = T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)
    calm = logic.reading([FeatureDrift(name="a", psi=0.1)], "iris-v1", 0.25, None, t1)
    assert (calm.drifted, calm.since, calm.max_psi, calm.feature) == (False, None, 0.1, "a")
    at_threshold = logic.reading([FeatureDrift(name="a", psi=0.25)], "iris-v1", 0.25, calm, t1)
    assert at_threshold.drifted is False  # strictly above
    first = logic.reading([FeatureDrift(name="b", psi=0.6), FeatureDrift(name="a", psi=0.1)], "iris-v1", 0.25,
                          calm, t2)
    assert (first.drifted, first.since, first.feature) == (True, stamp(60), "b")
    held = logic.reading([FeatureDrift(name="b", psi=0.3)], "iris-v1", 0.25, first, t3)
    assert (held.drifted, held.since, held.time) == (True, stamp(60), stamp(120))
    # Another version's drift episode is not this one's.
    fresh = logic.reading([FeatureDrift(name="b", psi=0.3)], "iris-v2", 0.25, first, t3)
    assert fresh.since == stamp(120)
    back = logic.reading([FeatureDrift(name="b", psi=0.2)], "iris-v1", 0.25, held, t3)
    assert (back.drifted, back.since) == (False, None)
    assert logic.reading([FeatureDrift(name="a", ks=0.9)], "iris-v1", 0.25, None, t1) is None


def test_features_are_bounded():
    features = [FeatureDrift(name=f"f{i:02d}", psi=i / 100) for i in range(30, 0, -1)]
    status = logic.reading(features, "iris-v1", 0.25, None, T0)
    assert len(status.features) == 20 and status.features[0].name == "f30"


def drift_status(version: str = "iris-v1", minutes: int = 0, psi: float = 0.1) -> DriftStatus:
    return logic.reading([FeatureDrift(name="a", psi=psi)], version, 0.25, None, T0 + timedelta(minutes=minutes))


def test_read_due():
    spec = Drift(interval="1m")
    assert logic.read_due(spec, None, "iris-v1", T0)
    assert not logic.read_due(spec, None, None, T0)  # nothing serves
    assert not logic.read_due(Drift(enabled=False), None, "iris-v1", T0)
    last = drift_status(minutes=0)
    assert not logic.read_due(spec, last, "iris-v1", T0 + timedelta(seconds=59))
    assert logic.read_due(spec, last, "iris-v1", T0 + timedelta(seconds=60))
    # A reading of the previous champion does not pace the new one.
    assert logic.read_due(spec, last, "iris-v2", T0 + timedelta(seconds=1))
    # Before any reading (no traffic yet), the last attempt paces the reads.
    assert not logic.read_due(spec, None, "iris-v1", T0 + timedelta(seconds=30), last_attempt=T0)
    assert logic.read_due(spec, None, "iris-v1", T0 + timedelta(seconds=60), last_attempt=T0)


def test_next_drift_drops_another_versions_reading():
    old = drift_status("iris-v1")
    assert logic.next_drift(old, None, "iris-v1") == old
    assert logic.next_drift(old, None, "iris-v2") is None
    new = drift_status("iris-v2", minutes=1)
    assert logic.next_drift(old, new, "iris-v2") == new


def plan_with(reading: DriftStatus | None, status: dict | None = None, **spec: Any):
    doc = inference_service(champion={"modelVersion": "iris-v1"}, **spec)
    doc["metadata"]["generation"] = 1
    if status is not None:
        doc["status"] = status
    ready = isvc_logic.DeploymentState(version="iris-v1", ready=True)
    observed = isvc_logic.Observed(model_versions=(ModelVersion.model_validate(model_version(1)),),
                                   champion=ready, router=ready, drift=reading)
    return isvc_logic.reconcile(InferenceService.model_validate(doc), observed, T0)


def drifted_condition(plan) -> dict | None:
    return next((c for c in plan.status.get("conditions", []) if c["type"] == "Drifted"), None)


def test_reconcile_writes_drift_status_condition_and_one_event():
    none = plan_with(None)
    assert "drift" not in none.status and drifted_condition(none) is None

    calm = plan_with(drift_status(psi=0.1))
    assert calm.status["drift"]["drifted"] is False
    assert drifted_condition(calm)["status"] == "False" and drifted_condition(calm)["reason"] == "NoDrift"
    assert not [e for e in calm.events if e.reason == "DriftDetected"]

    hot = drift_status(psi=0.7)
    drifted = plan_with(hot, status=calm.status)
    condition = drifted_condition(drifted)
    assert (condition["status"], condition["reason"]) == ("True", "DriftDetected")
    assert condition["message"] == f"iris-v1: feature a PSI 0.7 > 0.25 since {stamp()}"
    assert [(e.reason, e.type) for e in drifted.events if e.reason == "DriftDetected"] == [
        ("DriftDetected", "Warning")]
    # Still drifted at the next reading: no second Event.
    again = plan_with(drift_status(psi=0.8, minutes=1), status=drifted.status)
    assert not [e for e in again.events if e.reason == "DriftDetected"]
    # Nothing new read: the status stays as it was.
    quiet = plan_with(None, status=again.status)
    assert quiet.status["drift"] == again.status["drift"]
    assert drifted_condition(quiet) == drifted_condition(again)


def test_drift_disabled_drops_the_status_and_the_server_flags():
    plan = plan_with(drift_status(psi=0.7), drift={"enabled": False})
    assert "drift" not in plan.status
    server = next(c for c in plan.children if c["metadata"]["name"] == "iris-champion")
    assert "--drift-interval" not in server["spec"]["template"]["spec"]["containers"][0]["args"]


def test_server_args_carry_the_drift_interval_and_window():
    def args(**drift: Any) -> list[str]:
        plan = plan_with(None, drift=drift)
        server = next(c for c in plan.children if c["metadata"]["name"] == "iris-champion")
        return server["spec"]["template"]["spec"]["containers"][0]["args"]

    got = args(interval="1s", window=50)
    cut = got.index("--drift-interval")
    assert got[cut:cut + 6] == ["--drift-interval", "1", "--drift-window", "50", "--drift-min-rows", "50"]
    got = args(interval="1m30s", window=5000)
    assert got[got.index("--drift-interval") + 1] == "90" and "--drift-min-rows" not in got


# ---------------------------------------------------------------- the controller, in memory


@dataclass
class DriftReader:
    """A metrics source with drift gauges (the canary counters are not needed here)."""

    samples: list[Sample] = field(default_factory=list)
    up: bool = True
    drift_reads: list[AnalysisTarget] = field(default_factory=list)

    def read(self, target, time):
        raise MetricsUnavailable("no canary here")

    def router_configs(self, target):
        raise MetricsUnavailable("no canary here")

    def read_drift(self, target: AnalysisTarget) -> list[Sample]:
        self.drift_reads.append(target)
        if not self.up:
            raise MetricsUnavailable("GET http://iris-champion.ml.svc:8080/metrics: connection refused")
        return list(self.samples)


class Harness:
    def __init__(self, **spec: Any) -> None:
        self.now = T0
        self.cluster = InMemoryCluster(now=lambda: self.now)
        doc = model_version(1)
        status = doc.pop("status")
        self.cluster.create(doc)
        self.cluster.patch_status(API, "ModelVersion", NS, "iris-v1", status)
        self.cluster.create(inference_service(champion={"modelVersion": "iris-v1"}, **spec))
        self.reader = DriftReader()
        self.attempts = controller.DriftAttempts()

    def obj(self) -> dict:
        return self.cluster.get(API, "InferenceService", NS, "iris")

    def sync(self, seconds: float = 0) -> dict:
        self.now += timedelta(seconds=seconds)
        controller.sync(self.cluster, self.obj(), self.now, metrics_reader=self.reader, drift_attempts=self.attempts)
        return self.obj().get("status") or {}

    def events(self, reason: str) -> list[dict]:
        return [e for e in self.cluster.list("v1", "Event", NS) if e["reason"] == reason]


def test_controller_reads_drift_at_most_every_interval_and_writes_it_once():
    h = Harness(drift={"interval": "30s", "psiThreshold": 0.2})
    h.sync()
    assert h.reader.drift_reads == []  # no champion in status yet: nothing to read
    status = h.sync()
    assert "drift" not in status and len(h.reader.drift_reads) == 1  # no traffic: no gauges, nothing said
    assert not [c for c in status["conditions"] if c["type"] == "Drifted"]
    h.sync(10)
    assert len(h.reader.drift_reads) == 1  # paced by the last attempt
    h.reader.samples = gauges("iris-v1", {"petal_length": 0.5, "sepal_width": 0.01}, {"petal_length": 0.4})
    status = h.sync(25)
    assert len(h.reader.drift_reads) == 2
    target = h.reader.drift_reads[-1]
    assert (target.champion_service, target.champion_version, target.model) == ("iris-champion", "iris-v1", "iris")
    assert status["drift"] == {
        "time": stamp(35), "version": "iris-v1", "maxPsi": 0.5, "feature": "petal_length",
        "features": [{"name": "petal_length", "psi": 0.5, "ks": 0.4}, {"name": "sepal_width", "psi": 0.01}],
        "threshold": 0.2, "drifted": True, "since": stamp(35),
        "consecutive": 1, "readingsPerDay": 2880.0, "featureCount": 2}
    assert len(h.events("DriftDetected")) == 1
    version = h.obj()["metadata"]["resourceVersion"]
    for _ in range(5):
        h.sync(5)  # within the interval: no read, no write
    assert len(h.reader.drift_reads) == 2 and h.obj()["metadata"]["resourceVersion"] == version
    h.reader.up = False
    status = h.sync(10)  # due, but unreadable: the last reading stays
    assert len(h.reader.drift_reads) == 3 and status["drift"]["time"] == stamp(35)
    h.reader.up = True
    h.reader.samples = gauges("iris-v1", {"petal_length": 0.1})
    status = h.sync(30)
    assert (status["drift"]["drifted"], status["drift"].get("since")) == (False, None)
    drifted = next(c for c in status["conditions"] if c["type"] == "Drifted")
    assert (drifted["status"], drifted["reason"]) == ("False", "NoDrift")
    assert len(h.events("DriftDetected")) == 1


def test_a_restarted_controller_keeps_the_pace_from_status():
    h = Harness(drift={"interval": "1m"})
    h.reader.samples = gauges("iris-v1", {"a": 0.3})
    h.sync()
    h.sync()
    assert len(h.reader.drift_reads) == 1
    h.attempts = controller.DriftAttempts()  # a new process
    h.sync(20)
    assert len(h.reader.drift_reads) == 1
    h.sync(40)
    assert len(h.reader.drift_reads) == 2


def test_drift_disabled_reads_nothing():
    h = Harness(drift={"enabled": False})
    h.reader.samples = gauges("iris-v1", {"a": 0.9})
    assert "drift" not in h.sync()
    assert h.reader.drift_reads == []


def test_a_reader_without_drift_gauges_is_not_an_error():
    class CanaryOnly:
        def read(self, target, time):
            raise MetricsUnavailable("x")

        def router_configs(self, target):
            raise MetricsUnavailable("x")

    h = Harness()
    h.reader = CanaryOnly()  # type: ignore[assignment]
    assert "drift" not in h.sync()


@pytest.mark.parametrize("prometheus", [False, True])
def test_metrics_reader_scrapes_or_queries_the_champion(prometheus):
    """The I/O path: a MetricsReader with an injected opener (what urllib would return)."""
    import io
    import json as jsonlib

    asked: list[str] = []
    text = ('# TYPE mlops_feature_drift_psi gauge\n'
            'mlops_feature_drift_psi{model="iris",version="iris-v1",feature="a"} 0.42\n'
            'mlops_feature_drift_psi{model="iris",version="iris-v2",feature="a"} 0.01\n'
            '# TYPE mlops_inference_in_flight gauge\n'
            'mlops_inference_in_flight{model="iris",version="iris-v1",role="champion"} 0\n')

    def opener(url, timeout):
        asked.append(url)
        if "/api/v1/query" in url:
            value = "0.42" if "drift_psi" in url else "1e-05" if "p_value" in url else "0.3"
            result = [{"metric": {"model": "iris", "version": "iris-v1", "feature": "a"}, "value": [0, value]}]
            return io.BytesIO(jsonlib.dumps({"status": "success", "data": {"result": result}}).encode())
        return io.BytesIO(text.encode())

    reader = controller.MetricsReader(url_for=lambda s, n, p: f"http://{s}.local:{p}", opener=opener)
    target = AnalysisTarget(namespace=NS, service="iris", model="iris", champion_version="iris-v1",
                            challenger_version=None, champion_service="iris-champion",
                            prometheus_url="http://prom:9090" if prometheus else None)
    samples = controller.read_drift_samples(reader, target)
    features = logic.features_from_samples(samples, "iris", "iris-v1")
    assert features[0].name == "a" and features[0].psi == 0.42
    if prometheus:
        assert len(asked) == 3 and all(u.startswith("http://prom:9090/api/v1/query?") for u in asked)
        assert features[0].ks == 0.3 and features[0].p_value == 1e-05
        # The worst pod of a p-value is its smallest.
        assert any("query=min+by" in u and "p_value" in u for u in asked)
    else:
        assert asked == ["http://iris-champion.local:8080/metrics"]


def test_a_psi_over_the_threshold_is_drift_only_when_significant_among_the_features():
    # 30 features, the worst at PSI 0.3 over 0.25: noise on a small window (p = 0.001, times 30
    # features = 0.03, not below the false-alarm rate 0.01), then a real change (p = 1e-6).
    calm = [FeatureDrift(name=f"f{j}", psi=0.1, p_value=0.5) for j in range(29)]
    noisy = logic.reading([FeatureDrift(name="x", psi=0.3, p_value=0.001), *calm], "iris-v1", 0.25, None, T0)
    assert noisy.drifted is False and noisy.p_value == pytest.approx(0.03) and noisy.consecutive == 0
    condition = logic.drift_condition(noisy, False, "iris-v1")
    assert condition[1] == "False" and "not significant (p=0.03 over 30 features): sampling noise" in condition[3]
    real = [FeatureDrift(name="x", psi=0.3, p_value=1e-6), *calm]
    first = logic.reading(real, "iris-v1", 0.25, noisy, T0 + timedelta(minutes=1))
    second = logic.reading(real, "iris-v1", 0.25, first, T0 + timedelta(minutes=2), interval="30s")
    assert (first.drifted, first.consecutive, second.consecutive) == (True, 1, 2)
    assert second.since == first.since and second.readings_per_day == 2880.0
    # A significant feature under the threshold is not drift either.
    small = logic.reading([FeatureDrift(name="x", psi=0.05, p_value=1e-12)], "iris-v1", 0.25, None, T0)
    assert small.drifted is False and small.p_value is None
