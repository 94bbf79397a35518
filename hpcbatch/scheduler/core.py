"""The scheduler core: which RUNNABLE job starts on which node, and why the others wait.

Theory of operation:

* The head feeds events (a job became runnable or was withdrawn, a node joined or left,
  an attempt ended and gave its resources back, a queue or compute environment changed)
  and calls ``handle``; it gets back typed actions (``StartAttempt``, ``SetWaitReason``)
  to apply. The core owns no sockets, no SQL and no clock: it can be driven by the head,
  by tests event by event, or by a simulator at any scale.
* Order: ENABLED queues by ``priority`` (higher first, AWS), ties by name; inside a queue
  FIFO by submission sequence. Each queue tries its compute environments in
  ``computeEnvironmentOrder``.
* A job fits a node when the node is ACTIVE in an ENABLED compute environment, has the
  free vCPUs, memory and GPUs, and the compute environment stays within ``maxvCpus``.
  Among fitting nodes the core picks the best fit (least vCPUs left over, then least
  memory), which keeps whole nodes free for big jobs.
* A job that does not fit does not block the queue: smaller jobs behind it may start
  (reservations that stop them from starving it are the gang scheduler's, issue 3).
* Every decision is appended to a bounded log with the id of the event that caused it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from hpcbatch.model.jobs import ResourceRequest


# ------------------------------------------------------------------------- events
@dataclass(frozen=True)
class Event:
    """Base of every input; ``event_id`` ties a decision to what caused it."""

    event_id: str


@dataclass(frozen=True)
class JobRunnable(Event):
    job_id: str
    queue: str
    request: ResourceRequest
    seq: int  # submission order; FIFO inside a queue


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


@dataclass(frozen=True)
class NodeGone(Event):
    node: str


@dataclass(frozen=True)
class AttemptEnded(Event):
    """A placed job's attempt ended (or was abandoned); its resources come back."""

    job_id: str


@dataclass(frozen=True)
class ComputeEnvironmentChanged(Event):
    name: str
    enabled: bool
    max_vcpus: float | None


@dataclass(frozen=True)
class ComputeEnvironmentRemoved(Event):
    name: str


@dataclass(frozen=True)
class JobQueueChanged(Event):
    name: str
    enabled: bool
    priority: int
    compute_environments: tuple[str, ...]  # already in computeEnvironmentOrder


@dataclass(frozen=True)
class JobQueueRemoved(Event):
    name: str


# ------------------------------------------------------------------------ actions
@dataclass(frozen=True)
class Action:
    """Base of every output."""


@dataclass(frozen=True)
class StartAttempt(Action):
    job_id: str
    node: str
    compute_environment: str


@dataclass(frozen=True)
class SetWaitReason(Action):
    job_id: str
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
    free_gpus: int = 0

    def fits(self, r: ResourceRequest) -> bool:
        return (
            self.accepting
            and r.vcpus <= self.free_vcpus + 1e-9
            and r.memory_mib <= self.free_memory_mib
            and r.gpus <= self.free_gpus
        )

    def could_ever_fit(self, r: ResourceRequest) -> bool:
        return r.vcpus <= self.vcpus + 1e-9 and r.memory_mib <= self.memory_mib and r.gpus <= self.gpus


@dataclass
class _ComputeEnvironment:
    name: str
    enabled: bool = True
    max_vcpus: float | None = None
    used_vcpus: float = 0.0
    nodes: dict[str, _Node] = field(default_factory=dict)


@dataclass
class _Queue:
    name: str
    enabled: bool
    priority: int
    compute_environments: tuple[str, ...]
    jobs: dict[str, JobRunnable] = field(default_factory=dict)  # insertion = FIFO order
    fresh: list[str] = field(default_factory=list)  # arrived since the last pass: need a wait reason
    rescan: bool = True  # queue settings changed: every job's wait reason may be stale


@dataclass
class _Allocation:
    node: str
    ce: str
    request: ResourceRequest


WAIT_RESOURCES = "Waiting for resources: no node in the queue's compute environments has room now"
WAIT_QUEUE_DISABLED = "Job queue is DISABLED"
WAIT_NO_CE = "No ENABLED compute environment with nodes in this job queue"
WAIT_MAX_VCPUS = "Compute environment at its maxvCpus limit"


