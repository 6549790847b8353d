"""The router's keep-alive HTTP client against small real TCP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import uvloop

from mlops_runtime.http_client import Upstream, UpstreamError
from mlops_runtime.serving_process import free_port

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\": 1}\r\n"
CHUNKED = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
           b"4\r\nnot \r\n5\r\nready\r\n0\r\n\r\n")


class Server:
    """Answers each request with `reply`. `close_after`: close the connection that long after
    answering; `answers_per_connection`: drop the connection (unanswered) on the next request;
    `silent`: never answer."""

    def __init__(self, reply: bytes, close_after: float | None = None, silent: bool = False,
                 answers_per_connection: int | None = None) -> None:
        self.reply, self.close_after, self.silent = reply, close_after, silent
        self.answers_per_connection = answers_per_connection
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                self.requests.append(head + await reader.readexactly(length))
                if self.silent:
                    continue
                if answered == self.answers_per_connection:
                    writer.close()
                    return
                answered += 1
                writer.write(self.reply)
                await writer.drain()
                if self.close_after is not None:
                    await asyncio.sleep(self.close_after)
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


async def until(condition: Callable[[], object], timeout: float = 30.0) -> None:
    """Wait for `condition` on the running loop (the servers share it), not for a time."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Server], asyncio.Future]]:
    started: list[asyncio.base_events.Server] = []

    async def start(server: Server) -> str:
        port = free_port()
        started.append(await asyncio.start_server(server.handle, "127.0.0.1", port))
        return f"http://127.0.0.1:{port}"

    yield start
    for server in started:
        server.close()


async def test_connections_are_kept_alive_and_reused(serve) -> None:
    server = Server(OK)
    upstream = Upstream(await serve(server), timeout=2)
    for i in range(5):
        response = await upstream.call("POST", "/predict", b'{"i": %d}' % i, {"x-request-id": f"r{i}"})
        assert (response.status, response.body, response.content_type) == (200, b'{"ok": 1}\r\n', b"application/json")
    assert server.connections == 1 and len(server.requests) == 5
    assert server.requests[4].startswith(b"POST /predict HTTP/1.1\r\n") and b"x-request-id: r4" in server.requests[4]
    assert server.requests[4].endswith(b'{"i": 4}')
    upstream.close()


async def test_a_connection_the_server_closed_while_idle_is_replaced(serve) -> None:
    server = Server(OK, close_after=0.05)
    upstream = Upstream(await serve(server), timeout=2)
    assert (await upstream.call("POST", "/predict", b"{}", {})).status == 200
    await until(lambda: upstream.idle and all(c.closed for c in upstream.idle))  # the close reached the client
    assert (await upstream.call("POST", "/predict", b"{}", {})).status == 200
    assert server.connections == 2 and len(server.requests) == 2  # nothing sent twice to a live server
    upstream.close()


async def test_a_request_on_a_pooled_connection_dropped_unanswered_is_sent_once_more(serve) -> None:
    server = Server(OK, answers_per_connection=1)
    upstream = Upstream(await serve(server), timeout=2)
    for _ in range(3):
        assert (await upstream.call("POST", "/predict", b"{}", {})).status == 200
    # calls 2 and 3 each met a connection that dropped them, and were answered on a new one
    assert server.connections == 3 and len(server.requests) == 5
    upstream.close()


async def test_chunked_bodies_are_decoded(serve) -> None:
    upstream = Upstream(await serve(Server(CHUNKED)), timeout=2)
    response = await upstream.call("GET", "/v2/health/ready", None, {})
    assert (response.status, response.body, response.content_type) == (503, b"not ready", b"text/plain")
    upstream.close()


async def test_refused_and_silent_upstreams_raise_upstream_error(serve) -> None:
    refused = Upstream(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(UpstreamError, match="cannot connect"):
        await refused.call("POST", "/predict", b"{}", {})
    silent = Upstream(await serve(Server(OK, silent=True)), timeout=0.3)
    with pytest.raises(UpstreamError, match="did not answer within 0.3 s"):
        await silent.call("POST", "/predict", b"{}", {})
    assert silent.idle == []  # a timed-out connection is never reused


def test_only_plain_http_upstreams() -> None:
    with pytest.raises(ValueError, match="must be an http://host:port URL"):
        Upstream("https://champion:8443", timeout=1)


class ClosedOnArrival(Upstream):
    """The order a loaded machine can give: the upstream accepts, closes at once, and the
    connection is lost before the caller of `create_connection` runs again."""

    async def _connect(self):
        connection = await super()._connect()
        await until(lambda: connection.closed)
        return connection


async def closes_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_a_connection_lost_before_the_request_is_sent_is_an_upstream_error(run) -> None:
    async def scenario() -> str:
        server = await asyncio.start_server(closes_at_once, "127.0.0.1", free_port())
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(UpstreamError) as raised:
                await ClosedOnArrival(f"http://127.0.0.1:{port}", timeout=30).call("GET", "/", None, {})
            return str(raised.value)
        finally:
            server.close()

    # Before, uvloop raised RuntimeError (the router answered 500) and asyncio waited the 30 s.
    assert "connection closed before the request was sent" in run(scenario())
