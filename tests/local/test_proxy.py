"""The Service forwarder: stable port, backends that come and go, replay of an unanswered
request when a backend closes the connection."""

from __future__ import annotations

import socket
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlops_operator.local.proxy import ServiceProxy, free_port


@pytest.fixture
def proxy() -> Iterator[ServiceProxy]:
    proxy = ServiceProxy()
    yield proxy
    proxy.stop()


def http_server(answer: bytes) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def get(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        return response.read()


def test_the_service_port_stays_while_backends_change(proxy: ServiceProxy) -> None:
    one, two = http_server(b"one"), http_server(b"two")
    port = free_port()
    proxy.set_backends(port, [one.server_address[1]])
    assert get(port) == b"one"
    proxy.set_backends(port, [two.server_address[1]])
    assert get(port) == b"two"
    one.shutdown(), two.shutdown()


def test_a_connection_waits_for_a_backend_to_become_ready(proxy: ServiceProxy) -> None:
    port = free_port()
    proxy.set_backends(port, [])
    server = http_server(b"late")
    threading.Timer(0.3, lambda: proxy.set_backends(port, [server.server_address[1]])).start()
    assert get(port) == b"late"
    server.shutdown()


def test_a_refusing_backend_is_skipped(proxy: ServiceProxy) -> None:
    server = http_server(b"alive")
    port = free_port()
    proxy.set_backends(port, [free_port(), server.server_address[1]])
    assert {get(port) for _ in range(4)} == {b"alive"}
    server.shutdown()


def test_a_request_unanswered_when_its_backend_closes_goes_to_another(proxy: ServiceProxy) -> None:
    closing = socket.socket()
    closing.bind(("127.0.0.1", 0))
    closing.listen()

    def close_after_reading() -> None:
        connection, _ = closing.accept()
        closing.close()
        connection.recv(65536)
        connection.close()  # as a server shutting down closes an idle keep-alive connection

    threading.Thread(target=close_after_reading, daemon=True).start()
    port = free_port()
    proxy.set_backends(port, [closing.getsockname()[1]])
    answering = http_server(b"answered elsewhere")
    threading.Timer(0.3, lambda: proxy.set_backends(port, [answering.server_address[1]])).start()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := client.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200") and received.endswith(b"answered elsewhere")
    answering.shutdown()


def test_without_a_backend_the_connection_is_closed_after_the_wait(proxy: ServiceProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlops_operator.local.proxy as module

    monkeypatch.setattr(module, "BACKEND_WAIT_SECONDS", 0.3)
    port = free_port()
    proxy.set_backends(port, [])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert client.recv(100) == b""
