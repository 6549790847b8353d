"""A tiny ASGI app for tests/runtime/test_http_server.py, run as its own process:
    python http_server_app.py PORT WORKERS"""

import asyncio
import os
import sys

from mlops_runtime.http_server import run


class Held:
    """What /hold waits for, /release sets; /inflight reads the server's count of requests in flight."""

    def __init__(self):
        self.server = None
        self.release = None

    def bind_http_server(self, server):
        self.server = server

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] in ("/hold", "/release", "/inflight"):
            if self.release is None:
                self.release = asyncio.Event()
            if scope["path"] == "/hold":
                await self.release.wait()
                self.release = None
            elif scope["path"] == "/release":
                self.release.set()
            answer = str(self.server.in_flight).encode()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": answer})
            return
        await app(scope, receive, send)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                print("shutdown ran", flush=True)
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path == "/slow":
        print("slow started", flush=True)
        await asyncio.sleep(1.0)
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"one,", "more_body": True})
        await send({"type": "http.response.body", "body": b"two"})
        return
    if path == "/fail":
        raise RuntimeError("boom")
    answer = f"{scope['method']} {path} {len(body)} {os.getpid()} {scope['query_string'].decode()}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": answer})


if __name__ == "__main__":
    run(Held, [("127.0.0.1", int(sys.argv[1]))], int(sys.argv[2]))
