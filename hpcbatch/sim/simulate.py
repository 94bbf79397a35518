"""Drive ``hpcbatch.scheduler.Scheduler`` through a workload in simulated time; report the outcome.

Events (arrivals, ends) are processed in time order; everything due at one instant becomes
one ``handle`` call preceded by ``Tick(now)``, exactly as the head feeds the core. Jobs end
after their real run time (never after their requested time: a job running past its
``attemptDurationSeconds`` is cut there, as AWS Batch's timeout does).

Modes compared:

* ``fifo``: strict first-come first-served. Only the head of the line is RUNNABLE in the
  core; the next job is released when it starts. No job ever overtakes another.
* ``backfill``: every waiting job is RUNNABLE with its requested time as
  ``attemptDurationSeconds``; the core places what fits and backfills around the
  reservation of the first waiting multi-node job.

Metrics: mean wait (start - submit), mean bounded slowdown (max(1, (wait + run) /
max(run, 10 s)), Feitelson's definition), utilization (used core-seconds / (cores x
makespan)), makespan.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.scheduler import (
    AttemptEnded,
    ComputeEnvironmentChanged,
    FairSharePolicy,
    JobQueueChanged,
    JobRunnable,
    NodeUp,
    Scheduler,
    StartAttempt,
    StartGang,
    Tick,
)
from hpcbatch.sim.workload import SimJob

BOUND_S = 10.0  # bounded slowdown's threshold for very short jobs


@dataclass(frozen=True)
class SimResult:
    mode: str
    jobs: int
    mean_wait_s: float
    mean_bounded_slowdown: float
    utilization: float
    makespan_s: float

    def lines(self) -> list[str]:
        """``name=value`` lines, as bench/ prints them."""
        p = f"sim_{self.mode}"
        return [
            f"{p}_jobs={self.jobs}",
            f"{p}_mean_wait_s={self.mean_wait_s:.1f}",
            f"{p}_mean_bounded_slowdown={self.mean_bounded_slowdown:.2f}",
            f"{p}_utilization={self.utilization:.3f}",
            f"{p}_makespan_s={self.makespan_s:.0f}",
        ]


def _shape(job: SimJob, cores: int) -> tuple[int, float]:
    """(nodes, vCPUs per node): a job wider than a node takes whole nodes (a gang)."""
    if job.procs <= cores:
        return 1, float(job.procs)
    return math.ceil(job.procs / cores), float(cores)


def simulate(
    workload: list[SimJob], nodes: int, cores: int, mode: str = "backfill", fair_share: bool = False
) -> SimResult:
    """Run ``workload`` on ``nodes`` nodes of ``cores`` vCPUs; jobs wider than the cluster are dropped."""
    if mode not in ("fifo", "backfill"):
        raise ValueError(f"mode must be fifo or backfill (got {mode!r})")
    jobs = sorted((j for j in workload if _shape(j, cores)[0] <= nodes), key=lambda j: (j.submit_s, j.job_id))
    s = Scheduler()
    policy = FairSharePolicy() if fair_share else None
    s.handle(
        Tick("t0", jobs[0].submit_s if jobs else 0.0),
        ComputeEnvironmentChanged("ce", "ce", True, None),
        JobQueueChanged("q", "q", True, 1, ("ce",), fair_share=policy),
        *[NodeUp(f"up{i}", f"n{i}", "ce", cores, cores * 4096, 0, placement_group=f"rack{i // 32}")
          for i in range(nodes)],
    )
    by_id = {j.job_id: j for j in jobs}
    events: list[tuple[float, int, str]] = []  # (time, 0 = end before 1 = arrival, job id)
    for j in jobs:
        heapq.heappush(events, (j.submit_s, 1, j.job_id))
    line: list[str] = []  # fifo: arrived, not yet released to the core
    released: str | None = None  # fifo: the one job the core holds
    start: dict[str, float] = {}
    ran: dict[str, float] = {}
    seq = 0

    def runnable(job: SimJob) -> JobRunnable:
        nonlocal seq
        seq += 1
        n, vcpus = _shape(job, cores)
        limit = None if job.requested_s is None else max(1, math.ceil(job.requested_s))
        return JobRunnable(f"r{seq}", job.job_id, "q", ResourceRequest(vcpus, int(vcpus * 4096)), seq,
                           num_nodes=n, time_limit_s=limit, share=job.user if fair_share else None)

    while events:
        now = events[0][0]
        batch = [Tick(f"tick{now}", now)]
        while events and events[0][0] == now:
            _, kind, job_id = heapq.heappop(events)
            if kind == 0:
                batch.append(AttemptEnded(f"end-{job_id}", job_id))
            elif mode == "backfill":
                batch.append(runnable(by_id[job_id]))
            else:
                line.append(job_id)
        while True:
            if mode == "fifo" and released is None and line:
                released = line.pop(0)
                batch.append(runnable(by_id[released]))
            actions = s.handle(*batch)
            batch = [Tick(f"tick{now}", now)]
            progressed = False
            for a in actions:
                if isinstance(a, StartAttempt | StartGang):
                    job = by_id[a.job_id]
                    start[a.job_id] = now
                    run = job.run_s if job.requested_s is None else min(job.run_s, math.ceil(job.requested_s))
                    ran[a.job_id] = run
                    heapq.heappush(events, (now + run, 0, a.job_id))
                    if a.job_id == released:
                        released, progressed = None, True
            if not (mode == "fifo" and progressed and line):
                break
    done = [j for j in jobs if j.job_id in start]
    if not done:
        return SimResult(mode, 0, 0.0, 0.0, 0.0, 0.0)
    waits = [start[j.job_id] - j.submit_s for j in done]
    slowdowns = [max(1.0, (w + ran[j.job_id]) / max(ran[j.job_id], BOUND_S)) for j, w in zip(done, waits, strict=True)]
    first = min(j.submit_s for j in done)
    makespan = max(start[j.job_id] + ran[j.job_id] for j in done) - first
    used = sum(ran[j.job_id] * _shape(j, cores)[0] * _shape(j, cores)[1] for j in done)
    return SimResult(
        mode, len(done), sum(waits) / len(done), sum(slowdowns) / len(done),
        used / (nodes * cores * makespan) if makespan > 0 else 0.0, makespan,
    )
