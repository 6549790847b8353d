"""Serving benchmark: our model server side by side with MLServer and a plain FastAPI server.

    .venv/bin/python bench/serving.py            # 3 runs x 10 s per cell, medians
    .venv/bin/python bench/serving.py --quick    # 1 run x 5 s, a smoke test

Every server gets the same model files (iris LogisticRegression; breast_cancer RandomForest of
100 trees; wine StandardScaler + SVC, a pipeline saved and served as one model), the same
request bytes (an Open Inference Protocol v2 infer body of 1 or 100 rows, as JSON, and for the
"binary V2" rows with the tensor in the binary tensor extension, as tritonclient sends it by
default: FP64 bytes after the JSON header, `Inference-Header-Content-Length`, outputs asked for
in binary) and the same load generator (`wrk -t1 -c16`). Servers are pinned to CPU 0 with `taskset`, wrk
to CPU 1. Each cell (model x rows) is measured on every server back to back, run after run, so
a burst of load from elsewhere hits the servers alike; the medians of the runs are printed as
a Markdown table.

Servers:
- ours (ONNX form): `python -m mlops_runtime.serve` with the ONNX form (parity checked).
- ours (skops form): the same server on the scikit-learn form.
- MLServer 1.7.1 + mlserver-sklearn, default settings (`parallel_workers` 1), and with
  `parallel_workers` 0 (inference in the HTTP process, its fastest setting here).
- FastAPI + uvicorn + scikit-learn: a server of a few lines, for reference (JSON only).
A binary V2 cell a server refuses (any answer but 200 to the first request) shows as
"not supported" with its status, rather than as a speed.
The router's added latency is measured at concurrency 1 and 16: wrk through
`python -m mlops_runtime.router` to ours (ONNX) against wrk straight to it. The router runs on
CPU 1 beside wrk (in a cluster it is its own pod), so the model server keeps CPU 0 to itself
in both measurements.

MLServer pins packages that conflict with ours, so it lives in its own environment under
`.bench/mlserver`, which the benchmark creates on its first run with pip from PyPI
(`mlserver==1.7.1 mlserver-sklearn==1.7.1`, our scikit-learn version; uvloop < 0.22, see
PERFORMANCE.md section 8); nothing needs installing by hand but wrk. It loads
pickled (joblib) models: the benchmark writes the same fitted model as joblib for it and for
the FastAPI reference. Our server loads only the skops and ONNX files. wrk comes from Debian:
`apt-get update && apt-get install -y wrk`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "runtime")]

from mlops_runtime.serving_process import ServerProcess, free_port, http_get  # noqa: E402

BENCH = ROOT / ".bench"
PEER_VENV = BENCH / "mlserver"
PEER_PACKAGES = ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop==0.21.0", "httptools", "fastapi",
                 "uvicorn", "joblib"]
SERVER_CPU, LOAD_CPU = 0, 1
CONCURRENCY = 16
MODELS = ("iris", "cancer", "wine")
MODEL_TITLES = {"iris": "iris LR", "cancer": "cancer RF(100)", "wine": "wine scaler+SVC pipeline"}
ENCODINGS = ("JSON", "binary V2")
BATCHES = (1, 100)

FASTAPI_REFERENCE = '''
import json, os
import joblib, numpy as np
from fastapi import FastAPI, Request

MODELS = {name: joblib.load(path) for name, path in json.loads(os.environ["BENCH_MODELS"]).items()}
app = FastAPI()


@app.get("/v2/health/ready")
async def ready():
    return {"ready": True}


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request):
    tensor = (await request.json())["inputs"][0]
    X = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
    y = MODELS[name].predict(X)
    return {"model_name": name, "outputs": [{"name": "predict", "datatype": "INT64", "shape": [len(y)],
                                             "data": y.tolist()}]}
'''

WRK_SCRIPT = '''
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
local json_length = os.getenv("BENCH_JSON_LENGTH")
if json_length then
  wrk.headers["Content-Type"] = "application/octet-stream"
  wrk.headers["Inference-Header-Content-Length"] = json_length
else
  wrk.headers["Content-Type"] = "application/json"
end
'''


# -- environment -------------------------------------------------------------------------------


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        sys.exit("wrk is not installed: run `apt-get update && apt-get install -y wrk` (Debian), then retry")
    return path


def ensure_peer_env() -> Path:
    """`.bench/mlserver`: MLServer, mlserver-sklearn and FastAPI, with our scikit-learn version."""
    import sklearn

    python = PEER_VENV / "bin" / "python"
    marker = PEER_VENV / ".complete"
    if not marker.exists():
        print(f"creating {PEER_VENV} (first run only)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES,
                        f"scikit-learn=={sklearn.__version__}"], check=True)
        marker.write_text(" ".join(PEER_PACKAGES))
    return python


# -- models --------------------------------------------------------------------------------------


@dataclass
class ModelFiles:
    name: str
    folder: Path
    skops_sha: str
    onnx_sha: str | None
    features: int
    bodies: dict[int, Path] = field(default_factory=dict)
    binary_bodies: dict[int, tuple[Path, int]] = field(default_factory=dict)  # body, JSON header length


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_models(folder: Path) -> dict[str, ModelFiles]:
    import joblib
    import numpy as np
    from sklearn.datasets import load_breast_cancer, load_iris, load_wine
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from mlops_runtime import baseline, model_io

    made = {}
    for name, loader, estimator in (
        ("iris", load_iris, LogisticRegression(max_iter=1000)),
        ("cancer", load_breast_cancer, RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1)),
        ("wine", load_wine, Pipeline([("scaler", StandardScaler()), ("svc", SVC())])),
    ):
        X, y = loader(return_X_y=True, as_frame=True)
        model = estimator.fit(X, y)
        target = folder / name
        target.mkdir(parents=True, exist_ok=True)
        (target / "model.skops").write_bytes(model_io.dump_skops(model))
        joblib.dump(model, target / "model.joblib")  # the peer's format, for the peers only
        numeric = list(X.columns)
        onnx = model_io.to_onnx(model, X.head(5), numeric)
        check = model_io.parity_data(model, X, y, X, numeric, seed=0)  # ties and out-of-range rows too
        parity = model_io.onnx_parity(model, onnx, check.X, numeric) if onnx else {"passed": False}
        onnx_sha = None
        if parity["passed"]:
            (target / "model.onnx").write_bytes(onnx)
            onnx_sha = sha256(target / "model.onnx")
        classes = [int(c) for c in model.classes_]
        (target / "signature.json").write_text(json.dumps(
            baseline.compute_signature(X, numeric, "classification", "target", classes)))
        (target / "baseline.json").write_text(json.dumps(
            baseline.compute_baseline(X, y, numeric, "classification", classes, 0)))
        files = ModelFiles(name, target, sha256(target / "model.skops"), onnx_sha, X.shape[1])
        rows = X.to_numpy()
        for batch in BATCHES:
            picked = rows[np.arange(batch) % len(rows)]
            body = {"inputs": [{"name": "predict", "shape": [batch, X.shape[1]], "datatype": "FP64",
                                "data": picked.ravel().tolist()}]}
            path = folder / f"{name}-{batch}.json"
            path.write_text(json.dumps(body))
            files.bodies[batch] = path
            raw = np.ascontiguousarray(picked, dtype="<f8").tobytes()
            header = json.dumps({"inputs": [{"name": "predict", "shape": [batch, X.shape[1]], "datatype": "FP64",
                                             "parameters": {"binary_data_size": len(raw)}}],
                                 "parameters": {"binary_data_output": True}}).encode()
            binary_path = folder / f"{name}-{batch}.bin"
            binary_path.write_bytes(header + raw)
            files.binary_bodies[batch] = (binary_path, len(header))
        made[name] = files
    return made


# -- servers -------------------------------------------------------------------------------------


@dataclass
class Server:
    label: str
    process: Any  # ServerProcess or Popen
    url: str
    stop_fn: Any = None

    def stop(self) -> None:
        if isinstance(self.process, ServerProcess):
            self.process.stop()
        else:
            stop_popen(self.process)


def stop_popen(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, 15)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait(timeout=10)


def wait_ready(url: str, process: subprocess.Popen[bytes] | None, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url} exited: {log.read_text(errors='replace')[-3000:]}")
        try:
            if http_get(url + "/v2/health/ready", timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready: {log.read_text(errors='replace')[-3000:]}")


def start_ours(label: str, model: ModelFiles, onnx: bool, logs: Path) -> Server:
    args = ["--model-uri", str(model.folder / "model.skops"), "--sha256", model.skops_sha, "--name", model.name,
            "--version", "bench", "--log-level", "warning", "--workers", "1"]
    if onnx and model.onnx_sha:
        args += ["--onnx-uri", str(model.folder / "model.onnx"), "--onnx-sha256", model.onnx_sha]
    proc = ServerProcess("mlops_runtime.serve", args, log_path=logs / f"{label}-{model.name}.log",
                         taskset_cpu=SERVER_CPU).start()
    return Server(label, proc, proc.url)


def start_mlserver(label: str, models: dict[str, ModelFiles], parallel_workers: int, python: Path,
                   logs: Path) -> Server:
    home = Path(tempfile.mkdtemp(prefix="mlserver-", dir=logs.parent))
    repo = home / "models"
    for model in models.values():
        (repo / model.name).mkdir(parents=True)
        shutil.copy(model.folder / "model.joblib", repo / model.name / "model.joblib")
        (repo / model.name / "model-settings.json").write_text(json.dumps({
            "name": model.name, "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib", "version": "v1"}}))
    port = free_port()
    (repo / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "parallel_workers": parallel_workers, "debug": False}))
    empty = home / "cwd"  # MLServer puts its working directory on the import path
    empty.mkdir()
    log = logs / f"{label}.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{python.parent}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    process = subprocess.Popen(["taskset", "-c", str(SERVER_CPU), str(python.parent / "mlserver"), "start",
                                str(repo)], cwd=empty, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process, log)
    for model in models.values():  # the server is ready before its models are
        deadline = time.monotonic() + 120
        while http_get(f"{url}/v2/models/{model.name}/ready", timeout=2)[0] != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(f"MLServer never loaded {model.name}: {log.read_text()[-3000:]}")
            time.sleep(0.2)
    return Server(label, process, url)


def start_fastapi(label: str, models: dict[str, ModelFiles], python: Path, logs: Path) -> Server:
    home = Path(tempfile.mkdtemp(prefix="fastapi-", dir=logs.parent))
    (home / "fastapi_reference.py").write_text(FASTAPI_REFERENCE)
    port = free_port()
    log = logs / f"{label}.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "BENCH_MODELS": json.dumps({m.name: str(m.folder / "model.joblib") for m in models.values()})}
    env.pop("PYTHONPATH", None)
    process = subprocess.Popen(["taskset", "-c", str(SERVER_CPU), str(python), "-m", "uvicorn",
                                "fastapi_reference:app", "--host", "127.0.0.1", "--port", str(port),
                                "--http", "httptools", "--loop", "uvloop", "--workers", "1", "--no-access-log",
                                "--log-level", "warning"], cwd=home, env=env, stdout=open(log, "wb"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process, log)
    return Server(label, process, url)


def start_router(upstream: str, logs: Path) -> Server:
    proc = ServerProcess("mlops_runtime.router", ["--champion", upstream, "--log-level", "warning"],
                         log_path=logs / "router.log", taskset_cpu=LOAD_CPU).start()
    return Server("router", proc, proc.url)


# -- load ----------------------------------------------------------------------------------------

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass
class Cell:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def parse_wrk(text: str) -> Cell:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))

    def percentile(p: str) -> float:
        found = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        return float(found.group(1)) * UNITS[found.group(2)]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    total_errors = int(errors.group(1)) if errors else 0
    if socket_errors:
        total_errors += sum(int(g) for g in socket_errors.groups())
    return Cell(rps, percentile("50"), percentile("99"), total_errors)


def run_wrk(wrk: str, url: str, body: Path, seconds: float, connections: int, script: Path,
            json_length: int | None = None) -> Cell:
    command = ["taskset", "-c", str(LOAD_CPU), wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
               "-s", str(script), url]
    env = {**os.environ, "BENCH_BODY": str(body)}
    if json_length is not None:
        env["BENCH_JSON_LENGTH"] = str(json_length)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr}")
    return parse_wrk(done.stdout)


def refusal(url: str, body: Path, json_length: int) -> str | None:
    """None when the server answers a binary V2 request with 200, else what it answered."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body.read_bytes(), method="POST", headers={
        "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(json_length)})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return None if response.status == 200 else f"{response.status}"
    except urllib.error.HTTPError as error:
        return f"{error.code}"
    except OSError as error:
        return type(error).__name__


