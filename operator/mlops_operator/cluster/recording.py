"""A cluster that remembers which API permissions its calls needed, to check RBAC against.

`RecordingCluster(inner)` forwards every call to `inner` and adds (api group, resource,
verb) to `.calls`, with the verbs and resource names RBAC uses: `get`, `list`, `create`,
`update`, `patch`, `delete`; `patch_status` is `patch` on `<plural>/status`. `apply` is
recorded as `patch` (server-side apply) plus `get` and `create`, because the merge-strategy
fallback of the Kubernetes adapter reads and may create: a role must allow all three for
apply to work with either strategy. A call is recorded before it is forwarded, so a call
that fails (NotFound, say) still counts: it needed the permission to be asked at all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from .port import Cluster, LabelSelector, Obj
from .resources import resource_for

Permission = tuple[str, str, str]  # (api group, resource, verb); the core group is ""


class RecordingCluster:
    def __init__(self, inner: Cluster) -> None:
        self.inner = inner
        self.counts: Counter[Permission] = Counter()

    @property
    def calls(self) -> set[Permission]:
        return set(self.counts)

    def _record(self, api_version: str, kind: str, *verbs: str, subresource: str | None = None) -> None:
        resource = resource_for(api_version, kind)
        plural = f"{resource.plural}/{subresource}" if subresource else resource.plural
        for verb in verbs:
            self.counts[(resource.group, plural, verb)] += 1

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj:
        self._record(api_version, kind, "get")
        return self.inner.get(api_version, kind, namespace, name)

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        label_selector: LabelSelector = None,
    ) -> list[Obj]:
        self._record(api_version, kind, "list")
        return self.inner.list(api_version, kind, namespace, label_selector)

    def create(self, obj: Obj) -> Obj:
        self._record(obj["apiVersion"], obj["kind"], "create")
        return self.inner.create(obj)

    def apply(self, obj: Obj, field_manager: str = "mlops-operator") -> Obj:
        self._record(obj["apiVersion"], obj["kind"], "patch", "get", "create")
        return self.inner.apply(obj, field_manager=field_manager)

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> Obj:
        self._record(api_version, kind, "patch")
        return self.inner.patch(api_version, kind, namespace, name, patch, resource_version=resource_version)

    def replace(self, obj: Obj) -> Obj:
        self._record(obj["apiVersion"], obj["kind"], "update")
        return self.inner.replace(obj)

    def patch_status(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> Obj:
        self._record(api_version, kind, "patch", subresource="status")
        return self.inner.patch_status(api_version, kind, namespace, name, status, resource_version=resource_version)

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        self._record(api_version, kind, "delete")
        self.inner.delete(api_version, kind, namespace, name)
