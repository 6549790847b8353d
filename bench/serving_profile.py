"""Server CPU per request: our model server (and the HTTP stacks it could sit on) under wrk.

    .venv/bin/python bench/serving_profile.py                      # every case, 10 s each
    .venv/bin/python bench/serving_profile.py --cases onnx,skops --duration 5
    .venv/bin/python bench/serving_profile.py --cases onnx --workers 2 --server-cpus 0,1

req/s on this shared 2-core machine moves by tens of percent with other people's load; the
server's own CPU time per request (utime + stime from /proc, summed over its processes and
threads, divided by the requests wrk completed) barely does, so that is the column to judge a
change by. The server is pinned to `--server-cpus` with taskset, `wrk -t1 -c16` to CPU 1.

Cases: `onnx`, `skops`, `forest` (breast-cancer RandomForest(100), ONNX form), `onnx-binary`
(the V2 binary tensor extension), `v1` (`POST /predict`), `router` (the router in front of the
ONNX server; CPU is the router's alone), and the HTTP floors: `floor-uvicorn`, `floor-granian-asgi`,
`floor-granian-rsgi`, `floor-ours` (mlops_runtime.http_server) (a hello-world app answering every POST with a fixed 64-byte JSON).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "runtime")]

from mlops_runtime.serving_process import ServerProcess, free_port, http_get  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import serving as serving_bench  # the /proc readers of bench/serving.py

LOAD_CPU = 1
CONNECTIONS = 16
CASES = ("floor-ours", "floor-uvicorn", "floor-granian-asgi", "floor-granian-rsgi", "onnx", "onnx-binary", "v1", "skops",
         "forest", "router")

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

FLOOR_APP = '''
import sys
ANSWER = b'{"model_name":"iris","outputs":[{"name":"predict","data":[0]}],"x":1}'
HEADERS = [(b"content-type", b"application/json")]

async def asgi(scope, receive, send):
    if scope["type"] != "http":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})

if __name__ == "__main__":  # floor-ours: mlops_runtime.http_server
    from mlops_runtime.http_server import run
    run(lambda: asgi, [("127.0.0.1", int(sys.argv[1]))])

async def rsgi(scope, protocol):
    await protocol()
    protocol.response_bytes(200, [("content-type", "application/json")], ANSWER)
'''


@dataclass
class Result:
    case: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float


# -- models and bodies ---------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_model(folder: Path, name: str) -> dict[str, str]:
    """A fitted model's skops + ONNX files, signature, baseline and 1-row V2 bodies."""
    import numpy as np
    from sklearn.datasets import load_breast_cancer, load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    from mlops_runtime import baseline, model_io

    loader, estimator = {"iris": (load_iris, LogisticRegression(max_iter=1000)),
                         "cancer": (load_breast_cancer, RandomForestClassifier(n_estimators=100, random_state=0))}[name]
    X, y = loader(return_X_y=True, as_frame=True)
    model = estimator.fit(X, y)
    target = folder / name
    target.mkdir(parents=True, exist_ok=True)
    numeric = list(X.columns)
    classes = [int(c) for c in model.classes_]
    (target / "model.skops").write_bytes(model_io.dump_skops(model))
    (target / "model.onnx").write_bytes(model_io.to_onnx(model, X.head(5), numeric))
    (target / "signature.json").write_text(json.dumps(
        baseline.compute_signature(X, numeric, "classification", "target", classes)))
    (target / "baseline.json").write_text(json.dumps(
        baseline.compute_baseline(X, y, numeric, "classification", classes, 0)))
    row = X.to_numpy()[:1]
    (target / "v2.json").write_text(json.dumps({"inputs": [{"name": "x", "shape": [1, X.shape[1]], "datatype": "FP64",
                                                           "data": row.ravel().tolist()}]}))
    (target / "v1.json").write_text(json.dumps({"instances": row.tolist()}))
    raw = np.ascontiguousarray(row, dtype="<f8").tobytes()
    head = json.dumps({"inputs": [{"name": "x", "shape": [1, X.shape[1]], "datatype": "FP64",
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "parameters": {"binary_data_output": True}}).encode()
    (target / "v2.bin").write_bytes(head + raw)
    return {"folder": str(target), "skops_sha": sha256(target / "model.skops"),
            "onnx_sha": sha256(target / "model.onnx"), "binary_json_length": str(len(head))}


def server_args(model: dict[str, str], name: str, onnx: bool, workers: int) -> list[str]:
    folder = Path(model["folder"])
    args = ["--model-uri", str(folder / "model.skops"), "--sha256", model["skops_sha"], "--name", name,
            "--version", "bench", "--log-level", "warning", "--workers", str(workers)]
    if onnx:
        args += ["--onnx-uri", str(folder / "model.onnx"), "--onnx-sha256", model["onnx_sha"]]
    return args


# -- measuring -----------------------------------------------------------------------------------


def cpu_seconds(root: int) -> float:
    """utime + stime of `root` and its descendants (uvicorn/granian workers), read as
    bench/serving.py reads them."""
    return sum(serving_bench.cpu_seconds(serving_bench.children_of(root)).values())


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(text: str) -> tuple[int, float, float, float, int]:
    """(requests, req/s, p50 ms, p99 ms, errors) from `wrk --latency` output."""
    def percentile(p: str) -> float:
        value, unit = re.search(rf"^\s*{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M).groups()
        return float(value) * UNITS[unit]

    requests = int(re.search(r"(\d+) requests in", text).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return requests, rps, percentile("50"), percentile("99"), errors + (int(non2xx.group(1)) if non2xx else 0)


def run_wrk(url: str, body: Path, seconds: float, script: Path, json_length: str | None) -> str:
    env = {**os.environ, "BENCH_BODY": str(body)}
    if json_length:
        env["BENCH_JSON_LENGTH"] = json_length
    command = ["taskset", "-c", str(LOAD_CPU), "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--latency",
               "-s", str(script), url]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=True)
    return done.stdout


def measure(case: str, root_pid: int, url: str, body: Path, seconds: float, script: Path,
            json_length: str | None = None) -> Result:
    run_wrk(url, body, 1, script, json_length)  # warm-up
    before = cpu_seconds(root_pid)
    requests, rps, p50, p99, errors = parse_wrk(run_wrk(url, body, seconds, script, json_length))
    used = cpu_seconds(root_pid) - before
    return Result(case, rps, p50, p99, errors, used / max(requests, 1) * 1e6)


def wait_answering(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"floor server exited with {process.returncode}")
        try:
            http_get(url, timeout=1)
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(url)


def start_floor(case: str, work: Path, cpus: str) -> tuple[subprocess.Popen[bytes], str]:
    (work / "floor_app.py").write_text(FLOOR_APP)
    port = free_port()
    if case == "floor-ours":
        command = ["floor_app.py", str(port)]
    elif case == "floor-uvicorn":
        command = ["-m", "uvicorn", "floor_app:asgi", "--port", str(port), "--loop", "uvloop", "--http",
                   "httptools", "--no-access-log", "--log-level", "warning"]
    else:
        interface = case.rsplit("-", 1)[1]
        command = ["-m", "granian", f"floor_app:{interface}", "--interface", interface, "--port", str(port),
                   "--loop", "uvloop", "--no-ws", "--log-level", "warning", "--runtime-threads", "1"]
    process = subprocess.Popen(["taskset", "-c", cpus, sys.executable, *command], cwd=work,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v2/models/iris/infer"
    wait_answering(url, process)
    return process, url


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def run_case(case: str, work: Path, models: dict[str, dict[str, str]], args: argparse.Namespace,
             script: Path) -> Result:
    if case.startswith("floor-"):
        process, url = start_floor(case, work, args.server_cpus)
        try:
            return measure(case, process.pid, url, Path(models["iris"]["folder"]) / "v2.json", args.duration, script)
        finally:
            stop(process)
    name = "cancer" if case == "forest" else "iris"
    model = models[name]
    folder = Path(model["folder"])
    server = ServerProcess("mlops_runtime.serve", server_args(model, name, case != "skops", args.workers),
                           log_path=work / f"{case}.log", taskset_cpu=args.server_cpus)
    with server:
        server.wait_ready(timeout=120)
        label = case if args.workers == 1 else f"{case}, {args.workers} workers"
        if case == "router":
            router = ServerProcess("mlops_runtime.router", ["--champion", server.url, "--name", name],
                                   log_path=work / "router.log", taskset_cpu=args.server_cpus)
            with router:
                router.wait_ready(timeout=60)
                return measure(label, router.process.pid, f"{router.url}/v2/models/{name}/infer",
                               folder / "v2.json", args.duration, script)
        path = "/predict" if case == "v1" else f"/v2/models/{name}/infer"
        body = folder / {"v1": "v1.json", "onnx-binary": "v2.bin"}.get(case, "v2.json")
        length = model["binary_json_length"] if case == "onnx-binary" else None
        return measure(label, server.process.pid, server.url + path, body, args.duration, script, length)


def chosen_cases(text: str, known: Iterable[str]) -> list[str]:
    """The comma-separated cases of `text`; exits naming any unknown one (bench/serving_instructions.py too)."""
    known = list(known)
    cases = [c for c in text.split(",") if c]
    unknown = sorted(set(cases) - set(known))
    if unknown:
        sys.exit(f"unknown case(s) {unknown}; known: {', '.join(known)}")
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of wrk per case")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--server-cpus", default="0", help="taskset CPU list for the server (wrk is on CPU 1)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        sys.exit("needs wrk and taskset")
    cases = chosen_cases(args.cases, CASES)
    work = Path(tempfile.mkdtemp(prefix="serving-profile-"))
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    try:
        models = {name: build_model(work / "models", name) for name in ("iris", "cancer")
                  if name == "iris" or "forest" in cases}
        results = [run_case(case, work, models, args, script) for case in cases]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nwrk -t1 -c{CONNECTIONS} -d{args.duration:g}s on CPU {LOAD_CPU}, server on CPU(s) {args.server_cpus}, "
          f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}\n")
    print("| case | req/s | p50 ms | p99 ms | errors | server CPU us/req |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r.case} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} | {r.cpu_us:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
