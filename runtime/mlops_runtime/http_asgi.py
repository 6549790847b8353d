"""The few ASGI building blocks the model server and the router share.

Both are raw ASGI applications served by `mlops_runtime.http_server` (httptools + uvloop): no
framework sits on the request path, so each request costs one body read, one orjson call and
one response.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"
REQUEST_ID_HEADER = b"x-request-id"
# V2 binary tensor extension: the length of the JSON header that precedes the tensor bytes
INFERENCE_HEADER = b"inference-header-content-length"
MAX_REQUEST_ID_CHARS = 128
MAX_ID_HEADER_CHARS = 4096


class HttpError(Exception):
    """A request the server refuses, with the status and the message the client sees."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (names arrive lower-cased from uvicorn)."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def _new_id_source() -> tuple[str, itertools.count[int]]:
    return os.urandom(8).hex(), itertools.count()


# uuid4() costs a getrandom syscall and a UUID object per request (about 2 us); a random
# per-process prefix and a counter are as unique. A forked worker draws its own prefix.
_id_prefix, _id_counter = _new_id_source()


def _reseed_ids() -> None:
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = _new_id_source()


os.register_at_fork(after_in_child=_reseed_ids)


def new_request_id() -> str:
    """32 hex digits, like uuid4().hex: 16 random per process, 16 of a counter."""
    return _id_prefix + next(_id_counter).to_bytes(8, "big").hex()  # a format spec costs ~2,000 instructions more


def request_id_of(scope: Scope) -> str:
    """The caller's `x-request-id` when it is usable, else a fresh one."""
    given = header(scope, REQUEST_ID_HEADER)
    if given:
        text = given.decode("latin-1").strip()
        if 0 < len(text) <= MAX_REQUEST_ID_CHARS and text.isprintable():
            return text
    return new_request_id()


def request_id_header(request_id: str) -> tuple[tuple[bytes, bytes], ...]:
    """The `x-request-id` response header, when the id can be one: printable ASCII of a sane
    length. A V2 body id that cannot (a tab, non-ASCII text, kilobytes) is still echoed
    unchanged in the body's `id`; it is never rewritten, and never smuggled into a header."""
    if len(request_id) <= MAX_ID_HEADER_CHARS and request_id.isascii() and request_id.isprintable():
        return ((REQUEST_ID_HEADER, request_id.encode()),)
    return ()


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing (413) anything over `limit` bytes before reading it all."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, f"request body of {int(declared)} bytes is over the limit of {limit} bytes")
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise HttpError(413, f"request body is over the limit of {limit} bytes")
        return body
    parts = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"request body is over the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def parse_json(body: bytes) -> Any:
    if not body:
        raise HttpError(400, "request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise HttpError(400, f"request body is not valid JSON: {error}") from None


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    extra_headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    headers = [(b"content-type", content_type), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def respond_json(
    send: Send,
    status: int,
    payload: Any,
    extra_headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    await respond(send, status, orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), JSON, extra_headers)


def error_body(status: int, message: str, request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message, "status": status}
    if request_id is not None:
        body["request_id"] = request_id
    return body


async def lifespan(receive: Receive, send: Send, startup: Callable[[], Awaitable[None]],
                   shutdown: Callable[[], Awaitable[None]]) -> None:
    """The ASGI lifespan protocol: run `startup` before serving and `shutdown` after."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await startup()
            except Exception as error:  # uvicorn reports it and exits non-zero
                await send({"type": "lifespan.startup.failed", "message": str(error)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def serve_app(app_factory: Callable[[], Any], addresses: list[tuple[str, int]], workers: int = 1) -> None:
    """Serve the ASGI app `app_factory()` builds (in each worker process when `workers` > 1)
    on `addresses` with `mlops_runtime.http_server` (httptools + uvloop, one write a response)."""
    from mlops_runtime import http_server

    http_server.run(app_factory, addresses, workers, graceful_seconds=5.0)
