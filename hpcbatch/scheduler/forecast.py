"""Start-time forecasts: when each waiting job is expected to start, from the plan (``squeue --start``).

Rules (pure: the scheduler core gathers the inputs, nothing here reads a clock):

* Time runs forward from ``now`` through the planned ends of what runs (its prediction or
  timeout; unknown ends never come). At each instant the queues are served by priority, each
  in its own order (FIFO, or fair share's order as of now): a job that fits starts there; the
  first that does not is its queue's head, and gets a *shadow time*, the earliest planned end
  after which it fits. Jobs behind the head start only when they are expected to end by the
  shadow time (EASY backfill, as the core does), so no forecast starves.
* A job's forecast is its simulated start, never earlier than ``now``; a job that waits on
  ends nobody knows (no timeout, no history) gets none, and nor does anything behind it in
  its queue that could only start after it.
* Only the first ``limit`` jobs of each queue are forecast (as Slurm's backfill tests the first
  ``bf_max_job_test``): the forecast stays cheap on a 100k-job queue.
* Simplifications, said plainly: maxvCpus and fair share's computeReservation are not
  simulated, an array is forecast as its next task, and nodes are taken first fit.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from hpcbatch.model.jobs import ResourceRequest

_EPS = 1e-9


@dataclass
class PlanNode:
    """A node as the forecast sees it: what is free now and what it could ever hold."""

    name: str
    ce: str
    free: list[float]  # vCPUs, MiB, GPUs free now
    size: tuple[float, float, float]  # vCPUs, MiB, usable GPUs
    features: frozenset[str] = frozenset()
    busy: int = 0  # allocations on it (a gang needs 0)
    gang: bool = False  # held whole by a gang

    def could_ever_fit(self, r: ResourceRequest) -> bool:
        return (r.vcpus <= self.size[0] + _EPS and r.memory_mib <= self.size[1] and r.gpus <= self.size[2]
                and r.requires <= self.features)

    def fits(self, r: ResourceRequest) -> bool:
        return (not self.gang and r.vcpus <= self.free[0] + _EPS and r.memory_mib <= self.free[1]
                and r.gpus <= self.free[2] and r.requires <= self.features)


@dataclass(frozen=True)
class PlanJob:
    """A waiting job: its shape, its planned run time (None: unknown) and where it may run."""

    job_id: str
    request: ResourceRequest
    num_nodes: int
    run_s: float | None
    ces: tuple[str, ...]


@dataclass(order=True)
class _Release:
    at: float
    seq: int
    node: str = field(compare=False)
    give: tuple[float, float, float] = field(compare=False)
    gang: bool = field(compare=False)


def forecast(
    now: float,
    nodes: Iterable[PlanNode],
    releases: Iterable[tuple[float, str, tuple[float, float, float], bool]],
    queues: Sequence[Sequence[PlanJob]],
) -> dict[str, float]:
    """Expected start per job id (see the module docstring); ``queues`` in priority order."""
    plan = _Plan({n.name: n for n in nodes})
    plan.roomy = {name: n for name, n in plan.nodes.items() if n.free[0] > _EPS and not n.gang}
    for at, name, give, gang in releases:
        if name in plan.nodes and math.isfinite(at):
            plan.release(max(now, at), name, give, gang, push=False)
    heapq.heapify(plan.heap)
    waiting = [list(q) for q in queues]
    shadows: dict[str, float | None] = {}  # a head's shadow time, kept until it starts
    t = now
    while True:
        for jobs in waiting:
            plan.serve(t, jobs, shadows)
            jobs[:] = [j for j in jobs if j.job_id not in plan.starts]
        if not any(waiting) or not plan.heap:
            return plan.starts
        t = plan.heap[0].at
        while plan.heap and plan.heap[0].at <= t:
            plan.give(heapq.heappop(plan.heap))


@dataclass
class _Plan:
    nodes: dict[str, PlanNode]
    heap: list[_Release] = field(default_factory=list)
    starts: dict[str, float] = field(default_factory=dict)
    seq: int = 0
    roomy: dict[str, PlanNode] = field(default_factory=dict)  # nodes with free vCPUs: single jobs look here

    def release(self, at: float, node: str, give: tuple[float, float, float], gang: bool, push: bool = True) -> None:
        self.seq += 1
        item = _Release(at, self.seq, node, give, gang)
        if push:
            heapq.heappush(self.heap, item)
        else:
            self.heap.append(item)

    def serve(self, t: float, jobs: list[PlanJob], shadows: dict[str, float | None]) -> None:
        """Start, at ``t``, what of one queue fits: in order up to its head, then backfill."""
        shadow: float | None = None  # the head's shadow time; None before a head is found
        failed: set[tuple[ResourceRequest, int, tuple[str, ...]]] = set()  # capacity only shrinks in a serve
        for job in jobs:
            if shadow is not None and (job.run_s is None or t + job.run_s > shadow):
                continue  # it would delay the head
            shape = (job.request, job.num_nodes, job.ces)
            placed = None if shape in failed else self.place(job)
            if placed is None:
                failed.add(shape)
                if shadow is None:
                    if job.job_id not in shadows:
                        shadows[job.job_id] = self.shadow(job)
                    shadow = shadows[job.job_id]
                    if shadow is None:
                        return  # the head waits on unknown ends: nothing behind it can be planned
                continue
            self.starts[job.job_id] = t
            r = job.request
            for node in placed:
                node.free[0] -= r.vcpus
                node.free[1] -= r.memory_mib
                node.free[2] -= r.gpus
                node.busy += 1
                node.gang = node.gang or job.num_nodes > 1
                if node.gang or node.free[0] <= _EPS:
                    self.roomy.pop(node.name, None)
                if job.run_s is not None:
                    self.release(t + job.run_s, node.name, (r.vcpus, r.memory_mib, r.gpus), job.num_nodes > 1)

    def place(self, job: PlanJob) -> list[PlanNode] | None:
        r = job.request
        if job.num_nodes <= 1:
            for node in self.roomy.values():
                if node.ce in job.ces and node.fits(r):
                    return [node]
            return None
        for ce in job.ces:
            idle = [n for n in self.nodes.values() if n.ce == ce and n.busy == 0 and n.could_ever_fit(r)]
            if len(idle) >= job.num_nodes:
                return idle[: job.num_nodes]
        return None

    def shadow(self, job: PlanJob) -> float | None:
        """When ``job`` would fit if only planned ends happened from now: walk them in time order."""
        r = job.request
        freed: dict[str, list[float]] = {}
        left: dict[str, int] = {}  # gang: allocations left on a node
        able: dict[str, int] = {}  # gang: whole fitting nodes per CE
        if job.num_nodes > 1:
            for n in self.nodes.values():
                if n.ce in job.ces and n.busy == 0 and n.could_ever_fit(r):
                    able[n.ce] = able.get(n.ce, 0) + 1
        ordered = self.heap[:]
        while ordered:
            rel = heapq.heappop(ordered)
            node = self.nodes[rel.node]
            if node.ce not in job.ces or not node.could_ever_fit(r):
                continue
            if job.num_nodes > 1:
                left[rel.node] = left.get(rel.node, node.busy) - 1
                if left[rel.node] == 0:
                    able[node.ce] = able.get(node.ce, 0) + 1
                    if able[node.ce] >= job.num_nodes:
                        return rel.at
                continue
            f = freed.setdefault(rel.node, [0.0, 0.0, 0.0])
            for i in range(3):
                f[i] += rel.give[i]
            if (
                (not node.gang or rel.gang)
                and node.free[0] + f[0] >= r.vcpus - _EPS
                and node.free[1] + f[1] >= r.memory_mib
                and node.free[2] + f[2] >= r.gpus
            ):
                return rel.at
        return None

    def give(self, rel: _Release) -> None:
        node = self.nodes[rel.node]
        for i in range(3):
            node.free[i] += rel.give[i]
        node.busy = max(0, node.busy - 1)
        if rel.gang and node.busy == 0:
            node.gang = False
        if not node.gang and node.free[0] > _EPS:
            self.roomy[node.name] = node
