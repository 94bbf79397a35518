"""The scheduler core: which RUNNABLE job starts on which node(s), and why the others wait.

Theory of operation:

* The head feeds events (a job became runnable or was withdrawn, a node joined or left,
  an attempt ended and gave its resources back, a queue or compute environment changed,
  ``Tick`` with the time) and calls ``handle``; it gets back typed actions
  (``StartAttempt``, ``StartGang``, ``SetWaitReason``) to apply. The core owns no sockets,
  no SQL and no clock: time is the ``now_s`` of the latest ``Tick`` (0 before any), so it
  can be driven by the head, by tests event by event, or by a simulator at any scale.
* Order: ENABLED queues by ``priority`` (higher first, AWS), ties by name; inside a queue
  FIFO by submission sequence. Each queue tries its compute environments in
  ``computeEnvironmentOrder``. A queue with a fair-share policy orders its jobs by share
  instead (``fairshare``: the least-served share by ``weight x usage`` goes next, inside a
  share ``schedulingPriority`` then FIFO) and holds back ``computeReservation``.
* A job fits a node when the node is ACTIVE in an ENABLED compute environment, has the
  free vCPUs, memory and GPUs, offers the features the job ``requires``
  (``NodeUp.features``; "container": a runtime, for a job with an image), is not held by
  a gang, and the compute environment stays within ``maxvCpus``. Among fitting nodes GPU
  steering ranks first (``gpus.steering_rank``, below), then the compute environment's
  allocation strategy picks (``nodeindex``: BEST_FIT packs, the default, keeping whole
  nodes free for big jobs; BEST_FIT_PROGRESSIVE fills busy nodes then opens the smallest
  idle one; SPREAD takes the emptiest node). Nodes are indexed by free capacity, so a
  placement does not scan every node.
* jobStateTimeLimitActions: the first waiting job of a queue whose wait reason code
  (``CODE - detail``, AWS's vocabulary: ``CAPACITY:...``, ``MISCONFIGURATION:...``) has
  stayed the same for ``maxTimeSeconds`` leaves with ``CancelRunnable``.
* A job that does not fit does not block the queue: smaller jobs behind it may start,
  except on nodes reserved for a waiting gang (below).
* Gangs (AWS Batch multi-node parallel jobs, ``num_nodes > 1``, or ``gang`` for one node) are placed all at once on
  ``num_nodes`` whole nodes of ONE compute environment (tried in order): nodes that run
  nothing, each fitting the per-node request. While the gang runs its nodes take nothing
  else (single tenant); a partly placed gang never exists. Inside a compute environment
  one placement group that holds the whole gang is preferred, the tightest such group
  first; a compute environment with ``require_placement_group`` only uses a single group.
  ``StartGang.nodes`` are in index order (natural name order); index 0 is the main node.
  ``maxvCpus`` counts the per-node request once per node.
* Planned run time: a job is planned with its run-time prediction (``predict``: the mean
  of the last two run times of the same owner and job definition, else owner, else queue),
  capped by ``time_limit_s`` (attemptDurationSeconds, the hard bound), else its time limit,
  else unknown ("never"). Plans never end a job; one that outlives its plan has it grown
  (doubled, capped) at the start of the next pass, and everything below follows.
* Reservations: the first waiting job of each queue (``reservation_depth`` of them per
  queue, default 1, as Maui's RESERVATIONDEPTH) that cannot start now but could once
  something ends gets one. A gang: the whole nodes of one compute environment free soonest,
  where a node's expected free time is the latest planned end of what runs on it; with a
  known start it takes, among nodes free by then, those that free up latest (EASY's "extra
  nodes": idle nodes it does not need stay usable by any job). A single-node job: the node
  that has room for it soonest, found by walking planned ends in time order (each CE's ``ends``);
  none when only unknown ends could give room (smaller jobs then pass it, as before).
  Reserved nodes are off limits to every job after the reserved one in the order, except
  (backfill) a job planned to end before the reservation starts (``now + planned <=
  start``). With unknown end times a gang's start is unknown, nothing backfills, and it
  holds the nodes it chose as they free up; the choice prefers nodes already idle, so its
  idle nodes only grow and it starts in a bounded time: a stream of small jobs cannot
  starve it. Reservations are recomputed every pass (derived state, not promises); jobs
  ahead of the reserved one in the order (higher-priority queues, earlier in its FIFO) are
  not bound by them.
* Forecasts (``forecast``): the expected start of the first waiting jobs of each queue, the
  plan run forward through planned ends; computed on demand, not in a pass.
* Holds: ``AttemptEnded`` frees everything a job holds, all of a gang's nodes. ``NodeGone``
  (and a re-registering node that no longer reports the job) drops only that node from a
  gang's hold; the other nodes stay held until the head ends the attempt
  (``AttemptEnded``), because the gang's processes may still run there. A node that
  reports a job in ``NodeUp.gang_jobs`` re-joins that gang's hold. Allocations reported by
  a node have no known time limit (the core learns limits only from ``JobRunnable``).
* GPUs are whole, exclusive devices. A node knows its GPU ids in order (``NodeUp.gpu_ids``;
  without them, ``gpus`` ids ``"0"``..``"n-1"``). A placed job gets specific ids
  (``StartAttempt.gpus``; ``StartGang.gpus`` per node in node order): the lowest-index
  contiguous run of free devices that is long enough, else the lowest-index free ones.
  Where the node reports topology (``NodeUp.gpu_places``) the closest set wins instead
  (scheduler/gpus.py: NVLink domain, PCIe switch, NUMA node). Nodes that fit are ranked by
  ``gpus.placement_key``: jobs without GPUs prefer nodes without GPUs (gangs without GPUs:
  CPU-only nodes when enough are idle), GPU jobs the node with fewest free GPUs. GPUs in
  ``NodeUp.gpu_out`` (unhealthy) are never handed out; a job already on one keeps it.
  A re-registering node reports which ids each running job holds (``NodeUp.gpu_holds``),
  so those are never handed out twice after a head restart; a job it reports without ids
  gets free ones chosen as above.
* Nodes away (not accepting: DRAINING/DRAINED; gone: DOWN, remembered as they last were)
  come back: a job that only they could hold waits with a ``CAPACITY`` reason naming them,
  never a ``MISCONFIGURATION`` (``_nodes_away``). The submit-time check that refuses a job
  no node set could ever hold is ``satisfy.why_unsatisfiable``.
* Wait reasons are emitted only when they change. Every start and every new or changed
  reservation is appended to a bounded log with the id of the event that caused it.

Size: this module is past 800 lines because the decision procedure (one pass: order, place,
reserve, explain) shares its state tightly; the parts that need no scheduler state already
live apart (``gang``, ``fairshare``, ``nodeindex``, ``predict``, ``forecast``, ``preempt``). The
gathering halves of forecasts and preemption (``forecast()``, ``_preempt``) could follow them
into a mixin-free helper taking the scheduler's state as values. The reason texts (``_why_not`` and
friends) are the next candidate to move out, once parallel work on GPU placement here has
merged.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from sortedcontainers import SortedList

from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.scheduler import preempt
from hpcbatch.scheduler.fairshare import (
    FairSharePolicy,
    ShareLine,
    ShareUsage,
    fair_order,
    standing_ranks,
)
from hpcbatch.scheduler.forecast import PlanJob, PlanNode, forecast
from hpcbatch.scheduler.gang import (
    UNKNOWN,
    Candidate,
    Reservation,
    fmt_time,
    hostlist,
    natural_key,
    pick_nodes,
)
from hpcbatch.scheduler.gpus import GpuPlace, choose_gpus, steering_rank
from hpcbatch.scheduler.nodeindex import IdleNodes, NodeCensus, NodeIndex
from hpcbatch.scheduler.predict import Predictor, RunKey, grow


# ------------------------------------------------------------------------- events
@dataclass(frozen=True)
class Event:
    """Base of every input; ``event_id`` ties a decision to what caused it."""

    event_id: str


@dataclass(frozen=True)
class JobRunnable(Event):
    job_id: str
    queue: str
    request: ResourceRequest  # per node
    seq: int  # submission order; FIFO inside a queue
    num_nodes: int = 1  # > 1: a gang (multi-node parallel job), placed all at once
    time_limit_s: int | None = None  # attemptDurationSeconds: known end time, for backfill
    # An array job: ``array_count`` tasks ``JOBID:i`` from ``first_index`` on, one entry in
    # the queue however many tasks it has; each placement starts the next index.
    array_count: int = 0
    first_index: int = 0
    max_running: int | None = None  # hpcbatch extension: at most this many tasks at once
    share: str | None = None  # shareIdentifier, in a queue with a fair-share policy
    priority: int = 0  # schedulingPriority: higher first inside its share (fair-share queues)
    gang: bool = False  # a multi-node parallel job of any size: numNodes 1 is a gang too

    # Run-time predictions (``predict``): what makes jobs similar. Empty: not known.
    owner: str = ""
    definition: str = ""  # the job definition (ARN or NAME:REVISION; revisions share history)

    @property
    def whole_nodes(self) -> bool:
        """Placed as a gang: all nodes at once, on whole nodes that run nothing else."""
        return self.num_nodes > 1 or self.gang


@dataclass(frozen=True)
class JobWithdrawn(Event):
    """A runnable job left the queue (cancelled, terminated) before it was placed."""

    job_id: str


@dataclass(frozen=True)
class NodeUp(Event):
    """A node joined or re-registered; ``allocations`` are attempts it already runs."""

    node: str
    compute_environment: str
    vcpus: float
    memory_mib: int
    gpus: int
    allocations: tuple[tuple[str, ResourceRequest], ...] = ()
    accepting: bool = True  # False for DRAINING/DRAINED nodes
    placement_group: str | None = None
    gang_jobs: tuple[str, ...] = ()  # ids in ``allocations`` that are gangs: whole-node holds
    gpu_ids: tuple[str, ...] = ()  # the node's GPUs in index order; empty: "0".."gpus-1"
    gpu_holds: tuple[tuple[str, tuple[str, ...]], ...] = ()  # job id in ``allocations`` -> GPU ids
    gpu_places: tuple[GpuPlace, ...] = ()  # per id in ``gpu_ids``: its NVLink/PCIe/NUMA groups
    gpu_out: tuple[str, ...] = ()  # ids out of service (unhealthy): a holder keeps it, nobody gets it
    features: frozenset[str] = frozenset()  # what it offers beyond resources ("container": a runtime)
    # Fair share: job id in ``allocations`` -> (queue, shareIdentifier), so a restarted head
    # charges what already runs to its share.
    shares: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class NodeGone(Event):
    node: str


@dataclass(frozen=True)
class AttemptEnded(Event):
    """A placed job's attempt ended (or was abandoned); its resources come back.

    ``run_s``: how long it really ran, when it ran and exited (not lost): history for
    run-time predictions. None teaches nothing.
    """

    job_id: str
    run_s: float | None = None


@dataclass(frozen=True)
class RunTimesLearned(Event):
    """Run times of jobs that finished before (a restarted head reads them from the store):
    ``runs`` are (owner, job definition, job queue, seconds), oldest first."""

    runs: tuple[tuple[str, str, str, float], ...]


@dataclass(frozen=True)
class ComputeEnvironmentChanged(Event):
    name: str
    enabled: bool
    max_vcpus: float | None
    require_placement_group: bool = False  # gangs only inside one placement group
    allocation_strategy: str = "BEST_FIT"  # BEST_FIT | BEST_FIT_PROGRESSIVE | SPREAD (nodeindex)


@dataclass(frozen=True)
class ComputeEnvironmentRemoved(Event):
    name: str


@dataclass(frozen=True)
class JobQueueChanged(Event):
    name: str
    enabled: bool
    priority: int
    compute_environments: tuple[str, ...]  # already in computeEnvironmentOrder
    fair_share: FairSharePolicy | None = None  # the queue's scheduling policy, if any
    time_limits: tuple[StateTimeLimit, ...] = ()  # jobStateTimeLimitActions
    preempts: bool = False  # its head may stop jobs of lower-priority preemptible queues (``preempt``)
    preemptible: bool = False  # its running jobs may be stopped for a higher-priority preempting queue


@dataclass(frozen=True)
class StateTimeLimit:
    """A jobStateTimeLimitAction: a job at the head of the queue, RUNNABLE for
    ``max_time_s`` with a wait reason starting with ``reason``, is cancelled."""

    reason: str
    max_time_s: float
    action: str = "CANCEL"  # CANCEL | TERMINATE: the same for a job that has not started


@dataclass(frozen=True)
class JobQueueRemoved(Event):
    name: str


@dataclass(frozen=True)
class Tick(Event):
    """The head's time; starts in this ``handle`` call happen at ``now_s``."""

    now_s: float


