"""Applying one event to the scheduler's state: one handler per event type.

Rules: events change state only; decisions are the pass's (``passes``), made once after a
``handle`` call's events are all applied. Events that change the nodes or compute
environments forget what was derived from them (``never_cache``: whether a gang shape could
ever run; ``away_cache``: nodes away). Re-registration (``NodeUp`` for a known node) is the
truth: the node's old holds are given back and what it reports running is held afresh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hpcbatch.scheduler import booting
from hpcbatch.scheduler.decisions import Cause
from hpcbatch.scheduler.events import (
    AttemptEnded,
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
    RunTimesLearned,
    Tick,
)
from hpcbatch.scheduler.gang import natural_key
from hpcbatch.scheduler.holds import (
    ce_of,
    decay_s,
    drop_hold,
    hold,
    refile,
    release,
    take,
    unfile,
    withdraw,
)
from hpcbatch.scheduler.nodeindex import NodeIndex
from hpcbatch.scheduler.predict import RunKey
from hpcbatch.scheduler.state import Allocation, NodeState, QueueState, SchedulerState


def apply_events(st: SchedulerState, events: tuple[Event, ...]) -> tuple[Cause, ...]:
    """Apply ``events`` in order; return those that cause this pass's decisions (``apply_event``)."""
    causes = []
    for event in events:
        if type(event) is JobRunnable:  # most events by far (100k in one call at start-up)
            _job_runnable(st, event)
            continue
        cause = apply_event(st, event)
        if cause is not None:
            causes.append(cause)
    return tuple(causes)


def apply_event(st: SchedulerState, event: Event) -> Cause | None:
    """Apply ``event``; return it as a cause of this pass's decisions, or None for a job's
    arrival (it causes only decisions about that job: ``decisions``)."""
    handler = _HANDLERS.get(type(event)) or next(
        (_HANDLERS[cls] for cls in type(event).__mro__ if cls in _HANDLERS), None)
    if handler is None:
        raise TypeError(f"unknown scheduler event {event!r}")
    handler(st, event)
    if isinstance(event, JobRunnable):
        return None
    return Cause(type(event).__name__, event.event_id, getattr(event, "job_id", None))


def _job_runnable(st: SchedulerState, event: JobRunnable) -> None:
    if event.array_count:
        st.array_left[event.job_id] = event.array_count
        st.array_next[event.job_id] = event.first_index
        st.array_running.setdefault(event.job_id, 0)
    queue = st.queues.get(event.queue)
    if queue is None:
        st.orphans[event.job_id] = event
    else:
        queue.add(event)
        queue.fresh.append(event.job_id)
        st.queue_of[event.job_id] = event.queue


def _job_withdrawn(st: SchedulerState, event: JobWithdrawn) -> None:
    withdraw(st, event.job_id)


def _attempt_ended(st: SchedulerState, event: AttemptEnded) -> None:
    st.stopping.discard(event.job_id)
    if event.run_s is not None:
        alloc = st.allocations.get(event.job_id)
        if alloc is not None and alloc.key is not None:
            st.predictor.learn(alloc.key, event.run_s)
    if release(st, event.job_id):
        array_id, sep, _ = event.job_id.rpartition(":")
        if sep and array_id in st.array_running:
            st.array_running[array_id] = max(0, st.array_running[array_id] - 1)


def _node_up(st: SchedulerState, event: NodeUp) -> None:
    # Re-registration: what the node reports running is the truth. Give back the old
    # holds first (onto the old node value), then build the node afresh from its report.
    _forget_derived(st)
    old = st.nodes.get(event.node)
    st.down.pop(event.node, None)
    booting.forget(st, event.node)  # registered: no longer planned as a boot
    if old is not None:
        for job_id in list(old.jobs):
            drop_hold(st, job_id, old.name)
        unfile(st, old)
    gpu_ids = event.gpu_ids or tuple(str(i) for i in range(event.gpus))
    node = NodeState(
        event.node, event.compute_environment, event.vcpus, event.memory_mib, len(gpu_ids),
        event.accepting, event.vcpus, event.memory_mib, event.placement_group, gpu_ids,
        gpu_places=event.gpu_places, gpu_out=frozenset(gpu_ids.index(g) for g in event.gpu_out if g in gpu_ids),
        features=event.features,
    )
    st.nodes[node.name] = node
    ce_of(st, node.ce).nodes[node.name] = node
    refile(st, node)
    _hold_reported(st, event, node)


