"""The kinds the operator touches, and where each lives in the API.

One table maps (apiVersion, kind) to what a REST path and the API's semantics need: the
plural, whether the kind is namespaced, and whether status is a subresource (then the API
drops status on create and on writes to the main resource, and only `/status` writes it).
Both cluster adapters and the kmock test emulator are driven from this table, so a kind
is declared once.
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "mlops.seed.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


@dataclass(frozen=True, slots=True)
class Resource:
    api_version: str
    kind: str
    plural: str
    namespaced: bool = True
    has_status_subresource: bool = False
    # A Service's or Namespace's name must be a DNS label (no dots); others a DNS subdomain.
    dns_label_name: bool = False

    @property
    def group(self) -> str:
        """The API group; `""` for the core group (`v1`)."""
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    @property
    def qualified(self) -> str:
        """How the API names the resource in messages: `trainingruns.mlops.seed.io`, `configmaps`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def base_path(self) -> str:
        return f"/apis/{self.api_version}" if self.group else f"/api/{self.api_version}"

    def collection_path(self, namespace: str | None) -> str:
        """The collection's URL path; `namespace=None` on a namespaced kind means all namespaces."""
        if self.namespaced and namespace is not None:
            return f"{self.base_path}/namespaces/{namespace}/{self.plural}"
        return f"{self.base_path}/{self.plural}"

    def object_path(self, namespace: str | None, name: str, subresource: str | None = None) -> str:
        if self.namespaced and not namespace:
            raise ValueError(f"{self.kind} {name!r} is namespaced: a namespace is required")
        path = f"{self.collection_path(namespace if self.namespaced else None)}/{name}"
        return f"{path}/{subresource}" if subresource else path


class UnknownResource(ValueError):
    """A kind that is not in the table: a programming error, not a cluster state."""


_RESOURCES: dict[tuple[str, str], Resource] = {}


def register(resource: Resource) -> Resource:
    """Declare one more kind (for instance a kind only a test or a new controller uses)."""
    _RESOURCES[(resource.api_version, resource.kind)] = resource
    return resource


for _resource in (
    Resource(API_VERSION, "Experiment", "experiments", has_status_subresource=True),
    Resource(API_VERSION, "TrainingRun", "trainingruns", has_status_subresource=True),
    Resource(API_VERSION, "ModelVersion", "modelversions", has_status_subresource=True),
    Resource(API_VERSION, "InferenceService", "inferenceservices", has_status_subresource=True),
    Resource("batch/v1", "Job", "jobs", has_status_subresource=True),
    Resource("apps/v1", "Deployment", "deployments", has_status_subresource=True),
    Resource("v1", "Service", "services", has_status_subresource=True, dns_label_name=True),
    Resource("v1", "ConfigMap", "configmaps"),
    Resource("v1", "Secret", "secrets"),
    Resource("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
    Resource("v1", "Pod", "pods", has_status_subresource=True),
    Resource("v1", "Event", "events"),
    Resource("v1", "ServiceAccount", "serviceaccounts"),
    Resource("events.k8s.io/v1", "Event", "events"),
    Resource("coordination.k8s.io/v1", "Lease", "leases"),
    Resource("v1", "Namespace", "namespaces", namespaced=False, has_status_subresource=True,
             dns_label_name=True),
    Resource("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions",
             namespaced=False, has_status_subresource=True),
):
    register(_resource)


def resource_for(api_version: str, kind: str) -> Resource:
    """The table entry for a kind; `UnknownResource` names the kind and what is known."""
    try:
        return _RESOURCES[(api_version, kind)]
    except KeyError:
        known = ", ".join(sorted(f"{av} {k}" for av, k in _RESOURCES))
        raise UnknownResource(
            f"unknown kind {kind!r} in apiVersion {api_version!r}: the cluster adapters "
            f"know only {known} (declare more with mlops_operator.cluster.resources.register)"
        ) from None


def all_resources() -> tuple[Resource, ...]:
    return tuple(_RESOURCES.values())
