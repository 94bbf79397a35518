"""Reservations and backfill: where and when a job that cannot start now will start.

Rules: the first waiting job of each queue (``reservation_depth`` of them per queue, as Maui's
RESERVATIONDEPTH) that cannot start now but could once something ends gets a reservation.
A gang: the whole nodes of one compute environment free soonest (a node's expected free time
is the latest planned end of what runs on it); with a known start, among nodes free by then,
those that free up latest (EASY's "extra nodes": idle nodes it does not need stay usable).
A single-node job: the node that has room for it soonest, found by walking planned ends in
time order; none when only unknown ends could give room. Reserved nodes take later jobs only
when they are planned to end before the reservation starts (backfill, ``placement.may_use``).
Reservations are recomputed every pass: derived state, not promises. Pool nodes powered
down or booting count as free from when they are expected up (``booting``): the boot time is
part of the reservation, so backfill before it stays honest.
"""

from __future__ import annotations

import bisect
import heapq

from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.scheduler import booting
from hpcbatch.scheduler.events import JobRunnable
from hpcbatch.scheduler.gang import UNKNOWN, Reservation, natural_key, pick_nodes
from hpcbatch.scheduler.holds import live_end
from hpcbatch.scheduler.reasons import (
    CAPACITY,
    WAIT_RESERVED,
    cached_why_not,
    decide,
    runnable_of,
    wait,
)
from hpcbatch.scheduler.state import BootingNode, CeState, NodeState, QueueScan, SchedulerState


def may_reserve(st: SchedulerState, scan: QueueScan) -> bool:
    """Whether this queue's scan may still make a reservation (``reservation_depth``)."""
    return len(scan.made) < st.reservation_depth


def keep(scan: QueueScan, res: Reservation) -> None:
    """Make ``res`` for the rest of the pass: its nodes are reserved for its job."""
    scan.made[res.job_id] = res
    for name in res.nodes:
        scan.reserved[name] = res


def reserve_head(st: SchedulerState, scan: QueueScan, job: JobRunnable) -> bool:
    """Reserve for a single-node job at the head of its queue that cannot start now (it
    waits for capacity, not for something no node has); True when it got one."""
    why = cached_why_not(st, job.request, scan.usable, scan.reserved, scan.reasons)
    if not (why.startswith(CAPACITY) or why == WAIT_RESERVED) or job.request in scan.unreservable:
        return False
    res = reserve_single(st, job.job_id, job.request, scan.usable, scan.reserved)
    if res is None:  # the same for every equal request until nodes change hands
        scan.unreservable.add(job.request)
        return False
    keep(scan, res)
    # The reason keeps AWS's CAPACITY code (jobStateTimeLimitActions match it); the
    # reservation shows in the decision log, ``reservation()`` and the start forecast.
    wait(st, job.job_id, why, scan.actions)
    return True


def reserve_single(
    st: SchedulerState, job_id: str, r: ResourceRequest, ces: list[CeState], reserved: dict[str, Reservation],
) -> Reservation | None:
    """The node that has room for ``r`` soonest (by planned ends), in the first compute
    environment in order that gives the earliest time; None when no planned end gives
    room (then smaller jobs pass it freely, as before: nothing is known to wait for)."""
    best: Reservation | None = None
    for ce in ces:
        if ce.max_vcpus is not None and r.vcpus > ce.max_vcpus + 1e-9:
            continue
        found: tuple[NodeState | BootingNode, float] | None = soonest_room(st, ce, r, reserved)
        boot = booting.soonest(st, ce, r, reserved)
        if boot is not None and (found is None or boot[1] < found[1]):  # a tie: the node that is up
            found = boot
        if found is not None and (best is None or found[1] < best.start_s):
            best = booting.reservation(st, job_id, ce, (found[0].name,), found[1])
    return best


def soonest_room(
    st: SchedulerState, ce: CeState, r: ResourceRequest, reserved: dict[str, Reservation],
) -> tuple[NodeState, float] | None:
    """(node, time) of the earliest planned end after which a node of ``ce`` has room for
    ``r``: the ends are walked in time order, adding up what each gives back to its node."""
    heap, popped = ce.ends, []
    freed: dict[str, list[float]] = {}
    try:
        while heap:
            entry = heapq.heappop(heap)
            if not live_end(st, entry):
                continue  # ended or re-planned since: dropped for good
            popped.append(entry)
            node = st.nodes.get(entry[2])
            if node is not None and node.accepting and node.name not in reserved and node.could_ever_fit(r) \
                    and _room_after(st, node, entry, r, freed):
                return node, max(st.now, entry[0])
    finally:
        for entry in popped:
            heapq.heappush(heap, entry)
    return None


