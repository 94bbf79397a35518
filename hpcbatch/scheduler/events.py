"""The scheduler core's vocabulary: the typed events it takes and the typed actions it returns.

Every event carries an ``event_id``; the decision log (``decisions``) records, for each
decision, the ids and kinds of the events that led to it. The rules that turn events into
actions are in ``core``'s docstring.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.scheduler.fairshare import FairSharePolicy
from hpcbatch.scheduler.gpus import GpuPlace


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
class NodePowerChanged(Event):
    """A MANAGED pool's node that is not registered (``hpcbatch.scheduler.power``), as the
    power planner sees it: ``state`` POWERED_DOWN (it can be powered up: it would register
    ``boot_s`` after now) or POWERING_UP (since ``since_s``: expected at ``since_s + boot_s``).
    Any other state (ACTIVE, POWERING_DOWN, or a node that failed to come up) takes it out of
    planning; ``NodeUp`` (it registered) replaces it. Reservations and forecasts plan with
    such nodes from the time they are expected up (``booting``); nothing starts on them."""

    node: str
    compute_environment: str
    state: str  # POWERED_DOWN | POWERING_UP; anything else: not planned with
    boot_s: float  # the pool's expected boot time
    vcpus: float
    memory_mib: int  # 0: not known (the pool's memory_mib_per_node 0): not checked
    gpus: int = 0
    since_s: float = 0.0  # POWERING_UP: when the power-up began, in the time Tick carries
    placement_group: str | None = None
    features: frozenset[str] = frozenset()  # as NodeUp.features ("container": a runtime)
    resume_timeout_s: float = 0.0  # the pool's: a boot overdue this long is given up (0: not said)


@dataclass(frozen=True)
class PowerRateReached(Event):
    """A MANAGED pool powered up its ``resume_rate`` nodes this minute, and a waiting job wants
    more: the next power-up may begin at ``until_s`` (the time Tick carries); 0 when the pool
    is no longer held back. Only the wait reasons say it (``gang.power_note``)."""

    compute_environment: str
    until_s: float


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

