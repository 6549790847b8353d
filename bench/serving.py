"""Serving benchmark: our model server beside MLServer and a bare Starlette floor, in figures
that cannot flatter.

    .venv/bin/python bench/serving.py                      # the full run, about 12 minutes
    .venv/bin/python bench/serving.py --quick              # 2 s warm-up + 5 s per case, a smoke test
    .venv/bin/python bench/serving.py --only batching,router

Every case reports requests/s, p50/p99 **and the server's CPU time per request**: utime +
stime from /proc/<pid>/stat (which already includes every thread of the process, the exited
ones too) of each of the server's processes, its children included (MLServer's inference
worker, uvicorn's workers), read before and after the measured wrk run, divided by the 2xx
answers wrk counted. CPU per request is the steadier figure on a shared machine: req/s falls
when a neighbour takes the core, CPU per request mostly does not.

A case fails (shown as FAIL with the reason, never as a speed) when wrk saw any non-2xx
answer or socket error. It is flagged when any thread of the server may run on a core other
than the pinned one (Cpus_allowed_list of every /proc/<pid>/task/<tid>/status), or when the
server's CPU time exceeds the wall time x the cores it may use (it then ran on more cores
than the case says). Only 2xx answers count towards requests/s.

Tables (`--only main,workers,batching,router`):
- main: rows = servers, columns = iris LogisticRegression 1 / 100 rows, breast_cancer
  RandomForest(100) 1 / 100 rows; `wrk -t1 -c16` on CPU 1, the server pinned to CPU 0.
  Servers: ours (ONNX form), ours (skops form), MLServer 1.7.1 + mlserver-sklearn with its
  default settings, and Starlette + uvicorn + httptools calling `predict`: the bare floor.
- workers: ours (ONNX form), iris 1 row, `--workers` 1 against 2, server and wrk on both cores.
- batching: the forest, 1 row, 64 connections: ours with batching off (`--max-batch-rows 1`)
  and on (the default), on both forms, against MLServer with its adaptive batching on
  (`max_batch_size` 64, `max_batch_time` 2 ms); then ours at 1 connection, off against on
  (two alternated rounds each, the better kept), for the check that batching leaves a lone
  request's p50 alone.
- router: ours (ONNX form) on iris, 1 row, alone and behind `python -m mlops_runtime.router`
  (on CPU 1 beside wrk, as its own pod would be), at 1 and 16 connections; CPU per request is
  the champion's plus the router's.
The last line is the issue's targets with pass/fail.

The ONNX Runtime thread settings our server runs with are read from its model metadata
(`parameters.onnx_threads`) and printed with the thread count of its process.

MLServer pins packages that conflict with ours, so it (and Starlette) lives in its own
environment under `.bench/mlserver`, which the benchmark creates on its first run with pip
from PyPI (`mlserver==1.7.1 mlserver-sklearn==1.7.1`, our scikit-learn version; uvloop < 0.22,
see PERFORMANCE.md section 8). It loads pickled (joblib) models: the benchmark writes the same
fitted model as joblib for the peers. Our server loads only the skops and ONNX files. wrk comes
from Debian: `apt-get update && apt-get install -y wrk`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "runtime")]

from mlops_runtime.serving_process import free_port, http_get  # noqa: E402

BENCH = ROOT / ".bench"
PEER_VENV = BENCH / "mlserver"
PEER_PACKAGES = ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop==0.21.0", "httptools", "starlette",
                 "uvicorn", "joblib"]
SERVER_CPU, LOAD_CPU, BOTH = "0", "1", "0-1"
CONCURRENCY, BATCH_CONCURRENCY = 16, 64
C1_ROUNDS = 2  # alternated off/on rounds of the 1-connection batching check
MODELS = ("iris", "cancer")
MODEL_TITLES = {"iris": "iris LR", "cancer": "cancer RF(100)"}
ROWS = (1, 100)
TABLES = ("main", "workers", "batching", "router")
WRK_TIMEOUT_S = 10  # a slow answer is measured (p99), not dropped from the latencies as a timeout
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

STARLETTE_FLOOR = '''
import json, os
import joblib, numpy as np
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

MODELS = {name: joblib.load(path) for name, path in json.loads(os.environ["BENCH_MODELS"]).items()}


async def ready(request):
    return JSONResponse({"ready": True})


async def infer(request):
    name = request.path_params["name"]
    tensor = (await request.json())["inputs"][0]
    X = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
    y = MODELS[name].predict(X)
    return JSONResponse({"model_name": name, "outputs": [{"name": "predict", "datatype": "INT64",
                                                          "shape": [len(y)], "data": y.tolist()}]})


app = Starlette(routes=[Route("/v2/health/ready", ready), Route("/v2/models/{name}/infer", infer, methods=["POST"])])
'''

WRK_SCRIPT = '''
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
wrk.headers["Content-Type"] = "application/json"
f:close()
'''


# -- /proc: CPU time, processes, affinity (pure readers) -----------------------------------------


def children_of(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int(stat_fields(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def stat_fields(pid: int, task: str = "") -> list[str]:
    """/proc/<pid>[/task/<tid>]/stat after the command name: field 3 (state) comes first."""
    text = Path(f"/proc/{pid}{task}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """utime + stime per process (all its threads, live and exited)."""
    seconds = {}
    for pid in pids:
        try:
            fields = stat_fields(pid)
        except OSError:  # gone
            continue
        seconds[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return seconds


def allowed_cpus(pid: int) -> dict[str, str]:
    """Cpus_allowed_list of every thread of `pid`, by thread id."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:
            continue
        found[task.name] = re.search(r"^Cpus_allowed_list:\s*(\S+)", status, re.M).group(1)
    return found


