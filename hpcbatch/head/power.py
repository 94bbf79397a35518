"""Power drivers, and fencing a lost node by powering it off (STONITH, as Pacemaker does).

A node the head has lost may still run its attempts: their retries wait until its agent has
surely fenced itself, the control-plane outage bound later (hpcbatch.fencing, 10 minutes by
default). Where the node has a power driver, the head need not wait: it powers the node off,
and once the driver says it is off (a power-off that succeeded is a fact, not a guess), the
attempts are dead and their retries start at once. A driver that fails or times out changes
nothing: the retries wait for the agent's fence, as without a driver.

Drivers are configured in the head's config, per compute environment or per node (the
node's wins), under ``[power.compute_environments.NAME]`` and ``[power.nodes.NAME]``
(docs/ha.md). The ``command`` driver runs an admin's command (``ipmitool``, ``ssh pdu``,
a cloud CLI) with ``{node}`` replaced by the node's name, within ``timeout_s``; exit 0 means
the node is off.

MANAGED compute environments (docs/managed.md) add node pools, ``[power.pools.CE]``: the
``PowerManager`` runs the pure planner (hpcbatch.scheduler.power) once a second and applies
its decisions through pool drivers with ``power_on(nodes)``/``power_off(nodes)`` on a
hostlist: ``command`` (Slurm's ResumeProgram/SuspendProgram), ``redfish`` (BMCs) and
``netns`` (the test bed's: real agents started and stopped). A pool's driver also fences its
lost nodes. Below: the drivers, the manager, then what the API shows (status, desiredvCpus,
power states, metrics). IPMI and cloud drivers are not written yet (a ``command`` script can
call them).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from hpcbatch.errors import HpcbatchError
from hpcbatch.scheduler.power import (
    Demand,
    NodeFailed,
    NodePower,
    NodeView,
    Pool,
    PowerOff,
    PowerOn,
    PowerPlanner,
    PowerState,
    hostlist,
)

log = logging.getLogger("hpcbatch.power")

NODE_PLACEHOLDER = "{node}"
OUTPUT_SHOWN = 300  # characters of a failed command's output that go into the log


class PowerDriverConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How to power one node (or every node of a compute environment) off."""

    driver: Literal["command"] = "command"
    power_off: list[str]  # argv; "{node}" in any item becomes the node's name
    timeout_s: float = 60.0  # a power-off that takes longer has failed


class PoolConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[power.pools.CE]``: the nodes a MANAGED compute environment powers up and down (docs/managed.md)."""

    nodes: str  # a hostlist: node[5-8]
    vcpus_per_node: float  # what a powered-down node brings when it registers (planning, submit checks)
    memory_mib_per_node: int = 0  # 0: not checked at submit
    driver: Literal["command", "netns", "redfish"] = "command"
    # command: Slurm's ResumeProgram/SuspendProgram: argv, called with the hostlist as last argument.
    resume_program: list[str] = []
    suspend_program: list[str] = []
    # netns (the test bed): agent configs <agent_config_dir>/<node>.toml, started as processes,
    # inside the namespaces of a hpcbatch.netns layout (JSON file) when netns_layout is set.
    agent_config_dir: str = ""
    netns_layout: str = ""
    # redfish: each node's BMC, "{node}" replaced by the node's name; ComputerSystem.Reset on
    # <redfish_url>/redfish/v1/Systems/<redfish_system>; basic auth when a user is named.
    redfish_url: str = ""  # e.g. "https://{node}-bmc"
    redfish_system: str = "{node}"  # the system's id at that BMC (often "1" or "System.Embedded.1")
    redfish_username: str = ""
    redfish_password_file: str = ""
    redfish_verify_tls: bool = True
    timeout_s: float = 60.0  # one driver call
    suspend_after_s: float = 300.0  # Slurm's SuspendTime
    resume_timeout_s: float = 300.0  # Slurm's ResumeTimeout
    boot_time_s: float = 60.0  # expected boot time, shown by `why`
    resume_rate: int = 0  # nodes powered up per minute (Slurm's ResumeRate); 0: no limit
    placement_groups: dict[str, str] = {}  # group -> hostlist (gangs prefer one group)


class PowerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The head config's ``[power]`` table: drivers by compute environment and by node, and node pools."""

    compute_environments: dict[str, PowerDriverConfig] = {}
    nodes: dict[str, PowerDriverConfig] = {}
    pools: dict[str, PoolConfig] = {}


