"""The `mlops` command (also `python -m mlops_operator`).

    mlops version                      the installed version
    mlops crds [--check] [--output D]  write (or verify) the CRDs generated from api/
    mlops run [--namespace NS | -A]    run the operator (kopf) against the current cluster

Further groups (`mlops local ...`, `mlops cluster ...`) come from the modules in
`SUBCOMMAND_MODULES`; each has `register(subparsers)` and sets `func` on its parsers.
A handler is `func(args) -> int | None`, its return value the exit status.
Heavy imports (kopf, the handlers) happen inside the command that needs them, so that
`mlops --help` and `mlops crds` stay fast and work without a cluster.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from mlops_operator.api import API_VERSION
from mlops_operator.version import __version__

SUBCOMMAND_MODULES = ("mlops_operator.local.commands", "mlops_operator.clusterctl", "mlops_operator.devcluster.commands")
HANDLERS_MODULE = "mlops_operator.kopf_handlers"

DEFAULT_METRICS_PORT = 9090
DEFAULT_LIVENESS_PORT = 8081
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a command whose reader left
EXIT_NO_CLUSTER = 1


def build_parser(modules: Sequence[str] = SUBCOMMAND_MODULES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlops",
        description="MLOps operator for scikit-learn models: search, train, register, serve, canary, drift.",
    )
    parser.add_argument("--version", action="version", version=f"mlops-operator {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")

    version = subparsers.add_parser("version", help="print the version", description="Print the version.")
    version.set_defaults(func=_version)

    crds = subparsers.add_parser(
        "crds",
        help="write the CRDs generated from the pydantic models",
        description="Generate the CustomResourceDefinitions from operator/mlops_operator/api into a directory "
        "(default: crds/ of the source checkout), or verify that the directory is current.",
    )
    crds.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 naming every stale, missing or extra file"
    )
    crds.add_argument("--output", "-o", type=Path, default=None, metavar="DIR", help="directory of the CRD files")
    crds.set_defaults(func=_crds)

    run = subparsers.add_parser(
        "run",
        help="run the operator against the current Kubernetes context",
        description="Run the operator (kopf) with the credentials kopf finds (in-cluster service account or "
        "kubeconfig), with a liveness endpoint and Prometheus metrics.",
    )
    scope = run.add_mutually_exclusive_group(required=True)
    scope.add_argument(
        "--namespace", "-n", action="append", metavar="NS", help="watch this namespace (repeatable; globs allowed)"
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    run.add_argument(
        "--metrics-port", type=int, default=DEFAULT_METRICS_PORT, metavar="PORT", help="/metrics port; 0 disables"
    )
    run.add_argument(
        "--liveness-port", type=int, default=DEFAULT_LIVENESS_PORT, metavar="PORT", help="/healthz port; 0 disables"
    )
    run.add_argument("--host", default="0.0.0.0", help="address the two endpoints bind to (default 0.0.0.0)")
    run.add_argument("--standalone", action="store_true", help="no peering with other operator instances")
    run.add_argument("--verbose", "-v", action="store_true", help="log more")
    run.add_argument("--debug", action="store_true", help="log everything kopf does")
    run.add_argument("--log-format", choices=("plain", "full", "json"), default="full", help="log line format")
    run.set_defaults(func=_run)

    for name in modules:
        module = _import_optional(name)
        if module is not None:
            module.register(subparsers)
    return parser


def _import_optional(name: str) -> Any:
    """The module, or None if it does not exist (yet). An import error raised *inside*
    an existing module is a bug there, and is not hidden."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name == name:
            return None
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        status = func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`mlops local get mlops -o json | head -1`): it had what it
        # wanted. Point stdout at /dev/null so the interpreter's final flush is quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return 0 if status is None else int(status)


# --------------------------------------------------------------------------- version


def _version(args: argparse.Namespace) -> int:
    print(f"mlops-operator {__version__} (API {API_VERSION})")
    return 0


# --------------------------------------------------------------------------- crds


def _crds(args: argparse.Namespace) -> int:
    from mlops_operator import crdgen

    directory = args.output if args.output is not None else crdgen.default_crds_dir()
    files = crdgen.render_all()
    if args.check:
        problems = crdgen.compare(directory, files)
        for name, problem in problems:
            print(f"{_shown(directory / name)}: {problem}", file=sys.stderr)
        if problems:
            fix = crdgen.FIX_COMMAND + (f" --output {directory}" if args.output is not None else "")
            print(f"CRDs in {_shown(directory)} are out of date with the API models; run `{fix}`", file=sys.stderr)
            return 1
        print(f"{_shown(directory)}: {len(files)} files current")
        return 0
    changes = crdgen.write(directory, files)
    for name, problem in changes:
        verb = "removed" if problem == "extra" else "wrote"
        print(f"{verb} {_shown(directory / name)}")
    if not changes:
        print(f"{_shown(directory)}: {len(files)} files already current")
    return 0


def _shown(path: Path) -> Path:
    """Relative to the working directory when under it: shorter, and what one would type."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


# --------------------------------------------------------------------------- run


def kopf_run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of `kopf.run` for the parsed `mlops run` arguments."""
    options: dict[str, Any] = {
        "clusterwide": bool(args.all_namespaces),
        "namespaces": tuple(args.namespace or ()),
        "standalone": True if args.standalone else None,
        # Read by the startup handler of kopf_handlers, which serves /metrics (docs/contracts.md).
        "memo": {"metrics_port": args.metrics_port, "metrics_host": args.host},
    }
    if args.liveness_port:
        options["liveness_endpoint"] = f"http://{args.host}:{args.liveness_port}/healthz"
    return options


def no_cluster_reason(environ: Mapping[str, str], home: Path) -> str | None:
    """Why kopf would find no cluster to log in to, or None: not inside a pod, and no
    kubeconfig (KUBECONFIG, else ~/.kube/config) with a current context. kopf would retry
    its login forever; a newcomer needs one line instead."""
    if environ.get("KUBERNETES_SERVICE_HOST"):
        return None  # in a pod: the service account's token and CA
    named = [p for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    files = [Path(p) for p in named] if named else [home / ".kube" / "config"]
    existing = [f for f in files if f.is_file()]
    if not existing:
        return f"no Kubernetes cluster is configured (no kubeconfig at {', '.join(map(str, files))}, not in a pod)"
    for file in existing:
        try:
            if (yaml.safe_load(file.read_text()) or {}).get("current-context"):
                return None
        except (OSError, yaml.YAMLError, AttributeError):
            continue
    return f"no Kubernetes cluster is configured ({', '.join(map(str, existing))} has no current-context)"


def _run(args: argparse.Namespace) -> int:
    reason = no_cluster_reason(os.environ, Path.home())
    if reason is not None:
        print(f"error: {reason}; create one with `mlops cluster create`, or run everything on this machine "
              "with `mlops local up -f examples/iris/`", file=sys.stderr)
        return EXIT_NO_CLUSTER
    import kopf

    kopf.configure(
        debug=args.debug,
        verbose=args.verbose,
        log_format={"plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL, "json": kopf.LogFormat.JSON}[
            args.log_format
        ],
    )
    # Importing the module registers its handlers in kopf's default registry.
    importlib.import_module(HANDLERS_MODULE)
    options = kopf_run_options(args)
    options["memo"] = kopf.Memo(options["memo"])
    kopf.run(**options)
    return 0
