"""A small keep-alive HTTP/1.1 client for the router's calls to its model servers.

The router's upstreams are plain HTTP inside the cluster and answer small JSON bodies, so a
client needs little: a pool of idle connections per upstream, one request at a time per
connection, the response parsed by httptools (the parser uvicorn uses). Measured here it costs
about 25 us of CPU a request against aiohttp's 130 us, which is most of the router's overhead.

A pooled connection the server has closed while idle (uvicorn closes idle keep-alive
connections after 5 s) fails before any response byte arrives; such a request is sent again,
once, on a new connection. Connections idle longer than `MAX_IDLE_SECONDS` are not reused.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

MAX_IDLE_SECONDS = 4.0
MAX_IDLE_CONNECTIONS = 256
# Response headers a caller relays to its own client: the request id the server settled on,
# and where the JSON header of a V2 binary-tensor response ends.
RELAYED_HEADERS = frozenset((b"x-request-id", b"inference-header-content-length"))


class UpstreamError(Exception):
    """The upstream could not be reached, closed the connection, or did not answer in time."""


@dataclass
class Response:
    status: int
    body: bytes
    content_type: bytes
    relayed: tuple[tuple[bytes, bytes], ...] = ()   # the RELAYED_HEADERS the upstream sent

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.relayed:
            if key == name:
                return value
        return None


class _Closed(Exception):
    def __init__(self, got_bytes: bool, why: str) -> None:
        super().__init__(why)
        self.got_bytes = got_bytes


class _Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None
        self.parts: list[bytes] = []
        self.content_type = b"application/json"
        self.relayed: tuple[tuple[bytes, bytes], ...] = ()
        self.got_bytes = False
        self.closed = False
        self.last_used = time.monotonic()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(_Closed(True, f"malformed response: {error}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(_Closed(self.got_bytes, f"connection closed{f': {exc}' if exc else ''}"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-type":
            self.content_type = value
        elif lowered in RELAYED_HEADERS:
            self.relayed += ((lowered, value),)

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self.parser.get_status_code(), b"".join(self.parts), self.content_type,
                                       self.relayed))
        if not self.parser.should_keep_alive():
            self.close()

    # use

    def _fail(self, error: Exception) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    async def request(self, data: bytes, timeout: float) -> Response:
        if self.closed or self.transport.is_closing():
            # The peer closed it before a byte was sent: an upstream that accepts and closes at
            # once (a Service with no ready Pod) can do that before `create_connection`'s caller
            # runs again. uvloop then raises RuntimeError on write (which reached the router's
            # client as a 500) and asyncio drops the write (an answer awaited until the timeout).
            raise _Closed(False, "connection closed before the request was sent")
        self.waiter = waiter = self.loop.create_future()
        self.parts = []
        self.content_type = b"application/json"
        self.relayed = ()
        self.got_bytes = False
        timer = self.loop.call_later(timeout, self._fail, asyncio.TimeoutError())
        try:
            self.transport.write(data)
            return await waiter
        finally:
            timer.cancel()
            self.waiter = None
            self.last_used = time.monotonic()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Upstream:
    """Pooled keep-alive connections to one `http://host:port` base URL."""

    def __init__(self, base_url: str, timeout: float) -> None:
        url = urlsplit(base_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"upstream {base_url!r} must be an http://host:port URL")
        self.host = url.hostname
        self.port = url.port or 80
        self.host_header = url.netloc.encode("latin-1")
        self.base_path = url.path.rstrip("/")
        self.timeout = timeout
        self.idle: list[_Connection] = []

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(loop), self.host, self.port), self.timeout)
        except (OSError, asyncio.TimeoutError) as error:
            raise UpstreamError(f"cannot connect to {self.host}:{self.port}: {error or type(error).__name__}") \
                from None
        return connection

    def _reusable(self) -> _Connection | None:
        now = time.monotonic()
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed and now - connection.last_used < MAX_IDLE_SECONDS:
                return connection
            connection.close()
        return None

    def _encode(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> bytes:
        lines = [f"{method} {self.base_path}{path} HTTP/1.1".encode("latin-1"), b"host: " + self.host_header]
        lines.extend(f"{name}: {value}".encode("latin-1") for name, value in headers.items())
        payload = body or b""
        lines.append(b"content-length: " + str(len(payload)).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n" + payload

    async def call(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Response:
        data = self._encode(method, path, body, headers)
        connection = self._reusable()
        reused = connection is not None
        for _ in range(2):
            if connection is None:
                connection = await self._connect()
            try:
                response = await connection.request(data, self.timeout)
            except asyncio.TimeoutError:
                connection.close()
                raise UpstreamError(f"{self.host}:{self.port} did not answer within {self.timeout} s") from None
            except _Closed as closed:
                connection.close()
                if reused and not closed.got_bytes:  # a stale pooled connection: once more, on a new one
                    connection, reused = None, False
                    continue
                raise UpstreamError(f"{self.host}:{self.port}: {closed}") from None
            except OSError as error:
                connection.close()
                raise UpstreamError(f"{self.host}:{self.port}: {error}") from None
            if not connection.closed and len(self.idle) < MAX_IDLE_CONNECTIONS:
                self.idle.append(connection)
            return response
        raise AssertionError("unreachable")

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()


class UpstreamPool:
    """One `Upstream` per base URL, created on first use."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.upstreams: dict[str, Upstream] = {}

    def upstream(self, base_url: str) -> Upstream:
        upstream = self.upstreams.get(base_url)
        if upstream is None:
            upstream = self.upstreams[base_url] = Upstream(base_url, self.timeout)
        return upstream

    async def call(self, method: str, base_url: str, path: str, body: bytes | None,
                   headers: dict[str, str]) -> Response:
        return await self.upstream(base_url).call(method, path, body, headers)

    def close(self) -> None:
        for upstream in self.upstreams.values():
            upstream.close()
        self.upstreams.clear()
