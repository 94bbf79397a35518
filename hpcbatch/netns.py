"""A multi-host test cluster on one machine: a network namespace and a hostname per node (root).

Every node ``i`` of a cluster tagged ``TAG`` gets

* a named network namespace ``hpcb-TAG-node<i>`` with loopback up and two interfaces:
  ``mgmt0`` on the management network (ZeroMQ to the head) and ``fab0`` on the fabric
  (MTU 9000, for MPI/NCCL), each the inside end of a veth pair whose outside end
  (``hbTAG<i>m``, ``hbTAG<i>f``) is a port of a Linux bridge in the root namespace
  (``hbTAGm``, ``hbTAGf``). The management bridge holds the host's address, where the head
  binds its fleet endpoint; the fabric bridge has none (it joins the nodes only);
* a UTS namespace whose hostname is ``node<i>``, kept alive by a holder process
  (``sleep infinity``, itself inside the node's network namespace).

A command runs "on" a node under :meth:`NetnsCluster.exec_prefix`:
``nsenter --net=/run/netns/NS --uts=/proc/HOLDER/ns/uts -- CMD``. Not ``ip netns exec``:
that also unshares the mount namespace and remounts ``/sys``, hiding ``/sys/fs/cgroup``,
where the agent puts each attempt's memory limit.

Names are short enough for IFNAMSIZ (15 bytes): a tag is exactly six characters of
``[a-z0-9]``, so ``hb`` + tag + node number (up to 3 digits) + ``m``/``f`` is at most 12.
Because every name carries the tag, :func:`destroy_leftovers` can find and remove all of a
crashed cluster's pieces; :meth:`NetnsCluster.destroy` removes exactly those in its layout.
Subnets come from the tag (``10.77.K.0/24`` management, ``10.78.K.0/24`` fabric, ``K`` from a
hash of the tag), moved on to the next free ``K`` when the host already routes that one.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from hpcbatch.errors import HpcbatchError

TAG_LENGTH = 6
MAX_NODES = 240  # node i is .(10 + i) on a /24
IFNAMSIZ = 15  # longest interface name Linux accepts (16 bytes with the NUL)
MGMT_OCTET = 77  # 10.77.K.0/24: management
FABRIC_OCTET = 78  # 10.78.K.0/24: fabric
FABRIC_MTU = 9000
MGMT_INTERFACE = "mgmt0"
FABRIC_INTERFACE = "fab0"
HOLDER_ENV = "HPCBATCH_NETNS"  # set on every holder: how leftovers are found by tag
READY_TIMEOUT_S = 10.0
GONE_TIMEOUT_S = 10.0

_TAG_RE = re.compile(rf"^[a-z0-9]{{{TAG_LENGTH}}}$")


class NetnsError(HpcbatchError):
    """The namespaced cluster could not be built or removed; the message names the step."""


# -- names and addresses (pure) --------------------------------------------------------------


def check_tag(tag: str) -> str:
    """A tag is six characters of ``[a-z0-9]``: short enough for IFNAMSIZ, exact to match."""
    if not _TAG_RE.match(tag):
        raise NetnsError(f"tag: must be {TAG_LENGTH} characters of a-z and 0-9, not {tag!r}")
    return tag


def tag_for(text: str) -> str:
    """A stable tag for a cluster home (or any text): the first six hex digits of its SHA-1."""
    return hashlib.sha1(text.encode()).hexdigest()[:TAG_LENGTH]


def netns_name(tag: str, index: int) -> str:
    return f"hpcb-{tag}-node{index}"


def bridge_names(tag: str) -> tuple[str, str]:
    """(management bridge, fabric bridge) in the root namespace."""
    return f"hb{tag}m", f"hb{tag}f"


def host_link_names(tag: str, index: int) -> tuple[str, str]:
    """The root-namespace ends of node ``index``'s veth pairs: (management, fabric)."""
    return f"hb{tag}{index}m", f"hb{tag}{index}f"


