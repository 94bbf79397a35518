"""What placed jobs hold: taking and giving back node resources, GPUs and fair-share usage,
and the indexes that follow every change (free capacity, idle nodes, expected ends).

Rules: a hold is an ``Allocation`` over one node (single-node job, array task) or several
(a gang, whole nodes). Every change to a node's holds re-files it (``refile``) in its compute
environment's indexes, so placement never scans nodes. ``AttemptEnded`` gives back all of a
hold (``release``); a node leaving gives back only its part (``drop_hold``). A job leaving
the queue (placed, cancelled, emptied array) goes through ``withdraw``.
"""

from __future__ import annotations

import heapq
import math

from hpcbatch.scheduler.events import JobRunnable
from hpcbatch.scheduler.fairshare import ShareUsage
from hpcbatch.scheduler.state import Allocation, CeState, NodeState, SchedulerState, run_key


def ce_of(st: SchedulerState, name: str) -> CeState:
    """The compute environment ``name``, created on first mention (a node may come first)."""
    ce = st.ces.get(name)
    if ce is None:
        ce = st.ces[name] = CeState(name)
    return ce


def refile(st: SchedulerState, node: NodeState) -> None:
    """Re-index ``node`` after its free capacity, holds or state changed."""
    ce = ce_of(st, node.ce)
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


def unfile(st: SchedulerState, node: NodeState) -> None:
    """Take ``node`` out of its compute environment and every index (it left or re-registers)."""
    ce = ce_of(st, node.ce)
    ce.nodes.pop(node.name, None)
    ce.index.discard(node)
    ce.idle.pop(node.name, None)
    ce.by_end.discard(node.end_key)


def share_usage(st: SchedulerState, key: tuple[str, str]) -> ShareUsage:
    """A share's usage, brought up to now (so the average integrates what ran until now)."""
    usage = st.usage.get(key)
    if usage is None:
        usage = st.usage[key] = ShareUsage(updated_s=st.now)
    usage.advance(st.now, decay_s(st, key[0]))
    return usage


def decay_s(st: SchedulerState, queue_name: str) -> int:
    queue = st.queues.get(queue_name)
    return queue.fair_share.share_decay_s if queue is not None and queue.fair_share else 0


def charge(st: SchedulerState, job: JobRunnable) -> tuple[str, str] | None:
    """The (queue, share) a placed job's vCPUs count against, in a fair-share queue."""
    queue = st.queues.get(job.queue)
    if queue is None or queue.fair_share is None:
        return None
    return (job.queue, job.share or "")


def withdraw(st: SchedulerState, job_id: str) -> None:
    """``job_id`` leaves the queue (placed, withdrawn, cancelled, an array emptied)."""
    st.preempting.pop(job_id, None)
    st.array_left.pop(job_id, None)
    st.array_next.pop(job_id, None)
    st.orphans.pop(job_id, None)
    st.wait_reason.pop(job_id, None)
    queue_name = st.queue_of.pop(job_id, None)
    if queue_name is not None:
        queue = st.queues[queue_name]
        if queue is st.scanning:
            st.scanned_out.append(job_id)  # ``queue.jobs`` is being iterated: pop it after
        else:
            queue.jobs.pop(job_id, None)
        queue.gangs.pop(job_id, None)


def hold_for_job(
    st: SchedulerState, job_id: str, job: JobRunnable, nodes: list[NodeState], planned_s: float | None,
) -> Allocation:
    """Hold ``nodes`` for runnable ``job`` placed now (``job_id``: it, or one of its array
    tasks), planned to run ``planned_s``; a gang when ``job`` takes whole nodes."""
    alloc = Allocation(
        [n.name for n in nodes], nodes[0].ce, job.request, job.whole_nodes, st.now, planned_s,
        share=charge(st, job), timeout_s=None if job.time_limit_s is None else float(job.time_limit_s),
        key=run_key(job),
    )
    return hold(st, job_id, alloc, nodes)


def hold(
    st: SchedulerState, job_id: str, alloc: Allocation, nodes: list[NodeState], held: tuple[int, ...] = (),
) -> Allocation:
    """Enter ``alloc`` for ``job_id`` and take its request on ``nodes`` (``held``: GPU indices a
    node reported the job on)."""
    st.allocations[job_id] = alloc
    for node in nodes:
        take(st, job_id, alloc, node, held)
    if alloc.planned_s is not None:
        heapq.heappush(st.due, (alloc.ends_at, job_id))
        file_ends(st, job_id, alloc)
    return alloc


