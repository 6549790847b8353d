"""Where a request's time goes: each stage of the model server's request path, timed alone in a
hot loop, for a 1-row and a 100-row V2 JSON iris request on the ONNX form.

    .venv/bin/python bench/serving_stages.py
    .venv/bin/python bench/serving_stages.py --calls 5000 --repeat 7

Each stage is called `--calls` times in a row, `--repeat` times; the table shows the fastest
repeat's thread CPU time per call (time.thread_time_ns; the fastest, since a neighbour's load
only ever adds). Hot caches make these figures lower than the same code costs under wrk
(bench/serving_profile.py), where the kernel's loopback TCP and the load generator share the
caches; bench/serving_instructions.py counts the whole path without that noise. "16 at a time"
rows are per request of one call shared by 16 one-row requests (the batcher's case).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "runtime"), str(ROOT / "bench")]


def per_call(stage: Callable[[], Any], calls: int, repeat: int) -> float:
    """Fastest repeat's thread CPU time per call, in microseconds."""
    best = float("inf")
    for _ in range(repeat):
        started = time.thread_time_ns()
        for _ in range(calls):
            stage()
        best = min(best, (time.thread_time_ns() - started) / calls / 1000)
    return best


def stages(folder: Path, rows: int) -> dict[str, Callable[[], Any]]:
    """The request path's stages, each a call on prepared inputs, in the order a request runs them."""
    import numpy as np
    from sklearn.datasets import load_iris

    from mlops_runtime import batching
    from mlops_runtime import serving_v2 as v2
    from mlops_runtime.http_asgi import request_id_header, request_id_of
    from mlops_runtime.serve import ArtifactReader, ModelServer, ServeConfig, load_model

    def sha(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    config = ServeConfig(model_uri=str(folder / "model.skops"), sha256=sha(folder / "model.skops"), name="iris",
                         version="bench", onnx_uri=str(folder / "model.onnx"),
                         onnx_sha256=sha(folder / "model.onnx"), log_level="warning")
    server = ModelServer(config)
    loaded = load_model(config, ArtifactReader({}))
    server._install(loaded)
    data = load_iris().data[:rows]
    body = json.dumps({"inputs": [{"name": "x", "shape": [rows, 4], "datatype": "FP64",
                                   "data": data.ravel().tolist()}]}).encode()
    doc, binary = v2.parse_document(body, None)
    request = v2.read_request(doc, binary, loaded.signature.names)
    chosen = v2.choose_outputs(loaded.outputs, request)
    batch = v2.batch_from_tensors(request.inputs, loaded.signature)
    prediction = loaded.predictor.predict(batch)
    labels = prediction.labels.tolist()
    scope = {"headers": [(b"host", b"127.0.0.1:8080"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
    sixteen = [batch] * 16
    stacked = batching.concat(sixteen)
    stacked_prediction = loaded.predictor.predict(stacked)
    request_ids = iter(range(10**12))
    found: dict[str, Callable[[], Any]] = {
        "request id (header scan, a fresh id)": lambda: request_id_of(scope),
        "body parse (orjson)": lambda: v2.parse_document(body, None),
        "V2 validation (tensors, outputs)": lambda: v2.choose_outputs(
            loaded.outputs, v2.read_request(doc, binary, loaded.signature.names)),
        "numpy conversion (tensors -> batch)": lambda: v2.batch_from_tensors(request.inputs, loaded.signature),
        "range + missing checks": batch.plainly_valid,
        "inference alone (ONNX Runtime)": lambda: loaded.predictor.predict(batch),
        "response build (labels, orjson)": lambda: (
            prediction.labels.tolist(), request_id_header("0" * 32),
            server._v2_response(loaded, "0" * 32, prediction, labels, chosen)),
        "feedback store": lambda: server.feedback.remember(str(next(request_ids)), labels),
        "drift window": lambda: server.drift.observe_matrix(batch.matrix),
        "metrics (code, latency, class counts)": lambda: (
            server.metrics.request_started(), server.metrics.count_predictions(labels),
            server.metrics.request_done(200, 0.001)),
    }
    if rows == 1:
        found["inference, 16 at a time (per request)"] = lambda: loaded.predictor.predict(stacked)
        found["batch stack + split, 16 at a time (per request)"] = lambda: (
            batching.concat(sixteen), batching.split(stacked_prediction, [1] * 16))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per repeat")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    import serving_profile

    work = Path(tempfile.mkdtemp(prefix="serving-stages-"))
    try:
        folder = Path(serving_profile.build_model(work / "models", "iris")["folder"])
        columns = {rows: stages(folder, rows) for rows in (1, 100)}
        timed: dict[str, dict[int, float]] = {}
        for rows, found in columns.items():
            for name, stage in found.items():
                per_request = 16 if "16 at a time" in name else 1
                timed.setdefault(name, {})[rows] = per_call(stage, args.calls, args.repeat) / per_request
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"\nthread CPU per call, fastest of {args.repeat} x {args.calls} calls; load average {load}\n")
    print("| stage | 1 row (us) | 100 rows (us) |")
    print("|---|---:|---:|")
    for name, by_rows in timed.items():
        cells = [f"{by_rows[r]:.2f}" if r in by_rows else "" for r in (1, 100)]
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
