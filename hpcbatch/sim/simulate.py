"""Drive ``hpcbatch.scheduler.Scheduler`` through a workload in simulated time; report the outcome.

Events (arrivals, ends) are processed in time order; everything due at one instant becomes
one ``handle`` call preceded by ``Tick(now)``, exactly as the head feeds the core. Jobs end
after their real run time (never after their requested time: a job running past its
``attemptDurationSeconds`` is cut there, as AWS Batch's timeout does).

Modes compared:

* ``fifo``: strict first-come first-served. Only the head of the line is RUNNABLE in the
  core; the next job is released when it starts. No job ever overtakes another.
* ``backfill``: every waiting job is RUNNABLE; the core places what fits and backfills
  around the reservation of each queue's head. What it plans with is ``estimates``:

  - ``user``: the requested time as ``attemptDurationSeconds`` (a job is cut there);
  - ``predicted``: the same timeout as the hard bound, and the core's run-time predictions
    (every ended job teaches the predictor its run time, as the head does);
  - ``perfect``: the real run time as ``attemptDurationSeconds`` (an oracle, the bound);
  - ``none``: no time at all (every end unknown).

Metrics: mean wait (start - submit), maximum wait, mean bounded slowdown (max(1, (wait +
run) / max(run, 10 s)), Feitelson's definition), utilization (used core-seconds / (cores x
makespan)), makespan. ``forecasts=True`` also asks the core, right after each job arrives,
when it expects the job to start, and reports how far that was from its real start.

Preemption (``preempt=F``, backfill only): a share F of the jobs (seeded) goes to queue
``hi`` (priority 10, ``preempts``), the rest to ``q`` (priority 1, ``preemptible``). A
preempted job stops at once (no grace), loses its work and goes back to its place in ``q``;
the result counts preemptions, the core-seconds lost and ``hi``'s mean wait.
"""

from __future__ import annotations

import csv
import heapq
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.scheduler import (
    AttemptEnded,
    ComputeEnvironmentChanged,
    Event,
    FairSharePolicy,
    JobQueueChanged,
    JobRunnable,
    NodeUp,
    PreemptAttempt,
    Scheduler,
    StartAttempt,
    StartGang,
    Tick,
)
from hpcbatch.sim.workload import SimJob

BOUND_S = 10.0  # bounded slowdown's threshold for very short jobs
TICK_S = 1.0  # how soon after a running job outlives its prediction the core sees time pass
ESTIMATES = ("user", "predicted", "perfect", "none")


@dataclass(frozen=True)
class JobOutcome:
    """One job's fate, a row of the per-job CSV."""

    job_id: str
    user: str
    definition: str
    procs: int
    nodes: int
    submit_s: float
    start_s: float
    run_s: float  # as it ran (cut at its timeout, if it had one)
    requested_s: float | None
    forecast_s: float | None = None  # the start the core expected right after it arrived
    queue: str = "q"

    @property
    def wait_s(self) -> float:
        return self.start_s - self.submit_s

    @property
    def bounded_slowdown(self) -> float:
        return max(1.0, (self.wait_s + self.run_s) / max(self.run_s, BOUND_S))


