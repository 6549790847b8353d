"""Services on this machine: one stable localhost port per Service, forwarding TCP to a
ready backend process, as kube-proxy does for a ClusterIP.

The backends behind a port change as Deployments roll (a new process on a new port); the
Service port stays, so the URL printed by `mlops local up`, and the in-cluster URLs the
router was configured with, keep answering through a restart. A connection that arrives
while no backend is ready waits for one for a few seconds instead of being refused; a
backend that refuses is skipped for another. A backend that closes a connection while a
request sent on it is still unanswered (a server shutting down closes its idle keep-alive
connections, racing a request the router sends on one) has not processed it: the request
is sent again to another backend, so a rolling restart loses no request.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
from collections.abc import Iterable

LOCAL_HOST = "127.0.0.1"
BACKEND_WAIT_SECONDS = 10.0
CHUNK = 65536
REPLAY_LIMIT = 1 << 20


def free_port(host: str = LOCAL_HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = LOCAL_HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class ServiceProxy:
    """TCP forwarders on loopback, run by an asyncio loop in a background thread.

    `set_backends(port, [backend ports])` opens the listening port on first use and
    changes where new connections go; `close(port)` stops listening."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._servers: dict[int, asyncio.base_events.Server] = {}
        self._backends: dict[int, list[int]] = {}
        self._turn = itertools.count()
        self._changed = asyncio.Event()
        self._thread = threading.Thread(target=self._loop.run_forever, name="service-proxy", daemon=True)
        self._thread.start()

    def set_backends(self, port: int, backends: Iterable[int]) -> None:
        """Raises OSError when `port` cannot be listened on."""
        future = asyncio.run_coroutine_threadsafe(self._set(port, list(backends)), self._loop)
        future.result(timeout=10)

    def backends(self, port: int) -> list[int]:
        return list(self._backends.get(port, []))

    def ports(self) -> list[int]:
        return list(self._servers)

    def close(self, port: int) -> None:
        asyncio.run_coroutine_threadsafe(self._close(port), self._loop).result(timeout=10)

    def stop(self) -> None:
        for port in list(self._servers):
            self.close(port)
        asyncio.run_coroutine_threadsafe(self._cancel_connections(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _cancel_connections(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _set(self, port: int, backends: list[int]) -> None:
        self._backends[port] = backends
        if port not in self._servers:
            self._servers[port] = await asyncio.start_server(
                lambda reader, writer: self._forward(port, reader, writer),
                LOCAL_HOST,
                port,
                reuse_address=True,
            )
        if backends:
            self._changed.set()
            self._changed = asyncio.Event()

    async def _close(self, port: int) -> None:
        server = self._servers.pop(port, None)
        self._backends.pop(port, None)
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _backend(self, port: int, refused: set[int], exclude: int | None = None) -> int | None:
        deadline = self._loop.time() + BACKEND_WAIT_SECONDS
        while True:
            backends = [b for b in self._backends.get(port, []) if b not in refused and b != exclude]
            if backends:
                return backends[next(self._turn) % len(backends)]
            remaining = deadline - self._loop.time()
            if remaining <= 0 or port not in self._servers:
                return None
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 0.1))
            except TimeoutError:
                refused.clear()  # a backend that refused may be back (restarted on its port)

    async def _connect(self, port: int, exclude: int | None = None
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to a backend of `port`; one that refuses (stopping, crashed) is
        skipped for another, or for the next one to become ready."""
        refused: set[int] = set()
        while True:
            backend = await self._backend(port, refused, exclude)
            if backend is None:
                return None
            try:
                return await asyncio.open_connection(LOCAL_HOST, backend)
            except OSError:
                refused.add(backend)

    async def _forward(self, port: int, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        connection = await self._connect(port)
        if connection is None:
            client_writer.close()
            return
        exchange = _Exchange(*connection)
        upstream = asyncio.ensure_future(self._upstream(client_reader, exchange))
        try:
            await self._downstream(port, client_writer, exchange)
        finally:
            upstream.cancel()
            for writer in (exchange.backend_writer, client_writer):
                try:
                    writer.close()
                except (ConnectionError, OSError):
                    pass

    async def _upstream(self, client_reader: asyncio.StreamReader, exchange: _Exchange) -> None:
        try:
            while data := await client_reader.read(CHUNK):
                exchange.sent(data)
                try:
                    exchange.backend_writer.write(data)
                    await exchange.backend_writer.drain()
                except (ConnectionError, OSError):
                    pass  # the downstream side sees the backend go and replays what is unanswered
            if exchange.backend_writer.can_write_eof():
                exchange.backend_writer.write_eof()
        except (ConnectionError, OSError):
            pass

    async def _downstream(self, port: int, client_writer: asyncio.StreamWriter, exchange: _Exchange) -> None:
        """Copy answers to the client. A backend that closes while a request it was sent is
        still unanswered (a server shutting down closes its idle keep-alive connections,
        racing a request sent on one) did not process it: send it to another backend."""
        while True:
            try:
                data = await exchange.backend_reader.read(CHUNK)
            except (ConnectionError, OSError):
                data = b""
            if data:
                exchange.answered()
                try:
                    client_writer.write(data)
                    await client_writer.drain()
                except (ConnectionError, OSError):
                    return
                continue
            if not exchange.unanswered:
                return
            connection = await self._connect(port, exclude=exchange.backend_port)
            if connection is None:
                return
            exchange.switch(*connection)
            try:
                exchange.backend_writer.write(exchange.unanswered)
                await exchange.backend_writer.drain()
            except (ConnectionError, OSError):
                continue


class _Exchange:
    """One client connection's current backend, and the bytes the client sent since the
    backend last answered (kept up to REPLAY_LIMIT, for a replay elsewhere)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.unanswered = b""
        self._tracking = True
        self.switch(reader, writer)

    def switch(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.backend_reader, self.backend_writer = reader, writer
        peer = writer.get_extra_info("peername")
        self.backend_port = int(peer[1]) if peer else None

    def sent(self, data: bytes) -> None:
        if self._tracking:
            self.unanswered += data
            if len(self.unanswered) > REPLAY_LIMIT:
                self.unanswered, self._tracking = b"", False

    def answered(self) -> None:
        self.unanswered, self._tracking = b"", True
