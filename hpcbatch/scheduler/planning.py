"""Planned run times and start-time forecasts: the core's view of the future.

Rules: a job is planned with its run-time prediction (``predict``), capped by its timeout
(the hard bound), else its timeout, else unknown. Plans never end a job; one that outlives
its plan has it grown (``predict.grow``) at the start of the next pass, and the nodes it
holds are re-filed by their new expected end. Forecasts (``forecast``): the expected start of
the first waiting jobs of each queue, the plan run forward through planned ends (and pool
nodes powered down or booting, whole from when they are expected up: ``booting``); computed
on demand from the state, never in a pass, and kept until the state changes.
"""

from __future__ import annotations

import heapq

from hpcbatch.scheduler.events import JobRunnable
from hpcbatch.scheduler.fairness import front_of_queue
from hpcbatch.scheduler.forecast import PlanJob, PlanNode, forecast
from hpcbatch.scheduler.gang import UNKNOWN, fmt_time
from hpcbatch.scheduler.holds import file_ends, latest_end, refile
from hpcbatch.scheduler.predict import grow
from hpcbatch.scheduler.reasons import MAX_RESOURCE, REQUIREMENT, decide
from hpcbatch.scheduler.state import QueueState, SchedulerState


def estimate(st: SchedulerState, job: JobRunnable) -> float | None:
    """The run time ``job`` is planned with (``predict``): history capped by its timeout."""
    if not st.predictor.learned:  # no history at all (a fresh cluster, the benchmarks)
        return None if job.time_limit_s is None else float(job.time_limit_s)
    return st.predictor.predict_for(job.owner, job.definition, job.queue, job.time_limit_s)


def grow_predictions(st: SchedulerState) -> None:
    """Jobs still running past their planned end: their plan grows (``predict.grow``) and the
    nodes they hold are re-filed by their new expected end, so this pass plans around it."""
    due = st.due
    while due and due[0][0] < st.now:
        end, job_id = heapq.heappop(due)
        alloc = st.allocations.get(job_id)
        if alloc is None or alloc.planned_s is None or alloc.ends_at != end:
            continue  # ended, or re-planned since
        new = grow(alloc.planned_s, st.now - alloc.started_at, alloc.timeout_s)
        if new <= alloc.planned_s:
            continue  # at its timeout already: it is being ended, nothing to plan beyond
        alloc.planned_s = new
        heapq.heappush(due, (alloc.ends_at, job_id))
        file_ends(st, job_id, alloc)
        for name in alloc.nodes:
            node = st.nodes.get(name)
            if node is not None:
                node.latest_end = latest_end(st, node)
                refile(st, node)
        decide(st, f"plan for {job_id}: ran past its predicted end, now expected to run {fmt_time(new)} s", (job_id,))


def forecast_starts(st: SchedulerState, limit: int = 200) -> dict[str, float]:
    """Expected start (scheduler time) of the first ``limit`` waiting jobs of every queue
    that can start at a planned time (``forecast``'s rules); computed afresh."""
    nodes = [
        PlanNode(node.name, ce.name, [node.free_vcpus, node.free_memory_mib, node.free_gpus],
                 (node.vcpus, node.memory_mib, node.gpus - len(node.gpu_out)), node.features,
                 len(node.jobs), node.gang is not None)
        for ce in st.ces.values() if ce.enabled
        for node in ce.nodes.values() if node.accepting
    ]
    releases = [
        (alloc.ends_at, name, (alloc.request.vcpus, alloc.request.memory_mib, len(alloc.gpus.get(name, ()))),
         alloc.gang)
        for alloc in st.allocations.values() if alloc.ends_at != UNKNOWN
        for name in alloc.nodes
    ]
    for ce in st.ces.values():  # pool nodes powered down or booting: whole from when they are up
        if ce.enabled and ce.booting:
            for b in ce.booting.values():
                size = (b.vcpus, b.memory_mib, b.gpus)
                nodes.append(PlanNode(b.name, ce.name, [0.0, 0, 0], size, b.features, 1))
                releases.append((b.up_at(st.now), b.name, size, False))
    queues = []
    for queue in sorted(st.queues.values(), key=lambda q: (-q.priority, q.name)):
        ces = tuple(n for n in queue.compute_environments if n in st.ces and st.ces[n].enabled)
        if not queue.enabled or not ces:
            continue
        plan = []
        for job_id in _front(st, queue, limit):
            job = queue.jobs[job_id]
            if st.wait_reason.get(job_id, "").startswith((REQUIREMENT, MAX_RESOURCE)):
                continue  # it can never start: no forecast
            plan.append(PlanJob(job_id, job.request, max(1, job.num_nodes), estimate(st, job), ces))
        queues.append(plan)
    return forecast(st.now, nodes, releases, queues)


def _front(st: SchedulerState, queue: QueueState, limit: int) -> list[str]:
    """The first ``limit`` waiting jobs of ``queue`` in the order a pass tries them."""
    if queue.fair_share is not None:
        return front_of_queue(st, queue.name, limit)
    ids = []
    for job_id in queue.jobs:
        if job_id in st.queue_of:
            ids.append(job_id)
            if len(ids) >= limit:
                break
    ids.sort(key=lambda j: queue.jobs[j].seq)
    return ids


def expected_start(st: SchedulerState, job_id: str, max_age_s: float = 5.0) -> float | None:
    """When waiting ``job_id`` is expected to start (scheduler time), or None: unknown, or
    not among the first jobs forecast. The forecast is reused while it is younger than
    ``max_age_s`` (scheduler time) or nothing changed, unless it lacks a job that waits."""
    cached = st.forecast
    if cached is None or (
        cached[0] != st.version
        and (st.now - cached[1] >= max_age_s or (job_id not in cached[2] and job_id in st.queue_of))
    ):
        cached = st.forecast = (st.version, st.now, forecast_starts(st))
    return cached[2].get(job_id) if job_id in st.queue_of else None
