"""One decision pass: every queue in order, each job placed, reserved for, or explained.

Rules (``core``'s docstring has them in full): ENABLED queues by ``priority`` (higher
first), ties by name; inside a queue FIFO by submission (or fair-share order). A job that
does not fit does not block its queue: smaller jobs behind it may start, except on nodes
reserved for a job ahead of them, unless planned to end before the reservation starts
(backfill). Once no node of the queue's compute environments has room, the scan stops:
only jobs that arrived since the last pass still need a wait reason, and gangs their
reservation, so a pass over a deep queue stays cheap. A pass is a sequence of named steps
over a ``QueueScan`` (``state``): ``_queue_pass`` -> ``_scan`` -> ``_no_room`` /
``_single`` (``_start``, ``_place_array``) / ``gang_step``, then ``_unreached_gangs``.

Gangs (multi-node parallel jobs, or ``gang`` on one node) start all at once on
``num_nodes`` idle whole nodes of ONE compute environment (``placement.place_gang``); a
partly placed gang never exists. A shape no node set could ever hold waits with a
``MISCONFIGURATION`` (or ``CAPACITY`` naming nodes away) reason, cached until the nodes
change (``never_cache``). Otherwise the head of a preempting queue may stop victims
(``preemption``), then the queue's first waiting jobs get reservations (``reserve``); the
rest wait for whole nodes.
"""

from __future__ import annotations

from collections.abc import Iterable

from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.scheduler.events import Action, JobRunnable, StartAttempt, StartGang
from hpcbatch.scheduler.fairness import fair_jobs, over_reservation, restore_fair, time_limits
from hpcbatch.scheduler.gang import fmt_time, hostlist
from hpcbatch.scheduler.holds import hold_for_job, withdraw
from hpcbatch.scheduler.placement import (
    ANY_LIMIT,
    dominates,
    has_room,
    limit_key,
    place,
    place_gang,
)
from hpcbatch.scheduler.planning import estimate, grow_predictions
from hpcbatch.scheduler.preemption import preempt_for, preempt_or_reserve
from hpcbatch.scheduler.reasons import (
    WAIT_NO_CE,
    WAIT_QUEUE_DISABLED,
    cached_why_not,
    decide,
    gang_why_never,
    gpu_note,
    wait,
    wait_all,
)
from hpcbatch.scheduler.reserve import keep, log_reservations, may_reserve, reserve, reserve_head
from hpcbatch.scheduler.state import (
    CeState,
    NodeState,
    PassContext,
    QueueScan,
    QueueState,
    SchedulerState,
)


def schedule(st: SchedulerState) -> list[Action]:
    """One pass over every queue; the actions it decided."""
    p = PassContext()
    grow_predictions(st)
    st.capacity.clear()
    for queue in sorted(st.queues.values(), key=lambda q: (-q.priority, q.name)):
        _queue_pass(st, p, queue)
    log_reservations(st, p.made)
    return p.actions


def _queue_pass(st: SchedulerState, p: PassContext, queue: QueueState) -> None:
    """One queue's part of a pass."""
    if not queue.jobs:
        return
    if not queue.enabled:
        wait_all(st, queue, WAIT_QUEUE_DISABLED, p.actions)
        return
    usable = [ce for n in queue.compute_environments if (ce := st.ces.get(n)) is not None and ce.enabled and (ce.nodes or ce.booting)]
    if not usable:
        wait_all(st, queue, WAIT_NO_CE, p.actions)
        return
    fresh, queue.fresh = queue.fresh, []
    rescan, queue.rescan = queue.rescan, False
    scan = QueueScan(queue, usable, fresh, rescan, p.actions, p.reserved, room=has_room(st, usable, p.reserved),
                     seen=[] if queue.time_limits else None)
    # The queue's dict is iterated as it is (no copy of 100k entries per pass): jobs
    # placed meanwhile leave ``queue_of`` at once and ``queue.jobs`` after the scan.
    order: Iterable[JobRunnable] = queue.jobs.values() if queue.fair_share is None else fair_jobs(st, queue)
    st.scanning, st.scanned_out = queue, []
    try:
        _scan(st, scan, order)
    finally:
        p.made.update(scan.made)
        st.scanning = None
        for job_id in st.scanned_out:
            queue.jobs.pop(job_id, None)
        if queue.fair_share is not None:
            restore_fair(st, queue)
    if scan.seen is not None:
        time_limits(st, queue, scan.seen, p.actions)


def _scan(st: SchedulerState, scan: QueueScan, order: Iterable[JobRunnable]) -> None:
    """Place, reserve for, or explain the queue's jobs in order, while some node has room."""
    queue_of, seen, fair = st.queue_of, scan.seen, scan.queue.fair_share is not None
    for job in order:
        if job.job_id not in queue_of:
            continue  # placed (or an array emptied) earlier in this scan
        if seen is not None:
            seen.append(job.job_id)
        if fair and over_reservation(st, scan.queue, job, scan.usable, scan.actions):
            continue
        if job.whole_nodes:
            scan.seen_gangs.add(job.job_id)
            if gang_step(st, scan, job):
                _recount(st, scan)
        elif scan.room:
            _single(st, scan, job)
        elif _no_room(st, scan, job):
            break
    _unreached_gangs(st, scan)


