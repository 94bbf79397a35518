"""The scheduler core's state: nodes, compute environments, queues and holds as the core sees
them, the ``SchedulerState`` that holds them all, and the context of one decision pass.

Rules: everything here is plain data plus the small predicates placement asks of a node
(``fits``, ``could_ever_fit``) or a compute environment (``caps``). The modules of the core
(``apply``, ``holds``, ``placement``, ``reserve``, ``preemption``, ``fairness``,
``reasons``, ``passes``, ``planning``) are functions over a ``SchedulerState``; the
``Scheduler`` (``core``) holds one and is the only public face.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

from sortedcontainers import SortedList

from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.scheduler.decisions import Cause, DecisionLog
from hpcbatch.scheduler.events import Action, JobRunnable, StateTimeLimit
from hpcbatch.scheduler.fairshare import FairSharePolicy, ShareLine, ShareUsage
from hpcbatch.scheduler.gang import UNKNOWN, Candidate, Reservation
from hpcbatch.scheduler.gpus import GpuPlace, choose_gpus
from hpcbatch.scheduler.nodeindex import IdleNodes, NodeCensus, NodeIndex
from hpcbatch.scheduler.predict import Predictor, RunKey


@dataclass(slots=True)
class NodeState:
    name: str
    ce: str
    vcpus: float
    memory_mib: int
    gpus: int
    accepting: bool
    free_vcpus: float = 0.0
    free_memory_mib: int = 0
    placement_group: str | None = None
    gpu_ids: tuple[str, ...] = ()  # index order; len == gpus
    gpu_holder: dict[int, str] = field(default_factory=dict)  # GPU index -> the job holding it
    jobs: set[str] = field(default_factory=set)  # every job holding part of this node
    latest_end: float = -math.inf  # the latest expected end of what it runs (reservations)
    end_key: tuple[float, str] | None = None  # its entry in the compute environment's by_end
    gang: str | None = None  # the gang holding it whole, if any
    gpu_places: tuple[GpuPlace, ...] = ()  # per GPU index; empty: no topology known
    gpu_out: frozenset[int] = frozenset()  # indices out of service: never handed out
    features: frozenset[str] = frozenset()  # a job runs here only if its ``requires`` are among these

    @property
    def free_gpus(self) -> int:
        if not self.gpu_out:  # the common case, and this is on the placement hot path
            return self.gpus - len(self.gpu_holder)
        return self.gpus - len(self.gpu_holder) - len(self.gpu_out.difference(self.gpu_holder))

    def pick_gpus(self, count: int) -> tuple[int, ...]:
        """``count`` free GPU indices, the closest set (scheduler/gpus.py)."""
        free = [i for i in range(self.gpus) if i not in self.gpu_holder and i not in self.gpu_out]
        return choose_gpus(free, count, self.gpu_places)

    def fits(self, r: ResourceRequest) -> bool:
        return (
            self.accepting
            and self.gang is None
            and r.vcpus <= self.free_vcpus + 1e-9
            and r.memory_mib <= self.free_memory_mib
            and r.gpus <= self.free_gpus
            and r.requires <= self.features
        )

    def could_ever_fit(self, r: ResourceRequest) -> bool:
        return (
            r.vcpus <= self.vcpus + 1e-9 and r.memory_mib <= self.memory_mib and r.gpus <= self.gpus - len(self.gpu_out)
            and r.requires <= self.features
        )

    def candidate(self, free_at: float) -> Candidate:
        return Candidate(self.name, self.placement_group, free_at, (self.vcpus, self.memory_mib, self.gpus))


@dataclass(slots=True)
class BootingNode:
    """A pool node not registered yet (``events.NodePowerChanged``): expected up at ``up_s``
    (POWERING_UP), or ``boot_s`` after now (POWERED_DOWN: ``up_s`` None). Plans only."""

    name: str
    ce: str
    vcpus: float
    memory_mib: int
    gpus: int
    boot_s: float
    up_s: float | None = None
    placement_group: str | None = None
    features: frozenset[str] = frozenset()
    resume_timeout_s: float = 0.0  # the pool's (wait reasons of an overdue boot say it)

    def up_at(self, now: float) -> float:
        """When it is expected to register, seen at ``now`` (an overdue boot: now)."""
        return now + self.boot_s if self.up_s is None else max(now, self.up_s)

    def could_ever_fit(self, r: ResourceRequest) -> bool:
        return (r.vcpus <= self.vcpus + 1e-9 and r.memory_mib <= self.memory_mib and r.gpus <= self.gpus
                and r.requires <= self.features)

    def candidate(self, free_at: float) -> Candidate:
        return Candidate(self.name, self.placement_group, free_at, (self.vcpus, self.memory_mib, self.gpus))


@dataclass(slots=True)
class BootFit:
    """A compute environment's booting nodes that could hold one request (``booting``), kept
    until its booting nodes change: booting ones by expected up time, powered-down ones by
    boot time (both then by name), and the wait reason's note naming them."""

    up: list[BootingNode]
    down: list[BootingNode]


