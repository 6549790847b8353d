"""`mlops dev cluster build|up|down`: the control-plane tier for people.

    mlops dev cluster build            build etcd, kube-apiserver, kube-controller-manager (or reuse them)
    mlops dev cluster up [--dir DIR]   start them with our CRDs, the node stand-in and the Pod network;
                                       prints KUBECONFIG and how to reach Services
    mlops dev cluster down [--dir DIR] stop everything by pid
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_DIR = Path(".mlops") / "dev-cluster"


def register(subparsers: argparse._SubParsersAction) -> None:
    dev = subparsers.add_parser("dev", help="development tools (a real control plane on this machine)",
                                description="Development tools.")
    groups = dev.add_subparsers(dest="dev_command", metavar="GROUP")
    cluster = groups.add_parser(
        "cluster", help="etcd + kube-apiserver + kube-controller-manager + the node stand-in, on 127.0.0.1",
        description="A real Kubernetes control plane on this machine, built with Go from controlplane/ "
        "(pinned versions), with RBAC, our CRDs and a node stand-in that runs Pods as local processes, "
        "each in a network namespace of its own (needs root).")
    actions = cluster.add_subparsers(dest="cluster_action", metavar="ACTION", required=True)
    build = actions.add_parser("build", help="build the binaries into the cache (reused when current)")
    build.set_defaults(func=_build)
    for name, func, text in (("up", _up, "start the cluster; prints the KUBECONFIG to use"),
                             ("down", _down, "stop the cluster by pid")):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"state folder (default {DEFAULT_DIR})")
        action.set_defaults(func=func)
    dev.set_defaults(func=lambda args: (dev.print_help(), 2)[1])


def _build(args: argparse.Namespace) -> int:
    from mlops_operator.devcluster import build

    try:
        binaries, seconds = build.build(log=lambda line: print(line, file=sys.stderr))
    except build.ControlPlaneUnavailable as error:
        print(f"mlops dev cluster build: {error}", file=sys.stderr)
        return 1
    print(f"{binaries.directory} ({'built in %.0f s' % seconds if seconds is not None else 'already built'})")
    return 0


def _up(args: argparse.Namespace) -> int:
    from mlops_operator import crdgen
    from mlops_operator.devcluster import build, cluster, network
    from mlops_operator.devcluster.control_plane import ControlPlaneError

    try:
        plane = cluster.up(args.dir, crdgen.default_crds_dir(), log=lambda line: print(line, file=sys.stderr))
    except (build.ControlPlaneUnavailable, ControlPlaneError) as error:
        print(f"mlops dev cluster up: {error}", file=sys.stderr)
        return 1
    print(f"export KUBECONFIG={plane.kubeconfig}")
    plan = network.load(plane.directory)
    if plan is not None:
        print("\n".join(f"# {line}" for line in network.how_to_reach(plan)))
    return 0


def _down(args: argparse.Namespace) -> int:
    from mlops_operator.devcluster import cluster

    if not cluster.down(args.dir):
        print(f"no dev cluster runs from {args.dir}", file=sys.stderr)
    return 0
