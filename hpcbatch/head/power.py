"""Power management: fencing a lost node by powering it off (STONITH, as Pacemaker does), and MANAGED pools.

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
hostlist. The drivers themselves live in hpcbatch.head.powerdrivers, one module each:
``command`` (Slurm's ResumeProgram/SuspendProgram), ``redfish`` and ``ipmi`` (BMCs),
``cloud`` (EC2 instances from a launch template) and ``netns`` (the test bed's: real agents
started and stopped). A pool's driver also fences its lost nodes. Every ``state_poll_s`` the
manager asks each pool's driver its nodes' power (``state``), so a node powered off or on by
hand is noticed (``PowerManager.poll_state``). Below: the config, fencing, the manager, then
what the API shows (status, desiredvCpus, power states, metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from hpcbatch.errors import HpcbatchError
from hpcbatch.head.containers import CONTAINER_FEATURE
from hpcbatch.head.powerdrivers.base import PoolDriver, PowerDriver, PowerError
from hpcbatch.head.powerdrivers.command import CommandDriver, ProgramDriver
from hpcbatch.head.powerdrivers.config import PoolConfig, PowerConfig, PowerDriverConfig
from hpcbatch.head.powerdrivers.netns import NetnsDriver
from hpcbatch.head.powerdrivers.redfish import RedfishDriver
from hpcbatch.scheduler.events import NodePowerChanged, PowerRateReached
from hpcbatch.scheduler.power import (
    Demand,
    NodeFailed,
    NodePower,
    NodeView,
    Pool,
    PowerOff,
    PowerOn,
    PowerPlanner,
    PowerSeen,
    PowerState,
    hostlist,
)

log = logging.getLogger("hpcbatch.power")


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


def make_pool_driver(config: PoolConfig) -> PoolDriver:
    """The driver a pool's config names."""
    if config.driver == "redfish":
        return RedfishDriver(config)
    if config.driver == "netns":
        return NetnsDriver(config.agent_config_dir, config.netns_layout, config.timeout_s)
    if config.driver == "cloud":
        from hpcbatch.head.powerdrivers.cloud import CloudDriver

        return CloudDriver(config)
    if config.driver == "ipmi":
        from hpcbatch.head.powerdrivers.ipmi import IpmiDriver

        return IpmiDriver(config)
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
        memory_mib_per_node=config.memory_mib_per_node, gpus_per_node=config.gpus_per_node,
    )


