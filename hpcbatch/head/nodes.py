"""The node registry: what the head knows of every node, and the retries held for lost ones.

It keeps each node's facts, state and liveness (register, heartbeat, GPU health, drain,
lost), picks the compute environment a node joins (by name, or by label through a CE's
``hpcbatch:nodeSelector`` tag), and holds the retries of attempts lost with a node until its
agent has surely fenced them (hpcbatch.fencing).

Every state change goes through the node state table (hpcbatch.model.nodes). Time is an
argument: the registry reads no clock and sets no timer. The engine (hpcbatch.head.engine),
which owns the timers, passes ``now`` (its monotonic clock, seconds; wall-clock milliseconds
for heartbeats) and asks ``next_deadline`` when to wake it. It knows nodes, not jobs: which
job an id names, and what becomes of it, is the engine's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hpcbatch import protocol as p
from hpcbatch.fencing import next_hold_deadline, retry_hold_s
from hpcbatch.head import gpus as head_gpus
from hpcbatch.head.faults import Quarantined
from hpcbatch.model.jobs import FenceHold
from hpcbatch.model.nodes import NodeEvent, NodeState, next_node_state

NODE_SELECTOR_TAG = "hpcbatch:nodeSelector"  # CE tag: nodes with this label join it


@dataclass
class NodeInfo:
    """What the head knows of one node: its facts, state and liveness."""

    facts: p.NodeFacts | None
    instance_id: str = ""
    state: NodeState = NodeState.DOWN  # every change through hpcbatch.model.nodes
    state_reason: str = "Never registered"
    last_heartbeat_at: int = 0
    jobs: set[str] = field(default_factory=set)  # jobs with an attempt in flight here
    drain_reason: str | None = None  # set by an admin: no new work (DRAINING, then DRAINED)
    allocations: tuple[tuple[str, Any], ...] = ()  # as last told to the scheduler
    gpu_unhealthy: dict[str, str] = field(default_factory=dict)  # GPU uuid -> why out of service
    gpu_utilization: dict[str, float] = field(default_factory=dict)  # GPU uuid -> busy 0..1, last heartbeat
    images: list[str] = field(default_factory=list)  # container images in its cache, as it reports
    missing: dict[str, int] = field(default_factory=dict)  # attempt -> heartbeats in a row that did not list it
    quarantined: list[Quarantined] = field(default_factory=list)  # its messages the head set aside

    @property
    def up(self) -> bool:
        """Registered and not given up (ACTIVE, DRAINING or DRAINED)."""
        return self.state != NodeState.DOWN


@dataclass
class HeldRetry:
    """The live side of a job's ``fence_hold``: its deadline on the head's monotonic clock."""

    node: str
    attempt_id: str
    deadline: float
    still_running: bool = False  # the node came back and reported it alive: killed, its exit awaited


@dataclass(frozen=True)
class FencingConfig:
    """How long a lost node's attempts may still run: agents kill theirs after ``fence_after_s``
    unheard (0: the head does not wait), heartbeats every ``heartbeat_interval_s``."""

    fence_after_s: float = 0.0
    heartbeat_interval_s: float = 1.0


class NodeRegistry:
    """Every node the head knows, by name; see the module docstring."""

    def __init__(self, fencing: FencingConfig | None = None) -> None:
        self._fencing = fencing or FencingConfig()
        self.nodes: dict[str, NodeInfo] = {}
        self._names: tuple[set[str], list[str]] | None = None  # (the names, sorted) as last sorted
        # Counts changes to what nodes are known with which facts and compute environments
        # (SubmitJob's satisfiability check rebuilds its node shapes only when it moves).
        self.shapes_version = 0
        self._recorded: dict[str, tuple[str, str]] = {}  # node -> (state, reason) last put in the stream
        self._selectors: dict[str, tuple[str, str]] = {}  # CE -> label key=value it takes
        self._holds: dict[str, HeldRetry] = {}  # job id -> its held retry
        # Multi-node job -> when its lost node's fence is surely up (monotonic; the try is ending).
        self._gang_holds: dict[str, float] = {}

    # ------------------------------------------------------------------ reads
    def get(self, name: str) -> NodeInfo | None:
        return self.nodes.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.nodes

    def __len__(self) -> int:
        return len(self.nodes)

    def names(self) -> list[str]:
        """Every node's name, sorted; re-sorted only when the set of nodes changed (10,000 nodes)."""
        nodes = self.nodes
        cached = self._names
        if cached is None or len(cached[0]) != len(nodes) or cached[0] != nodes.keys():
            cached = self._names = (set(nodes), sorted(nodes))
        return cached[1]

    def snapshot(self) -> dict[str, NodeInfo]:
        """Name -> node, a new dict (the nodes themselves are live: read them, do not change them)."""
        return dict(self.nodes)

    def up_names(self) -> list[str]:
        """Nodes registered and not lost, sorted."""
        return sorted(name for name, info in self.nodes.items() if info.up)

    def facts(self, name: str) -> p.NodeFacts | None:
        info = self.nodes.get(name)
        return info.facts if info is not None else None

    def drained(self) -> dict[str, str]:
        """Node -> drain reason, for every node an admin (or a GPU shortfall) drained."""
        return {n: i.drain_reason for n, i in self.nodes.items() if i.drain_reason}

    # ------------------------------------------------------------- lifecycle
    def ensure(self, name: str) -> NodeInfo:
        """The node, known from now on (DOWN until it registers)."""
        node = self.nodes.get(name)
        if node is None:
            node = self.nodes[name] = NodeInfo(facts=None)
            self.shapes_version += 1
        return node

    def expect(self, name: str, job_id: str, now_ms: int) -> None:
        """After a head restart: ``job_id`` runs on ``name`` as far as the store knows."""
        node = self.ensure(name)
        node.jobs.add(job_id)
        node.state_reason = "Waiting for the agent to re-register after a head restart"
        node.last_heartbeat_at = now_ms

    def register(self, name: str, msg: p.Register, now_ms: int) -> tuple[NodeInfo, str | None]:
        """The node joined with ``msg``'s facts: (the node, a GPU shortfall it was drained for, if any)."""
        node = self.ensure(name)
        node.facts, node.instance_id = msg.node, msg.instance_id
        self.shapes_version += 1
        node.last_heartbeat_at = now_ms
        node.gpu_unhealthy = head_gpus.unhealthy_gpus(msg.node)
        shortfall = head_gpus.gpu_shortfall(msg.node)
        drained_for = None
        if shortfall is not None and node.drain_reason is None:
            node.drain_reason = drained_for = shortfall
        self._settle(name, node, NodeEvent.REGISTERED)
        return node, drained_for

    def heartbeat(self, name: str, now_ms: int) -> NodeInfo | None:
        node = self.nodes.get(name)
        if node is not None:
            node.last_heartbeat_at = now_ms
        return node

    def gpus_out(self, name: str, new: dict[str, str]) -> None:
        """GPUs a heartbeat reported bad, out of service until the node registers again."""
        node = self.nodes[name]
        node.gpu_unhealthy.update(new)
        self._settle(name, node, NodeEvent.GPU_OUT)

    def set_drain(self, name: str, reason: str | None) -> bool:
        """Drain ``name`` (``reason=None``: resume it). True when the node is up and moved."""
        node = self.nodes[name]
        node.drain_reason = reason
        if not node.up:
            return False
        self._settle(name, node, NodeEvent.RESUME if reason is None else NodeEvent.DRAIN)
        return True

    def release(self, name: str, job_id: str) -> bool:
        """``job_id``'s attempt on ``name`` ended. True when that left a DRAINING node DRAINED."""
        node = self.nodes.get(name)
        if node is None:
            return False
        node.jobs.discard(job_id)
        if node.state == NodeState.DRAINING and not node.jobs:
            self._settle(name, node, NodeEvent.LAST_JOB_ENDED)
            return True
        return False

    def lose(self, name: str, reason: str) -> list[str]:
        """``name`` is given up (DOWN): the jobs that had attempts there, sorted (it keeps none)."""
        node = self.nodes[name]
        node.state = next_node_state(name, NodeState(node.state), NodeEvent.LOST, draining=False, busy=False)
        node.state_reason = reason
        jobs = sorted(node.jobs)
        node.jobs.clear()
        return jobs

    def needs_losing(self, name: str) -> bool:
        """The node is known and is up, or still holds jobs (recovered after a head restart)."""
        node = self.nodes.get(name)
        return node is not None and (node.up or bool(node.jobs))

    def state_change(self, name: str) -> tuple[str, str | None] | None:
        """The node's (state, reason) to put in the event stream, once per change; None if unchanged."""
        node = self.nodes.get(name)
        if node is None:
            return None
        state = (node.state, node.state_reason)
        if self._recorded.get(name) == state:
            return None
        self._recorded[name] = state
        return str(node.state), node.state_reason or None

    @staticmethod
    def _settle(name: str, node: NodeInfo, event: NodeEvent) -> None:
        """ACTIVE, or DRAINING while a drained node still runs jobs, then DRAINED (hpcbatch.model.nodes)."""
        node.state = next_node_state(name, NodeState(node.state), event, draining=node.drain_reason is not None,
                                     busy=bool(node.jobs))
        if node.drain_reason is None:
            node.state_reason = head_gpus.gpu_flag(node.gpu_unhealthy)
        else:
            node.state_reason = node.drain_reason

    # ------------------------------------------------- compute environments
    def set_selector(self, compute_environment: str, tags: dict[str, str]) -> bool:
        """A CE's ``hpcbatch:nodeSelector`` tag (``key=value``) as now given; True when it changed."""
        key, sep, value = tags.get(NODE_SELECTOR_TAG, "").partition("=")
        old = self._selectors.get(compute_environment)
        if sep and key:
            self._selectors[compute_environment] = (key, value)
        else:
            self._selectors.pop(compute_environment, None)
        if old != self._selectors.get(compute_environment):
            self.shapes_version += 1
            return True
        return False

    def drop_selector(self, compute_environment: str) -> None:
        if self._selectors.pop(compute_environment, None) is not None:
            self.shapes_version += 1

    def joined_by_label(self) -> list[str]:
        """Up nodes that join a compute environment by label (they may move when a selector changes)."""
        return [name for name, info in self.nodes.items()
                if info.facts is not None and not info.facts.compute_environment and info.up]

    def compute_environment_of(self, name: str) -> str:
        """The node's compute environment: named in its config, or chosen by its labels.

        An agent joins by name (``compute_environment``) or, with that left empty, by label:
        the first compute environment (by name) whose ``hpcbatch:nodeSelector`` tag
        (``key=value``) matches one of the node's labels.
        """
        facts = self.facts(name)
        if facts is None:
            return ""
        if facts.compute_environment:
            return facts.compute_environment
        for ce, (key, value) in sorted(self._selectors.items()):
            if facts.labels.get(key) == value:
                return ce
        return ""

    # ---------------------------------------------------------------- fencing
    def fence_hold_s(self, name: str) -> float:
        """How long after last hearing ``name`` a retry of its attempts may start (0: at once)."""
        facts = self.facts(name)
        reported = facts.fence_after_s if facts is not None else 0.0
        fence = max(self._fencing.fence_after_s, reported)
        return retry_hold_s(fence, self._fencing.heartbeat_interval_s) if fence > 0 else 0.0

    def hold(self, job_id: str, lost: FenceHold, hold_s: float, now: float) -> None:
        """Hold ``job_id``'s retry ``hold_s`` from ``now`` (monotonic), until ``lost`` is surely dead."""
        self._holds[job_id] = HeldRetry(lost.node, lost.attempt_id, deadline=now + hold_s)

    def held(self, job_id: str) -> HeldRetry | None:
        return self._holds.get(job_id)

    def drop_hold(self, job_id: str) -> HeldRetry | None:
        return self._holds.pop(job_id, None)

    def holds_on(self, name: str) -> list[tuple[str, HeldRetry]]:
        """(job id, hold) for the retries held for ``name``'s lost attempts."""
        return [(job_id, hold) for job_id, hold in self._holds.items() if hold.node == name]

    def due(self, now: float) -> list[str]:
        """Jobs whose held retry may start at ``now``. A hold whose attempt still ran when its
        node came back (its exit not yet heard) waits a whole fence more instead."""
        released = []
        for job_id, hold in list(self._holds.items()):
            deadline = next_hold_deadline(now, hold.deadline, hold.still_running, self.fence_hold_s(hold.node))
            if deadline is None:
                released.append(job_id)
            elif deadline != hold.deadline:
                hold.deadline, hold.still_running = deadline, False
        return released

    def next_deadline(self) -> float | None:
        """When the earliest held retry's time comes (monotonic), or None: when to wake ``due``."""
        return min((hold.deadline for hold in self._holds.values()), default=None)

    def hold_gang(self, parent_id: str, deadline: float) -> None:
        """A multi-node job's try ends with a lost node: its retry waits until ``deadline`` (the first lost node's)."""
        self._gang_holds.setdefault(parent_id, deadline)

    def gang_held(self, parent_id: str) -> bool:
        return parent_id in self._gang_holds

    def pop_gang_hold(self, parent_id: str) -> float | None:
        return self._gang_holds.pop(parent_id, None)