@dataclass(slots=True)
class CeState:
    name: str
    enabled: bool = True
    max_vcpus: float | None = None
    require_placement_group: bool = False
    used_vcpus: float = 0.0
    nodes: NodeCensus = field(default_factory=NodeCensus)  # by name; accepting ones counted by shape
    index: NodeIndex = field(default_factory=NodeIndex)  # nodes that can take a job, by free capacity
    idle: IdleNodes = field(default_factory=IdleNodes)  # accepting nodes that run nothing, by group (gangs)
    by_end: SortedList = field(default_factory=SortedList)  # (latest end, node): reservations
    # (planned end, job, node) of allocations with a known end, a heap with stale entries left
    # in (checked when popped, compacted when it doubles): when a node has room for a job.
    ends: list[tuple[float, str, str]] = field(default_factory=list)
    booting: dict[str, BootingNode] = field(default_factory=dict)  # pool nodes powered down or booting
    boot_fit: dict[ResourceRequest, BootFit] = field(default_factory=dict)  # by request, until ``booting`` changes
    power_rate_until_s: float = 0.0  # resume_rate reached: the next power-up from then (0: not held back)

    def caps(self, vcpus: float) -> bool:
        """True when ``vcpus`` more would pass ``maxvCpus``."""
        return self.max_vcpus is not None and self.used_vcpus + vcpus > self.max_vcpus + 1e-9


@dataclass(slots=True)
class QueueState:
    name: str
    enabled: bool
    priority: int
    compute_environments: tuple[str, ...]
    jobs: dict[str, JobRunnable] = field(default_factory=dict)  # insertion = FIFO order
    gangs: dict[str, JobRunnable] = field(default_factory=dict)  # the gangs among jobs, FIFO
    fresh: list[str] = field(default_factory=list)  # arrived since the last pass: need a wait reason
    rescan: bool = True  # queue settings changed: every job's wait reason may be stale
    preempts: bool = False
    preemptible: bool = False
    fair_share: FairSharePolicy | None = None
    time_limits: tuple[StateTimeLimit, ...] = ()
    head: tuple[str, str, float] | None = None  # (job at the head, its reason, since when)
    share_heaps: dict[str, list[tuple[int, int, str, float]]] | None = None  # fair share: per share
    taken: list[tuple[ShareLine, tuple[int, int, str, float]]] = field(default_factory=list)

    def add(self, job: JobRunnable) -> None:
        self.jobs[job.job_id] = job
        self.gangs.pop(job.job_id, None)
        if job.whole_nodes:
            self.gangs[job.job_id] = job
        if self.share_heaps is not None:
            heapq.heappush(self.share_heaps.setdefault(job.share or "", []), share_entry(job))


@dataclass(slots=True)
class Allocation:
    nodes: list[str]  # index order; one for a single-node job
    ce: str
    request: ResourceRequest  # per node
    gang: bool
    started_at: float
    planned_s: float | None  # the run time planned with: prediction or timeout; None unknown
    gpus: dict[str, tuple[str, ...]] = field(default_factory=dict)  # node -> GPU ids held there
    share: tuple[str, str] | None = None  # (queue, shareIdentifier) charged for it, fair share
    timeout_s: float | None = None  # the hard bound (attemptDurationSeconds): predictions stay below
    key: RunKey | None = None  # what it is like, for learning its run time when it ends

    @property
    def ends_at(self) -> float:
        return UNKNOWN if self.planned_s is None else self.started_at + self.planned_s