class TrackedDriver:
    """A pool's driver whose power calls, whoever makes them (the manager, or STONITH through
    ``PoolFence``), run one at a time per node (a power-up waits for a fence's power-off of the
    same node to end, never overlaps it), and whose nodes count as in flight meanwhile: a state
    poll leaves them alone, their power being ours to change (``started`` tells a poll that a
    call began, and perhaps ended, while it asked)."""

    def __init__(self, driver: PoolDriver) -> None:
        self.driver = driver
        self.knows_state = bool(getattr(driver, "knows_state", True))
        self.in_flight: Counter[str] = Counter()  # node -> power calls running or waiting
        self.started: Counter[str] = Counter()  # node -> power calls ever begun
        self._locks: dict[str, asyncio.Lock] = {}

    async def _marked(self, nodes: list[str], call: Callable[[list[str]], Awaitable[None]]) -> None:
        self.in_flight.update(nodes)
        self.started.update(nodes)
        try:
            async with contextlib.AsyncExitStack() as held:
                for node in sorted(set(nodes)):  # always in the same order: no two calls wait on each other
                    await held.enter_async_context(self._locks.setdefault(node, asyncio.Lock()))
                await call(nodes)
        finally:
            self.in_flight.subtract(nodes)
            for node in nodes:
                if self.in_flight[node] <= 0:
                    del self.in_flight[node]

    async def power_on(self, nodes: list[str]) -> None:
        await self._marked(nodes, self.driver.power_on)

    async def power_off(self, nodes: list[str]) -> None:
        await self._marked(nodes, self.driver.power_off)

    async def state(self, nodes: list[str]) -> dict[str, str]:
        return await self.driver.state(nodes)


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
        self.drivers = {name: TrackedDriver(make_pool_driver(c)) for name, c in pools.items()}
        now = clock_s()
        self.planner = PowerPlanner([pool_of(n, c) for n, c in pools.items()], now)
        for doc in self.store.list_resources(POWER_RESOURCE):
            self.planner.restore(doc["node"], NodePower(
                PowerState(doc["state"]), float(doc["since"]), doc["reason"], bool(doc.get("failed")),
                left_alone=bool(doc.get("leftAlone")),
            ))
        self.desired: dict[str, float] = {}
        self._told = False  # every node's power told to the scheduler (the first stored pass does)
        self._rate_told: dict[str, float] = {}  # CE -> the resume_rate hold last told (planner's clock)
        # Power-downs a previous head began: the driver call may never have run; it is safe to repeat.
        self._resume_downs = {name for name, rec in self.planner.records.items() if rec.state is PowerState.POWERING_DOWN}
        self._calls: asyncio.Queue[tuple[str, PowerOn | PowerOff]] = asyncio.Queue()
        # The drivers' word on power (power changed by hand): see poll_state.
        self._polled_at: dict[str, float] = {}  # CE -> when its driver was last asked
        self._polling: set[str] = set()  # CEs whose driver is being asked now
        # CEs whose driver cannot tell (command): never asked; registration tells.
        self._blind = {ce for ce, driver in self.drivers.items() if not driver.knows_state}

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
                allocation_strategy=res.get("allocationStrategy", "BEST_FIT"),
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
                out.append((-priority, job.created_at, job.job_id, i, Demand(
                    job.job_id, mine, vcpus, n, int(job.resources.memory_mib), int(job.resources.gpus))))
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
            views[name] = NodeView(name, float(info.facts.vcpus), float(usage[0]), busy, int(info.facts.memory_mib),
                                   int(usage[1]), len(info.facts.gpus), int(usage[2]))
        return views

    def pass_once(self) -> list[tuple[str, PowerOn | PowerOff]]:
        """Plan and apply one pass; returns the driver calls to make (``serve`` makes them)."""
        now = self._clock()
        queues = self._bounds()
        plan = self.planner.plan(now, self._demands(queues), self._views())
        self.desired = plan.desired_vcpus
        self._store_pass(plan.changed)
        self._tell_rate(plan.rate_reached)
        for name, rec in self.planner.records.items():  # a node on its way down takes no work, restart or not
            info = self.engine.node(name)
            if (rec.state is PowerState.POWERING_DOWN and info is not None and info.state != "DOWN"
                    and info.drain_reason != POWER_DRAIN_REASON):
                self.engine.drain(name, POWER_DRAIN_REASON)
        calls = self._resumed_power_downs()
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
        # The planner's per-job notes (plan.waiting) are not written to the jobs: a waiting job's
        # statusReason has one owner, the scheduler, which words a wait on power from the facts
        # ``_tell`` gives it (hpcbatch.scheduler.gang ``power_note``).
        return calls

    def _tell_rate(self, reached: dict[str, float]) -> None:
        """Tell the scheduler (on change) which pools' resume_rate holds a power-up back, and till
        when, on its clock: the wait reasons of the jobs that want those nodes say so."""
        for ce in sorted(set(reached) | set(self._rate_told)):
            until = reached.get(ce, 0.0)
            if self._rate_told.get(ce, 0.0) == until:
                continue
            self._rate_told[ce] = until
            until_s = self.engine.now_ms() / 1000 + (until - self._clock()) if until else 0.0
            self.engine.feed(PowerRateReached(self.engine.event_id(), ce, until_s))

    def _resumed_power_downs(self) -> list[tuple[str, PowerOn | PowerOff]]:
        """The power-offs a previous head began (once, on this head's first pass), one per pool."""
        if not self._resume_downs:
            return []
        by_ce: dict[str, list[str]] = {}
        for name in sorted(self._resume_downs):
            by_ce.setdefault(self.planner.pool_of[name], []).append(name)
        self._resume_downs = set()
        return [("off", PowerOff(ce, tuple(names), "power-down begun before a restart")) for ce, names in by_ce.items()]

    def _store_pass(self, changed: list[str]) -> None:
        """A pass's changed records, stored and told to the scheduler; this head's first pass
        tells every pool node's (the scheduler knows none yet: a start, a restart, a failover)."""
        if self._told:
            self._store(changed)
            return
        self._store(changed, tell=False)
        self._tell(list(self.planner.records))
        self._told = True

    def _store(self, names: list[str], tell: bool = True) -> None:
        """Store the changed records, then (``tell``) tell the scheduler (``_tell``)."""
        if not names:
            return
        with self.store.transaction():
            for name in dict.fromkeys(names):
                rec = self.planner.records[name]
                self.store.put_resource(POWER_RESOURCE, name, 1, rec.state.value, {
                    "node": name, "state": rec.state.value, "since": rec.since, "reason": rec.reason,
                    "failed": rec.failed, "computeEnvironment": self.planner.pool_of[name],
                    "leftAlone": rec.left_alone,
                })
        if tell:
            self._tell(names)

    def _tell(self, names: list[str]) -> None:
        """``NodePowerChanged`` for each of ``names`` not registered with the head: the scheduler
        plans with a node powered down or booting from when it is expected up (hpcbatch.scheduler.booting).
        Only on change (every event clears the scheduler's caches), once for every node at start."""
        for name in dict.fromkeys(names):
            fact = self.fact(name)
            if fact is not None:
                self.engine.feed(fact)

    def fact(self, name: str) -> NodePowerChanged | None:
        """What the scheduler is told of pool node ``name``; None while its agent is registered
        (its ``NodeUp`` tells). ``since_s`` goes on the scheduler's clock (``Tick``: the
        engine's), whatever this manager's clock is."""
        info = self.engine.node(name)
        if info is not None and info.facts is not None and info.state != "DOWN":
            return None
        rec = self.planner.records[name]
        ce = self.planner.pool_of[name]
        pool, config = self.planner.pools[ce], self.configs[ce]
        since_s = self.engine.now_ms() / 1000 - (self._clock() - rec.since)
        # Failed, or powered on by hand (never powered on by us): not planned with, until it registers.
        state = "FAILED" if rec.failed else "LEFT_ALONE" if rec.left_alone else rec.state.value
        return NodePowerChanged(
            self.engine.event_id(), name, ce, state,
            boot_s=pool.boot_time_s, vcpus=pool.vcpus_per_node, memory_mib=pool.memory_mib_per_node,
            gpus=pool.gpus_per_node, since_s=since_s, placement_group=pool.placement_groups.get(name),
            features=frozenset((CONTAINER_FEATURE,)) if config.container_runtime else frozenset(),
            resume_timeout_s=pool.resume_timeout_s,
        )

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
            # A driver that names its failed nodes (one dead BMC of a batch) fails only those:
            # the others' power changed, and is handled as a success below.
            failed = [n for n in nodes if exc.nodes is None or n in exc.nodes] or nodes
            self._failed(kind, op, failed, exc)
            nodes = [n for n in nodes if n not in failed]
            if not nodes:
                return
            shown = hostlist(nodes)
        self._audit(op, shown, "ok")
        if kind == "off":
            for name in nodes:  # surely off: its agent will not speak again
                if self.engine.has_node(name):
                    self.engine.node_lost(name, 0.0, "powered down (idle)")
                    self.engine.drain(name, None)
            self._store(self.planner.powered_off(nodes, self._clock()))

    def _failed(self, kind: str, op: str, nodes: list[str], exc: PowerError) -> None:
        """A power call that failed for ``nodes``: a power-up's nodes are failed (DOWN with the
        reason); a power-down's are still on, and take work again."""
        shown = hostlist(nodes)
        log.error("%s %s failed: %s", op, shown, exc)
        self._audit(op, shown, f"failed: {exc}")
        now = self._clock()
        if kind == "on":
            self._store(self.planner.power_failed(nodes, now, f"Power-up failed: {exc}"))
            return
        for name in nodes:
            rec = self.planner.records[name]
            rec.state, rec.since, rec.reason = PowerState.ACTIVE, now, f"Power-down failed: {exc}"
            rec.idle_since = now
            if self.engine.has_node(name):
                self.engine.drain(name, None)
        self._store(nodes)

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
                for ce in self.polls_due():
                    tasks.create_task(self.poll_state(ce))
                await asyncio.sleep(interval_s)

    # ------------------------------------------------ the drivers' word: power changed by hand
    def polls_due(self) -> list[str]:
        """The pools whose driver is due to be asked its nodes' power (every ``state_poll_s``, one
        at a time per pool); each is marked asked."""
        now = self._clock()
        due = []
        for ce, config in self.configs.items():
            last = self._polled_at.get(ce)
            if (config.state_poll_s <= 0 or ce in self._blind or ce in self._polling
                    or (last is not None and now - last < config.state_poll_s)):
                continue
            self._polled_at[ce] = now
            self._polling.add(ce)
            due.append(ce)
        return due

    async def poll_state(self, ce: str) -> list[PowerSeen]:
        """Ask the pool's driver for its nodes' power (one batch, a hostlist) and act on what
        contradicts the records (hpcbatch.scheduler.power ``driver_says``): a node powered off by
        hand is handled as a lost node whose power-off is known; one powered on by hand is left
        alone. Nodes a power call of ours is busy with, or that changed meanwhile, are skipped."""
        driver = self.drivers[ce]

        def now_of(node: str) -> tuple[PowerState, float, int]:
            rec = self.planner.records[node]
            return rec.state, rec.since, driver.started[node]

        try:
            asked = {n: now_of(n) for n in self.planner.pools[ce].nodes
                     if not driver.in_flight[n] and self.planner.records[n].state is not PowerState.POWERING_DOWN}
            answers = await driver.state(list(asked)) if asked else {}
            current = {n: said for n, said in answers.items()
                       if n in asked and not driver.in_flight[n] and now_of(n) == asked[n]}
            return self.apply_seen(ce, current)
        except PowerError as exc:
            log.warning("power state of pool %s's nodes unknown this time: %s", ce, exc)
        except Exception:  # a driver's bug loses this poll, not the head
            log.exception("power state of pool %s's nodes: the driver failed", ce)
        finally:
            self._polling.discard(ce)
        return []

    def apply_seen(self, ce: str, answers: dict[str, str]) -> list[PowerSeen]:
        """The driver's answers about pool ``ce``'s nodes: records changed, stored and audited; a
        node that was up and is off has its attempts failed as lost, their retries free at once."""
        seen = self.planner.driver_says(answers, self._clock(), self.configs[ce].driver)
        self._store([s.node for s in seen], tell=False)  # told below, once a lost node is gone
        for s in seen:
            log.warning("node %s: %s", s.node, s.reason)
            self._audit("PowerOffSeen" if s.power == "Off" else "PowerOnSeen", s.node, s.reason)
            if s.lost and self.engine.has_node(s.node):
                # Off is a fact: its attempts are dead, as if it had been silent past any fence, so
                # their retries are not held (nor is it fenced again); older holds on it are freed.
                self.engine.node_lost(s.node, math.inf, s.reason)
                self.engine.node_fenced(s.node)
        self._tell([s.node for s in seen])
        return seen


# ------------------------------------------------------- the API's view (service.py calls these)
