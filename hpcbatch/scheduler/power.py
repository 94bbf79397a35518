"""Power planning for MANAGED compute environments: facts and time in, power actions out.

Rules / theory of operation (as Slurm's power saving: ResumeProgram, SuspendProgram,
SuspendTime, ResumeTimeout, ResumeRate):

* A MANAGED compute environment owns a **pool** of nodes that hpcbatch may power on and off.
  Every pool node has one power state: POWERED_DOWN, POWERING_UP, ACTIVE, POWERING_DOWN,
  with a reason and the time it was entered.
* **Demand**: a waiting job that fits none of the powered nodes' free capacity (ACTIVE and
  POWERING_UP, less what earlier waiting jobs of this pass claimed) powers up exactly the
  nodes it needs. Capacity is vCPUs, and memory and GPUs where the job asks for them (a
  pool's ``memory_mib_per_node`` 0 means its memory is not known: not checked; a pool with no
  ``gpus_per_node`` serves no GPU job). It powers up one node for a single-node job, ``numNodes`` whole nodes for a gang
  (counting whole free powered nodes first, and preferring the placement group that needs the
  fewest power-ups and can hold the whole gang, the tightest such group first, as the core's
  gang placement does; across groups only when no group can hold it, or when that needs no
  power-up at all).
* **Allocation strategy** (the compute environment's, as the core's ``nodeindex``): which
  powered room a waiting job is counted on is the node the core will place it on, so the
  power-ups are the ones the core's placement really needs. ``BEST_FIT`` (the default): the
  least room that holds it, so later jobs find the big rooms and the fewest nodes are powered;
  ``BEST_FIT_PROGRESSIVE``: nodes already given work first, then the tightest;
  ``SPREAD``: the most room first. Under every strategy a node powered up for one job takes
  the next jobs that fit its room before another node is powered (no job is given a power-up
  it does not need).
* **Bounds**: powered vCPUs (ACTIVE + POWERING_UP) never go above ``maxvCpus`` through a
  power-up, and idle nodes are powered down only while powered vCPUs stay at or above
  ``minvCpus``; below ``minvCpus``, nodes are powered up to reach it.
* **Suspend**: a registered node that ran nothing and was claimed by no waiting job for
  ``suspend_after_s`` is powered down (the last by name first: minvCpus keeps the first warm).
* **Resume timeout**: a node POWERING_UP that has not registered within ``resume_timeout_s``
  is failed: POWERED_DOWN with the reason, ``failed`` (never chosen again until it
  registers by itself), and powered off again; its job is placed elsewhere on the next pass.
* **Rate**: at most ``resume_rate`` nodes powered up per minute per pool (0: no limit).
  Actions are batched: one PowerOn and one PowerOff per pool and pass, as a hostlist.
* **Idempotence**: a node POWERING_UP is never powered up again; the states survive a head
  restart (the head stores them and ``restore``s them), so a restart mid-power-up does not
  power the same nodes twice.
* **Power changed by hand** (``driver_says``): a driver's answer that a node is Off while it
  is ACTIVE (or POWERING_UP for longer than ``boot_time_s``: a BMC may answer Off for
  seconds after accepting On) makes it POWERED_DOWN, its jobs lost; it may be powered up
  again. A node On while POWERED_DOWN is ``left_alone``: never powered on (or chosen) until
  its agent registers, or the driver says it is Off again. Unknown answers change nothing.

The planner reads no clock: ``now`` (seconds) is an argument of every call.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from ClusterShell.NodeSet import NodeSet


class PowerState(StrEnum):
    """A pool node's power state (docs/managed.md)."""

    POWERED_DOWN = "POWERED_DOWN"
    POWERING_UP = "POWERING_UP"
    ACTIVE = "ACTIVE"
    POWERING_DOWN = "POWERING_DOWN"


def hostlist(names: Iterable[str]) -> str:
    """``node[5-8]`` for nodes node5..node8 (ClusterShell's folding)."""
    return str(NodeSet.fromlist(sorted(names)))


