"""`k8s_emulator`: kmock's Kubernetes API emulator on 127.0.0.1, for tests of the
Kubernetes path (the cluster adapter, the kopf wiring).

The emulator runs in its own thread with its own event loop, so that synchronous clients
(the `kubernetes` package, `KubernetesCluster`) and asynchronous ones (kopf, in the test's
loop) both talk to it over real HTTP. Its discovery declares every kind of
`mlops_operator.cluster.resources` (our four with a status subresource, Jobs, Deployments,
Services, ConfigMaps, Secrets, Pods, Events, Namespaces, CRDs, ...).

kmock keeps objects as plain JSON: no resourceVersion, no generation, no garbage
collection, no schema; a patch is a naive merge (kmock 0.8, as measured when these tests were written). This
subclass adds what our adapters need from a server and is cheap to emulate honestly:
what every API server stamps on create (`uid`, which owner references need;
`creationTimestamp`; a `resourceVersion`, which kopf's patches test and which never
changes here), label selectors on list and watch, and PUT (replace; status kept for kinds
with a status subresource). Semantics it lacks belong to the tests of the in-memory cluster.

kmock picks the reaction that serves a request by running each reaction's filter over its
whole log of requests (`request in reaction`), so every request cost time in proportion to
all the requests before it (measured: a GET took 26 ms after 500 requests, 180 ms after
2,000; the kopf wiring test, polling for minutes, spent most of its 90 s there). The
subclass keeps in kmock's log only the requests being served, which is all a filter of
criteria (method, path, action) needs to match the request at hand; nothing here selects
requests by their position in the log. Every request stays in a log of its own (`log`),
which `K8sEmulator.requests()` returns, oldest first.

kmock 0.8 cannot parse `/api/v1/namespaces` and `/api/v1/namespaces/<name>` as paths of
the `namespaces` resource (it reads "namespaces" as the start of a namespaced path and
answers 500), so Namespace objects cannot be created or read through it.

Use from a test::

    def test_something(k8s_emulator):
        cluster = KubernetesCluster(k8s_emulator.api_client, apply_strategy="merge")
        ...
        k8s_emulator.object("v1", "ConfigMap", "ns", "name")   # what the server stores
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

import attrs
import kmock
import kubernetes.client
import pytest
from kmock._internal import enums, rendering

from mlops_operator.cluster import mergepatch, selectors
from mlops_operator.cluster.resources import Resource, all_resources, resource_for

T = TypeVar("T")
TOKEN = "kmock-test-token"
VERBS = {"list", "watch", "get", "patch", "create", "delete", "update"}


def kmock_resource(resource: Resource) -> kmock.resource:
    return kmock.resource(group=resource.group, version=resource.version, plural=resource.plural)


def _has_status(resource: kmock.resource) -> bool:
    return any(kmock_resource(r) == resource and r.has_status_subresource for r in all_resources())


def _selected(request: rendering.Request, obj: Any) -> bool:
    text = request.params.get("labelSelector")
    if not text or not isinstance(obj, dict):
        return True
    labels = (obj.get("metadata") or {}).get("labels")
    return selectors.matches(selectors.parse(text), labels)


@attrs.define(kw_only=True)
class SelectingEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus metadata stamped on create, `?labelSelector=` on list and
    watch, and PUT as a full replace; kmock's own log holds only the requests in service,
    `log` every request."""

    log: list[rendering.Request] = attrs.field(factory=list, init=False)

    async def _handle(self, request: rendering.Request) -> Any:
        self.log.append(request)
        try:
            request = await self._prepare(request)
            return await super()._handle(request)
        finally:
            # Served (a watch: its stream ended): out of the log that kmock's filters scan.
            for index in range(len(self._requests) - 1, -1, -1):
                if self._requests[index] is request:
                    del self._requests[index]
                    break

    async def _prepare(self, request: rendering.Request) -> rendering.Request:
        if request.resource is not None and request.action == enums.action.CREATE and isinstance(request.data, dict):
            meta = dict(request.data.get("metadata") or {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
            meta.setdefault("resourceVersion", "1")
            request = self._rewrite(request, data={**request.data, "metadata": meta})
        if request.resource is not None and request.method == enums.method.PUT and request.name:
            key = (request.resource, request.namespace, request.name)
            async with self._lock:
                stored = self._objects[key].raw if key in self._objects and not self._objects[key].deleted else None
            # kmock only merges: a PUT becomes the merge patch that makes the object equal the body.
            patch = mergepatch.diff(stored, request.data) if stored is not None and isinstance(
                request.data, dict) else request.data
            if isinstance(patch, dict) and request.subresource is None and _has_status(request.resource):
                patch.pop("status", None)  # as the API: status is written only through /status
            request = self._rewrite(request, action=enums.action.UPDATE, data=patch)
        return request

    def _rewrite(self, request: rendering.Request, **changes: Any) -> rendering.Request:
        replaced = attrs.evolve(request, **changes)
        # kmock routes a request by its identity in the log of requests: log the rewritten one.
        self._requests[:] = [replaced if r is request else r for r in self._requests]
        self.log[:] = [replaced if r is request else r for r in self.log]
        return replaced

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        result: Any = await super()._serve_list(request)
        result["items"] = [item for item in result["items"] if _selected(request, item)]
        return result

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        async for event in super()._serve_watch(request):
            if not isinstance(event, dict) or _selected(request, event.get("object")):
                yield event


@dataclass
class K8sEmulator:
    """A running emulator: `url`, a configured `api_client`, and the kmock `handler` itself
    (touch its state only through `run`, which executes in the emulator's own loop)."""

    url: str
    api_client: kubernetes.client.ApiClient
    handler: SelectingEmulator
    loop: asyncio.AbstractEventLoop

    def run(self, fn: Callable[[], T] | Coroutine[Any, Any, T], timeout: float = 10) -> T:
        """Run a function or coroutine in the emulator's loop and return its result."""
        async def call() -> T:
            return await fn if asyncio.iscoroutine(fn) else fn()  # type: ignore[misc,operator]

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout)

    def object(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object as the emulator stores it, or None when it does not exist (or was deleted)."""
        resource = resource_for(api_version, kind)
        key = (kmock_resource(resource), namespace if resource.namespaced else None, name)

        def read() -> dict[str, Any] | None:
            objects = self.handler.objects
            if key not in objects or objects[key].deleted:
                return None
            return dict(objects[key].raw)

        return self.run(read)

    def requests(self) -> list[rendering.Request]:
        """Every request the emulator has served so far, oldest first."""
        return self.run(lambda: list(self.handler.log))


def declare_resources(handler: kmock.KubernetesEmulator) -> None:
    for resource in all_resources():
        handler.resources[kmock_resource(resource)] = kmock.ResourceInfo(
            kind=resource.kind,
            singular=resource.kind.lower(),
            namespaced=resource.namespaced,
            verbs=VERBS,
            subresources={"status"} if resource.has_status_subresource else set(),
        )


def api_client_for(url: str) -> kubernetes.client.ApiClient:
    configuration = kubernetes.client.Configuration(host=url)
    configuration.api_key = {"BearerToken": TOKEN}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    configuration.verify_ssl = False
    return kubernetes.client.ApiClient(configuration)


@pytest.fixture
def k8s_emulator() -> Iterator[K8sEmulator]:
    started = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        state["stop"] = stop
        state["loop"] = asyncio.get_running_loop()
        async with SelectingEmulator() as handler, kmock.Server(handler, host="127.0.0.1") as server:
            declare_resources(handler)
            state["handler"] = handler
            state["url"] = str(server.url).rstrip("/")
            started.set()
            await stop.wait()

    def main() -> None:
        try:
            asyncio.run(serve())
        except BaseException as error:  # surfaced to the fixture below
            state["error"] = error
        finally:
            started.set()

    thread = threading.Thread(target=main, name="k8s-emulator", daemon=True)
    thread.start()
    if not started.wait(15) or "error" in state:
        raise RuntimeError(f"the kmock emulator did not start: {state.get('error')!r}")
    client = api_client_for(state["url"])
    try:
        yield K8sEmulator(url=state["url"], api_client=client, handler=state["handler"], loop=state["loop"])
    finally:
        client.close()
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(10)
