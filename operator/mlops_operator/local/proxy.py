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

`ServiceProxy` runs the ports in the calling process (the executor's tests); the local
instance runs them in a process of their own (`ProxyProcess`, `serve`), which outlives it.
A port and a backend are a loopback port (local mode) or an (address, port) pair: the node
stand-in of the control-plane tier listens on ClusterIPs and forwards to Pod IPs, with the
proxy's sockets inside the cluster's network namespace (`netns`).
"""

from __future__ import annotations

import asyncio
import ctypes
import hmac
import itertools
import json
import os
import secrets
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mlops_operator.local.control_api import answer_json
from mlops_operator.local.processes import Managed, ProcessTable
from mlops_runtime import serving_process

LOCAL_HOST = "127.0.0.1"
BACKEND_WAIT_SECONDS = 10.0
CHUNK = 65536
REPLAY_LIMIT = 1 << 20
# setns(2) flag: join a network namespace (Python 3.11 has no os.setns).
CLONE_NEWNET = 0x40000000

Address = tuple[str, int]
Endpoint = int | Address
"""A loopback port, or an (IPv4 address, port) pair."""


def address_of(endpoint: Endpoint) -> Address:
    return (LOCAL_HOST, endpoint) if isinstance(endpoint, int) else (str(endpoint[0]), int(endpoint[1]))


def enter_network_namespace(path: str | os.PathLike[str]) -> None:
    """Move the calling thread (only it: the namespace is per thread) into the network
    namespace at `path` (`/run/netns/<name>`); sockets it creates from then on live there."""
    libc = ctypes.CDLL(None, use_errno=True)
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(descriptor, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns({path}): {os.strerror(error)}")
    finally:
        os.close(descriptor)


def free_port(host: str = LOCAL_HOST) -> int:
    """A free port below the ephemeral range, where no client can connect to itself."""
    return serving_process.free_port(host)


def port_is_free(port: int, host: str = LOCAL_HOST) -> bool:
    """As the proxy's listeners bind (SO_REUSEADDR)."""
    return serving_process.port_is_free(port, host, reuse_address=True)


class ServiceProxy:
    """TCP forwarders, run by an asyncio loop in a background thread (inside the network
    namespace at `netns` when given: every socket the loop opens lives there).

    `set_backends(port, [backends])` opens the listening port on first use and changes
    where new connections go; `close(port)` stops listening. Ports and backends are
    loopback ports or (address, port) pairs."""

    def __init__(self, netns: str | os.PathLike[str] | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._servers: dict[Endpoint, asyncio.base_events.Server] = {}
        self._backends: dict[Endpoint, list[Endpoint]] = {}
        self._turn = itertools.count()
        self._changed = asyncio.Event()
        entered: list[BaseException | None] = []
        started = threading.Event()

        def run() -> None:
            try:
                if netns is not None:
                    enter_network_namespace(netns)
                entered.append(None)
            except OSError as error:
                entered.append(error)
                return
            finally:
                started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="service-proxy", daemon=True)
        self._thread.start()
        started.wait()
        if entered[0] is not None:
            raise entered[0]

    def set_backends(self, port: Endpoint, backends: Iterable[Endpoint]) -> None:
        """Raises OSError when `port` cannot be listened on."""
        future = asyncio.run_coroutine_threadsafe(self._set(port, list(backends)), self._loop)
        future.result(timeout=10)

    def backends(self, port: Endpoint) -> list[Endpoint]:
        return list(self._backends.get(port, []))

    def ports(self) -> list[Endpoint]:
        return list(self._servers)

    def close(self, port: Endpoint) -> None:
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

    async def _set(self, port: Endpoint, backends: list[Endpoint]) -> None:
        self._backends[port] = backends
        if port not in self._servers:
            self._servers[port] = await asyncio.start_server(
                lambda reader, writer: self._forward(port, reader, writer),
                *address_of(port),
                reuse_address=True,
            )
        if backends:
            self._changed.set()
            self._changed = asyncio.Event()

    async def _close(self, port: Endpoint) -> None:
        server = self._servers.pop(port, None)
        self._backends.pop(port, None)
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _backend(self, port: Endpoint, refused: set[Address], exclude: Address | None = None
                       ) -> Address | None:
        deadline = self._loop.time() + BACKEND_WAIT_SECONDS
        while True:
            backends = [a for a in map(address_of, self._backends.get(port, [])) if a not in refused and a != exclude]
            if backends:
                return backends[next(self._turn) % len(backends)]
            remaining = deadline - self._loop.time()
            if remaining <= 0 or port not in self._servers:
                return None
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 0.1))
            except TimeoutError:
                refused.clear()  # a backend that refused may be back (restarted on its port)

    async def _connect(self, port: Endpoint, exclude: Address | None = None
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to a backend of `port`; one that refuses (stopping, crashed) is
        skipped for another, or for the next one to become ready."""
        refused: set[Address] = set()
        while True:
            backend = await self._backend(port, refused, exclude)
            if backend is None:
                return None
            try:
                return await asyncio.open_connection(*backend)
            except OSError:
                refused.add(backend)

    async def _forward(self, port: Endpoint, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
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

    async def _downstream(self, port: Endpoint, client_writer: asyncio.StreamWriter, exchange: _Exchange) -> None:
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
            connection = await self._connect(port, exclude=exchange.backend)
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
        self.backend: Address | None = (str(peer[0]), int(peer[1])) if peer else None

    def sent(self, data: bytes) -> None:
        if self._tracking:
            self.unanswered += data
            if len(self.unanswered) > REPLAY_LIMIT:
                self.unanswered, self._tracking = b"", False

    def answered(self) -> None:
        self.unanswered, self._tracking = b"", True


# ---------------------------------------------------------------- the Service ports' own process
#
# The data plane must not depend on the control plane being alive: the local instance runs
# the Service ports in a process of their own, which a kill -9 of the instance leaves
# serving (the model servers survive too: each runs in its own session). A restarted
# instance adopts it (recorded in pids.json under PROXY_KEY, its control address in
# RECORD_NAME) and sets its backends again; `mlops local down` stops it by pid.

PROXY_KEY = "proxy"
RECORD_NAME = "proxy.json"
CONTROL_TIMEOUT = 10.0
START_TIMEOUT = 30.0
RECORD_POLL_SECONDS = 1.0


def _control_handler(proxy: ServiceProxy, token: str) -> type[BaseHTTPRequestHandler]:
    """The proxy process's control API, on a loopback port of its own (never a Service
    port), for whoever holds the token in its 0600 record:

        GET    /backends          {"ports": {"<port>": [backend ports]}}
        PUT    /backends/<port>   {"backends": [ports]}   listen on <port> (409: cannot)
        DELETE /backends/<port>   stop listening
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self._authorised() and self._port() is None and self.path == "/backends":
                self._answer(200, {"ports": {str(port): proxy.backends(port) for port in proxy.ports()}})

        def do_PUT(self) -> None:
            port = self._port() if self._authorised() else None
            if port is None:
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                backends = [int(b) for b in json.loads(self.rfile.read(length))["backends"]]
            except (ValueError, KeyError, TypeError) as error:
                return self._answer(400, {"error": f"expected {{\"backends\": [ports]}}: {error}"})
            try:
                proxy.set_backends(port, backends)
            except OSError as error:
                return self._answer(409, {"error": str(error)})
            self._answer(200, {"port": port, "backends": backends})

        def do_DELETE(self) -> None:
            port = self._port() if self._authorised() else None
            if port is not None:
                proxy.close(port)
                self._answer(200, {"port": port})

        def _authorised(self) -> bool:
            given = self.headers.get("Authorization", "")
            if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return True
            self._answer(401, {"error": "unauthorised"})
            return False

        def _port(self) -> int | None:
            """The port a /backends/<port> path names; answers 404 for any other path
            except /backends itself."""
            if self.path == "/backends":
                return None
            prefix, _, port = self.path.rpartition("/")
            if prefix == "/backends" and port.isdigit():
                return int(port)
            self._answer(404, {"error": f"no such endpoint {self.path}"})
            return None

        def _answer(self, code: int, body: Any) -> None:
            answer_json(self, code, body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def serve(record: Path) -> int:
    """Serve Service ports until SIGTERM, or until `record` is removed (its state folder
    is gone: nobody could find this process any more). What `python -m
    mlops_operator.local.proxy RECORD` runs."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stopping.set())
    proxy = ServiceProxy()
    token = secrets.token_urlsafe(24)
    control = ThreadingHTTPServer((LOCAL_HOST, 0), _control_handler(proxy, token))
    threading.Thread(target=control.serve_forever, name="proxy-control", daemon=True).start()
    record = Path(record)
    temporary = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump({"pid": os.getpid(), "controlPort": control.server_address[1], "token": token}, handle)
    os.replace(temporary, record)
    while not stopping.wait(RECORD_POLL_SECONDS):
        if not record.exists():
            break
    control.shutdown()
    proxy.stop()
    return 0


class ProxyProcess:
    """The instance's handle on the proxy process, with `ServiceProxy`'s interface.

    It keeps a mirror of the backends it set, so that the executor's every pass asks
    nothing of the process; should the process die, the next `ports()` starts a new one
    with no ports, and the executor sets them all again."""

    def __init__(self, processes: ProcessTable, record: Path, log_path: Path) -> None:
        self._processes = processes
        self._record = Path(record)
        self._log_path = Path(log_path)
        self._managed: Managed | None = None
        self._control = ""
        self._token = ""
        self._mirror: dict[int, list[int]] = {}
        self._stopped = False

    @classmethod
    def attach_or_start(cls, processes: ProcessTable, record: Path, log_path: Path) -> ProxyProcess:
        """The proxy an earlier instance left running (adopted into `processes`), or a
        new one."""
        handle = cls(processes, record, log_path)
        if not handle._attach():
            handle._start()
        return handle

    @property
    def pid(self) -> int | None:
        return self._managed.pid if self._managed is not None else None

    def _attach(self) -> bool:
        managed = self._processes.get(PROXY_KEY)
        if managed is None or managed.poll() is not None:
            return False
        try:
            info = json.loads(self._record.read_text())
        except (OSError, ValueError):
            info = {}
        if info.get("pid") != managed.pid:
            self._processes.stop(managed, grace=2.0)
            return False
        self._managed, self._control, self._token = managed, f"http://{LOCAL_HOST}:{info['controlPort']}", info["token"]
        try:
            ports = self._call("GET", "/backends")["ports"]
        except OSError:
            self._processes.stop(managed, grace=2.0)
            self._managed = None
            return False
        self._mirror = {int(port): list(backends) for port, backends in ports.items()}
        return True

    def _start(self) -> None:
        self._record.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "mlops_operator.local.proxy", str(self._record)]
        managed = self._processes.spawn(PROXY_KEY, argv, dict(os.environ), self._record.parent, self._log_path)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and managed.poll() is None:
            try:
                info = json.loads(self._record.read_text())
            except (OSError, ValueError):
                info = {}
            if info.get("pid") == managed.pid:
                self._managed, self._control, self._token = managed, f"http://{LOCAL_HOST}:{info['controlPort']}", \
                    info["token"]
                self._mirror = {}
                return
            time.sleep(0.05)
        self._processes.stop(managed, grace=2.0)
        raise RuntimeError(f"the Service proxy process did not start (see {self._log_path})")

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        """One control request; OSError when it cannot be made or is refused."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self._control + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self._token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=CONTROL_TIMEOUT) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise OSError(f"proxy control {method} {path}: {error.code} {error.read().decode(errors='replace')}") \
                from None

    def _alive(self) -> bool:
        if self._managed is not None and self._managed.poll() is None:
            return True
        if self._stopped or not self._record.parent.is_dir():  # stopped, or its state folder is gone
            return False
        if self._managed is not None:
            self._processes.forget(self._managed)
        self._start()
        return True

    def set_backends(self, port: int, backends: Iterable[int]) -> None:
        """Raises OSError when `port` cannot be listened on."""
        wanted = list(backends)
        if not self._alive():
            return
        self._call("PUT", f"/backends/{port}", {"backends": wanted})
        self._mirror[port] = wanted

    def backends(self, port: int) -> list[int]:
        return list(self._mirror.get(port, []))

    def ports(self) -> list[int]:
        return list(self._mirror) if self._alive() else []

    def close(self, port: int) -> None:
        self._mirror.pop(port, None)
        if self._managed is not None and self._managed.poll() is None:
            try:
                self._call("DELETE", f"/backends/{port}")
            except OSError:
                pass

    def stop(self, grace: float = 5.0) -> None:
        """Stop the process: every Service port closes (`mlops local down`, a clean stop)."""
        self._stopped = True
        self._mirror.clear()
        if self._managed is not None:
            self._processes.stop(self._managed, grace)
        self._record.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(serve(Path(sys.argv[1])))