def file_ends(st: SchedulerState, job_id: str, alloc: Allocation) -> None:
    """Enter an allocation's (new) planned end into its compute environment's ``ends``."""
    ce = ce_of(st, alloc.ce)
    for name in alloc.nodes:
        heapq.heappush(ce.ends, (alloc.ends_at, job_id, name))
    if len(ce.ends) > 2 * len(st.allocations) + 1024:
        ce.ends = [e for e in ce.ends if live_end(st, e)]
        heapq.heapify(ce.ends)


def live_end(st: SchedulerState, entry: tuple[float, str, str]) -> bool:
    """Whether an ``ends`` entry is still the planned end of a hold on that node."""
    alloc = st.allocations.get(entry[1])
    return alloc is not None and alloc.ends_at == entry[0] and entry[2] in alloc.nodes


def latest_end(st: SchedulerState, node: NodeState) -> float:
    """The latest planned end of what ``node`` runs (-inf when idle)."""
    return max((st.allocations[j].ends_at for j in node.jobs if j in st.allocations), default=-math.inf)


def take(st: SchedulerState, job_id: str, alloc: Allocation, node: NodeState, held: tuple[int, ...] = ()) -> None:
    """Take ``alloc``'s request on ``node``: the GPU indices ``held`` (reported), else free ones."""
    r = alloc.request
    node.free_vcpus -= r.vcpus
    node.free_memory_mib -= r.memory_mib
    if r.gpus or held or (node.gpu_holder and job_id in node.gpu_holder.values()):
        _take_gpus(job_id, alloc, node, held)
    else:  # the common case (no GPUs asked for, none reported): nothing to choose
        alloc.gpus[node.name] = ()
    node.jobs.add(job_id)
    if alloc.gang:
        node.gang = job_id
    ce_of(st, alloc.ce).used_vcpus += r.vcpus
    node.latest_end = max(node.latest_end, alloc.ends_at)
    refile(st, node)
    if alloc.share is not None:
        usage = share_usage(st, alloc.share)
        usage.running += r.vcpus


def _take_gpus(job_id: str, alloc: Allocation, node: NodeState, held: tuple[int, ...]) -> None:
    """The GPUs ``alloc`` takes on ``node``: the indices ``held`` (reported), else the closest free ones."""
    r = alloc.request
    mine = [i for i in dict.fromkeys(held) if i not in node.gpu_holder][: max(r.gpus, len(held))]
    for i in mine:
        node.gpu_holder[i] = job_id
    for i in node.pick_gpus(min(r.gpus - len(mine), node.free_gpus)):
        node.gpu_holder[i] = job_id
    alloc.gpus[node.name] = tuple(
        node.gpu_ids[i] for i in sorted(i for i, j in node.gpu_holder.items() if j == job_id)
    )


def give(st: SchedulerState, job_id: str, alloc: Allocation, node_name: str) -> None:
    """Give back what ``alloc`` took on ``node_name``."""
    r = alloc.request
    ce = st.ces.get(alloc.ce)
    if ce is not None:
        ce.used_vcpus -= r.vcpus
    node = st.nodes.get(node_name)
    if node is not None:
        node.free_vcpus += r.vcpus
        node.free_memory_mib += r.memory_mib
        if node.gpu_holder:
            for i in [i for i, j in node.gpu_holder.items() if j == job_id]:
                del node.gpu_holder[i]
        node.jobs.discard(job_id)
        if node.gang == job_id:
            node.gang = None
        node.latest_end = latest_end(st, node)
        refile(st, node)
    if alloc.share is not None:
        usage = share_usage(st, alloc.share)
        usage.running = max(0.0, usage.running - r.vcpus)


def release(st: SchedulerState, job_id: str) -> bool:
    """Give back everything ``job_id`` holds; True if it held anything."""
    alloc = st.allocations.pop(job_id, None)
    if alloc is None:
        return False
    for name in alloc.nodes:
        give(st, job_id, alloc, name)
    return True


def drop_hold(st: SchedulerState, job_id: str, node_name: str) -> None:
    """Give back what ``job_id`` holds on one node; a gang keeps its other nodes."""
    alloc = st.allocations.get(job_id)
    if alloc is None or node_name not in alloc.nodes:
        return
    give(st, job_id, alloc, node_name)
    alloc.nodes.remove(node_name)
    alloc.gpus.pop(node_name, None)
    if not alloc.nodes:
        del st.allocations[job_id]
