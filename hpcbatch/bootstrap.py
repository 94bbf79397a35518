"""``hpcbatch nodes bootstrap``: put node agents on hosts over SSH (asyncssh), no Ansible needed.

Every host is handled at once, each on its own SSH connection, in the order the Ansible agent
role follows: check Python, install the wheel into ``<prefix>/venv``, pin the head's public
key, generate the agent's key pair (once), write ``/etc/hpcbatch/agent.toml`` and the systemd
unit, start the agent, and enroll it: the agent's first connection files its key as pending
at the head, which is accepted only when it is exactly the key read from the host over SSH
(an impostor presenting another key for that name stays pending). Then it waits for the node
to be ACTIVE. One host's failure (unreachable, wrong host key, no Python) never stops the
others; each gets a line in the report.

The fabric is set up as the Ansible fabric role does it (the same MTU, memlock limits and
sysctls: :data:`FABRIC_SYSCTLS` and :data:`MEMLOCK_CONF` match ``ansible/roles/fabric``), and
``/etc/hpcbatch/client.toml`` tells the CLI on the node where the head's API is.

Host keys are checked against ``known_hosts`` (``~/.ssh/known_hosts`` unless given);
``verify_host_keys=False`` turns that off, for a first try on a lab network only.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcbatch.client import Client
from hpcbatch.errors import HpcbatchError

UNIT = """\
# Written by hpcbatch nodes bootstrap (the Ansible agent role writes the same unit).
[Unit]
Description=hpcbatch node agent (runs jobs as their owners)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=root
ExecStart={venv}/bin/hpcbatch-agent --config {config}
Environment=PATH={venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
Restart=on-failure
RestartSec=2
TimeoutStopSec=60
# A stop or restart (config change, upgrade) ends only the agent: running jobs stay in their
# cgroups and the agent adopts them again, with their exit codes, when it starts (as slurmd's
# restarts leave jobs under slurmstepd). site.yml restarts agents without draining.
KillMode=process
StateDirectory=hpcbatch-agent
StateDirectoryMode=0711
Delegate=yes
TasksMax=infinity
LimitMEMLOCK=infinity
LimitNOFILE=1048576
LimitSTACK=infinity

[Install]
WantedBy=multi-user.target
"""
# The Ansible fabric role's defaults (ansible/roles/fabric): a unit test holds them equal.
FABRIC_SYSCTLS: dict[str, str | int] = {
    "net.core.rmem_max": 268435456,
    "net.core.wmem_max": 268435456,
    "net.ipv4.tcp_rmem": "4096 87380 268435456",
    "net.ipv4.tcp_wmem": "4096 65536 268435456",
    "net.core.netdev_max_backlog": 250000,
    "vm.max_map_count": 1048576,
    "kernel.numa_balancing": 0,
}
MEMLOCK_CONF = """\
# RDMA registers (pins) memory: MPI and NCCL over EFA/InfiniBand need memlock unlimited.
*    soft    memlock    unlimited
*    hard    memlock    unlimited
"""
MEMLOCK_PATH = "/etc/security/limits.d/90-hpcbatch-memlock.conf"
SYSCTL_PATH = "/etc/sysctl.d/90-hpcbatch-fabric.conf"
CLIENT_CONFIG_PATH = "/etc/hpcbatch/client.toml"
CONFIG_PATH = "/etc/hpcbatch/agent.toml"
HEAD_KEY_PATH = "/etc/hpcbatch/head.key"
STATE_DIR = "/var/lib/hpcbatch-agent"
UNIT_PATH = "/etc/systemd/system/hpcbatch-agent.service"
KEYGEN = "import sys; from hpcbatch.curve import ensure_keypair; ensure_keypair(sys.argv[1], sys.argv[2])"


@dataclass
class BootstrapSettings:
    """What every host gets; the CLI fills it from its options."""

    wheel: Path
    head: str  # the fleet endpoint agents connect to, tcp://HEAD:8472
    head_public_key: bytes
    username: str = "root"
    port: int = 22
    identity: Path | None = None  # SSH private key (default: ssh-agent and ~/.ssh/id_*)
    known_hosts: Path | None = None  # default ~/.ssh/known_hosts
    verify_host_keys: bool = True
    prefix: str = "/opt/hpcbatch"
    pip_args: list[str] = field(default_factory=list)
    extra_packages: list[str] = field(default_factory=list)
    compute_environment: str = "default"
    placement_group: str | None = None
    fabric_interface: str | None = None
    fabric_mtu: int = 9000  # set on fabric_interface; 0 leaves it (the fabric role's fabric_mtu)
    api_endpoint: str = ""  # the head's API for the CLI on the nodes (default http://HEAD:8471)
    allow_root_jobs: bool = False
    connect_timeout: float = 15.0
    ready_timeout: float = 120.0  # per host, from the agent's start until ACTIVE
    parallel: int = 32

    @property
    def venv(self) -> str:
        return f"{self.prefix}/venv"

    @property
    def client_endpoint(self) -> str:
        if self.api_endpoint:
            return self.api_endpoint
        host = self.head.removeprefix("tcp://").rsplit(":", 1)[0]
        return f"http://{host}:8471"


@dataclass
class HostReport:
    """How one host went: ``ok``, or the step that failed and why."""

    host: str
    ok: bool = False
    step: str = ""
    detail: str = ""
    version: str = ""
    seconds: float = 0.0


class StepFailed(Exception):
    """One step on one host failed; ``step`` names it, the message says why."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(detail)
        self.step = step


def _toml(value: str) -> str:
    return json.dumps(value)  # JSON's string escapes are valid TOML


def agent_config(name: str, s: BootstrapSettings) -> str:
    """The agent's config file, the fields the Ansible role's template writes."""
    lines = [
        "# Written by hpcbatch nodes bootstrap.",
        f"name = {_toml(name)}",
        f"head = {_toml(s.head)}",
        f"head_public_key = {_toml(HEAD_KEY_PATH)}",
        f"state_dir = {_toml(STATE_DIR)}",
        f"curve_secret_key = {_toml(STATE_DIR + '/curve/agent.key_secret')}",
        f"curve_public_key = {_toml(STATE_DIR + '/curve/agent.key')}",
        f"compute_environment = {_toml(s.compute_environment)}",
    ]
    if s.placement_group:
        lines.append(f"placement_group = {_toml(s.placement_group)}")
    if s.fabric_interface:
        lines.append(f"fabric_interface = {_toml(s.fabric_interface)}")
    lines.append(f"allow_root_jobs = {'true' if s.allow_root_jobs else 'false'}")
    return "\n".join(lines) + "\n"


# On the host: the installed hpcbatch version and the record of its wheel (the Ansible package
# role's probe reads the same /opt/hpcbatch/installed.json).
PROBE = """import json, sys
from importlib import metadata
try:
    record = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    record = {}
print(json.dumps({"version": metadata.version("hpcbatch"), "record": record}))
"""


def _sha256(path: Path) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def install_refusal(present: dict[str, Any], wheel_name: str, sha256: str) -> str | None:
    """Why installing ``wheel_name`` would be wrong, or None: a wheel with the installed version
    but other content (its recorded sha256 differs) would install nothing, as pip keeps it."""
    version = wheel_name.split("-")[1] if wheel_name.count("-") >= 2 else ""
    record = present.get("record") or {}
    recorded = record.get("sha256") if isinstance(record, dict) else None
    if present.get("version") != version or not recorded or recorded == sha256:
        return None
    return (f"hpcbatch {version} is installed from a wheel with sha256 {recorded} ({record.get('wheel', '?')}), "
            f"and {wheel_name} has the same version but other content (sha256 {sha256}): pip would install "
            f"nothing. Give the new build a new version (e.g. {version}.post1, in hpcbatch/__init__.py)")


def sysctl_conf() -> str:
    """/etc/sysctl.d/90-hpcbatch-fabric.conf, as the fabric role's template writes it."""
    head = "# RDMA and large MPI jobs: big socket buffers, many mappings, no NUMA page migration.\n"
    return head + "".join(f"{k} = {v}\n" for k, v in sorted(FABRIC_SYSCTLS.items()))


def client_config(s: BootstrapSettings) -> str:
    """/etc/hpcbatch/client.toml: where the CLI on the node finds the head (any shell)."""
    return ("# Written by hpcbatch nodes bootstrap: the head's API for the hpcbatch CLI on this node\n"
            "# (requests are signed with the caller's access key: hpcbatch admin keys create).\n"
            f"endpoint = {_toml(s.client_endpoint)}\n")


class Bootstrapper:
    """Bootstraps hosts against one head (``client``: an admin's connection to its API)."""

    def __init__(self, settings: BootstrapSettings, client: Client,
                 progress: Callable[[str, str], None] | None = None) -> None:
        self.s = settings
        self.client = client
        self.progress = progress or (lambda host, what: None)

    async def run(self, hosts: Sequence[str]) -> list[HostReport]:
        limit = asyncio.Semaphore(max(1, self.s.parallel))

        async def one(host: str) -> HostReport:
            async with limit:
                return await self.bootstrap(host)

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(h)) for h in hosts]
        return [t.result() for t in tasks]

    async def bootstrap(self, host: str) -> HostReport:
        report = HostReport(host)
        started = time.monotonic()
        try:
            report.version = await self._bootstrap(host)
            report.ok = True
        except StepFailed as e:
            report.step, report.detail = e.step, str(e)
        report.seconds = time.monotonic() - started
        return report

    # -- the steps ---------------------------------------------------------------------------

    async def _connect(self, host: str) -> Any:
        import asyncssh

        known: Any = None
        if self.s.verify_host_keys:
            known = str(self.s.known_hosts or Path("~/.ssh/known_hosts").expanduser())
            if not Path(known).is_file():  # asyncssh would say only "No such file or directory"
                raise StepFailed("host key", f"no known_hosts file {known} to verify {host}'s host key against: "
                                             "add the hosts' keys there (ssh-keyscan HOST, checked against the "
                                             "host's own /etc/ssh/ssh_host_*.pub) or give --known-hosts FILE")
        options: dict[str, Any] = {"username": self.s.username, "port": self.s.port, "known_hosts": known,
                                   "connect_timeout": self.s.connect_timeout}
        if self.s.identity is not None:
            options["client_keys"] = [str(self.s.identity)]
        try:
            return await asyncssh.connect(host, **options)
        except asyncssh.HostKeyNotVerifiable as e:
            raise StepFailed("host key", f"host key not verified against {known}: {e.reason}") from None
        except asyncssh.PermissionDenied as e:
            raise StepFailed("login", f"{self.s.username}@{host} refused: {e.reason}") from None
        except asyncssh.DisconnectError as e:
            raise StepFailed("connect", f"disconnected: {e.reason}") from None
        except (OSError, TimeoutError) as e:
            raise StepFailed("connect", f"unreachable: {e.strerror or e}") from None

    async def _run(self, conn: Any, step: str, command: str, input: str | None = None, timeout: float = 600) -> str:
        try:
            result = await asyncio.wait_for(conn.run(command, input=input, check=False), timeout)
        except TimeoutError:
            raise StepFailed(step, f"no answer after {timeout:g} s") from None
        if result.exit_status != 0:
            why = (str(result.stderr or "") or str(result.stdout or "")).strip().splitlines()
            raise StepFailed(step, why[-1] if why else f"exit status {result.exit_status}")
        return str(result.stdout or "")

    async def _write(self, conn: Any, step: str, path: str, text: str, mode: str = "0644") -> None:
        q = shlex.quote(path)
        await self._run(conn, step, f"umask 022; mkdir -p $(dirname {q}) && cat > {q}.new && chmod {mode} {q}.new "
                                    f"&& mv {q}.new {q}", input=text)

    async def _bootstrap(self, host: str) -> str:
        s = self.s
        self.progress(host, "connecting")
        conn = await self._connect(host)
        async with conn:
            out = await self._run(conn, "python", "python3 -c 'import sys, venv; print(sys.version_info >= (3, 11))' "
                                  "2>&1 || echo missing")
            if "True" not in out:
                raise StepFailed("python", "no Python 3.11+ with venv (apt-get install python3 python3-venv)"
                                 if "missing" in out or "Error" in out else f"Python too old: {out.strip()}")
            self.progress(host, "installing")
            venv = s.venv
            wheel = f"{s.prefix}/wheels/{s.wheel.name}"
            record_path = f"{s.prefix}/installed.json"
            present = await self._run(conn, "install", f"{venv}/bin/python -c {shlex.quote(PROBE)} {record_path} "
                                                       "2>/dev/null || echo '{}'")
            sha256 = await asyncio.to_thread(_sha256, s.wheel)
            refused = install_refusal(json.loads(present.strip() or "{}"), s.wheel.name, sha256)
            if refused:
                raise StepFailed("install", refused)
            await self._run(conn, "install", f"mkdir -p {shlex.quote(s.prefix)}/wheels")
            try:
                async with conn.start_sftp_client() as sftp:
                    await sftp.put(str(s.wheel), wheel)
            except Exception as e:  # asyncssh.SFTPError and OSError: reported, not raised
                raise StepFailed("install", f"copying {s.wheel.name}: {e}") from None
            pip = " ".join(shlex.quote(a) for a in s.pip_args)
            extra = " ".join(shlex.quote(p) for p in s.extra_packages)
            await self._run(conn, "install",
                            f"test -x {venv}/bin/python || python3 -m venv {venv}; "
                            f"{venv}/bin/pip install -q --disable-pip-version-check --no-input {pip} "
                            f"{shlex.quote(wheel + '[agent]')} {extra}")  # a compute node: none of the head's packages
            version = (await self._run(conn, "install",
                                       f"{venv}/bin/python -c 'import hpcbatch; print(hpcbatch.__version__)'")).strip()
            record = {"version": version, "sha256": sha256, "wheel": s.wheel.name}
            await self._write(conn, "install", record_path, json.dumps(record, indent=2) + "\n")
            self.progress(host, "configuring")
            name = host  # as Ansible's inventory_hostname: the name the admin gave
            await self._write(conn, "configure", HEAD_KEY_PATH, s.head_public_key.decode().strip() + "\n")
            await self._run(conn, "keys", f"{venv}/bin/python -c {shlex.quote(KEYGEN)} "
                                          f"{STATE_DIR}/curve/agent.key_secret {STATE_DIR}/curve/agent.key")
            public_key = (await self._run(conn, "keys", f"cat {STATE_DIR}/curve/agent.key")).strip()
            await self._fabric(conn, host)
            await self._write(conn, "configure", CLIENT_CONFIG_PATH, client_config(s))
            await self._write(conn, "configure", CONFIG_PATH, agent_config(name, s))
            await self._write(conn, "configure", UNIT_PATH, UNIT.format(venv=venv, config=CONFIG_PATH))
            self.progress(host, "starting")
            await self._run(conn, "start", "systemctl daemon-reload && systemctl enable -q hpcbatch-agent.service "
                                           "&& systemctl restart hpcbatch-agent.service")
        self.progress(host, "enrolling")
        await self._enroll(name, public_key)
        return version

    async def _fabric(self, conn: Any, host: str) -> None:
        """What the fabric role does: the interface's MTU, memlock limits, the sysctls."""
        s = self.s
        self.progress(host, "fabric")
        if s.fabric_interface:
            iface = shlex.quote(s.fabric_interface)
            out = await self._run(conn, "fabric", f"ip -j link show dev {iface} 2>/dev/null || echo missing")
            if "missing" in out or not out.strip().startswith("["):
                raise StepFailed("fabric", f"no interface {s.fabric_interface} on {host} (--fabric-interface)")
            if s.fabric_mtu > 0 and int(json.loads(out)[0]["mtu"]) != s.fabric_mtu:
                await self._run(conn, "fabric", f"ip link set dev {iface} mtu {int(s.fabric_mtu)}")
        await self._write(conn, "fabric", MEMLOCK_PATH, MEMLOCK_CONF)
        await self._write(conn, "fabric", SYSCTL_PATH, sysctl_conf())
        # systemd-sysctl applies them (and skips them in a container, where /proc/sys is read-only).
        await self._run(conn, "fabric", "systemctl restart systemd-sysctl.service")

    async def _enroll(self, name: str, public_key: str) -> None:
        """Accept exactly the key read over SSH once the agent presented it; wait until ACTIVE."""
        deadline = time.monotonic() + self.s.ready_timeout
        accepted = False
        while True:
            try:
                if not accepted:
                    accepted = await asyncio.to_thread(self._accept_if_pending, name, public_key)
                if accepted and await asyncio.to_thread(self._active, name):
                    return
            except HpcbatchError as e:
                raise StepFailed("enroll", f"the head refused: {e}") from None
            if time.monotonic() >= deadline:
                what = "ACTIVE" if accepted else "its key to reach the head"
                raise StepFailed("enroll", f"waited {self.s.ready_timeout:g} s for {what} "
                                           f"(see journalctl -u hpcbatch-agent on {name})")
            await asyncio.sleep(0.5)

    def _accept_if_pending(self, name: str, public_key: str) -> bool:
        keys = self.client.call("/hpcbatch/v1/listnodekeys", {}).get("nodeKeys") or []
        mine = [k for k in keys if k.get("name") == name]
        for k in mine:
            if k.get("publicKey") != public_key:
                raise StepFailed("enroll", f"the head holds another {k.get('state')} key for {name}: "
                                           f"check it, then hpcbatch nodes keys delete {name}")
            if k.get("state") == "accepted":
                return True
            if k.get("state") == "rejected":
                raise StepFailed("enroll", f"{name}'s key is rejected at the head: hpcbatch nodes keys accept {name}")
            if k.get("state") == "pending":
                self.client.call("/hpcbatch/v1/acceptnodekey", {"name": name})
                return True
        return False

    def _active(self, name: str) -> bool:
        nodes = self.client.all_nodes()
        return any(n.get("name") == name and n.get("state") in ("ACTIVE", "DRAINED", "DRAINING") for n in nodes)


def summary(reports: Sequence[HostReport]) -> str:
    """One line: how many came up, and which did not."""
    failed = [r.host for r in reports if not r.ok]
    line = f"{len(reports) - len(failed)} of {len(reports)} hosts bootstrapped"
    if failed:
        from ClusterShell.NodeSet import NodeSet

        line += f"; failed: {NodeSet.fromlist(failed)}"
    return line