def _check_pool(name: str, pool: PoolConfig) -> str | None:
    from ClusterShell.NodeSet import NodeSet, NodeSetException

    where = f"power.pools.{name}"
    try:
        if not NodeSet(pool.nodes):
            return f"{where}.nodes must name at least one node (a hostlist such as node[5-8])"
        for hosts in pool.placement_groups.values():
            NodeSet(hosts)
    except NodeSetException as exc:
        return f"{where}: not a hostlist: {exc}"
    if pool.vcpus_per_node <= 0:
        return f"{where}.vcpus_per_node must be > 0"
    for key in ("timeout_s", "resume_timeout_s", "boot_time_s"):
        if getattr(pool, key) <= 0:
            return f"{where}.{key} must be > 0 seconds"
    if pool.suspend_after_s < 0 or pool.resume_rate < 0:
        return f"{where}.suspend_after_s and resume_rate must be >= 0"
    if pool.driver == "command" and (not pool.resume_program or not pool.suspend_program
                                     or not all(pool.resume_program + pool.suspend_program)):
        return f"{where}: the command driver needs resume_program and suspend_program (argv lists)"
    if pool.driver == "netns" and not pool.agent_config_dir:
        return f"{where}.agent_config_dir is required by the netns driver"
    if pool.driver == "redfish" and not pool.redfish_url.startswith(("http://", "https://")):
        return f"{where}.redfish_url must be an http(s):// URL (\"{{node}}\" is replaced by the node's name)"
    return None


def check_power_config(config: PowerConfig) -> str | None:
    """None if ``config`` is usable, else one line naming the field."""
    from ClusterShell.NodeSet import NodeSet

    owner: dict[str, str] = {}
    for name, pool in config.pools.items():
        problem = _check_pool(name, pool)
        if problem is not None:
            return problem
        for node in NodeSet(pool.nodes):
            if node in owner:
                return f"power.pools.{name}.nodes: {node} is already in power.pools.{owner[node]} (a node has one pool)"
            owner[node] = name
    for kind, table in (("compute_environments", config.compute_environments), ("nodes", config.nodes)):
        for name, driver in table.items():
            if not driver.power_off or not all(driver.power_off):
                return f"power.{kind}.{name}.power_off must be a command: a non-empty list of non-empty strings"
            if driver.timeout_s <= 0:
                return f"power.{kind}.{name}.timeout_s must be > 0 seconds"
    return None


class PowerError(Exception):
    """A driver could not power a node off; the message says why."""


class PowerDriver(Protocol):
    """Powers nodes off; returns only once the node is off, raises PowerError otherwise."""

    async def power_off(self, node: str) -> None: ...


class CommandDriver:
    """Runs a configured command; exit 0 within the timeout means the node is off."""

    def __init__(self, argv: list[str], timeout_s: float) -> None:
        self.argv = argv
        self.timeout_s = timeout_s

    async def power_off(self, node: str) -> None:
        await run_program([part.replace(NODE_PLACEHOLDER, node) for part in self.argv], self.timeout_s)


async def run_program(argv: list[str], timeout_s: float) -> None:
    """Run ``argv``; exit 0 within ``timeout_s`` is success, else PowerError saying why."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        raise PowerError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    try:
        async with asyncio.timeout(timeout_s):
            output, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise PowerError(f"{argv[0]} did not finish within {timeout_s:g} s") from None
    if proc.returncode != 0:
        text = " ".join(output.decode("utf-8", "replace").split())[-OUTPUT_SHOWN:]
        raise PowerError(f"{argv[0]} exited with {proc.returncode}" + (f": {text}" if text else ""))


class PoolFence:
    """STONITH through a MANAGED pool's driver: powers one node off."""

    def __init__(self, driver: PoolDriver) -> None:
        self.driver = driver

    async def power_off(self, node: str) -> None:
        await self.driver.power_off([node])


def make_driver(config: PowerDriverConfig) -> PowerDriver:
    """The driver ``config`` names (only ``command`` so far)."""
    return CommandDriver(config.power_off, config.timeout_s)


