"""`mlops local ...`: the command-line face of the embedded default.

    mlops local up -f PATH [--exit-when-settled]   start (or reuse) the instance, apply, follow progress
    mlops local apply -f PATH                      add or change resources in the running instance
    mlops local get KIND [NAME]                    print objects like `kubectl get`
    mlops local delete (-f PATH | KIND NAME...)    delete objects; what they own goes with them
    mlops local down                               stop the instance and every process it started
    mlops local instance                           run the instance in the foreground (what `up` spawns)

Each handler is `(args) -> int` (the exit status), set as `func` on its parser. The heavy
modules are imported inside the handlers so that `mlops --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_STATE_DIR = ".mlops"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `local` command group to the `mlops` CLI."""
    local = subparsers.add_parser(
        "local",
        help="run the whole loop on this machine, no cluster needed",
        description="The embedded default: an S3 server, the reconcilers and a local executor "
        "that runs the pods they create as processes on this machine.",
    )
    local.set_defaults(func=lambda args: _print_help(local))
    commands = local.add_subparsers(dest="local_command", metavar="COMMAND")

    up = commands.add_parser("up", help="start the local instance, apply resources, follow progress")
    _add_files(up, required=False)
    up.add_argument(
        "--exit-when-settled",
        action="store_true",
        help="return once everything is settled; exit status 1 if anything failed",
    )
    up.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --exit-when-settled: give up (exit status 3) after this long",
    )
    _add_state_dir(up)
    up.set_defaults(func=_up)

    apply = commands.add_parser("apply", help="add or change resources in the running instance")
    _add_files(apply, required=True)
    _add_state_dir(apply)
    apply.set_defaults(func=_apply)

    get = commands.add_parser("get", help="list objects like `kubectl get`")
    get.add_argument("kind", help="experiments|exp, trainingruns|tr, modelversions|mv, "
                     "inferenceservices|isvc, mlops (all four), jobs, pods, deployments, services, ...")
    get.add_argument("name", nargs="?", help="only this object")
    get.add_argument("-n", "--namespace", default=None, help="only this namespace (default: all)")
    get.add_argument("-o", "--output", choices=("table", "wide", "yaml", "json"), default="table")
    _add_state_dir(get)
    get.set_defaults(func=_get)

    delete = commands.add_parser(
        "delete",
        help="delete resources (and what they own) from the running instance",
        description="Delete the resources of -f PATH, or KIND NAME..., from the running instance; what they own "
        "(trials, Jobs, Deployments, processes) goes with them, as the cluster's garbage collector does.",
    )
    delete.add_argument("kind", nargs="?", help="experiment|exp, trainingrun|tr, modelversion|mv, inferenceservice|isvc, "
                        "job, deployment, ...")
    delete.add_argument("names", nargs="*", metavar="NAME", help="the objects of that kind to delete")
    delete.add_argument("-n", "--namespace", default=None, help="their namespace (default: default)")
    _add_files(delete, required=False)
    _add_state_dir(delete)
    delete.set_defaults(func=_delete)

    down = commands.add_parser("down", help="stop the instance and every process it started (data is kept)")
    _add_state_dir(down)
    down.set_defaults(func=_down)

    instance = commands.add_parser("instance", help="run the local instance in the foreground")
    _add_state_dir(instance)
    instance.set_defaults(func=_instance)


def _add_files(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        type=Path,
        required=required,
        default=None,
        metavar="PATH",
        help="a YAML file or a folder of them (repeatable), as for `kubectl apply -f`",
    )


def _add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(DEFAULT_STATE_DIR),
        help=f"where the instance keeps its data, logs and state (default: ./{DEFAULT_STATE_DIR})",
    )


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _up(args: argparse.Namespace) -> int:
    from mlops_operator.local import client

    return client.up(args.state_dir, args.files or [], args.exit_when_settled, args.timeout)


def _apply(args: argparse.Namespace) -> int:
    from mlops_operator.local import client

    return client.apply(args.state_dir, args.files)


def _get(args: argparse.Namespace) -> int:
    from mlops_operator.local import client

    return client.get(args.state_dir, args.kind, args.name, args.namespace, args.output)


def _delete(args: argparse.Namespace) -> int:
    from mlops_operator.local import client

    return client.delete(args.state_dir, args.files, args.kind, args.names, args.namespace)


def _down(args: argparse.Namespace) -> int:
    from mlops_operator.local import client

    return client.down(args.state_dir)


def _instance(args: argparse.Namespace) -> int:
    from mlops_operator.local import instance

    return instance.run(args.state_dir)