def cpu_count_of(cpus: str) -> int:
    total = 0
    for part in cpus.split(","):
        low, _, high = part.partition("-")
        total += int(high or low) - int(low) + 1
    return total


def affinity_problems(pids: list[int], pinned: str) -> list[str]:
    problems = []
    for pid in pids:
        try:
            per_thread = allowed_cpus(pid)
        except OSError:
            continue
        stray = sorted({cpus for cpus in per_thread.values() if cpus != pinned})
        if stray:
            problems.append(f"pid {pid} may run on CPUs {','.join(stray)}, not {pinned}")
    return problems


def thread_count(pids: list[int]) -> int:
    return sum(len(list(Path(f"/proc/{pid}/task").iterdir())) for pid in pids if Path(f"/proc/{pid}").exists())


# -- wrk -----------------------------------------------------------------------------------------

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass
class Wrk:
    requests: int          # answers wrk counted, any status
    seconds: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    cpu_seconds: float = 0.0   # wrk's own utime + stime over the run


def parse_wrk(text: str) -> Wrk:
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    seconds = float(done.group(2)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[done.group(3)]

    def percentile(p: str) -> float:
        found = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        return float(found.group(1)) * UNITS[found.group(2)]

    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return Wrk(int(done.group(1)), seconds, percentile("50"), percentile("99"),
               int(non_2xx.group(1)) if non_2xx else 0, sum(int(g) for g in sockets.groups()) if sockets else 0)


@dataclass
class Case:
    """One measured case; `failed` (non-2xx, socket errors) makes its speed meaningless."""

    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float          # server CPU per 2xx answer
    failed: str = ""
    flags: list[str] = field(default_factory=list)
    client_cpu_us: float = 0.0   # wrk's own CPU per 2xx answer (it shares the cores in the workers table)


def judge(run: Wrk, cpu: float, wall: float, cores: int, affinity: list[str]) -> Case:
    """Only 2xx answers count; any other answer or a socket error fails the case."""
    good = run.requests - run.non_2xx
    failed = []
    if run.non_2xx:
        failed.append(f"{run.non_2xx} non-2xx answers")
    if run.socket_errors:
        failed.append(f"{run.socket_errors} socket errors")
    flags = list(affinity)
    if cpu > wall * cores * 1.02:  # 2 % for clock-tick rounding
        flags.append(f"server CPU {cpu:.1f} s > wall {wall:.1f} s x {cores} core(s)")
    return Case(good / run.seconds if run.seconds else 0.0, run.p50_ms, run.p99_ms,
                cpu / good * 1e6 if good else float("inf"), "; ".join(failed), flags)


@dataclass
class Bench:
    wrk: str
    script: Path
    warmup: float
    seconds: float

    def _wrk(self, url: str, body: Path, seconds: float, connections: int, cpus: str) -> Wrk:
        command = ["taskset", "-c", cpus, self.wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
                   "--timeout", f"{WRK_TIMEOUT_S}s",
                   "--latency", "-s", str(self.script), url]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(command, env={**os.environ, "BENCH_BODY": str(body)}, capture_output=True,
                              text=True, timeout=seconds + 60)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed: {done.stderr}")
        run = parse_wrk(done.stdout)
        run.cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return run

    def case(self, servers: list[Server], url: str, body: Path, connections: int = CONCURRENCY,
             wrk_cpus: str = LOAD_CPU) -> Case:
        """Warm up, then measure; CPU is summed over every process of `servers`."""
        self._wrk(url, body, self.warmup, connections, wrk_cpus)
        pids = [pid for server in servers for pid in children_of(server.pid)]
        before, started = cpu_seconds(pids), time.monotonic()
        run = self._wrk(url, body, self.seconds, connections, wrk_cpus)
        wall = time.monotonic() - started
        pids = [pid for server in servers for pid in children_of(server.pid)]  # workers may have appeared
        after = cpu_seconds(pids)
        cpu = sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
        problems = [p for server in servers for p in affinity_problems(children_of(server.pid), server.cpus)]
        cores = sum(cpu_count_of(server.cpus) for server in servers)
        case = judge(run, cpu, wall, cores, problems)
        good = run.requests - run.non_2xx
        case.client_cpu_us = run.cpu_seconds / good * 1e6 if good else 0.0
        return case


# -- environment and models ----------------------------------------------------------------------


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        sys.exit("wrk is not installed: run `apt-get update && apt-get install -y wrk` (Debian), then retry")
    return path


def ensure_peer_env() -> Path:
    """`.bench/mlserver`: MLServer, mlserver-sklearn and Starlette, with our scikit-learn version."""
    import sklearn

    python = PEER_VENV / "bin" / "python"
    marker = PEER_VENV / ".complete"
    wanted = " ".join([*PEER_PACKAGES, sklearn.__version__])
    if not marker.exists() or marker.read_text() != wanted:
        print(f"creating {PEER_VENV} (first run only)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES,
                        f"scikit-learn=={sklearn.__version__}"], check=True)
        marker.write_text(wanted)
    return python