@dataclass(frozen=True)
class SimResult:
    mode: str
    jobs: int
    mean_wait_s: float
    mean_bounded_slowdown: float
    utilization: float
    makespan_s: float
    max_wait_s: float = 0.0
    outcomes: tuple[JobOutcome, ...] = field(default=(), repr=False)
    preemptions: int | None = None  # None: no preemption simulated
    lost_core_s: float = 0.0

    def lines(self) -> list[str]:
        """``name=value`` lines, as bench/ prints them."""
        p = f"sim_{self.mode}"
        lines = [
            f"{p}_jobs={self.jobs}",
            f"{p}_mean_wait_s={self.mean_wait_s:.1f}",
            f"{p}_max_wait_s={self.max_wait_s:.0f}",
            f"{p}_mean_bounded_slowdown={self.mean_bounded_slowdown:.2f}",
            f"{p}_utilization={self.utilization:.3f}",
            f"{p}_makespan_s={self.makespan_s:.0f}",
        ]
        if self.preemptions is not None:
            hi = [o.wait_s for o in self.outcomes if o.queue == "hi"]
            lines.append(f"{p}_preemptions={self.preemptions}")
            lines.append(f"{p}_lost_core_s={self.lost_core_s:.0f}")
            lines.append(f"{p}_hi_mean_wait_s={sum(hi) / max(1, len(hi)):.1f}")
        errors = [abs(o.forecast_s - o.start_s) for o in self.outcomes if o.forecast_s is not None]
        if errors:  # over the jobs that had to wait: the share that got a forecast, and its error
            waited = sum(1 for o in self.outcomes if o.wait_s > 0)
            lines.append(f"{p}_forecast_share={len(errors) / max(1, waited):.3f}")
            lines.append(f"{p}_forecast_mean_abs_error_s={sum(errors) / len(errors):.1f}")
            lines.append(f"{p}_forecast_median_abs_error_s={sorted(errors)[len(errors) // 2]:.1f}")
        return lines

    def write_csv(self, path: str | Path) -> None:
        """Every job, one row: what happened to it, to check the summary independently."""
        with open(path, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(["mode", "job_id", "user", "definition", "procs", "nodes", "submit_s", "start_s",
                          "wait_s", "run_s", "requested_s", "bounded_slowdown", "forecast_s"])
            for o in self.outcomes:
                out.writerow([self.mode, o.job_id, o.user, o.definition, o.procs, o.nodes, f"{o.submit_s:.1f}",
                              f"{o.start_s:.1f}", f"{o.wait_s:.1f}", f"{o.run_s:.1f}",
                              "" if o.requested_s is None else f"{o.requested_s:.1f}", f"{o.bounded_slowdown:.3f}",
                              "" if o.forecast_s is None else f"{o.forecast_s:.1f}"])


def _shape(job: SimJob, cores: int) -> tuple[int, float]:
    """(nodes, vCPUs per node): a job wider than a node takes whole nodes (a gang)."""
    if job.procs <= cores:
        return 1, float(job.procs)
    return math.ceil(job.procs / cores), float(cores)


def simulate(
    workload: list[SimJob], nodes: int, cores: int, mode: str = "backfill", fair_share: bool = False,
    estimates: str = "user", forecasts: bool = False, preempt: float = 0.0,
) -> SimResult:
    """Run ``workload`` on ``nodes`` nodes of ``cores`` vCPUs; jobs wider than the cluster are dropped."""
    if mode not in ("fifo", "backfill"):
        raise ValueError(f"mode must be fifo or backfill (got {mode!r})")
    if estimates not in ESTIMATES:
        raise ValueError(f"estimates must be one of {', '.join(ESTIMATES)} (got {estimates!r})")
    jobs = sorted((j for j in workload if _shape(j, cores)[0] <= nodes), key=lambda j: (j.submit_s, j.job_id))
    s = Scheduler()
    policy = FairSharePolicy() if fair_share else None
    s.handle(
        Tick("t0", jobs[0].submit_s if jobs else 0.0),
        ComputeEnvironmentChanged("ce", "ce", True, None),
        JobQueueChanged("q", "q", True, 1, ("ce",), fair_share=policy, preemptible=preempt > 0),
        JobQueueChanged("hi", "hi", True, 10, ("ce",), preempts=True),
        *[NodeUp(f"up{i}", f"n{i}", "ce", cores, cores * 4096, 0, placement_group=f"rack{i // 32}")
          for i in range(nodes)],
    )
    by_id = {j.job_id: j for j in jobs}
    # (time, 0 = end before 1 = arrival before 2 = a running job's planned end passed, job id)
    events: list[tuple[float, int, str]] = []
    for j in jobs:
        heapq.heappush(events, (j.submit_s, 1, j.job_id))
    line: list[str] = []  # fifo: arrived, not yet released to the core
    released: str | None = None  # fifo: the one job the core holds
    start: dict[str, float] = {}
    ran: dict[str, float] = {}
    expected: dict[str, float] = {}
    ends_at: dict[str, float] = {}  # running job -> when it ends
    learn = mode == "backfill" and estimates == "predicted"
    seq = 0
    pick = random.Random(7)
    queue_of = {j.job_id: "hi" if mode == "backfill" and pick.random() < preempt else "q" for j in jobs}
    seq_of: dict[str, int] = {}
    preemptions, lost = 0, 0.0

    def actual(job: SimJob) -> float:
        """How long it runs: its run time, cut at its requested time (the timeout kills it)."""
        return job.run_s if job.requested_s is None else min(job.run_s, math.ceil(job.requested_s))

    def limit_of(job: SimJob) -> int | None:
        """The attemptDurationSeconds the core is told (it plans with it)."""
        if estimates == "none":
            return None
        if estimates == "perfect":
            return max(1, math.ceil(actual(job)))
        return None if job.requested_s is None else max(1, math.ceil(job.requested_s))

    def runnable(job: SimJob) -> JobRunnable:
        nonlocal seq
        seq += 1
        place = seq_of.setdefault(job.job_id, seq)  # a preempted job goes back to its place
        n, vcpus = _shape(job, cores)
        return JobRunnable(f"r{seq}", job.job_id, queue_of[job.job_id], ResourceRequest(vcpus, int(vcpus * 4096)), place,
                           num_nodes=n, time_limit_s=limit_of(job), share=job.user if fair_share else None,
                           owner=job.user, definition=job.definition)

    while events:
        now = events[0][0]
        batch: list[Event] = [Tick(f"tick{now}", now)]
        arrived: list[str] = []
        replan: list[str] = []
        while events and events[0][0] == now:
            _, kind, job_id = heapq.heappop(events)
            if kind == 0:
                if ends_at.get(job_id) != now:
                    continue  # preempted before this end
                del ends_at[job_id]
                batch.append(AttemptEnded(f"end-{job_id}", job_id, run_s=ran[job_id] if learn else None))
            elif kind == 2:
                replan.append(job_id)  # the head's next tick after it outlived its plan: the Tick does it
            elif mode == "backfill":
                batch.append(runnable(by_id[job_id]))
                arrived.append(job_id)
            else:
                line.append(job_id)
        while True:
            if mode == "fifo" and released is None and line:
                released = line.pop(0)
                batch.append(runnable(by_id[released]))
            actions = s.handle(*batch)
            batch = [Tick(f"tick{now}", now)]
            progressed = stopped = False
            for a in actions:
                if isinstance(a, StartAttempt | StartGang):
                    job = by_id[a.job_id]
                    start[a.job_id] = now
                    run = ran[a.job_id] = actual(job)
                    ends_at[a.job_id] = now + run
                    heapq.heappush(events, (now + run, 0, a.job_id))
                    replan.append(a.job_id)
                    if a.job_id == released:
                        released, progressed = None, True
                elif isinstance(a, PreemptAttempt) and a.job_id in ends_at:
                    victim = by_id[a.job_id]
                    del ends_at[a.job_id]
                    preemptions += 1
                    lost += (now - start.pop(a.job_id)) * _shape(victim, cores)[0] * _shape(victim, cores)[1]
                    batch += [AttemptEnded(f"preempted-{a.job_id}", a.job_id), runnable(victim)]
                    stopped = True
            if not ((mode == "fifo" and progressed and line) or stopped):
                break
        for job_id in replan:  # predictions: wake up when a running job outlives its plan, as the head's tick does
            planned = s.planned_run_s(job_id) if learn and job_id in ends_at else None
            if planned is not None and start[job_id] + planned < start[job_id] + ran[job_id]:
                heapq.heappush(events, (start[job_id] + planned + TICK_S, 2, job_id))
        if forecasts:
            for job_id in arrived:
                if job_id not in start:  # it waits: when does the core expect it to start?
                    at = s.expected_start(job_id, max_age_s=0.0)
                    if at is not None:
                        expected[job_id] = at
    done = [j for j in jobs if j.job_id in start]
    if not done:
        return SimResult(_label(mode, estimates), 0, 0.0, 0.0, 0.0, 0.0)
    outcomes = tuple(
        JobOutcome(j.job_id, j.user, j.definition, j.procs, _shape(j, cores)[0], j.submit_s, start[j.job_id],
                   ran[j.job_id], j.requested_s, expected.get(j.job_id), queue_of[j.job_id])
        for j in done
    )
    first = min(j.submit_s for j in done)
    makespan = max(o.start_s + o.run_s for o in outcomes) - first
    used = sum(ran[j.job_id] * _shape(j, cores)[0] * _shape(j, cores)[1] for j in done)
    return SimResult(
        _label(mode, estimates), len(done), sum(o.wait_s for o in outcomes) / len(done),
        sum(o.bounded_slowdown for o in outcomes) / len(done),
        used / (nodes * cores * makespan) if makespan > 0 else 0.0, makespan,
        max(o.wait_s for o in outcomes), outcomes, preemptions if preempt > 0 and mode == "backfill" else None, lost,
    )


def _label(mode: str, estimates: str) -> str:
    """``fifo``, ``backfill`` (user estimates: the original names), ``backfill_predicted``, ..."""
    return mode if mode == "fifo" or estimates == "user" else f"{mode}_{estimates}"
