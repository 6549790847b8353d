"""What `mlops local up/apply/get/down` do on the user's side: find or start the local
instance, talk to its control API, follow its progress log, print results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, TextIO

import yaml

from mlops_operator.api import API_VERSION
from mlops_operator.local import display, manifests, settle
from mlops_operator.local import state as saved_state
from mlops_operator.local.processes import is_alive, read_recorded, stop_recorded, terminate_group
from mlops_operator.local.seaweed import SeaweedServer
from mlops_operator.local.settle import Key
from mlops_operator.local.state import StateDir

START_TIMEOUT = 90.0
STOP_TIMEOUT = 60.0
FOLLOW_INTERVAL = 0.25
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3


class InstanceError(RuntimeError):
    pass


class Control:
    """The control API of a running instance."""

    def __init__(self, port: int, pid: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.pid = pid

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def status(self) -> dict[str, Any]:
        return self.call("GET", "/status")[1]


def attach(paths: StateDir) -> Control | None:
    """The running instance of this state folder, or None."""
    record = saved_state.read_json(paths.instance_file)
    if not record:
        return None
    pid = int(record.get("pid", 0))
    if not pid or not is_alive(pid, record.get("startTicks")):
        return None
    control = Control(int(record["controlPort"]), pid)
    try:
        control.status()
    except (OSError, ValueError):
        return None
    return control


def start_instance(paths: StateDir) -> Control:
    """Spawn the instance in the background (its own session: it outlives this command and
    a Ctrl-C here) and wait until its control API answers."""
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(parents=True, exist_ok=True)
    with open(paths.instance_log, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlops_operator.local.instance", str(paths.root.resolve())],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=os.getcwd(),
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise InstanceError(f"the local instance exited at start (status {process.returncode}); "
                                f"see {paths.instance_log}:\n{_tail(paths.instance_log)}")
        control = attach(paths)
        if control is not None and control.pid == process.pid:
            return control
        time.sleep(0.1)
    raise InstanceError(f"the local instance did not answer within {START_TIMEOUT:.0f}s; see {paths.instance_log}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _print_problems(problems: list[str], err: TextIO, done: str = "applied") -> None:
    print(f"error: nothing was {done}:", file=err)
    for problem in problems:
        print(f"  {problem}", file=err)


def _print_results(results: list[dict[str, str]], out: TextIO) -> None:
    """One `kubectl`-style line per object: `experiments.mlops.seed.io/iris created`."""
    for result in results:
        group = result["apiVersion"].split("/")[0] if "/" in result["apiVersion"] else ""
        plural = result["kind"].lower() + "s"
        print(f"{plural}{'.' + group if group else ''}/{result['name']} {result['action']}", file=out)


def _apply_objects(control: Control, objects: list[dict[str, Any]], out: TextIO, err: TextIO) -> list[Key] | None:
    """Apply `objects`; the keys of what was applied, or None (the problems are printed)."""
    code, body = control.call("POST", "/apply", objects)
    if code != 200:
        _print_problems(body.get("problems") or [str(body)], err)
        return None
    _print_results(body["results"], out)
    return [(r["kind"], r["namespace"], r["name"]) for r in body["results"]]


def up(state_dir: Path, files: list[Path], exit_when_settled: bool, timeout: float | None,
       out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    paths = StateDir(state_dir)
    objects: list[dict[str, Any]] = []
    if files:
        try:
            objects = manifests.load(files)
        except manifests.ManifestError as error:
            _print_problems([str(p) for p in error.problems], err)
            return EXIT_USAGE
    elif not paths.state_file.exists() and attach(paths) is None:
        print("error: nothing to run: give the resources with -f PATH (a file or a folder of YAML)", file=err)
        return EXIT_USAGE

    offset = paths.progress_log.stat().st_size if paths.progress_log.exists() else 0
    control = attach(paths)
    try:
        if control is None:
            print(f"starting the local instance (state in {paths.root}/)", file=out)
            control = start_instance(paths)
        else:
            print(f"using the running local instance (pid {control.pid})", file=out)
    except InstanceError as error:
        print(f"error: {error}", file=err)
        return EXIT_FAILED
    roots: list[Key] | None = None  # without -f, `up` answers for everything the instance holds
    if objects:
        roots = _apply_objects(control, objects, out, err)
        if roots is None:
            return EXIT_USAGE
    return follow(paths, control, offset, exit_when_settled, timeout, out, err, roots)


def follow(paths: StateDir, control: Control, offset: int, exit_when_settled: bool, timeout: float | None,
           out: TextIO, err: TextIO, roots: list[Key] | None = None) -> int:
    """Print the instance's progress lines; with `exit_when_settled`, return once settled,
    failed (1) if anything of `roots` (and what they own) failed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    announced = False
    try:
        while True:
            offset = _print_new_lines(paths.progress_log, offset, out)
            try:
                status = control.status()
            except (OSError, ValueError):
                if not is_alive(control.pid):
                    offset = _print_new_lines(paths.progress_log, offset, out)
                    print(f"error: the local instance stopped; see {paths.instance_log}", file=err)
                    return EXIT_FAILED
                status = {}
            if status.get("settled"):
                _print_new_lines(paths.progress_log, offset, out)
                if exit_when_settled:
                    ours, others = failures(control, status, roots)
                    _print_summary(status, ours, others, out)
                    return EXIT_FAILED if ours else EXIT_OK
                if not announced:
                    announced = True
                    _print_summary(status, *failures(control, status, roots), out)
                    print("the local instance keeps running; Ctrl-C detaches, `mlops local down` stops it",
                          file=out)
            if deadline is not None and time.monotonic() > deadline:
                print("error: not settled in time; still waiting for:", file=err)
                for item in status.get("waiting") or []:
                    print(f"  {item}", file=err)
                return EXIT_TIMEOUT
            out.flush()
            time.sleep(FOLLOW_INTERVAL)
    except KeyboardInterrupt:
        print(f"\ndetached: the local instance keeps running (pid {control.pid}); "
              "`mlops local down` stops it", file=out)
        return EXIT_OK


