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
* Power (``booting``): a MANAGED pool's node that is powered down or booting
  (``NodePowerChanged``) takes no job, but reservations, wait reasons and forecasts count it
  as free from when it is expected up (power-up start + boot time; powered down: now + boot
  time), so backfill during a boot never delays the job that waits for it.
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
  never a ``MISCONFIGURATION`` (``reasons.nodes_away``). The submit-time check that refuses a job
  no node set could ever hold is ``satisfy.why_unsatisfiable``.
* Wait reasons are emitted only when they change. Every decision (start, reservation new or
  changed, preemption, cancel, grown plan) goes to a bounded log keyed by job id, with the
  events that led to it (``decisions``): what ``hpcbatch why`` shows.

The parts, each a module of functions over one ``SchedulerState`` (``state``; composition,
not inheritance: this class holds the state and is the only public face):

* ``events``: the events in and actions out; ``apply``: one handler per event type;
* ``holds``: what placed jobs hold, and the indexes that follow it;
* ``passes``: one decision pass, as named steps over a ``QueueScan``;
* ``placement`` (where a job starts now), ``reserve``
  (reservations and backfill; ``booting``: pool nodes not up yet), ``preemption`` (victims for a preempting queue's head),
  ``fairness`` (fair share, jobStateTimeLimitActions), ``reasons`` (why a job waits, and the
  decision log's entries), ``planning`` (planned run times, start forecasts);
* pure helpers that need no scheduler state: ``gang``, ``fairshare``, ``nodeindex``,
  ``predict``, ``forecast``, ``preempt``, ``gpus``, ``satisfy``.
"""

from __future__ import annotations

import gc

from hpcbatch.scheduler.apply import apply_events
from hpcbatch.scheduler.decisions import Cause, Decision, DecisionLog
from hpcbatch.scheduler.events import (
    Action,
    AttemptEnded,
    CancelRunnable,
    ComputeEnvironmentChanged,
    ComputeEnvironmentRemoved,
    Event,
    JobQueueChanged,
    JobQueueRemoved,
    JobRunnable,
    JobWithdrawn,
    NodeGone,
    NodePowerChanged,
    NodeUp,
    PowerRateReached,
    PreemptAttempt,
    RunTimesLearned,
    SetWaitReason,
    StartAttempt,
    StartGang,
    StateTimeLimit,
    Tick,
)
from hpcbatch.scheduler.fairness import front_of_queue
from hpcbatch.scheduler.gang import Reservation
from hpcbatch.scheduler.passes import schedule
from hpcbatch.scheduler.planning import expected_start, forecast_starts
from hpcbatch.scheduler.predict import Predictor
from hpcbatch.scheduler.reasons import (
    CAPACITY,
    MAX_RESOURCE,
    REQUIREMENT,
    TIME_LIMIT_CANCEL,
    WAIT_MAX_VCPUS,
    WAIT_NO_CE,
    WAIT_QUEUE_DISABLED,
    WAIT_RESERVED,
    WAIT_RESOURCES,
)
from hpcbatch.scheduler.state import SchedulerState

__all__ = [  # what ``hpcbatch.scheduler.core`` has always offered
    "CAPACITY",
    "MAX_RESOURCE",
    "REQUIREMENT",
    "TIME_LIMIT_CANCEL",
    "WAIT_MAX_VCPUS",
    "WAIT_NO_CE",
    "WAIT_QUEUE_DISABLED",
    "WAIT_RESERVED",
    "WAIT_RESOURCES",
    "Action",
    "AttemptEnded",
    "CancelRunnable",
    "Cause",
    "ComputeEnvironmentChanged",
    "ComputeEnvironmentRemoved",
    "Decision",
    "Event",
    "JobQueueChanged",
    "JobQueueRemoved",
    "JobRunnable",
    "JobWithdrawn",
    "NodeGone",
    "NodePowerChanged",
    "PowerRateReached",
    "NodeUp",
    "PreemptAttempt",
    "Reservation",
    "RunTimesLearned",
    "Scheduler",
    "SetWaitReason",
    "StartAttempt",
    "StartGang",
    "StateTimeLimit",
    "Tick",
]


class Scheduler:
    """Placement state and the decision procedure; see the module docstring."""

    def __init__(self, log_size: int = 10_000, reservation_depth: int = 1) -> None:
        self._st = SchedulerState(reservation_depth=reservation_depth, log_size=log_size)

    # -------------------------------------------------------------------- input
    def handle(self, *events: Event) -> list[Action]:
        """Apply ``events`` in order, then place what can be placed; return the actions."""
        # A call allocates many objects (events kept, actions, reasons) and makes no reference
        # cycles, yet the cyclic collector's full passes walk the whole state (100k jobs): a
        # third of a large pass. Collection waits for the call's end (left as it was found).
        collecting = gc.isenabled()
        gc.disable()
        try:
            st = self._st
            st.version += 1
            # The causes of this pass's decisions (``decisions``): its events but other jobs' arrivals.
            st.world = apply_events(st, events)
            st.cause = events[-1].event_id if events else "tick"
            return schedule(st)
        finally:
            if collecting:
                gc.enable()

    # ------------------------------------------------------------------ queries
    @property
    def decisions(self) -> DecisionLog:
        """The bounded log of decisions, keyed by job id (``decisions``); iterates (cause, text)."""
        return self._st.decisions

    @property
    def predictor(self) -> Predictor:
        """Run-time history and predictions (``predict``)."""
        return self._st.predictor

    @property
    def runnable_count(self) -> int:
        return len(self._st.queue_of) + len(self._st.orphans)

    @property
    def now_s(self) -> float:
        """The time of the latest ``Tick`` (0 before any)."""
        return self._st.now

    def allocation(self, job_id: str) -> tuple[str, str] | None:
        """(node, compute environment) holding ``job_id``, if placed; a gang's main node."""
        a = self._st.allocations.get(job_id)
        return (a.nodes[0], a.ce) if a else None

    def allocated_nodes(self, job_id: str) -> tuple[str, ...]:
        """Every node ``job_id`` holds, in index order; empty when not placed."""
        a = self._st.allocations.get(job_id)
        return tuple(a.nodes) if a else ()

    def reservation(self, job_id: str) -> Reservation | None:
        """The reservation the waiting job ``job_id`` got in the latest pass."""
        return self._st.reservations.get(job_id)

    def front_of_queue(self, queue: str, limit: int = 100) -> list[str]:
        """The waiting jobs of ``queue`` in the order the scheduler will consider them."""
        return front_of_queue(self._st, queue, limit)

    def decisions_about(self, job_id: str, limit: int = 20) -> list[tuple[str, str]]:
        """The latest decisions about ``job_id`` as (cause, text), oldest first (``why``)."""
        return [(d.cause, d.text) for d in self._st.decisions.about(job_id, limit)]

    def decision_records(self, job_id: str, limit: int = 20) -> list[Decision]:
        """The latest decisions about ``job_id`` with every event that led to each, oldest first."""
        return self._st.decisions.about(job_id, limit)

    def last_decision(self, job_id: str) -> Decision | None:
        """The latest decision about ``job_id`` and the events (kinds, ids) that led to it."""
        return self._st.decisions.last(job_id)

    def node_usage(self, node: str) -> tuple[float, int, int] | None:
        """(allocated vCPUs, memory MiB, GPUs) on ``node``."""
        n = self._st.nodes.get(node)
        if n is None:
            return None
        return (n.vcpus - n.free_vcpus, n.memory_mib - n.free_memory_mib, len(n.gpu_holder))

    def gpu_holders(self, node: str) -> dict[str, str]:
        """GPU id -> the job holding it on ``node``, in the node's GPU order."""
        n = self._st.nodes.get(node)
        if n is None:
            return {}
        return {n.gpu_ids[i]: n.gpu_holder[i] for i in sorted(n.gpu_holder)}

    def allocated_gpus(self, job_id: str) -> dict[str, tuple[str, ...]]:
        """Node -> the GPU ids ``job_id`` holds there; empty when not placed."""
        a = self._st.allocations.get(job_id)
        return {k: v for k, v in a.gpus.items() if v} if a else {}

    def planned_run_s(self, job_id: str) -> float | None:
        """The run time a running job is planned with now (grown if it outlived it); None: unknown."""
        alloc = self._st.allocations.get(job_id)
        return alloc.planned_s if alloc is not None else None

    # ---------------------------------------------------------------- forecasts
    def forecast(self, limit: int = 200) -> dict[str, float]:
        """Expected start (scheduler time) of the first ``limit`` waiting jobs of every queue
        that can start at a planned time (``forecast``'s rules); computed afresh."""
        return forecast_starts(self._st, limit)

    def expected_start(self, job_id: str, max_age_s: float = 5.0) -> float | None:
        """When waiting ``job_id`` is expected to start (scheduler time), or None: unknown, or
        not among the first jobs forecast; reused while young or nothing changed."""
        return expected_start(self._st, job_id, max_age_s)
