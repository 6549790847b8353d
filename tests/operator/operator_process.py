"""`mlops run` in its own process against the kmock emulator, as a user starts it: the
operator finds the emulator through a kubeconfig, as it would find a cluster. Shared by
the kopf wiring tests; waits poll for a condition with a deadline, never a fixed sleep."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mlops_operator.cluster.kubernetes import KubernetesCluster
from mlops_operator.cluster.port import NotFound

MLOPS = Path(sys.executable).parent / "mlops"
T = TypeVar("T")


async def call(fn: Callable[..., T], *args: Any) -> T:
    """Blocking cluster calls run off the test's event loop."""
    return await asyncio.to_thread(fn, *args)


async def eventually(check: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """The first truthy result of `check` (NotFound counts as not yet), or an
    AssertionError naming `what` and the last value seen."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while True:
        try:
            last = await call(check)
        except NotFound:
            last = None
        if last:
            return last
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")
        await asyncio.sleep(0.05)


def write_kubeconfig(emulator: Any, path: Path, namespace: str) -> Path:
    token = emulator.api_client.configuration.api_key["BearerToken"]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": emulator.url, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "kmock", "user": {"token": token}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": namespace}}],
    }))
    return path


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@asynccontextmanager
async def running_operator(
    emulator: Any, tmp_path: Path, namespace: str, watched: Iterable[str]
) -> AsyncIterator[KubernetesCluster]:
    """Start `mlops run`, wait until it watches every resource path ending in one of
    `watched` (the emulator streams only changes made after a watch opened), and yield a
    KubernetesCluster for the test's own reads and writes. The operator's log is printed
    at the end (pytest shows it when the test failed)."""
    kubeconfig = write_kubeconfig(emulator, tmp_path / "kubeconfig", namespace)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "AWS_ENDPOINT_URL": "http://s3.test:9000"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    log_path = tmp_path / "operator.log"
    wanted = tuple(watched)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(MLOPS), "run", "--all-namespaces", "--standalone", "--metrics-port", "0", "--liveness-port", "0"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def watching() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the operator exited with {process.returncode}:\n{log_path.read_text()[-5000:]}")
            paths = {r.url.path for r in emulator.requests() if r.params.get("watch") == "true"}
            return all(any(p.endswith(w) for p in paths) for w in wanted)

        try:
            await eventually(watching, "the operator's watches", timeout=60)
            yield KubernetesCluster(emulator.api_client, apply_strategy="merge")
        finally:
            stop(process)
            print(log_path.read_text(errors="replace")[-20000:])
