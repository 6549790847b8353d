"""Instructions per request of the model server's request path, counted by callgrind: a figure
that does not move with the neighbours' load, for judging a change to the hot path.

    .venv/bin/python bench/serving_instructions.py                 # every case, 100 rounds each
    .venv/bin/python bench/serving_instructions.py --cases onnx-16 --rounds 200

Each case runs in a child process under `valgrind --tool=callgrind --instr-atstart=no`: the
child builds the app and its `mlops_runtime.http_server` connections in process (no sockets:
each connection's transport only counts its writes), loads the iris LogisticRegression's
ONNX and skops files, warms up with 300 rounds, and then counting is switched on
(`callgrind_control -i on`) for `--rounds` rounds and off again. A round feeds one raw HTTP
request (the 1-row V2 JSON body of bench/serving_profile.py) to each of `concurrency`
connections and runs the loop until all are answered. Instructions / (rounds x concurrency)
is the figure: the Python of the HTTP protocol and the app, numpy, orjson and ONNX Runtime;
not the kernel's socket work (bench/serving.py measures the whole server's CPU).

Cases: `floor-16` (a hello-world ASGI app behind the same HTTP protocol), `onnx-1` and
`onnx-16` (our server, ONNX form, one request at a time and 16 at a time: the batcher shares
one inference call between the 16). Needs valgrind (Debian: `apt-get install -y valgrind`).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "runtime"), str(ROOT / "bench")]

CASES = {"floor-16": ("floor", 16), "onnx-1": ("onnx", 1), "onnx-16": ("onnx", 16)}
WARMUP_ROUNDS = 300


class CountingTransport:
    """Stands in for a socket: the answers are counted, not sent."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def get_extra_info(self, name: str) -> tuple[str, int]:
        return ("127.0.0.1", 40000)

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def floor_app() -> object:
    import serving_profile

    namespace: dict[str, object] = {}
    exec(serving_profile.FLOOR_APP.split("if __name__")[0], namespace)  # the same hello-world app
    return namespace["asgi"]


def model_app(folder: Path) -> object:
    from mlops_runtime.serve import ModelServer, ServeConfig

    def sha(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    return ModelServer(ServeConfig(
        model_uri=str(folder / "model.skops"), sha256=sha(folder / "model.skops"), name="iris", version="bench",
        onnx_uri=str(folder / "model.onnx"), onnx_sha256=sha(folder / "model.onnx"), log_level="warning"))


async def drive(kind: str, concurrency: int, rounds: int, folder: Path, signal_dir: Path) -> None:
    """The child: warm up, say READY, count `rounds` rounds once told to GO, say DONE."""
    from mlops_runtime import http_server

    app = floor_app() if kind == "floor" else model_app(folder)
    server = http_server.HttpServer(app)
    server.loop = asyncio.get_running_loop()
    if kind != "floor":
        await app.startup()
        while app.loaded is None:  # loading runs in a thread; this is the child, not a test
            await asyncio.sleep(0.05)
    body = (folder / "v2.json").read_bytes()
    request = (b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    connections = []
    for _ in range(concurrency):
        connection = http_server.Connection(server)
        connection.connection_made(CountingTransport())
        connections.append(connection)

    async def one_round() -> None:
        for connection in connections:
            connection.data_received(request)
        while any(c.current is not None for c in connections):
            await asyncio.sleep(0)

    for _ in range(WARMUP_ROUNDS):
        await one_round()
    answered = sum(c.transport.writes for c in connections)
    (signal_dir / "READY").write_text(str(os.getpid()))
    while not (signal_dir / "GO").exists():
        time.sleep(0.02)
    for _ in range(rounds):
        await one_round()
    (signal_dir / "DONE").write_text("")
    while (signal_dir / "GO").exists():
        time.sleep(0.02)
    answered = sum(c.transport.writes for c in connections) - answered
    assert answered == rounds * concurrency, f"{answered} answers for {rounds * concurrency} requests"
    if kind != "floor":
        await app.shutdown()


def wait_for(path: Path, process: subprocess.Popen[bytes], what: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise RuntimeError(f"the counted child exited ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def count(case: str, rounds: int, folder: Path, work: Path) -> int:
    """Instructions per request of one case."""
    kind, concurrency = CASES[case]
    signals = work / f"signals-{case}"
    signals.mkdir()
    out = work / f"callgrind-{case}.%p"
    child = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
         sys.executable, __file__, "--child", kind, str(concurrency), str(rounds), str(folder), str(signals)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(signals / "READY", child, "warm-up")
        pid = (signals / "READY").read_text()
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
        (signals / "GO").write_text("")
        wait_for(signals / "DONE", child, "the counted rounds")
        subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
        (signals / "GO").unlink()
        if child.wait(timeout=600) != 0:
            raise RuntimeError(f"the counted child failed ({child.returncode})")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    totals = [int(m) for f in work.glob(f"callgrind-{case}.*")
              for m in re.findall(r"^totals: (\d+)", f.read_text(errors="replace"), re.M)]
    return round(sum(totals) / (rounds * concurrency))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        kind, concurrency, rounds, folder, signals = argv[1:]
        import uvloop

        uvloop.run(drive(kind, int(concurrency), int(rounds), Path(folder), Path(signals)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--rounds", type=int, default=100, help="counted rounds per case")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("needs valgrind: apt-get update && apt-get install -y valgrind")
    import serving_profile

    cases = serving_profile.chosen_cases(args.cases, CASES)
    work = Path(tempfile.mkdtemp(prefix="serving-instructions-"))
    try:
        folder = Path(serving_profile.build_model(work / "models", "iris")["folder"])
        results = {case: count(case, args.rounds, folder, work) for case in cases}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ncallgrind, {args.rounds} rounds per case after {WARMUP_ROUNDS} uncounted\n")
    print("| case | concurrent requests | instructions per request |")
    print("|---|---:|---:|")
    for case, instructions in results.items():
        print(f"| {case} | {CASES[case][1]} | {instructions:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