@dataclass
class ModelFiles:
    name: str
    folder: Path
    skops_sha: str
    onnx_sha: str | None
    bodies: dict[int, Path] = field(default_factory=dict)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_models(folder: Path) -> dict[str, ModelFiles]:
    import joblib
    import numpy as np
    from sklearn.datasets import load_breast_cancer, load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    from mlops_runtime import baseline, model_io

    made = {}
    for name, loader, estimator in (
        ("iris", load_iris, LogisticRegression(max_iter=1000)),
        ("cancer", load_breast_cancer, RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1)),
    ):
        X, y = loader(return_X_y=True, as_frame=True)
        model = estimator.fit(X, y)
        target = folder / name
        target.mkdir(parents=True, exist_ok=True)
        (target / "model.skops").write_bytes(model_io.dump_skops(model))
        joblib.dump(model, target / "model.joblib")  # the peers' format, for the peers only
        numeric = list(X.columns)
        onnx = model_io.to_onnx(model, X.head(5), numeric)
        check = model_io.parity_data(model, X, y, X, numeric, seed=0)
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
        files = ModelFiles(name, target, sha256(target / "model.skops"), onnx_sha)
        rows = X.to_numpy()
        for count in ROWS:
            picked = rows[np.arange(count) % len(rows)]
            body = {"inputs": [{"name": "predict", "shape": [count, X.shape[1]], "datatype": "FP64",
                                "data": picked.ravel().tolist()}]}
            path = folder / f"{name}-{count}.json"
            path.write_text(json.dumps(body))
            files.bodies[count] = path
        made[name] = files
    return made


