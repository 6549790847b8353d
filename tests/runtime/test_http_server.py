"""mlops_runtime.http_server against real sockets: keep-alive, pipelining, 100-continue,
chunked bodies both ways, HEAD, a failing app, graceful shutdown and pre-forked workers."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from mlops_runtime.serving_process import free_port

APP = Path(__file__).with_name("http_server_app.py")


def start(workers: int = 1) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, str(APP), str(port), str(workers)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise TimeoutError("the test server did not listen")


@pytest.fixture(scope="module")
def server():
    process, port = start()
    yield port
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=15)


def exchange(port: int, raw: bytes, until: bytes) -> bytes:
    """Send raw bytes; read until `until` has come back (or the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        data = b""
        while until not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_keep_alive_serves_many_requests_on_one_connection(server: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{server}") as client:
        answers = [client.post("/echo", content=b"x" * n) for n in (0, 5, 70_000)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.text.split()[2] for a in answers] == ["0", "5", "70000"]
    assert len({a.text.split()[3] for a in answers}) == 1
    assert all(a.headers["content-length"] == str(len(a.content)) for a in answers)


def test_pipelined_requests_are_answered_in_order(server: int) -> None:
    raw = (b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
           b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
    data = exchange(server, raw, b"GET /second 0")
    assert data.index(b"POST /first 3") < data.index(b"GET /second 0")


def test_expect_continue_and_a_chunked_request_body(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=5) as sock:
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n")
        answer = b""
        while b"POST /up 6" not in answer:
            answer += sock.recv(1000)
    assert answer.startswith(b"HTTP/1.1 200 OK")


def test_a_streamed_response_is_chunked_and_head_has_no_body(server: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{server}") as client:
        streamed = client.get("/stream")
        head = client.head("/echo")
    assert streamed.text == "one,two" and streamed.headers["transfer-encoding"] == "chunked"
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0


def test_a_failing_app_answers_500_and_the_server_goes_on(server: int) -> None:
    assert httpx.get(f"http://127.0.0.1:{server}/fail").status_code == 500
    assert httpx.get(f"http://127.0.0.1:{server}/echo").status_code == 200


def test_paths_and_queries_reach_the_app_as_sent_in_origin_and_absolute_form(server: int) -> None:
    plain = exchange(server, b"GET /plain/path HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"\r\n\r\n")
    assert plain.endswith(b"GET /plain/path 0 " + plain.split()[-1] + b" ")  # no query: an empty one
    quoted = exchange(server, b"GET /a%20b?x=1&y=%2F HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"x=1")
    assert b"GET /a b 0 " in quoted and quoted.endswith(b" x=1&y=%2F")
    absolute = exchange(server, b"GET http://x/abs?q=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"q=2")
    assert b"GET /abs 0 " in absolute and absolute.endswith(b" q=2")


def test_the_app_is_told_how_many_requests_are_in_flight(server: int) -> None:
    base = f"http://127.0.0.1:{server}"
    held: list[httpx.Response] = []
    holder = threading.Thread(target=lambda: held.append(httpx.get(f"{base}/hold", timeout=60)))
    holder.start()
    deadline = time.monotonic() + 30
    while httpx.get(f"{base}/inflight").text != "2":  # the held request and this one
        assert time.monotonic() < deadline, "the held request never counted as in flight"
    assert httpx.get(f"{base}/release").status_code == 200
    holder.join(timeout=30)
    assert held and held[0].status_code == 200
    assert httpx.get(f"{base}/inflight").text == "1"  # this one alone again


def test_a_header_with_a_line_break_is_refused() -> None:
    from mlops_runtime.http_server import response_head

    assert response_head(200, [(b"x-a", b"ok")], 2, False).startswith(b"HTTP/1.1 200 OK\r\nx-a: ok\r\n")
    for name, value in ((b"x-a", b"evil\r\nset-cookie: 1"), (b"x\nb", b"v"), (b"x-a", b"bare\rcr")):
        with pytest.raises(ValueError, match="line break"):
            response_head(200, [(name, value)], 0, False)


def test_malformed_http_gets_400(server: int) -> None:
    assert exchange(server, b"NOT HTTP AT ALL\r\n\r\n", b"malformed").startswith(b"HTTP/1.1 400")


def test_sigterm_finishes_the_request_in_flight_then_runs_shutdown() -> None:
    process, port = start()
    result: dict[str, httpx.Response] = {}
    slow = threading.Thread(target=lambda: result.setdefault("r", httpx.get(f"http://127.0.0.1:{port}/slow",
                                                                              timeout=10)))
    slow.start()
    while "slow started" not in process.stdout.readline():  # the request has reached the app
        pass
    process.send_signal(signal.SIGTERM)
    slow.join(timeout=15)
    assert result["r"].status_code == 200 and result["r"].text.startswith("GET /slow")
    assert process.wait(timeout=15) == 0
    assert "shutdown ran" in process.stdout.read()


def test_workers_share_the_port_and_stop_together() -> None:
    process, port = start(workers=2)
    pids = set()
    deadline = time.monotonic() + 30
    while len(pids) < 2 and time.monotonic() < deadline:  # new connections spread over both
        answer = httpx.get(f"http://127.0.0.1:{port}/echo", headers={"connection": "close"})
        pids.add(answer.text.split()[3])
    assert len(pids) == 2
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    assert process.stdout.read().count("shutdown ran") == 2