@dataclass(frozen=True)
class Pool:
    """One MANAGED compute environment's nodes and power policy (validated by the head's config)."""

    compute_environment: str
    nodes: tuple[str, ...]
    vcpus_per_node: float
    min_vcpus: float = 0.0
    max_vcpus: float | None = None
    suspend_after_s: float = 300.0
    resume_timeout_s: float = 300.0
    boot_time_s: float = 60.0  # expected; shown in `why`
    resume_rate: int = 0  # nodes per minute; 0: no limit
    placement_groups: Mapping[str, str] = field(default_factory=dict)  # node -> group
    memory_mib_per_node: int = 0  # 0: not known, not checked
    gpus_per_node: int = 0
    allocation_strategy: str = "BEST_FIT"  # the CE's: BEST_FIT | BEST_FIT_PROGRESSIVE | SPREAD


@dataclass(frozen=True)
class Demand:
    """A waiting job: ``num_nodes`` nodes of ``vcpus`` each, from these compute environments in order."""

    job_id: str
    compute_environments: tuple[str, ...]
    vcpus: float
    num_nodes: int = 1
    memory_mib: int = 0  # per node
    gpus: int = 0  # per node


@dataclass(frozen=True)
class NodeView:
    """What the head sees of a registered (heartbeating, accepting) node."""

    name: str
    vcpus: float
    used_vcpus: float
    busy: bool  # runs or holds something
    memory_mib: int = 0  # 0: not known, not checked
    used_memory_mib: int = 0
    gpus: int = 0
    used_gpus: int = 0


@dataclass
class Room:
    """What a powered node can still take this pass (memory None: not known, not checked)."""

    vcpus: float
    memory_mib: int | None
    gpus: int

    @classmethod
    def of_pool(cls, pool: Pool) -> Room:
        """A whole node of ``pool``, as it registers once powered up."""
        return cls(pool.vcpus_per_node, pool.memory_mib_per_node or None, pool.gpus_per_node)

    @classmethod
    def of_view(cls, view: NodeView) -> Room:
        memory = view.memory_mib - view.used_memory_mib if view.memory_mib else None
        return cls(view.vcpus - view.used_vcpus, memory, view.gpus - view.used_gpus)

    def fits(self, demand: Demand) -> bool:
        return (self.vcpus >= demand.vcpus and self.gpus >= demand.gpus
                and (self.memory_mib is None or self.memory_mib >= demand.memory_mib))

    def take(self, demand: Demand) -> None:
        self.vcpus -= demand.vcpus
        self.gpus -= demand.gpus
        if self.memory_mib is not None:
            self.memory_mib -= demand.memory_mib

    def best_fit_key(self) -> tuple[int, float, int]:
        """BEST_FIT: the node with the least room left (GPUs first: kept for GPU jobs)."""
        return self.gpus, self.vcpus, self.memory_mib or 0

    def strategy_key(self, strategy: str, whole: bool) -> tuple[float, ...]:
        """The order the core's placement (``nodeindex``) tries nodes in, for ``strategy``."""
        if strategy == "SPREAD":  # the most room first
            return self.gpus, -self.vcpus, -(self.memory_mib or 0)
        if strategy == "BEST_FIT_PROGRESSIVE":  # nodes with work first, then the tightest
            return (1 if whole else 0, *self.best_fit_key())
        return self.best_fit_key()


@dataclass
class PassState:
    """One pass's capacity: each powered node's room, whether it is whole (runs nothing), the
    nodes claimed by earlier demands, and the power-ups decided so far (by CE)."""

    now: float
    free: dict[str, Room]
    whole: dict[str, bool]
    claimed: set[str] = field(default_factory=set)
    ups: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class NodePower:
    """One pool node's power record; stored by the head so that it survives a restart."""

    state: PowerState
    since: float
    reason: str
    failed: bool = False  # did not come up within resume_timeout_s: not chosen again
    idle_since: float | None = None
    left_alone: bool = False  # seen On while powered down (by hand): not powered on until it registers


@dataclass(frozen=True)
class PowerOn:
    """Power these nodes of one pool up (one driver call, a hostlist)."""

    compute_environment: str
    nodes: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class PowerOff:
    """Power these nodes of one pool down."""

    compute_environment: str
    nodes: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class NodeFailed:
    """A node did not register within resume_timeout_s: mark it down with the reason."""

    node: str
    reason: str


@dataclass(frozen=True)
class PowerSeen:
    """A driver's answer contradicted a node's record (its power was changed outside hpcbatch)."""

    node: str
    power: str  # what the driver said: "On" or "Off"
    reason: str  # "powered off outside hpcbatch, seen by redfish at 2026-12-06T18:40:00Z"
    lost: bool = False  # it was up: its agent and jobs are gone (the head handles it as a lost node)