# -- servers -------------------------------------------------------------------------------------


@dataclass
class Server:
    label: str
    process: subprocess.Popen[bytes]
    url: str
    cpus: str

    @property
    def pid(self) -> int:
        return self.process.pid  # taskset execs the server: same pid

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, 15)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait(timeout=10)


def launch(label: str, command: list[str], cpus: str, logs: Path, env: dict[str, str] | None = None,
           cwd: Path | None = None, port: int | None = None) -> Server:
    port = port or free_port()
    log = logs / f"{label}.log"
    process = subprocess.Popen(["taskset", "-c", cpus, *command], cwd=cwd, stdout=open(log, "wb"),
                               stderr=subprocess.STDOUT, start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    return Server(label, process, f"http://127.0.0.1:{port}", cpus)


READY_IN_A_ROW = 20  # with several worker processes one ready answer speaks for one worker only


def wait_ready(server: Server, paths: tuple[str, ...], logs: Path, timeout: float = 180) -> Server:
    deadline = time.monotonic() + timeout
    for path in paths:
        in_a_row = 0
        while in_a_row < READY_IN_A_ROW:
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.label} exited: {(logs / f'{server.label}.log').read_text()[-3000:]}")
            try:
                in_a_row = in_a_row + 1 if http_get(server.url + path, timeout=1)[0] == 200 else 0
            except OSError:
                in_a_row = 0
            if time.monotonic() > deadline:
                raise TimeoutError(f"{server.label}: {path} not ready; see {logs}/{server.label}.log")
            if not in_a_row:
                time.sleep(0.2)
    return server


def ours(label: str, model: ModelFiles, onnx: bool, logs: Path, cpus: str = SERVER_CPU,
         extra: tuple[str, ...] = ()) -> Server:
    port = free_port()
    args = [sys.executable, "-m", "mlops_runtime.serve", "--host", "127.0.0.1", "--port", str(port),
            "--model-uri", str(model.folder / "model.skops"), "--sha256", model.skops_sha, "--name", model.name,
            "--version", "bench", "--log-level", "warning", *extra]
    if onnx and model.onnx_sha:
        args += ["--onnx-uri", str(model.folder / "model.onnx"), "--onnx-sha256", model.onnx_sha]
    env = {"PYTHONPATH": str(ROOT / "runtime")}
    return wait_ready(launch(label, args, cpus, logs, env, port=port), ("/v2/health/ready",), logs)


def mlserver(label: str, models: dict[str, ModelFiles], python: Path, logs: Path,
             batching: dict[str, Any] | None = None) -> Server:
    home = Path(tempfile.mkdtemp(prefix="mlserver-", dir=logs.parent))
    repo = home / "models"
    for model in models.values():
        (repo / model.name).mkdir(parents=True)
        shutil.copy(model.folder / "model.joblib", repo / model.name / "model.joblib")
        (repo / model.name / "model-settings.json").write_text(json.dumps({
            "name": model.name, "implementation": "mlserver_sklearn.SKLearnModel", **(batching or {}),
            "parameters": {"uri": "./model.joblib", "version": "v1"}}))
    port = free_port()
    (repo / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "debug": False}))
    empty = home / "cwd"  # MLServer puts its working directory on the import path
    empty.mkdir()
    env = {"PATH": f"{python.parent}:{os.environ['PATH']}", "PYTHONPATH": ""}
    server = launch(label, [str(python), "-m", "mlserver.cli.main", "start", str(repo)], SERVER_CPU, logs,
                    env, cwd=empty, port=port)
    return wait_ready(server, ("/v2/health/ready", *(f"/v2/models/{m}/ready" for m in models)), logs)


