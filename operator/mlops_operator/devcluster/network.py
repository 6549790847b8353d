"""The Pod network of the control-plane tier: a network namespace per Pod, as a CNI plugin
makes one, on this machine.

    host netns                       cluster netns  mlops-<id>                 pod netns  mlops-<id>-<uid>
    mlh<id> 169.254.77.(4k+1)/30 <-veth-> host 169.254.77.(4k+2)/30
                                        br0 198.18.(16k).1/20  <-veth-> vp<n>  ...  eth0 198.18.(16k).n/20
    routes: 198.18.(16k).0/20 and       ip_forward=1; local 198.19.(16k).0/20 dev lo
            198.19.(16k).0/20 via the   (every ClusterIP is an address of this namespace: the
            cluster end of the veth     service proxy binds any of them)

Pods and Services take their addresses from the RFC 2544 benchmarking range (198.18.0.0/15),
which no real network uses. Each cluster takes one of `SLOTS` slices of it (slot k: pods
198.18.16k.0/20, Services 198.19.16k.0/20), so that two clusters of two sessions can run on
one machine without their host routes colliding. The host reaches Pods and ClusterIPs (the
operator scrapes Pod IPs; tests send client traffic to ClusterIPs) through the one veth pair
between the host and the cluster namespace; Pods reach the host at `host_ip`, the host end.

Each cluster network is recorded in `/run/mlops-net/<name>.json` before its namespace
exists, with the process that made it and the control plane's state folder: a namespace
named `mlops-*` whose record is missing, or whose creator and control plane are both gone,
is left over from a crashed run, and `create` deletes it. Deleting a namespace deletes the
veths in it, and with the host end go the host routes through it.

Pure: `NetworkPlan` and the commands and files it implies. I/O: `create`, `destroy`,
`NetnsPodNetwork` (the node stand-in's `PodNetwork`), `rewrite_in_place`.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from mlops_operator.local import podspec
from mlops_operator.local.pod_runner import LocalPod, PodAddress
from mlops_operator.local.processes import is_alive, start_ticks

PREFIX = "mlops-"
SLOTS = 16
RECORDS = Path("/run/mlops-net")
NETNS_DIR = Path("/run/netns")
# `ip netns exec NS` bind-mounts the files of /etc/netns/NS over /etc: per-Pod name resolution.
ETC_NETNS = Path("/etc/netns")
PLAN_FILE = "network.json"
BRIDGE = "br0"
BRIDGE_MAC = "02:6d:6c:6f:70:01"  # locally administered
CLUSTER_LINK = "host"  # the cluster end of the host veth, inside the cluster namespace
ANY_ADDRESS = "0.0.0.0"
CLUSTER_DOMAIN = "cluster.local"

ServiceAddresses = Mapping[tuple[str, str], str]
"""(namespace, Service name) -> ClusterIP."""


class NetworkError(RuntimeError):
    """An `ip` command failed; the message holds the command and what it said."""


# ---------------------------------------------------------------- pure: the plan


@dataclass(frozen=True)
class NetworkPlan:
    """One cluster's addresses and names, from its name and slot alone."""

    name: str
    slot: int

    @property
    def pod_cidr(self) -> str:
        return f"198.18.{16 * self.slot}.0/20"

    @property
    def service_cidr(self) -> str:
        return f"198.19.{16 * self.slot}.0/20"

    @property
    def gateway(self) -> str:
        """The bridge's address: every Pod's default route."""
        return str(ipaddress.ip_network(self.pod_cidr)[1])

    @property
    def host_ip(self) -> str:
        """The host end of the host veth: where Pods reach services of the host."""
        return f"169.254.77.{4 * self.slot + 1}"

    @property
    def cluster_link_ip(self) -> str:
        return f"169.254.77.{4 * self.slot + 2}"

    @property
    def host_veth(self) -> str:
        return "mlh" + self.name.removeprefix(PREFIX)  # at most 15 characters, as Linux wants

    def pod_ip(self, index: int) -> str:
        """The address of the Pod with `index` (from 2: 1 is the gateway)."""
        network = ipaddress.ip_network(self.pod_cidr)
        if not 2 <= index < network.num_addresses - 1:
            raise NetworkError(f"pod CIDR {self.pod_cidr} has no address number {index}")
        return str(network[index])

    @property
    def pod_prefix_length(self) -> int:
        return ipaddress.ip_network(self.pod_cidr).prefixlen

    def pod_netns(self, uid: str) -> str:
        return f"{self.name}-{uid.replace('-', '')[:12]}"


