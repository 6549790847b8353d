"""Apply a reconciler's Plan through the cluster port: the one I/O step after every reconcile.

The kopf wiring and the local mode both call `apply_plan(cluster, owner, plan)`, so the two
run the same writes in the same order:

1. children: adopted (namespace, controller owner reference, the managed-by and owner
   labels) and applied; each is reported as created, updated or unchanged;
2. records (unowned, immutable, e.g. ModelVersions): created; AlreadyExists is success;
3. deletions: deleted; NotFound is success;
4. status: written through the status subresource only when it differs from the owner's
   current status, as one merge patch with the owner's resourceVersion as precondition;
   on Conflict the owner is re-read and the write retried once;
5. events: core v1 Events about the owner; a repeated (type, reason, message) bumps the
   count of the existing Event instead of adding one, as the kubelet does.

A failed child, record or deletion raises (the status is then not written: the next
reconcile starts over). Events are best effort, as in kopf: a failure to post one is
reported in `AppliedPlan.event_errors`, not raised.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..reconcile.plan import Event, Plan
from . import mergepatch
from .port import AlreadyExists, Cluster, ClusterError, Conflict, NotFound, Obj
from .resources import UnknownResource, resource_for

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "mlops-operator"
LABEL_PREFIX = "mlops.seed.io/"
EVENT_COMPONENT = "mlops-operator"
# The API refuses longer event messages; the kubelet cuts at the same length.
EVENT_MESSAGE_LIMIT = 1024


@dataclass(frozen=True)
class AppliedPlan:
    """What `apply_plan` did. Children and records are named `Kind/name` (a Deployment and a
    Service may share a name)."""

    created: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    records_created: tuple[str, ...] = ()
    records_existing: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    already_gone: tuple[str, ...] = ()
    status_written: bool = False
    events: tuple[str, ...] = ()  # names of the Event objects created or bumped
    event_errors: tuple[str, ...] = ()
    owner: Obj | None = None  # the owner as stored after the status write, when there was one

    @property
    def changed(self) -> bool:
        """Whether anything in the cluster changed (events aside)."""
        return bool(self.created or self.updated or self.records_created or self.deleted or self.status_written)


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owner_label(owner: Mapping[str, Any]) -> tuple[str, str]:
    """`mlops.seed.io/<owner kind lowercase>: <owner name>`."""
    return f"{LABEL_PREFIX}{owner['kind'].lower()}", owner["metadata"]["name"]


def adopt(child: Mapping[str, Any], owner: Mapping[str, Any]) -> dict[str, Any]:
    """`child` as a dependent of `owner`: in the owner's namespace (for namespaced kinds),
    with a controller owner reference to it and the managed-by and owner labels added to
    the labels it already has. Pure: `child` is not modified.

    Raises ValueError when the child is already controlled by another object, or when the
    owner's name cannot be a label value (over 63 characters)."""
    owner_meta = owner.get("metadata") or {}
    if not owner_meta.get("uid") or not owner_meta.get("name"):
        raise ValueError(f"cannot adopt into {owner.get('kind')} {owner_meta.get('name')!r}: it has no uid yet")
    label_key, label_value = owner_label(owner)
    if len(label_value) > 63:
        raise ValueError(
            f"{owner['kind']} name {label_value!r} is longer than 63 characters: it cannot be the value of "
            f"the label {label_key}; use a shorter name"
        )
    adopted = dict(child)
    meta = dict(child.get("metadata") or {})
    adopted["metadata"] = meta
    namespace = owner_meta.get("namespace")
    if namespace and _namespaced(child):
        meta["namespace"] = namespace
    meta["labels"] = {**(meta.get("labels") or {}), MANAGED_BY_LABEL: MANAGED_BY, label_key: label_value}
    reference = owner_reference(owner)
    others = [ref for ref in meta.get("ownerReferences") or () if ref.get("uid") != reference["uid"]]
    for ref in others:
        if ref.get("controller"):
            raise ValueError(
                f"{child.get('kind')} {meta.get('name')!r} is already controlled by {ref.get('kind')} "
                f"{ref.get('name')!r}; it cannot be adopted by {owner['kind']} {owner_meta['name']!r}"
            )
    meta["ownerReferences"] = [*others, reference]
    return adopted


def _namespaced(obj: Mapping[str, Any]) -> bool:
    try:
        return resource_for(obj.get("apiVersion", ""), obj.get("kind", "")).namespaced
    except UnknownResource:
        return True  # most kinds are namespaced; the adapters reject unknown kinds anyway


def _ref(obj: Mapping[str, Any]) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def _content(obj: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """An object without what changes on every write (to tell updated from unchanged)."""
    if obj is None:
        return None
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in ("resourceVersion", "managedFields")}
    return {**obj, "metadata": meta}


def event_name(owner: Mapping[str, Any], event: Event) -> str:
    """`<owner name>.<hash of the owner uid, type, reason and message>`: the same event about
    the same object always lands on the same Event object."""
    meta = owner["metadata"]
    digest = hashlib.sha256(
        "\x00".join((meta.get("uid", ""), event.type, event.reason, event.message)).encode()
    ).hexdigest()[:16]
    return f"{meta['name'][:236]}.{digest}"


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_object(owner: Mapping[str, Any], event: Event, now: datetime) -> dict[str, Any]:
    """A core v1 Event about `owner`, as the kubelet and kopf post them."""
    meta = owner["metadata"]
    stamp = _timestamp(now)
    involved = {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta.get("uid"),
    }
    if meta.get("namespace"):
        involved["namespace"] = meta["namespace"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": event_name(owner, event), "namespace": meta.get("namespace") or "default"},
        "involvedObject": involved,
        "reason": event.reason,
        "message": event.message[:EVENT_MESSAGE_LIMIT],
        "type": event.type,
        "count": 1,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "source": {"component": EVENT_COMPONENT},
        "reportingComponent": EVENT_COMPONENT,
        "reportingInstance": EVENT_COMPONENT,
    }


