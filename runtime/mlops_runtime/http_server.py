"""A small HTTP/1.1 server for the model server's and the router's ASGI apps: httptools parses,
uvloop runs the loop, and each response leaves in one write.

Why not uvicorn: measured here (bench/serving_profile.py, docs/serving.md "Where a request's
time goes"), uvicorn's per-request Python (its protocol, RequestResponseCycle, header checks by
regular expression, chunked framing when the app sends no content-length) and its two writes
per response (status line and headers, then the body: two syscalls, two loopback segments)
cost more server CPU than our whole request path. granian (Rust) measured no cheaper per
request than uvicorn on a hello-world app, because the Rust-to-Python hop is per request too.

What it does: HTTP/1.1 keep-alive (HTTP/1.0 and `Connection: close` honoured), pipelined
requests answered in order, request bodies streamed to `receive()` with `more_body` (reading
paused past 1 MiB buffered until the app reads), `Expect: 100-continue`, responses framed with
Content-Length (chunked only when the app streams), the ASGI lifespan (startup before the port
opens for requests, shutdown after), graceful shutdown on SIGTERM/SIGINT (stop accepting,
finish what is in flight for up to `graceful_seconds`, close idle connections), and
`workers` > 1 as pre-forked processes each with its own SO_REUSEPORT socket, restarted when one
dies. What it leaves out, since nothing here needs it: websockets, HTTP/2, TLS, upgrades.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import httptools

log = logging.getLogger("mlops_runtime.http_server")

MAX_BUFFERED_BODY = 1 << 20
KEEP_ALIVE_SECONDS = 5.0
STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
ASGI_VERSION = {"version": "3.0", "spec_version": "2.3"}
CR, LF, QUESTION, HASH = b"\r\n?#"  # as ints
REQUEST_TASK = "http-request"

App = Callable[..., Any]


def status_line(status: int) -> bytes:
    return STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n".encode()


def response_head(status: int, headers: Any, length: int | None, close: bool) -> bytes:
    """Status line and headers; `length` None means chunked."""
    parts = [status_line(status)]
    for name, value in headers:
        # Byte values, not b"\r": `bytes in bytes` first tries the operand as an int and
        # raises and clears a TypeError inside (~2,000 instructions each, measured by callgrind).
        if CR in name or LF in name or CR in value or LF in value:
            raise ValueError("a response header holds a line break")
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"content-length: %d\r\n" % length if length is not None else b"transfer-encoding: chunked\r\n")
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class Request:
    """One request's ASGI scope and body, and the `receive`/`send` the app gets."""

    __slots__ = ("conn", "scope", "chunks", "buffered", "body_done", "body_event", "started", "status",
                 "headers", "done", "keep_alive", "expect_continue", "chunked", "task")

    def __init__(self, conn: Connection, scope: dict[str, Any], keep_alive: bool, expect_continue: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.body_done = False
        self.body_event: asyncio.Event | None = None
        self.started = False
        self.status = 200
        self.headers: Any = ()
        self.done = False
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.chunked = False
        self.task: asyncio.Task[None] | None = None

    def feed(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.buffered += len(chunk)
        if self.buffered > MAX_BUFFERED_BODY:
            self.conn.transport.pause_reading()
        if self.body_event is not None:
            self.body_event.set()

    def finish_body(self) -> None:
        self.body_done = True
        if self.body_event is not None:
            self.body_event.set()

    async def receive(self) -> dict[str, Any]:
        if self.done or self.conn.closed:
            return {"type": "http.disconnect"}
        if self.expect_continue:
            self.expect_continue = False
            self.conn.write(CONTINUE)
        while not self.chunks and not self.body_done:
            if self.body_event is None:
                self.body_event = asyncio.Event()
            self.body_event.clear()
            await self.body_event.wait()
            if self.conn.closed:
                return {"type": "http.disconnect"}
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks.clear()
        if self.buffered > MAX_BUFFERED_BODY:
            self.conn.transport.resume_reading()
        self.buffered = 0
        return {"type": "http.request", "body": body, "more_body": not self.body_done}

    async def send(self, message: dict[str, Any]) -> None:
        if self.done or self.conn.closed:
            return
        kind = message["type"]
        if kind == "http.response.start" and not self.started:
            self.started = True
            self.status = message["status"]
            self.headers = message.get("headers", ())
            return
        if kind != "http.response.body" or not self.started:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if not self.body_done:  # answered before the body was read: the connection cannot be reused
            self.keep_alive = False
        if self.headers is not None:  # the first body message carries the head in the same write
            length = None if more else len(body)
            self.chunked = more
            head = response_head(self.status, self.headers, length, not self.keep_alive)
            self.headers = None
            if self.scope["method"] == "HEAD":
                body = b""
            if self.chunked:
                self.conn.write(head + (b"%x\r\n%b\r\n" % (len(body), body) if body else b""))
            else:
                self.conn.write(head + body)
        elif self.chunked and body:
            self.conn.write(b"%x\r\n%b\r\n" % (len(body), body))
        if not more:
            if self.chunked:
                self.conn.write(b"0\r\n\r\n")
            self.done = True
            self.conn.response_done(self)


class Connection(asyncio.Protocol):
    """One client connection: parses requests and runs the app on each, one at a time."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.closed = False
        self.current: Request | None = None        # the request whose answer is being produced
        self.parsing: Request | None = None        # the request the parser is filling
        self.queue: deque[Request] = deque()      # pipelined requests waiting for `current`
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.expects_continue = False               # the request being parsed sent Expect: 100-continue
        self.idle_since = 0.0                       # loop time the connection went idle; 0 while busy
        self.client: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None

    # transport callbacks

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.server.connections.add(self)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.client = (peer[0], peer[1]) if isinstance(peer, tuple) else None
        self.local = (local[0], local[1]) if isinstance(local, tuple) else None
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for request in (self.current, self.parsing, *self.queue):
            if request is not None and request.body_event is not None:
                request.body_event.set()

    def data_received(self, data: bytes) -> None:
        self.idle_since = 0.0
        if self.closed:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(b"upgrades are not supported")
        except httptools.HttpParserError as error:
            self._refuse(f"malformed HTTP request: {error}".encode())

    def _refuse(self, message: bytes) -> None:
        if self.current is None:
            self.write(response_head(400, ((b"content-type", b"text/plain; charset=utf-8"),), len(message), True)
                       + message)
        self.close()

    # parser callbacks

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.expects_continue = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expects_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        raw = self.url
        if raw[:1] == b"/" and QUESTION not in raw and HASH not in raw:  # the usual origin-form path: nothing to parse
            raw_path, query = raw, b""
        else:
            url = httptools.parse_url(raw)
            raw_path, query = url.path, url.query or b""
        path = raw_path.decode("latin-1")
        if "%" in path:
            from urllib.parse import unquote

            path = unquote(path)
        scope = {
            "type": "http", "asgi": ASGI_VERSION, "http_version": parser.get_http_version(),
            "method": parser.get_method().decode("ascii"), "scheme": "http", "path": path, "raw_path": raw_path,
            "query_string": query, "root_path": "", "headers": self.headers,
            "server": self.local, "client": self.client,
        }
        request = Request(self, scope, parser.should_keep_alive() and not self.server.stopping,
                          self.expects_continue)
        self.parsing = request
        if self.current is None:
            self._start(request)
        else:
            self.queue.append(request)

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None and not self.parsing.done:
            self.parsing.feed(body)

    def on_message_complete(self) -> None:
        if self.parsing is not None:
            self.parsing.finish_body()
            self.parsing = None

    # running the app

    def _start(self, request: Request) -> None:
        self.current = request
        request.expect_continue = request.expect_continue and not request.body_done
        self.server.in_flight += 1
        # asyncio.Task named up front: loop.create_task names it after construction, and Python
        # 3.11 formats a "Task-<n>" name for every task constructed unnamed.
        # The request holds its task (the connection holds the request): no set of tasks to add
        # to and discard from per request; shutdown finds them by name among asyncio's tasks.
        request.task = asyncio.Task(self._run(request), loop=self.server.loop, name=REQUEST_TASK)

    async def _run(self, request: Request) -> None:
        try:
            await self.server.app(request.scope, request.receive, request.send)
        except Exception:
            log.exception("the application failed on %s %s", request.scope["method"], request.scope["path"])
            if not request.started and not self.closed:
                message = b"internal server error"
                request.keep_alive = False
                await request.send({"type": "http.response.start", "status": 500,
                                    "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
                await request.send({"type": "http.response.body", "body": message})
        finally:
            if not request.done:  # the app returned without answering in full
                request.done = True
                self.close()
                self.response_done(request)

    def response_done(self, request: Request) -> None:
        if self.current is not request:
            return
        self.server.in_flight -= 1
        self.current = None
        if not request.keep_alive or self.closed:
            self.close()
            return
        if self.queue:
            self._start(self.queue.popleft())
        else:
            self._arm_idle()
            if self.server.stopping:
                self.close()

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def close_if_idle(self) -> None:
        if self.current is None:
            self.close()

    def _arm_idle(self) -> None:
        self.idle_since = self.server.loop.time()


class HttpServer:
    """Serves one ASGI app on the given listening sockets until SIGTERM/SIGINT."""

    def __init__(self, app: App, graceful_seconds: float = 5.0) -> None:
        self.app = app
        self.graceful_seconds = graceful_seconds
        self.connections: set[Connection] = set()
        self.in_flight = 0
        self.stopping = False
        self.loop: Any = None
        bind = getattr(app, "bind_http_server", None)
        if bind is not None:  # the app may read `in_flight` (requests started and not yet answered)
            bind(self)

    async def serve(self, sockets: list[socket.socket]) -> None:
        self.loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, stop.set)
        lifespan = Lifespan(self.app)
        await lifespan.startup()
        servers = [await self.loop.create_server(lambda: Connection(self), sock=sock, backlog=backlog())
                   for sock in sockets]
        sweeper = self.loop.create_task(self._close_idle())
        try:
            await stop.wait()
        finally:
            self.stopping = True
            sweeper.cancel()
            for server in servers:
                server.close()
            for conn in list(self.connections):
                conn.close_if_idle()
            deadline = time.monotonic() + self.graceful_seconds
            while self.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            for conn in list(self.connections):
                conn.close()
            requests = [t for t in asyncio.all_tasks() if t.get_name() == REQUEST_TASK and not t.done()]
            for task in requests:
                task.cancel()
            await asyncio.gather(*requests, return_exceptions=True)
            await lifespan.shutdown()


    async def _close_idle(self) -> None:
        """Keep-alive connections idle for KEEP_ALIVE_SECONDS are closed (checked once a second:
        a timer armed per request cost more than the check)."""
        while True:
            await asyncio.sleep(1.0)
            cutoff = self.loop.time() - KEEP_ALIVE_SECONDS
            for conn in list(self.connections):
                if conn.current is None and 0 < conn.idle_since < cutoff:
                    conn.close()


class Lifespan:
    """Drives the app's ASGI lifespan protocol: startup before serving, shutdown after."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        self.task = asyncio.get_running_loop().create_task(
            self.app({"type": "lifespan", "asgi": {"version": "3.0"}}, self.inbox.get, self.outbox.put))
        await self.inbox.put({"type": "lifespan.startup"})
        answer = await self._answer()
        if answer["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"application startup failed: {answer.get('message', answer['type'])}")

    async def shutdown(self) -> None:
        if self.task is None or self.task.done():
            return
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self._answer()

    async def _answer(self) -> dict[str, Any]:
        getter = asyncio.ensure_future(self.outbox.get())
        await asyncio.wait({getter, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
        error = self.task.exception()
        raise RuntimeError(f"the application's lifespan ended: {error!r}")


def backlog() -> int:
    return int(os.environ.get("MLOPS_LISTEN_BACKLOG", "2048"))


def listen(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(backlog())
    sock.setblocking(False)
    return sock


def run(app_factory: Callable[[], App], addresses: list[tuple[str, int]], workers: int = 1,
        graceful_seconds: float = 5.0) -> None:
    """Serve the app `app_factory()` builds on `addresses`; `workers` > 1 pre-forks that many
    processes, each building its own app and binding its own SO_REUSEPORT sockets (the kernel
    spreads connections over them)."""
    if workers <= 1:
        _serve_in_process(app_factory, [listen(h, p) for h, p in addresses], graceful_seconds)
        return
    for host, port in addresses:  # fail in the parent, with one message, if the port is taken
        listen(host, port, reuse_port=True).close()
    Supervisor(app_factory, addresses, workers, graceful_seconds).run()


def _serve_in_process(app_factory: Callable[[], App], sockets: list[socket.socket], graceful_seconds: float) -> None:
    import uvloop

    uvloop.run(HttpServer(app_factory(), graceful_seconds).serve(sockets))


class Supervisor:
    """The parent of `workers` forked servers: restarts one that dies, and on SIGTERM/SIGINT
    passes the signal on and waits for them (each finishes its in-flight requests)."""

    def __init__(self, app_factory: Callable[[], App], addresses: list[tuple[str, int]], workers: int,
                 graceful_seconds: float) -> None:
        self.app_factory, self.addresses = app_factory, addresses
        self.workers, self.graceful_seconds = workers, graceful_seconds
        self.children: set[int] = set()
        self.stopping = False

    def spawn(self) -> None:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                sockets = [listen(h, p, reuse_port=True) for h, p in self.addresses]
                _serve_in_process(self.app_factory, sockets, self.graceful_seconds)
            except BaseException:  # noqa: BLE001 - a worker reports and exits, never returns to the parent's loop
                log.exception("worker %d failed", os.getpid())
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        self.children.add(pid)

    def stop(self, signum: int, _frame: Any) -> None:
        self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        for _ in range(self.workers):
            self.spawn()
        log.info("serving on %s with %d worker processes", self.addresses, self.workers)
        deadline = None
        while self.children:
            if self.stopping and deadline is None:
                deadline = time.monotonic() + self.graceful_seconds + 5
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                if deadline is not None and time.monotonic() > deadline:
                    for child in list(self.children):
                        os.kill(child, signal.SIGKILL)
                time.sleep(0.1)
                continue
            self.children.discard(pid)
            if not self.stopping:
                log.warning("worker %d exited (status %d); starting another", pid, status)
                time.sleep(0.5)  # a worker failing at start must not spin
                self.spawn()
        sys.stdout.flush()
