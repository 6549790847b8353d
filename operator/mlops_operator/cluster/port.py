"""The port through which the operator reads and writes Kubernetes objects.

Objects are plain dicts shaped as the API serves them (apiVersion, kind, metadata, spec,
status). Two adapters implement it: `memory.InMemoryCluster` (tests, local mode, benchmarks)
and `kubernetes.KubernetesCluster` (a real API server). Reconcilers never see it: the wiring
observes through it, hands plain facts to the pure reconcilers, and applies their plans.

Errors mirror the API's status codes so that callers handle both adapters alike:

    ClusterError
     ├── NotFound        404
     ├── AlreadyExists   409 on create
     ├── Conflict        409 on a stale resourceVersion
     └── Invalid         422
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

Obj = dict[str, Any]
LabelSelector = str | Mapping[str, str] | None


class ClusterError(Exception):
    # The HTTP status of the failure; an adapter may set it per instance (e.g. 503 when the
    # API server cannot be reached).
    status_code = 500


class NotFound(ClusterError):
    status_code = 404


class AlreadyExists(ClusterError):
    status_code = 409


class Conflict(ClusterError):
    status_code = 409


class Invalid(ClusterError):
    status_code = 422


@runtime_checkable
class Cluster(Protocol):
    """Synchronous object access; every method returns the object as stored afterwards."""

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj:
        """Raises NotFound."""

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        label_selector: LabelSelector = None,
    ) -> list[Obj]:
        """`namespace=None` lists across namespaces. The selector is a string in the API's
        syntax (`a=b,c!=d,e in (f,g),!h`) or a mapping of equalities."""

    def create(self, obj: Obj) -> Obj:
        """Raises AlreadyExists."""

    def apply(self, obj: Obj, field_manager: str = "mlops-operator") -> Obj:
        """Create, or bring an existing object's spec, labels, annotations and owner
        references to `obj` (server-side-apply semantics for the fields we own).

        Applying the same object twice changes nothing (no new resourceVersion). Status is
        never applied. Labels, annotations and owner references (by uid) that `obj` does
        not name are kept; how a key removed from the spec is treated differs by adapter:
        the in-memory one and server-side apply drop it, the Kubernetes adapter's
        "merge" fallback cannot."""

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> Obj:
        """JSON merge patch of the main resource (status is ignored there). With
        `resource_version`, raises Conflict when the object has moved on."""

    def replace(self, obj: Obj) -> Obj:
        """Full update; `metadata.resourceVersion` must be current or Conflict is raised."""

    def patch_status(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> Obj:
        """JSON merge patch of the status subresource only."""

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        """Raises NotFound. With finalizers present, only sets deletionTimestamp."""
