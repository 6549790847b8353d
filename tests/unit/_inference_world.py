"""Builders for InferenceService tests: ModelVersions as the API stores them, an
InferenceService, and a metrics source fed by the deterministic traffic world."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from _rollout_world import World

from mlops_operator.api.inference_service import CounterSnapshot
from mlops_operator.metrics_reader import AnalysisTarget, MetricsUnavailable

NS = "ml"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def model_version(version: int, *, model: str = "iris", phase: str = "Validated", accuracy: float = 0.9,
                  onnx: bool = False, name: str | None = None, namespace: str = NS) -> dict[str, Any]:
    name = name or f"{model}-v{version}"
    prefix = f"s3://mlops/{namespace}/{model}/{model}-t{version:03d}/"
    artifact: dict[str, Any] = {"uri": prefix, "modelUri": prefix + "model.skops", "sha256": sha(name)}
    if onnx:
        artifact.update(onnxUri=prefix + "model.onnx", onnxSha256=sha(name + "onnx"), servingFormat="onnx")
    return {
        "apiVersion": "mlops.seed.io/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"model": model, "version": version, "artifact": artifact, "metrics": {"accuracy": accuracy},
                 "objective": {"metric": "accuracy", "goal": "maximize"}},
        "status": {"phase": phase},
    }


def inference_service(name: str = "iris", *, champion: dict | None = None, challenger: dict | None = None,
                      rollout: dict | None = None, namespace: str = NS, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "iris", **spec}
    if champion is not None:
        body["champion"] = champion
    if challenger is not None:
        body["challenger"] = challenger
    body["rollout"] = rollout or {"steps": [10, 25, 50, 100], "interval": "10s",
                                  "analysis": {"minSampleSize": 50}}
    return {"apiVersion": "mlops.seed.io/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


@dataclass
class WorldReader:
    """The controller's metrics reader over the traffic world: pure input, no I/O. Records
    what it was asked, so tests can see when the controller reads."""

    world: World
    reads: list[AnalysisTarget] = field(default_factory=list)
    # What the routers report using (GET /admin/config of each), or None: unreachable.
    routers_use: Callable[[], list[dict[str, Any]]] | None = None

    def read(self, target: AnalysisTarget, time: str) -> CounterSnapshot:
        self.reads.append(target)
        if not self.world.metrics_up:
            raise MetricsUnavailable("GET http://iris.ml.svc:8080/metrics: connection refused")
        from mlops_operator.rollout.state_machine import parse_time

        return self.world.snapshot(parse_time(time))

    def router_configs(self, target: AnalysisTarget) -> list[dict[str, Any]]:
        if self.routers_use is None:
            raise MetricsUnavailable("routers unreachable")
        return self.routers_use()
