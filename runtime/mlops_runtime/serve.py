"""The model server: one model version over the Open Inference Protocol (v2) REST API and a plain
`POST /predict`, with Prometheus metrics, label feedback and drift gauges.

    python -m mlops_runtime.serve --model-uri s3://.../model.skops --sha256 HEX --port 8080 \\
        [--onnx-uri s3://.../model.onnx --onnx-sha256 HEX] [--name iris --version v3 --role champion]

The process starts listening at once and loads the model in the background. Until the artifact
is downloaded, its sha256 verified and the model loaded, `/v2/health/ready` answers 503 with the
reason (and `/v2/health/live` 200). A sha256 mismatch is final: the server logs it, never loads
the bytes, and stays not-ready, so a Kubernetes rollout stalls with the old pods still serving.
S3 being unreachable or the object missing is retried with backoff, the reason shown meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mlops_runtime import batching
from mlops_runtime import drift as drift_mod
from mlops_runtime.http_asgi import (
    INFERENCE_HEADER,
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
    request_id_header,
    request_id_of,
    respond,
    respond_json,
    serve_app,
)
from mlops_runtime.model_io import labels_follow_probabilities
from mlops_runtime.serving_feedback import FeedbackBook, FeedbackError
from mlops_runtime.serving_metrics import FLUSH_SECONDS, ServerMetrics
from mlops_runtime.serving_model import (
    CLASSIFICATION,
    Batch,
    InputError,
    OnnxPredictor,
    Prediction,
    Predictor,
    Signature,
    SklearnPredictor,
    accepts_missing,
    batch_from_instances,
    check_range,
    parity_problem,
    probe_batch,
    quiet_sklearn,
    quiet_sklearn_warnings,
    sklearn_predictor,
    target_tolerance,
)
from mlops_runtime.serving_v2 import (
    BINARY_CONTENT_TYPE,
    OutputTensor,
    batch_from_tensors,
    choose_outputs,
    encode_response,
    output_names,
    parse_document,
    read_request,
    request_id_in,
)

log = logging.getLogger("mlops_runtime.serve")

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
READY_DIR_ENV = "MLOPS_WORKERS_READY_DIR"
READY_MARKER = "ready-"   # + a worker's pid: that worker has loaded its model
ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


@dataclass
class ServeConfig:
    model_uri: str
    sha256: str
    name: str = "model"
    version: str = "0"
    role: str = "champion"
    onnx_uri: str | None = None
    onnx_sha256: str | None = None
    signature_uri: str | None = None
    baseline_uri: str | None = None
    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 1
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    feedback_capacity: int = 100_000
    drift_interval: float = 60.0
    drift_window: int = 10_000
    drift_min_rows: int = 100
    load_retry_max_seconds: float = 30.0
    log_level: str = "info"
    max_batch_rows: int = batching.DEFAULT_MAX_ROWS     # 1 turns batching off (one call per request, as before)
    max_batch_delay_ms: float = batching.DEFAULT_MAX_DELAY_MS
    inference_thread: bool = False   # batch calls on a worker thread instead of the event loop

    def sibling(self, name: str) -> str:
        return self.model_uri.rsplit("/", 1)[0] + "/" + name


# -- reading artifacts ---------------------------------------------------------------------------


class ArtifactRefused(Exception):
    """An artifact that must never be loaded: its sha256 is not the recorded one, or it holds
    types outside the trusted list. Final: the server stays not ready and says why."""


def _local_path(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


class ArtifactReader:
    """Reads `s3://` URIs through the artifact store and plain paths (or file://) from disk."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self._store: Any = None

    def _s3(self) -> Any:
        if self._store is None:
            from mlops_runtime.store import ArtifactStore

            self._store = ArtifactStore.from_env(self.env)
        return self._store

    def verified(self, uri: str, sha256: str) -> bytes:
        if uri.startswith("s3://"):
            from mlops_runtime.store import IntegrityError

            try:
                return self._s3().get_verified(uri, sha256)
            except IntegrityError as error:
                raise ArtifactRefused(str(error)) from None
        data = _local_path(uri).read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256.strip().lower():
            raise ArtifactRefused(f"{uri}: sha256 mismatch, expected {sha256} but the file has {actual}; "
                                  "the artifact was modified or substituted and is refused")
        return data

    def optional_json(self, uri: str) -> dict[str, Any] | None:
        """A JSON side file (signature, baseline), or None when it does not exist."""
        if uri.startswith("s3://"):
            from mlops_runtime.store import ArtifactNotFound

            try:
                return json.loads(self._s3().get_bytes(uri))
            except ArtifactNotFound:
                return None
        path = _local_path(uri)
        return json.loads(path.read_bytes()) if path.exists() else None


def load_skops_bytes(data: bytes) -> Any:
    from mlops_runtime.model_io import UntrustedModelError, load_skops

    try:
        return load_skops(data)
    except UntrustedModelError as error:  # retrying cannot make these bytes safe
        raise ArtifactRefused(str(error)) from None


@dataclass
class LoadedModel:
    signature: Signature
    baseline: dict[str, Any] | None
    predictor: Predictor
    fallback: SklearnPredictor   # takes what the ONNX form cannot (missing values)
    accepts_missing: bool
    note: str                    # why this backend was chosen
    outputs: tuple[str, ...]     # the V2 output names, in order
    # the predict_proba tensor's parameters, built once (orjson only reads them)
    probability_parameters: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.probability_parameters = {"classes": list(self.signature.classes)}


def load_model(config: ServeConfig, reader: ArtifactReader) -> LoadedModel:
    """Verify, load and probe the model version (blocking; run in a thread)."""
    quiet_sklearn_warnings()
    model = load_skops_bytes(reader.verified(config.model_uri, config.sha256))
    signature_doc = reader.optional_json(config.signature_uri or config.sibling("signature.json"))
    if signature_doc is None:
        log.warning("no signature.json next to %s: using the feature count read off the model", config.model_uri)
        signature = Signature.from_model(model)
    else:
        signature = Signature.from_json(signature_doc)
    baseline = reader.optional_json(config.baseline_uri or config.sibling("baseline.json"))
    probe = probe_batch(signature, baseline)
    sk = sklearn_predictor(model, signature, probe)
    missing_ok = accepts_missing(sk, probe, signature)
    outputs = output_names(sk.predict(probe).probabilities is not None)
    predictor: Predictor = sk
    note = "scikit-learn form (no ONNX form given)"
    if config.onnx_uri and config.onnx_sha256:
        onnx_bytes = reader.verified(config.onnx_uri, config.onnx_sha256)
        try:
            onnx = OnnxPredictor(onnx_bytes, signature, labels_follow_probabilities(model))
            problem = parity_problem(sk.predict(probe), onnx.predict(probe), signature.task,
                                     target_tolerance(baseline))
        except Exception as error:  # the ONNX form cannot take these inputs: serve skops
            problem = f"ONNX form cannot run here: {error}"
        if problem is None:
            predictor, note = onnx, "ONNX form (answers like scikit-learn on the probe batch)"
        else:
            note = f"scikit-learn form: {problem}"
            log.warning("not serving the ONNX form: %s", problem)
    return LoadedModel(signature, baseline, predictor, sk, missing_ok, note, outputs)


# -- the ASGI application ------------------------------------------------------------------------


class ModelServer:
    def __init__(self, config: ServeConfig, env: dict[str, str] | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.env = dict(os.environ if env is None else env)
        self.registry = registry or CollectorRegistry()
        self.exposition_registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess, values

            # prometheus_client picks its value class when first imported, which in a forked
            # worker was before the folder was set: pick again so the values go to the files.
            values.ValueClass = values.get_value_class()

            self.exposition_registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.exposition_registry)
        self.loaded: LoadedModel | None = None
        self.not_ready_reason = f"loading {config.model_uri}"
        self.feedback: FeedbackBook | None = None
        self.drift: drift_mod.DriftMonitor | None = None
        self.tasks: list[asyncio.Task[Any]] = []
        self.identity = {"model": config.name, "version": config.version, "role": config.role}
        self.infer_paths = frozenset((f"/v2/models/{config.name}/infer",
                                      f"/v2/models/{config.name}/versions/{config.version}/infer"))
        self.metrics = ServerMetrics(self.registry, config.name, config.version, config.role, [])
        self.observe_call = batching.batch_size_histogram(self.registry, config.name, config.version, config.role)
        self.batcher: batching.Batcher | None = None
        self.http_server: Any = None   # mlops_runtime.http_server.HttpServer, when it serves this app
        # --workers > 1: each worker marks its loaded model here, so readiness speaks for all of them
        folder = os.environ.get(READY_DIR_ENV)
        self.ready_dir = Path(folder) if config.workers > 1 and folder else None

    def bind_http_server(self, server: Any) -> None:
        """Told by mlops_runtime.http_server: its `in_flight` count lets a lone request skip the
        batching queue's extra loop turn (under uvicorn every request queues)."""
        self.http_server = server

    def _ready_marker(self) -> Path:
        """This worker's mark in `ready_dir` (the pid is the worker's: the app is built after the fork)."""
        return self.ready_dir / f"{READY_MARKER}{os.getpid()}"

    # lifecycle

    async def startup(self) -> None:
        if self.config.log_level.lower() != "debug":
            logging.getLogger("mlops_runtime.http_server").setLevel(logging.WARNING)
        self.tasks.append(asyncio.create_task(self._load_until_done()))
        self.tasks.append(asyncio.create_task(self._drift_loop()))
        self.tasks.append(asyncio.create_task(self._flush_metrics_loop()))

    async def shutdown(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.batcher is not None:
            self.batcher.close()
        self.metrics.flush()
        if self.ready_dir is not None:
            self._ready_marker().unlink(missing_ok=True)

    async def _load_until_done(self) -> None:
        delay = 0.5
        reader = ArtifactReader(self.env)
        while True:
            try:
                loaded = await asyncio.to_thread(load_model, self.config, reader)
            except ArtifactRefused as error:
                self.not_ready_reason = f"refused: {error}"
                log.error("model %s %s will not become ready: %s", self.config.name, self.config.version, error)
                return
            except Exception as error:  # S3 down, object missing, bad signature: say why, retry
                self.not_ready_reason = f"cannot load yet ({type(error).__name__}: {error}); retrying"
                log.warning("loading %s failed: %s; retrying in %.1f s", self.config.model_uri, error, delay)
                await asyncio.sleep(delay)
                delay = min(self.config.load_retry_max_seconds, delay * 2)
                continue
            self._install(loaded)
            return

    def _install(self, loaded: LoadedModel) -> None:
        quiet_sklearn()
        signature = loaded.signature
        classes = list(signature.classes) if signature.task == CLASSIFICATION else []
        self.metrics.bind_classes(classes)
        self.feedback = FeedbackBook(signature.task, self.config.feedback_capacity)
        if loaded.baseline:
            self.drift = drift_mod.DriftMonitor(loaded.baseline, list(signature.names), self.config.drift_window,
                                                self.config.drift_min_rows)
        else:
            log.warning("no baseline.json next to %s: drift is not measured", self.config.model_uri)
        if self.config.max_batch_rows > 1:
            self.batcher = batching.Batcher(self.config.max_batch_rows, self.config.max_batch_delay_ms / 1000,
                                            thread=self.config.inference_thread, initializer=quiet_sklearn,
                                            on_call=self.observe_call)
        self.loaded = loaded
        # The model, its libraries and everything loaded so far live as long as the process: out
        # of the cyclic GC's reach, a full collection no longer walks them, which had put 80 ms
        # stalls into the p99 of one-row requests (bench/serving_profile.py: p99 80 -> 15 ms).
        gc.collect()
        gc.freeze()
        self.not_ready_reason = ""
        if self.ready_dir is not None:
            self._ready_marker().touch()
        log.info("model %s version %s (%s) ready: %s%s", self.config.name, self.config.version,
                 self.config.role, loaded.note,
                 f"; onnxruntime threads {loaded.predictor.threads}" if loaded.predictor.backend == "onnx" else "")

    async def _flush_metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            self.metrics.flush()

    async def _drift_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.drift_interval)
            monitor = self.drift
            if monitor is None or self.metrics is None:
                continue
            snapshot = monitor.snapshot()
            try:
                results = await asyncio.to_thread(monitor.compute, snapshot)
            except Exception:  # a malformed baseline must not take the server down
                log.exception("drift computation failed")
                continue
            drift_mod.publish(results, self.metrics.set_psi, self.metrics.set_ks, self.metrics.set_p_value)

    # dispatch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope["path"] in self.infer_paths and scope["method"] == "POST":  # the hot path, routed directly
                return await self.inference(scope, receive, send, v2=True)
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await lifespan(receive, send, self.startup, self.shutdown)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/predict":
            if method != "POST":
                return await self._plain_error(send, 405, "use POST /predict")
            return await self.inference(scope, receive, send, v2=False)
        if path.startswith("/v2/models/"):
            return await self.v2_model(scope, receive, send, path[len("/v2/models/"):], method)
        if path == "/v2/health/live":
            return await respond_json(send, 200, {"live": True})
        if path == "/v2/health/ready":
            return await self.ready(send)
        if path == "/metrics":
            self.metrics.flush()
            return await respond(send, 200, generate_latest(self.exposition_registry),
                                 CONTENT_TYPE_LATEST.encode())
        if path == "/feedback":
            if method != "POST":
                return await self._plain_error(send, 405, "use POST /feedback")
            return await self.post_feedback(scope, receive, send)
        if path in ("/v2", "/v2/"):
            return await respond_json(send, 200, {"name": "mlops-runtime", "version": "0.1.0",
                                                  "extensions": ["binary_tensor_data"]})
        await self._plain_error(send, 404, f"no route {method} {path}")

    async def _plain_error(self, send: Send, status: int, message: str) -> None:
        await respond_json(send, status, error_body(status, message))

    async def ready(self, send: Send) -> None:
        """200 when ready; 400 when not, which the protocol reads as false (tritonclient's
        is_server_ready and is_model_ready, KServe's is_model_ready return False) and a
        Kubernetes readiness probe as a failure."""
        if self.loaded is None:
            return await respond_json(send, 400, {"ready": False, **self.identity, "reason": self.not_ready_reason})
        if self.ready_dir is not None:  # one worker answers for all: ready when every one has loaded
            loaded = workers_ready(self.ready_dir)
            if loaded < self.config.workers:
                return await respond_json(send, 400, {
                    "ready": False, **self.identity,
                    "reason": f"{loaded} of {self.config.workers} worker processes have loaded the model"})
        await respond_json(send, 200, {"ready": True, **self.identity, "backend": self.loaded.predictor.backend})

    async def v2_model(self, scope: Scope, receive: Receive, send: Send, rest: str, method: str) -> None:
        parts = rest.split("/")
        name = parts[0]
        tail = parts[1:]
        if name != self.config.name:
            return await self._plain_error(send, 404, f"model {name!r} is not served here; this server serves "
                                                      f"{self.config.name!r}")
        if tail[:1] == ["versions"]:
            version = tail[1] if len(tail) > 1 else ""
            if version != self.config.version:
                return await self._plain_error(send, 404, f"model {name!r} version {version!r} is not served here; "
                                                          f"this server serves version {self.config.version!r}")
            tail = tail[2:]
        if tail == ["infer"]:
            if method != "POST":
                return await self._plain_error(send, 405, "use POST .../infer")
            return await self.inference(scope, receive, send, v2=True)
        if tail == ["ready"]:
            return await self.ready(send)
        if tail == [] or tail == [""]:
            return await self.metadata(send)
        await self._plain_error(send, 404, f"no route {method} /v2/models/{rest}")

    async def metadata(self, send: Send) -> None:
        loaded = self.loaded
        if loaded is None:
            return await respond_json(send, 503, error_body(503, f"not ready: {self.not_ready_reason}"))
        signature = loaded.signature
        inputs = [{"name": f.name, "datatype": "FP64" if f.kind == "numeric" else "BYTES", "shape": [-1],
                   "parameters": {"kind": f.kind, "dtype": f.dtype,
                                  **({"categories": list(f.categories)} if f.categories else {})}}
                  for f in signature.features]
        outputs = [{"name": "predict", "datatype": _v2_datatype(signature), "shape": [-1]}]
        if "predict_proba" in loaded.outputs:
            outputs.append({"name": "predict_proba", "datatype": "FP64", "shape": [-1, len(signature.classes)]})
        await respond_json(send, 200, {
            "name": self.config.name,
            "versions": [self.config.version],
            "platform": "onnxruntime" if loaded.predictor.backend == "onnx" else "scikit-learn",
            "inputs": inputs,
            "outputs": outputs,
            "parameters": {"role": self.config.role, "task": signature.task, "target": signature.target,
                           "classes": list(signature.classes), "backend": loaded.predictor.backend,
                           "backend_note": loaded.note, "accepts_missing": loaded.accepts_missing,
                           "onnx_threads": getattr(loaded.predictor, "threads", None),
                           "max_batch_rows": self.config.max_batch_rows},
        })

    # inference: the hot path

    async def inference(self, scope: Scope, receive: Receive, send: Send, v2: bool) -> None:
        started = time.perf_counter()
        metrics = self.metrics
        metrics.request_started()
        request_id = request_id_of(scope)
        code = 200
        try:
            loaded = self.loaded
            if loaded is None:
                raise HttpError(503, f"model not ready: {self.not_ready_reason}")
            body = await read_body(scope, receive, self.config.max_body_bytes)
            if v2:
                doc, binary = parse_document(body, header(scope, INFERENCE_HEADER))
                given_id = request_id_in(doc)
                if given_id is not None:  # the protocol's id is echoed as sent, whatever the headers say
                    request_id = given_id
                request = read_request(doc, binary, loaded.signature.names)
                chosen = choose_outputs(loaded.outputs, request)
                batch = batch_from_tensors(request.inputs, loaded.signature)
            else:
                doc = parse_json(body)
                if not isinstance(doc, dict):
                    raise HttpError(400, "request body must be a JSON object")
                if "instances" not in doc:
                    raise HttpError(400, "missing field 'instances': send {\"instances\": [rows or records]}")
                batch = batch_from_instances(doc["instances"], loaded.signature)
            prediction = await self._predict(loaded, batch)
            labels = prediction.labels.tolist()
            self._record(loaded, request_id, batch, prediction, labels)
            headers = request_id_header(request_id)
            if v2:
                payload, header_length = self._v2_response(loaded, request_id, prediction, labels, chosen)
                if header_length is not None:
                    return await respond(send, 200, payload, BINARY_CONTENT_TYPE,
                                         (*headers, (INFERENCE_HEADER, str(header_length).encode())))
            else:
                payload = orjson.dumps(self._predict_response(loaded, request_id, prediction, labels),
                                       option=ORJSON_OPTIONS)
            await respond(send, 200, payload, extra_headers=headers)
        except HttpError as error:
            code = error.status
            await self._inference_error(send, code, error.message, request_id)
        except InputError as error:
            code = 400
            await self._inference_error(send, code, str(error), request_id)
        except Exception:
            code = 500
            log.exception("inference failed (request %.200s)", request_id)
            await self._inference_error(send, code, "internal error while predicting; see the server log",
                                        request_id)
        finally:
            metrics.request_done(code, time.perf_counter() - started)

    async def _inference_error(self, send: Send, status: int, message: str, request_id: str) -> None:
        await respond_json(send, status, error_body(status, message, request_id),
                           extra_headers=request_id_header(request_id))

    async def _predict(self, loaded: LoadedModel, batch: Batch) -> Prediction:
        """Check this request alone (so its errors stay its own), then predict: inline, or
        through the batcher, which may share the call with concurrent requests."""
        predictor = loaded.predictor
        if not batch.plainly_valid():
            predictor = self._checked_predictor(loaded, batch)
        try:
            if self.batcher is not None:
                http = self.http_server
                return await self.batcher.predict(predictor, batch, alone=http is not None and http.in_flight <= 1)
            self.observe_call(batch.rows)
            return predictor.predict(batch)
        except ValueError as error:  # e.g. a category the encoder refuses
            raise InputError(f"the model refused the input: {error}") from None

    def _checked_predictor(self, loaded: LoadedModel, batch: Batch) -> Predictor:
        """The predictor for a batch that may hold missing or out-of-range values (InputError
        when it must be refused)."""
        check_range(batch, loaded.signature)
        missing = batch.has_missing(loaded.signature)
        predictor = loaded.predictor
        if missing is not None:
            if not loaded.accepts_missing:
                row, feature = missing
                raise InputError(f"row {row}: feature {feature!r} is missing (null or NaN) and this model "
                                 "cannot take missing values")
            predictor = loaded.fallback
        return predictor

    def _record(self, loaded: LoadedModel, request_id: str, batch: Batch, prediction: Prediction,
                labels: list[Any]) -> None:
        self.feedback.remember(request_id, labels)
        if self.drift is not None:
            if batch.matrix is not None:
                self.drift.observe_matrix(batch.matrix)
            else:
                self.drift.observe(batch.columns)
        if loaded.signature.task == CLASSIFICATION:
            self.metrics.count_predictions(labels)

    def _predict_response(self, loaded: LoadedModel, request_id: str, prediction: Prediction,
                          labels: list[Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"predictions": labels}
        if prediction.probabilities is not None:
            body["probabilities"] = np.ascontiguousarray(prediction.probabilities, dtype=np.float64)
            body["classes"] = loaded.signature.classes
        body.update(self.identity)
        body["request_id"] = request_id
        return body

    def _v2_response(self, loaded: LoadedModel, request_id: str, prediction: Prediction, labels: list[Any],
                     chosen: list[tuple[str, bool]]) -> tuple[bytes, int | None]:
        outputs = []
        for name, binary in chosen:
            if name == "predict":
                tensor = OutputTensor(name, _v2_datatype(loaded.signature, labels), [len(labels)], labels)
            else:
                probabilities = np.ascontiguousarray(prediction.probabilities, dtype=np.float64)
                tensor = OutputTensor(name, "FP64", list(probabilities.shape), probabilities.ravel(),
                                      loaded.probability_parameters)
            outputs.append((tensor, binary))
        header = {"model_name": self.config.name, "model_version": self.config.version, "id": request_id,
                  "parameters": {"role": self.config.role, "request_id": request_id}}
        return encode_response(header, outputs, ORJSON_OPTIONS)

    # feedback

    async def post_feedback(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if self.loaded is None:
                raise HttpError(503, f"model not ready: {self.not_ready_reason}")
            doc = parse_json(await read_body(scope, receive, self.config.max_body_bytes))
            if isinstance(doc, dict) and "items" in doc:
                status, body = self._feedback_batch(doc["items"])
            elif isinstance(doc, dict) and "request_id" in doc and "label" in doc:
                status, body = self._feedback_one(doc["request_id"], doc["label"])
            else:
                raise HttpError(400, "send {\"request_id\": ID, \"label\": LABEL} or {\"items\": [...]}")
        except HttpError as error:
            return await self._plain_error(send, error.status, error.message)
        await respond_json(send, status, body)

    def _score(self, request_id: Any, label: Any) -> list[str]:
        if not isinstance(request_id, str):
            raise FeedbackError(f"request_id must be a string, got {request_id!r:.40}")
        scored = self.feedback.score(request_id, label)  # KeyError when unknown
        metrics = self.metrics
        for outcome in scored.outcomes:
            metrics.feedback_children[outcome].inc()
        if self.feedback.task == CLASSIFICATION:
            metrics.accuracy_child.set(self.feedback.accuracy)
        else:
            metrics.abs_error_child.set(self.feedback.mean_abs_error)
        return scored.outcomes

    def _summary(self) -> dict[str, Any]:
        book = self.feedback
        if book.task == CLASSIFICATION:
            return {"accuracy": book.accuracy, "scored": book.correct + book.incorrect}
        return {"mean_abs_error": book.mean_abs_error, "scored": book.observed}

    def _feedback_one(self, request_id: Any, label: Any) -> tuple[int, dict[str, Any]]:
        try:
            outcomes = self._score(request_id, label)
        except KeyError:
            return 404, error_body(404, f"unknown request id {request_id!r}: not served by this model version "
                                        f"in its last {self.config.feedback_capacity} requests, or already scored")
        except FeedbackError as error:
            return 400, error_body(400, str(error))
        return 200, {"request_id": request_id, "outcomes": outcomes, **self.identity, **self._summary()}

    def _feedback_batch(self, items: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(items, list) or not items:
            raise HttpError(400, "items must be a non-empty list of {request_id, label}")
        scored, unknown, invalid = 0, [], []
        for k, item in enumerate(items):
            if not isinstance(item, dict) or "request_id" not in item or "label" not in item:
                invalid.append({"index": k, "error": "each item needs request_id and label"})
                continue
            try:
                self._score(item["request_id"], item["label"])
                scored += 1
            except KeyError:
                unknown.append(item["request_id"])
            except FeedbackError as error:
                invalid.append({"index": k, "error": str(error)})
        body = {"scored_items": scored, "unknown": unknown, "invalid": invalid, **self.identity, **self._summary()}
        if scored == 0 and unknown and not invalid:
            return 404, {**body, **error_body(404, f"none of the {len(unknown)} request ids is known here")}
        if scored == 0 and invalid:
            return 400, {**body, **error_body(400, "no item could be scored")}
        return 200, body


def _v2_datatype(signature: Signature, labels: list[Any] | None = None) -> str:
    if signature.task != CLASSIFICATION:
        return "FP64"
    sample = labels[0] if labels else (signature.classes[0] if signature.classes else 0)
    if isinstance(sample, bool):
        return "BOOL"
    if isinstance(sample, int):
        return "INT64"
    if isinstance(sample, float):
        return "FP64"
    return "BYTES"


# -- command line --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> ServeConfig:
    p = argparse.ArgumentParser(prog="python -m mlops_runtime.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-uri", required=True, help="s3://bucket/.../model.skops (or a local path)")
    p.add_argument("--sha256", required=True, help="expected sha256 of the skops artifact")
    p.add_argument("--onnx-uri", help="the ONNX form, served when given with --onnx-sha256")
    p.add_argument("--onnx-sha256")
    p.add_argument("--signature-uri", help="default: signature.json next to the model")
    p.add_argument("--baseline-uri", help="default: baseline.json next to the model")
    p.add_argument("--name", default=os.environ.get("MLOPS_MODEL_NAME", "model"))
    p.add_argument("--version", default=os.environ.get("MLOPS_MODEL_VERSION", "0"))
    p.add_argument("--role", choices=("champion", "challenger"), default="champion")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help="larger request bodies get 413 (default 4 MiB)")
    p.add_argument("--feedback-capacity", type=int, default=100_000,
                   help="how many recent request ids are remembered for feedback")
    p.add_argument("--drift-interval", type=float, default=60.0, help="seconds between drift computations")
    p.add_argument("--drift-window", type=int, default=10_000, help="recent input rows compared with the baseline")
    p.add_argument("--drift-min-rows", type=int, default=100, help="rows needed before drift is reported")
    p.add_argument("--max-batch-rows", type=int,
                   default=int(os.environ.get("MLOPS_MAX_BATCH_ROWS", batching.DEFAULT_MAX_ROWS)),
                   help="rows one inference call may batch from concurrent requests; 1 turns batching off "
                        f"(env MLOPS_MAX_BATCH_ROWS, default {batching.DEFAULT_MAX_ROWS})")
    p.add_argument("--max-batch-delay-ms", type=float,
                   default=float(os.environ.get("MLOPS_MAX_BATCH_DELAY_MS", batching.DEFAULT_MAX_DELAY_MS)),
                   help="longest a batch collects requests behind a running call "
                        f"(env MLOPS_MAX_BATCH_DELAY_MS, default {batching.DEFAULT_MAX_DELAY_MS})")
    p.add_argument("--inference-thread", action="store_true",
                   default=os.environ.get("MLOPS_INFERENCE_THREAD", "") in ("1", "true"),
                   help="run batched calls on a worker thread (worth it with a spare core; env MLOPS_INFERENCE_THREAD)")
    p.add_argument("--log-level", default="info")
    a = p.parse_args(argv)
    if bool(a.onnx_uri) != bool(a.onnx_sha256):
        p.error("--onnx-uri and --onnx-sha256 go together")
    if a.workers < 1:
        p.error("--workers must be at least 1")
    if a.max_batch_rows < 1 or a.max_batch_delay_ms < 0:
        p.error("--max-batch-rows must be at least 1 and --max-batch-delay-ms not negative")
    return ServeConfig(
        model_uri=a.model_uri, sha256=a.sha256, name=a.name, version=a.version, role=a.role,
        onnx_uri=a.onnx_uri, onnx_sha256=a.onnx_sha256, signature_uri=a.signature_uri,
        baseline_uri=a.baseline_uri, host=a.host, port=a.port, workers=a.workers,
        max_body_bytes=a.max_body_bytes, feedback_capacity=a.feedback_capacity,
        drift_interval=a.drift_interval, drift_window=a.drift_window, drift_min_rows=a.drift_min_rows,
        log_level=a.log_level, max_batch_rows=a.max_batch_rows, max_batch_delay_ms=a.max_batch_delay_ms,
        inference_thread=a.inference_thread,
    )


def workers_ready(folder: Path) -> int:
    """How many live worker processes have loaded their model: each leaves `ready-<pid>` in
    `folder`; a dead worker's marker (it was killed, the supervisor starts another) is not counted."""
    count = 0
    for marker in folder.glob(f"{READY_MARKER}*"):
        try:
            os.kill(int(marker.name[len(READY_MARKER):]), 0)
        except (ValueError, ProcessLookupError):
            continue
        except PermissionError:  # alive, and not ours to signal
            pass
        count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    configure_logging(config.log_level)
    own: list[str] = []
    if config.workers > 1:
        # Worker processes are forked: shared folders where prometheus_client aggregates their
        # counters for /metrics and where each marks its model loaded for readiness, whichever
        # worker the scrape or the probe reaches.
        for variable, prefix in (("PROMETHEUS_MULTIPROC_DIR", "mlops-metrics-"), (READY_DIR_ENV, "mlops-ready-")):
            if variable not in os.environ:
                os.environ[variable] = tempfile.mkdtemp(prefix=prefix)
                own.append(variable)
    try:
        serve_app(lambda: ModelServer(config), [(config.host, config.port)], config.workers)
    finally:
        for variable in own:
            shutil.rmtree(os.environ[variable], ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