def _room_after(
    st: SchedulerState, node: NodeState, entry: tuple[float, str, str], r: ResourceRequest,
    freed: dict[str, list[float]],
) -> bool:
    """Add what the end ``entry`` gives back to ``node`` (``freed``, summed in time order);
    whether ``r`` then fits there."""
    job_id = entry[1]
    alloc = st.allocations[job_id]
    f = freed.setdefault(node.name, [0.0, 0.0, 0.0])
    f[0] += alloc.request.vcpus
    f[1] += alloc.request.memory_mib
    f[2] += len(alloc.gpus.get(node.name, ()))
    return (
        (node.gang is None or node.gang == job_id)
        and node.free_vcpus + f[0] >= r.vcpus - 1e-9
        and node.free_memory_mib + f[1] >= r.memory_mib
        and node.free_gpus + f[2] >= r.gpus
    )


def reserve(st: SchedulerState, job: JobRunnable, ces: list[CeState], reserved: dict[str, Reservation]) -> Reservation | None:
    """The nodes of one compute environment that free up soonest for gang ``job``."""
    n, r = job.num_nodes, job.request
    best: Reservation | None = None
    for ce in ces:
        if ce.max_vcpus is not None and n * r.vcpus > ce.max_vcpus + 1e-9:
            continue
        able = _able(st, ce, r, n, reserved)
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
            best = booting.reservation(st, job.job_id, ce, tuple(names), start, group)
    return best


def _able(
    st: SchedulerState, ce: CeState, r: ResourceRequest, n: int, reserved: dict[str, Reservation],
) -> list[tuple[float, NodeState | BootingNode]]:
    """(expected free time, node) of the nodes of ``ce`` a gang of ``n`` x ``r`` could reserve;
    pool nodes powered down or booting are free when they are expected up (``booting``)."""
    boots = booting.able(st, ce, r, reserved) if ce.booting else []
    if ce.require_placement_group:
        return [
            (free_at(st, node), node)
            for node in ce.nodes.values()
            if node.accepting and node.could_ever_fit(r) and node.name not in reserved
        ] + boots
    # Without a required group the chosen nodes are all free by the n-th soonest
    # time: walk the nodes by expected end and stop after that time (5k nodes).
    able: list[tuple[float, NodeState | BootingNode]] = []
    cutoff: float | None = boots[n - 1][0] if len(boots) >= n else None
    times = [at for at, _ in boots]  # soonest first: how many are up by a time, by bisection
    for end, name in ce.by_end:
        t = max(st.now, end)
        if cutoff is not None and t > cutoff:
            break
        node = ce.nodes[name]
        if node.accepting and node.could_ever_fit(r) and name not in reserved:
            able.append((t, node))
            if len(able) + (bisect.bisect_right(times, t) if times else 0) >= n:
                cutoff = t
    return able + [it for it in boots if cutoff is None or it[0] <= cutoff]


def free_at(st: SchedulerState, node: NodeState) -> float:
    """When ``node`` is expected to run nothing: the latest end of what it runs."""
    return max(st.now, node.latest_end)


def _soonest_nodes(able: list[tuple[float, NodeState | BootingNode]], n: int) -> tuple[str | None, list[str], float]:
    """``pick_nodes``' choice among nodes all free by the n-th soonest time, without candidates.

    Every option then starts at that time, so one placement group that holds ``n`` of them
    wins over a spread (the group with the fewest such nodes, then by name). Inside the
    choice, with a known start: the nodes that free up latest while still in time (EASY's
    "extra nodes": nodes idle now that the gang does not need stay free for any job), then
    smaller nodes, then by name; with an unknown start: soonest first (the idle nodes, held
    as the rest free up). Returns (group, names in index order, start).
    """
    groups: dict[str, list[tuple[float, NodeState | BootingNode]]] = {}
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


def log_reservations(st: SchedulerState, made: dict[str, Reservation]) -> None:
    """End of a pass: log each new or changed reservation, and keep them for queries."""
    for job_id, res in made.items():
        text = res.describe(st.now)
        if st.reservation_text.get(job_id) != text:
            decide(st, f"reserve for {job_id}: {text}", (job_id,), runnable_of(st, job_id))
    st.reservations = made
    st.reservation_text = {j: r.describe(st.now) for j, r in made.items()}
