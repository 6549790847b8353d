"""The local control loop: the same per-kind controllers the kopf wiring calls, driven
over the in-memory cluster without kopf.

A pass calls `sync(cluster, obj, now)` for every object of our four kinds, parents before
children (Experiments create TrainingRuns, which create Jobs, ...), and returns how long
until the earliest `requeue_after` of the plans. It is level-based: the instance runs a
pass whenever anything changed in the cluster and when a requeue falls due; a pass over
settled objects changes nothing.

A controller that raises is retried with a growing delay for that object only; the error
is reported once per distinct message.
"""

from __future__ import annotations

import functools
import importlib
import logging
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from mlops_operator.cluster.port import Cluster, Obj
from mlops_operator.reconcile.plan import Plan

log = logging.getLogger(__name__)

API_VERSION = "mlops.seed.io/v1alpha1"
# Parents first, so that a pass carries a change down the chain.
CONTROLLER_MODULES: tuple[tuple[str, str], ...] = (
    ("Experiment", "mlops_operator.controllers.experiment"),
    ("TrainingRun", "mlops_operator.controllers.training_run"),
    ("ModelVersion", "mlops_operator.controllers.model_version"),
    ("InferenceService", "mlops_operator.controllers.inference_service"),
)
FIRST_RETRY = 1.0
MAX_RETRY = 60.0


class Sync(Protocol):
    def __call__(self, cluster: Cluster, obj: Obj, now: datetime) -> Plan: ...


@dataclass(frozen=True)
class Controller:
    api_version: str
    kind: str
    sync: Sync


def default_controllers(
    metrics_url_for: Callable[[str, str, int], str] | None = None,
) -> tuple[list[Controller], list[str]]:
    """The operator's per-kind controllers that can be imported, and the problems of those
    that cannot (each names the module and the error). `metrics_url_for(service, namespace,
    port)` is where the InferenceService controller reads a Service's metrics: local mode
    has no pod addresses, only the Services' local ports."""
    controllers: list[Controller] = []
    missing: list[str] = []
    for kind, module_name in CONTROLLER_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            missing.append(f"{kind} ({module_name}: {error})")
            continue
        sync = module.sync
        if kind == "InferenceService" and metrics_url_for is not None:
            from mlops_operator.metrics_reader import MetricsReader

            sync = functools.partial(module.sync, metrics_reader=MetricsReader(url_for=metrics_url_for,
                                                                               use_pod_ips=False))
        controllers.append(Controller(API_VERSION, kind, sync))
    return controllers, missing


@dataclass
class _Retry:
    attempts: int
    due: float
    message: str


class ControlLoop:
    def __init__(
        self,
        cluster: Cluster,
        controllers: Sequence[Controller],
        clock: Callable[[], datetime],
        monotonic: Callable[[], float],
        report_error: Callable[[str], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.controllers = list(controllers)
        self.clock = clock
        self.monotonic = monotonic
        self.report_error = report_error or (lambda line: None)
        self.passes = 0
        self._retries: dict[tuple[str, str, str], _Retry] = {}
        self._due: dict[tuple[str, str, str], float] = {}

    def run_pass(self) -> float | None:
        """Sync every object once; returns seconds until the earliest requeue (None: none)."""
        earliest: float | None = None
        live: set[tuple[str, str, str]] = set()
        for controller in self.controllers:
            for obj in self.cluster.list(controller.api_version, controller.kind):
                key = _key(controller.kind, obj)
                live.add(key)
                wait = self._sync_one(controller, key, obj)
                if wait is not None:
                    earliest = wait if earliest is None else min(earliest, wait)
        for key in [k for k in self._retries if k not in live]:
            del self._retries[key]
        self.passes += 1
        return earliest

    def _sync_one(self, controller: Controller, key: tuple[str, str, str], obj: Obj) -> float | None:
        retry = self._retries.get(key)
        now_mono = self.monotonic()
        if retry is not None and now_mono < retry.due:
            return retry.due - now_mono
        try:
            plan = controller.sync(self.cluster, obj, self.clock())
        except Exception as error:  # one object's bug must not stop the others
            return self._failed(key, error)
        if retry is not None:
            del self._retries[key]
        return plan.requeue_after if plan is not None else None

    def _failed(self, key: tuple[str, str, str], error: Exception) -> float:
        retry = self._retries.get(key)
        attempts = retry.attempts + 1 if retry else 1
        delay = min(MAX_RETRY, FIRST_RETRY * 2 ** (attempts - 1))
        message = f"{type(error).__name__}: {error}"
        if retry is None or retry.message != message:
            self.report_error(f"{key[0]} {key[1]}/{key[2]}: reconcile failed, retrying in {delay:.0f}s: {message}")
            log.error("reconcile of %s %s/%s failed:\n%s", *key, traceback.format_exc())
        self._retries[key] = _Retry(attempts, self.monotonic() + delay, message)
        return delay


def _key(kind: str, obj: Obj) -> tuple[str, str, str]:
    meta: dict[str, Any] = obj.get("metadata") or {}
    return (kind, str(meta.get("namespace") or ""), str(meta.get("name")))
