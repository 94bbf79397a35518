"""Preemption decisions: which running jobs of lower-priority preemptible queues stop so the
head of a preempting queue can start.

Rules (the choice itself is ``preempt``'s, pure): only the head of a queue with ``preempts``
that cannot start now, and only before any reservation of its queue this pass, stops
victims: running jobs of ``preemptible`` queues of lower priority sharing its compute
environments, never a job already being stopped. Victims get ``PreemptAttempt`` and the nodes
they free are held for the preemptor (a reservation due now: nothing backfills there) until
they end; if they end and it still does not fit, it chooses again.
"""

from __future__ import annotations

from dataclasses import replace

from hpcbatch.scheduler import preempt
from hpcbatch.scheduler.events import JobRunnable, PreemptAttempt
from hpcbatch.scheduler.gang import Reservation, hostlist, natural_key
from hpcbatch.scheduler.reasons import decide, wait
from hpcbatch.scheduler.reserve import keep, reserve_head
from hpcbatch.scheduler.state import CeState, NodeState, QueueScan, QueueState, SchedulerState


def preempt_or_reserve(st: SchedulerState, scan: QueueScan, job: JobRunnable) -> bool:
    """For a single-node job that cannot start now: stop victims for it (a preempting
    queue's head, before any reservation this pass), else reserve for it while the pass
    may still make reservations. True when either made room the caller must recount."""
    if scan.queue.preempts and not scan.made and preempt_for(st, scan, job, scan.queue):
        return True
    return len(scan.made) < st.reservation_depth and reserve_head(st, scan, job)


def preempt_for(st: SchedulerState, scan: QueueScan, job: JobRunnable, queue: QueueState) -> bool:
    """The head of a preempting queue that cannot start: stop victims for it (``preempt``),
    or keep holding what its victims free; True when it holds nodes this pass."""
    pending = st.preempting.get(job.job_id)
    if pending is not None:
        live = sorted(v for v in pending if v in st.allocations)
        if live:
            nodes = tuple(sorted({n for v in live for n in st.allocations[v].nodes}, key=natural_key))
            keep(scan, Reservation(job.job_id, st.allocations[live[0]].ce, nodes, st.now))  # due now
            wait(st, job.job_id, f"Preempting {', '.join(live)} to start", scan.actions)
            return True
        del st.preempting[job.job_id]  # they ended, yet it still does not fit: choose again
    for ce in scan.usable:
        chosen = _choose(st, job, queue, ce, scan.reserved)
        if chosen is None:
            continue
        nodes, victims = chosen
        if not victims:
            return False  # room without stopping anything: it is placement's to find
        _stop(st, scan, job, queue, ce, chosen)
        return True
    return False


def _choose(
    st: SchedulerState, job: JobRunnable, queue: QueueState, ce: CeState, reserved: dict[str, Reservation],
) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(nodes, victims) of ``ce`` that would let ``job`` start (``preempt``'s choice), or None."""
    rooms = _rooms(st, job, queue, ce, reserved)
    if job.num_nodes > 1:
        chosen_gang = preempt.for_gang(job.num_nodes, rooms)
        if chosen_gang is None:
            return None
        return tuple(chosen_gang[0]), tuple(chosen_gang[1])
    chosen = preempt.for_single(job.request, rooms)
    if chosen is None:
        return None
    return (chosen[0],), tuple(chosen[1])


def _stop(
    st: SchedulerState, scan: QueueScan, job: JobRunnable, queue: QueueState, ce: CeState,
    chosen: tuple[tuple[str, ...], tuple[str, ...]],
) -> None:
    """Stop ``chosen``'s victims for ``job`` and hold their nodes for it."""
    nodes, victims = chosen
    st.preempting[job.job_id] = set(victims)
    st.stopping.update(victims)
    for victim in victims:
        reason = f"Preempted for {job.job_id} of job queue {queue.name}"
        scan.actions.append(PreemptAttempt(victim, job.job_id, reason))
        decide(st, f"preempt {victim} for {job.job_id} on {hostlist(nodes)} ({ce.name})", (victim, job.job_id), job)
    keep(scan, Reservation(job.job_id, ce.name, tuple(sorted(nodes, key=natural_key)), st.now))  # due now
    wait(st, job.job_id, f"Preempting {', '.join(sorted(victims))} to start", scan.actions)


def _rooms(
    st: SchedulerState, job: JobRunnable, queue: QueueState, ce: CeState, reserved: dict[str, Reservation],
) -> list[preempt.NodeRoom]:
    """The nodes of ``ce`` that could hold ``job`` once preemptible work is stopped."""
    rooms = []
    for node in ce.nodes.values():
        if not node.accepting or node.name in reserved or not node.could_ever_fit(job.request):
            continue
        room = _room(st, node, queue)
        if room is not None:
            rooms.append(room)
    return rooms


def _room(st: SchedulerState, node: NodeState, queue: QueueState) -> preempt.NodeRoom | None:
    """``node`` as ``queue``'s head sees it, or None when a gang that stays holds it whole.

    A gang holds its nodes whole (placement puts nothing beside it), so on a node a victim
    gang holds nothing is free: the gang's share is the whole node, stopping it frees it all."""
    victims, keeps = [], 0
    for held in node.jobs:
        victim = _victim(st, held, node.name, queue)
        if victim is None:
            keeps += 1
        else:
            victims.append(victim)
    free = (node.free_vcpus, node.free_memory_mib, node.free_gpus)
    gang = next((v for v in victims if v.job_id == node.gang), None)
    if node.gang is not None and gang is None:
        return None  # a gang that stays holds the whole node
    if gang is not None:
        whole = replace(gang, vcpus=gang.vcpus + free[0], memory_mib=gang.memory_mib + free[1], gpus=gang.gpus + free[2])
        victims = [whole if v is gang else v for v in victims]
        free = (0.0, 0, 0)
    return preempt.NodeRoom(node.name, free, tuple(victims), keeps, gang.job_id if gang is not None else None)


def _victim(st: SchedulerState, held: str, node: str, queue: QueueState) -> preempt.Victim | None:
    """``held`` (running on ``node``) as a victim for ``queue``'s head, or None: it stays."""
    alloc = st.allocations.get(held)
    victim_queue = st.queues.get(alloc.key.queue) if alloc is not None and alloc.key else None
    if (
        alloc is None or victim_queue is None or held in st.stopping
        or not victim_queue.preemptible or victim_queue.priority >= queue.priority
    ):
        return None
    r = alloc.request
    return preempt.Victim(held, alloc.started_at, r.vcpus, r.memory_mib,
                          len(alloc.gpus.get(node, ())), r.vcpus * len(alloc.nodes))