class Scheduler:
    """Placement state and the decision procedure; see the module docstring."""

    def __init__(self, log_size: int = 10_000) -> None:
        self._ces: dict[str, _ComputeEnvironment] = {}
        self._nodes: dict[str, _Node] = {}
        self._queues: dict[str, _Queue] = {}
        self._queue_of: dict[str, str] = {}  # runnable job -> queue
        self._orphans: dict[str, JobRunnable] = {}  # runnable in an unknown queue
        self._allocations: dict[str, _Allocation] = {}
        self._wait_reason: dict[str, str] = {}
        self.decisions: deque[tuple[str, str]] = deque(maxlen=log_size)

    # ------------------------------------------------------------------ queries
    @property
    def runnable_count(self) -> int:
        return len(self._queue_of) + len(self._orphans)

    def allocation(self, job_id: str) -> tuple[str, str] | None:
        """(node, compute environment) holding ``job_id``, if placed."""
        a = self._allocations.get(job_id)
        return (a.node, a.ce) if a else None

    def node_usage(self, node: str) -> tuple[float, int, int] | None:
        """(allocated vCPUs, memory MiB, GPUs) on ``node``."""
        n = self._nodes.get(node)
        if n is None:
            return None
        return (n.vcpus - n.free_vcpus, n.memory_mib - n.free_memory_mib, n.gpus - n.free_gpus)

    # -------------------------------------------------------------------- input
    def handle(self, *events: Event) -> list[Action]:
        """Apply ``events`` in order, then place what can be placed; return the actions."""
        for event in events:
            self._apply(event)
        cause = events[-1].event_id if events else "tick"
        return self._schedule(cause)

    def _apply(self, event: Event) -> None:
        match event:
            case JobRunnable():
                queue = self._queues.get(event.queue)
                if queue is None:
                    self._orphans[event.job_id] = event
                else:
                    queue.jobs[event.job_id] = event
                    queue.fresh.append(event.job_id)
                    self._queue_of[event.job_id] = event.queue
            case JobWithdrawn():
                self._withdraw(event.job_id)
            case AttemptEnded():
                self._release(event.job_id)
            case NodeUp():
                self._node_up(event)
            case NodeGone():
                node = self._nodes.pop(event.node, None)
                if node is not None:
                    self._ce(node.ce).nodes.pop(node.name, None)
                    for job_id in [j for j, a in self._allocations.items() if a.node == event.node]:
                        self._release(job_id)
            case ComputeEnvironmentChanged():
                ce = self._ce(event.name)
                ce.enabled, ce.max_vcpus = event.enabled, event.max_vcpus
            case ComputeEnvironmentRemoved():
                ce = self._ces.get(event.name)
                if ce is not None and not ce.nodes:
                    del self._ces[event.name]
            case JobQueueChanged():
                queue = self._queues.get(event.name)
                if queue is None:
                    queue = self._queues[event.name] = _Queue(
                        event.name, event.enabled, event.priority, event.compute_environments
                    )
                    for job_id, job in list(self._orphans.items()):
                        if job.queue == event.name:
                            del self._orphans[job_id]
                            queue.jobs[job_id] = job
                            self._queue_of[job_id] = event.name
                else:
                    queue.enabled, queue.priority = event.enabled, event.priority
                    queue.compute_environments = event.compute_environments
                    queue.rescan = True
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
        for job_id in [j for j, a in self._allocations.items() if a.node == event.node]:
            self._release(job_id)
        old = self._nodes.get(event.node)
        if old is not None:
            self._ce(old.ce).nodes.pop(old.name, None)
        node = _Node(
            event.node, event.compute_environment, event.vcpus, event.memory_mib, event.gpus,
            event.accepting, event.vcpus, event.memory_mib, event.gpus,
        )
        self._nodes[node.name] = node
        self._ce(node.ce).nodes[node.name] = node
        for job_id, request in event.allocations:
            self._withdraw(job_id)
            self._hold(job_id, node, request)

    def _withdraw(self, job_id: str) -> None:
        self._orphans.pop(job_id, None)
        self._wait_reason.pop(job_id, None)
        queue_name = self._queue_of.pop(job_id, None)
        if queue_name is not None:
            self._queues[queue_name].jobs.pop(job_id, None)

    def _hold(self, job_id: str, node: _Node, request: ResourceRequest) -> None:
        node.free_vcpus -= request.vcpus
        node.free_memory_mib -= request.memory_mib
        node.free_gpus -= request.gpus
        self._ce(node.ce).used_vcpus += request.vcpus
        self._allocations[job_id] = _Allocation(node.name, node.ce, request)

    def _release(self, job_id: str) -> None:
        alloc = self._allocations.pop(job_id, None)
        if alloc is None:
            return
        ce = self._ces.get(alloc.ce)
        if ce is not None:
            ce.used_vcpus -= alloc.request.vcpus
        node = self._nodes.get(alloc.node)
        if node is not None:
            node.free_vcpus += alloc.request.vcpus
            node.free_memory_mib += alloc.request.memory_mib
            node.free_gpus += alloc.request.gpus

    # ----------------------------------------------------------------- decision
    def _schedule(self, cause: str) -> list[Action]:
        actions: list[Action] = []
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
            # full, only jobs that arrived since the last pass still need their wait reason.
            # This keeps a pass over a deep queue on a busy cluster cheap.
            fresh, queue.fresh = queue.fresh, []
            rescan, queue.rescan = queue.rescan, False
            failed: list[ResourceRequest] = []
            reasons: dict[ResourceRequest, str] = {}  # why-not, once per distinct request
            room = self._has_room(usable)
            for job in list(queue.jobs.values()):
                if not room:
                    if rescan:
                        self._wait(job.job_id, self._cached_why_not(job.request, usable, reasons), actions)
                        continue
                    for job_id in fresh:
                        if job_id in queue.jobs:
                            self._wait(job_id, self._cached_why_not(queue.jobs[job_id].request, usable, reasons), actions)
                    break
                r = job.request
                if any(_dominates(r, f) for f in failed):
                    self._wait(job.job_id, self._cached_why_not(r, usable, reasons), actions)
                    continue
                placed = self._place(job, usable)
                if placed is None:
                    # Requests known not to fit in this pass: anything at least as large
                    # cannot fit either, so a long FIFO of equal jobs costs one failed search.
                    failed.append(r)
                    self._wait(job.job_id, self._cached_why_not(r, usable, reasons), actions)
                    continue
                node, ce = placed
                self._withdraw(job.job_id)
                self._hold(job.job_id, node, r)
                actions.append(StartAttempt(job.job_id, node.name, ce.name))
                self.decisions.append((cause, f"start {job.job_id} on {node.name} ({ce.name})"))
                if node.free_vcpus <= 1e-9:
                    room = self._has_room(usable)
        return actions

    @staticmethod
    def _has_room(ces: list[_ComputeEnvironment]) -> bool:
        return any(
            n.accepting and n.free_vcpus > 1e-9
            for ce in ces
            if ce.max_vcpus is None or ce.used_vcpus < ce.max_vcpus - 1e-9
            for n in ce.nodes.values()
        )

    def _place(
        self, job: JobRunnable, ces: list[_ComputeEnvironment]
    ) -> tuple[_Node, _ComputeEnvironment] | None:
        r = job.request
        for ce in ces:  # computeEnvironmentOrder: the first CE that can take it wins
            if ce.max_vcpus is not None and ce.used_vcpus + r.vcpus > ce.max_vcpus + 1e-9:
                continue
            best: _Node | None = None
            for node in ce.nodes.values():
                if node.fits(r) and (
                    best is None
                    or (node.free_vcpus, node.free_memory_mib) < (best.free_vcpus, best.free_memory_mib)
                ):
                    best = node
            if best is not None:
                return best, ce
        return None

    def _cached_why_not(
        self, r: ResourceRequest, ces: list[_ComputeEnvironment], cache: dict[ResourceRequest, str]
    ) -> str:
        reason = cache.get(r)
        if reason is None:
            reason = cache[r] = self._why_not(r, ces)
        return reason

    def _why_not(self, r: ResourceRequest, ces: list[_ComputeEnvironment]) -> str:
        if not any(n.could_ever_fit(r) for ce in ces for n in ce.nodes.values()):
            return (
                f"No node in compute environments {', '.join(ce.name for ce in ces)} can hold "
                f"vcpus={r.vcpus:g} memory={r.memory_mib}MiB gpus={r.gpus}"
            )
        if all(
            ce.max_vcpus is not None and ce.used_vcpus + r.vcpus > ce.max_vcpus + 1e-9 for ce in ces
        ):
            return WAIT_MAX_VCPUS
        return WAIT_RESOURCES

    def _wait_all(self, queue: _Queue, reason: str, actions: list[Action]) -> None:
        for job_id in queue.jobs:
            self._wait(job_id, reason, actions)

    def _wait(self, job_id: str, reason: str, actions: list[Action]) -> None:
        if self._wait_reason.get(job_id) != reason:
            self._wait_reason[job_id] = reason
            actions.append(SetWaitReason(job_id, reason))


def _dominates(a: ResourceRequest, b: ResourceRequest) -> bool:
    """True when ``a`` needs at least what ``b`` needs in every dimension."""
    return a.vcpus >= b.vcpus and a.memory_mib >= b.memory_mib and a.gpus >= b.gpus