def starlette(label: str, models: dict[str, ModelFiles], python: Path, logs: Path) -> Server:
    home = Path(tempfile.mkdtemp(prefix="starlette-", dir=logs.parent))
    (home / "starlette_floor.py").write_text(STARLETTE_FLOOR)
    port = free_port()
    env = {"PYTHONPATH": "", "BENCH_MODELS": json.dumps({m.name: str(m.folder / "model.joblib")
                                                         for m in models.values()})}
    server = launch(label, [str(python), "-m", "uvicorn", "starlette_floor:app", "--host", "127.0.0.1",
                            "--port", str(port), "--http", "httptools", "--loop", "uvloop", "--no-access-log",
                            "--log-level", "warning"], SERVER_CPU, logs, env, cwd=home, port=port)
    return wait_ready(server, ("/v2/health/ready",), logs)


def router(upstream: Server, logs: Path) -> Server:
    port = free_port()
    args = [sys.executable, "-m", "mlops_runtime.router", "--host", "127.0.0.1", "--port", str(port),
            "--champion", upstream.url, "--log-level", "warning"]
    server = launch("router", args, LOAD_CPU, logs, {"PYTHONPATH": str(ROOT / "runtime")}, port=port)
    return wait_ready(server, ("/v2/health/ready",), logs)


@contextmanager
def running(*starters: Callable[[], Server]) -> Iterator[list[Server]]:
    """Start servers (one at a time: their start-up must not share the core with a measurement)
    and stop them all afterwards, so an idle server never sits beside a measured one."""
    started: list[Server] = []
    try:
        for start in starters:
            started.append(start())
        yield started
    finally:
        for server in started:
            server.stop()


def onnx_threads(server: Server, model: str) -> str:
    status, body = http_get(f"{server.url}/v2/models/{model}")
    threads = json.loads(body).get("parameters", {}).get("onnx_threads") if status == 200 else None
    return f"{threads} (process threads: {thread_count(children_of(server.pid))})"


# -- printing ------------------------------------------------------------------------------------


def fmt(case: Case | None) -> str:
    if case is None:
        return "n/a"
    if case.failed:
        return f"FAIL ({case.failed})"
    text = f"{case.rps:,.0f} req/s, p50 {case.p50_ms:.2f} / p99 {case.p99_ms:.2f} ms, {case.cpu_us:,.0f} us CPU/req"
    return text + "".join(f" [FLAG: {flag}]" for flag in case.flags)


def table(title: str, columns: list[str], rows: dict[str, list[Case | None]]) -> None:
    print(f"\n| {title} | " + " | ".join(columns) + " |")
    print("|---" * (1 + len(columns)) + "|")
    for label, cases in rows.items():
        print(f"| {label} | " + " | ".join(fmt(c) for c in cases) + " |")


def ok(case: Case | None) -> bool:
    return case is not None and not case.failed


