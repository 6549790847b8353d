"""Reads a rollout's analysis inputs from the data plane: the only I/O of the analysis.

Two sources, one result (a `CounterSnapshot` of cumulative counters; the rollout judges
differences between snapshots, so both sources give the same verdicts):

- direct: `GET /metrics` of every router and model-server pod (or of their Services when
  the pods' addresses are not known), summed;
- Prometheus: instant queries of the same counters through the HTTP API
  (`spec.rollout.analysis.prometheusURL`), summed over pods by PromQL. Series are matched by
  the metrics' own labels (`service`, `model`, `version`), and by `namespace` where the scrape
  config adds it; a ServiceMonitor must keep the router's `service` label (`honorLabels: true`).

How the router counts (mlops_runtime.router): a challenger turn that fails (5xx, unreachable,
or skipped while the challenger is unhealthy) is answered by the champion and counted in
`mlops_router_fallbacks_total`. So the challenger's turns are its answered requests plus the
skipped ones, and its errors are the fallbacks: a client never sees them, the analysis does.
In shadow mode the router does not time mirrored calls; the challenger's latency then comes
from its server's `mlops_inference_request_duration_seconds`.

`url_for(service, namespace, port)` turns a Service into a base URL; the default is the
in-cluster DNS name, and local mode injects its own mapping to 127.0.0.1 ports.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .api.inference_service import CounterSnapshot, VariantCounters
from .reconcile.drift import KS_METRIC, P_VALUE_METRIC, PSI_METRIC

UrlFor = Callable[[str, str, int], str]
CHAMPION, CHALLENGER = "champion", "challenger"


def cluster_url_for(service: str, namespace: str, port: int) -> str:
    return f"http://{service}.{namespace}.svc:{port}"


class MetricsUnavailable(Exception):
    """The analysis inputs could not be read; the message says from where and why."""


DRIFT_METRICS = (PSI_METRIC, KS_METRIC, P_VALUE_METRIC)


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class AnalysisTarget:
    """Whose metrics to read. `*_urls` are base URLs of pods; empty means "ask the Service"."""

    namespace: str
    service: str  # the InferenceService; the router's `service` label
    model: str
    champion_version: str | None
    challenger_version: str | None
    mode: str = "canary"
    router_service: str = ""
    champion_service: str = ""
    challenger_service: str = ""
    router_urls: tuple[str, ...] = ()
    champion_urls: tuple[str, ...] = ()
    challenger_urls: tuple[str, ...] = ()
    prometheus_url: str | None = None
    port: int = 8080
    router_token: str | None = field(default=None, repr=False)  # what the routers' /admin/config asks for


def _le(labels: dict[str, str]) -> str:
    bound = float(labels["le"])
    return "+Inf" if math.isinf(bound) else repr(bound)


def parse_exposition(text: str) -> list[Sample]:
    return [Sample(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text) for s in family.samples]


def snapshot_from_samples(samples: Iterable[Sample], target: AnalysisTarget, time: str) -> CounterSnapshot:
    """Sum the samples that concern `target` into one snapshot."""
    variants = {CHAMPION: VariantCounters(), CHALLENGER: VariantCounters()}
    requests = {CHAMPION: 0.0, CHALLENGER: 0.0}
    server_errors = {CHAMPION: 0.0, CHALLENGER: 0.0}
    router_buckets: dict[str, dict[str, float]] = {CHAMPION: {}, CHALLENGER: {}}
    server_buckets: dict[str, dict[str, float]] = {CHAMPION: {}, CHALLENGER: {}}
    feedback = {CHAMPION: [0.0, 0.0], CHALLENGER: [0.0, 0.0]}
    shadow = {"agree": 0.0, "disagree": 0.0, "error": 0.0}
    fallbacks = 0.0
    by_version = {target.champion_version: CHAMPION, target.challenger_version: CHALLENGER}
    by_version.pop(None, None)
    for s in samples:
        labels = s.labels
        if s.name.startswith("mlops_router_"):
            if labels.get("service") != target.service:
                continue
            variant = labels.get("variant")
            if s.name == "mlops_router_requests_total" and variant in requests:
                requests[variant] += s.value
                if labels.get("code", "").startswith("5"):
                    server_errors[variant] += s.value
            elif s.name == "mlops_router_request_duration_seconds_bucket" and variant in router_buckets:
                key = _le(labels)
                router_buckets[variant][key] = router_buckets[variant].get(key, 0.0) + s.value
            elif s.name == "mlops_router_fallbacks_total":
                fallbacks += s.value
            elif s.name == "mlops_router_shadow_total" and labels.get("outcome") in shadow:
                shadow[labels["outcome"]] += s.value
            continue
        if labels.get("model") != target.model or labels.get("version") not in by_version:
            continue
        variant = by_version[labels["version"]]
        if s.name == "mlops_feedback_total":
            if labels.get("outcome") == "correct":
                feedback[variant][0] += s.value
            elif labels.get("outcome") == "incorrect":
                feedback[variant][1] += s.value
        elif s.name == "mlops_inference_request_duration_seconds_bucket":
            key = _le(labels)
            server_buckets[variant][key] = server_buckets[variant].get(key, 0.0) + s.value
    for variant in (CHAMPION, CHALLENGER):
        buckets = router_buckets[variant]
        if target.mode == "shadow" and variant == CHALLENGER:
            buckets = server_buckets[variant]
        turns, errors = requests[variant], server_errors[variant]
        if variant == CHALLENGER:
            # Skipped turns (challenger unhealthy) show only as fallbacks.
            skipped = max(0.0, fallbacks - server_errors[CHALLENGER])
            turns, errors = turns + skipped, max(fallbacks, errors)
        variants[variant] = VariantCounters(requests=turns, errors=errors, latency_buckets=buckets,
                                            feedback_correct=feedback[variant][0],
                                            feedback_incorrect=feedback[variant][1])
    return CounterSnapshot(time=time, champion=variants[CHAMPION], challenger=variants[CHALLENGER],
                           shadow_agree=shadow["agree"], shadow_disagree=shadow["disagree"],
                           shadow_error=shadow["error"], fallbacks=fallbacks)


def _promql_string(value: str) -> str:
    return json.dumps(value)


def drift_queries(target: AnalysisTarget) -> dict[str, str]:
    """Prometheus: the champion's drift gauges, the worst pod per feature, as the direct
    scrape computes it."""
    ns = f'namespace=~{_promql_string(target.namespace + "|")}'
    matcher = f"model={_promql_string(target.model)},version={_promql_string(target.champion_version or '')},{ns}"
    # The worst pod: the highest score, the lowest p-value.
    return {name: f"{'min' if name == P_VALUE_METRIC else 'max'} by (model, version, feature) ({name}{{{matcher}}})"
            for name in DRIFT_METRICS}


def prometheus_queries(target: AnalysisTarget) -> dict[str, str]:
    """Instant queries whose results, turned back into samples, feed `snapshot_from_samples`.
    `namespace=~"ns|"` also matches series without a namespace label."""
    ns = f'namespace=~{_promql_string(target.namespace + "|")}'
    svc = f"service={_promql_string(target.service)}"
    versions = "|".join(v for v in (target.champion_version, target.challenger_version) if v)
    server = f"model={_promql_string(target.model)},version=~{_promql_string(versions)},{ns}"
    return {
        "mlops_router_requests_total": f"sum by (service, variant, code) (mlops_router_requests_total{{{svc},{ns}}})",
        "mlops_router_request_duration_seconds_bucket":
            f"sum by (service, variant, le) (mlops_router_request_duration_seconds_bucket{{{svc},{ns}}})",
        "mlops_router_fallbacks_total": f"sum by (service) (mlops_router_fallbacks_total{{{svc},{ns}}})",
        "mlops_router_shadow_total": f"sum by (service, outcome) (mlops_router_shadow_total{{{svc},{ns}}})",
        "mlops_feedback_total": f"sum by (model, version, outcome) (mlops_feedback_total{{{server}}})",
        "mlops_inference_request_duration_seconds_bucket":
            f"sum by (model, version, le) (mlops_inference_request_duration_seconds_bucket{{{server}}})",
    }


@dataclass
class MetricsReader:
    """Reads snapshots and the routers' effective configs over HTTP."""

    url_for: UrlFor = cluster_url_for
    timeout: float = 3.0
    # Scrape each pod (their IPs listed by the controller) rather than one pod behind a
    # Service; local mode has no pod addresses and sets this False.
    use_pod_ips: bool = False
    opener: Callable[..., Any] = field(default=urllib.request.urlopen, repr=False)

    def _get(self, url: str, token: str | None = None) -> bytes:
        request: Any = url
        if token:
            request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        try:
            with self.opener(request, timeout=self.timeout) as response:
                return response.read()
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise MetricsUnavailable(f"GET {url}: {error}") from None

    def _bases(self, urls: Sequence[str], service: str, target: AnalysisTarget) -> list[str]:
        if urls:
            return list(urls)
        return [self.url_for(service, target.namespace, target.port)] if service else []

    def read(self, target: AnalysisTarget, time: str) -> CounterSnapshot:
        """The current counters; raises MetricsUnavailable."""
        if target.prometheus_url:
            return snapshot_from_samples(self._query_prometheus(target), target, time)
        # The routers' counters carry every verdict on errors and latency: without them there
        # is no reading. A model server that cannot be read (it crashed, say) only leaves its
        # variant's feedback out: the snapshot says so, and the errors still count.
        samples = self._scrape(self._bases(target.router_urls, target.router_service, target))
        missing: list[str] = []
        for variant, urls, service in ((CHAMPION, target.champion_urls, target.champion_service),
                                       (CHALLENGER, target.challenger_urls, target.challenger_service)):
            if variant == CHALLENGER and not target.challenger_version:
                continue
            try:
                samples += self._scrape(self._bases(urls, service, target))
            except MetricsUnavailable:
                missing.append(variant)
        snapshot = snapshot_from_samples(samples, target, time)
        return snapshot.model_copy(update={"missing": missing}) if missing else snapshot

    def _scrape(self, bases: Sequence[str]) -> list[Sample]:
        samples: list[Sample] = []
        for base in bases:
            text = self._get(base.rstrip("/") + "/metrics").decode("utf-8", errors="replace")
            try:
                samples += parse_exposition(text)
            except ValueError as error:
                raise MetricsUnavailable(f"{base}/metrics: unparsable exposition: {error}") from None
        return samples

    def _query_prometheus(self, target: AnalysisTarget) -> list[Sample]:
        return self._prometheus(target, prometheus_queries(target))

    def _prometheus(self, target: AnalysisTarget, queries: Mapping[str, str]) -> list[Sample]:
        """Instant queries at `target.prometheus_url`; each result series becomes a Sample
        named by its key in `queries`."""
        base = (target.prometheus_url or "").rstrip("/")
        samples: list[Sample] = []
        for name, query in queries.items():
            url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
            try:
                doc = json.loads(self._get(url))
            except json.JSONDecodeError as error:
                raise MetricsUnavailable(f"{url}: not JSON: {error}") from None
            if doc.get("status") != "success":
                raise MetricsUnavailable(f"Prometheus query {query!r} failed: {doc.get('error', doc)}")
            for series in doc["data"]["result"]:
                samples.append(Sample(name, dict(series["metric"]), float(series["value"][1])))
        return samples

    def read_drift(self, target: AnalysisTarget) -> list[Sample]:
        """The champion's drift gauges (the worst pod per feature, through Prometheus, or
        every pod's own /metrics); raises MetricsUnavailable."""
        if target.prometheus_url:
            return self._prometheus(target, drift_queries(target))
        bases = self._bases(target.champion_urls, target.champion_service, target)
        return [s for s in self._scrape(bases) if s.name in DRIFT_METRICS]

    def router_configs(self, target: AnalysisTarget) -> list[dict[str, Any]]:
        """What each router pod says it uses (`GET /admin/config`). When the routers cannot be
        reached but Prometheus can, their `mlops_router_weight` gauges stand in: a router
        reporting weight 0 sends no client to the challenger (a shadow copy at most)."""
        configs = []
        try:
            for base in self._bases(target.router_urls, target.router_service, target):
                try:
                    configs.append(json.loads(self._get(base.rstrip("/") + "/admin/config", target.router_token)))
                except json.JSONDecodeError as error:
                    raise MetricsUnavailable(f"{base}/admin/config: not JSON: {error}") from None
        except MetricsUnavailable:
            if not target.prometheus_url:
                raise
            return self._router_weights(target)
        return configs

    def _router_weights(self, target: AnalysisTarget) -> list[dict[str, Any]]:
        ns = f'namespace=~{_promql_string(target.namespace + "|")}'
        query = f"mlops_router_weight{{service={_promql_string(target.service)},{ns}}}"
        return [{"weight": sample.value, "challenger": target.challenger_service if sample.value > 0 else None}
                for sample in self._prometheus(target, {"mlops_router_weight": query})]