@dataclass(slots=True)
class SchedulerState:
    """Everything the core knows between passes (the ``Scheduler`` holds one)."""

    reservation_depth: int = 1
    log_size: int = 10_000
    ces: dict[str, CeState] = field(default_factory=dict)
    nodes: dict[str, NodeState] = field(default_factory=dict)
    queues: dict[str, QueueState] = field(default_factory=dict)
    queue_of: dict[str, str] = field(default_factory=dict)  # runnable job -> queue
    orphans: dict[str, JobRunnable] = field(default_factory=dict)  # runnable in an unknown queue
    allocations: dict[str, Allocation] = field(default_factory=dict)
    wait_reason: dict[str, str] = field(default_factory=dict)
    # Array entries: tasks left to start, the next index, tasks running now.
    array_left: dict[str, int] = field(default_factory=dict)
    array_next: dict[str, int] = field(default_factory=dict)
    array_running: dict[str, int] = field(default_factory=dict)
    now: float = 0.0
    reservations: dict[str, Reservation] = field(default_factory=dict)  # waiting job -> its reservation
    reservation_text: dict[str, str] = field(default_factory=dict)  # as last logged
    decisions: DecisionLog = field(init=False)
    # Whether a gang shape could ever run depends only on the nodes, not on what runs:
    # kept across passes, forgotten when nodes or compute environments change.
    never_cache: dict[tuple[int, ResourceRequest, tuple[str, ...]], tuple[str | None, str]] = field(
        default_factory=dict)
    usage: dict[tuple[str, str], ShareUsage] = field(default_factory=dict)  # (queue, share) -> vCPU usage
    fair_note: dict[tuple[str, str], str] = field(default_factory=dict)  # (queue, share) -> place in line
    scanning: QueueState | None = None  # the queue whose jobs a pass is iterating
    capacity: dict[str, float] = field(default_factory=dict)  # queue -> vCPUs of its CEs, this pass
    scanned_out: list[str] = field(default_factory=list)  # jobs placed during that scan, dropped after
    down: dict[str, NodeState] = field(default_factory=dict)  # nodes gone (DOWN) as they last were
    away_cache: dict[str, tuple[list[NodeState], list[NodeState]]] = field(default_factory=dict)
    # Run-time predictions (``predict``): planning only, never a kill. ``due``: (planned end,
    # job) of running allocations, so a job outliving its plan is found in O(log n).
    predictor: Predictor = field(default_factory=Predictor)
    due: list[tuple[float, str]] = field(default_factory=list)
    # Start-time forecasts, kept until the state changes (``version`` counts ``handle`` calls).
    version: int = 0
    forecast: tuple[int, float, dict[str, float]] | None = None
    # Preemption (``preempt``): preemptor -> the victims it waits for; victims being stopped.
    preempting: dict[str, set[str]] = field(default_factory=dict)
    stopping: set[str] = field(default_factory=set)
    # The pass being made: the id of its last event and the events (other than arrivals)
    # that changed capacity, policy or time: the causes of its decisions (``decisions``).
    cause: str = "tick"
    world: tuple[Cause, ...] = ()

    def __post_init__(self) -> None:
        self.decisions = DecisionLog(self.log_size)


@dataclass(slots=True)
class PassContext:
    """What one pass builds as it goes: its actions and the reservations made so far."""

    actions: list[Action] = field(default_factory=list)
    reserved: dict[str, Reservation] = field(default_factory=dict)  # node -> the reservation holding it
    made: dict[str, Reservation] = field(default_factory=dict)  # job -> its reservation, every queue


@dataclass(slots=True)
class QueueScan:
    """One queue's part of a pass: its usable compute environments and what the scan learnt."""

    queue: QueueState
    usable: list[CeState]
    fresh: list[str]  # arrived since the last pass: need a wait reason
    rescan: bool  # settings changed: every job's reason may be stale
    actions: list[Action]  # the pass's (``PassContext``): shared, not copied
    reserved: dict[str, Reservation]  # the pass's: node -> the reservation holding it
    room: bool = False  # some node of ``usable`` has room now
    made: dict[str, Reservation] = field(default_factory=dict)  # each queue's head gets its own
    seen: list[str] | None = None  # the jobs reached, in order (jobStateTimeLimitActions)
    # Requests known not to fit in this pass, with the time limit they failed with.
    failed: list[tuple[ResourceRequest, float]] = field(default_factory=list)
    dominated: set[tuple[ResourceRequest, float]] = field(default_factory=set)
    failed_gangs: list[tuple[int, ResourceRequest, float]] = field(default_factory=list)
    reasons: dict[ResourceRequest, str] = field(default_factory=dict)  # why-not, once per request
    # Requests no planned end gives room to (``reserve.reserve_head``), until nodes change hands.
    unreservable: set[ResourceRequest] = field(default_factory=set)
    seen_gangs: set[str] = field(default_factory=set)


def share_entry(job: JobRunnable) -> tuple[int, int, str, float]:
    """A job's place in its share's heap: higher schedulingPriority first, then FIFO."""
    return (-job.priority, job.seq, job.job_id, job.request.vcpus * max(1, job.num_nodes))


def run_key(job: JobRunnable) -> RunKey:
    return RunKey(job.owner, job.definition, job.queue)
