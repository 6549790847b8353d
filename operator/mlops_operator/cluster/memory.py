"""An in-memory cluster with the API server's semantics, for tests, local mode and benchmarks.

What it keeps from the real API (each is covered by tests/unit/test_memory_cluster.py):

- `metadata.uid` (uuid4), `creationTimestamp` (from the injectable clock `now`),
  `resourceVersion` (one counter for the whole cluster, as a string) and optimistic
  concurrency: `replace`, `patch` and `patch_status` with a stale resource version raise
  Conflict; a merge patch carrying `metadata.resourceVersion` is a precondition too.
- `metadata.generation`: 1 on create, bumped when anything outside metadata and status
  changes, and when a deletion starts (deletionTimestamp is set).
- The status subresource (kinds marked `has_status_subresource` in resources.py): create
  drops status (Pods start `Pending`, Namespaces `Active`), writes to the main resource
  keep the stored status, only `patch_status` writes it.
- Errors worded as the API words them: `trainingruns.mlops.seed.io "x" already exists`,
  `... "x" not found`, `Operation cannot be fulfilled on ...`; invalid names, labels and
  owner references are `Invalid` (422).
- Label selectors (equality and set based) in `list`; `generateName`; namespaced versus
  cluster-scoped kinds from resources.py.
- Finalizers: deleting an object that has any sets `deletionTimestamp` and keeps it; the
  write that removes the last finalizer deletes it; a deleting object takes no new ones.
- Garbage collection in the background style: when an owner is gone, each dependent (in
  the owner's namespace, or anywhere for a cluster-scoped owner) whose ownerReferences
  name the owner's uid is deleted, transitively, unless another of its owners still
  exists (then only the dangling reference is removed).

`apply` creates the object if it is missing; otherwise labels, annotations and owner
references are merged in (keys and uids that `obj` names win, others stay), finalizers are
added, and every other top-level field that `obj` carries (spec, data, ...) replaces the
stored one wholesale. That is server-side apply for a single field manager that owns those
fields. Status is never applied. An apply that changes nothing writes nothing: no new
resourceVersion, no generation bump, no event.

Objects returned are copies (an orjson round trip: about twice as fast as a recursive
Python copy, see bench/cluster_ops.py), so callers cannot reach the stored state. Stored
objects are never mutated in place: each write builds a new dict sharing the untouched
parts with the old one. One re-entrant lock makes every method atomic across threads.
Listeners run under that lock right after each change with ('ADDED' | 'MODIFIED' |
'DELETED', a copy of the object): keep them short (queue the event), they may call back
into the cluster from the same thread.
"""

from __future__ import annotations

import random
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from . import mergepatch, selectors
from .port import AlreadyExists, Conflict, Invalid, LabelSelector, NotFound, Obj
from .resources import Resource, resource_for

Listener = Callable[[str, Obj], None]

_SYSTEM_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp",
                    "deletionTimestamp", "deletionGracePeriodSeconds")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# The API's alphabet for generated name suffixes: no vowels, no look-alike characters.
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_INITIAL_STATUS: dict[tuple[str, str], dict[str, Any]] = {
    ("v1", "Pod"): {"phase": "Pending"},
    ("v1", "Namespace"): {"phase": "Active"},
}


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _timestamp(moment: datetime) -> str:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _copy(obj: Any) -> Any:
    """A private copy of JSON-shaped data (also normalises tuples and datetimes as the API would)."""
    try:
        return orjson.loads(orjson.dumps(obj))
    except TypeError as error:
        raise Invalid(f"the object is not JSON: {error}") from None


@dataclass(slots=True)
class _Entry:
    obj: Obj  # never mutated once stored: writes replace the entry's obj
    raw: bytes  # orjson of obj: the source of every copy handed out