def _print_new_lines(path: Path, offset: int, out: TextIO) -> int:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return offset
    complete = data[: data.rfind(b"\n") + 1]
    if complete:
        out.write(complete.decode(errors="replace"))
        out.flush()
    return offset + len(complete)


def failures(control: Control, status: dict[str, Any], roots: list[Key] | None) -> tuple[list[str], list[str]]:
    """(what failed among `roots` and what they own, what else the instance reports failed).
    An earlier failed Experiment must not fail every later `up -f` of something else."""
    failed = list(status.get("failed") or [])
    if roots is None:
        return failed, []
    objects = [o for kind in settle.TERMINAL_PHASES for o in _list(control, API_VERSION, kind)]
    objects += _list(control, "batch/v1", "Job")
    scoped = settle.owned_by(objects, roots)
    ours = settle.assess(scoped, [], [o for o in scoped if o.get("kind") == "Job"]).failed
    return ours, [item for item in failed if item not in ours]


def _list(control: Control, api_version: str, kind: str) -> list[dict[str, Any]]:
    code, body = control.call("GET", "/objects?" + urllib.parse.urlencode({"apiVersion": api_version, "kind": kind}))
    return body.get("items", []) if code == 200 else []


def _print_summary(status: dict[str, Any], ours: list[str], others: list[str], out: TextIO) -> None:
    print("settled" + (f", {len(ours)} failed:" if ours else ": nothing failed"), file=out)
    for item in ours:
        print(f"  {item}", file=out)
    if others:
        print(f"{len(others)} failed earlier (not applied by this command; `mlops local delete KIND NAME` "
              "removes them):", file=out)
        for item in others:
            print(f"  {item}", file=out)
    for service in status.get("services") or []:
        if service.get("url"):
            print(f"service {service['name']} (champion {service.get('champion')}) answers at {service['url']}",
                  file=out)
            if service.get("example"):
                print(f"  {service['example']}", file=out)