def subnet_index(tag: str) -> int:
    """Where this tag's subnets start looking (0-255), from a hash of the tag."""
    return int(hashlib.sha1(f"subnet:{tag}".encode()).hexdigest(), 16) % 256


def choose_subnets(
    tag: str, in_use: Iterable[ipaddress.IPv4Network] = ()
) -> tuple[ipaddress.IPv4Network, ipaddress.IPv4Network]:
    """(management, fabric) /24s for ``tag``: the first from the tag's hash on that overlaps
    nothing in ``in_use`` (the host's addresses and routes, other clusters' bridges included)."""
    busy = list(in_use)
    start = subnet_index(tag)
    for step in range(256):
        k = (start + step) % 256
        mgmt = ipaddress.IPv4Network(f"10.{MGMT_OCTET}.{k}.0/24")
        fabric = ipaddress.IPv4Network(f"10.{FABRIC_OCTET}.{k}.0/24")
        if not any(mgmt.overlaps(n) or fabric.overlaps(n) for n in busy):
            return mgmt, fabric
    raise NetnsError(f"no free subnet in 10.{MGMT_OCTET}.0.0/16 for tag {tag}: remove old clusters")


def node_address(subnet: ipaddress.IPv4Network, index: int) -> str:
    """Node ``index`` (1-based) is ``.10+index``; ``.1`` is the host on the management bridge."""
    return str(subnet.network_address + 10 + index)


# -- the layout ------------------------------------------------------------------------------


@dataclass
class NodeNet:
    """One node's namespaces, addresses and the holder process of its hostname."""

    name: str  # node1 ...: the agent's name and the node's hostname
    netns: str
    hostname: str
    mgmt_ip: str
    fabric_ip: str
    host_mgmt_link: str
    host_fabric_link: str
    mgmt_interface: str = MGMT_INTERFACE
    fabric_interface: str = FABRIC_INTERFACE
    holder: dict[str, Any] | None = None  # {"pid", "create_time"} once started

    @property
    def exec_prefix(self) -> list[str]:
        """argv that runs what follows on this node (its network and UTS namespaces)."""
        if not self.holder:
            raise NetnsError(f"{self.name}: its namespaces are not created yet")
        return [
            shutil.which("nsenter") or "nsenter",
            f"--net=/run/netns/{self.netns}",
            f"--uts=/proc/{int(self.holder['pid'])}/ns/uts",
            "--",
        ]