# ------------------------------------------------------------------------ actions
@dataclass(frozen=True)
class Action:
    """Base of every output."""


@dataclass(frozen=True)
class StartAttempt(Action):
    job_id: str
    node: str
    compute_environment: str
    gpus: tuple[str, ...] = ()  # the node's GPU ids the job gets, exclusively


@dataclass(frozen=True)
class StartGang(Action):
    """Start every node of a gang at once; ``nodes[i]`` runs node index ``i``.

    ``gpus[i]`` are the GPU ids ``nodes[i]`` gives the job; empty when it asks for none.
    """

    job_id: str
    nodes: tuple[str, ...]
    compute_environment: str
    gpus: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class SetWaitReason(Action):
    job_id: str
    reason: str


@dataclass(frozen=True)
class CancelRunnable(Action):
    """A jobStateTimeLimitAction fired: the job leaves the queue FAILED with ``reason``."""

    job_id: str
    reason: str


@dataclass(frozen=True)
class PreemptAttempt(Action):
    """Stop running ``job_id`` (a preemptible queue's) so ``for_job`` can start: SIGTERM, a
    grace, SIGKILL; it goes back to RUNNABLE as a new attempt that does not count against
    ``retryStrategy`` (``preempt``). Its resources come back with ``AttemptEnded``."""

    job_id: str
    for_job: str
    reason: str


# -------------------------------------------------------------------------- state
@dataclass
class _Node:
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


@dataclass
class _ComputeEnvironment:
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

    def caps(self, vcpus: float) -> bool:
        """True when ``vcpus`` more would pass ``maxvCpus``."""
        return self.max_vcpus is not None and self.used_vcpus + vcpus > self.max_vcpus + 1e-9


@dataclass
class _Queue:
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
            heapq.heappush(self.share_heaps.setdefault(job.share or "", []), _share_entry(job))


@dataclass
class _Allocation:
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


# AWS's statusReason vocabulary is "CODE - detail"; jobStateTimeLimitActions match the CODE.
REQUIREMENT = "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT"  # no node could ever hold the job
MAX_RESOURCE = "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE"  # every CE's maxvCpus is too small
CAPACITY = "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY"  # it would fit, but not now
TIME_LIMIT_CANCEL = "Canceled by JobStateTimeLimit action due to reason: {}"  # AWS's text

WAIT_RESOURCES = "Waiting for resources: no node in the queue's compute environments has room now"
WAIT_RESERVED = "Waiting for resources: the nodes with room are reserved for a waiting multi-node job"
WAIT_QUEUE_DISABLED = "Job queue is DISABLED"
WAIT_NO_CE = "No ENABLED compute environment with nodes in this job queue"
WAIT_MAX_VCPUS = "Compute environment at its maxvCpus limit"

_ANY_LIMIT = -math.inf  # a failure that no time limit (backfill) could have avoided


