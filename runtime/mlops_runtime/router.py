"""The champion/challenger router: splits inference traffic (canary) or mirrors it (shadow).

    python -m mlops_runtime.router --port 8080 --champion http://iris-champion:8080 \\
        --challenger http://iris-challenger:8080 --weight 10 --mode canary \\
        [--config-file /etc/mlops/router.json] [--name iris] [--sticky-header x-user-id]

Canary: request i (counted by the router) goes to the challenger iff
floor((i+1)*w/100) > floor(i*w/100), so any run of n consecutive requests sends
n*w/100 of them to the challenger, give or take one. With a sticky header, a request carrying
it goes to the challenger iff a hash of its value falls in 0..w-1 of 100 buckets.
Shadow: the champion answers; a copy goes to the challenger afterwards, off the client's path,
and the two predictions are compared and counted.

A challenger that is unhealthy, unreachable or answers 5xx never costs the client: the request
is retried on the champion and counted in `mlops_router_fallbacks_total`.

Weights and mode change at run time from `--config-file` (polled every second; Kubernetes swaps
a ConfigMap volume's symlink, so the path is re-stat'ed, never an open inode), and from
`PUT /admin/config` on the admin listener only. The last change wins.

The control surface is not part of the data plane (docs/security.md):
- the serving port answers prediction, feedback, health and metrics; `GET /admin/config`
  there needs `Authorization: Bearer <admin token>`, and it never accepts a change;
- `PUT /admin/config` is served only on `--admin-port`, bound to `--admin-host` (127.0.0.1 by
  default: reachable through `kubectl port-forward`, not through a Service), and only with the
  token; the router refuses to open that port without one;
- the upstreams a config may name are the ones on the command line (`--champion`,
  `--challenger`, `--upstream`): the operator lists its variants' Services there, so neither
  the file nor the admin API can point the router at any other address.

Feedback (`POST /feedback`) is sent to every variant;
each scores the request ids it served (in shadow mode both do, which gives the challenger an
online accuracy without it answering anyone).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mlops_runtime.http_client import Response, UpstreamError, UpstreamPool
from mlops_runtime.http_asgi import (
    INFERENCE_HEADER,
    JSON,
    HttpError,
    Receive,
    Scope,
    Send,
    configure_logging,
    error_body,
    header,
    lifespan,
    parse_json,
    read_body,
    request_id_of,
    respond,
    respond_json,
    serve_app,
)
from mlops_runtime.serving_metrics import LatencyTally, Tally

log = logging.getLogger("mlops_runtime.router")
disable_created_metrics()

CHAMPION, CHALLENGER = "champion", "challenger"
CANARY, SHADOW = "canary", "shadow"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_SHADOW_IN_FLIGHT = 256
FALLBACK_LOG_SECONDS = 10.0
ADMIN_TOKEN_ENV = "MLOPS_ROUTER_ADMIN_TOKEN"
CONFIG_KEYS = {"champion", "challenger", "weight", "mode", "stickyHeader"}
DEFAULT_ADMIN_HOST = "127.0.0.1"
ADMIN_BODY_BYTES = 64 * 1024


# -- configuration (pure) ------------------------------------------------------------------------


class ConfigError(ValueError):
    """A router configuration that cannot be applied; the message names the field."""


@dataclass(frozen=True)
class RouterConfig:
    champion: str
    challenger: str | None = None
    weight: float = 0.0
    mode: str = CANARY
    sticky_header: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"champion": self.champion, "challenger": self.challenger, "weight": self.weight,
                "mode": self.mode, "stickyHeader": self.sticky_header}


def _url(value: Any, field: str, allowed: frozenset[str] | None = None) -> str:
    """Variants are plain HTTP services inside the cluster (`http://host:port`), and only those
    in `allowed` when it is given (the operator's variants, from the command line)."""
    if not isinstance(value, str) or not value.startswith("http://") or len(value) <= len("http://"):
        raise ConfigError(f"{field} must be an http://host:port URL, got {value!r:.80}")
    url = normalise_upstream(value)
    if allowed is not None and url not in allowed:
        raise ConfigError(f"{field} {url!r:.80} is not one of the upstreams this router was started with "
                          f"({', '.join(sorted(allowed))})")
    return url


def normalise_upstream(url: str) -> str:
    return url.rstrip("/")


def parse_config(doc: Any, base: RouterConfig | None = None,
                 allowed: frozenset[str] | None = None) -> RouterConfig:
    """Validate a router.json document; fields it leaves out keep their value from `base`.
    With `allowed`, champion and challenger must be among those upstream URLs."""
    if not isinstance(doc, dict):
        raise ConfigError("router config must be a JSON object")
    unknown = sorted(set(doc) - CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown}; allowed: {sorted(CONFIG_KEYS)}")
    champion = doc.get("champion", base.champion if base else None)
    if champion is None:
        raise ConfigError("champion is required")
    challenger = doc["challenger"] if "challenger" in doc else (base.challenger if base else None)
    weight = doc.get("weight", base.weight if base else 0.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 100:
        raise ConfigError(f"weight must be a number from 0 to 100, got {weight!r:.40}")
    mode = doc.get("mode", base.mode if base else CANARY)
    if mode not in (CANARY, SHADOW):
        raise ConfigError(f"mode must be 'canary' or 'shadow', got {mode!r:.40}")
    sticky = doc["stickyHeader"] if "stickyHeader" in doc else (base.sticky_header if base else None)
    if sticky is not None and (not isinstance(sticky, str) or not sticky.strip()):
        raise ConfigError("stickyHeader must be a header name or null")
    return RouterConfig(
        champion=_url(champion, "champion", allowed),
        challenger=_url(challenger, "challenger", allowed) if challenger else None,
        weight=float(weight),
        mode=mode,
        sticky_header=sticky.strip().lower() if sticky else None,
    )


def allowed_upstreams(flags: dict[str, Any], extra: list[str]) -> frozenset[str]:
    """The upstreams a config may name: the command line's champion, challenger and
    `--upstream` URLs (each validated as an upstream URL)."""
    urls = [flags[k] for k in ("champion", "challenger") if flags.get(k)] + list(extra)
    return frozenset(_url(url, "--upstream") for url in urls)


def bearer_token_matches(authorization: bytes | None, token: str | None) -> bool:
    """Whether an Authorization header carries `token`; no token configured matches nothing."""
    if not token:
        return False
    given = (authorization or b"").decode("latin-1")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def read_token_file(path: str) -> str:
    """The admin token from a mounted Secret file (a trailing newline is not part of it)."""
    token = Path(path).read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"{path} is empty")
    return token


def live_weight(config: RouterConfig) -> float:
    """The share of requests the challenger answers: 0 without one, or in shadow mode."""
    return config.weight if config.challenger and config.mode == CANARY else 0.0


def challenger_turn(i: int, weight: float) -> bool:
    """Whether request number `i` (0, 1, 2...) goes to the challenger at `weight` percent.
    Weights are kept to 1/100 of a percent so the arithmetic is exact integers."""
    basis_points = round(weight * 100)
    return ((i + 1) * basis_points) // 10_000 > (i * basis_points) // 10_000


def sticky_bucket(value: bytes) -> int:
    """A stable bucket 0..99 for a sticky key (the same on every router replica)."""
    return int.from_bytes(hashlib.blake2b(value, digest_size=8).digest(), "big") % 100


def sticky_turn(value: bytes, weight: float) -> bool:
    return sticky_bucket(value) < weight


def predictions_of(body: bytes, header_length: bytes | None = None) -> Any:
    """The predictions in a /predict or V2 infer response body, or None. A V2 response with
    binary outputs (`header_length` from its Inference-Header-Content-Length) gives the raw
    bytes of its `predict` output, which compare as well as the values."""
    head = body
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            return None
        head = body[:int(header_length)]
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    if "predictions" in doc:
        return doc["predictions"]
    offset = len(head)
    for output in doc.get("outputs") or []:
        if not isinstance(output, dict):
            return None
        size = (output.get("parameters") or {}).get("binary_data_size")
        if output.get("name") == "predict":
            return output.get("data") if size is None else body[offset:offset + size]
        if isinstance(size, int):
            offset += size
    return None


def merge_feedback(results: dict[str, tuple[int, bytes]]) -> tuple[int, bytes]:
    """One answer for feedback sent to every variant: the first variant that scored it wins;
    for a batch, an id is unknown only when no variant knew it."""
    decoded: dict[str, tuple[int, Any]] = {}
    for variant, (status, body) in results.items():
        try:
            decoded[variant] = (status, orjson.loads(body))
        except orjson.JSONDecodeError:
            decoded[variant] = (status, None)
    ok = [v for v in (CHAMPION, CHALLENGER) if v in decoded and decoded[v][0] == 200]
    batch = any(isinstance(doc, dict) and "unknown" in doc for _, doc in decoded.values())
    if not batch:
        chosen = ok[0] if ok else CHAMPION
        status, body = results[chosen]
        return status, body
    unknown_sets = [set(map(str, doc.get("unknown", []))) for _, doc in decoded.values()
                    if isinstance(doc, dict) and "unknown" in doc]
    unknown = sorted(set.intersection(*unknown_sets)) if unknown_sets else []
    merged = {"unknown": unknown,
              "variants": {v: doc for v, (_, doc) in decoded.items()}}
    return (200 if ok else decoded[CHAMPION][0]), orjson.dumps(merged)


# -- metrics -------------------------------------------------------------------------------------


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.service = service
        self.requests = Counter("mlops_router_requests_total", "Requests by the variant that answered them.",
                                ["service", "variant", "code"], registry=registry)
        self.duration = Histogram("mlops_router_request_duration_seconds", "Request latency through the router.",
                                  ["service", "variant"], buckets=LATENCY_BUCKETS, registry=registry)
        self.fallbacks = Counter("mlops_router_fallbacks_total", "Challenger failures answered by the champion.",
                                 ["service"], registry=registry).labels(service)
        self.shadow = Counter("mlops_router_shadow_total", "Shadow comparisons by outcome.",
                              ["service", "outcome"], registry=registry)
        self.weight = Gauge("mlops_router_weight", "Percent of requests sent to the challenger.",
                            ["service"], registry=registry).labels(service)
        self.agreement = Gauge("mlops_router_shadow_agreement_ratio",
                               "Share of shadow comparisons where the predictions agreed.",
                               ["service"], registry=registry).labels(service)
        self.code_children: dict[tuple[str, str], Any] = {}
        self.duration_children = {v: self.duration.labels(service, v) for v in (CHAMPION, CHALLENGER)}
        self.shadow_children = {o: self.shadow.labels(service, o) for o in ("agree", "disagree", "error")}
        for variant in (CHAMPION, CHALLENGER):
            for code in ("200", "400", "404", "500", "502", "503"):
                self.code_children[(variant, code)] = self.requests.labels(service, variant, code)
        self.agreed = 0
        self.compared = 0
        # counted in ints on the request path, added to the metrics at flush (serving_metrics)
        self.tally = Tally()
        self.latency = {v: LatencyTally(child) for v, child in self.duration_children.items()}

    def answered(self, variant: str, code: int, seconds: float) -> None:
        key = (variant, str(code))
        child = self.code_children.get(key)
        if child is None:
            child = self.code_children[key] = self.requests.labels(self.service, variant, key[1])
        self.tally.add(child)
        self.latency[variant].observe(seconds)

    def flush(self) -> None:
        self.tally.flush()
        for latency in self.latency.values():
            latency.flush()

    def shadow_outcome(self, outcome: str) -> None:
        self.shadow_children[outcome].inc()
        if outcome in ("agree", "disagree"):
            self.compared += 1
            self.agreed += outcome == "agree"
            self.agreement.set(self.agreed / self.compared)


# -- the ASGI application ------------------------------------------------------------------------


@dataclass
class RouterSettings:
    config: RouterConfig
    name: str = "model"
    host: str = "0.0.0.0"
    port: int = 8080
    config_file: str | None = None
    config_poll_seconds: float = 1.0
    health_interval: float = 2.0
    upstream_timeout: float = 10.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    admin_token: str | None = None
    admin_token_file: str | None = None
    admin_host: str = DEFAULT_ADMIN_HOST
    admin_port: int | None = None  # no admin listener unless asked for
    allowed_upstreams: frozenset[str] | None = None
    log_level: str = "info"


class Router:
    def __init__(self, settings: RouterSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.config = settings.config
        self.registry = registry or CollectorRegistry()
        self.metrics = RouterMetrics(self.registry, settings.name)
        self.metrics.weight.set(live_weight(self.config))
        self.pool = UpstreamPool(settings.upstream_timeout)
        self.counter = 0
        self.challenger_healthy = True
        self.config_stamp: tuple[int, int, int] | None = None
        self.shadow_tasks: set[asyncio.Task[None]] = set()
        self.tasks: list[asyncio.Task[Any]] = []
        self.last_fallback_log = -math.inf

    # lifecycle

    async def startup(self) -> None:
        if self.settings.log_level.lower() != "debug":
            logging.getLogger("mlops_runtime.http_server").setLevel(logging.WARNING)
        if self.settings.config_file:
            self.reload_config_file()
            self.tasks.append(asyncio.create_task(self._watch_config_file()))
        self.tasks.append(asyncio.create_task(self._watch_challenger_health()))
        if not self.settings.admin_token:
            log.warning("no admin token (--admin-token-file or %s): GET /admin/config answers 401 to everyone",
                        ADMIN_TOKEN_ENV)

    async def shutdown(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, *self.shadow_tasks, return_exceptions=True)
        self.pool.close()

    def apply(self, config: RouterConfig, source: str) -> None:
        if config != self.config:
            log.info("router config from %s: %s", source, json.dumps(config.to_json()))
            if config.challenger != self.config.challenger:
                self.challenger_healthy = True  # a new challenger gets its chance
        self.config = config
        self.metrics.weight.set(live_weight(config))

    def reload_config_file(self) -> None:
        path = self.settings.config_file
        try:
            stat = os.stat(path)  # follows the ConfigMap's ..data symlink to the current file
        except FileNotFoundError:
            if self.config_stamp is not None:
                log.warning("config file %s disappeared; keeping the current config", path)
            self.config_stamp = None
            return
        stamp = (stat.st_mtime_ns, stat.st_ino, stat.st_size)
        if stamp == self.config_stamp:
            return
        self.config_stamp = stamp
        try:
            config = parse_config(json.loads(Path(path).read_text()), base=self.config,
                                  allowed=self.settings.allowed_upstreams)
        except (OSError, ValueError) as error:
            log.error("config file %s not applied: %s", path, error)
            return
        self.apply(config, f"file {path}")

    async def _watch_config_file(self) -> None:
        while True:
            await asyncio.sleep(self.settings.config_poll_seconds)
            self.reload_config_file()

    async def _watch_challenger_health(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval)
            url = self.config.challenger
            if url is None:
                continue
            try:
                answer = await self.pool.call("GET", url, "/v2/health/ready", None, {})
                healthy = answer.status == 200
            except UpstreamError:
                healthy = False
            if healthy != self.challenger_healthy:
                log.warning("challenger %s is now %s", url, "healthy" if healthy else "unhealthy")
            self.challenger_healthy = healthy

    # dispatch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await lifespan(receive, send, self.startup, self.shutdown)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if self.on_admin_listener(scope) and path != "/admin/config":
            return await respond_json(send, 404, error_body(404, "the admin port serves /admin/config only"))
        if method == "POST" and (path == "/predict" or (path.startswith("/v2/models/") and path.endswith("/infer"))):
            return await self.route(scope, receive, send)
        if path == "/v2/health/live":
            return await respond_json(send, 200, {"live": True})
        if path == "/v2/health/ready":
            return await self.ready(send)
        if path == "/metrics":
            self.metrics.flush()
            return await respond(send, 200, generate_latest(self.registry), CONTENT_TYPE_LATEST.encode())
        if path == "/admin/config":
            return await self.admin_config(scope, receive, send, method)
        if path == "/feedback" and method == "POST":
            return await self.feedback(scope, receive, send)
        if method == "GET" and path.startswith("/v2"):
            return await self.pass_to_champion(scope, send, path)
        await respond_json(send, 404, error_body(404, f"no route {method} {path}"))

    async def ready(self, send: Send) -> None:
        try:
            answer = await self.pool.call("GET", self.config.champion, "/v2/health/ready", None, {})
        except UpstreamError as error:
            return await respond_json(send, 400, {"ready": False, "reason": f"champion unreachable: {error}"})
        if answer.status == 200:
            return await respond_json(send, 200, {"ready": True, "champion": self.config.champion})
        # 4xx: what the V2 protocol (and tritonclient) read as "not ready", as the model server does
        await respond_json(send, 400, {"ready": False, "reason": f"champion not ready ({answer.status})",
                                       "champion": answer.body.decode(errors="replace")[:500]})

    async def pass_to_champion(self, scope: Scope, send: Send, path: str) -> None:
        try:
            answer = await self.pool.call("GET", self.config.champion, path, None, {})
        except UpstreamError as error:
            return await respond_json(send, 502, error_body(502, f"champion unreachable: {error}"))
        await respond(send, answer.status, answer.body, answer.content_type)

    # the hot path

    def choose(self, config: RouterConfig, scope: Scope) -> str:
        if config.challenger is None or config.mode != CANARY or config.weight <= 0:
            return CHAMPION
        if config.sticky_header:
            key = header(scope, config.sticky_header.encode())
            if key is not None:
                return CHALLENGER if sticky_turn(key, config.weight) else CHAMPION
        i = self.counter
        self.counter = i + 1
        return CHALLENGER if challenger_turn(i, config.weight) else CHAMPION

    async def route(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = request_id_of(scope)
        rid_header = (b"x-request-id", request_id.encode())
        try:
            body = await read_body(scope, receive, self.settings.max_body_bytes)
        except HttpError as error:
            return await respond_json(send, error.status, error_body(error.status, error.message, request_id),
                                      (rid_header,))
        config = self.config
        path = scope["path"]
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("latin-1")
        # The body is passed on untouched: a V2 body's `id` reaches the server, which echoes it
        # (the header below is the id only for a body without one).
        headers = {"content-type": (header(scope, b"content-type") or JSON).decode("latin-1"),
                   "x-request-id": request_id}
        binary_header = header(scope, INFERENCE_HEADER)
        if binary_header is not None:
            headers["inference-header-content-length"] = binary_header.decode("latin-1")
        variant = self.choose(config, scope)
        if variant == CHALLENGER:
            if self.challenger_healthy:
                try:
                    answer = await self.pool.call("POST", config.challenger, path, body, headers)
                    self.metrics.answered(CHALLENGER, answer.status, time.perf_counter() - started)
                    if answer.status < 500:
                        return await self._answer(send, answer, CHALLENGER)
                    self.log_fallback(f"challenger answered {answer.status}")
                except UpstreamError as error:
                    self.metrics.answered(CHALLENGER, 502, time.perf_counter() - started)
                    self.challenger_healthy = False  # until the health check sees it ready again
                    self.log_fallback(f"challenger unreachable ({error})")
            self.metrics.fallbacks.inc()
        try:
            answer = await self.pool.call("POST", config.champion, path, body, headers)
        except UpstreamError as error:
            self.metrics.answered(CHAMPION, 502, time.perf_counter() - started)
            return await respond_json(send, 502, error_body(502, f"champion unreachable: {error}", request_id),
                                      (rid_header,))
        self.metrics.answered(CHAMPION, answer.status, time.perf_counter() - started)
        await self._answer(send, answer, CHAMPION)
        if config.mode == SHADOW and config.challenger and answer.status < 300:
            self._mirror(config.challenger, path, body, headers, answer)

    def log_fallback(self, why: str) -> None:
        """At most one line per `FALLBACK_LOG_SECONDS`: a broken challenger must not flood the log."""
        now = time.monotonic()
        if now - self.last_fallback_log >= FALLBACK_LOG_SECONDS:
            self.last_fallback_log = now
            log.warning("%s; its requests are answered by the champion (see mlops_router_fallbacks_total)", why)

    async def _answer(self, send: Send, answer: Response, variant: str) -> None:
        """The variant's answer as it gave it: its `x-request-id` is the id it settled on (a V2
        body's own `id` wins over the header), and a binary V2 answer keeps its
        Inference-Header-Content-Length."""
        await respond(send, answer.status, answer.body, answer.content_type,
                      (*answer.relayed, (b"x-mlops-variant", variant.encode())))

    def _mirror(self, url: str, path: str, body: bytes, headers: dict[str, str], champion: Response) -> None:
        if not self.challenger_healthy or len(self.shadow_tasks) >= MAX_SHADOW_IN_FLIGHT:
            self.metrics.shadow_outcome("error")
            return
        task = asyncio.create_task(self._shadow(url, path, body, headers, champion))
        self.shadow_tasks.add(task)
        task.add_done_callback(self.shadow_tasks.discard)

    async def _shadow(self, url: str, path: str, body: bytes, headers: dict[str, str],
                      champion: Response) -> None:
        try:
            answer = await self.pool.call("POST", url, path, body, headers)
        except UpstreamError:
            self.challenger_healthy = False
            self.metrics.shadow_outcome("error")
            return
        if answer.status >= 300:
            self.metrics.shadow_outcome("error")
            return
        expected = predictions_of(champion.body, champion.header(INFERENCE_HEADER))
        got = predictions_of(answer.body, answer.header(INFERENCE_HEADER))
        if got is None:
            self.metrics.shadow_outcome("error")
        else:
            self.metrics.shadow_outcome("agree" if got == expected else "disagree")

    # feedback and admin

    async def feedback(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await read_body(scope, receive, self.settings.max_body_bytes)
        except HttpError as error:
            return await respond_json(send, error.status, error_body(error.status, error.message))
        config = self.config
        targets = {CHAMPION: config.champion}
        if config.challenger:
            targets[CHALLENGER] = config.challenger
        headers = {"content-type": "application/json"}
        calls = [self.pool.call("POST", url, "/feedback", body, headers) for url in targets.values()]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        results: dict[str, tuple[int, bytes]] = {}
        for variant, answer in zip(targets, answers):
            if isinstance(answer, Response):
                results[variant] = (answer.status, answer.body)
            else:
                results[variant] = (502, orjson.dumps(error_body(502, f"{variant} unreachable: {answer}")))
        status, merged = merge_feedback(results)
        await respond(send, status, merged)

    def admin_authorized(self, authorization: bytes | None) -> bool:
        if bearer_token_matches(authorization, self.settings.admin_token):
            return True
        # The operator makes a deleted Secret anew, with a new token, and the kubelet updates
        # the mounted file: a token that does not match is checked against the file once more.
        path = self.settings.admin_token_file
        if not path:
            return False
        try:
            fresh = read_token_file(path)
        except (OSError, ValueError):
            return False
        if fresh != self.settings.admin_token:
            log.warning("admin token changed in %s", path)
            self.settings.admin_token = fresh
        return bearer_token_matches(authorization, fresh)

    def on_admin_listener(self, scope: Scope) -> bool:
        """Whether the request came in on the admin port (never true without one)."""
        server = scope.get("server") or (None, None)
        return self.settings.admin_port is not None and server[1] == self.settings.admin_port

    async def admin_config(self, scope: Scope, receive: Receive, send: Send, method: str) -> None:
        if method not in ("GET", "PUT"):
            return await respond_json(send, 405, error_body(405, "use GET or PUT /admin/config"))
        if method == "PUT" and not self.on_admin_listener(scope):
            return await respond_json(send, 405, error_body(
                405, "the serving port accepts no config change: the operator writes the router's ConfigMap "
                     "(PUT /admin/config is served on the admin port, on localhost, with the admin token)"))
        if not self.admin_authorized(header(scope, b"authorization")):
            return await respond_json(send, 401, error_body(401, f"{method} /admin/config needs "
                                                                 "'Authorization: Bearer <admin token>'"))
        if method == "GET":
            return await respond_json(send, 200, self._config_view())
        try:
            doc = parse_json(await read_body(scope, receive, ADMIN_BODY_BYTES))
            config = parse_config(doc, base=self.config, allowed=self.settings.allowed_upstreams)
        except HttpError as error:
            return await respond_json(send, error.status, error_body(error.status, error.message))
        except ConfigError as error:
            return await respond_json(send, 400, error_body(400, str(error)))
        self.apply(config, "PUT /admin/config")
        await respond_json(send, 200, self._config_view())

    def _config_view(self) -> dict[str, Any]:
        return {**self.config.to_json(), "challengerHealthy": self.challenger_healthy,
                "configFile": self.settings.config_file, "requestsCounted": self.counter}


# -- command line --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> RouterSettings:
    p = argparse.ArgumentParser(prog="python -m mlops_runtime.router", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--champion", help="champion base URL, e.g. http://iris-champion:8080")
    p.add_argument("--challenger", help="challenger base URL")
    p.add_argument("--weight", type=float, default=0.0, help="percent of requests for the challenger (canary)")
    p.add_argument("--mode", choices=(CANARY, SHADOW), default=CANARY)
    p.add_argument("--sticky-header", help="route by a hash of this request header's value when present")
    p.add_argument("--config-file", help="router.json to watch; its fields override the flags")
    p.add_argument("--name", default=os.environ.get("MLOPS_SERVICE_NAME", "model"), help="service label")
    p.add_argument("--upstream-timeout", type=float, default=10.0)
    p.add_argument("--health-interval", type=float, default=2.0, help="seconds between challenger health checks")
    p.add_argument("--config-poll", type=float, default=1.0, help="seconds between config file checks")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    p.add_argument("--upstream", action="append", default=[], metavar="URL",
                   help="another upstream a config may name (repeatable); besides these, only --champion and "
                        "--challenger")
    p.add_argument("--admin-token", default=os.environ.get(ADMIN_TOKEN_ENV),
                   help=f"the token /admin/config requires as 'Authorization: Bearer TOKEN' (or {ADMIN_TOKEN_ENV})")
    p.add_argument("--admin-token-file", help="read the admin token from this file (a mounted Secret)")
    p.add_argument("--admin-port", type=int, help="serve PUT /admin/config on this port (needs a token)")
    p.add_argument("--admin-host", default=DEFAULT_ADMIN_HOST,
                   help="address of the admin port (default 127.0.0.1: not reachable through a Service)")
    p.add_argument("--log-level", default="info")
    a = p.parse_args(argv)
    doc: dict[str, Any] = {k: v for k, v in (("champion", a.champion), ("challenger", a.challenger),
                                             ("weight", a.weight), ("mode", a.mode),
                                             ("stickyHeader", a.sticky_header)) if v is not None}
    if a.config_file and Path(a.config_file).exists():
        try:
            doc.update(json.loads(Path(a.config_file).read_text()))
        except (OSError, ValueError) as error:
            p.error(f"--config-file {a.config_file}: {error}")
    token = a.admin_token or None
    if a.admin_token_file:
        try:
            token = read_token_file(a.admin_token_file)
        except (OSError, ValueError) as error:
            p.error(f"--admin-token-file: {error}")
    if a.admin_port is not None and not token:
        p.error("--admin-port needs an admin token (--admin-token-file, --admin-token or "
                f"{ADMIN_TOKEN_ENV}): the admin API is never open without one")
    if a.admin_port is not None and a.admin_port == a.port:
        p.error("--admin-port must differ from --port: the serving port accepts no config change")
    try:
        allowed = allowed_upstreams({"champion": a.champion, "challenger": a.challenger}, a.upstream)
        config = parse_config(doc, allowed=allowed)
    except ConfigError as error:
        p.error(str(error))
    return RouterSettings(config=config, name=a.name, host=a.host, port=a.port, config_file=a.config_file,
                          config_poll_seconds=a.config_poll, health_interval=a.health_interval,
                          upstream_timeout=a.upstream_timeout, max_body_bytes=a.max_body_bytes,
                          admin_token=token, admin_token_file=a.admin_token_file, admin_host=a.admin_host,
                          admin_port=a.admin_port,
                          allowed_upstreams=allowed, log_level=a.log_level)


def serve_router(router: Router, settings: RouterSettings) -> None:
    """The serving port, and the admin port beside it when one is asked for: one server, two
    sockets; a request's `scope["server"]` tells which one it came in on."""
    addresses = [(settings.host, settings.port)]
    if settings.admin_port is not None:
        addresses.append((settings.admin_host, settings.admin_port))
    serve_app(lambda: router, addresses)


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    configure_logging(settings.log_level)
    serve_router(Router(settings), settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
