"""The local instance: one background process that holds the embedded default together.

It starts (or re-attaches to) the embedded S3 server, reloads the saved cluster state,
and then runs passes: the control loop (the operator's controllers), the executor (the
kubelet and friends), the progress display; it sleeps until something changes in the
cluster, a process exits, or a requeue falls due. A small HTTP API on a loopback port
(recorded in `instance.json`) lets `mlops local apply/get/down` talk to it:

    GET  /status     settled or not, what failed, what it waits for, where services answer
    GET  /objects    ?apiVersion=&kind=&namespace=   objects as stored
    POST /apply      a JSON list of resources (validated again here)
    POST /shutdown   stop everything and exit

Run it with `python -m mlops_operator.local.instance STATE_DIR` (what `mlops local up`
spawns) or `mlops local instance`. SIGTERM and SIGINT stop it cleanly.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
import urllib.parse
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mlops_operator.cluster.port import ClusterError
from mlops_operator.local import manifests, settle
from mlops_operator.local.control_api import answer_json
from mlops_operator.local import state as saved_state
from mlops_operator.local.display import Progress
from mlops_operator.local.executor import DEPLOYMENT, JOB, Executor, PortBook, S3Settings
from mlops_operator.local.loop import API_VERSION, ControlLoop, default_controllers
from mlops_operator.local.pod_runner import process_key
from mlops_operator.local.processes import ProcessTable, atomic_write, start_ticks
from mlops_operator.local.proxy import PROXY_KEY, RECORD_NAME, ProxyProcess
from mlops_operator.local.seaweed import SeaweedServer
from mlops_operator.local.state import LocalCluster, SavedState, StateDir

log = logging.getLogger(__name__)

S3_SECRET = "mlops-s3"
IDLE_WAIT = 5.0
MIN_PASS_GAP = 0.02
SAVE_INTERVAL = 1.0
FIELD_MANAGER = "mlops-local"
PASS_ERROR_RETRY = 2.0


class AlreadyRunning(RuntimeError):
    pass


def utcnow() -> datetime:
    return datetime.now(UTC)


class Instance:
    def __init__(self, root: Path) -> None:
        self.paths = StateDir(root.resolve())
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self._apply_lock = threading.Lock()
        self._apply_seq = 0
        self._settled_seq = -1
        self._settlement = settle.Settlement(settled=False, waiting=["starting"])
        self._examples: dict[str, str | None] = {}
        self._started = time.monotonic()
        self._last_pass_error = ""
        self._saved_rollouts: tuple[Any, ...] | None = None

    # -- start -------------------------------------------------------------------------

    def start(self) -> None:
        paths = self.paths
        paths.root.mkdir(parents=True, exist_ok=True)
        paths.logs.mkdir(parents=True, exist_ok=True)
        # One instance per state folder, for as long as this process lives.
        self._lock_file = open(paths.root / "instance.lock", "a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            running = saved_state.read_json(paths.instance_file) or {}
            raise AlreadyRunning(f"a local instance already runs from {paths.root} "
                                 f"(pid {running.get('pid', 'unknown')})") from None
        saved = saved_state.load(paths.state_file) or SavedState(objects=[], ports={}, credentials={})
        # The data plane an earlier instance left running (it died, or was killed) serves
        # on: its Service proxy and model servers are adopted; everything else is stopped.
        self.processes = ProcessTable(paths.pids_file, on_exit=self.wake.set)
        survivors = {PROXY_KEY, *server_pod_keys(saved.objects)}
        leftovers = self.processes.adopt_recorded(lambda key: key in survivors)
        if leftovers:
            raise RuntimeError(f"processes of an earlier instance would not stop: {leftovers}")

        self.credentials = saved.credentials or {
            "accessKey": "mlops-local",
            "secretKey": secrets.token_urlsafe(24),
        }
        self.say(f"starting the local instance in {paths.root}"
                 + (f" (resuming {len(saved.objects)} saved objects)" if saved.objects else ""))
        self.s3 = SeaweedServer.attach(paths.s3_record) or SeaweedServer(paths.s3_data, pid_file=paths.s3_record).start()
        self.say(f"S3 (SeaweedFS) answers at {self.s3.endpoint}, data in {paths.s3_data}")
        # The operator's own S3 reads (artifact checks) use the same server.
        os.environ["AWS_ENDPOINT_URL"] = self.s3.endpoint
        os.environ["AWS_ACCESS_KEY_ID"] = self.credentials["accessKey"]
        os.environ["AWS_SECRET_ACCESS_KEY"] = self.credentials["secretKey"]

        self.cluster = LocalCluster()
        self.cluster.restore(saved.objects)
        self.proxy = ProxyProcess.attach_or_start(self.processes, paths.root / RECORD_NAME, paths.logs / "proxy.log")
        self.ports = PortBook(saved.ports)
        self.executor = Executor(
            self.cluster,
            paths.root,
            self.processes,
            self.proxy,
            self.ports,
            S3Settings(self.s3.endpoint, self.credentials["accessKey"], self.credentials["secretKey"]),
            notes=self.say,
        )
        controllers, missing = default_controllers(self.metrics_url)
        for problem in missing:
            self.say(f"warning: no controller for {problem}: objects of that kind are not reconciled")
        self.loop = ControlLoop(self.cluster, controllers, utcnow, time.monotonic, report_error=self.say)
        self.progress = Progress(self.say, self.executor.service_url, self.example)
        self.progress.observe(self.cluster, quiet=True)
        for namespace in {o["metadata"].get("namespace", "default") for o in saved.objects} | {"default"}:
            self.ensure_s3_secret(namespace)
        self.cluster.add_listener(lambda event_type, obj: self.wake.set())
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        threading.Thread(target=self.server.serve_forever, name="control-api", daemon=True).start()
        atomic_write(paths.instance_file, json.dumps({
            "pid": os.getpid(),
            "startTicks": start_ticks(os.getpid()),
            "controlPort": self.server.server_address[1],
            "s3Endpoint": self.s3.endpoint,
            "startedAt": utcnow().isoformat(),
        }) + "\n")

    def metrics_url(self, service: str, namespace: str, port: int) -> str:
        """Where the operator reads a Service's /metrics: its local port."""
        return self.executor.local_url(f"http://{service}.{namespace}.svc:{port}", namespace)

    # -- run ---------------------------------------------------------------------------

    def serve(self) -> None:
        last_saved_revision = -1
        last_save = 0.0
        while not self.stopping.is_set():
            if not self.paths.instance_file.exists():
                # Its folder was removed (or the record deleted): nobody could find and stop
                # this instance any more, so it stops itself rather than linger.
                log.warning("%s is gone: stopping", self.paths.instance_file)
                break
            self.wake.clear()
            seq = self._apply_seq
            revision_before = self.cluster.revision
            try:
                requeue = self.loop.run_pass()
                self._save_before_the_data_plane_acts()
                executor_wait = self.executor.step()
                self.progress.observe(self.cluster)
                settlement = settle.assess(self._our_objects(), self.cluster.list(*DEPLOYMENT),
                                           self.cluster.list(*JOB))
                if self.cluster.revision != revision_before and settlement.settled:
                    # Level-based: only a pass that changed nothing shows the world at rest.
                    settlement = settle.Settlement(settled=False, failed=settlement.failed,
                                                   waiting=["the last pass changed something"])
                self._settlement = settlement
                self._settled_seq = seq
            except ClusterError as error:  # a conflict between writers: the next pass sees fresh state
                log.warning("pass interrupted: %s", error)
                requeue, executor_wait = 0.1, None
            except Exception as error:  # keep serving what runs; say it once, retry after a pause
                log.exception("pass failed")
                message = f"error: a pass of the local instance failed: {type(error).__name__}: {error}"
                if message != self._last_pass_error:
                    self.say(message + f" (details in {self.paths.instance_log}); retrying")
                    self._last_pass_error = message
                requeue, executor_wait = PASS_ERROR_RETRY, None
            revision = self.cluster.revision
            if revision != last_saved_revision and time.monotonic() - last_save >= SAVE_INTERVAL:
                try:
                    self.save()
                except OSError as error:
                    log.warning("state not saved: %s", error)
                last_saved_revision, last_save = revision, time.monotonic()
            waits = [w for w in (requeue, executor_wait, IDLE_WAIT) if w is not None]
            if revision != last_saved_revision:
                waits.append(SAVE_INTERVAL)
            self.wake.wait(max(MIN_PASS_GAP, min(waits)))
            if self.wake.is_set():
                time.sleep(MIN_PASS_GAP)  # let a burst of changes land in one pass

    def shutdown(self) -> None:
        self.say("stopping the local instance")
        try:
            self.server.shutdown()
        except AttributeError:
            pass
        if hasattr(self, "executor"):
            self.executor.shutdown()
            self.proxy.stop()
            if self.paths.root.is_dir():
                self.save()
        if hasattr(self, "s3"):
            self.s3.stop()
        self.paths.instance_file.unlink(missing_ok=True)
        self.say("local instance stopped; data kept in " + str(self.paths.root))

    def _save_before_the_data_plane_acts(self) -> None:
        """Saves are throttled to one a second, so a kill -9 could lose the last second. A
        rollout decision (a step, a promotion) is made durable before the executor hands it
        to the data plane (the router's config file): a restarted instance then resumes at
        the step the routers apply, and the weight does not jump back."""
        fingerprint = rollout_fingerprint(self.cluster.list(API_VERSION, "InferenceService"),
                                          self.cluster.list("v1", "ConfigMap"))
        if fingerprint == self._saved_rollouts:
            return
        try:
            self.save()
        except OSError as error:
            log.warning("state not saved: %s", error)
            return
        self._saved_rollouts = fingerprint

    def save(self) -> None:
        self._prune_events()
        saved_state.save(self.paths.state_file, SavedState(
            objects=self.cluster.snapshot(), ports=self.ports.as_dict(), credentials=self.credentials))

    def _prune_events(self) -> None:
        """Events are a journal: keep the most recent ones, as the API server's TTL would."""
        events = self.cluster.list("v1", "Event")
        if len(events) <= saved_state.KEPT_EVENTS:
            return
        events.sort(key=lambda e: int(e["metadata"]["resourceVersion"]))
        for event in events[: len(events) - saved_state.KEPT_EVENTS]:
            try:
                self.cluster.delete("v1", "Event", event["metadata"]["namespace"], event["metadata"]["name"])
            except ClusterError:
                pass

    def say(self, line: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        try:
            with open(self.paths.progress_log, "a") as handle:
                handle.write(f"{stamp} {line}\n")
        except OSError as error:  # the folder is gone: the log still tells
            log.warning("progress not recorded (%s): %s", error, line)

    # -- what the control API serves ----------------------------------------------------

    def _our_objects(self) -> list[dict[str, Any]]:
        return [obj for kind in settle.TERMINAL_PHASES for obj in self.cluster.list(API_VERSION, kind)]

    def status(self) -> dict[str, Any]:
        settled = self._settled_seq == self._apply_seq and self._settlement.settled
        services = []
        for service in self.cluster.list(API_VERSION, "InferenceService"):
            meta = service["metadata"]
            url = self.executor.service_url(meta["namespace"], meta["name"])
            services.append({
                "namespace": meta["namespace"],
                "name": meta["name"],
                "url": url,
                "champion": (service.get("status") or {}).get("champion"),
                "phase": (service.get("status") or {}).get("phase"),
                "example": self.example(service) if url else None,
            })
        return {
            "pid": os.getpid(),
            "passes": self.loop.passes,
            "settled": settled,
            "failed": self._settlement.failed,
            "waiting": self._settlement.waiting if not settled else [],
            "services": services,
            "s3Endpoint": self.s3.endpoint,
            "uptimeSeconds": round(time.monotonic() - self._started, 1),
        }

    def apply(self, documents: list[Any]) -> list[dict[str, str]]:
        """Validate every document, then apply them all; raises ManifestError (nothing applied)."""
        objects = []
        problems: list[manifests.Problem] = []
        for index, document in enumerate(documents, start=1):
            try:
                objects.append(manifests.check(document, f"resource {index}"))
            except manifests.ManifestError as error:
                problems += error.problems
        if problems:
            raise manifests.ManifestError(problems)
        results = []
        with self._apply_lock:
            for obj in objects:
                meta = obj["metadata"]
                self.ensure_s3_secret(meta["namespace"])
                before = self._get(obj)
                after = self.cluster.apply(obj, field_manager=FIELD_MANAGER)
                if before is None:
                    action = "created"
                elif before["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]:
                    action = "unchanged"
                else:
                    action = "configured"
                results.append({"kind": obj["kind"], "apiVersion": obj["apiVersion"], "namespace": meta["namespace"],
                                "name": meta["name"], "action": action})
            # Counted once everything is in: only a pass that starts after this can call it settled.
            self._apply_seq += 1
        self.wake.set()
        return results

    def _get(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        meta = obj["metadata"]
        try:
            return self.cluster.get(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        except ClusterError:
            return None

    def ensure_s3_secret(self, namespace: str) -> None:
        """The Secret the operator's pods take S3 credentials from, as the cluster path's
        manifests create it."""
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": S3_SECRET, "namespace": namespace,
                         "labels": {"app.kubernetes.io/part-of": "mlops"}},
            "type": "Opaque",
            "data": {
                "AWS_ACCESS_KEY_ID": base64.b64encode(self.credentials["accessKey"].encode()).decode(),
                "AWS_SECRET_ACCESS_KEY": base64.b64encode(self.credentials["secretKey"].encode()).decode(),
            },
        }
        self.cluster.apply(secret, field_manager=FIELD_MANAGER)

    def example(self, service: dict[str, Any]) -> str | None:
        """A curl command with a real input row for the service's champion."""
        meta = service["metadata"]
        url = self.executor.service_url(meta["namespace"], meta["name"])
        champion = (service.get("status") or {}).get("champion")
        if url is None or not champion:
            return None
        key = f"{meta['namespace']}/{champion}"
        if key not in self._examples:
            try:
                version = self.cluster.get(API_VERSION, "ModelVersion", meta["namespace"], champion)
            except ClusterError:
                return None
            self._examples[key] = example_row_json(version)
        row = self._examples[key]
        if row is None:
            return None
        return (f"curl -s {url}/predict -H 'Content-Type: application/json' "
                f"-d '{{\"instances\": [{row}]}}'")


def rollout_fingerprint(services: list[dict[str, Any]], config_maps: list[dict[str, Any]]) -> tuple[Any, ...]:
    """What the data plane is told of the rollouts: each InferenceService's stage, step,
    champion and challenger, and the ConfigMaps (the routers' weights). Equal fingerprints:
    nothing new to make durable."""
    def key(obj: dict[str, Any]) -> tuple[str, str]:
        return (obj["metadata"].get("namespace", "default"), obj["metadata"]["name"])

    rollouts = tuple(sorted(
        (*key(s), *((s.get("status") or {}).get(f) for f in ("rolloutStage", "currentStep", "champion", "challenger")))
        for s in services))
    configs = tuple(sorted((*key(c), json.dumps(c.get("data") or {}, sort_keys=True)) for c in config_maps))
    return rollouts, configs


def server_pod_keys(objects: list[dict[str, Any]]) -> set[str]:
    """The process keys of the saved Pods that Deployments own: the pods that may outlive
    an instance (a Job's pod is started afresh, as after a lost node)."""
    return {
        process_key(obj["metadata"].get("namespace", "default"), obj["metadata"]["name"])
        for obj in objects
        if obj.get("kind") == "Pod"
        and any(ref.get("kind") == "Deployment" for ref in obj["metadata"].get("ownerReferences") or [])
    }


def example_row_json(model_version: dict[str, Any]) -> str | None:
    """One input row for a model, as JSON: the first row of its dataset when that is a
    scikit-learn built-in, else a row of the signature's types."""
    spec = model_version.get("spec") or {}
    signature = spec.get("signature") or {}
    features = signature.get("features") or []
    dataset = ((spec.get("lineage") or {}).get("dataset") or {}).get("uri", "")
    if dataset.startswith("sklearn://"):
        import sklearn.datasets

        loader = getattr(sklearn.datasets, f"load_{dataset.removeprefix('sklearn://')}", None)
        if loader is not None:
            row = loader().data[0]
            return json.dumps([round(float(v), 6) for v in row])
    if not features:
        return None
    values = []
    for feature in features:
        if feature.get("kind") == "categorical" and feature.get("categories"):
            values.append(feature["categories"][0])
        else:
            values.append(0.0)
    return json.dumps(values)


def _handler(instance: Instance) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/status":
                return self._json(200, instance.status())
            if url.path == "/objects":
                query = dict(urllib.parse.parse_qsl(url.query))
                try:
                    items = instance.cluster.list(query["apiVersion"], query["kind"], query.get("namespace") or None)
                except (KeyError, ValueError, ClusterError) as error:
                    return self._json(400, {"error": str(error)})
                return self._json(200, {"items": items})
            self._json(404, {"error": f"no such endpoint {url.path}"})

        def do_POST(self) -> None:
            if self.path == "/apply":
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    documents = json.loads(self.rfile.read(length))
                    if not isinstance(documents, list):
                        raise ValueError("expected a JSON list of resources")
                    results = instance.apply(documents)
                except manifests.ManifestError as error:
                    return self._json(422, {"problems": [str(p) for p in error.problems]})
                except (ValueError, ClusterError) as error:
                    return self._json(422, {"problems": [str(error)]})
                return self._json(200, {"results": results})
            if self.path == "/shutdown":
                self._json(202, {"stopping": True})
                instance.stopping.set()
                instance.wake.set()
                return
            self._json(404, {"error": f"no such endpoint {self.path}"})

        def _json(self, code: int, body: Any) -> None:
            answer_json(self, code, body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("control api: " + format, *args)

    return Handler


def run(state_dir: Path) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    instance = Instance(Path(state_dir))

    def stop(signum: int, frame: Any) -> None:
        instance.stopping.set()
        instance.wake.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        instance.start()
    except AlreadyRunning as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        log.exception("the local instance could not start")
        instance.say(f"error: the local instance could not start: {error}")
        instance.shutdown()
        return 1
    try:
        instance.serve()
    finally:
        instance.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1] if len(sys.argv) > 1 else ".mlops")))