def summary(results: dict[str, Case]) -> str:
    """The issue's targets, one line: value, target, pass/fail; n/a when a table did not run."""
    def check(name: str, value: Callable[[], float], shown: str, target: str, passed: Callable[[float], bool],
              *needed: str) -> str:
        if not all(ok(results.get(k)) for k in needed):
            return f"{name} n/a"
        v = value()
        return f"{name} {shown.format(v)} (target {target}) {'PASS' if passed(v) else 'FAIL'}"

    r = results
    onnx = "main/ours (ONNX form)/iris/1"
    parts = [
        check("CPU/req ONNX iris 1 row", lambda: r[onnx].cpu_us, "{:,.0f} us", "<= 100 us", lambda v: v <= 100, onnx),
        check("req/s", lambda: r[onnx].rps, "{:,.0f}", ">= 10,000", lambda v: v >= 10_000, onnx),
        check("p99 at 16 conns", lambda: r[onnx].p99_ms, "{:.2f} ms", "<= 5 ms", lambda v: v <= 5, onnx),
        check("skops CPU/req vs Starlette floor", lambda: r["main/ours (skops form)/iris/1"].cpu_us
              / r["main/Starlette floor/iris/1"].cpu_us, "{:.2f}x", "<= 1", lambda v: v <= 1,
              "main/ours (skops form)/iris/1", "main/Starlette floor/iris/1"),
        check("workers 2/1", lambda: r["workers/2"].rps / r["workers/1"].rps, "{:.2f}x", ">= 1.8",
              lambda v: v >= 1.8, "workers/1", "workers/2"),
        check("batching ONNX forest 64 conns on/off", lambda: r["batching/onnx/on"].rps / r["batching/onnx/off"].rps,
              "{:.2f}x", "> 1", lambda v: v > 1, "batching/onnx/on", "batching/onnx/off"),
        check("skops forest 64 conns on/off", lambda: r["batching/skops/on"].rps / r["batching/skops/off"].rps,
              "{:.2f}x", "> 1", lambda v: v > 1, "batching/skops/on", "batching/skops/off"),
        check("batching forest 64 conns ours/MLServer", lambda: r["batching/onnx/on"].rps
              / r["batching/mlserver"].rps, "{:.1f}x", "> 1", lambda v: v > 1, "batching/onnx/on", "batching/mlserver"),
        check("p50 at 1 conn on/off", lambda: r["batching/c1/on"].p50_ms / r["batching/c1/off"].p50_ms,
              "{:.2f}x", "<= 1.10", lambda v: v <= 1.10, "batching/c1/on", "batching/c1/off"),
    ]
    return "targets: " + "; ".join(parts)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- the tables ----------------------------------------------------------------------------------


def run_main(bench: Bench, models: dict[str, ModelFiles], peer: Path | None, logs: Path,
             results: dict[str, Case]) -> None:
    starters: list[tuple[str, Callable[[], Server], bool]] = []  # label, start, serves every model
    for model in models.values():
        starters.append(("ours (ONNX form)", lambda m=model: ours(f"onnx-{m.name}", m, True, logs), False))
        starters.append(("ours (skops form)", lambda m=model: ours(f"skops-{m.name}", m, False, logs), False))
    if peer is not None:
        starters.append(("MLServer 1.7.1 (default)", lambda: mlserver("mlserver", models, peer, logs), True))
        starters.append(("Starlette floor", lambda: starlette("starlette", models, peer, logs), True))
    labels = list(dict.fromkeys(label for label, _, _ in starters))
    with running(*(start for _, start, _ in starters)) as servers:
        by_label: dict[tuple[str, str], Server] = {}
        for (label, _, every), server in zip(starters, servers):
            for name in MODELS:
                if every or server.label.endswith(f"-{name}"):
                    by_label[(label, name)] = server
        print(f"ONNX Runtime threads of ours (ONNX form): iris {onnx_threads(by_label[(labels[0], 'iris')], 'iris')}, "
              f"cancer {onnx_threads(by_label[(labels[0], 'cancer')], 'cancer')}", flush=True)
        for name in MODELS:  # a column measured across every server back to back
            for rows in ROWS:
                for label in labels:
                    server = by_label[(label, name)]
                    key = f"main/{label}/{name}/{rows}"
                    results[key] = bench.case([server], f"{server.url}/v2/models/{name}/infer",
                                              models[name].bodies[rows])
                    print(f"  {key}: {fmt(results[key])}", flush=True)
    table("server (one core)", [f"{MODEL_TITLES[m]}, {r} row{'s' if r > 1 else ''}" for m in MODELS for r in ROWS],
          {label: [results.get(f"main/{label}/{m}/{r}") for m in MODELS for r in ROWS] for label in labels})