class Scheduler:
    """Placement state and the decision procedure; see the module docstring."""

    def __init__(self, log_size: int = 10_000, reservation_depth: int = 1) -> None:
        self._ces: dict[str, _ComputeEnvironment] = {}
        self._nodes: dict[str, _Node] = {}
        self._queues: dict[str, _Queue] = {}
        self._queue_of: dict[str, str] = {}  # runnable job -> queue
        self._orphans: dict[str, JobRunnable] = {}  # runnable in an unknown queue
        self._allocations: dict[str, _Allocation] = {}
        self._wait_reason: dict[str, str] = {}
        # Array entries: tasks left to start, the next index, tasks running now.
        self._array_left: dict[str, int] = {}
        self._array_next: dict[str, int] = {}
        self._array_running: dict[str, int] = {}
        self._now = 0.0
        self._reservation_depth = reservation_depth
        self._reservations: dict[str, Reservation] = {}  # waiting gang -> its reservation
        self._reservation_text: dict[str, str] = {}  # as last logged
        self.decisions: deque[tuple[str, str]] = deque(maxlen=log_size)
        self._never_cache: dict[tuple[int, ResourceRequest, tuple[str, ...]], tuple[str | None, str]] = {}
        self._usage: dict[tuple[str, str], ShareUsage] = {}  # (queue, shareIdentifier) -> vCPU usage
        self._fair_note: dict[tuple[str, str], str] = {}  # (queue, share) -> its place in line, for reasons
        self._scanning: _Queue | None = None  # the queue whose jobs a pass is iterating
        self._capacity: dict[str, float] = {}  # queue -> vCPUs of its compute environments, this pass
        self._scanned_out: list[str] = []  # jobs placed during that scan, to drop from it after
        self._down: dict[str, _Node] = {}  # nodes gone (DOWN) as they last were: they come back (reasons)
        self._away_cache: dict[str, tuple[list[_Node], list[_Node]]] = {}  # CE -> (not accepting, down)
        # Run-time predictions (``predict``): planning only, never a kill. ``_due``: (planned
        # end, job) of running allocations, so a job outliving its plan is found in O(log n).
        self.predictor = Predictor()
        self._due: list[tuple[float, str]] = []
        # Start-time forecasts (``forecast``), derived from the state on demand and kept until
        # the state changes (``_version`` counts ``handle`` calls) and they are old enough.
        self._version = 0
        # Preemption (``preempt``): preemptor -> the victims it waits for; victims being stopped.
        self._preempting: dict[str, set[str]] = {}
        self._stopping: set[str] = set()
        self._forecast: tuple[int, float, dict[str, float]] | None = None

    # ------------------------------------------------------------------ queries
    @property
    def runnable_count(self) -> int:
        return len(self._queue_of) + len(self._orphans)

    @property
    def now_s(self) -> float:
        """The time of the latest ``Tick`` (0 before any)."""
        return self._now

    def allocation(self, job_id: str) -> tuple[str, str] | None:
        """(node, compute environment) holding ``job_id``, if placed; a gang's main node."""
        a = self._allocations.get(job_id)
        return (a.nodes[0], a.ce) if a else None

    def allocated_nodes(self, job_id: str) -> tuple[str, ...]:
        """Every node ``job_id`` holds, in index order; empty when not placed."""
        a = self._allocations.get(job_id)
        return tuple(a.nodes) if a else ()

    def reservation(self, job_id: str) -> Reservation | None:
        """The reservation the waiting gang ``job_id`` got in the latest pass."""
        return self._reservations.get(job_id)

    def front_of_queue(self, queue: str, limit: int = 100) -> list[str]:
        """The waiting jobs of ``queue`` in the order the scheduler will consider them."""
        q = self._queues.get(queue)
        if q is None:
            return []
        if q.fair_share is not None:  # the order the next pass will try them in
            front = [j.job_id for j, _ in zip(self._fair_order(q), range(limit), strict=False)]
            self._restore_fair(q)
            return front
        return [j.job_id for j in sorted(q.jobs.values(), key=lambda j: j.seq)[:limit]]

    def decisions_about(self, job_id: str, limit: int = 20) -> list[tuple[str, str]]:
        """The latest decisions whose text names ``job_id`` (the bounded log), oldest first."""
        found = [d for d in self.decisions if job_id in d[1]]
        return found[-limit:]

    def node_usage(self, node: str) -> tuple[float, int, int] | None:
        """(allocated vCPUs, memory MiB, GPUs) on ``node``."""
        n = self._nodes.get(node)
        if n is None:
            return None
        return (n.vcpus - n.free_vcpus, n.memory_mib - n.free_memory_mib, len(n.gpu_holder))

    def gpu_holders(self, node: str) -> dict[str, str]:
        """GPU id -> the job holding it on ``node``, in the node's GPU order."""
        n = self._nodes.get(node)
        if n is None:
            return {}
        return {n.gpu_ids[i]: n.gpu_holder[i] for i in sorted(n.gpu_holder)}

    def allocated_gpus(self, job_id: str) -> dict[str, tuple[str, ...]]:
        """Node -> the GPU ids ``job_id`` holds there; empty when not placed."""
        a = self._allocations.get(job_id)
        return {k: v for k, v in a.gpus.items() if v} if a else {}

    # -------------------------------------------------------------------- input
    def handle(self, *events: Event) -> list[Action]:
        """Apply ``events`` in order, then place what can be placed; return the actions."""
        self._version += 1
        for event in events:
            self._apply(event)
        cause = events[-1].event_id if events else "tick"
        return self._schedule(cause)

    def _apply(self, event: Event) -> None:
        if isinstance(event, NodeUp | NodeGone | ComputeEnvironmentChanged | ComputeEnvironmentRemoved):
            self._never_cache.clear()
            self._away_cache.clear()
        match event:
            case JobRunnable():
                if event.array_count:
                    self._array_left[event.job_id] = event.array_count
                    self._array_next[event.job_id] = event.first_index
                    self._array_running.setdefault(event.job_id, 0)
                queue = self._queues.get(event.queue)
                if queue is None:
                    self._orphans[event.job_id] = event
                else:
                    queue.add(event)
                    queue.fresh.append(event.job_id)
                    self._queue_of[event.job_id] = event.queue
            case JobWithdrawn():
                self._withdraw(event.job_id)
            case AttemptEnded():
                self._stopping.discard(event.job_id)
                if event.run_s is not None:
                    alloc = self._allocations.get(event.job_id)
                    if alloc is not None and alloc.key is not None:
                        self.predictor.learn(alloc.key, event.run_s)
                if self._release(event.job_id):
                    array_id, sep, _ = event.job_id.rpartition(":")
                    if sep and array_id in self._array_running:
                        self._array_running[array_id] = max(0, self._array_running[array_id] - 1)
            case NodeUp():
                self._node_up(event)
            case NodeGone():
                node = self._nodes.get(event.node)
                if node is not None:
                    for job_id in list(node.jobs):
                        self._drop_hold(job_id, node.name)
                    del self._nodes[node.name]
                    self._down[node.name] = node
                    self._ce(node.ce).nodes.pop(node.name, None)
                    self._ce(node.ce).index.discard(node)
                    self._ce(node.ce).idle.pop(node.name, None)
                    self._ce(node.ce).by_end.discard(node.end_key)
            case Tick():
                self._now = max(self._now, event.now_s)
                for (queue_name, _), usage in self._usage.items():
                    usage.advance(self._now, self._decay_s(queue_name))
            case ComputeEnvironmentChanged():
                ce = self._ce(event.name)
                ce.enabled, ce.max_vcpus = event.enabled, event.max_vcpus
                ce.require_placement_group = event.require_placement_group
                if ce.index.strategy != event.allocation_strategy:
                    ce.index = NodeIndex(event.allocation_strategy)
                    for node in ce.nodes.values():
                        ce.index.update(node)
            case ComputeEnvironmentRemoved():
                ce = self._ces.get(event.name)
                if ce is not None and not ce.nodes:
                    del self._ces[event.name]
            case JobQueueChanged():
                queue = self._queues.get(event.name)
                if queue is None:
                    queue = self._queues[event.name] = _Queue(
                        event.name, event.enabled, event.priority, event.compute_environments,
                        fair_share=event.fair_share, time_limits=event.time_limits,
                    )
                    queue.preempts, queue.preemptible = event.preempts, event.preemptible
                    for job_id, job in list(self._orphans.items()):
                        if job.queue == event.name:
                            del self._orphans[job_id]
                            queue.add(job)
                            self._queue_of[job_id] = event.name
                else:
                    queue.enabled, queue.priority = event.enabled, event.priority
                    queue.compute_environments = event.compute_environments
                    queue.fair_share, queue.time_limits = event.fair_share, event.time_limits
                    queue.preempts, queue.preemptible = event.preempts, event.preemptible
                    queue.share_heaps = None  # rebuilt on the next fair-share pass
                    queue.rescan = True
            case RunTimesLearned():
                for owner, definition, queue_name, run_s in event.runs:
                    self.predictor.learn(RunKey(owner, definition, queue_name), run_s)
            case JobQueueRemoved():
                queue = self._queues.pop(event.name, None)
                if queue is not None:
                    for job_id, job in queue.jobs.items():
                        del self._queue_of[job_id]
                        self._orphans[job_id] = job
            case _:
                raise TypeError(f"unknown scheduler event {event!r}")

    def _ce(self, name: str) -> _ComputeEnvironment:
        ce = self._ces.get(name)
        if ce is None:
            ce = self._ces[name] = _ComputeEnvironment(name)
        return ce

    def _node_up(self, event: NodeUp) -> None:
        # Re-registration: what the node reports running is the truth. Give back the old
        # holds first (onto the old node value), then build the node afresh from its report.
        old = self._nodes.get(event.node)
        self._down.pop(event.node, None)
        if old is not None:
            for job_id in list(old.jobs):
                self._drop_hold(job_id, old.name)
            self._ce(old.ce).nodes.pop(old.name, None)
            self._ce(old.ce).index.discard(old)
            self._ce(old.ce).idle.pop(old.name, None)
            self._ce(old.ce).by_end.discard(old.end_key)
        gpu_ids = event.gpu_ids or tuple(str(i) for i in range(event.gpus))
        node = _Node(
            event.node, event.compute_environment, event.vcpus, event.memory_mib, len(gpu_ids),
            event.accepting, event.vcpus, event.memory_mib, event.placement_group, gpu_ids,
            gpu_places=event.gpu_places, gpu_out=frozenset(gpu_ids.index(g) for g in event.gpu_out if g in gpu_ids),
            features=event.features,
        )
        self._nodes[node.name] = node
        self._ce(node.ce).nodes[node.name] = node
        self._refile(node)
        holds = dict(event.gpu_holds)
        shares = {job_id: (queue, share) for job_id, queue, share in event.shares}
        # Reported GPU holds first, so a job reported without ids cannot take a held one.
        ordered = sorted(event.allocations, key=lambda a: a[0] not in holds)
        for job_id, request in ordered:
            self._withdraw(job_id)
            gang = job_id in event.gang_jobs
            held = tuple(gpu_ids.index(g) for g in holds.get(job_id, ()) if g in gpu_ids)
            alloc = self._allocations.get(job_id)
            if alloc is not None and gang and alloc.gang and alloc.ce == node.ce:
                alloc.nodes.append(node.name)  # another node of a gang already re-joined
                alloc.nodes.sort(key=natural_key)
                self._take(job_id, alloc, node, held)
                continue
            self._release(job_id)  # the newest report wins over a stale hold elsewhere
            charged = shares.get(job_id)
            if charged is not None and (q := self._queues.get(charged[0])) is not None and q.fair_share is None:
                charged = None
            self._hold(job_id, [node], request, gang, None, held, share=charged)

    def _refile(self, node: _Node) -> None:
        """Re-index ``node`` after its free capacity, holds or state changed."""
        ce = self._ce(node.ce)
        ce.index.update(node)
        if node.accepting and not node.jobs:
            ce.idle[node.name] = node
        else:
            ce.idle.pop(node.name, None)
        key = (node.latest_end, node.name)
        if node.end_key != key:
            if node.end_key is not None:
                ce.by_end.discard(node.end_key)
            ce.by_end.add(key)
            node.end_key = key

    def _share_usage(self, key: tuple[str, str]) -> ShareUsage:
        """A share's usage, brought up to now (so the average integrates what ran until now)."""
        usage = self._usage.get(key)
        if usage is None:
            usage = self._usage[key] = ShareUsage(updated_s=self._now)
        usage.advance(self._now, self._decay_s(key[0]))
        return usage

    def _decay_s(self, queue_name: str) -> int:
        queue = self._queues.get(queue_name)
        return queue.fair_share.share_decay_s if queue is not None and queue.fair_share else 0

    def _withdraw(self, job_id: str) -> None:
        self._preempting.pop(job_id, None)
        self._array_left.pop(job_id, None)
        self._array_next.pop(job_id, None)
        self._orphans.pop(job_id, None)
        self._wait_reason.pop(job_id, None)
        queue_name = self._queue_of.pop(job_id, None)
        if queue_name is not None:
            queue = self._queues[queue_name]
            if queue is self._scanning:
                self._scanned_out.append(job_id)  # ``queue.jobs`` is being iterated: pop it after
            else:
                queue.jobs.pop(job_id, None)
            queue.gangs.pop(job_id, None)

    def _hold(
        self, job_id: str, nodes: list[_Node], request: ResourceRequest, gang: bool,
        planned_s: float | None, held: tuple[int, ...] = (), share: tuple[str, str] | None = None,
        job: JobRunnable | None = None,
    ) -> _Allocation:
        alloc = _Allocation(
            [n.name for n in nodes], nodes[0].ce, request, gang, self._now, planned_s, share=share,
            timeout_s=None if job is None or job.time_limit_s is None else float(job.time_limit_s),
            key=None if job is None else _run_key(job),
        )
        self._allocations[job_id] = alloc
        for node in nodes:
            self._take(job_id, alloc, node, held)
        if planned_s is not None:
            heapq.heappush(self._due, (alloc.ends_at, job_id))
            self._file_ends(job_id, alloc)
        return alloc

    def _file_ends(self, job_id: str, alloc: _Allocation) -> None:
        """Enter an allocation's (new) planned end into its compute environment's ``ends``."""
        ce = self._ce(alloc.ce)
        for name in alloc.nodes:
            heapq.heappush(ce.ends, (alloc.ends_at, job_id, name))
        if len(ce.ends) > 2 * len(self._allocations) + 1024:
            ce.ends = [e for e in ce.ends if self._live_end(e)]
            heapq.heapify(ce.ends)

    def _live_end(self, entry: tuple[float, str, str]) -> bool:
        alloc = self._allocations.get(entry[1])
        return alloc is not None and alloc.ends_at == entry[0] and entry[2] in alloc.nodes

    # ------------------------------------------------------------------ forecasts
    def forecast(self, limit: int = 200) -> dict[str, float]:
        """Expected start (scheduler time) of the first ``limit`` waiting jobs of every queue
        that can start at a planned time (``forecast``'s rules); computed afresh."""
        nodes = [
            PlanNode(node.name, ce.name, [node.free_vcpus, node.free_memory_mib, node.free_gpus],
                     (node.vcpus, node.memory_mib, node.gpus - len(node.gpu_out)), node.features,
                     len(node.jobs), node.gang is not None)
            for ce in self._ces.values() if ce.enabled
            for node in ce.nodes.values() if node.accepting
        ]
        releases = [
            (alloc.ends_at, name, (alloc.request.vcpus, alloc.request.memory_mib, len(alloc.gpus.get(name, ()))),
             alloc.gang)
            for alloc in self._allocations.values() if alloc.ends_at != UNKNOWN
            for name in alloc.nodes
        ]
        queues = []
        for queue in sorted(self._queues.values(), key=lambda q: (-q.priority, q.name)):
            ces = tuple(n for n in queue.compute_environments if n in self._ces and self._ces[n].enabled)
            if not queue.enabled or not ces:
                continue
            if queue.fair_share is not None:
                ids = self.front_of_queue(queue.name, limit)
            else:
                ids = []
                for job_id in queue.jobs:
                    if job_id in self._queue_of:
                        ids.append(job_id)
                        if len(ids) >= limit:
                            break
                ids.sort(key=lambda j: queue.jobs[j].seq)
            plan = []
            for job_id in ids:
                job = queue.jobs[job_id]
                if self._wait_reason.get(job_id, "").startswith((REQUIREMENT, MAX_RESOURCE)):
                    continue  # it can never start: no forecast
                plan.append(PlanJob(job_id, job.request, max(1, job.num_nodes), self._estimate(job), ces))
            queues.append(plan)
        return forecast(self._now, nodes, releases, queues)

    def expected_start(self, job_id: str, max_age_s: float = 5.0) -> float | None:
        """When waiting ``job_id`` is expected to start (scheduler time), or None: unknown, or
        not among the first jobs forecast. The forecast is reused while it is younger than
        ``max_age_s`` (scheduler time) or nothing changed, unless it lacks a job that waits."""
        cached = self._forecast
        if cached is None or (
            cached[0] != self._version
            and (self._now - cached[1] >= max_age_s or (job_id not in cached[2] and job_id in self._queue_of))
        ):
            cached = self._forecast = (self._version, self._now, self.forecast())
        return cached[2].get(job_id) if job_id in self._queue_of else None

    # ---------------------------------------------------------------- predictions
    def _estimate(self, job: JobRunnable) -> float | None:
        """The run time ``job`` is planned with (``predict``): history capped by its timeout."""
        if not self.predictor.learned:  # no history at all (a fresh cluster, the benchmarks)
            return None if job.time_limit_s is None else float(job.time_limit_s)
        return self.predictor.predict_for(job.owner, job.definition, job.queue, job.time_limit_s)

    def planned_run_s(self, job_id: str) -> float | None:
        """The run time a running job is planned with now (grown if it outlived it); None: unknown."""
        alloc = self._allocations.get(job_id)
        return alloc.planned_s if alloc is not None else None

    def _grow_predictions(self, cause: str) -> None:
        """Jobs still running past their planned end: their plan grows (``predict.grow``) and the
        nodes they hold are re-filed by their new expected end, so this pass plans around it."""
        due = self._due
        while due and due[0][0] < self._now:
            end, job_id = heapq.heappop(due)
            alloc = self._allocations.get(job_id)
            if alloc is None or alloc.planned_s is None or alloc.ends_at != end:
                continue  # ended, or re-planned since
            new = grow(alloc.planned_s, self._now - alloc.started_at, alloc.timeout_s)
            if new <= alloc.planned_s:
                continue  # at its timeout already: it is being ended, nothing to plan beyond
            alloc.planned_s = new
            heapq.heappush(due, (alloc.ends_at, job_id))
            self._file_ends(job_id, alloc)
            for name in alloc.nodes:
                node = self._nodes.get(name)
                if node is not None:
                    node.latest_end = max(
                        (self._allocations[j].ends_at for j in node.jobs if j in self._allocations),
                        default=-math.inf,
                    )
                    self._refile(node)
            self.decisions.append(
                (cause, f"plan for {job_id}: ran past its predicted end, now expected to run {fmt_time(new)} s")
            )

    def _take(self, job_id: str, alloc: _Allocation, node: _Node, held: tuple[int, ...] = ()) -> None:
        """Take ``alloc``'s request on ``node``: the GPU indices ``held`` (reported), else free ones."""
        r = alloc.request
        node.free_vcpus -= r.vcpus
        node.free_memory_mib -= r.memory_mib
        mine = [i for i in dict.fromkeys(held) if i not in node.gpu_holder][: max(r.gpus, len(held))]
        for i in mine:
            node.gpu_holder[i] = job_id
        for i in node.pick_gpus(min(r.gpus - len(mine), node.free_gpus)):
            node.gpu_holder[i] = job_id
        alloc.gpus[node.name] = tuple(
            node.gpu_ids[i] for i in sorted(i for i, j in node.gpu_holder.items() if j == job_id)
        )
        node.jobs.add(job_id)
        if alloc.gang:
            node.gang = job_id
        self._ce(alloc.ce).used_vcpus += r.vcpus
        node.latest_end = max(node.latest_end, alloc.ends_at)
        self._refile(node)
        if alloc.share is not None:
            usage = self._share_usage(alloc.share)
            usage.running += r.vcpus

    def _give(self, job_id: str, alloc: _Allocation, node_name: str) -> None:
        r = alloc.request
        ce = self._ces.get(alloc.ce)
        if ce is not None:
            ce.used_vcpus -= r.vcpus
        node = self._nodes.get(node_name)
        if node is not None:
            node.free_vcpus += r.vcpus
            node.free_memory_mib += r.memory_mib
            for i in [i for i, j in node.gpu_holder.items() if j == job_id]:
                del node.gpu_holder[i]
            node.jobs.discard(job_id)
            if node.gang == job_id:
                node.gang = None
            node.latest_end = max(
                (self._allocations[j].ends_at for j in node.jobs if j in self._allocations), default=-math.inf
            )
            self._refile(node)
        if alloc.share is not None:
            usage = self._share_usage(alloc.share)
            usage.running = max(0.0, usage.running - r.vcpus)

    def _release(self, job_id: str) -> bool:
        """Give back everything ``job_id`` holds; True if it held anything."""
        alloc = self._allocations.pop(job_id, None)
        if alloc is None:
            return False
        for name in alloc.nodes:
            self._give(job_id, alloc, name)
        return True

    def _drop_hold(self, job_id: str, node_name: str) -> None:
        """Give back what ``job_id`` holds on one node; a gang keeps its other nodes."""
        alloc = self._allocations.get(job_id)
        if alloc is None or node_name not in alloc.nodes:
            return
        self._give(job_id, alloc, node_name)
        alloc.nodes.remove(node_name)
        alloc.gpus.pop(node_name, None)
        if not alloc.nodes:
            del self._allocations[job_id]

    # ----------------------------------------------------------------- decision
    def _schedule(self, cause: str) -> list[Action]:
        actions: list[Action] = []
        self._grow_predictions(cause)
        reserved: dict[str, Reservation] = {}  # node -> the reservation holding it, this pass
        made: dict[str, Reservation] = {}  # gang -> its reservation, this pass
        # Whether a gang shape could ever run depends only on nodes, not on what runs: once a pass.
        # Whether a gang shape could ever run depends only on the nodes, not on what runs:
        # kept across passes, forgotten when nodes or compute environments change.
        never = self._never_cache
        self._capacity.clear()
        queues = sorted(self._queues.values(), key=lambda q: (-q.priority, q.name))
        for queue in queues:
            if not queue.jobs:
                continue
            if not queue.enabled:
                self._wait_all(queue, WAIT_QUEUE_DISABLED, actions)
                continue
            ces = [self._ces[n] for n in queue.compute_environments if n in self._ces]
            usable = [ce for ce in ces if ce.enabled and ce.nodes]
            if not usable:
                self._wait_all(queue, WAIT_NO_CE, actions)
                continue
            # Scan in FIFO order while some node has room; once the compute environments are
            # full, only jobs that arrived since the last pass still need their wait reason
            # (and gangs their reservation). This keeps a pass over a deep queue cheap.
            fresh, queue.fresh = queue.fresh, []
            rescan, queue.rescan = queue.rescan, False
            room = self._has_room(usable, reserved)
            # The queue's dict is iterated as it is (no copy of 100k entries per pass): jobs
            # placed meanwhile leave ``_queue_of`` at once and ``queue.jobs`` after the scan.
            order: Iterable[JobRunnable] = queue.jobs.values()
            if queue.fair_share is not None:
                order = self._fair_order(queue)
            seen: list[str] | None = [] if queue.time_limits else None
            self._scanning, self._scanned_out = queue, []
            made_here: dict[str, Reservation] = {}  # each queue's head gets its own (reservation_depth)
            try:
                self._scan(queue, order, seen, usable, reserved, made_here, never, fresh, rescan, room, actions, cause)
            finally:
                made.update(made_here)
                self._scanning = None
                for job_id in self._scanned_out:
                    queue.jobs.pop(job_id, None)
                if queue.fair_share is not None:
                    self._restore_fair(queue)
            if seen is not None:
                self._time_limits(queue, seen, actions, cause)
        for job_id, res in made.items():
            text = res.describe(self._now)
            if self._reservation_text.get(job_id) != text:
                self.decisions.append((cause, f"reserve for {job_id}: {text}"))
        self._reservations = made
        self._reservation_text = {j: r.describe(self._now) for j, r in made.items()}
        return actions

    def _scan(
        self, queue: _Queue, order: Iterable[JobRunnable], seen: list[str] | None,
        usable: list[_ComputeEnvironment], reserved: dict[str, Reservation], made: dict[str, Reservation],
        never: dict[tuple[int, ResourceRequest, tuple[str, ...]], tuple[str | None, str]],
        fresh: list[str], rescan: bool, room: bool, actions: list[Action], cause: str,
    ) -> None:
        """One queue's part of a pass: place, reserve for, or explain its jobs in order."""
        failed: list[tuple[ResourceRequest, float]] = []
        dominated: set[tuple[ResourceRequest, float]] = set()
        failed_gangs: list[tuple[int, ResourceRequest, float]] = []
        reasons: dict[ResourceRequest, str] = {}  # why-not, once per distinct request
        seen_gangs: set[str] = set()
        for job in order:
            if job.job_id not in self._queue_of:
                continue  # placed (or an array emptied) earlier in this scan
            if seen is not None:
                seen.append(job.job_id)
            if queue.fair_share is not None and self._over_reservation(queue, job, usable, actions):
                continue
            if job.whole_nodes:
                seen_gangs.add(job.job_id)
                if self._gang(job, usable, reserved, made, failed_gangs, never, actions, cause):
                    room = self._has_room(usable, reserved)
                    reasons.clear()
                continue
            if not room:
                if self._preempt_or_reserve(job, queue, usable, reserved, made, reasons, actions, cause):
                    room = self._has_room(usable, reserved)
                    reasons.clear()
                    continue
                if rescan:
                    self._wait(job.job_id, self._cached_why_not(job.request, usable, reserved, reasons), actions)
                    continue
                for job_id in fresh:
                    j = queue.jobs.get(job_id)
                    if j is not None and not j.whole_nodes and job_id in self._queue_of:
                        self._wait(job_id, self._cached_why_not(j.request, usable, reserved, reasons), actions)
                break
            r = job.request
            estimate = self._estimate(job)
            limit = _limit_key(estimate)
            # ``failed`` only grows in a pass, so a shape once found dominated stays so:
            # remember it and a deep queue of equal jobs costs one set look-up each.
            if (r, limit) in dominated or (
                any(_dominates(r, f) and limit >= fl for f, fl in failed) and not dominated.add((r, limit))
            ):
                if len(made) < self._reservation_depth and self._reserve_head(job, usable, reserved, made, reasons,
                                                                               actions):
                    room = self._has_room(usable, reserved)
                    reasons.clear()
                    continue
                self._wait(job.job_id, self._cached_why_not(r, usable, reserved, reasons), actions)
                continue
            if job.array_count:
                room = self._place_array(job, estimate, usable, reserved, failed, reasons, actions, cause)
                if job.job_id in self._queue_of and len(made) < self._reservation_depth and self._reserve_head(
                    job, usable, reserved, made, reasons, actions
                ):
                    room = self._has_room(usable, reserved)
                    reasons.clear()
                continue
            placed = self._place(r, estimate, usable, reserved)
            if placed is None:
                # Requests known not to fit in this pass: anything at least as large
                # (and not shorter) cannot fit either, so a long FIFO of equal jobs
                # costs one failed search.
                failed.append((r, limit if reserved else _ANY_LIMIT))
                if self._preempt_or_reserve(job, queue, usable, reserved, made, reasons, actions, cause):
                    room = self._has_room(usable, reserved)
                    reasons.clear()
                    continue
                self._wait(job.job_id, self._cached_why_not(r, usable, reserved, reasons), actions)
                continue
            node, ce = placed
            self._withdraw(job.job_id)
            alloc = self._hold(job.job_id, [node], r, False, estimate, share=self._charge(job), job=job)
            gpus = alloc.gpus[node.name]
            actions.append(StartAttempt(job.job_id, node.name, ce.name, gpus))
            note = ""
            if node.name in reserved:
                res = reserved[node.name]
                note = f", backfilled before {res.job_id}'s reservation at t={fmt_time(res.start_s)}"
            self.decisions.append(
                (cause, f"start {job.job_id} on {node.name} ({ce.name}){_gpu_note(gpus)}{note}")
            )
            if node.free_vcpus <= 1e-9:
                room = self._has_room(usable, reserved)
        # Gangs the scan did not reach (nothing had room) still get a reservation and reason,
        # unless nothing about them can have changed: no compute environment has enough idle
        # nodes, the reservations are made, and the gang already shows a reason.
        most_idle = max(len(ce.idle) for ce in usable)
        fresh_ids = set(fresh)
        gangs: Iterable[JobRunnable] = list(queue.gangs.values())
        if not rescan and most_idle < 2 and len(made) >= self._reservation_depth:
            # No gang can start (each needs 2+ idle nodes) and the reservations are made:
            # only new gangs and last pass's reserved ones can need a new reason.
            gangs = [queue.gangs[j] for j in (*fresh_ids, *self._reservations) if j in queue.gangs]
        for gang in gangs:
            if gang.job_id in seen_gangs:
                continue
            if (
                not rescan
                and gang.num_nodes > most_idle
                and len(made) >= self._reservation_depth
                and gang.job_id in self._wait_reason
                and gang.job_id not in self._reservations
                and gang.job_id not in fresh_ids
            ):
                continue
            self._gang(gang, usable, reserved, made, failed_gangs, never, actions, cause)

    # ---------------------------------------------------------------- fair share
    def _charge(self, job: JobRunnable) -> tuple[str, str] | None:
        """The (queue, share) a placed job's vCPUs count against, in a fair-share queue."""
        queue = self._queues.get(job.queue)
        if queue is None or queue.fair_share is None:
            return None
        return (job.queue, job.share or "")

    def _fair_order(self, queue: _Queue) -> Iterator[JobRunnable]:
        """The queue's jobs in fair-share order; also sets the fair-share part of wait reasons."""
        policy = queue.fair_share
        assert policy is not None
        if queue.share_heaps is None:
            queue.share_heaps = {}
            for job in queue.jobs.values():
                if job.job_id in self._queue_of:
                    queue.share_heaps.setdefault(job.share or "", []).append(_share_entry(job))
            for heap in queue.share_heaps.values():
                heapq.heapify(heap)
        lines: dict[str, ShareLine] = {}
        for share, heap in queue.share_heaps.items():
            if heap:
                usage = self._usage.get((queue.name, share))
                lines[share] = ShareLine(share, policy.weight(share), usage.value if usage else 0.0, heap)
        ranks = standing_ranks(lines.values())
        for share, rank in ranks.items():
            self._fair_note[(queue.name, share)] = (
                f"; fair share: share {share or '(none)'} is {_ordinal(rank)} of {len(ranks)} in line "
                f"(weight {lines[share].weight:g})"
            )
        def valid(entry: tuple[int, int, str, float]) -> bool:
            job = queue.jobs.get(entry[2])
            return job is not None and job.seq == entry[1] and self._queue_of.get(entry[2]) == queue.name

        for job_id in fair_order(list(lines.values()), valid, queue.taken):
            yield queue.jobs[job_id]

    def _restore_fair(self, queue: _Queue) -> None:
        """Push back the share-heap entries a fair-share scan popped for jobs that still wait."""
        for line, entry in queue.taken:
            if self._queue_of.get(entry[2]) == queue.name:
                heapq.heappush(line.jobs, entry)
        queue.taken.clear()

    def _over_reservation(
        self, queue: _Queue, job: JobRunnable, ces: list[_ComputeEnvironment], actions: list[Action]
    ) -> bool:
        """True (and the job waits) when starting it would eat the computeReservation."""
        policy = queue.fair_share
        if policy is None or policy.compute_reservation <= 0:
            return False
        capacity = self._capacity.get(queue.name)
        if capacity is None:  # once per pass: the nodes do not change during one
            capacity = 0.0
            for ce in ces:
                total = sum(n.vcpus for n in ce.nodes.values() if n.accepting)
                capacity += total if ce.max_vcpus is None else min(total, ce.max_vcpus)
            self._capacity[queue.name] = capacity
        running = {s: u.running for (q, s), u in self._usage.items() if q == queue.name and u.running > 1e-9}
        share = job.share or ""
        active = len(running) + (0 if share in running else 1)
        held_back = capacity * policy.reserved_fraction(active)
        need = job.request.vcpus * max(1, job.num_nodes)
        if sum(running.values()) + need <= capacity - held_back + 1e-9:
            return False
        self._wait(
            job.job_id,
            f"Fair share: computeReservation {policy.compute_reservation} keeps {held_back:g} of "
            f"{capacity:g} vCPUs for share identifiers not running yet",
            actions,
        )
        return True

    def _time_limits(self, queue: _Queue, seen: list[str], actions: list[Action], cause: str) -> None:
        """jobStateTimeLimitActions: cancel the job stuck at the head of the queue too long."""
        head = next((j for j in seen if j in queue.jobs), None)
        if head is None:
            queue.head = None
            return
        code = self._wait_reason.get(head, "").split(" - ", 1)[0]
        if queue.head is None or queue.head[:2] != (head, code):
            queue.head = (head, code, self._now)
        since = queue.head[2]
        for limit in queue.time_limits:
            if code == limit.reason and self._now - since >= limit.max_time_s:
                reason = TIME_LIMIT_CANCEL.format(limit.reason)
                self._withdraw(head)
                queue.head = None
                actions.append(CancelRunnable(head, reason))
                self.decisions.append((cause, f"cancel {head}: {reason} (at the head for {fmt_time(self._now - since)} s)"))
                return

    def _place_array(
        self, job: JobRunnable, estimate: float | None, usable: list[_ComputeEnvironment], reserved: dict[str, Reservation],
        failed: list[tuple[ResourceRequest, float]], reasons: dict[ResourceRequest, str],
        actions: list[Action], cause: str,
    ) -> bool:
        """Start as many tasks of an array as fit (and its cap allows); return whether room is left."""
        r = job.request
        while self._array_left.get(job.job_id, 0) > 0:
            if job.max_running is not None and self._array_running.get(job.job_id, 0) >= job.max_running:
                self._wait(job.job_id, f"Array at its limit of {job.max_running} running tasks", actions)
                break
            placed = self._place(r, estimate, usable, reserved)
            if placed is None:
                failed.append((r, _limit_key(estimate) if reserved else _ANY_LIMIT))
                self._wait(job.job_id, self._cached_why_not(r, usable, reserved, reasons), actions)
                break
            node, ce = placed
            index = self._array_next[job.job_id]
            self._array_next[job.job_id] = index + 1
            self._array_left[job.job_id] -= 1
            self._array_running[job.job_id] = self._array_running.get(job.job_id, 0) + 1
            task_id = f"{job.job_id}:{index}"
            gpus = self._hold(task_id, [node], r, False, estimate, share=self._charge(job), job=job).gpus[node.name]
            actions.append(StartAttempt(task_id, node.name, ce.name, gpus))
            self.decisions.append((cause, f"start {task_id} on {node.name} ({ce.name}){_gpu_note(gpus)}"))
            if node.free_vcpus <= 1e-9 and not self._has_room(usable, reserved):
                break
        if self._array_left.get(job.job_id, 1) <= 0:
            self._withdraw(job.job_id)
        return self._has_room(usable, reserved)

    def _has_room(self, ces: list[_ComputeEnvironment], reserved: dict[str, Reservation]) -> bool:
        return any(
            n.name not in reserved or reserved[n.name].start_s > self._now
            for ce in ces
            if ce.max_vcpus is None or ce.used_vcpus < ce.max_vcpus - 1e-9
            for n in ce.index.any_free()  # only ACTIVE, accepting, non-gang nodes with free vCPUs
        )

    def _may_use(
        self, node: str, reserved: dict[str, Reservation], job_id: str, time_limit_s: float | None
    ) -> bool:
        """A reserved node takes only its own gang, or a job that ends before it is needed."""
        res = reserved.get(node)
        return res is None or res.job_id == job_id or res.admits(self._now, time_limit_s)

    def _place(
        self,
        r: ResourceRequest,
        time_limit_s: float | None,
        ces: list[_ComputeEnvironment],
        reserved: dict[str, Reservation],
    ) -> tuple[_Node, _ComputeEnvironment] | None:
        for ce in ces:  # computeEnvironmentOrder: the first CE that can take it wins
            if ce.caps(r.vcpus):
                continue
            # The index yields nodes with enough free vCPUs in allocation-strategy order; GPU
            # steering ranks ahead of that order, and the walk stops at the first node that
            # is as good as any can be (in a CE without GPU nodes: the first that fits).
            best: _Node | None = None
            best_rank: tuple[int, int] | None = None
            ideal = steering_rank(r.gpus, 0, r.gpus)
            for node in ce.index.candidates(r.vcpus):
                if node.fits(r) and (not reserved or self._may_use(node.name, reserved, "", time_limit_s)):
                    rank = steering_rank(r.gpus, node.gpus, node.free_gpus)
                    if rank == ideal:
                        return node, ce  # type: ignore[return-value]
                    if best_rank is None or rank < best_rank:
                        best, best_rank = node, rank  # type: ignore[assignment]
            if best is not None:
                return best, ce
        return None

    # -------------------------------------------------------------------- gangs
    def _gang(
        self,
        job: JobRunnable,
        ces: list[_ComputeEnvironment],
        reserved: dict[str, Reservation],
        made: dict[str, Reservation],
        failed: list[tuple[int, ResourceRequest, float]],
        never_cache: dict[tuple[int, ResourceRequest, tuple[str, ...]], tuple[str | None, str]],
        actions: list[Action],
        cause: str,
    ) -> bool:
        """Start, reserve for, or explain one waiting gang; True when nodes changed hands."""
        n, r = job.num_nodes, job.request
        estimate = self._estimate(job)
        limit = _limit_key(estimate)
        if not any(n >= fn and _dominates(r, fr) and limit >= fl for fn, fr, fl in failed):
            placed = self._place_gang(job, estimate, ces, reserved)
            if placed is not None:
                nodes, ce = placed
                self._withdraw(job.job_id)
                alloc = self._hold(job.job_id, nodes, r, True, estimate, share=self._charge(job), job=job)
                names = tuple(node.name for node in nodes)
                gpus = tuple(alloc.gpus[name] for name in names) if r.gpus else ()
                actions.append(StartGang(job.job_id, names, ce.name, gpus))
                self.decisions.append(
                    (cause, f"start gang {job.job_id} on {hostlist(names)} ({ce.name})")
                )
                return True
            failed.append((n, r, limit if reserved else _ANY_LIMIT))
        key = (n, r, tuple(ce.name for ce in ces))
        cached = never_cache.get(key)
        if cached is None:
            cached = never_cache[key] = self._gang_why_never(job, ces)
        never, first_ce = cached
        if never is not None:
            self._wait(job.job_id, never, actions)
            return False
        queue = self._queues.get(job.queue)
        if queue is not None and queue.preempts and not made and self._preempt(
            job, queue, ces, reserved, made, actions, cause
        ):
            return True
        if len(made) < self._reservation_depth:
            res = self._reserve(job, ces, reserved)
            if res is not None:
                made[job.job_id] = res
                for name in res.nodes:
                    reserved[name] = res
                self._wait(job.job_id, res.describe(self._now), actions)
                return True
        self._wait(job.job_id, f"Waiting for {n} whole nodes in compute environment {first_ce}", actions)
        return False

    # --------------------------------------------------------------- preemption
    def _preempt(
        self, job: JobRunnable, queue: _Queue, ces: list[_ComputeEnvironment], reserved: dict[str, Reservation],
        made: dict[str, Reservation], actions: list[Action], cause: str,
    ) -> bool:
        """The head of a preempting queue that cannot start: stop victims for it (``preempt``),
        or keep holding what its victims free; True when it holds nodes this pass."""
        pending = self._preempting.get(job.job_id)
        if pending is not None:
            live = sorted(v for v in pending if v in self._allocations)
            if live:
                nodes = tuple(sorted({n for v in live for n in self._allocations[v].nodes}, key=natural_key))
                self._hold_for(job.job_id, self._allocations[live[0]].ce, nodes, made, reserved)
                self._wait(job.job_id, f"Preempting {', '.join(live)} to start", actions)
                return True
            del self._preempting[job.job_id]  # they ended, yet it still does not fit: choose again
        for ce in ces:
            rooms = self._rooms(job, queue, ce, reserved)
            if job.num_nodes > 1:
                chosen_gang = preempt.for_gang(job.num_nodes, rooms)
                if chosen_gang is None:
                    continue
                nodes, victims = chosen_gang
            else:
                chosen = preempt.for_single(job.request, rooms)
                if chosen is None:
                    continue
                nodes, victims = (chosen[0],), chosen[1]
            if not victims:
                return False  # room without stopping anything: it is placement's to find
            self._preempting[job.job_id] = set(victims)
            self._stopping.update(victims)
            for victim in victims:
                reason = f"Preempted for {job.job_id} of job queue {queue.name}"
                actions.append(PreemptAttempt(victim, job.job_id, reason))
                self.decisions.append((cause, f"preempt {victim} for {job.job_id} on {hostlist(nodes)} ({ce.name})"))
            self._hold_for(job.job_id, ce.name, tuple(sorted(nodes, key=natural_key)), made, reserved)
            self._wait(job.job_id, f"Preempting {', '.join(sorted(victims))} to start", actions)
            return True
        return False

    def _hold_for(
        self, job_id: str, ce: str, nodes: tuple[str, ...], made: dict[str, Reservation], reserved: dict[str, Reservation]
    ) -> None:
        res = Reservation(job_id, ce, nodes, self._now)  # due now: nothing backfills there
        made[job_id] = res
        for name in nodes:
            reserved[name] = res

    def _rooms(
        self, job: JobRunnable, queue: _Queue, ce: _ComputeEnvironment, reserved: dict[str, Reservation]
    ) -> list[preempt.NodeRoom]:
        """The nodes of ``ce`` that could hold ``job`` once preemptible work is stopped."""
        rooms = []
        for node in ce.nodes.values():
            if not node.accepting or node.name in reserved or not node.could_ever_fit(job.request):
                continue
            victims, keeps = [], 0
            for held in node.jobs:
                alloc = self._allocations.get(held)
                victim_queue = self._queues.get(alloc.key.queue) if alloc is not None and alloc.key else None
                if (
                    alloc is None or victim_queue is None or held in self._stopping
                    or not victim_queue.preemptible or victim_queue.priority >= queue.priority
                ):
                    keeps += 1
                    continue
                r = alloc.request
                victims.append(preempt.Victim(held, alloc.started_at, r.vcpus, r.memory_mib,
                                              len(alloc.gpus.get(node.name, ())), r.vcpus * len(alloc.nodes)))
            if job.num_nodes <= 1 and node.gang is not None and keeps:
                continue  # a kept gang holds the whole node
            rooms.append(preempt.NodeRoom(node.name, (node.free_vcpus, node.free_memory_mib, node.free_gpus),
                                          tuple(victims), keeps))
        return rooms

    # ------------------------------------------------------- single-node reservations
    def _preempt_or_reserve(
        self, job: JobRunnable, queue: _Queue, ces: list[_ComputeEnvironment], reserved: dict[str, Reservation],
        made: dict[str, Reservation], reasons: dict[ResourceRequest, str], actions: list[Action], cause: str,
    ) -> bool:
        """For a single-node job that cannot start now: stop victims for it (a preempting
        queue's head, before any reservation this pass), else reserve for it while the pass
        may still make reservations. True when either made room the caller must recount."""
        if queue.preempts and not made and self._preempt(job, queue, ces, reserved, made, actions, cause):
            return True
        return len(made) < self._reservation_depth and self._reserve_head(job, ces, reserved, made, reasons, actions)

    def _reserve_head(
        self, job: JobRunnable, ces: list[_ComputeEnvironment], reserved: dict[str, Reservation],
        made: dict[str, Reservation], reasons: dict[ResourceRequest, str], actions: list[Action],
    ) -> bool:
        """Reserve for a single-node job at the head of its queue that cannot start now (it
        waits for capacity, not for something no node has); True when it got one."""
        why = self._cached_why_not(job.request, ces, reserved, reasons)
        if not (why.startswith(CAPACITY) or why == WAIT_RESERVED):
            return False
        res = self._reserve_single(job.job_id, job.request, ces, reserved)
        if res is None:
            return False
        made[job.job_id] = res
        reserved[res.nodes[0]] = res
        # The reason keeps AWS's CAPACITY code (jobStateTimeLimitActions match it); the
        # reservation shows in the decision log, ``reservation()`` and the start forecast.
        self._wait(job.job_id, why, actions)
        return True

    def _reserve_single(
        self, job_id: str, r: ResourceRequest, ces: list[_ComputeEnvironment], reserved: dict[str, Reservation]
    ) -> Reservation | None:
        """The node that has room for ``r`` soonest (by planned ends), in the first compute
        environment in order that gives the earliest time; None when no planned end gives
        room (then smaller jobs pass it freely, as before: nothing is known to wait for)."""
        best: Reservation | None = None
        for ce in ces:
            if ce.max_vcpus is not None and r.vcpus > ce.max_vcpus + 1e-9:
                continue
            found = self._soonest_room(ce, r, reserved)
            if found is not None and (best is None or found[1] < best.start_s):
                best = Reservation(job_id, ce.name, (found[0].name,), found[1])
        return best

    def _soonest_room(
        self, ce: _ComputeEnvironment, r: ResourceRequest, reserved: dict[str, Reservation]
    ) -> tuple[_Node, float] | None:
        """(node, time) of the earliest planned end after which a node of ``ce`` has room for
        ``r``: the ends are walked in time order, adding up what each gives back to its node."""
        heap, popped = ce.ends, []
        freed: dict[str, list[float]] = {}
        found: tuple[_Node, float] | None = None
        try:
            while heap:
                entry = heapq.heappop(heap)
                if not self._live_end(entry):
                    continue  # ended or re-planned since: dropped for good
                popped.append(entry)
                end, job_id, name = entry
                node = self._nodes.get(name)
                if node is None or not node.accepting or name in reserved or not node.could_ever_fit(r):
                    continue
                alloc = self._allocations[job_id]
                f = freed.setdefault(name, [0.0, 0.0, 0.0])
                f[0] += alloc.request.vcpus
                f[1] += alloc.request.memory_mib
                f[2] += len(alloc.gpus.get(name, ()))
                if (
                    (node.gang is None or node.gang == job_id)
                    and node.free_vcpus + f[0] >= r.vcpus - 1e-9
                    and node.free_memory_mib + f[1] >= r.memory_mib
                    and node.free_gpus + f[2] >= r.gpus
                ):
                    found = (node, max(self._now, end))
                    break
        finally:
            for entry in popped:
                heapq.heappush(heap, entry)
        return found

    def _place_gang(
        self, job: JobRunnable, estimate: float | None, ces: list[_ComputeEnvironment],
        reserved: dict[str, Reservation],
    ) -> tuple[list[_Node], _ComputeEnvironment] | None:
        """``num_nodes`` idle nodes of the first compute environment that has them, or None.

        ``pick_nodes``' rule for nodes that are all free now, without building candidates:
        the placement group with the fewest fitting idle nodes that still holds the gang
        (then by name), else (no group required) any; smallest nodes first, then by name.
        """
        n, r = job.num_nodes, job.request

        def fits(shape: tuple[float, int, int, int, frozenset[str]]) -> bool:  # could_ever_fit, by shape
            return r.vcpus <= shape[0] + 1e-9 and r.memory_mib <= shape[1] and r.gpus <= shape[3] and r.requires <= shape[4]

        def cpu_only(shape: tuple[float, int, int, int, frozenset[str]]) -> bool:
            return shape[2] == 0 and fits(shape)

        for ce in ces:
            if ce.caps(n * r.vcpus) or len(ce.idle) < n:
                continue
            unusable = {
                name for name in reserved
                if name in ce.idle and not self._may_use(name, reserved, job.job_id, estimate)
            }
            picked = None
            if r.gpus == 0:  # steering: CPU-only nodes first (gpus.py), when GPU nodes would fit too
                able = sum(ce.idle.counts(fits, unusable).values())
                if able >= n and sum(ce.idle.counts(cpu_only, unusable).values()) < able:
                    picked = ce.idle.pick(n, cpu_only, unusable, ce.require_placement_group)
            picked = picked or ce.idle.pick(n, fits, unusable, ce.require_placement_group)
            if picked is not None:
                return picked, ce
        return None

    def _reserve(
        self, job: JobRunnable, ces: list[_ComputeEnvironment], reserved: dict[str, Reservation]
    ) -> Reservation | None:
        """The nodes of one compute environment that free up soonest for ``job``."""
        n, r = job.num_nodes, job.request
        best: Reservation | None = None
        for ce in ces:
            if ce.max_vcpus is not None and n * r.vcpus > ce.max_vcpus + 1e-9:
                continue
            if ce.require_placement_group:
                able = [
                    (self._free_at(node), node)
                    for node in ce.nodes.values()
                    if node.accepting and node.could_ever_fit(r) and node.name not in reserved
                ]
            else:
                # Without a required group the chosen nodes are all free by the n-th soonest
                # time: walk the nodes by expected end and stop after that time (5k nodes).
                able = []
                cutoff: float | None = None
                for end, name in ce.by_end:
                    t = max(self._now, end)
                    if cutoff is not None and t > cutoff:
                        break
                    node = ce.nodes[name]
                    if node.accepting and node.could_ever_fit(r) and name not in reserved:
                        able.append((t, node))
                        if len(able) == n:
                            cutoff = t
            if len(able) < n:
                continue
            if ce.require_placement_group:
                picked = pick_nodes([node.candidate(t) for t, node in able], n, True)
                if picked is None:
                    continue
                group, names, start = picked[0], [c.name for c in picked[1]], max(c.free_at for c in picked[1])
            else:
                group, names, start = _soonest_nodes(able, n)
            if best is None or start < best.start_s:  # a tie goes to the earlier CE in order
                best = Reservation(job.job_id, ce.name, tuple(names), start, group)
        return best

    def _free_at(self, node: _Node) -> float:
        """When ``node`` is expected to run nothing: the latest end of what it runs."""
        return max(self._now, node.latest_end)

    def _census(self, ce: _ComputeEnvironment) -> dict[tuple[float, int, int, str | None, frozenset[str]], int]:
        """Accepting nodes of ``ce`` counted by (vCPUs, MiB, usable GPUs, placement group, features),
        kept as nodes come and go (``NodeCensus``)."""
        return ce.nodes.census

    def _gang_why_never(
        self, job: JobRunnable, ces: list[_ComputeEnvironment]
    ) -> tuple[str | None, str]:
        """(why the gang cannot run even on an empty cluster, or None; the first CE it could use)."""
        n, r = job.num_nodes, job.request
        group_ce = capped_ce = None
        for ce in ces:
            # Counted by node shape, not node by node: the shapes are few, the nodes many.
            census = self._census(ce)
            able_total = 0
            by_group: dict[str | None, int] = {}
            for (vcpus, memory_mib, gpus, group, features), count in census.items():
                if r.vcpus <= vcpus + 1e-9 and r.memory_mib <= memory_mib and r.gpus <= gpus and r.requires <= features:
                    able_total += count
                    by_group[group] = by_group.get(group, 0) + count
            fits_group = any(g is not None and c >= n for g, c in by_group.items())
            if ce.max_vcpus is not None and n * r.vcpus > ce.max_vcpus + 1e-9:
                capped_ce = capped_ce or ce.name
            elif fits_group or (not ce.require_placement_group and able_total >= n):
                return None, ce.name
            elif ce.require_placement_group and able_total >= n:
                group_ce = group_ce or ce.name
        away = self._gang_waits_for_nodes_away(job, ces)
        if away is not None:
            return away, ""
        if group_ce is not None:
            return f"{REQUIREMENT} - No placement group of compute environment {group_ce} can hold {n} nodes", ""
        if capped_ce is not None:
            return (
                f"{MAX_RESOURCE} - Compute environment {capped_ce} maxvCpus is below {n} nodes x "
                f"{r.vcpus:g} vCPUs", ""
            )
        return (
            f"{REQUIREMENT} - No compute environment in {', '.join(ce.name for ce in ces)} has {n} ACTIVE nodes "
            f"that can each hold vcpus={r.vcpus:g} memory={r.memory_mib}MiB gpus={r.gpus}"
            + "".join(f" and offer {_FEATURE_TEXT.get(f, f)}" for f in sorted(r.requires)), ""
        )

    # ------------------------------------------------------------------ reasons
    def _cached_why_not(
        self,
        r: ResourceRequest,
        ces: list[_ComputeEnvironment],
        reserved: dict[str, Reservation],
        cache: dict[ResourceRequest, str],
    ) -> str:
        reason = cache.get(r)
        if reason is None:
            reason = cache[r] = self._why_not(r, ces, reserved)
        return reason

    def _why_not(
        self, r: ResourceRequest, ces: list[_ComputeEnvironment], reserved: dict[str, Reservation]
    ) -> str:
        if not any(n.could_ever_fit(r) for ce in ces for n in ce.nodes.values()):
            away = _away_note(*self._nodes_away(r, ces))
            if away:  # a node that would hold it is only down: it comes back
                return f"{CAPACITY} - Waiting for a node that can hold the job: {away}"
            return f"{REQUIREMENT} - {self._why_never(r, ces)}"
        able = [ce for ce in ces if any(n.could_ever_fit(r) for n in ce.nodes.values())]
        if all(ce.max_vcpus is not None and r.vcpus > ce.max_vcpus + 1e-9 for ce in able):
            return (
                f"{MAX_RESOURCE} - needs {r.vcpus:g} vCPUs; maxvCpus of compute environments "
                f"{', '.join(f'{ce.name}={ce.max_vcpus:g}' for ce in able)}"
            )
        if all(ce.caps(r.vcpus) for ce in ces):
            return WAIT_MAX_VCPUS
        if reserved and self._place(r, None, ces, {}) is not None:
            return WAIT_RESERVED
        largest = max((f for ce in ces if (f := ce.index.largest_free()) is not None), default=None)
        if largest is None:
            have = "no node has free vCPUs"
        else:
            have = f"the largest free node has {largest[0]:g} vCPUs and {largest[1]} MiB"
        gpus = f" and {r.gpus} GPUs" if r.gpus else ""
        away = _away_note(*self._nodes_away(r, ces))
        return (
            f"{CAPACITY} - {WAIT_RESOURCES} (needs {r.vcpus:g} vCPUs and {r.memory_mib} MiB{gpus}, {have})"
            + (f"; {away}" if away else "")
        )

    def _why_never(self, r: ResourceRequest, ces: list[_ComputeEnvironment]) -> str:
        """Why no node of ``ces`` could ever hold ``r`` (the detail of a REQUIREMENT reason)."""
        names = ", ".join(ce.name for ce in ces)
        missing = r.requires - frozenset().union(*(n.features for ce in ces for n in ce.nodes.values()))
        if missing:
            return f"No node in compute environments {names} offers " + ", ".join(
                sorted(_FEATURE_TEXT.get(f, f) for f in missing)
            )
        cpu_only = ResourceRequest(vcpus=r.vcpus, memory_mib=r.memory_mib, gpus=0, requires=r.requires)
        if r.gpus and any(n.could_ever_fit(cpu_only) for ce in ces for n in ce.nodes.values()):
            most = max(n.gpus - len(n.gpu_out) for ce in ces for n in ce.nodes.values())
            return (
                f"No node in compute environments {names} has {r.gpus} GPUs (the most is {most}): "
                f"vcpus={r.vcpus:g} memory={r.memory_mib}MiB gpus={r.gpus}"
            )
        return (
            f"No node in compute environments {names} can hold "
            f"vcpus={r.vcpus:g} memory={r.memory_mib}MiB gpus={r.gpus}"
        )

    # ------------------------------------------- nodes away (drained, down): CAPACITY, named
    def _nodes_away(self, r: ResourceRequest, ces: list[_ComputeEnvironment]) -> tuple[list[str], list[str]]:
        """(not accepting work, down) nodes of ``ces`` that could hold ``r``: capacity that comes back."""
        drained: list[str] = []
        down: list[str] = []
        for ce in ces:
            away = self._away_cache.get(ce.name)
            if away is None:  # cached like the census: it changes only when nodes do
                away = self._away_cache[ce.name] = (
                    [n for n in ce.nodes.values() if not n.accepting],
                    [n for n in self._down.values() if n.ce == ce.name],
                )
            drained += (n.name for n in away[0] if n.could_ever_fit(r))
            down += (n.name for n in away[1] if n.could_ever_fit(r))
        return sorted(drained, key=natural_key), sorted(down, key=natural_key)

    def _gang_waits_for_nodes_away(self, job: JobRunnable, ces: list[_ComputeEnvironment]) -> str | None:
        """A CAPACITY reason naming the drained/down nodes when, with them back, one compute
        environment of ``ces`` would have the gang's nodes; None when even that is not enough."""
        n, r = job.num_nodes, job.request
        for ce in ces:
            if ce.max_vcpus is not None and n * r.vcpus > ce.max_vcpus + 1e-9:
                continue
            drained, down = self._nodes_away(r, [ce])
            if not drained and not down:
                continue
            active = sum(1 for nd in ce.nodes.values() if nd.accepting and nd.could_ever_fit(r))
            if active + len(drained) + len(down) >= n:
                return (
                    f"{CAPACITY} - Waiting for {n} whole nodes in compute environment {ce.name}: "
                    f"{active} can hold it now; {_away_note(drained, down)}"
                )
        return None

    def _wait_all(self, queue: _Queue, reason: str, actions: list[Action]) -> None:
        for job_id in queue.jobs:
            self._wait(job_id, reason, actions)

    def _wait(self, job_id: str, reason: str, actions: list[Action]) -> None:
        if self._fair_note:
            queue_name = self._queue_of.get(job_id)
            queue = self._queues.get(queue_name or "")
            if queue is not None and queue.fair_share is not None and not reason.startswith("Fair share"):
                job = queue.jobs.get(job_id)
                reason += self._fair_note.get((queue.name, (job.share or "") if job else ""), "")
        if self._wait_reason.get(job_id) != reason:
            self._wait_reason[job_id] = reason
            actions.append(SetWaitReason(job_id, reason))