def apply(state_dir: Path, files: list[Path], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    paths = StateDir(state_dir)
    try:
        objects = manifests.load(files)
    except manifests.ManifestError as error:
        _print_problems([str(p) for p in error.problems], err)
        return EXIT_USAGE
    control = attach(paths)
    if control is None:
        print(f"error: no local instance runs from {paths.root}/: start one with `mlops local up -f PATH`", file=err)
        return EXIT_FAILED
    return EXIT_OK if _apply_objects(control, objects, out, err) is not None else EXIT_USAGE


def delete(state_dir: Path, files: list[Path] | None, kind: str | None, names: list[str], namespace: str | None,
           out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """`delete -f FILE` or `delete KIND NAME...`: the objects go, and what they own with them."""
    paths = StateDir(state_dir)
    try:
        references = _references(files, kind, names, namespace)
    except manifests.ManifestError as error:
        _print_problems([str(p) for p in error.problems], err, done="deleted")
        return EXIT_USAGE
    except ValueError as error:
        print(f"error: {error}", file=err)
        return EXIT_USAGE
    control = attach(paths)
    if control is None:
        print(f"error: no local instance runs from {paths.root}/: start it with `mlops local up`", file=err)
        return EXIT_FAILED
    code, body = control.call("POST", "/delete", references)
    if code != 200:
        print(f"error: {'; '.join(body.get('problems') or [str(body)])}", file=err)
        return EXIT_FAILED
    _print_results(body["results"], out)
    missing = [r for r in body["results"] if r["action"] == "not found"]
    return EXIT_FAILED if missing else EXIT_OK


def _references(files: list[Path] | None, kind: str | None, names: list[str],
                namespace: str | None) -> list[dict[str, str]]:
    """What to delete, as the instance's /delete takes it; raises ValueError or ManifestError."""
    if files:
        if kind or names:
            raise ValueError("give either -f PATH or KIND NAME, not both")
        return [{"apiVersion": o["apiVersion"], "kind": o["kind"], "namespace": o["metadata"]["namespace"],
                 "name": o["metadata"]["name"]} for o in manifests.load(files)]
    if not kind or not names:
        raise ValueError("say what to delete: -f PATH, or KIND NAME (e.g. `mlops local delete experiment iris`)")
    kinds = display.resolve_kinds(kind)
    if len(kinds) != 1:
        raise ValueError(f'"{kind}" names several kinds; name one (experiment, trainingrun, modelversion, ...)')
    (api_version, kind_name), = kinds
    return [{"apiVersion": api_version, "kind": kind_name, "namespace": namespace or manifests.DEFAULT_NAMESPACE,
             "name": name} for name in names]


def get(state_dir: Path, kind: str, name: str | None, namespace: str | None, output: str,
        out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    paths = StateDir(state_dir)
    try:
        kinds = display.resolve_kinds(kind)
    except ValueError as error:
        print(f"error: {error}", file=err)
        return EXIT_USAGE
    control = attach(paths)
    saved = None
    if control is None:
        try:
            saved = saved_state.load(paths.state_file)
        except ValueError as error:
            print(f"error: {error}", file=err)
            return EXIT_FAILED
        if saved is None:
            print(f"error: no local instance and no saved state in {paths.root}/", file=err)
            return EXIT_FAILED
    found: list[tuple[tuple[str, str], list[dict[str, Any]]]] = []
    for api_version, kind_name in kinds:
        if control is not None:
            query = {"apiVersion": api_version, "kind": kind_name, **({"namespace": namespace} if namespace else {})}
            code, body = control.call("GET", "/objects?" + "&".join(f"{k}={v}" for k, v in query.items()))
            items = body.get("items", []) if code == 200 else []
        else:
            items = [o for o in saved.objects  # type: ignore[union-attr]
                     if o.get("apiVersion") == api_version and o.get("kind") == kind_name
                     and (namespace is None or o["metadata"].get("namespace") == namespace)]
        if name is not None:
            items = [o for o in items if o["metadata"]["name"] == name]
        found.append(((api_version, kind_name), items))
    everything = [o for _, items in found for o in items]
    if name is not None and not everything:
        print(f'error: {kinds[0][1].lower()} "{name}" not found', file=err)
        return EXIT_FAILED
    if output == "json":
        print(json.dumps(everything[0] if name and len(everything) == 1 else {"apiVersion": "v1", "kind": "List",
                                                                              "items": everything}, indent=2), file=out)
        return EXIT_OK
    if output == "yaml":
        print(yaml.safe_dump(everything[0] if name and len(everything) == 1 else {"apiVersion": "v1", "kind": "List",
                                                                                  "items": everything},
                             sort_keys=False), end="", file=out)
        return EXIT_OK
    printed = False
    for (api_version, kind_name), items in found:
        if not items:
            continue
        if printed:
            print(file=out)
        if len(found) > 1:
            print(f"{kind_name}:", file=out)
        print(display.render_table(api_version, kind_name, items, output == "wide", namespace is None), file=out)
        printed = True
    if not printed:
        print(f"No resources found{' in ' + namespace + ' namespace' if namespace else ''}.", file=err)
    if control is None:
        print(f"(the local instance is down: this is the state saved in {paths.root}/)", file=err)
    return EXIT_OK


def down(state_dir: Path, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Stop the instance and every process it started, by pid; check that none is left."""
    paths = StateDir(state_dir)
    if not paths.root.is_dir():  # nothing ever ran here: look, but create nothing
        print("no local instance was running", file=out)
        return EXIT_OK
    recorded = saved_state.read_json(paths.instance_file)
    pids = _recorded_pids(paths)
    control = attach(paths)
    if control is not None:
        control.call("POST", "/shutdown")
        deadline = time.monotonic() + STOP_TIMEOUT
        while is_alive(control.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    if recorded and is_alive(int(recorded["pid"]), recorded.get("startTicks")):
        terminate_group(int(recorded["pid"]), recorded.get("startTicks"), 10.0)
    leftovers = stop_recorded(paths.pids_file) if paths.pids_file.exists() else []
    server = SeaweedServer.attach(paths.s3_record)
    if server is not None:
        server.stop()
    paths.instance_file.unlink(missing_ok=True)
    alive = [pid for pid, ticks in pids if is_alive(pid, ticks)] + leftovers
    if alive:
        print(f"error: these processes would not stop: {sorted(set(alive))}", file=err)
        return EXIT_FAILED
    if control is None and not recorded and not pids:
        print("no local instance was running", file=out)
    else:
        print(f"stopped the local instance and {max(len(pids) - 1, 0)} processes it started; "
              f"data kept in {paths.root}/", file=out)
    return EXIT_OK


def _recorded_pids(paths: StateDir) -> list[tuple[int, int | None]]:
    """Every process of ours the state folder knows about: instance, S3 server, pods."""
    pids: list[tuple[int, int | None]] = []
    instance = saved_state.read_json(paths.instance_file)
    if instance and instance.get("pid"):
        pids.append((int(instance["pid"]), instance.get("startTicks")))
    s3 = saved_state.read_json(paths.s3_record)
    if s3 and s3.get("pid"):
        pids.append((int(s3["pid"]), None))
    for entry in read_recorded(paths.pids_file).values():
        pids.append((int(entry["pid"]), entry.get("startTicks")))  # type: ignore[call-overload]
    return [(pid, ticks) for pid, ticks in pids if is_alive(pid, ticks)]


def own_pids(state_dir: Path) -> list[int]:
    """The pids of every live process of the instance of `state_dir` (for tests and down)."""
    return [pid for pid, _ in _recorded_pids(StateDir(state_dir))]