def _recount(st: SchedulerState, scan: QueueScan) -> None:
    """Nodes changed hands (a start, a reservation): is there room still; reasons are stale."""
    scan.room = has_room(st, scan.usable, scan.reserved)
    scan.reasons.clear()
    scan.unreservable.clear()


def _no_room(st: SchedulerState, scan: QueueScan, job: JobRunnable) -> bool:
    """A single-node job while no node has room: preempt or reserve for it, or explain it.
    True when the scan can stop (only fresh jobs needed a reason, and they have one now)."""
    if preempt_or_reserve(st, scan, job):
        _recount(st, scan)
        return False
    if scan.rescan:
        wait(st, job.job_id, cached_why_not(st, job.request, scan.usable, scan.reserved, scan.reasons), scan.actions)
        return False
    for job_id in scan.fresh:
        j = scan.queue.jobs.get(job_id)
        if j is not None and not j.whole_nodes and job_id in st.queue_of:
            wait(st, job_id, cached_why_not(st, j.request, scan.usable, scan.reserved, scan.reasons), scan.actions)
    return True


def _single(st: SchedulerState, scan: QueueScan, job: JobRunnable) -> None:
    """A single-node job (or array) while some node has room: start it, else reserve for it
    or explain it."""
    r = job.request
    planned = estimate(st, job)
    limit = limit_key(planned)
    if (r, limit) in scan.dominated or _newly_dominated(scan, r, limit):
        if len(scan.made) < st.reservation_depth and reserve_head(st, scan, job):
            _recount(st, scan)
        else:
            wait(st, job.job_id, cached_why_not(st, r, scan.usable, scan.reserved, scan.reasons), scan.actions)
        return
    if job.array_count:
        scan.room = _place_array(st, scan, job, planned)
        if job.job_id in st.queue_of and may_reserve(st, scan) and reserve_head(st, scan, job):
            _recount(st, scan)
        return
    placed = place(st, r, planned, scan.usable, scan.reserved)
    if placed is not None:
        _start(st, scan, job, placed, planned)
        return
    # Requests known not to fit in this pass: anything at least as large (and not
    # shorter) cannot fit either, so a long FIFO of equal jobs costs one failed search.
    scan.failed.append((r, limit if scan.reserved else ANY_LIMIT))
    if preempt_or_reserve(st, scan, job):
        _recount(st, scan)
    else:
        wait(st, job.job_id, cached_why_not(st, r, scan.usable, scan.reserved, scan.reasons), scan.actions)


def _newly_dominated(scan: QueueScan, r: ResourceRequest, limit: float) -> bool:
    """Whether a request at least as large and not shorter failed in this scan. ``failed``
    only grows in a pass, so a shape once found dominated stays so (``scan.dominated``): a
    deep queue of equal jobs costs one set look-up each."""
    if any(dominates(r, f) and limit >= fl for f, fl in scan.failed):
        scan.dominated.add((r, limit))
        return True
    return False


def _start(
    st: SchedulerState, scan: QueueScan, job: JobRunnable, placed: tuple[NodeState, CeState], planned: float | None,
) -> None:
    """Start single-node ``job`` on ``placed``; a backfill names the reservation it ran before."""
    node, ce = placed
    withdraw(st, job.job_id)
    gpus = hold_for_job(st, job.job_id, job, [node], planned).gpus[node.name]
    scan.unreservable.clear()  # its planned end may give room to a request that had none
    scan.actions.append(StartAttempt(job.job_id, node.name, ce.name, gpus))
    note, jobs = "", (job.job_id,)
    res = scan.reserved.get(node.name)
    if res is not None:
        note = f", backfilled before {res.job_id}'s reservation at t={fmt_time(res.start_s)}"
        jobs = (job.job_id, res.job_id)
    decide(st, f"start {job.job_id} on {node.name} ({ce.name}){gpu_note(gpus)}{note}", jobs, job)
    if node.free_vcpus <= 1e-9:
        scan.room = has_room(st, scan.usable, scan.reserved)


def _place_array(st: SchedulerState, scan: QueueScan, job: JobRunnable, planned: float | None) -> bool:
    """Start as many tasks of an array as fit (and its cap allows); return whether room is left."""
    r = job.request
    while st.array_left.get(job.job_id, 0) > 0:
        if job.max_running is not None and st.array_running.get(job.job_id, 0) >= job.max_running:
            wait(st, job.job_id, f"Array at its limit of {job.max_running} running tasks", scan.actions)
            break
        placed = place(st, r, planned, scan.usable, scan.reserved)
        if placed is None:
            scan.failed.append((r, limit_key(planned) if scan.reserved else ANY_LIMIT))
            wait(st, job.job_id, cached_why_not(st, r, scan.usable, scan.reserved, scan.reasons), scan.actions)
            break
        node = _start_task(st, scan, job, placed, planned)
        if node.free_vcpus <= 1e-9 and not has_room(st, scan.usable, scan.reserved):
            break
    if st.array_left.get(job.job_id, 1) <= 0:
        withdraw(st, job.job_id)
    return has_room(st, scan.usable, scan.reserved)