def new_name() -> str:
    return f"{PREFIX}{secrets.token_hex(3)}"


def free_slot(used: set[int]) -> int:
    free = [slot for slot in range(SLOTS) if slot not in used]
    if not free:
        raise NetworkError(f"all {SLOTS} cluster networks of this machine are in use")
    return free[0]


def cluster_commands(plan: NetworkPlan) -> list[list[str]]:
    """The `ip` commands that make the cluster namespace, its bridge, the host veth and the
    host's routes to the pod and service CIDRs."""
    ns, link = plan.name, f"{plan.cluster_link_ip}/30"
    return [
        ["netns", "add", ns],
        ["-n", ns, "link", "set", "lo", "up"],
        ["link", "add", plan.host_veth, "type", "veth", "peer", "name", CLUSTER_LINK, "netns", ns],
        ["addr", "add", f"{plan.host_ip}/30", "dev", plan.host_veth],
        ["link", "set", plan.host_veth, "up"],
        ["-n", ns, "addr", "add", link, "dev", CLUSTER_LINK],
        ["-n", ns, "link", "set", CLUSTER_LINK, "up"],
        # A fixed MAC: a bridge without one takes its ports' lowest, so a Pod's veth coming or
        # going would change the gateway's MAC under the running Pods' ARP caches.
        ["-n", ns, "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge"],
        ["-n", ns, "addr", "add", f"{plan.gateway}/{plan.pod_prefix_length}", "dev", BRIDGE],
        ["-n", ns, "link", "set", BRIDGE, "up"],
        # Any ClusterIP is local to the cluster namespace, so the proxy can listen on it.
        ["-n", ns, "route", "add", "local", plan.service_cidr, "dev", "lo"],
        ["netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ["route", "add", plan.pod_cidr, "via", plan.cluster_link_ip, "dev", plan.host_veth],
        ["route", "add", plan.service_cidr, "via", plan.cluster_link_ip, "dev", plan.host_veth],
    ]


def pod_commands(plan: NetworkPlan, pod_ns: str, veth: str, ip: str) -> list[list[str]]:
    """The `ip` commands that give one Pod its namespace, a veth to the bridge, its address
    and a default route through the bridge."""
    return [
        ["netns", "add", pod_ns],
        ["-n", plan.name, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", pod_ns],
        ["-n", plan.name, "link", "set", veth, "master", BRIDGE, "up"],
        ["-n", pod_ns, "link", "set", "lo", "up"],
        ["-n", pod_ns, "addr", "add", f"{ip}/{plan.pod_prefix_length}", "dev", "eth0"],
        ["-n", pod_ns, "link", "set", "eth0", "up"],
        # The address may be a deleted Pod's: the bridge's ARP entry for it still names that
        # Pod's MAC, and nothing reached the new Pod until the entry went stale (~40 s).
        ["-n", plan.name, "neigh", "flush", "to", ip],
        ["-n", pod_ns, "route", "add", "default", "via", plan.gateway],
    ]


def hosts_file(pod_ip: str, pod_name: str, pod_namespace: str, services: ServiceAddresses) -> str:
    """/etc/hosts of one Pod: itself, and every Service as `<svc>.<ns>.svc` and
    `<svc>.<ns>.svc.cluster.local` (plus `<svc>` for the Pod's own namespace). There is no
    cluster DNS server: the hosts file is what cluster DNS would answer."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", f"{pod_ip}\t{pod_name}"]
    for (namespace, name), ip in sorted(services.items()):
        names = [f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.{CLUSTER_DOMAIN}"]
        if namespace == pod_namespace:
            names.append(name)
        lines.append(f"{ip}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


def rewrite_in_place(path: Path, text: str) -> None:
    """Replace a file's content in place, so that a reader never sees it empty or cut short.

    In place because a running Pod sees its hosts file through a bind mount of this very inode
    (`ip netns exec`): a new file renamed over it would never reach the Pod. Truncating and
    then writing left a moment in which the file was empty, and a router resolving a Service
    then got "Temporary failure in name resolution". One write from offset 0 that covers the
    whole old content (a shorter text is padded with blank lines, which resolvers skip) takes
    the file from the old text to the new one in one step, and the file never shrinks."""
    data = text.encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        old_size = os.fstat(fd).st_size
        os.pwrite(fd, data + b"\n" * max(0, old_size - len(data)), 0)
    finally:
        os.close(fd)


def resolv_conf(pod_namespace: str) -> str:
    # No name server answers in a Pod's namespace (127.0.0.1 there is the Pod's own): a name
    # missing from the hosts file fails at once instead of going to a real network.
    return (f"search {pod_namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n"
            "nameserver 127.0.0.1\noptions ndots:5 timeout:1 attempts:1\n")


def how_to_reach(plan: NetworkPlan) -> list[str]:
    """What `mlops dev cluster up` tells a person about the network it made."""
    return [
        f"Pods get addresses from {plan.pod_cidr}, Services from {plan.service_cidr}; this host routes both:",
        "  curl http://$(kubectl get service NAME -n NS -o jsonpath='{.spec.clusterIP}'):PORT/",
        f"Pods reach this host at {plan.host_ip} (their 127.0.0.1 is their own): serve S3 for them there,",
        f"  and run the operator with AWS_ENDPOINT_URL=http://{plan.host_ip}:PORT",
        "Inside Pods, NAME.NS.svc and NAME.NS.svc.cluster.local resolve to ClusterIPs.",
    ]


def owner_of_netns(netns: str, clusters: set[str]) -> str | None:
    """The cluster network a namespace belongs to (its own or a Pod's of it), or None."""
    return next((name for name in clusters if netns == name or netns.startswith(name + "-")), None)


# ---------------------------------------------------------------- I/O: the host side


def ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result.stdout


def netns_names() -> list[str]:
    """Our network namespaces on this machine (`mlops-*`)."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(PREFIX))
    except FileNotFoundError:
        return []


def create(directory: Path) -> NetworkPlan:
    """Make a cluster network for the control plane of `directory` (after deleting stale
    ones) and record it there (`network.json`)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    RECORDS.mkdir(parents=True, exist_ok=True)
    with open(RECORDS / "lock", "w") as lock:
        # Two sessions starting at once must not pick the same slot or judge the other stale.
        fcntl.flock(lock, fcntl.LOCK_EX)
        live, dead = _records()
        for stale in dead:
            destroy(stale)
        for netns in netns_names():
            if owner_of_netns(netns, set(live)) is None:
                _delete_netns(netns)
        plan = NetworkPlan(new_name(), free_slot({record["slot"] for record in live.values()}))
        pid = os.getpid()
        record = {**asdict(plan), "directory": str(Path(directory).resolve()), "creator": [pid, start_ticks(pid) or 0]}
        (RECORDS / f"{plan.name}.json").write_text(json.dumps(record))
        try:
            for command in cluster_commands(plan):
                ip(*command)
        except NetworkError:
            destroy(plan)
            raise
    (Path(directory) / PLAN_FILE).write_text(json.dumps(asdict(plan)))
    return plan


def load(directory: Path) -> NetworkPlan | None:
    path = Path(directory) / PLAN_FILE
    return NetworkPlan(**json.loads(path.read_text())) if path.exists() else None


def destroy(plan: NetworkPlan) -> None:
    """Delete the host veth (its pair and the host routes through it go with it at once),
    then the cluster namespace and its Pods'."""
    if (Path("/sys/class/net") / plan.host_veth).exists():
        try:
            ip("link", "del", plan.host_veth)
        except NetworkError:
            pass  # gone meanwhile
    for netns in netns_names():
        if owner_of_netns(netns, {plan.name}) is not None:
            _delete_netns(netns)
    (RECORDS / f"{plan.name}.json").unlink(missing_ok=True)


def leftovers(plan: NetworkPlan) -> list[str]:
    """What of `plan` still exists on the host: namespaces, the host veth, routes."""
    found = [f"netns {n}" for n in netns_names() if owner_of_netns(n, {plan.name})]
    if (Path("/sys/class/net") / plan.host_veth).exists():
        found.append(f"link {plan.host_veth}")
    routes = ip("route", "show").splitlines()
    found += [f"route {r.strip()}" for r in routes if f"dev {plan.host_veth} " in f"{r} "]
    return found


def _records() -> tuple[dict[str, dict], list[NetworkPlan]]:
    """The recorded cluster networks: live ones by name (their creator runs, or their
    control plane does), and the plans of the others."""
    from mlops_operator.devcluster import control_plane

    live: dict[str, dict] = {}
    dead: list[NetworkPlan] = []
    for path in RECORDS.glob(f"{PREFIX}*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        plane = control_plane.load(Path(record.get("directory", "/nonexistent")))
        if is_alive(*record["creator"][:2]) or (plane is not None and control_plane.running(plane)):
            live[record["name"]] = record
        else:
            dead.append(NetworkPlan(record["name"], record["slot"]))
    return live, dead


def _delete_netns(netns: str) -> None:
    try:
        ip("netns", "del", netns)
    except NetworkError:
        pass  # gone meanwhile
    shutil.rmtree(ETC_NETNS / netns, ignore_errors=True)


# ---------------------------------------------------------------- I/O: the Pods' side


@dataclass
class _Attachment:
    netns: str
    veth: str
    index: int
    ip: str
    pod_name: str
    pod_namespace: str


class NetnsPodNetwork:
    """The node stand-in's `PodNetwork`: a namespace, address and hosts file per Pod."""

    def __init__(self, plan: NetworkPlan) -> None:
        self.plan = plan
        self._attached: dict[str, _Attachment] = {}  # by pod uid
        self._services: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def attach(self, pod: LocalPod) -> PodAddress:
        with self._lock:
            used = {a.index for a in self._attached.values()}
            index = next(i for i in range(2, 1 << 20) if i not in used)
            attachment = _Attachment(self.plan.pod_netns(pod.uid or f"{pod.namespace}-{pod.name}"),
                                     f"vp{index:x}", index, self.plan.pod_ip(index), pod.name, pod.namespace)
            etc = ETC_NETNS / attachment.netns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").write_text(resolv_conf(pod.namespace))
            self._write_hosts(attachment)
            try:
                for command in pod_commands(self.plan, attachment.netns, attachment.veth, attachment.ip):
                    ip(*command)
            except NetworkError as error:
                self._remove(attachment)
                raise OSError(str(error)) from error
            self._attached[self._key(pod)] = attachment
        return PodAddress(attachment.ip, ANY_ADDRESS, ("ip", "netns", "exec", attachment.netns))

    def server_port(self, pod: LocalPod, container_port: int | None) -> int:
        if container_port is None:
            raise podspec.PodSpecError("a server container needs a containerPort (or a readiness probe's port)")
        return container_port  # the Pod's own namespace: no other server shares its ports

    def detach(self, pod: LocalPod) -> None:
        with self._lock:
            attachment = self._attached.pop(self._key(pod), None)
            if attachment is not None:
                self._remove(attachment)

    def netns_of(self, pod: LocalPod) -> str | None:
        attachment = self._attached.get(self._key(pod))
        return attachment.netns if attachment else None

    def set_services(self, services: ServiceAddresses) -> None:
        """Rewrite every Pod's hosts file when the Services' addresses changed."""
        with self._lock:
            if dict(services) == self._services:
                return
            self._services = dict(services)
            for attachment in self._attached.values():
                self._write_hosts(attachment)

    def detach_all(self) -> None:
        with self._lock:
            for attachment in self._attached.values():
                self._remove(attachment)
            self._attached.clear()

    @staticmethod
    def _key(pod: LocalPod) -> str:
        return pod.uid or f"{pod.namespace}/{pod.name}"

    def _write_hosts(self, attachment: _Attachment) -> None:
        text = hosts_file(attachment.ip, attachment.pod_name, attachment.pod_namespace, self._services)
        rewrite_in_place(ETC_NETNS / attachment.netns / "hosts", text)

    def _remove(self, attachment: _Attachment) -> None:
        try:
            # Deleting one end deletes the pair now; a deleted namespace frees its veth later.
            ip("-n", self.plan.name, "link", "del", attachment.veth)
        except NetworkError:
            pass
        _delete_netns(attachment.netns)