def median_cell(cells: list[Cell]) -> Cell:
    return Cell(statistics.median(c.rps for c in cells), statistics.median(c.p50_ms for c in cells),
                statistics.median(c.p99_ms for c in cells), sum(c.errors for c in cells))


def fmt(cell: Cell | str | None) -> str:
    if cell is None:
        return "n/a"
    if isinstance(cell, str):
        return cell
    text = f"{cell.rps:,.0f} req/s, p50 {cell.p50_ms:.2f} / p99 {cell.p99_ms:.2f} ms"
    return text + (f" ({cell.errors} errors)" if cell.errors else "")


def row_label(server: str, encoding: str) -> str:
    return server if encoding == "JSON" else f"{server}, binary V2"


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 run of 5 s per cell (smoke test)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per cell")
    parser.add_argument("--skip-peers", action="store_true", help="only our server and router")
    parser.add_argument("--output", type=Path, default=BENCH / "serving-results.json")
    args = parser.parse_args(argv)
    runs, seconds = (1, 5.0) if args.quick else (args.runs, args.duration)
    wrk = ensure_wrk()
    if os.cpu_count() is None or os.cpu_count() < 2:
        sys.exit("needs 2 CPUs: one for the servers, one for wrk")
    BENCH.mkdir(exist_ok=True)
    for previous in BENCH.glob("serving-*"):  # one run's models and logs are kept, the last one
        if previous.is_dir():
            shutil.rmtree(previous, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix="serving-", dir=BENCH))
    logs = work / "logs"
    logs.mkdir()
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    peer_python = None if args.skip_peers else ensure_peer_env()
    print(f"building models in {work} ...", flush=True)
    models = build_models(work / "models")

    servers: list[Server] = []
    try:
        ours: dict[str, dict[str, Server]] = {"ours (ONNX form)": {}, "ours (skops form)": {}}
        for model in models.values():
            servers.append(start_ours("onnx", model, True, logs))
            ours["ours (ONNX form)"][model.name] = servers[-1]
            servers.append(start_ours("skops", model, False, logs))
            ours["ours (skops form)"][model.name] = servers[-1]
        for per_model in ours.values():
            for server in per_model.values():
                server.process.wait_ready(timeout=120)
        router = start_router(ours["ours (ONNX form)"]["iris"].url, logs)
        servers.append(router)
        router.process.wait_ready(timeout=60)
        targets: dict[str, dict[str, Server]] = dict(ours)
        if peer_python is not None:
            print("starting MLServer and the FastAPI reference ...", flush=True)
            for label, workers in (("MLServer 1.7.1 (default, parallel_workers=1)", 1),
                                   ("MLServer 1.7.1 (parallel_workers=0)", 0)):
                server = start_mlserver(f"mlserver-pw{workers}", models, workers, peer_python, logs)
                servers.append(server)
                targets[label] = {m: server for m in MODELS}
            server = start_fastapi("fastapi", models, peer_python, logs)
            servers.append(server)
            targets["FastAPI + uvicorn + scikit-learn"] = {m: server for m in MODELS}

        cells: dict[tuple[str, str, int], list[Cell]] = {}
        unsupported: dict[tuple[str, str, int], str] = {}
        rows = [(label, encoding) for label in targets for encoding in ENCODINGS
                if encoding == "JSON" or not label.startswith("FastAPI")]
        router_cells: dict[tuple[str, int], list[Cell]] = {}
        loads = [load_average()]
        for run in range(runs):
            print(f"run {run + 1}/{runs} (load average {load_average()})", flush=True)
            for model_name in MODELS:  # each cell measured across all servers back to back
                for batch in BATCHES:
                    for label, encoding in rows:
                        url = f"{targets[label][model_name].url}/v2/models/{model_name}/infer"
                        key = (row_label(label, encoding), model_name, batch)
                        body, json_length = (models[model_name].bodies[batch], None) if encoding == "JSON" \
                            else models[model_name].binary_bodies[batch]
                        if json_length is not None and key not in cells and key not in unsupported:
                            answer = refusal(url, body, json_length)
                            if answer is not None:
                                unsupported[key] = f"not supported (answers {answer})"
                        if key in unsupported:
                            continue
                        run_wrk(wrk, url, body, 1, CONCURRENCY, script, json_length)  # warm-up
                        cells.setdefault(key, []).append(
                            run_wrk(wrk, url, body, seconds, CONCURRENCY, script, json_length))
            for connections in (1, CONCURRENCY):
                for via, base in (("direct", ours["ours (ONNX form)"]["iris"].url), ("router", router.url)):
                    url = f"{base}/v2/models/iris/infer"
                    run_wrk(wrk, url, models["iris"].bodies[1], 1, connections, script)
                    router_cells.setdefault((via, connections), []).append(
                        run_wrk(wrk, url, models["iris"].bodies[1], seconds, connections, script))
            loads.append(load_average())
    finally:
        for server in servers:
            server.stop()

    medians: dict[tuple[str, str, int], Cell | str] = {key: median_cell(value) for key, value in cells.items()}
    medians.update(unsupported)
    router_medians = {key: median_cell(value) for key, value in router_cells.items()}
    print()
    print(f"Serving benchmark: {runs} run(s) x {seconds:g} s per cell, medians; wrk -t1 -c{CONCURRENCY} on CPU "
          f"{LOAD_CPU}, each server on CPU {SERVER_CPU}; load average during the runs: {', '.join(loads)}")
    print()
    print("| server (one core) | " + " | ".join(f"{MODEL_TITLES[m]}, {b} row{'s' if b > 1 else ''}"
                                              for m in MODELS for b in BATCHES) + " |")
    print("|---" * (1 + len(MODELS) * len(BATCHES)) + "|")
    for label, encoding in rows:
        row = [fmt(medians.get((row_label(label, encoding), m, b))) for m in MODELS for b in BATCHES]
        print(f"| {row_label(label, encoding)} | " + " | ".join(row) + " |")
    print()
    print("| router (iris LR, 1 row, ours ONNX behind it) | direct | through the router | added at p50 |")
    print("|---|---|---|---|")
    for connections in (1, CONCURRENCY):
        direct, routed = router_medians[("direct", connections)], router_medians[("router", connections)]
        print(f"| concurrency {connections} | {fmt(direct)} | {fmt(routed)} | "
              f"{routed.p50_ms - direct.p50_ms:+.2f} ms |")
    print()
    verdicts = []
    best = medians[(row_label("ours (ONNX form)", "JSON"), "iris", 1)]
    for label, factor in (("MLServer 1.7.1 (default, parallel_workers=1)", 5), ("FastAPI + uvicorn + scikit-learn", 2)):
        peer = medians.get((row_label(label, "JSON"), "iris", 1))
        if isinstance(peer, Cell):
            verdicts.append(f"iris 1-row: ours {best.rps / peer.rps:.1f}x {label} (target {factor}x)")
    verdicts.append(f"ours p99 at 1 row: {best.p99_ms:.2f} ms (target <= 10 ms)")
    added = router_medians[("router", 1)].p50_ms - router_medians[("direct", 1)].p50_ms
    verdicts.append(f"router added p50 at concurrency 1: {added:.2f} ms (target < 1 ms)")
    for line in verdicts:
        print("- " + line)
    args.output.write_text(json.dumps({
        "runs": runs, "seconds": seconds, "load": loads,
        "cells": [{"server": k[0], "model": k[1], "rows": k[2], **(vars(v) if isinstance(v, Cell) else {"note": v})}
                  for k, v in medians.items()],
        "router": [{"via": k[0], "connections": k[1], **vars(v)} for k, v in router_medians.items()],
    }, indent=2))
    print(f"\nresults: {args.output}; server logs: {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
