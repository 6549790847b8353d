"""What `mlops local` shows: progress lines derived from status changes and Events, and
tables like `kubectl get`.

`Progress.observe(cluster)` compares each object of our kinds with how it looked at the
previous observation and says what happened in between: trials started and finished with
their metrics, the leaderboard when an Experiment completes, versions registered and
validated or rejected with their gates, canary steps, analyses and verdicts, promotions and
rollbacks, where the service answers. Warning Events (from the operator, the executor
playing the kubelet) are shown as they come. Nothing here hooks into the controllers: a
real cluster's watch would give the same story.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from mlops_operator.api import ALL_KINDS, API_VERSION
from mlops_operator.api.experiment import Search
from mlops_operator.cluster.port import Cluster

Obj = dict[str, Any]
Key = tuple[str, str, str]
OUR_KINDS = ("Experiment", "TrainingRun", "ModelVersion", "InferenceService")
MAX_METRICS_SHOWN = 4
TRAINING_RUN_LABEL = "mlops.seed.io/trainingrun"


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _status(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (obj or {}).get("status") or {}


def _spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("spec") or {}


def fmt_number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def fmt_metrics(metrics: Mapping[str, Any], first: str | None = None, limit: int = MAX_METRICS_SHOWN) -> str:
    names = [n for n in metrics if not n.startswith("cv_") or n == first]
    if first in names:
        names.remove(first)
        names.insert(0, first)
    return " ".join(f"{name}={fmt_number(metrics[name])}" for name in names[:limit])


def fmt_params(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={fmt_number(v) if isinstance(v, float) else json.dumps(v) if not isinstance(v, str) else v}"
                    for k, v in params.items())


TOLD_MEMORY = 200  # progress lines a repeated Warning is compared with


class Progress:
    """Turns changes seen in the cluster into lines for a person."""

    def __init__(
        self,
        write: Callable[[str], None],
        service_url: Callable[[str, str], str | None] = lambda namespace, name: None,
        example: Callable[[Obj], str | None] = lambda service: None,
    ) -> None:
        self.write = write
        self.service_url = service_url
        self.example = example
        self._last: dict[Key, Obj] = {}
        self._events: dict[tuple[str, str], int] = {}
        self._announced: set[Key] = set()
        self._started_runs: set[Key] = set()
        self._told: deque[str] = deque(maxlen=TOLD_MEMORY)

    def observe(self, cluster: Cluster, quiet: bool = False) -> None:
        """Say what changed since the last call; `quiet` only takes note (for a resumed
        instance, whose history was told before)."""
        lines: list[str] = []
        seen: dict[Key, tuple[Obj | None, Obj]] = {}
        for kind in OUR_KINDS:
            for obj in cluster.list(API_VERSION, kind):
                key = (kind, str(_meta(obj).get("namespace")), str(_meta(obj).get("name")))
                seen[key] = (self._last.get(key), obj)
                self._last[key] = obj
        # A story in order: a search starts, its trials run, it ends; then versions, services.
        trainers: dict[tuple[str, str], list[Obj]] = {}
        for pod in cluster.list("v1", "Pod", label_selector=TRAINING_RUN_LABEL):
            run = (_meta(pod).get("labels") or {}).get(TRAINING_RUN_LABEL)
            trainers.setdefault((str(_meta(pod).get("namespace")), str(run)), []).append(pod)

        def training_run(before: Obj | None, obj: Obj) -> list[str]:
            pods = trainers.get((str(_meta(obj).get("namespace")), str(_meta(obj).get("name"))), [])
            return self._trainer_started(obj, pods) + self._training_run(before, obj)

        tellers = (("Experiment", self._experiment_started), ("TrainingRun", training_run),
                   ("Experiment", self._experiment_finished), ("ModelVersion", self._model_version),
                   ("InferenceService", self._inference_service))
        if quiet:
            self._started_runs |= {key for key in seen if key[0] == "TrainingRun"}
        else:
            for kind, tell in tellers:
                for key, (before, obj) in seen.items():
                    if key[0] == kind:
                        lines += tell(before, obj)
        known, self._events = self._events, {}
        for event in cluster.list("v1", "Event"):
            key = (str(_meta(event).get("namespace")), str(_meta(event).get("name")))
            count = int(event.get("count") or 1)
            self._events[key] = count
            if known.get(key) == count:
                continue
            if not quiet and event.get("type") == "Warning" and not self._already_told(event, lines):
                involved = event.get("involvedObject") or {}
                lines.append(f"warning: {involved.get('kind')}/{involved.get('name')}: "
                             f"{event.get('reason')}: {event.get('message')}")
        for line in lines:
            self.write(line)
        self._told.extend(lines)

    def _already_told(self, event: Obj, lines: list[str]) -> bool:
        """A Warning that repeats what a progress line said (a trial's failure, told once by
        the trial's line, then by its TrainingRun's and its Experiment's Events) is not
        printed again: one failure, one line."""
        message = str(event.get("message") or "")
        text = message.split(" failed: ", 1)[1] if " failed: " in message else message
        return bool(text) and any(text in line for line in (*self._told, *lines))

    # -- Experiment ------------------------------------------------------------------

    def _experiment_started(self, before: Obj | None, obj: Obj) -> list[str]:
        spec, phase = _spec(obj), _status(obj).get("phase")
        if before is not None or phase in ("Succeeded", "Failed") or _condition(_status(obj), "Stalled") == "True":
            return []  # a refused spec starts no search: its Warning says why
        search = spec.get("search") or {}
        objective = spec.get("objective") or {}
        return [
            f"experiment {_meta(obj).get('name')}: {search.get('algorithm', 'random')} search over "
            f"{spec.get('estimator')}, up to {search.get('maxTrials', 10)} trials, "
            f"{_running_at_once(search)} at a time, "
            f"{objective.get('goal', 'maximize')} {objective.get('metric', 'accuracy')}"
        ]

    def _experiment_finished(self, before: Obj | None, obj: Obj) -> list[str]:
        name = _meta(obj).get("name")
        spec, status = _spec(obj), _status(obj)
        phase = status.get("phase")
        if phase == _status(before).get("phase"):
            return []
        if phase == "Succeeded":
            best = status.get("bestTrial") or {}
            metric = (spec.get("objective") or {}).get("metric", "accuracy")
            registered = status.get("modelVersion")
            return [*leaderboard(obj),
                    f"experiment {name} succeeded: best trial {best.get('name')} "
                    f"({metric}={fmt_number(status.get('bestObjectiveValue'))})"
                    + (f", registered as {registered}" if registered else "")]
        if phase == "Failed":
            return [f"experiment {name} failed: {status.get('message') or ''}".rstrip(": ")]
        return []

    # -- TrainingRun -----------------------------------------------------------------

    def _training_run(self, before: Obj | None, obj: Obj) -> list[str]:
        name = _meta(obj).get("name")
        spec, status = _spec(obj), _status(obj)
        old_phase, phase = _status(before).get("phase"), status.get("phase")
        if phase == old_phase:
            return []
        what = "trial" if spec.get("experiment") else "training run"
        metric = (spec.get("objective") or {}).get("metric")
        if phase == "Succeeded":
            duration = status.get("durationSeconds")
            took = f"  ({duration:.1f}s)" if isinstance(duration, (int, float)) else ""
            return [f"  {what} {name} succeeded {fmt_metrics(status.get('metrics') or {}, metric)}{took}"]
        if phase == "Failed":
            reason = status.get("failureReason")
            message = status.get("message") or ""
            return [f"  {what} {name} failed: {reason + ': ' if reason else ''}{message}".rstrip(": ")]
        return []

    # -- ModelVersion ----------------------------------------------------------------

    def _trainer_started(self, run: Obj, pods: list[Obj]) -> list[str]:
        """A run is told running when its trainer pod runs (a queued pod waits Pending)."""
        key = ("TrainingRun", str(_meta(run).get("namespace")), str(_meta(run).get("name")))
        running = any((_status(p).get("phase") == "Running") for p in pods)
        if not running or key in self._started_runs:
            return []
        self._started_runs.add(key)
        if _status(run).get("phase") in ("Succeeded", "Failed"):
            return []
        what = "trial" if _spec(run).get("experiment") else "training run"
        return [f"  {what} {_meta(run).get('name')} running   {fmt_params(_spec(run).get('params') or {})}".rstrip()]

    def _model_version(self, before: Obj | None, obj: Obj) -> list[str]:
        name = _meta(obj).get("name")
        spec, status = _spec(obj), _status(obj)
        lines: list[str] = []
        if before is None:
            lineage = spec.get("lineage") or {}
            objective = (spec.get("objective") or {}).get("metric")
            lines.append(
                f"model version {name} registered: {spec.get('model')} v{spec.get('version')}"
                + (f" from {lineage.get('trainingRun')}" if lineage.get("trainingRun") else "")
                + (f" ({fmt_metrics(spec.get('metrics') or {}, objective, 2)})" if spec.get("metrics") else "")
            )
        old_phase, phase = _status(before).get("phase"), status.get("phase")
        if phase != old_phase and phase in ("Validated", "Rejected"):
            gates = [fmt_gate(g) for g in status.get("gates") or []]
            verdict = "validated" if phase == "Validated" else "REJECTED"
            detail = "; ".join(gates) if gates else "no gates"
            lines.append(f"model version {name} {verdict}: {detail}")
        return lines

    # -- InferenceService ------------------------------------------------------------

    def _inference_service(self, before: Obj | None, obj: Obj) -> list[str]:
        meta = _meta(obj)
        name, namespace = str(meta.get("name")), str(meta.get("namespace"))
        spec, status, old = _spec(obj), _status(obj), _status(before)
        phase, old_phase = status.get("phase"), old.get("phase")
        champion, challenger = status.get("champion"), status.get("challenger")
        lines: list[str] = []
        rollout = spec.get("rollout") or {}
        if challenger and challenger != old.get("challenger"):
            steps = rollout.get("steps") or [10, 25, 50, 100]
            lines.append(
                f"canary {name}: challenger {challenger} against champion {champion}, "
                f"steps {' -> '.join(str(s) for s in steps)} % every {rollout.get('interval', '1m')}"
            )
        analysis = status.get("lastAnalysis")
        if analysis and analysis != old.get("lastAnalysis"):
            lines.append(f"canary {name}: analysis at {analysis.get('weight')}%: {analysis.get('verdict')}"
                         + (f" - {analysis.get('message')}" if analysis.get("message") else ""))
            for check in analysis.get("checks") or []:
                lines.append("    " + fmt_check(check))
        weight = (status.get("traffic") or {}).get("challenger")
        old_weight = (old.get("traffic") or {}).get("challenger")
        if challenger and weight != old_weight and weight:
            step = status.get("currentStep")
            steps = rollout.get("steps") or []
            where = f"step {step + 1}/{len(steps)}: " if isinstance(step, int) and steps else ""
            lines.append(f"canary {name}: {where}{weight}% of traffic to {challenger}")
        history = status.get("history") or []
        for entry in history[len(old.get("history") or []):] if before is not None else []:
            action = entry.get("action")
            if action == "Promoted":
                lines.append(f"canary {name}: {entry.get('version')} PROMOTED to champion"
                             + (f" (replaces {entry.get('replaced')})" if entry.get("replaced") else "")
                             + (f": {entry.get('reason')}" if entry.get("reason") else ""))
            elif action in ("RolledBack", "ManualRollback"):
                lines.append(f"canary {name}: {entry.get('version')} ROLLED BACK"
                             + (f": {entry.get('reason')}" if entry.get("reason") else "")
                             + (f"; {champion} keeps serving" if champion else ""))
        if phase != old_phase and phase == "Failed":
            lines.append(f"service {name} failed: {status.get('message') or ''}".rstrip(": "))
        key = ("InferenceService", namespace, name)
        available = _condition(status, "Available") == "True"
        if available and champion and key not in self._announced:
            url = self.service_url(namespace, name)
            if url:
                self._announced.add(key)
                lines.append(f"service {name}: champion {champion} answers at {url}")
                example = self.example(obj)
                if example:
                    lines.append(f"  try: {example}")
        elif champion and champion != old.get("champion") and old.get("champion"):
            lines.append(f"service {name}: champion is now {champion}")
        return lines


def _running_at_once(search: Mapping[str, Any]) -> Any:
    """The parallelism the Experiment's reconciler uses (the default follows maxTrials)."""
    try:
        return Search.model_validate(search).running_at_once()
    except ValidationError:
        return search.get("parallelism", "?")


def _condition(status: Mapping[str, Any], kind: str) -> str | None:
    return next((c.get("status") for c in status.get("conditions") or [] if c.get("type") == kind), None)


def fmt_gate(gate: Mapping[str, Any]) -> str:
    """A passed gate with its numbers; a failed one with the reconciler's message, which says
    which part failed (the threshold, or the comparison with the champion)."""
    if not gate.get("passed") and gate.get("message"):
        return f"{gate.get('metric')} FAIL: {gate['message']}"
    mark = "pass" if gate.get("passed") else "FAIL"
    value = fmt_number(gate.get("value"))
    parts = [f"{gate.get('metric')}={value}" if value else str(gate.get("metric")), mark]
    if gate.get("threshold") is not None:
        parts.append(f"threshold {fmt_number(gate.get('threshold'))}")
    if gate.get("champion"):
        parts.append(f"champion {gate.get('champion')} {fmt_number(gate.get('championValue'))}".rstrip())
    return " ".join(parts)


def fmt_check(check: Mapping[str, Any]) -> str:
    numbers = []
    if check.get("champion") is not None or check.get("challenger") is not None:
        numbers.append(f"champion {fmt_number(check.get('champion'))} vs challenger {fmt_number(check.get('challenger'))}")
    if check.get("threshold") is not None:
        numbers.append(f"threshold {fmt_number(check.get('threshold'))}")
    if check.get("samples") is not None:
        numbers.append(f"n={check.get('samples')}")
    if check.get("pValue") is not None:
        numbers.append(f"p={fmt_number(check.get('pValue'))}")
    text = f"{check.get('name')}: {check.get('verdict')}" + (f" ({', '.join(numbers)})" if numbers else "")
    return text + (f" - {check['message']}" if check.get("message") else "")


def leaderboard(experiment: Mapping[str, Any]) -> list[str]:
    """The Experiment's leaderboard as table lines (best first, as the status keeps it)."""
    status = _status(experiment)
    entries = status.get("leaderboard") or []
    if not entries:
        return []
    metric = (_spec(experiment).get("objective") or {}).get("metric", "accuracy")
    rows = [
        [str(i), str(e.get("name")), fmt_number(e.get("objectiveValue")), fmt_params(e.get("params") or {}),
         fmt_metrics({k: v for k, v in (e.get("metrics") or {}).items() if k != metric}, None, 3)]
        for i, e in enumerate(entries, start=1)
    ]
    header = ["#", "TRIAL", metric.upper(), "PARAMS", "OTHER METRICS"]
    return [f"leaderboard of {_meta(experiment).get('name')}:"] + ["  " + line for line in table_lines(header, rows)]


def table_lines(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    rows = [list(r) for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    out = []
    for row in [list(header), *rows]:
        out.append("   ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return out


# -- kubectl get ------------------------------------------------------------------------

_FILTER = re.compile(r'^\[\?\(@\.([A-Za-z0-9_.]+)\s*==\s*["\']([^"\']*)["\']\)\]')
_INDEX = re.compile(r"^\[(\d+)\]")
_FIELD = re.compile(r"^\.([A-Za-z0-9_\-]+)")


def json_path(obj: Any, path: str) -> Any:
    """The subset of JSONPath that printer columns use: `.a.b`, `[0]`, `[?(@.type=="X")]`."""
    values = [obj]
    rest = path.strip().removeprefix("{").removesuffix("}")
    while rest:
        if m := _FIELD.match(rest):
            values = [v.get(m[1]) for v in values if isinstance(v, Mapping) and m[1] in v]
        elif m := _INDEX.match(rest):
            values = [v[int(m[1])] for v in values if isinstance(v, list) and len(v) > int(m[1])]
        elif m := _FILTER.match(rest):
            field_path, wanted = m[1].split("."), m[2]
            values = [item for v in values if isinstance(v, list) for item in v
                      if str(_dig(item, field_path)) == wanted]
        else:
            raise ValueError(f"unsupported JSONPath {path!r} at {rest!r}")
        rest = rest[m.end():]
    return values[0] if len(values) == 1 else (values or None)


def _dig(value: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def age(timestamp: str | None, now: datetime | None = None) -> str:
    if not timestamp:
        return "<unknown>"
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    if seconds < 120:
        return f"{max(seconds, 0)}s"
    if seconds < 3600 * 2:
        return f"{seconds // 60}m"
    if seconds < 86400 * 2:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def cell(value: Any, column_type: str, now: datetime | None = None) -> str:
    if value is None:
        return "<none>" if column_type != "date" else "<unknown>"
    if column_type == "date":
        return age(str(value), now)
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return fmt_number(value) if column_type == "number" else str(value)


BuiltinColumn = tuple[str, Callable[[Obj], str]]


def _job_status(job: Obj) -> str:
    for condition in _status(job).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            return condition["type"]
    return "Running" if _status(job).get("active") else "Pending"


def _pod_status(pod: Obj) -> str:
    statuses = _status(pod).get("containerStatuses") or [{}]
    state = statuses[0].get("state") or {}
    if "waiting" in state:
        return str(state["waiting"].get("reason", "Waiting"))
    if "terminated" in state:
        return str(state["terminated"].get("reason", "Terminated"))
    return str(_status(pod).get("phase", "Pending"))


def _service_url(service: Obj) -> str:
    ingress = ((_status(service).get("loadBalancer") or {}).get("ingress") or [{}])[0]
    ports = ingress.get("ports") or []
    return f"http://{ingress.get('ip')}:{ports[0].get('port')}" if ingress.get("ip") and ports else "<none>"


BUILTIN_COLUMNS: dict[tuple[str, str], list[BuiltinColumn]] = {
    ("batch/v1", "Job"): [
        ("STATUS", _job_status),
        ("COMPLETIONS", lambda o: f"{_status(o).get('succeeded', 0)}/{_spec(o).get('completions', 1)}"),
        ("FAILED", lambda o: str(_status(o).get("failed", 0))),
    ],
    ("v1", "Pod"): [
        ("READY", lambda o: "1/1" if any(c.get("ready") for c in _status(o).get("containerStatuses") or []) else "0/1"),
        ("STATUS", _pod_status),
        ("RESTARTS", lambda o: str(((_status(o).get("containerStatuses") or [{}])[0]).get("restartCount", 0))),
        ("LOCAL PORT", lambda o: str(_status(o).get("localPort", "<none>"))),
    ],
    ("apps/v1", "Deployment"): [
        ("READY", lambda o: f"{_status(o).get('readyReplicas', 0)}/{_spec(o).get('replicas', 1)}"),
        ("UP-TO-DATE", lambda o: str(_status(o).get("updatedReplicas", 0))),
        ("AVAILABLE", lambda o: str(_status(o).get("availableReplicas", 0))),
    ],
    ("v1", "Service"): [
        ("SELECTOR", lambda o: ",".join(f"{k}={v}" for k, v in (_spec(o).get("selector") or {}).items()) or "<none>"),
        ("LOCAL URL", lambda o: _service_url(o)),
    ],
    ("v1", "ConfigMap"): [("DATA", lambda o: str(len(o.get("data") or {})))],
    ("v1", "Secret"): [("DATA", lambda o: str(len(o.get("data") or {}) + len(o.get("stringData") or {})))],
    ("v1", "Event"): [
        ("TYPE", lambda o: str(o.get("type", ""))),
        ("REASON", lambda o: str(o.get("reason", ""))),
        ("OBJECT", lambda o: f"{(o.get('involvedObject') or {}).get('kind', '').lower()}/{(o.get('involvedObject') or {}).get('name')}"),
        ("MESSAGE", lambda o: str(o.get("message", "")).replace("\n", " ")[:120]),
    ],
}
BUILTIN_NAMES: dict[str, tuple[str, str]] = {
    **{n: ("batch/v1", "Job") for n in ("jobs", "job")},
    **{n: ("v1", "Pod") for n in ("pods", "pod", "po")},
    **{n: ("apps/v1", "Deployment") for n in ("deployments", "deployment", "deploy")},
    **{n: ("v1", "Service") for n in ("services", "service", "svc")},
    **{n: ("v1", "ConfigMap") for n in ("configmaps", "configmap", "cm")},
    **{n: ("v1", "Secret") for n in ("secrets", "secret")},
    **{n: ("v1", "Event") for n in ("events", "event", "ev")},
}


def resolve_kinds(name: str) -> list[tuple[str, str]]:
    """(apiVersion, kind) for a name as `kubectl get` takes it; raises ValueError."""
    lowered = name.lower()
    if lowered in ("mlops", "all"):
        return [(API_VERSION, k.kind) for k in ALL_KINDS]
    for kind in ALL_KINDS:
        if lowered in (kind.plural, kind.singular, kind.kind.lower(), *kind.short_names,
                       f"{kind.plural}.{kind.group}"):
            return [(API_VERSION, kind.kind)]
    if lowered in BUILTIN_NAMES:
        return [BUILTIN_NAMES[lowered]]
    known = sorted({k.plural for k in ALL_KINDS} | {"mlops"} | {n for n in BUILTIN_NAMES if n.endswith("s")})
    raise ValueError(f'the server doesn\'t have a resource type "{name}" (known: {", ".join(known)})')


def render_table(api_version: str, kind: str, objects: Sequence[Obj], wide: bool, all_namespaces: bool,
                 now: datetime | None = None) -> str:
    """Objects of one kind as `kubectl get` prints them (NAME, the printer columns, AGE)."""
    header = (["NAMESPACE"] if all_namespaces else []) + ["NAME"]
    getters: list[Callable[[Obj], str]] = []
    kind_cls = next((k for k in ALL_KINDS if k.kind == kind and api_version == API_VERSION), None)
    if kind_cls is not None:
        for column in kind_cls.printer_columns:
            if column.get("priority", 0) and not wide:
                continue
            header.append(str(column["name"]).upper())
            getters.append(lambda o, c=column: cell(json_path(o, c["jsonPath"]), c["type"], now))
    else:
        for title, getter in BUILTIN_COLUMNS.get((api_version, kind), []):
            header.append(title)
            getters.append(getter)
        header.append("AGE")
        getters.append(lambda o: age(_meta(o).get("creationTimestamp"), now))
    rows = []
    for obj in objects:
        row = ([str(_meta(obj).get("namespace", ""))] if all_namespaces else []) + [str(_meta(obj).get("name"))]
        rows.append(row + [g(obj) for g in getters])
    return "\n".join(table_lines(header, rows))