def _soonest_nodes(able: list[tuple[float, _Node]], n: int) -> tuple[str | None, list[str], float]:
    """``pick_nodes``' choice among nodes all free by the n-th soonest time, without candidates.

    Every option then starts at that time, so one placement group that holds ``n`` of them
    wins over a spread (the group with the fewest such nodes, then by name). Inside the
    choice, with a known start: the nodes that free up latest while still in time (EASY's
    "extra nodes": nodes idle now that the gang does not need stay free for any job), then
    smaller nodes, then by name; with an unknown start: soonest first (the idle nodes, held
    as the rest free up). Returns (group, names in index order, start).
    """
    groups: dict[str, list[tuple[float, _Node]]] = {}
    for item in able:
        group = item[1].placement_group
        if group is not None:
            groups.setdefault(group, []).append(item)
    options = [(len(members), group) for group, members in groups.items() if len(members) >= n]
    chosen_group = min(options)[1] if options else None
    pool = groups[chosen_group] if chosen_group is not None else able
    chosen = heapq.nsmallest(
        n, pool, key=lambda it: (it[0], (it[1].vcpus, it[1].memory_mib, it[1].gpus), natural_key(it[1].name))
    )
    start = max(t for t, _ in chosen)
    if start != UNKNOWN:
        chosen = heapq.nsmallest(
            n, [it for it in pool if it[0] <= start],
            key=lambda it: (-it[0], (it[1].vcpus, it[1].memory_mib, it[1].gpus), natural_key(it[1].name)),
        )
    names = sorted((nd.name for _, nd in chosen), key=natural_key)
    return chosen_group, names, start