class InMemoryCluster:
    """The cluster port over a dict, with the API's semantics (see the module docstring).

    `now` is the clock for creation and deletion timestamps; `seed` makes generated names
    (`generateName`) reproducible."""

    def __init__(self, *, now: Callable[[], datetime] = _utc_now, seed: int | None = None) -> None:
        self._now = now
        self._random = random.Random(seed)
        self._lock = threading.RLock()
        self._revision = 0
        # (apiVersion, kind) -> namespace ("" for cluster-scoped) -> name -> entry
        self._store: dict[tuple[str, str], dict[str, dict[str, _Entry]]] = {}
        # (apiVersion, kind) -> (label key, value) -> {(namespace, name)}: equality selectors
        self._label_index: dict[tuple[str, str], dict[tuple[str, str], set[tuple[str, str]]]] = {}
        # uid -> (apiVersion, kind, namespace, name); owner uid -> dependents' keys
        self._by_uid: dict[str, tuple[str, str, str, str]] = {}
        self._dependents: dict[str, set[tuple[str, str, str, str]]] = {}
        self._listeners: list[Listener] = []

    # -- observation -------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The cluster-wide resourceVersion counter: it moves on every change, only then."""
        return self._revision

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(event_type, obj)` after every change; returns a function that removes it."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_uid)

    def restore(self, objects: Iterable[Obj]) -> None:
        """Put objects saved from a cluster back exactly as they were (uids, resourceVersions,
        generations, timestamps), without notifying listeners; the revision counter continues
        after the highest resourceVersion seen. For restarting a local instance."""
        with self._lock:
            for obj in objects:
                stored = _copy(obj)
                resource = self._resource_of(stored)
                meta = stored["metadata"]
                namespace = meta.get("namespace", "") if resource.namespaced else ""
                name = meta["name"]
                key = (resource.api_version, resource.kind)
                previous = self._store.get(key, {}).get(namespace, {}).get(name)
                if previous is not None:
                    self._by_uid.pop(previous.obj["metadata"].get("uid"), None)
                    self._index_labels(key, namespace, name, previous.obj["metadata"].get("labels"), None)
                    self._index_owners(resource, namespace, name,
                                       previous.obj["metadata"].get("ownerReferences"), None)
                self._store.setdefault(key, {}).setdefault(namespace, {})[name] = _Entry(stored, orjson.dumps(stored))
                self._by_uid[meta["uid"]] = (resource.api_version, resource.kind, namespace, name)
                self._index_labels(key, namespace, name, None, meta.get("labels"))
                self._index_owners(resource, namespace, name, None, meta.get("ownerReferences"))
                self._revision = max(self._revision, int(meta.get("resourceVersion") or 0))

    # -- the port: reading -----------------------------------------------------------

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj:
        resource = resource_for(api_version, kind)
        with self._lock:
            entry = self._find(resource, namespace, name)
            return orjson.loads(entry.raw)

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        label_selector: LabelSelector = None,
    ) -> list[Obj]:
        resource = resource_for(api_version, kind)
        selector = selectors.parse(label_selector)
        key = (api_version, kind)
        with self._lock:
            by_namespace = self._store.get(key)
            if not by_namespace:
                return []
            scope = self._scope(resource, namespace)
            found = [(namespace, name, entry)
                     for namespace, name, entry in self._candidates(key, by_namespace, scope, selector)
                     if not selector or selectors.matches(selector, entry.obj["metadata"].get("labels"))]
            found.sort(key=lambda item: (item[0], item[1]))  # the API lists in (namespace, name) order
            return [orjson.loads(entry.raw) for _, _, entry in found]

    # -- the port: writing -----------------------------------------------------------

    def create(self, obj: Obj) -> Obj:
        with self._lock:
            return self._create(_copy(obj), generate=True)

    def apply(self, obj: Obj, field_manager: str = "mlops-operator") -> Obj:
        desired = _copy(obj)
        resource = self._resource_of(desired)
        metadata = desired.get("metadata") or {}
        name = metadata.get("name")
        if not name:
            raise Invalid(f"{resource.kind}: metadata.name is required to apply (generateName is not)")
        with self._lock:
            namespace = self._namespace_of(resource, metadata, name)
            entry = self._entries(resource, namespace).get(name)
            if entry is None:
                desired["metadata"] = {k: v for k, v in metadata.items() if k != "resourceVersion"}
                return self._create(desired, generate=False)
            self._check_precondition(resource, entry, metadata.get("resourceVersion"))
            current = entry.obj
            merged = dict(current)
            for field, value in desired.items():
                if field not in ("apiVersion", "kind", "metadata", "status"):
                    merged[field] = value
            merged["metadata"] = _apply_metadata(current["metadata"], metadata)
            return self._update(resource, entry, merged)

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> Obj:
        resource = resource_for(api_version, kind)
        patch = _copy(patch)
        if not isinstance(patch, dict):
            raise Invalid(f"{resource.qualified} {name!r}: a merge patch must be an object")
        with self._lock:
            entry = self._find(resource, namespace, name)
            in_body = (patch.get("metadata") or {}).get("resourceVersion")
            self._check_precondition(resource, entry, resource_version or in_body)
            current = entry.obj
            merged = mergepatch.merge(current, {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")})
            merged["metadata"] = _keep_system_metadata(merged.get("metadata"), current["metadata"])
            if resource.has_status_subresource:
                _restore(merged, current, "status")
            return self._update(resource, entry, merged)

    def replace(self, obj: Obj) -> Obj:
        new = _copy(obj)
        resource = self._resource_of(new)
        metadata = new.get("metadata") or {}
        name = metadata.get("name")
        if not name:
            raise Invalid(f"{resource.kind}: metadata.name is required")
        resource_version = metadata.get("resourceVersion")
        if not resource_version:
            raise Invalid(
                f'{resource.kind} "{name}" is invalid: metadata.resourceVersion: Invalid value: 0x0: '
                "must be specified for an update"
            )
        with self._lock:
            namespace = self._namespace_of(resource, metadata, name)
            entry = self._find(resource, namespace, name)
            self._check_precondition(resource, entry, resource_version)
            current = entry.obj
            new["metadata"] = _keep_system_metadata(metadata, current["metadata"])
            if resource.has_status_subresource:
                _restore(new, current, "status")
            return self._update(resource, entry, new)

    def patch_status(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> Obj:
        resource = resource_for(api_version, kind)
        if not resource.has_status_subresource:
            raise NotFound(f"the server could not find the requested resource ({resource.qualified}/status)")
        status = _copy(status)
        if not isinstance(status, dict):
            raise Invalid(f'{resource.qualified} "{name}": status must be an object')
        with self._lock:
            entry = self._find(resource, namespace, name)
            self._check_precondition(resource, entry, resource_version)
            new = dict(entry.obj)
            new["status"] = mergepatch.merge(entry.obj.get("status") or {}, status)
            return self._update(resource, entry, new)

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        resource = resource_for(api_version, kind)
        with self._lock:
            entry = self._find(resource, namespace, name)
            self._delete(resource, entry)

    # -- internals ---------------------------------------------------------------------

    def _resource_of(self, obj: Any) -> Resource:
        if not isinstance(obj, dict) or not obj.get("apiVersion") or not obj.get("kind"):
            raise Invalid("an object needs apiVersion and kind")
        if not isinstance(obj.get("metadata", {}), dict):
            raise Invalid(f"{obj['kind']}: metadata must be an object")
        return resource_for(obj["apiVersion"], obj["kind"])

    def _namespace_of(self, resource: Resource, metadata: Mapping[str, Any], name: str) -> str:
        if not resource.namespaced:
            return ""
        namespace = metadata.get("namespace")
        if not namespace:
            raise Invalid(f'{resource.kind} "{name}": metadata.namespace is required for a namespaced kind')
        return namespace

    def _scope(self, resource: Resource, namespace: str | None) -> str | None:
        """The namespace key to look in: "" for cluster-scoped kinds, None for all namespaces."""
        return "" if not resource.namespaced else namespace

    def _entries(self, resource: Resource, namespace: str | None) -> dict[str, _Entry]:
        by_namespace = self._store.get((resource.api_version, resource.kind))
        if not by_namespace:
            return {}
        return by_namespace.get("" if not resource.namespaced else (namespace or ""), {})

    def _find(self, resource: Resource, namespace: str | None, name: str) -> _Entry:
        if resource.namespaced and not namespace:
            raise Invalid(f'{resource.kind} "{name}": a namespace is required for a namespaced kind')
        entry = self._entries(resource, namespace).get(name)
        if entry is None:
            raise NotFound(f'{resource.qualified} "{name}" not found')
        return entry

    def _candidates(
        self,
        key: tuple[str, str],
        by_namespace: dict[str, dict[str, _Entry]],
        scope: str | None,
        selector: selectors.Selector,
    ) -> Iterator[tuple[str, str, _Entry]]:
        positive = [r for r in selector if r.operator in ("=", "in")]
        if positive:
            # Objects that can match are under one of the values of every "=" / "in" requirement:
            # start from the requirement with the fewest of them (the rest is checked by matching).
            index = self._label_index.get(key, {})
            sets = [set().union(*(index.get((r.key, value), ()) for value in r.values)) for r in positive]
            smallest = min(sets, key=len)
            for namespace, name in smallest:
                if scope is None or namespace == scope:
                    entry = by_namespace.get(namespace, {}).get(name)
                    if entry is not None:
                        yield namespace, name, entry
            return
        namespaces: Iterable[str] = by_namespace if scope is None else (scope,)
        for namespace in namespaces:
            for name, entry in by_namespace.get(namespace, {}).items():
                yield namespace, name, entry

    def _check_precondition(self, resource: Resource, entry: _Entry, resource_version: str | None) -> None:
        if resource_version and resource_version != entry.obj["metadata"]["resourceVersion"]:
            raise Conflict(
                f'Operation cannot be fulfilled on {resource.qualified} "{entry.obj["metadata"]["name"]}": '
                "the object has been modified; please apply your changes to the latest version and try again"
            )

    def _next_revision(self) -> str:
        self._revision += 1
        return str(self._revision)

    def _generate_name(self, resource: Resource, namespace: str, prefix: str) -> str:
        entries = self._entries(resource, namespace)
        for _ in range(16):
            name = prefix + "".join(self._random.choice(_GENERATE_ALPHABET) for _ in range(5))
            if name not in entries:
                return name
        raise AlreadyExists(f'{resource.qualified} "{prefix}": no free generated name')  # pragma: no cover

    def _create(self, obj: Obj, *, generate: bool) -> Obj:
        resource = self._resource_of(obj)
        metadata = obj.setdefault("metadata", {})
        if metadata.get("resourceVersion"):
            raise Invalid(f"{resource.kind}: resourceVersion should not be set on objects to be created")
        name = metadata.get("name")
        if not name and generate and metadata.get("generateName"):
            namespace = self._namespace_of(resource, metadata, metadata["generateName"])
            name = metadata["name"] = self._generate_name(resource, namespace, metadata["generateName"])
        if not name:
            raise Invalid(f"{resource.kind}: metadata.name or metadata.generateName is required")
        namespace = self._namespace_of(resource, metadata, name)
        if not resource.namespaced:
            metadata.pop("namespace", None)
        entries = self._entries(resource, namespace)
        if name in entries:
            raise AlreadyExists(f'{resource.qualified} "{name}" already exists')
        for field in _SYSTEM_METADATA:
            metadata.pop(field, None)
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = _timestamp(self._now())
        metadata["generation"] = 1
        if resource.has_status_subresource:
            obj.pop("status", None)
            initial = _INITIAL_STATUS.get((resource.api_version, resource.kind))
            if initial is not None:
                obj["status"] = dict(initial)
        _validate(resource, obj)
        metadata["resourceVersion"] = self._next_revision()
        entry = _Entry(obj, orjson.dumps(obj))
        key = (resource.api_version, resource.kind)
        self._store.setdefault(key, {}).setdefault(namespace, {})[name] = entry
        self._by_uid[metadata["uid"]] = (resource.api_version, resource.kind, namespace, name)
        self._index_labels(key, namespace, name, None, metadata.get("labels"))
        self._index_owners(resource, namespace, name, None, metadata.get("ownerReferences"))
        self._notify("ADDED", entry)
        return orjson.loads(entry.raw)

    def _update(self, resource: Resource, entry: _Entry, new: Obj) -> Obj:
        """Store `new` as the object's next state, unless it equals the current one."""
        current = entry.obj
        if new == current:
            return orjson.loads(entry.raw)
        old_meta = current["metadata"]
        meta = dict(new["metadata"])
        new["metadata"] = meta
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or ()) - set(old_meta.get("finalizers") or ())
            if added:
                raise Invalid(
                    f'{resource.kind} "{meta["name"]}" is invalid: metadata.finalizers: Forbidden: '
                    f"no new finalizers can be added if the object is being deleted, found new finalizers "
                    f"{sorted(added)}"
                )
        _validate(resource, new)
        if _spec_changed(current, new):
            meta["generation"] = old_meta.get("generation", 1) + 1
        meta["resourceVersion"] = self._next_revision()
        namespace = meta.get("namespace", "") if resource.namespaced else ""
        name = meta["name"]
        key = (resource.api_version, resource.kind)
        self._index_labels(key, namespace, name, old_meta.get("labels"), meta.get("labels"))
        self._index_owners(resource, namespace, name, old_meta.get("ownerReferences"), meta.get("ownerReferences"))
        entry.obj = new
        entry.raw = orjson.dumps(new)
        self._notify("MODIFIED", entry)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(resource, entry)
        return orjson.loads(entry.raw)

    def _delete(self, resource: Resource, entry: _Entry) -> None:
        meta = entry.obj["metadata"]
        if not meta.get("finalizers"):
            self._remove(resource, entry)
            return
        if meta.get("deletionTimestamp"):
            return  # already being deleted: waiting for the finalizers to go
        new = dict(entry.obj)
        new_meta = dict(meta)
        new_meta["deletionTimestamp"] = _timestamp(self._now())
        new_meta["deletionGracePeriodSeconds"] = 0
        new_meta["generation"] = meta.get("generation", 1) + 1
        new_meta["resourceVersion"] = self._next_revision()
        new["metadata"] = new_meta
        entry.obj = new
        entry.raw = orjson.dumps(new)
        self._notify("MODIFIED", entry)

    def _remove(self, resource: Resource, entry: _Entry) -> None:
        """Drop the object for good, then collect its dependents (background propagation)."""
        meta = entry.obj["metadata"]
        namespace = meta.get("namespace", "") if resource.namespaced else ""
        name = meta["name"]
        key = (resource.api_version, resource.kind)
        del self._store[key][namespace][name]
        self._by_uid.pop(meta["uid"], None)
        self._index_labels(key, namespace, name, meta.get("labels"), None)
        self._index_owners(resource, namespace, name, meta.get("ownerReferences"), None)
        final = dict(entry.obj)
        final["metadata"] = dict(meta, resourceVersion=self._next_revision())
        entry.obj = final
        entry.raw = orjson.dumps(final)
        self._notify("DELETED", entry)
        self._collect(resource, namespace, meta["uid"])

    def _collect(self, owner: Resource, owner_namespace: str, owner_uid: str) -> None:
        for api_version, kind, namespace, name in sorted(self._dependents.pop(owner_uid, ())):
            if owner.namespaced and namespace != owner_namespace:
                continue  # an owner reference across namespaces is not an owner
            resource = resource_for(api_version, kind)
            entry = self._entries(resource, namespace).get(name)
            if entry is None:
                continue
            references = entry.obj["metadata"].get("ownerReferences") or []
            alive = [ref for ref in references if ref.get("uid") != owner_uid and ref.get("uid") in self._by_uid]
            if alive:
                dangling_gone = [ref for ref in references if ref.get("uid") != owner_uid]
                new = dict(entry.obj)
                new["metadata"] = dict(entry.obj["metadata"], ownerReferences=dangling_gone)
                self._update(resource, entry, new)
            else:
                self._delete(resource, entry)

    def _index_labels(
        self,
        key: tuple[str, str],
        namespace: str,
        name: str,
        old: Mapping[str, str] | None,
        new: Mapping[str, str] | None,
    ) -> None:
        if old is new:
            return
        index = self._label_index.setdefault(key, {})
        old_items = set((old or {}).items())
        new_items = set((new or {}).items())
        for item in old_items - new_items:
            members = index.get(item)
            if members is not None:
                members.discard((namespace, name))
                if not members:
                    del index[item]
        for item in new_items - old_items:
            index.setdefault(item, set()).add((namespace, name))

    def _index_owners(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        old: Iterable[Mapping[str, Any]] | None,
        new: Iterable[Mapping[str, Any]] | None,
    ) -> None:
        if old is new:
            return
        me = (resource.api_version, resource.kind, namespace, name)
        old_uids = {ref.get("uid") for ref in old or ()}
        new_uids = {ref.get("uid") for ref in new or ()}
        for uid in old_uids - new_uids:
            dependents = self._dependents.get(uid)
            if dependents is not None:
                dependents.discard(me)
                if not dependents:
                    del self._dependents[uid]
        for uid in new_uids - old_uids:
            self._dependents.setdefault(uid, set()).add(me)

    def _notify(self, event_type: str, entry: _Entry) -> None:
        for listener in list(self._listeners):
            listener(event_type, orjson.loads(entry.raw))


def _restore(new: Obj, current: Obj, field: str) -> None:
    """Put back `current[field]` (or its absence) into `new`."""
    if field in current:
        new[field] = current[field]
    else:
        new.pop(field, None)


def _keep_system_metadata(metadata: Any, current: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata a client wrote, with the fields only the server sets taken from `current`."""
    if not isinstance(metadata, Mapping):
        raise Invalid(f'{current.get("name")!r}: metadata must be an object')
    kept = {k: v for k, v in metadata.items() if k not in _SYSTEM_METADATA}
    kept["name"] = current["name"]
    if "namespace" in current:
        kept["namespace"] = current["namespace"]
    else:
        kept.pop("namespace", None)
    for field in _SYSTEM_METADATA:
        if field in current:
            kept[field] = current[field]
    return kept


def _apply_metadata(current: Mapping[str, Any], applied: Mapping[str, Any]) -> dict[str, Any]:
    """Merge what apply owns in metadata: labels, annotations, owner references (by uid), finalizers."""
    meta = dict(current)
    for field in ("labels", "annotations"):
        if applied.get(field):
            merged = dict(current.get(field) or {})
            merged.update(applied[field])
            meta[field] = merged
    if applied.get("ownerReferences"):
        applied_refs = {ref.get("uid"): ref for ref in applied["ownerReferences"]}
        kept = [ref for ref in current.get("ownerReferences") or () if ref.get("uid") not in applied_refs]
        meta["ownerReferences"] = kept + list(applied["ownerReferences"])
        if current.get("ownerReferences") and _same_refs(current["ownerReferences"], meta["ownerReferences"]):
            meta["ownerReferences"] = current["ownerReferences"]
    if applied.get("finalizers"):
        existing = list(current.get("finalizers") or ())
        meta["finalizers"] = existing + [f for f in applied["finalizers"] if f not in existing]
    return meta


def _same_refs(a: list[Any], b: list[Any]) -> bool:
    """Equal as sets of references: re-applying the same references must not reorder them."""
    key = lambda ref: ref.get("uid") or ""  # noqa: E731
    return sorted(a, key=key) == sorted(b, key=key)


def _spec_changed(current: Obj, new: Obj) -> bool:
    for field in current.keys() | new.keys():
        if field not in ("apiVersion", "kind", "metadata", "status") and current.get(field) != new.get(field):
            return True
    return False


def _validate(resource: Resource, obj: Obj) -> None:
    """The API's checks on metadata that our code could get wrong: names, labels, owner refs."""
    meta = obj["metadata"]
    name = meta["name"]
    if resource.dns_label_name:
        pattern, limit, words = _DNS_LABEL, 63, "a DNS-1123 label must consist of lower case alphanumeric " \
            "characters or '-'"
    else:
        pattern, limit, words = _DNS_SUBDOMAIN, 253, "a DNS-1123 subdomain must consist of lower case " \
            "alphanumeric characters, '-' or '.'"
    if not isinstance(name, str) or len(name) > limit or not pattern.match(name):
        raise Invalid(
            f'{resource.kind} "{name}" is invalid: metadata.name: Invalid value: "{name}": {words}, and must '
            f"start and end with an alphanumeric character (at most {limit} characters)"
        )
    for field in ("labels", "annotations"):
        values = meta.get(field)
        if values is not None and (not isinstance(values, dict) or
                                   not all(isinstance(v, str) for v in values.values())):
            raise Invalid(f'{resource.kind} "{name}" is invalid: metadata.{field} must map strings to strings')
    for key, value in (meta.get("labels") or {}).items():
        problem = selectors.label_key_problem(key) or selectors.label_value_problem(value)
        if problem:
            raise Invalid(
                f'{resource.kind} "{name}" is invalid: metadata.labels: Invalid value: "{key}: {value}": {problem}'
            )
    controllers = 0
    for n, ref in enumerate(meta.get("ownerReferences") or ()):
        missing = [f for f in ("apiVersion", "kind", "name", "uid") if not (isinstance(ref, dict) and ref.get(f))]
        if missing:
            raise Invalid(
                f'{resource.kind} "{name}" is invalid: metadata.ownerReferences[{n}]: missing {", ".join(missing)}'
            )
        controllers += bool(ref.get("controller"))
    if controllers > 1:
        raise Invalid(
            f'{resource.kind} "{name}" is invalid: metadata.ownerReferences: Only one reference can have '
            "Controller set to true"
        )