class Stonith:
    """Powers lost nodes off, one task per node, owned by ``serve``; see the module docstring.

    ``compute_environment_of``: a node's compute environment (for the per-CE drivers);
    ``on_fenced``: called with a node's name once its driver has powered it off.
    """

    def __init__(
        self, config: PowerConfig, compute_environment_of: Callable[[str], str], on_fenced: Callable[[str], None],
        pool_drivers: dict[str, PoolDriver] | None = None,
    ) -> None:
        self._by_ce = {name: make_driver(c) for name, c in config.compute_environments.items()}
        self._by_node: dict[str, PowerDriver] = {name: make_driver(c) for name, c in config.nodes.items()}
        # A MANAGED pool's nodes are fenced with the pool's own driver (its suspend program)
        # unless a [power.nodes] or [power.compute_environments] driver is named for them.
        from ClusterShell.NodeSet import NodeSet

        for ce, pool in config.pools.items():
            driver = (pool_drivers or {}).get(ce)
            for node in NodeSet(pool.nodes):
                if node not in self._by_node and ce not in self._by_ce and driver is not None:
                    self._by_node[node] = PoolFence(driver)
        self._ce_of = compute_environment_of
        self._on_fenced = on_fenced
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._busy: set[str] = set()  # nodes whose power-off is under way

    def driver_for(self, node: str) -> PowerDriver | None:
        driver = self._by_node.get(node)
        if driver is None:
            try:
                driver = self._by_ce.get(self._ce_of(node))
            except KeyError:  # a node the head has never heard of: no compute environment
                driver = None
        return driver

    def request(self, node: str) -> bool:
        """Power ``node`` off soon, if it has a driver; whether it has one."""
        if self.driver_for(node) is None:
            return False
        if node not in self._busy:
            self._busy.add(node)
            self._queue.put_nowait(node)
        return True

    async def serve(self) -> None:
        """Run the requested power-offs until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            while True:
                node = await self._queue.get()
                tasks.create_task(self._power_off(node))

    async def _power_off(self, node: str) -> None:
        driver = self.driver_for(node)
        try:
            if driver is None:
                return
            log.warning("fencing lost node %s: powering it off (STONITH)", node)
            try:
                await driver.power_off(node)
            except PowerError as exc:
                log.error("could not power node %s off: %s; its retries wait for its agent's fence", node, exc)
                return
            log.warning("node %s is powered off: its attempts are dead, their retries may start", node)
            self._on_fenced(node)
        finally:
            self._busy.discard(node)


# ------------------------------------------------------------------------------------------
# MANAGED compute environments: node pools powered up and down as demand follows
# (hpcbatch.scheduler.power decides; this part applies, persists and runs the drivers).

POWER_RESOURCE = "power"  # store resource kind: one doc per pool node (its power record)
POWER_DRAIN_REASON = "Powering down: idle"  # the drain a node gets before its power-off
PASS_INTERVAL_S = 1.0


class PoolDriver(Protocol):
    """Powers a batch of nodes (a hostlist) on or off; returns once the driver is done."""

    async def power_on(self, nodes: list[str]) -> None: ...

    async def power_off(self, nodes: list[str]) -> None: ...


class ProgramDriver:
    """Slurm's ResumeProgram/SuspendProgram: ``argv… node[5-8]``; exit 0 is success."""

    def __init__(self, resume: list[str], suspend: list[str], timeout_s: float) -> None:
        self.resume, self.suspend, self.timeout_s = resume, suspend, timeout_s

    async def power_on(self, nodes: list[str]) -> None:
        await run_program([*self.resume, hostlist(nodes)], self.timeout_s)

    async def power_off(self, nodes: list[str]) -> None:
        await run_program([*self.suspend, hostlist(nodes)], self.timeout_s)


