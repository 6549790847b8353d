"""Reading and writing Kubernetes objects: the port, its two adapters, and applying a Plan.

- `port`: the `Cluster` protocol and its errors (NotFound, AlreadyExists, Conflict, Invalid).
- `memory.InMemoryCluster`: the API's semantics over a dict (tests, local mode, benchmarks).
- `kubernetes.KubernetesCluster`: a real API server through the `kubernetes` client
  (imported lazily: local mode never loads the client).
- `apply.apply_plan`: the one I/O step after a reconcile, shared by kopf and local mode.
- `recording.RecordingCluster`: which RBAC permissions a run of calls needed.
- `resources`, `selectors`, `mergepatch`: the kinds table, label selectors, JSON merge patch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .apply import AppliedPlan, adopt, apply_plan
from .memory import InMemoryCluster
from .port import AlreadyExists, Cluster, ClusterError, Conflict, Invalid, NotFound, Obj
from .recording import RecordingCluster
from .resources import Resource, UnknownResource, resource_for

if TYPE_CHECKING:
    from .kubernetes import KubernetesCluster

__all__ = [
    "AlreadyExists",
    "AppliedPlan",
    "Cluster",
    "ClusterError",
    "Conflict",
    "InMemoryCluster",
    "Invalid",
    "KubernetesCluster",
    "NotFound",
    "Obj",
    "RecordingCluster",
    "Resource",
    "UnknownResource",
    "adopt",
    "apply_plan",
    "resource_for",
]


def __getattr__(name: str) -> Any:
    if name == "KubernetesCluster":
        from .kubernetes import KubernetesCluster

        return KubernetesCluster
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