def _away_note(drained: list[str], down: list[str]) -> str:
    """``node3 is drained or draining, node4 is down (they come back)``; "" when none."""
    parts = []
    if drained:
        parts.append(f"{hostlist(drained)} {'is' if len(drained) == 1 else 'are'} drained or draining")
    if down:
        parts.append(f"{hostlist(down)} {'is' if len(down) == 1 else 'are'} down")
    return (", ".join(parts) + " (capacity that comes back)") if parts else ""


def _share_entry(job: JobRunnable) -> tuple[int, int, str, float]:
    """A job's place in its share's heap: higher schedulingPriority first, then FIFO."""
    return (-job.priority, job.seq, job.job_id, job.request.vcpus * max(1, job.num_nodes))


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _gpu_note(gpus: tuple[str, ...]) -> str:
    return f" GPUs {','.join(gpus)}" if gpus else ""


def _run_key(job: JobRunnable) -> RunKey:
    return RunKey(job.owner, job.definition, job.queue)


def _limit_key(time_limit_s: float | None) -> float:
    """A time limit for comparisons: no limit is the longest."""
    return math.inf if time_limit_s is None else float(time_limit_s)


def _dominates(a: ResourceRequest, b: ResourceRequest) -> bool:
    """True when ``a`` needs at least what ``b`` needs in every dimension."""
    return a.vcpus >= b.vcpus and a.memory_mib >= b.memory_mib and a.gpus >= b.gpus and a.requires >= b.requires


_FEATURE_TEXT = {"container": "a container runtime (the job names an image)"}