def _hold_reported(st: SchedulerState, event: NodeUp, node: NodeState) -> None:
    """Hold what a (re-)registering node reports running, as it reports it."""
    holds = dict(event.gpu_holds)
    shares = {job_id: (queue, share) for job_id, queue, share in event.shares}
    # Reported GPU holds first, so a job reported without ids cannot take a held one.
    ordered = sorted(event.allocations, key=lambda a: a[0] not in holds)
    for job_id, request in ordered:
        withdraw(st, job_id)
        gang = job_id in event.gang_jobs
        held = tuple(node.gpu_ids.index(g) for g in holds.get(job_id, ()) if g in node.gpu_ids)
        alloc = st.allocations.get(job_id)
        if alloc is not None and gang and alloc.gang and alloc.ce == node.ce:
            alloc.nodes.append(node.name)  # another node of a gang already re-joined
            alloc.nodes.sort(key=natural_key)
            take(st, job_id, alloc, node, held)
            continue
        release(st, job_id)  # the newest report wins over a stale hold elsewhere
        charged = shares.get(job_id)
        if charged is not None and (q := st.queues.get(charged[0])) is not None and q.fair_share is None:
            charged = None
        # Allocations reported by a node have no known time limit.
        hold(st, job_id, Allocation([node.name], node.ce, request, gang, st.now, None, share=charged), [node], held)


def _node_gone(st: SchedulerState, event: NodeGone) -> None:
    _forget_derived(st)
    node = st.nodes.get(event.node)
    if node is None:
        return
    for job_id in list(node.jobs):
        drop_hold(st, job_id, node.name)
    del st.nodes[node.name]
    st.down[node.name] = node
    unfile(st, node)


def _node_power_changed(st: SchedulerState, event: NodePowerChanged) -> None:
    _forget_derived(st)
    booting.node_power_changed(st, event)


def _power_rate_reached(st: SchedulerState, event: PowerRateReached) -> None:
    ce_of(st, event.compute_environment).power_rate_until_s = event.until_s


def _tick(st: SchedulerState, event: Tick) -> None:
    st.now = max(st.now, event.now_s)
    for (queue_name, _), usage in st.usage.items():
        usage.advance(st.now, decay_s(st, queue_name))


def _ce_changed(st: SchedulerState, event: ComputeEnvironmentChanged) -> None:
    _forget_derived(st)
    ce = ce_of(st, event.name)
    ce.enabled, ce.max_vcpus = event.enabled, event.max_vcpus
    ce.require_placement_group = event.require_placement_group
    if ce.index.strategy != event.allocation_strategy:
        ce.index = NodeIndex(event.allocation_strategy)
        for node in ce.nodes.values():
            ce.index.update(node)


def _ce_removed(st: SchedulerState, event: ComputeEnvironmentRemoved) -> None:
    _forget_derived(st)
    ce = st.ces.get(event.name)
    if ce is not None and not ce.nodes:
        del st.ces[event.name]


def _queue_changed(st: SchedulerState, event: JobQueueChanged) -> None:
    queue = st.queues.get(event.name)
    if queue is None:
        queue = st.queues[event.name] = QueueState(
            event.name, event.enabled, event.priority, event.compute_environments,
            fair_share=event.fair_share, time_limits=event.time_limits,
        )
        queue.preempts, queue.preemptible = event.preempts, event.preemptible
        for job_id, job in list(st.orphans.items()):
            if job.queue == event.name:
                del st.orphans[job_id]
                queue.add(job)
                st.queue_of[job_id] = event.name
        return
    queue.enabled, queue.priority = event.enabled, event.priority
    queue.compute_environments = event.compute_environments
    queue.fair_share, queue.time_limits = event.fair_share, event.time_limits
    queue.preempts, queue.preemptible = event.preempts, event.preemptible
    queue.share_heaps = None  # rebuilt on the next fair-share pass
    queue.rescan = True


def _queue_removed(st: SchedulerState, event: JobQueueRemoved) -> None:
    queue = st.queues.pop(event.name, None)
    if queue is not None:
        for job_id, job in queue.jobs.items():
            del st.queue_of[job_id]
            st.orphans[job_id] = job


def _run_times_learned(st: SchedulerState, event: RunTimesLearned) -> None:
    for owner, definition, queue_name, run_s in event.runs:
        st.predictor.learn(RunKey(owner, definition, queue_name), run_s)


def _forget_derived(st: SchedulerState) -> None:
    """Nodes or compute environments changed: what was derived from them is stale."""
    st.never_cache.clear()
    st.away_cache.clear()


_HANDLERS: dict[type, Callable[[SchedulerState, Any], None]] = {
    JobRunnable: _job_runnable,
    JobWithdrawn: _job_withdrawn,
    AttemptEnded: _attempt_ended,
    NodeUp: _node_up,
    NodeGone: _node_gone,
    NodePowerChanged: _node_power_changed,
    PowerRateReached: _power_rate_reached,
    Tick: _tick,
    ComputeEnvironmentChanged: _ce_changed,
    ComputeEnvironmentRemoved: _ce_removed,
    JobQueueChanged: _queue_changed,
    JobQueueRemoved: _queue_removed,
    RunTimesLearned: _run_times_learned,
}