@dataclass
class NetnsLayout:
    """Everything a namespaced cluster is made of; JSON-able, so ``cluster down`` can undo it."""

    tag: str
    mgmt_subnet: str
    fabric_subnet: str
    host_mgmt_ip: str
    mgmt_bridge: str
    fabric_bridge: str
    fabric_mtu: int = FABRIC_MTU
    nodes: list[NodeNet] = field(default_factory=list)

    def node(self, node: int | str) -> NodeNet:
        """A node by 1-based index or by name."""
        for n in self.nodes:
            if n.name == node or n.name == f"node{node}":
                return n
        raise NetnsError(f"no node {node} in cluster {self.tag}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> NetnsLayout:
        nodes = [NodeNet(**n) for n in doc.get("nodes") or []]
        return cls(**{**doc, "nodes": nodes})


def plan(tag: str, nodes: int, in_use: Iterable[ipaddress.IPv4Network] = ()) -> NetnsLayout:
    """The layout of a cluster of ``nodes`` nodes, before anything exists."""
    check_tag(tag)
    if not 1 <= nodes <= MAX_NODES:
        raise NetnsError(f"nodes: must be between 1 and {MAX_NODES} with network namespaces")
    mgmt, fabric = choose_subnets(tag, in_use)
    mbridge, fbridge = bridge_names(tag)
    layout = NetnsLayout(
        tag=tag,
        mgmt_subnet=str(mgmt),
        fabric_subnet=str(fabric),
        host_mgmt_ip=str(mgmt.network_address + 1),
        mgmt_bridge=mbridge,
        fabric_bridge=fbridge,
    )
    for i in range(1, nodes + 1):
        hm, hf = host_link_names(tag, i)
        layout.nodes.append(
            NodeNet(
                name=f"node{i}",
                netns=netns_name(tag, i),
                hostname=f"node{i}",
                mgmt_ip=node_address(mgmt, i),
                fabric_ip=node_address(fabric, i),
                host_mgmt_link=hm,
                host_fabric_link=hf,
            )
        )
    return layout


def create_commands(layout: NetnsLayout) -> tuple[list[str], dict[str, list[str]]]:
    """``ip -batch`` lines: those for the root namespace, and those for each node's own."""
    prefix = int(ipaddress.IPv4Network(layout.mgmt_subnet).prefixlen)
    fprefix = int(ipaddress.IPv4Network(layout.fabric_subnet).prefixlen)
    mtu = layout.fabric_mtu
    root = [
        f"link add {layout.mgmt_bridge} type bridge",
        f"link add {layout.fabric_bridge} mtu {mtu} type bridge",
        f"addr add {layout.host_mgmt_ip}/{prefix} dev {layout.mgmt_bridge}",
        f"link set {layout.mgmt_bridge} up",
        f"link set {layout.fabric_bridge} up",
    ]
    inside: dict[str, list[str]] = {}
    for n in layout.nodes:
        root += [
            f"netns add {n.netns}",
            f"link add {n.host_mgmt_link} type veth peer name {n.mgmt_interface} netns {n.netns}",
            f"link add {n.host_fabric_link} mtu {mtu} type veth "
            f"peer name {n.fabric_interface} mtu {mtu} netns {n.netns}",
            f"link set {n.host_mgmt_link} master {layout.mgmt_bridge} up",
            f"link set {n.host_fabric_link} master {layout.fabric_bridge} up",
        ]
        inside[n.netns] = [
            "link set lo up",
            f"addr add {n.mgmt_ip}/{prefix} dev {n.mgmt_interface}",
            f"addr add {n.fabric_ip}/{fprefix} dev {n.fabric_interface}",
            f"link set {n.mgmt_interface} up",
            f"link set {n.fabric_interface} up",
        ]
    for name in (*root, *(c for cs in inside.values() for c in cs)):
        for word in name.split():
            if word.startswith("hb") and len(word) > IFNAMSIZ:
                raise NetnsError(f"interface name {word} is longer than {IFNAMSIZ} characters")
    return root, inside


_LEFTOVER_NETNS = r"^hpcb-{tag}-node\d+$"
_LEFTOVER_LINK = r"^hb{tag}\d*[mf]$"


def is_leftover_netns(tag: str, name: str) -> bool:
    return re.match(_LEFTOVER_NETNS.format(tag=re.escape(tag)), name) is not None


def is_leftover_link(tag: str, name: str) -> bool:
    return re.match(_LEFTOVER_LINK.format(tag=re.escape(tag)), name) is not None


# -- the system (root) -----------------------------------------------------------------------


def require_root(what: str = "network namespaces") -> None:
    if os.geteuid() != 0:
        raise NetnsError(f"{what}: needs root (run as root, or without --netns for a loopback cluster)")
    for tool in ("ip", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            raise NetnsError(f"{tool} is not installed (Debian: apt-get install iproute2 util-linux)")


def _ip(args: list[str], batch: list[str] | None = None, check: bool = True) -> str:
    """Run ``ip ARGS`` (with ``batch`` lines on stdin: ``-batch -``, ``-force`` unless ``check``)."""
    argv = ["ip", *args]
    if batch is not None:
        argv += ["-batch", "-"] if check else ["-force", "-batch", "-"]
    proc = subprocess.run(
        argv,
        input="\n".join(batch or []) + "\n" if batch is not None else None,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def host_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks this host has addresses on or routes to (not the default route)."""
    found: list[ipaddress.IPv4Network] = []
    for line in _ip(["-o", "-4", "addr", "show"], check=False).splitlines():
        words = line.split()
        if "inet" in words:
            found.append(ipaddress.IPv4Interface(words[words.index("inet") + 1]).network)
    for line in _ip(["-4", "route", "show", "table", "all"], check=False).splitlines():
        dest = line.split()[0] if line.split() else ""
        if dest in ("default", "broadcast", "local", "unreachable", "prohibit", "blackhole", "multicast"):
            dest = line.split()[1] if len(line.split()) > 1 else ""
        try:
            net = ipaddress.IPv4Network(dest, strict=False)
        except ValueError:
            continue
        if net.prefixlen > 0 and not net.is_loopback:
            found.append(net)
    return found


def list_netns() -> list[str]:
    return [line.split()[0] for line in _ip(["netns", "list"], check=False).splitlines() if line.strip()]


def list_links() -> list[str]:
    """Interface names in the root namespace (without the ``@peer`` suffix)."""
    names = []
    for line in _ip(["-o", "link", "show"], check=False).splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def netns_pids(netns: str) -> list[int]:
    return [int(p) for p in _ip(["netns", "pids", netns], check=False).split() if p.isdigit()]


def _same_process(record: dict[str, Any] | None) -> psutil.Process | None:
    """The recorded process if it is still the one we started (pid and start time)."""
    if not record:
        return None
    try:
        proc = psutil.Process(int(record["pid"]))
        if abs(proc.create_time() - float(record["create_time"])) < 0.01:
            return proc
    except (psutil.Error, KeyError, TypeError, ValueError):
        pass
    return None


def kill_and_wait(pids: Iterable[int], timeout: float = GONE_TIMEOUT_S) -> list[int]:
    """SIGKILL ``pids`` and wait up to ``timeout`` for them to go; the pids still there."""
    procs = []
    for pid in set(pids):
        try:
            proc = psutil.Process(pid)
            proc.kill()
            procs.append(proc)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return sorted(p.pid for p in alive)


def holder_pids(tag: str) -> list[int]:
    """Live holder processes whose environment names a namespace of ``tag``."""
    marker = f"{HOLDER_ENV}=hpcb-{tag}-".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if any(v.startswith(marker) for v in f.read().split(b"\0")):
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def _remove(netns: list[str], links: list[str], holders: Iterable[int] = ()) -> None:
    """Kill what runs in ``netns`` (and ``holders``), then delete ``links`` and ``netns``."""
    present_ns = set(list_netns())
    pids = [pid for ns in netns if ns in present_ns for pid in netns_pids(ns)]
    kill_and_wait([*pids, *holders])
    present = set(list_links())
    # Deleting a veth's outside end takes its peer inside the node along.
    doomed = [x for x in links if x in present]
    if doomed:
        _ip([], batch=[f"link del {x}" for x in doomed], check=False)
    gone_ns = [ns for ns in netns if ns in present_ns]
    if gone_ns:
        _ip([], batch=[f"netns del {ns}" for ns in gone_ns], check=False)
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while True:
        now_links, now_ns = set(list_links()), set(list_netns())
        left = [x for x in links if x in now_links] + [n for n in netns if n in now_ns]
        if not left:
            return
        if time.monotonic() >= deadline:
            raise NetnsError(f"could not remove {', '.join(left)}")
        retry = [f"netns del {x}" if x in netns else f"link del {x}" for x in left]
        _ip([], batch=retry, check=False)
        time.sleep(0.05)


def destroy_leftovers(tag: str) -> list[str]:
    """Remove every namespace, link and holder process named with ``tag``; return the names."""
    check_tag(tag)
    netns = [n for n in list_netns() if is_leftover_netns(tag, n)]
    links = [x for x in list_links() if is_leftover_link(tag, x)]
    holders = holder_pids(tag)
    if netns or links or holders:
        _remove(netns, links, holders)
    return [*netns, *links] + [f"pid {p}" for p in holders]


class NetnsCluster:
    """Builds and removes the namespaces of one cluster; see the module docstring."""

    def __init__(self, tag: str, nodes: int) -> None:
        self.tag = check_tag(tag)
        self.nodes = nodes
        self.layout: NetnsLayout | None = None

    @classmethod
    def from_layout(cls, layout: NetnsLayout) -> NetnsCluster:
        """The cluster a recorded layout describes (for ``cluster down``)."""
        cluster = cls(layout.tag, len(layout.nodes))
        cluster.layout = layout
        return cluster

    def plan(self) -> NetnsLayout:
        """Choose names and subnets now (no holders yet); :meth:`create` builds this layout."""
        if self.layout is None:
            self.layout = plan(self.tag, self.nodes, host_networks())
        return self.layout

    def create(self) -> NetnsLayout:
        """Build namespaces, bridges, veths and hostname holders; on failure remove them all."""
        require_root()
        layout = self.plan()
        taken = set(list_netns()) & {n.netns for n in layout.nodes}
        if taken:
            raise NetnsError(
                f"network namespaces {', '.join(sorted(taken))} exist already: another cluster "
                f"with tag {self.tag} is up (or left over: destroy_leftovers({self.tag!r}))"
            )
        try:
            root, inside = create_commands(layout)
            _ip([], batch=root)
            for ns, lines in inside.items():
                _ip(["-n", ns], batch=lines)
            for n in layout.nodes:
                n.holder = self._start_holder(n)
            self._wait_holders(layout)
        except BaseException:
            self.destroy()
            raise
        return layout

    @staticmethod
    def _start_holder(node: NodeNet) -> dict[str, Any]:
        # unshare without --fork: the shell (then sleep) itself is in the new UTS namespace,
        # so the pid we record is the one whose /proc/PID/ns/uts the agent enters.
        proc = subprocess.Popen(
            [
                "nsenter", f"--net=/run/netns/{node.netns}", "--",
                "unshare", "--uts", "--",
                "sh", "-c", 'echo "$0" > /proc/sys/kernel/hostname && exec sleep infinity',
                node.hostname,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), HOLDER_ENV: node.netns},
            start_new_session=True,  # outlives `cluster up`, like the agents
        )
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            create_time = 0.0
        return {"pid": proc.pid, "create_time": create_time}

    @staticmethod
    def _wait_holders(layout: NetnsLayout) -> None:
        """Until every holder has set its hostname (it runs ``sleep`` only after that)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = list(layout.nodes)
        while waiting:
            for n in list(waiting):
                proc = _same_process(n.holder)
                try:
                    if proc is None or proc.status() == psutil.STATUS_ZOMBIE:
                        raise NetnsError(f"{n.name}: the hostname holder exited while starting")
                    if proc.name() == "sleep":
                        waiting.remove(n)
                except psutil.Error as e:
                    raise NetnsError(f"{n.name}: the hostname holder exited while starting") from e
            if waiting and time.monotonic() >= deadline:
                raise NetnsError(f"hostname holders not ready after {READY_TIMEOUT_S:g} s")
            time.sleep(0.01)

    def exec_prefix(self, node: int | str) -> list[str]:
        """argv that runs what follows on ``node`` (1-based index or name)."""
        if self.layout is None:
            raise NetnsError("the cluster is not created yet")
        return self.layout.node(node).exec_prefix

    def destroy(self) -> None:
        """Remove exactly what the layout names: processes in its namespaces, holders, veths,
        bridges, namespaces. Safe to call twice, or after a partial create."""
        layout = self.layout
        if layout is None:
            return
        require_root("removing network namespaces")
        holders = [p.pid for n in layout.nodes if (p := _same_process(n.holder)) is not None]
        links = [x for n in layout.nodes for x in (n.host_mgmt_link, n.host_fabric_link)]
        links += [layout.mgmt_bridge, layout.fabric_bridge]
        _remove([n.netns for n in layout.nodes], links, holders)
        for n in layout.nodes:
            n.holder = None if _same_process(n.holder) is None else n.holder


def exec_on(layout: NetnsLayout, node: int | str, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` on ``node`` and wait for it (tests, diagnostics)."""
    return subprocess.run(
        [*layout.node(node).exec_prefix, *argv], capture_output=True, text=True, check=False, timeout=timeout
    )