def run_workers(bench: Bench, models: dict[str, ModelFiles], logs: Path, results: dict[str, Case]) -> None:
    iris = models["iris"]
    for workers in (1, 2):
        with running(lambda w=workers: ours(f"workers-{w}", iris, True, logs, BOTH, ("--workers", str(w)))) as (s,):
            results[f"workers/{workers}"] = bench.case([s], f"{s.url}/v2/models/iris/infer", iris.bodies[1],
                                                       wrk_cpus=BOTH)
    one, two = results["workers/1"], results["workers/2"]
    table("ours (ONNX form), iris 1 row, server and wrk on both cores", ["--workers 1", "--workers 2"],
          {"wrk -t1 -c16": [one, two]})
    if ok(one) and ok(two):
        print(f"workers 2/1: {two.rps / one.rps:.2f}x req/s, CPU/req {two.cpu_us / one.cpu_us:.2f}x")
        # wrk takes its share of the same two cores: at c_s server and c_w wrk CPU per request,
        # two busy cores give at most 2 / (c_s + c_w) req/s, against 1 / c_s for one worker.
        bound = 2 * one.cpu_us / (two.cpu_us + two.client_cpu_us)
        print(f"wrk CPU/req {two.client_cpu_us:,.0f} us beside the servers' {two.cpu_us:,.0f} us: two cores shared "
              f"with wrk allow at most {bound:.2f}x over one worker")


def run_batching(bench: Bench, models: dict[str, ModelFiles], peer: Path | None, logs: Path,
                 results: dict[str, Case]) -> None:
    cancer = models["cancer"]
    body, path = cancer.bodies[1], "/v2/models/cancer/infer"
    off = ("--max-batch-rows", "1")
    rows: dict[str, list[Case | None]] = {}
    for form, onnx in (("onnx", True), ("skops", False)):
        label = f"ours ({'ONNX' if onnx else 'skops'} form)"
        for state, extra in (("off", off), ("on", ())):
            with running(lambda o=onnx, e=extra, k=f"{form}-{state}": ours(f"batch-{k}", cancer, o, logs, extra=e)
                         ) as (s,):
                results[f"batching/{form}/{state}"] = bench.case([s], s.url + path, body, BATCH_CONCURRENCY)
        rows[label] = [results[f"batching/{form}/off"], results[f"batching/{form}/on"]]
    if peer is not None:
        adaptive = {"max_batch_size": BATCH_CONCURRENCY, "max_batch_time": 0.002}
        with running(lambda: mlserver("mlserver-batching", {"cancer": cancer}, peer, logs, adaptive)) as (s,):
            results["batching/mlserver"] = bench.case([s], s.url + path, body, BATCH_CONCURRENCY)
        rows["MLServer 1.7.1, max_batch_size 64, max_batch_time 2 ms"] = [None, results["batching/mlserver"]]
    table(f"cancer RF(100), 1 row, {BATCH_CONCURRENCY} connections", ["batching off", "batching on"], rows)
    # The p50 check compares a few hundred microseconds: off and on alternate, both servers up
    # (an idle one costs the core nothing), and each keeps its better round, so a neighbour's
    # burst of load during one case cannot decide it.
    with running(lambda: ours("batch-c1-off", cancer, True, logs, extra=off),
                 lambda: ours("batch-c1-on", cancer, True, logs)) as pair:
        rounds: dict[str, list[Case]] = {"off": [], "on": []}
        for _ in range(C1_ROUNDS):
            for state, s in zip(("off", "on"), pair):
                rounds[state].append(bench.case([s], s.url + path, body, 1))
        for state, cases in rounds.items():
            results[f"batching/c1/{state}"] = min(cases, key=lambda c: (bool(c.failed), c.p50_ms))
    table("cancer RF(100), 1 row, 1 connection", ["batching off", "batching on"],
          {"ours (ONNX form)": [results["batching/c1/off"], results["batching/c1/on"]]})
    if ok(results["batching/c1/off"]) and ok(results["batching/c1/on"]):
        print(f"p50 at 1 connection, on/off: {results['batching/c1/on'].p50_ms / results['batching/c1/off'].p50_ms:.2f}x")


