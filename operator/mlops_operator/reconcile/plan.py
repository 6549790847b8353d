"""What a reconciler returns: the desired world for one object, computed without I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to emit about the reconciled object; the reason matches the
    condition reason it accompanies."""

    reason: str
    message: str
    type: Literal["Normal", "Warning"] = "Normal"


@dataclass(frozen=True)
class Plan:
    """The outcome of one reconcile.

    - `children`: owned objects that must exist with exactly this content (no owner
      references: the wiring adopts them). Applying them twice changes nothing.
    - `records`: objects to create that are *not* owned (ModelVersions outlive the
      Experiment that registered them); created once, never updated.
    - `deletions`: (apiVersion, kind, name) of owned objects to remove.
    - `status`: the complete desired status (a dict in API shape, camelCase).
    - `events`: to emit once, because something changed in this reconcile.
    - `requeue_after`: seconds until the object wants looking at again, if nothing happens.
    """

    status: dict[str, Any]
    children: tuple[Manifest, ...] = ()
    records: tuple[Manifest, ...] = ()
    deletions: tuple[tuple[str, str, str], ...] = ()
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
