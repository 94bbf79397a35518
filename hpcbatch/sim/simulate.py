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

Power saving (``power=PowerSaving(...)``): the nodes form one MANAGED pool run by the head's
own planner (hpcbatch.scheduler.power), given the waiting jobs and the registered nodes after
every instant, as the head's power pass is. A power-up registers the node with the core
``boot_s`` later; a power-down removes it at once (it is idle). The core is told which nodes
are powered down or booting (``NodePowerChanged``, as the head does), so its reservations
count the boot (``plan_boots=False``: it sees registered nodes only). The result adds the
node-seconds powered and saved (powered down), counted until the last pass (the last idle
nodes' ``suspend_after_s`` past the last job); ``power_saving_lines`` sets them against the
mean wait the boots added. ``simulate`` itself is steps of ``_Run``: pop what is due, feed the
core, run the power pass, schedule wake-ups.
"""

from __future__ import annotations

import csv
import heapq
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, Unpack

from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.scheduler import (
    AttemptEnded,
    ComputeEnvironmentChanged,
    Event,
    FairSharePolicy,
    JobQueueChanged,
    JobRunnable,
    NodeGone,
    NodePowerChanged,
    NodeUp,
    PreemptAttempt,
    Scheduler,
    StartAttempt,
    StartGang,
    Tick,
)
from hpcbatch.scheduler.power import (
    Demand,
    NodePower,
    NodeView,
    Pool,
    PowerOff,
    PowerOn,
    PowerPlanner,
    PowerState,
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
    powered_node_s: float | None = None  # None: no power saving simulated
    saved_node_s: float = 0.0  # node-seconds powered down

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
        if self.powered_node_s is not None:
            total = self.powered_node_s + self.saved_node_s
            lines.append(f"{p}_node_hours_powered={self.powered_node_s / 3600:.1f}")
            lines.append(f"{p}_node_hours_saved={self.saved_node_s / 3600:.1f}")
            lines.append(f"{p}_saved_share={self.saved_node_s / total if total else 0.0:.3f}")
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


@dataclass(frozen=True)
class PowerSaving:
    """Powered-down nodes, as a MANAGED pool's (hpcbatch.scheduler.power decides): every node but
    the first ``min_nodes`` starts powered down, a waiting job powers up what it needs, a node registers ``boot_s``
    later, and one idle for ``suspend_after_s`` is powered down (never below ``min_nodes``)."""

    suspend_after_s: float = 300.0
    boot_s: float = 60.0
    min_nodes: int = 0
    # Tell the core which nodes are powered down or booting (``NodePowerChanged``), so its
    # reservations count the boot; False: the core sees registered nodes only (as before issue 20).
    plan_boots: bool = True


class SimSettings(TypedDict, total=False):
    """``simulate``'s keyword settings (the fields of SimOptions)."""

    fair_share: bool
    estimates: str
    forecasts: bool
    preempt: float
    power: PowerSaving | None


@dataclass(frozen=True)
class SimOptions:
    fair_share: bool = False
    estimates: str = "user"
    forecasts: bool = False
    preempt: float = 0.0
    power: PowerSaving | None = None


# Event kinds, in the order they are handled at one instant.
END, ARRIVE, REPLAN, REGISTER, POWER_PASS = 0, 1, 2, 3, 4
POWER_DEMANDS_PER_NODE = 4  # waiting jobs shown to the power planner: the first 4 per node (enough to fill it)


def simulate(workload: list[SimJob], nodes: int, cores: int, mode: str = "backfill",
             **settings: Unpack[SimSettings]) -> SimResult:
    """Run ``workload`` on ``nodes`` nodes of ``cores`` vCPUs; jobs wider than the cluster are dropped."""
    options = SimOptions(**settings)
    if mode not in ("fifo", "backfill"):
        raise ValueError(f"mode must be fifo or backfill (got {mode!r})")
    if options.estimates not in ESTIMATES:
        raise ValueError(f"estimates must be one of {', '.join(ESTIMATES)} (got {options.estimates!r})")
    jobs = sorted((j for j in workload if _shape(j, cores)[0] <= nodes), key=lambda j: (j.submit_s, j.job_id))
    return _Run(jobs, nodes, cores, mode, options).run()


class _Run:
    """One simulation: the core, the event heap, and what happened to every job."""

    def __init__(self, jobs: list[SimJob], nodes: int, cores: int, mode: str, options: SimOptions) -> None:
        self.jobs, self.nodes, self.cores, self.mode, self.o = jobs, nodes, cores, mode, options
        self.by_id = {j.job_id: j for j in jobs}
        # (time, kind, job id or node name)
        self.events: list[tuple[float, int, str]] = [(j.submit_s, ARRIVE, j.job_id) for j in jobs]
        heapq.heapify(self.events)
        self.line: list[str] = []  # fifo: arrived, not yet released to the core
        self.released: str | None = None  # fifo: the one job the core holds
        self.start: dict[str, float] = {}
        self.ran: dict[str, float] = {}
        self.expected: dict[str, float] = {}
        self.ends_at: dict[str, float] = {}  # running job -> when it ends
        self.waiting: dict[str, None] = {}  # jobs the core holds, not started (in order)
        self.learn = mode == "backfill" and options.estimates == "predicted"
        self.seq = 0
        pick = random.Random(7)
        self.queue_of = {j.job_id: "hi" if mode == "backfill" and pick.random() < options.preempt else "q"
                         for j in jobs}
        self.seq_of: dict[str, int] = {}
        self.preemptions, self.lost = 0, 0.0
        self.s = Scheduler()
        self.power: PowerPlanner | None = None
        self.up: set[str] = set()  # nodes registered with the core
        self._start_core(jobs[0].submit_s if jobs else 0.0)

    def _node_up(self, i: int) -> NodeUp:
        return NodeUp(f"up{i}-{self.seq}", f"n{i}", "ce", self.cores, self.cores * 4096, 0,
                      placement_group=f"rack{i // 32}")

    def _power_fact(self, name: str, state: PowerState, now: float) -> NodePowerChanged:
        """What the head tells the core of a pool node that is not registered (issue 20)."""
        assert self.o.power is not None
        return NodePowerChanged(f"power-{name}-{now}", name, "ce", state.value, self.o.power.boot_s, self.cores,
                                self.cores * 4096, since_s=now, placement_group=f"rack{int(name[1:]) // 32}")

    def _powered_down(self, name: str, now: float) -> NodePowerChanged:
        return self._power_fact(name, PowerState.POWERED_DOWN, now)

    def _start_core(self, t0: float) -> None:
        o = self.o
        policy = FairSharePolicy() if o.fair_share else None
        self.s.handle(
            Tick("t0", t0),
            ComputeEnvironmentChanged("ce", "ce", True, None),
            JobQueueChanged("q", "q", True, 1, ("ce",), fair_share=policy, preemptible=o.preempt > 0),
            JobQueueChanged("hi", "hi", True, 10, ("ce",), preempts=True),
            *[self._node_up(i) for i in range(self.nodes if o.power is None else min(self.nodes, o.power.min_nodes))],
        )
        if o.power is None:
            self.up = {f"n{i}" for i in range(self.nodes)}
            return
        pool = Pool("ce", tuple(f"n{i}" for i in range(self.nodes)), float(self.cores),
                    min_vcpus=float(o.power.min_nodes * self.cores), max_vcpus=None,
                    suspend_after_s=o.power.suspend_after_s, resume_timeout_s=math.inf, boot_time_s=o.power.boot_s,
                    memory_mib_per_node=self.cores * 4096)
        self.power = PowerPlanner([pool], t0)
        for name in pool.nodes[:o.power.min_nodes]:  # minvCpus' nodes are up from the start
            self.up.add(name)
            self.power.restore(name, NodePower(PowerState.ACTIVE, t0, "Registered"))
        if o.power.plan_boots:
            self.s.handle(Tick(f"tick{t0}", t0), *[self._powered_down(name, t0) for name in pool.nodes[o.power.min_nodes:]])
        self._handle(t0, [Tick(f"tick{t0}", t0), *self._power_pass(t0)], [])

    # ------------------------------------------------------------- the jobs
    def actual(self, job: SimJob) -> float:
        """How long it runs: its run time, cut at its requested time (the timeout kills it)."""
        return job.run_s if job.requested_s is None else min(job.run_s, math.ceil(job.requested_s))

    def limit_of(self, job: SimJob) -> int | None:
        """The attemptDurationSeconds the core is told (it plans with it)."""
        if self.o.estimates == "none":
            return None
        if self.o.estimates == "perfect":
            return max(1, math.ceil(self.actual(job)))
        return None if job.requested_s is None else max(1, math.ceil(job.requested_s))

    def runnable(self, job: SimJob) -> JobRunnable:
        self.seq += 1
        place = self.seq_of.setdefault(job.job_id, self.seq)  # a preempted job goes back to its place
        n, vcpus = _shape(job, self.cores)
        self.waiting[job.job_id] = None
        return JobRunnable(f"r{self.seq}", job.job_id, self.queue_of[job.job_id],
                           ResourceRequest(vcpus, int(vcpus * 4096)), place, num_nodes=n,
                           time_limit_s=self.limit_of(job), share=job.user if self.o.fair_share else None,
                           owner=job.user, definition=job.definition)

    # ------------------------------------------------------------- one instant
    def run(self) -> SimResult:
        while self.events:
            now = self.events[0][0]
            batch, arrived, replan = self._pop_due(now)
            self._handle(now, batch, replan)
            if self.power is not None:
                facts = self._power_pass(now)
                if facts:  # nodes went or began to boot: the core replans (backfill may start jobs)
                    self._handle(now, [Tick(f"tick{now}", now), *facts], replan)
            self._wake_on_plans(replan)
            if self.o.forecasts:
                self._ask_forecasts(arrived)
        return self._result()

    def _pop_due(self, now: float) -> tuple[list[Event], list[str], list[str]]:
        """Everything due at ``now``: the core's events, the arrivals, the jobs to re-plan."""
        batch: list[Event] = [Tick(f"tick{now}", now)]
        arrived: list[str] = []
        replan: list[str] = []
        while self.events and self.events[0][0] == now:
            _, kind, key = heapq.heappop(self.events)
            if kind == END:
                if self.ends_at.get(key) == now:  # else preempted before this end
                    del self.ends_at[key]
                    batch.append(AttemptEnded(f"end-{key}", key, run_s=self.ran[key] if self.learn else None))
            elif kind == REPLAN:
                replan.append(key)  # the head's next tick after it outlived its plan: the Tick does it
            elif kind == REGISTER:
                self.up.add(key)
                batch.append(self._node_up(int(key[1:])))
            elif kind == POWER_PASS:
                pass  # the pass that follows every instant does it
            elif self.mode == "backfill":
                batch.append(self.runnable(self.by_id[key]))
                arrived.append(key)
            else:
                self.line.append(key)
        return batch, arrived, replan

    def _handle(self, now: float, batch: list[Event], replan: list[str]) -> None:
        """Feed the core until it has nothing more to do at ``now`` (fifo releases, preemptions)."""
        while True:
            if self.mode == "fifo" and self.released is None and self.line:
                self.released = self.line.pop(0)
                batch.append(self.runnable(self.by_id[self.released]))
            actions = self.s.handle(*batch)
            batch = [Tick(f"tick{now}", now)]
            progressed = stopped = False
            for a in actions:
                if isinstance(a, StartAttempt | StartGang):
                    progressed = self._started(now, a.job_id, replan) or progressed
                elif isinstance(a, PreemptAttempt) and a.job_id in self.ends_at:
                    batch += self._preempted(now, a.job_id)
                    stopped = True
            if not ((self.mode == "fifo" and progressed and self.line) or stopped):
                return

    def _started(self, now: float, job_id: str, replan: list[str]) -> bool:
        """A job started; whether it was fifo's released one (the next may go)."""
        self.start[job_id] = now
        run = self.ran[job_id] = self.actual(self.by_id[job_id])
        self.ends_at[job_id] = now + run
        self.waiting.pop(job_id, None)
        heapq.heappush(self.events, (now + run, END, job_id))
        replan.append(job_id)
        if job_id == self.released:
            self.released = None
            return True
        return False

    def _preempted(self, now: float, job_id: str) -> list[Event]:
        victim = self.by_id[job_id]
        del self.ends_at[job_id]
        self.preemptions += 1
        n, vcpus = _shape(victim, self.cores)
        self.lost += (now - self.start.pop(job_id)) * n * vcpus
        return [AttemptEnded(f"preempted-{job_id}", job_id), self.runnable(victim)]

    def _wake_on_plans(self, replan: list[str]) -> None:
        """Predictions: wake up when a running job outlives its plan, as the head's tick does."""
        for job_id in replan:
            planned = self.s.planned_run_s(job_id) if self.learn and job_id in self.ends_at else None
            if planned is not None and planned < self.ran[job_id]:
                heapq.heappush(self.events, (self.start[job_id] + planned + TICK_S, REPLAN, job_id))

    def _ask_forecasts(self, arrived: list[str]) -> None:
        for job_id in arrived:
            if job_id not in self.start:  # it waits: when does the core expect it to start?
                at = self.s.expected_start(job_id, max_age_s=0.0)
                if at is not None:
                    self.expected[job_id] = at

    # ------------------------------------------------------------- power
    def _power_pass(self, now: float) -> list[Event]:
        """The head's power pass: power-ups register ``boot_s`` later, power-downs leave at once;
        returns what the core must be told (nodes gone, and with ``plan_boots`` their power states)."""
        assert self.power is not None and self.o.power is not None
        demands = []
        for job_id in list(self.waiting)[:POWER_DEMANDS_PER_NODE * self.nodes]:
            n, vcpus = _shape(self.by_id[job_id], self.cores)
            demands.append(Demand(job_id, ("ce",), vcpus, n, int(vcpus * 4096)))
        views = {}
        for name in self.up:
            used = (self.s.node_usage(name) or (0.0, 0, 0))[0]
            views[name] = NodeView(name, float(self.cores), float(used), used > 0)
        plan = self.power.plan(now, demands, views)
        gone: list[str] = []
        facts: list[Event] = []
        for action in plan.actions:
            if isinstance(action, PowerOn):
                for name in action.nodes:
                    heapq.heappush(self.events, (now + self.o.power.boot_s, REGISTER, name))
                    facts.append(self._power_fact(name, PowerState.POWERING_UP, now))
            elif isinstance(action, PowerOff):
                gone += action.nodes
        if gone:
            facts += [NodeGone(f"off-{name}-{now}", name) for name in gone]
            facts += [self._powered_down(name, now) for name in gone]
            self.up.difference_update(gone)
            self.power.powered_off(gone, now)
        self._next_suspend(now)
        if not self.o.power.plan_boots:
            facts = [f for f in facts if isinstance(f, NodeGone)]
        return facts

    def _next_suspend(self, now: float) -> None:
        """A pass when the first idle node's ``suspend_after_s`` is up (if nothing else comes first)."""
        assert self.power is not None and self.o.power is not None
        due = [rec.idle_since + self.o.power.suspend_after_s for rec in self.power.records.values()
               if rec.idle_since is not None and rec.state is PowerState.ACTIVE]
        later = [t for t in due if t > now]
        if later:
            heapq.heappush(self.events, (min(later), POWER_PASS, ""))

    # ------------------------------------------------------------- the outcome
    def _result(self) -> SimResult:
        label = _label(self.mode, self.o.estimates) + ("_power" if self.power is not None else "")
        done = [j for j in self.jobs if j.job_id in self.start]
        if not done:
            return SimResult(label, 0, 0.0, 0.0, 0.0, 0.0)
        cores = self.cores
        outcomes = tuple(
            JobOutcome(j.job_id, j.user, j.definition, j.procs, _shape(j, cores)[0], j.submit_s, self.start[j.job_id],
                       self.ran[j.job_id], j.requested_s, self.expected.get(j.job_id), self.queue_of[j.job_id])
            for j in done
        )
        first = min(j.submit_s for j in done)
        makespan = max(o.start_s + o.run_s for o in outcomes) - first
        used = sum(self.ran[j.job_id] * _shape(j, cores)[0] * _shape(j, cores)[1] for j in done)
        power = self.power
        return SimResult(
            label, len(done), sum(o.wait_s for o in outcomes) / len(done),
            sum(o.bounded_slowdown for o in outcomes) / len(done),
            used / (self.nodes * cores * makespan) if makespan > 0 else 0.0, makespan,
            max(o.wait_s for o in outcomes), outcomes,
            self.preemptions if self.o.preempt > 0 and self.mode == "backfill" else None, self.lost,
            powered_node_s=None if power is None else power.powered_s,
            saved_node_s=0.0 if power is None else power.saved_s,
        )


def power_saving_lines(always_on: SimResult, saving: SimResult) -> list[str]:
    """What power saving bought on one workload: node-hours saved against mean wait added (name=value)."""
    p = f"sim_{saving.mode}"
    return [
        f"{p}_mean_wait_added_s={saving.mean_wait_s - always_on.mean_wait_s:.1f}",
        f"{p}_max_wait_added_s={saving.max_wait_s - always_on.max_wait_s:.0f}",
    ]


def _label(mode: str, estimates: str) -> str:
    """``fifo``, ``backfill`` (user estimates: the original names), ``backfill_predicted``, ..."""
    return mode if mode == "fifo" or estimates == "user" else f"{mode}_{estimates}"
