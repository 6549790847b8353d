"""Building the control plane's binaries from the Go module proxy, once per pinned version.

The Go module in `controlplane/` pins k8s.io/kubernetes (and through its go.sum every
dependency, etcd included). Its staging modules (`k8s.io/api`, `k8s.io/apiserver`, ...) are
required at v0.0.0 by k8s.io/kubernetes, a version no proxy serves; the module replaces
each by its published release of the same minor. The binaries land in
`$MLOPS_CONTROLPLANE_CACHE` (default `~/.cache/mlops-operator/controlplane`), in a folder
named by the Kubernetes version and a hash of go.mod + go.sum, so a changed pin builds anew
and an unchanged one is reused. Nothing built goes into the repository.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")
PACKAGES = ("./cmd/etcd", "k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kube-controller-manager")


class ControlPlaneUnavailable(RuntimeError):
    """A prerequisite is missing; the message says what and how to get it."""


@dataclass(frozen=True)
class Binaries:
    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name

    def present(self) -> bool:
        return all(os.access(self.path(name), os.X_OK) for name in BINARIES)


def module_dir() -> Path:
    """The `controlplane/` Go module of this checkout (`MLOPS_CONTROLPLANE_MODULE` overrides)."""
    override = os.environ.get("MLOPS_CONTROLPLANE_MODULE")
    if override:
        return Path(override)
    # operator/mlops_operator/devcluster/build.py -> the repository root
    return Path(__file__).resolve().parents[3] / "controlplane"


def kubernetes_version(module: Path) -> str:
    for line in (module / "go.mod").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[-2] == "k8s.io/kubernetes" and parts[-1].startswith("v"):
            return parts[-1]
        if len(parts) >= 3 and parts[0] == "require" and parts[1] == "k8s.io/kubernetes":
            return parts[2]
    raise ControlPlaneUnavailable(f"{module / 'go.mod'} does not require k8s.io/kubernetes")


def cache_root() -> Path:
    configured = os.environ.get("MLOPS_CONTROLPLANE_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mlops-operator" / "controlplane"


def binaries_for(module: Path | None = None) -> Binaries:
    """Where the binaries of this pin live (built or not)."""
    module = module or module_dir()
    if not (module / "go.mod").is_file():
        raise ControlPlaneUnavailable(
            f"no Go module at {module}: the control plane builds from a checkout of the repository "
            "(set MLOPS_CONTROLPLANE_MODULE to its controlplane/ folder)")
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        path = module / name
        digest.update(path.read_bytes() if path.exists() else b"")
    return Binaries(cache_root() / f"{kubernetes_version(module)}-{digest.hexdigest()[:12]}")


def go_command() -> str:
    go = shutil.which("go") or next((p for p in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go") if os.access(p, os.X_OK)), None)
    if go is None:
        raise ControlPlaneUnavailable(
            "the control plane tier needs Go 1.26 or newer to build etcd, kube-apiserver and "
            "kube-controller-manager (`apt-get install golang-go`, or a Go toolchain on PATH), "
            "then `mlops dev cluster build`")
    return go


def build(module: Path | None = None, log=print) -> tuple[Binaries, float | None]:
    """Build the binaries unless this pin's are already cached; returns them and the build's
    duration in seconds (None when reused)."""
    module = module or module_dir()
    binaries = binaries_for(module)
    if binaries.present():
        return binaries, None
    go = go_command()
    staging = binaries.directory.with_name(binaries.directory.name + f".partial-{os.getpid()}")
    staging.mkdir(parents=True, exist_ok=True)
    # -buildvcs=false: the module sits in a git checkout whose state must not change the build.
    env = {**os.environ, "GOFLAGS": (os.environ.get("GOFLAGS", "") + " -buildvcs=false").strip()}
    log(f"building {', '.join(BINARIES)} ({kubernetes_version(module)}) into {binaries.directory}: "
        "a cold build takes several minutes")
    started = time.monotonic()
    result = subprocess.run([go, "build", "-o", str(staging) + "/", *PACKAGES], cwd=module, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise ControlPlaneUnavailable(f"go build failed (exit {result.returncode}):\n{result.stdout[-4000:]}")
    if binaries.directory.exists():  # another build finished first: keep its binaries
        shutil.rmtree(staging, ignore_errors=True)
    else:
        os.replace(staging, binaries.directory)
    return binaries, time.monotonic() - started
