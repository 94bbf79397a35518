"""A queue's own policies in a pass: fair-share order and computeReservation, and
jobStateTimeLimitActions.

Rules: a queue with a fair-share policy orders its jobs by share (``fairshare``: the
least-served share by ``weight x usage`` goes next; inside a share ``schedulingPriority``
then FIFO), each share's waiting jobs kept in a heap between passes; a job that would eat
the ``computeReservation`` held back for shares not running yet waits. A queue's first
waiting job whose wait reason code has stayed the same for a time limit's ``maxTimeSeconds``
leaves with ``CancelRunnable``.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from hpcbatch.scheduler.events import Action, CancelRunnable, JobRunnable
from hpcbatch.scheduler.fairshare import ShareLine, fair_order, standing_ranks
from hpcbatch.scheduler.gang import fmt_time
from hpcbatch.scheduler.holds import withdraw
from hpcbatch.scheduler.reasons import TIME_LIMIT_CANCEL, decide, wait
from hpcbatch.scheduler.state import CeState, QueueState, SchedulerState, share_entry


def front_of_queue(st: SchedulerState, queue_name: str, limit: int = 100) -> list[str]:
    """The waiting jobs of ``queue_name`` in the order the scheduler will consider them."""
    q = st.queues.get(queue_name)
    if q is None:
        return []
    if q.fair_share is not None:  # the order the next pass will try them in
        front = [j.job_id for j, _ in zip(fair_jobs(st, q), range(limit), strict=False)]
        restore_fair(st, q)
        return front
    return [j.job_id for j in sorted(q.jobs.values(), key=lambda j: j.seq)[:limit]]


def fair_jobs(st: SchedulerState, queue: QueueState) -> Iterator[JobRunnable]:
    """The queue's jobs in fair-share order; also sets the fair-share part of wait reasons."""
    policy = queue.fair_share
    assert policy is not None
    if queue.share_heaps is None:
        queue.share_heaps = {}
        for job in queue.jobs.values():
            if job.job_id in st.queue_of:
                queue.share_heaps.setdefault(job.share or "", []).append(share_entry(job))
        for heap in queue.share_heaps.values():
            heapq.heapify(heap)
    lines: dict[str, ShareLine] = {}
    for share, heap in queue.share_heaps.items():
        if heap:
            usage = st.usage.get((queue.name, share))
            lines[share] = ShareLine(share, policy.weight(share), usage.value if usage else 0.0, heap)
    ranks = standing_ranks(lines.values())
    for share, rank in ranks.items():
        st.fair_note[(queue.name, share)] = (
            f"; fair share: share {share or '(none)'} is {_ordinal(rank)} of {len(ranks)} in line "
            f"(weight {lines[share].weight:g})"
        )

    def valid(entry: tuple[int, int, str, float]) -> bool:
        job = queue.jobs.get(entry[2])
        return job is not None and job.seq == entry[1] and st.queue_of.get(entry[2]) == queue.name

    for job_id in fair_order(list(lines.values()), valid, queue.taken):
        yield queue.jobs[job_id]


def restore_fair(st: SchedulerState, queue: QueueState) -> None:
    """Push back the share-heap entries a fair-share scan popped for jobs that still wait."""
    for line, entry in queue.taken:
        if st.queue_of.get(entry[2]) == queue.name:
            heapq.heappush(line.jobs, entry)
    queue.taken.clear()


def over_reservation(
    st: SchedulerState, queue: QueueState, job: JobRunnable, ces: list[CeState], actions: list[Action],
) -> bool:
    """True (and the job waits) when starting it would eat the computeReservation."""
    policy = queue.fair_share
    if policy is None or policy.compute_reservation <= 0:
        return False
    capacity = _capacity(st, queue, ces)
    running = {s: u.running for (q, s), u in st.usage.items() if q == queue.name and u.running > 1e-9}
    share = job.share or ""
    active = len(running) + (0 if share in running else 1)
    held_back = capacity * policy.reserved_fraction(active)
    need = job.request.vcpus * max(1, job.num_nodes)
    if sum(running.values()) + need <= capacity - held_back + 1e-9:
        return False
    wait(
        st,
        job.job_id,
        f"Fair share: computeReservation {policy.compute_reservation} keeps {held_back:g} of "
        f"{capacity:g} vCPUs for share identifiers not running yet",
        actions,
    )
    return True


def _capacity(st: SchedulerState, queue: QueueState, ces: list[CeState]) -> float:
    """The vCPUs of a queue's compute environments (within maxvCpus); once per pass: the nodes
    do not change during one."""
    capacity = st.capacity.get(queue.name)
    if capacity is None:
        capacity = 0.0
        for ce in ces:
            total = sum(n.vcpus for n in ce.nodes.values() if n.accepting)
            capacity += total if ce.max_vcpus is None else min(total, ce.max_vcpus)
        st.capacity[queue.name] = capacity
    return capacity


def time_limits(st: SchedulerState, queue: QueueState, seen: list[str], actions: list[Action]) -> None:
    """jobStateTimeLimitActions: cancel the job stuck at the head of the queue too long."""
    head = next((j for j in seen if j in queue.jobs), None)
    if head is None:
        queue.head = None
        return
    code = st.wait_reason.get(head, "").split(" - ", 1)[0]
    if queue.head is None or queue.head[:2] != (head, code):
        queue.head = (head, code, st.now)
    since = queue.head[2]
    for limit in queue.time_limits:
        if code == limit.reason and st.now - since >= limit.max_time_s:
            reason = TIME_LIMIT_CANCEL.format(limit.reason)
            job = queue.jobs.get(head)
            withdraw(st, head)
            queue.head = None
            actions.append(CancelRunnable(head, reason))
            decide(st, f"cancel {head}: {reason} (at the head for {fmt_time(st.now - since)} s)", (head,), job)
            return


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