def emit_event(cluster: Cluster, owner: Mapping[str, Any], event: Event, now: datetime) -> str:
    """Post `event` about `owner`, or bump the count of the same one posted before."""
    body = event_object(owner, event, now)
    name = body["metadata"]["name"]
    namespace = body["metadata"]["namespace"]
    try:
        cluster.create(body)
    except AlreadyExists:
        existing = cluster.get("v1", "Event", namespace, name)
        cluster.patch("v1", "Event", namespace, name,
                      {"count": int(existing.get("count") or 1) + 1, "lastTimestamp": body["lastTimestamp"]})
    return name


def write_status(
    cluster: Cluster,
    owner: Mapping[str, Any],
    desired: Mapping[str, Any],
    current: Mapping[str, Any] | None = None,
) -> Obj | None:
    """Make the owner's status equal `desired` with one merge patch, if it differs (keys
    whose value is None count as absent).

    Returns the owner as stored after the write, or None when nothing was written. The
    patch carries the owner's resourceVersion; on Conflict the owner is re-read, compared
    again, and the write retried once (a second Conflict raises)."""
    api_version, kind = owner["apiVersion"], owner["kind"]
    meta = owner["metadata"]
    namespace, name = meta.get("namespace"), meta["name"]
    current = dict(owner.get("status") or {}) if current is None else current
    desired = _without_nulls(desired)
    resource_version = meta.get("resourceVersion")
    for attempt in (1, 2):
        if current == desired:
            return None
        patch = mergepatch.diff(current, desired)
        try:
            return cluster.patch_status(api_version, kind, namespace, name, patch, resource_version=resource_version)
        except Conflict:
            if attempt == 2:
                raise
            fresh = cluster.get(api_version, kind, namespace, name)
            current = fresh.get("status") or {}
            resource_version = fresh["metadata"].get("resourceVersion")
    return None  # pragma: no cover  # the loop returns or raises


def _without_nulls(value: Any) -> Any:
    """`None` as a field of a status object means absent (a merge patch removes such keys):
    drop it so that a status compares equal to what the cluster keeps of it. Lists are values
    in a merge patch, stored as they are, so their contents are left alone."""
    if isinstance(value, Mapping):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def apply_plan(
    cluster: Cluster,
    owner: Mapping[str, Any],
    plan: Plan,
    *,
    field_manager: str = "mlops-operator",
    previous_status: Mapping[str, Any] | None = None,
    observed: Mapping[tuple[str, str, str], Obj | None] | None = None,
    now: Callable[[], datetime] | None = None,
) -> AppliedPlan:
    """Carry out `plan` for `owner` (see the module docstring for the order and rules).

    `previous_status` is what the status is compared with (default: `owner["status"]`).
    `observed` maps (apiVersion, kind, name) of children to the objects as the caller last
    saw them (None: absent); children not in it are read with `get` first, which is how a
    child is reported created, updated or unchanged. `now` is the clock for event times."""
    clock = now or (lambda: datetime.now(UTC))
    owner_meta = owner["metadata"]
    namespace = owner_meta.get("namespace")
    created: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    for child in plan.children:
        adopted = adopt(child, owner)
        api_version, kind = adopted["apiVersion"], adopted["kind"]
        name = adopted["metadata"]["name"]
        child_namespace = adopted["metadata"].get("namespace")
        key = (api_version, kind, name)
        if observed is not None and key in observed:
            before = observed[key]
        else:
            try:
                before = cluster.get(api_version, kind, child_namespace, name)
            except NotFound:
                before = None
        after = cluster.apply(adopted, field_manager=field_manager)
        if before is None:
            created.append(_ref(adopted))
        elif _content(before) == _content(after):
            unchanged.append(_ref(adopted))
        else:
            updated.append(_ref(adopted))

    records_created: list[str] = []
    records_existing: list[str] = []
    for record in plan.records:
        body = dict(record)
        meta = dict(body.get("metadata") or {})
        if namespace and not meta.get("namespace") and _namespaced(body):
            meta["namespace"] = namespace
        body["metadata"] = meta
        try:
            cluster.create(body)
            records_created.append(_ref(body))
        except AlreadyExists:
            records_existing.append(_ref(body))

    deleted: list[str] = []
    already_gone: list[str] = []
    for api_version, kind, name in plan.deletions:
        try:
            cluster.delete(api_version, kind, namespace, name)
            deleted.append(f"{kind}/{name}")
        except NotFound:
            already_gone.append(f"{kind}/{name}")

    after_status = write_status(cluster, owner, plan.status, previous_status)

    emitted: list[str] = []
    errors: list[str] = []
    event_owner = after_status or owner
    for event in plan.events:
        try:
            emitted.append(emit_event(cluster, event_owner, event, clock()))
        except ClusterError as error:
            errors.append(f"{event.reason}: {error}")

    return AppliedPlan(
        created=tuple(created),
        updated=tuple(updated),
        unchanged=tuple(unchanged),
        records_created=tuple(records_created),
        records_existing=tuple(records_existing),
        deleted=tuple(deleted),
        already_gone=tuple(already_gone),
        status_written=after_status is not None,
        events=tuple(emitted),
        event_errors=tuple(errors),
        owner=after_status,
    )