def run_router(bench: Bench, models: dict[str, ModelFiles], logs: Path, results: dict[str, Case]) -> None:
    iris = models["iris"]
    with running(lambda: ours("router-champion", iris, True, logs)) as (champion,):
        with running(lambda: router(champion, logs)) as (front,):
            for connections in (1, CONCURRENCY):
                results[f"router/alone/{connections}"] = bench.case(
                    [champion], f"{champion.url}/v2/models/iris/infer", iris.bodies[1], connections)
                results[f"router/routed/{connections}"] = bench.case(
                    [champion, front], f"{front.url}/v2/models/iris/infer", iris.bodies[1], connections)
    table("iris LR, 1 row, ours (ONNX form)", ["1 connection", f"{CONCURRENCY} connections"],
          {"champion alone": [results["router/alone/1"], results[f"router/alone/{CONCURRENCY}"]],
           "router + champion (CPU/req: both)": [results["router/routed/1"],
                                                 results[f"router/routed/{CONCURRENCY}"]]})
    alone, routed = results["router/alone/1"], results["router/routed/1"]
    if ok(alone) and ok(routed):
        print(f"router adds {routed.p50_ms - alone.p50_ms:+.2f} ms at p50 (1 connection), "
              f"{routed.cpu_us - alone.cpu_us:+,.0f} us CPU/req")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s warm-up + 5 s per case (smoke test)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of warm-up per case")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per case")
    parser.add_argument("--only", default=",".join(TABLES), help=f"comma-separated tables: {', '.join(TABLES)}")
    parser.add_argument("--skip-peers", action="store_true", help="no MLServer, no Starlette floor")
    parser.add_argument("--output", type=Path, default=BENCH / "serving-results.json")
    args = parser.parse_args(argv)
    only = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = set(only) - set(TABLES)
    if unknown:
        parser.error(f"unknown table(s) {', '.join(sorted(unknown))}; choose from {', '.join(TABLES)}")
    warmup, seconds = (2.0, 5.0) if args.quick else (args.warmup, args.duration)
    if (os.cpu_count() or 1) < 2:
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
    bench = Bench(ensure_wrk(), script, warmup, seconds)
    peer = None if args.skip_peers or not {"main", "batching"} & set(only) else ensure_peer_env()
    print(f"building models in {work} ...", flush=True)
    models = build_models(work / "models")
    loads = [load_average()]
    results: dict[str, Case] = {}
    started = time.monotonic()
    print(f"wrk -t1 on CPU {LOAD_CPU}, servers on CPU {SERVER_CPU} (workers table: both); "
          f"{warmup:g} s warm-up + {seconds:g} s per case; only 2xx answers count", flush=True)
    runners: dict[str, Callable[[], None]] = {
        "main": lambda: run_main(bench, models, peer, logs, results),
        "workers": lambda: run_workers(bench, models, logs, results),
        "batching": lambda: run_batching(bench, models, peer, logs, results),
        "router": lambda: run_router(bench, models, logs, results),
    }
    for name in TABLES:
        if name in only:
            runners[name]()
            loads.append(load_average())
    print(f"\nload average during the run: {', '.join(loads)}; {time.monotonic() - started:.0f} s")
    args.output.write_text(json.dumps({"warmup": warmup, "seconds": seconds, "load": loads,
                                       "cases": {k: asdict(v) for k, v in results.items()}}, indent=2))
    print(f"results: {args.output}; server logs: {logs}")
    print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