class NetnsDriver:
    """The test bed's driver: "powering up" starts a node's real agent (in its network
    namespace when a hpcbatch.netns layout is given), "powering down" stops it (SIGTERM, then
    SIGKILL after ``timeout_s``), as a shutdown would. The agent's pid is kept in
    ``<agent_config_dir>/<node>.power.pid`` so a restarted head can still power it off."""

    def __init__(self, config_dir: str, layout: str, timeout_s: float) -> None:
        self.dir = Path(config_dir)
        self.layout_path = layout
        self.timeout_s = timeout_s
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def _pid_file(self, node: str) -> Path:
        return self.dir / f"{node}.power.pid"

    def _running(self, node: str) -> int | None:
        proc = self._procs.get(node)
        if proc is not None and proc.poll() is None:
            return proc.pid
        try:
            pid = int(self._pid_file(node).read_text())
        except (OSError, ValueError):
            return None
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        return None if stat.rpartition(")")[2].split()[0] == "Z" else pid

    def _layout(self) -> Any:
        from hpcbatch.netns import NetnsLayout

        try:
            return NetnsLayout.from_dict(json.loads(Path(self.layout_path).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise PowerError(f"netns layout {self.layout_path}: {exc}") from None

    async def power_on(self, nodes: list[str]) -> None:
        prefix: dict[str, list[str]] = {}
        if self.layout_path:
            from hpcbatch.netns import NetnsError

            try:
                layout = self._layout()
                prefix = {n: layout.node(n).exec_prefix for n in nodes}
            except NetnsError as exc:
                raise PowerError(f"netns layout {self.layout_path}: {exc}") from None
        for node in nodes:
            if self._running(node) is not None:  # already on: powering it on again changes nothing
                continue
            config = self.dir / f"{node}.toml"
            if not config.is_file():
                raise PowerError(f"no agent config {config} for node {node}")
            tmp = self.dir / node / "tmp"
            tmp.mkdir(parents=True, exist_ok=True)
            with open(self.dir / f"{node}.log", "ab") as out:
                proc = subprocess.Popen(
                    [*prefix.get(node, []), sys.executable, "-m", "node_agent", "--config", str(config)],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                    env=dict(os.environ, TMPDIR=str(tmp), PYTHONUNBUFFERED="1"),
                )
            self._procs[node] = proc
            self._pid_file(node).write_text(f"{proc.pid}\n")

    async def power_off(self, nodes: list[str]) -> None:
        for node in nodes:
            pid = self._running(node)
            if pid is not None:
                await self._stop(node, pid)
            self._pid_file(node).unlink(missing_ok=True)
            if self.layout_path:  # off means off: whatever else runs on the node dies too (its jobs)
                await asyncio.to_thread(self._kill_the_rest, node)

    def _kill_the_rest(self, node: str) -> None:
        import psutil

        from hpcbatch.netns import NetnsError, netns_pids

        try:
            net = self._layout().node(node)
        except NetnsError as exc:
            raise PowerError(str(exc)) from None
        holder = int((net.holder or {}).get("pid", 0))
        procs = []
        for pid in netns_pids(net.netns):
            if pid != holder:
                try:
                    proc = psutil.Process(pid)
                    proc.kill()
                    procs.append(proc)
                except psutil.Error:
                    pass
        _, alive = psutil.wait_procs(procs, timeout=self.timeout_s)
        if alive:
            raise PowerError(f"node {node}: pids {sorted(p.pid for p in alive)} still run after SIGKILL")

    async def _stop(self, node: str, pid: int) -> None:
        for sig, wait_s in ((signal.SIGTERM, self.timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_s
            while loop.time() < deadline:
                proc = self._procs.get(node)
                if proc is not None:
                    proc.poll()  # reap our own child
                if self._running(node) is None:
                    self._procs.pop(node, None)
                    return
                await asyncio.sleep(0.05)
        raise PowerError(f"the agent of node {node} (pid {pid}) did not stop")


class RedfishDriver:
    """BMCs over Redfish (DMTF DSP0266): ``ComputerSystem.Reset`` with ``On`` / ``ForceOff``.

    A power-on returns once every BMC accepted it (the agent's registration is the real
    sign); a power-off returns once every system reports ``PowerState: Off`` (a fact, as
    STONITH needs), within ``timeout_s`` for the whole batch.
    """

    def __init__(self, config: PoolConfig) -> None:
        self.url, self.system = config.redfish_url.rstrip("/"), config.redfish_system
        self.timeout_s = config.timeout_s
        self.verify = config.redfish_verify_tls
        self.user = config.redfish_username
        self.password_file = config.redfish_password_file

    def _system(self, node: str) -> str:
        return f"{self.url.replace(NODE_PLACEHOLDER, node)}/redfish/v1/Systems/{self.system.replace(NODE_PLACEHOLDER, node)}"

    def _session(self) -> Any:
        import aiohttp

        auth = None
        if self.user:
            try:
                password = Path(self.password_file).read_text().strip() if self.password_file else ""
            except OSError as exc:
                raise PowerError(f"redfish_password_file {self.password_file}: {exc.strerror}") from None
            auth = aiohttp.BasicAuth(self.user, password)
        return aiohttp.ClientSession(auth=auth, connector=aiohttp.TCPConnector(ssl=None if self.verify else False),
                                     timeout=aiohttp.ClientTimeout(total=self.timeout_s))

    async def _reset(self, session: Any, node: str, reset: str) -> None:
        url = self._system(node) + "/Actions/ComputerSystem.Reset"
        async with session.post(url, json={"ResetType": reset}) as resp:
            if resp.status >= 300:
                text = " ".join((await resp.text()).split())[-OUTPUT_SHOWN:]
                raise PowerError(f"{node}: Redfish {reset} answered {resp.status}: {text}")

    async def _states(self, session: Any, nodes: list[str]) -> dict[str, str]:
        out = {}
        for node in nodes:
            async with session.get(self._system(node)) as resp:
                if resp.status >= 300:
                    raise PowerError(f"{node}: Redfish system answered {resp.status}")
                out[node] = str((await resp.json(content_type=None)).get("PowerState", ""))
        return out

    async def _do(self, nodes: list[str], reset: str, wait_off: bool) -> None:
        import aiohttp

        try:
            async with asyncio.timeout(self.timeout_s), self._session() as session:
                for node in nodes:
                    await self._reset(session, node, reset)
                while wait_off:
                    states = await self._states(session, nodes)
                    if all(s == "Off" for s in states.values()):
                        return
                    await asyncio.sleep(0.5)
        except TimeoutError:
            raise PowerError(f"Redfish {reset} of {hostlist(nodes)} did not finish within {self.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise PowerError(f"Redfish {reset} of {hostlist(nodes)}: {exc}") from None

    async def power_on(self, nodes: list[str]) -> None:
        await self._do(nodes, "On", wait_off=False)

    async def power_off(self, nodes: list[str]) -> None:
        await self._do(nodes, "ForceOff", wait_off=True)

    async def state(self, nodes: list[str]) -> dict[str, str]:
        """Each node's Redfish ``PowerState`` (On, Off, PoweringOn, PoweringOff)."""
        import aiohttp

        try:
            async with asyncio.timeout(self.timeout_s), self._session() as session:
                return await self._states(session, nodes)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise PowerError(f"Redfish state of {hostlist(nodes)}: {exc or 'timed out'}") from None


def make_pool_driver(config: PoolConfig) -> PoolDriver:
    """The driver a pool's config names."""
    if config.driver == "redfish":
        return RedfishDriver(config)
    if config.driver == "netns":
        return NetnsDriver(config.agent_config_dir, config.netns_layout, config.timeout_s)
    return ProgramDriver(config.resume_program, config.suspend_program, config.timeout_s)


def pool_of(name: str, config: PoolConfig, min_vcpus: float = 0.0, max_vcpus: float | None = 0.0) -> Pool:
    """The planner's view of a configured pool, with the CE's minvCpus/maxvCpus."""
    from ClusterShell.NodeSet import NodeSet

    groups = {node: group for group, hosts in config.placement_groups.items() for node in NodeSet(hosts)}
    return Pool(
        compute_environment=name, nodes=tuple(NodeSet(config.nodes)), vcpus_per_node=config.vcpus_per_node,
        min_vcpus=min_vcpus, max_vcpus=max_vcpus, suspend_after_s=config.suspend_after_s,
        resume_timeout_s=config.resume_timeout_s, boot_time_s=config.boot_time_s,
        resume_rate=config.resume_rate, placement_groups=groups,
    )


class PowerManager:
    """Runs the power planner for every pool: one pass a second, its actions applied.

    Per pass: the compute environments' bounds (minvCpus/maxvCpus of each MANAGED CE with a
    pool) and the waiting jobs are read, the planner decides, the changed power records are
    stored (before any driver runs: a restart never repeats a power-up), nodes to power down
    are drained first (no job lands on them), then the driver calls run as tasks of ``serve``.
    Every power action goes to the audit log.
    """

    def __init__(self, pools: dict[str, PoolConfig], engine: Any, clock_s: Callable[[], float] = time.time) -> None:
        self.configs = pools
        self.engine = engine
        self.store = engine.store
        self._clock = clock_s
        self.drivers = {name: make_pool_driver(c) for name, c in pools.items()}
        now = clock_s()
        self.planner = PowerPlanner([pool_of(n, c) for n, c in pools.items()], now)
        for doc in self.store.list_resources(POWER_RESOURCE):
            self.planner.restore(doc["node"], NodePower(
                PowerState(doc["state"]), float(doc["since"]), doc["reason"], bool(doc.get("failed")),
            ))
        self.waiting: dict[str, str] = {}
        self.desired: dict[str, float] = {}
        # Power-downs a previous head began: the driver call may never have run; it is safe to repeat.
        self._resume_downs = {name for name, rec in self.planner.records.items() if rec.state is PowerState.POWERING_DOWN}
        self._calls: asyncio.Queue[tuple[str, PowerOn | PowerOff]] = asyncio.Queue()

    # --------------------------------------------------------------- read side
    def pool_nodes(self, ce: str) -> tuple[str, ...]:
        pool = self.planner.pools.get(ce)
        return pool.nodes if pool else ()

    def record(self, node: str) -> NodePower | None:
        return self.planner.records.get(node)

    # -------------------------------------------------------------- one pass
    def _bounds(self) -> dict[str, tuple[str, int, list[str]]]:
        """Refresh each pool's minvCpus/maxvCpus from its CE; return queue -> (state, priority, CEs)."""
        for name in self.configs:
            doc = self.store.get_resource("ce", name)
            pool = self.planner.pools[name]
            if doc is None or doc.get("type") != "MANAGED":
                self.planner.pools[name] = replace(pool, min_vcpus=0.0, max_vcpus=0.0)  # nothing to serve
                continue
            res = doc.get("computeResources") or {}
            enabled = doc.get("state") == "ENABLED"
            max_v = res.get("maxvCpus")
            self.planner.pools[name] = replace(
                pool, min_vcpus=float(res.get("minvCpus") or 0),
                max_vcpus=(None if max_v is None else float(max_v)) if enabled else 0.0,
            )
        queues = {}
        for q in self.store.list_resources("queue"):
            order = sorted(q.get("computeEnvironmentOrder") or [], key=lambda e: e["order"])
            queues[q["jobQueueName"]] = (q.get("state", "ENABLED"), int(q.get("priority", 0)),
                                         [e["computeEnvironment"].rsplit("/", 1)[-1] for e in order])
        return queues

    def _demands(self, queues: dict[str, tuple[str, int, list[str]]]) -> list[Demand]:
        from hpcbatch.model.lifecycle import JobStatus

        # Free vCPUs of ACTIVE nodes outside any pool, by CE: a job they can hold powers nothing.
        elsewhere: dict[str, list[tuple[float, bool]]] = {}
        for name, info in self.engine.nodes_snapshot().items():
            if name in self.planner.pool_of or info.facts is None or info.state != "ACTIVE":
                continue
            used = self.engine.node_usage(name)[0]
            elsewhere.setdefault(self.engine.compute_environment_of(name), []).append(
                (float(info.facts.vcpus) - used, not info.jobs))
        out = []
        for job in self.engine.jobs_where(lambda j: j.status is JobStatus.RUNNABLE and j.parent_id is None):
            state, priority, ces = queues.get(job.job_queue, ("DISABLED", 0, []))
            mine = tuple(ce for ce in ces if ce in self.configs)
            if state != "ENABLED" or not mine:
                continue
            vcpus, n = float(job.resources.vcpus), max(1, int(job.num_nodes))
            others = [slot for ce in ces if ce not in self.configs for slot in elsewhere.get(ce, [])]
            if (n == 1 and any(free >= vcpus for free, _ in others)) or (
                    n > 1 and sum(1 for _, idle in others if idle) >= n):
                continue
            # An array's tasks not yet placed: one demand each (bounded: a pool is not bigger).
            copies = min(64, max(1, (job.array_size or 0) - job.array_next)) if job.array_size else 1
            for i in range(copies):
                out.append((-priority, job.created_at, job.job_id, i, Demand(job.job_id, mine, vcpus, n)))
        return [d for *_, d in sorted(out, key=lambda t: t[:4])]

    def _views(self) -> dict[str, NodeView]:
        views = {}
        for name, info in self.engine.nodes_snapshot().items():
            if name not in self.planner.pool_of or info.facts is None or info.state == "DOWN":
                continue
            if info.drain_reason == POWER_DRAIN_REASON:  # on its way down: not capacity
                continue
            usage = self.engine.node_usage(name)
            busy = bool(info.jobs) or usage[0] > 0 or info.drain_reason is not None
            views[name] = NodeView(name, float(info.facts.vcpus), float(usage[0]), busy)
        return views

    def pass_once(self) -> list[tuple[str, PowerOn | PowerOff]]:
        """Plan and apply one pass; returns the driver calls to make (``serve`` makes them)."""
        now = self._clock()
        queues = self._bounds()
        plan = self.planner.plan(now, self._demands(queues), self._views())
        self.desired = plan.desired_vcpus
        self._store(plan.changed)
        calls: list[tuple[str, PowerOn | PowerOff]] = []
        for name, rec in self.planner.records.items():  # a node on its way down takes no work, restart or not
            info = self.engine.node(name)
            if (rec.state is PowerState.POWERING_DOWN and info is not None and info.state != "DOWN"
                    and info.drain_reason != POWER_DRAIN_REASON):
                self.engine.drain(name, POWER_DRAIN_REASON)
        if self._resume_downs:
            by_ce: dict[str, list[str]] = {}
            for name in sorted(self._resume_downs):
                by_ce.setdefault(self.planner.pool_of[name], []).append(name)
            calls += [("off", PowerOff(ce, tuple(names), "power-down begun before a restart")) for ce, names in by_ce.items()]
            self._resume_downs = set()
        for action in plan.actions:
            if isinstance(action, NodeFailed):
                log.error("%s; it is marked down, its job goes elsewhere", action.reason)
                self._audit("PowerUpFailed", action.node, action.reason)
            elif isinstance(action, PowerOff):
                for name in action.nodes:
                    if (info := self.engine.node(name)) is not None and info.state != "DOWN":
                        self.engine.drain(name, POWER_DRAIN_REASON)
                calls.append(("off", action))
            else:
                calls.append(("on", action))
        for job_id, why in plan.waiting.items():
            if self.waiting.get(job_id) != why:
                self.engine.note_wait(job_id, f"CAPACITY - {why}")
        self.waiting = plan.waiting
        return calls

    def _store(self, names: list[str]) -> None:
        if not names:
            return
        with self.store.transaction():
            for name in dict.fromkeys(names):
                rec = self.planner.records[name]
                self.store.put_resource(POWER_RESOURCE, name, 1, rec.state.value, {
                    "node": name, "state": rec.state.value, "since": rec.since, "reason": rec.reason,
                    "failed": rec.failed, "computeEnvironment": self.planner.pool_of[name],
                })

    def _audit(self, operation: str, nodes: str, outcome: str) -> None:
        self.engine.audit({
            "at": int(self._clock() * 1000), "user": "hpcbatch-head", "role": "admin", "via": "power",
            "accessKeyId": None, "operation": operation, "target": nodes, "outcome": outcome,
        })

    async def _call(self, kind: str, action: PowerOn | PowerOff) -> None:
        driver = self.drivers[action.compute_environment]
        nodes = list(action.nodes)
        shown = hostlist(nodes)
        op = "PowerOn" if kind == "on" else "PowerOff"
        log.info("%s %s (%s): %s", op, shown, action.compute_environment, action.reason)
        try:
            if kind == "on":
                await driver.power_on(nodes)
            else:
                await driver.power_off(nodes)
        except Exception as exc:  # a driver's failure (or bug) fails this call, never the head
            if not isinstance(exc, PowerError):
                log.exception("%s %s: the driver failed", op, shown)
                exc = PowerError(f"{type(exc).__name__}: {exc}")
            log.error("%s %s failed: %s", op, shown, exc)
            self._audit(op, shown, f"failed: {exc}")
            now = self._clock()
            if kind == "on":
                self._store(self.planner.power_failed(nodes, now, f"Power-up failed: {exc}"))
            else:  # still on: it takes work again
                for name in nodes:
                    rec = self.planner.records[name]
                    rec.state, rec.since, rec.reason = PowerState.ACTIVE, now, f"Power-down failed: {exc}"
                    rec.idle_since = now
                    if self.engine.has_node(name):
                        self.engine.drain(name, None)
                self._store(nodes)
            return
        self._audit(op, shown, "ok")
        if kind == "off":
            for name in nodes:  # surely off: its agent will not speak again
                if self.engine.has_node(name):
                    self.engine.node_lost(name, 0.0, "powered down (idle)")
                    self.engine.drain(name, None)
            self._store(self.planner.powered_off(nodes, self._clock()))

    async def serve(self, interval_s: float = PASS_INTERVAL_S) -> None:
        """A pass every ``interval_s``; driver calls run as owned tasks, one batch per pool and pass."""
        async with asyncio.TaskGroup() as tasks:
            while True:
                try:
                    calls = self.pass_once()
                except HpcbatchError as exc:  # the store is away: try again next pass
                    log.warning("power pass skipped: %s", exc)
                    calls = []
                except Exception:  # a bug in a pass: this pass is lost, not the head
                    log.exception("power pass failed; trying again in %g s", interval_s)
                    calls = []
                for kind, action in calls:
                    tasks.create_task(self._call(kind, action))
                await asyncio.sleep(interval_s)


# ------------------------------------------------------- the API's view (service.py calls these)

# computeResources members that only mean something on EC2/Fargate: accepted, ignored, said so.
EC2_ONLY_FIELDS = (
    "subnets", "securityGroupIds", "instanceRole", "instanceTypes", "imageId", "ec2KeyPair", "launchTemplate",
    "spotIamFleetRole", "bidPercentage", "ec2Configuration", "updateToLatestImageVersion",
)


def managed_status(name: str, ce_type: str, resources: dict[str, Any], pools: dict[str, PoolConfig]) -> tuple[str, str]:
    """(status, statusReason) of a compute environment: a MANAGED one is VALID only with a node pool."""
    if ce_type != "MANAGED":
        return "VALID", "ComputeEnvironment Healthy"
    pool = pools.get(name)
    if pool is None:
        return "INVALID", (
            f"MANAGED compute environment {name} has no node pool: hpcbatch manages capacity by powering nodes "
            f"it owns; add [power.pools.{name}] (nodes, driver) to the head's config (docs/managed.md), "
            "or create it UNMANAGED"
        )
    ignored = [k for k in EC2_ONLY_FIELDS if resources.get(k) not in (None, [], {}, "")]
    if str(resources.get("type", "")).startswith("FARGATE"):
        ignored.insert(0, f"type {resources['type']}")
    reason = f"ComputeEnvironment Healthy: node pool {pool.nodes} ({pool.driver} driver)"
    if ignored:
        reason += f"; ignored (EC2 only, no meaning on this cluster): {', '.join(ignored)}"
    return "VALID", reason


def describe_capacity(doc: dict[str, Any], manager: PowerManager | None,
                      pools: dict[str, PoolConfig] | None = None) -> dict[str, Any]:
    """A CE doc as DescribeComputeEnvironments shows it: a MANAGED one's status against the
    head's pools now (a pool added or removed since it was created counts), and its
    ``computeResources.desiredvCpus`` as the planner follows demand."""
    if doc.get("type") != "MANAGED":
        return doc
    name = doc.get("computeEnvironmentName", "")
    status, reason = managed_status(name, "MANAGED", doc.get("computeResources") or {}, pools or {})
    doc = {**doc, "status": status, "statusReason": reason}
    if manager is not None and name in manager.desired:
        doc["computeResources"] = {**(doc.get("computeResources") or {}), "desiredvCpus": int(manager.desired[name])}
    return doc


def list_power(
    nodes: list[dict[str, Any]], manager: PowerManager | None,
    known: Collection[str] | None = None, add_unseen: bool = True,
) -> list[dict[str, Any]]:
    """ListNodes rows with power states; with ``add_unseen``, pool nodes the head never heard
    of (not in ``known``, default the rows' names) are listed too (ListNodes' last page)."""
    if manager is None:
        return nodes
    seen = set(known) if known is not None else {n["name"] for n in nodes}
    for name in sorted(manager.planner.records, key=_natural) if add_unseen else ():
        if name not in seen:
            pool = manager.planner.pools[manager.planner.pool_of[name]]
            nodes.append({  # the shape of a ListNodes row (the console reads every key), nothing known yet
                "name": name, "hostname": None, "addresses": [], "state": "DOWN", "stateReason": "",
                "computeEnvironment": pool.compute_environment, "placementGroup": pool.placement_groups.get(name),
                "fabricInterface": None, "fabricAddress": None, "fabricKind": None, "fabricDevices": [],
                "vcpus": 0, "memoryMiB": 0, "gpus": [], "containerRuntime": None, "images": [],
                "allocatedVcpus": 0.0, "allocatedMemoryMiB": 0, "allocatedGpus": 0, "gpuHolders": {},
                "runningJobs": [], "lastHeartbeatAt": 0, "agentVersion": None, "quarantinedMessages": [],
            })
    for row in nodes:
        rec = manager.record(row["name"])
        if rec is None:
            continue
        row["powerState"], row["powerStateReason"], row["powerStateSince"] = rec.state.value, rec.reason, int(rec.since * 1000)
        if rec.failed:
            row["state"], row["stateReason"] = "DOWN", rec.reason
        elif row["state"] == "DOWN" or rec.state is PowerState.POWERING_DOWN:
            row["state"], row["stateReason"] = rec.state.value, rec.reason
    return nodes


def _natural(name: str) -> tuple[str, int]:
    head = name.rstrip("0123456789")
    return head, int(name[len(head):] or 0)


def pool_node_shapes(ce: str, pools: dict[str, PoolConfig], known: set[str]) -> list[tuple[str, float, int]]:
    """(node, vcpus, memory MiB) of a pool's nodes the head has no facts for: they can be powered up."""
    from ClusterShell.NodeSet import NodeSet

    pool = pools.get(ce)
    if pool is None:
        return []
    return [(n, pool.vcpus_per_node, pool.memory_mib_per_node or 1 << 40) for n in NodeSet(pool.nodes) if n not in known]


def power_metrics(manager: PowerManager | None) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """Prometheus families (head.metrics): pool nodes by power state, node-hours powered and saved."""
    if manager is None:
        return
    states = GaugeMetricFamily("hpcbatch_pool_nodes", "MANAGED pool nodes by power state",
                               labels=["compute_environment", "power_state"])
    counts: dict[tuple[str, str], int] = {(ce, s.value): 0 for ce in manager.planner.pools for s in PowerState}
    for name, rec in manager.planner.records.items():
        counts[(manager.planner.pool_of[name], rec.state.value)] += 1
    for (ce, state), n in sorted(counts.items()):
        states.add_metric([ce, state], n)
    yield states
    hours = CounterMetricFamily("hpcbatch_pool_node_hours", "Node-hours of MANAGED pool nodes: powered, and saved "
                                "(powered down)", labels=["kind"])
    hours.add_metric(["powered"], manager.planner.powered_s / 3600)
    hours.add_metric(["saved"], manager.planner.saved_s / 3600)
    yield hours
