"""The model registry's one write: create ModelVersion `<model>-v<N>` for a TrainingRun,
with N monotonic per model family and never shared, even when two Experiments (or two
operator replicas) register at the same moment.

N comes from the versions observed (max + 1); the create is the arbiter: the API refuses a
second object of the same name (AlreadyExists), and the loser observes again and takes the
next number. A version already recorded for the TrainingRun is reused, so a restart after
the create but before the status write registers nothing twice."""

from __future__ import annotations

from typing import Any

from ..api.experiment import Experiment
from ..api.model_version import ModelVersion
from ..api.training_run import TrainingRun
from ..cluster.port import AlreadyExists, Cluster, ClusterError, Obj
from ..reconcile.common import MODEL_LABEL, TRAINING_RUN_LABEL, Settings
from ..reconcile.model_version import desired_model_version, next_version

MAX_ATTEMPTS = 20


class RegistrationError(ClusterError):
    """No version number could be allocated within MAX_ATTEMPTS."""


def versions_of_model(cluster: Cluster, namespace: str | None, model: str) -> list[Obj]:
    return cluster.list(ModelVersion.api_version(), "ModelVersion", namespace, {MODEL_LABEL: model})


def _version(obj: Obj) -> int:
    value: Any = (obj.get("spec") or {}).get("version")
    return value if isinstance(value, int) else 0


def register_model_version(
    cluster: Cluster, run: TrainingRun, experiment: Experiment | None, settings: Settings
) -> tuple[Obj, bool]:
    """The ModelVersion recording `run`, and whether this call created it. Raises ValueError
    when the run's result cannot make a valid record."""
    namespace = run.metadata.namespace
    floor = 1
    for _ in range(MAX_ATTEMPTS):
        existing = versions_of_model(cluster, namespace, run.spec.model)
        for obj in existing:
            if (obj["metadata"].get("labels") or {}).get(TRAINING_RUN_LABEL) == run.metadata.name:
                return obj, False
        number = max(next_version(_version(obj) for obj in existing), floor)
        manifest = desired_model_version(run, number, experiment, settings)
        try:
            return cluster.create(manifest), True
        except AlreadyExists:
            # Someone took N (another Experiment, or a version made by hand without our
            # labels): look again, and never retry a number below N + 1.
            floor = number + 1
    raise RegistrationError(
        f"could not allocate a version of model {run.spec.model} for {run.metadata.name} "
        f"in {MAX_ATTEMPTS} attempts"
    )