def _start_task(
    st: SchedulerState, scan: QueueScan, job: JobRunnable, placed: tuple[NodeState, CeState], planned: float | None,
) -> NodeState:
    """Start the next task of array ``job`` on ``placed``; the node it took."""
    node, ce = placed
    index = st.array_next[job.job_id]
    st.array_next[job.job_id] = index + 1
    st.array_left[job.job_id] -= 1
    st.array_running[job.job_id] = st.array_running.get(job.job_id, 0) + 1
    task_id = f"{job.job_id}:{index}"
    gpus = hold_for_job(st, task_id, job, [node], planned).gpus[node.name]
    scan.unreservable.clear()
    scan.actions.append(StartAttempt(task_id, node.name, ce.name, gpus))
    decide(st, f"start {task_id} on {node.name} ({ce.name}){gpu_note(gpus)}", (task_id, job.job_id), job)
    return node


def _unreached_gangs(st: SchedulerState, scan: QueueScan) -> None:
    """Gangs the scan did not reach (nothing had room) still get a reservation and reason,
    unless nothing about them can have changed: no compute environment has enough idle
    nodes, the reservations are made, and the gang already shows a reason."""
    queue = scan.queue
    most_idle = max(len(ce.idle) for ce in scan.usable)
    fresh_ids = set(scan.fresh)
    gangs: Iterable[JobRunnable] = list(queue.gangs.values())
    if _settled(st, scan) and most_idle < 2:
        # No gang can start (each needs 2+ idle nodes) and the reservations are made:
        # only new gangs and last pass's reserved ones can need a new reason.
        gangs = [queue.gangs[j] for j in (*fresh_ids, *st.reservations) if j in queue.gangs]
    for job in gangs:
        if job.job_id in scan.seen_gangs:
            continue
        if (
            _settled(st, scan) and job.num_nodes > most_idle and job.job_id in st.wait_reason
            and job.job_id not in st.reservations and job.job_id not in fresh_ids
        ):
            continue
        gang_step(st, scan, job)


def _settled(st: SchedulerState, scan: QueueScan) -> bool:
    """Nothing asks for a fresh look: settings unchanged and the reservations made."""
    return not scan.rescan and not may_reserve(st, scan)


# -------------------------------------------------------------------- gangs
def gang_step(st: SchedulerState, scan: QueueScan, job: JobRunnable) -> bool:
    """Start, reserve for, or explain one waiting gang; True when nodes changed hands."""
    if _try_start(st, scan, job):
        return True
    never, first_ce = _never(st, scan, job)
    if never is not None:
        wait(st, job.job_id, never, scan.actions)
        return False
    queue = st.queues.get(job.queue)
    if queue is not None and queue.preempts and not scan.made and preempt_for(st, scan, job, queue):
        return True
    if may_reserve(st, scan):
        res = reserve(st, job, scan.usable, scan.reserved)
        if res is not None:
            keep(scan, res)
            wait(st, job.job_id, res.describe(st.now), scan.actions)
            return True
    wait(st, job.job_id, f"Waiting for {job.num_nodes} whole nodes in compute environment {first_ce}", scan.actions)
    return False


def _try_start(st: SchedulerState, scan: QueueScan, job: JobRunnable) -> bool:
    """Start ``job`` on idle whole nodes if it can; a shape that failed in this pass (or a
    larger, not shorter one) is not searched again."""
    n, r = job.num_nodes, job.request
    planned = estimate(st, job)
    limit = limit_key(planned)
    if any(n >= fn and dominates(r, fr) and limit >= fl for fn, fr, fl in scan.failed_gangs):
        return False
    placed = place_gang(st, job, planned, scan.usable, scan.reserved)
    if placed is None:
        scan.failed_gangs.append((n, r, limit if scan.reserved else ANY_LIMIT))
        return False
    nodes, ce = placed
    withdraw(st, job.job_id)
    alloc = hold_for_job(st, job.job_id, job, nodes, planned)
    names = tuple(node.name for node in nodes)
    gpus = tuple(alloc.gpus[name] for name in names) if r.gpus else ()
    scan.actions.append(StartGang(job.job_id, names, ce.name, gpus))
    decide(st, f"start gang {job.job_id} on {hostlist(names)} ({ce.name})", (job.job_id,), job)
    return True


def _never(st: SchedulerState, scan: QueueScan, job: JobRunnable) -> tuple[str | None, str]:
    """(why the gang could never run here, or None; the first compute environment it could use),
    cached until the nodes change."""
    key = (job.num_nodes, job.request, tuple(ce.name for ce in scan.usable))
    cached = st.never_cache.get(key)
    if cached is None:
        cached = st.never_cache[key] = gang_why_never(st, job, scan.usable)
    return cached