@dataclass
class PowerPlan:
    """What one pass decided."""

    actions: list[PowerOn | PowerOff | NodeFailed] = field(default_factory=list)
    desired_vcpus: dict[str, float] = field(default_factory=dict)  # CE -> desiredvCpus
    waiting: dict[str, str] = field(default_factory=dict)  # job id -> why it waits ("powering up node[5-8], …")
    changed: list[str] = field(default_factory=list)  # nodes whose record changed (to store)
    # CE -> when its next power-up may begin, for pools whose resume_rate held one back this pass.
    rate_reached: dict[str, float] = field(default_factory=dict)


class PowerPlanner:
    """Pool nodes' power states, and the decisions of each pass; see the module docstring."""

    def __init__(self, pools: Iterable[Pool], now: float) -> None:
        self.pools = {p.compute_environment: p for p in pools}
        self.records: dict[str, NodePower] = {}
        self.pool_of: dict[str, str] = {}
        for pool in self.pools.values():
            for name in pool.nodes:
                self.pool_of[name] = pool.compute_environment
                self.records[name] = NodePower(PowerState.POWERED_DOWN, now, "Powered down: not yet needed")
        self._ups: dict[str, list[float]] = {ce: [] for ce in self.pools}  # power-up times (rate)
        self._last = now
        self.powered_s = 0.0  # node-seconds powered (ACTIVE, POWERING_UP, POWERING_DOWN)
        self.saved_s = 0.0  # node-seconds powered down
        self.claimed_for: dict[str, str] = {}  # node -> job id whose power-up it serves
        self._up_reason: dict[str, str] = {}  # per pass: node -> why it is powered up
        self._wanted: set[str] = set()  # per pass: nodes a waiting job fits on (kept on)

    def restore(self, name: str, record: NodePower) -> None:
        """A stored record (after a head restart); unknown nodes are ignored."""
        if name in self.records:
            self.records[name] = record

    def _set(self, plan: PowerPlan, name: str, state: PowerState, now: float, reason: str) -> None:
        rec = self.records[name]
        rec.state, rec.since, rec.reason = state, now, reason
        plan.changed.append(name)

    def powered_off(self, nodes: Iterable[str], now: float) -> list[str]:
        """The driver says these nodes are off: POWERED_DOWN. Returns the nodes changed."""
        out = []
        for name in nodes:
            rec = self.records.get(name)
            if rec is not None and rec.state is PowerState.POWERING_DOWN:
                rec.state, rec.since, rec.reason = PowerState.POWERED_DOWN, now, "Powered down: idle"
                out.append(name)
        return sorted(out)

    def power_failed(self, nodes: Iterable[str], now: float, why: str) -> list[str]:
        """The driver failed to power these nodes up: failed, POWERED_DOWN with the driver's reason."""
        out = []
        for name in nodes:
            rec = self.records.get(name)
            if rec is not None and rec.state is PowerState.POWERING_UP:
                rec.state, rec.since, rec.reason, rec.failed = PowerState.POWERED_DOWN, now, why, True
                out.append(name)
        return sorted(out)

    def driver_says(self, answers: Mapping[str, str], now: float, driver: str) -> list[PowerSeen]:
        """A driver's word on nodes' power (Redfish's: On, Off, PoweringOn, PoweringOff, Unknown)
        against their records: the records changed accordingly (module docstring), and what changed."""
        at = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        out = []
        for name, said in sorted(answers.items()):
            rec = self.records.get(name)
            seen = None if rec is None else self._seen(name, rec, said, now)
            if rec is None or seen is None:
                continue
            if seen == "off":
                what = f"powered off outside hpcbatch, seen by {driver} at {at}"
                if rec.state is PowerState.POWERING_UP:
                    what += " (or its power-up did not take)"
                rec.state, rec.idle_since = PowerState.POWERED_DOWN, None
                self.claimed_for.pop(name, None)
            elif seen == "on":
                what = (f"on outside hpcbatch, seen by {driver} at {at}: "
                        "not powered on again; it joins when its agent registers")
            else:
                what = f"off again, seen by {driver} at {at}: it may be powered up"
            rec.since, rec.reason, rec.left_alone = now, what[:1].upper() + what[1:], seen == "on"
            out.append(PowerSeen(name, "On" if seen == "on" else "Off", what, lost=seen == "off"))
        return out

    def _seen(self, name: str, rec: NodePower, said: str, now: float) -> str | None:
        """What a driver's answer means for one record: "off", "on", "off again" or None (nothing)."""
        if said == "Off" and rec.state is PowerState.ACTIVE:
            return "off"
        if said == "Off" and rec.state is PowerState.POWERING_UP:
            boot_s = self.pools[self.pool_of[name]].boot_time_s
            return "off" if now - rec.since >= boot_s else None
        if rec.state is PowerState.POWERED_DOWN and said in ("On", "PoweringOn") and not rec.left_alone:
            return "on"
        if rec.state is PowerState.POWERED_DOWN and said == "Off" and rec.left_alone:
            return "off again"
        return None

    @staticmethod
    def _powered(rec: NodePower) -> bool:
        return rec.state in (PowerState.ACTIVE, PowerState.POWERING_UP)

    def plan(self, now: float, demands: Iterable[Demand], views: Mapping[str, NodeView]) -> PowerPlan:
        """One pass: observe registrations, fail slow boots, serve demand, keep bounds, suspend idle nodes."""
        plan = PowerPlan()
        self._account(now)
        self._observe(plan, now, views)
        state = self._capacity(now, views)
        for demand in demands:
            self._serve(plan, state, demand)
        claimed, ups = state.claimed, state.ups
        for ce, pool in self.pools.items():
            self._keep_minimum(now, pool, ups[ce])
            self._rate_limit(now, pool, ups[ce], plan)
            if ups[ce]:
                for name in ups[ce]:
                    self._set(plan, name, PowerState.POWERING_UP, now, self._up_reason.get(name, "Powering up"))
                    self._ups[ce].append(now)
                plan.actions.append(PowerOn(ce, tuple(sorted(ups[ce])), f"powering up {hostlist(ups[ce])}"))
            downs = self._suspend(now, pool, views, claimed)
            if downs:
                for name in downs:
                    self._set(plan, name, PowerState.POWERING_DOWN, now,
                              f"Powering down: idle for {pool.suspend_after_s:g} s (suspend_after_s)")
                plan.actions.append(PowerOff(ce, tuple(downs), f"idle for {pool.suspend_after_s:g} s"))
            powered = sum(pool.vcpus_per_node for n in pool.nodes if self._powered(self.records[n]))
            plan.desired_vcpus[ce] = min(max(powered, pool.min_vcpus), pool.max_vcpus or math.inf)
        self._up_reason.clear()
        return plan

    def _account(self, now: float) -> None:
        dt = max(0.0, now - self._last)
        self._last = now
        for rec in self.records.values():
            if rec.state is PowerState.POWERED_DOWN:
                self.saved_s += dt
            else:
                self.powered_s += dt

    def _observe(self, plan: PowerPlan, now: float, views: Mapping[str, NodeView]) -> None:
        self._up_reason, self._wanted = {}, set()
        failed: dict[str, list[str]] = {}  # CE -> nodes to power off again (one batch per pool)
        for name, rec in self.records.items():
            pool = self.pools[self.pool_of[name]]
            seen = name in views
            if seen and rec.state in (PowerState.POWERING_UP, PowerState.POWERED_DOWN):
                self._set(plan, name, PowerState.ACTIVE, now, "Registered")
                rec.failed, rec.idle_since, rec.left_alone = False, None, False
                self.claimed_for.pop(name, None)
            elif rec.state is PowerState.POWERING_UP and now - rec.since >= pool.resume_timeout_s:
                reason = (f"Node {name} did not register within resume_timeout_s "
                          f"{pool.resume_timeout_s:g} s of its power-up")
                self._set(plan, name, PowerState.POWERED_DOWN, now, reason)
                rec.failed = True
                self.claimed_for.pop(name, None)
                plan.actions.append(NodeFailed(name, reason))
                failed.setdefault(pool.compute_environment, []).append(name)
            elif rec.state is PowerState.ACTIVE and not seen:
                # Lost or powered off by hand: not powered as far as capacity goes.
                self._set(plan, name, PowerState.POWERED_DOWN, now, "Not registered any more (lost or powered off by hand)")
            if seen and rec.state is PowerState.ACTIVE:
                if views[name].busy:
                    rec.idle_since = None
                elif rec.idle_since is None:
                    rec.idle_since = now
        for ce, names in failed.items():
            plan.actions.append(PowerOff(ce, tuple(names), "did not register within resume_timeout_s"))

    def _candidates(self, pool: Pool, taken: Iterable[str]) -> list[str]:
        taken = set(taken)
        return [n for n in sorted(pool.nodes)
                if self.records[n].state is PowerState.POWERED_DOWN and not self.records[n].failed
                and not self.records[n].left_alone and n not in taken]

    def _room(self, pool: Pool, ups: list[str]) -> int:
        """How many more nodes may be powered up without passing maxvCpus."""
        if pool.max_vcpus is None:
            return len(pool.nodes)
        powered = sum(1 for n in pool.nodes if self._powered(self.records[n])) + len(ups)
        return max(0, int((pool.max_vcpus + 1e-9) // pool.vcpus_per_node) - powered)

    def _capacity(self, now: float, views: Mapping[str, NodeView]) -> PassState:
        """Capacity left this pass: the room of powered nodes (a node booting counts whole)."""
        state = PassState(now, {}, {}, ups={ce: [] for ce in self.pools})
        for name, rec in self.records.items():
            if rec.state is PowerState.ACTIVE and name in views:
                state.free[name] = Room.of_view(views[name])
                state.whole[name] = not views[name].busy
            elif rec.state is PowerState.POWERING_UP:
                state.free[name] = Room.of_pool(self.pools[self.pool_of[name]])
                state.whole[name] = True
        return state

    def _serve(self, plan: PowerPlan, state: PassState, demand: Demand) -> None:
        """The first of the demand's compute environments that can hold it, powered or powered up."""
        for ce in demand.compute_environments:
            pool = self.pools.get(ce)
            if pool is None:
                continue
            if demand.num_nodes <= 1:
                if self._serve_one(plan, state, demand, pool):
                    return
            elif Room.of_pool(pool).fits(demand) and self._serve_gang(plan, state, demand, pool):
                return

    def _serve_one(self, plan: PowerPlan, state: PassState, demand: Demand, pool: Pool) -> bool:
        mine = [n for n in sorted(pool.nodes) if n in state.free and n not in state.claimed]
        fit = [n for n in mine if state.free[n].fits(demand)]
        if fit:  # the node the core's allocation strategy will place it on
            node = min(fit, key=lambda n: (state.free[n].strategy_key(pool.allocation_strategy, state.whole[n]), n))
            state.free[node].take(demand)
            state.whole[node] = False
            self._wanted.add(node)
            self._note_wait(plan, state.now, demand, [node], pool)
            return True
        if not Room.of_pool(pool).fits(demand):
            return False
        pick = self._candidates(pool, state.ups[pool.compute_environment])[:1]
        if not pick or self._room(pool, state.ups[pool.compute_environment]) < 1:
            return False
        self._power_for(plan, state, demand, pool, pick)
        state.free[pick[0]].take(demand)
        state.whole[pick[0]] = False
        state.claimed.discard(pick[0])  # a single job's node may take more jobs in the same pass
        return True

    def _serve_gang(self, plan: PowerPlan, state: PassState, demand: Demand, pool: Pool) -> bool:
        """Whole nodes, idle powered ones first, preferably in one placement group."""
        whole = Room.of_pool(pool)
        idle = [n for n in sorted(pool.nodes) if n in state.free and n not in state.claimed and state.whole.get(n)
                and state.free[n].vcpus >= whole.vcpus]
        down = self._candidates(pool, state.ups[pool.compute_environment])
        room = self._room(pool, state.ups[pool.compute_environment])
        for have, need in self._gang_options(pool, idle, down, demand.num_nodes):
            if len(need) > room:
                continue  # maxvCpus: a way with fewer power-ups may still do
            state.claimed.update(have)
            if need:
                self._power_for(plan, state, demand, pool, need)
            else:
                self._note_wait(plan, state.now, demand, have, pool)
            return True
        return False

    @staticmethod
    def _gang_options(pool: Pool, idle: list[str], down: list[str], n: int) -> list[tuple[list[str], list[str]]]:
        """The ways to place a gang of ``n``, best first, as (idle nodes to use, nodes to power
        up): inside one placement group, the fewest power-ups, then the tightest group (the
        fewest nodes it could use: a large group stays whole for a larger gang), then by name;
        across groups last, or first when it needs no power-up and every group needs some."""
        groups: dict[str, tuple[list[str], list[str]]] = {}
        for node in idle:
            groups.setdefault(pool.placement_groups.get(node, ""), ([], []))[0].append(node)
        for node in down:
            groups.setdefault(pool.placement_groups.get(node, ""), ([], []))[1].append(node)
        ranked = sorted(
            (max(0, n - len(have)), len(have) + len(can), group, have, can)
            for group, (have, can) in groups.items() if group and len(have) + len(can) >= n
        )
        options = [(have[:n], can[:need]) for need, _size, _group, have, can in ranked]
        if len(idle) + len(down) >= n:  # across groups (or a pool without groups)
            across = (idle[:n], down[:max(0, n - len(idle))])
            if not across[1] and all(need for need, *_ in ranked):
                options.insert(0, across)
            else:
                options.append(across)
        return options

    def _power_for(self, plan: PowerPlan, state: PassState, demand: Demand, pool: Pool, nodes: list[str]) -> None:
        state.ups[pool.compute_environment].extend(nodes)
        for n in nodes:
            state.free[n] = Room.of_pool(pool)
            state.claimed.add(n)
            self.claimed_for[n] = demand.job_id
            self._up_reason[n] = f"Powering up for job {demand.job_id}"
        plan.waiting[demand.job_id] = (f"powering up {hostlist(nodes)}, expected in ~{pool.boot_time_s:.0f} s")

    def _note_wait(self, plan: PowerPlan, now: float, demand: Demand, nodes: list[str], pool: Pool) -> None:
        booting = [n for n in nodes if self.records.get(n) and self.records[n].state is PowerState.POWERING_UP]
        if booting:
            left = max(0.0, min(self.records[n].since for n in booting) + pool.boot_time_s - now)
            # In steps of 5 s: the reason (stored with the job) changes at most every 5 s.
            plan.waiting[demand.job_id] = f"powering up {hostlist(booting)}, expected in ~{5 * math.ceil(left / 5):.0f} s"

    def _keep_minimum(self, now: float, pool: Pool, ups: list[str]) -> None:
        powered = sum(1 for n in pool.nodes if self._powered(self.records[n])) + len(ups)
        want = math.ceil(pool.min_vcpus / pool.vcpus_per_node - 1e-9) if pool.vcpus_per_node else 0
        for n in self._candidates(pool, ups)[:max(0, want - powered)]:
            ups.append(n)
            self._up_reason[n] = f"Powering up: minvCpus {pool.min_vcpus:g}"

    def _rate_limit(self, now: float, pool: Pool, ups: list[str], plan: PowerPlan) -> None:
        if pool.resume_rate <= 0:
            return
        recent = [t for t in self._ups[pool.compute_environment] if now - t < 60.0]
        self._ups[pool.compute_environment] = recent
        allowed = max(0, pool.resume_rate - len(recent))
        if ups[allowed:]:  # the next slot frees when the oldest power-up of the minute ages out
            plan.rate_reached[pool.compute_environment] = (min(recent) if recent else now) + 60.0
        for n in ups[allowed:]:
            job = self.claimed_for.pop(n, None)
            if job is not None:
                plan.waiting[job] = f"waiting for a power-up: resume_rate {pool.resume_rate} nodes/min reached"
        del ups[allowed:]

    def _suspend(self, now: float, pool: Pool, views: Mapping[str, NodeView], claimed: set[str]) -> list[str]:
        powered = sum(1 for n in pool.nodes if self._powered(self.records[n]))
        keep = math.ceil(pool.min_vcpus / pool.vcpus_per_node - 1e-9) if pool.vcpus_per_node else 0
        out = []
        for name in sorted(pool.nodes, reverse=True):  # the first nodes by name are the ones kept warm
            rec = self.records[name]
            if (rec.state is PowerState.ACTIVE and name in views and not views[name].busy and name not in claimed
                    and name not in self._wanted
                    and rec.idle_since is not None and now - rec.idle_since >= pool.suspend_after_s
                    and powered - len(out) > keep):
                out.append(name)
        return sorted(out)
