"""The engine: holds the live jobs, feeds the scheduler, and applies what it decides.

Decisions flow one way (API -> store -> scheduler -> fleet -> agents) and facts flow back
(agents -> fleet -> engine -> store). Everything that changes a job happens here, in the
head's event-loop thread, and is batched: a burst of submits, exits and heartbeats that
arrives in one loop iteration becomes one scheduler pass, one store transaction, then the
messages to agents. A message that starts an attempt is sent only after the attempt is
committed, and an agent's exit report is acknowledged only after it is committed, so a
``kill -9`` of the head at any point loses nothing and runs nothing twice.

The engine is the coordinator; each part has one job (composition: the parts hold the
engine only as the narrow ``*Host`` protocol each declares):

* hpcbatch.head.commits (``CommitBatcher``): the dirty set, job and node events, audit,
  outbox, ``durable`` futures and the commit retry; the only part that knows asyncio.
* hpcbatch.head.nodes (``NodeRegistry``): node facts and states, drain, GPU health, lost
  nodes and the fence holds, with time passed in; the engine owns the one timer.
* hpcbatch.head.arrays and hpcbatch.head.gangs: array jobs and multi-node jobs.
* hpcbatch.head.reports (``AgentReports``): agent messages, served guarded.
* hpcbatch.head.preempting (``Preemptions``): the scheduler's preemptions carried out.

The engine keeps the job lifecycle itself (admit, dependencies, cancel, terminate, place,
an attempt's end), the scheduler pass, recovery and the queue/CE feed. The policies that
need no I/O live in the pure core, with time passed in: the job and node transition tables
(hpcbatch.model.lifecycle, hpcbatch.model.nodes), success, retry and dependencies
(hpcbatch.model.decisions), fence holds (hpcbatch.fencing), anti-entropy
(hpcbatch.model.reconcile), fault containment (hpcbatch.head.faults). The rest of the head
reads live state through the named methods below (``job``, ``jobs_where``, ``node``,
``nodes_snapshot``...), never through the engine's dictionaries.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpcbatch import protocol as p
from hpcbatch.head import sched_events
from hpcbatch.head.arrays import Arrays
from hpcbatch.head.commits import CommitBatcher
from hpcbatch.head.faults import QUARANTINE_AFTER, RAISE_ON_ENV, FaultInjection, MessageFaults
from hpcbatch.head.gangs import EXITED_REASON, MAIN_NODE_EXITED, Gangs
from hpcbatch.head.logs import LogStore
from hpcbatch.head.nodes import FencingConfig, NodeInfo, NodeRegistry
from hpcbatch.head.policies import fair_share_of, policy_name
from hpcbatch.head.preempting import Preemptions
from hpcbatch.head.reports import AgentReports
from hpcbatch.head.starts import GangStart, start_message
from hpcbatch.model.decisions import (
    DEPENDENCY_FAILED_REASON,
    AttemptEnd,
    Dependencies,
    Verdict,
    attempt_verdict,
    dependency_state,
    dependency_wait_reason,
    job_dependencies,
)
from hpcbatch.model.interrupts import preempted
from hpcbatch.model.jobs import Attempt, FenceHold, JobRecord
from hpcbatch.model.lifecycle import JobEvent, JobStatus, can_apply, next_status
from hpcbatch.scheduler import (
    AttemptEnded,
    CancelRunnable,
    ComputeEnvironmentRemoved,
    Event,
    JobQueueRemoved,
    JobRunnable,
    JobWithdrawn,
    NodeGone,
    PreemptAttempt,
    Scheduler,
    SetWaitReason,
    StartAttempt,
    StartGang,
    Tick,
)
from hpcbatch.scheduler.core import RunTimesLearned
from hpcbatch.scheduler.predict import attempt_run_s, learned_runs
from hpcbatch.store import Store
from hpcbatch.store.base import NODE_EVENT_PREFIX, JobQuery

if TYPE_CHECKING:  # the engine itself never touches the loop: hpcbatch.head.commits does
    import asyncio

log = logging.getLogger("hpcbatch.engine")

# Events that move a multi-node job's nodes together with the job.
FAMILY_EVENTS = frozenset({
    JobEvent.WAIT_DEPENDENCIES, JobEvent.READY, JobEvent.CANCEL, JobEvent.TERMINATE, JobEvent.DEPENDENCY_FAILED,
    JobEvent.SUCCEEDED, JobEvent.ATTEMPT_FAILED_RETRY, JobEvent.ATTEMPT_FAILED_FINAL,
})
FENCE_WAIT_REASON = "Waiting for node {node} to fence its attempts"  # a lost node's retry, held


def _default_stream(job: JobRecord) -> str:
    return "default"


@dataclass(frozen=True)
class EngineOptions:
    """The engine's settings (the head's config), all with defaults that suit tests."""

    kill_grace_s: float = 10.0  # TerminateJob: SIGTERM, then SIGKILL this much later
    preempt_grace_s: float = 30.0  # a preempted attempt's SIGTERM-to-SIGKILL (AWS Spot's 2-minute warning, shortened)
    fence_after_s: float = 0.0  # agents kill their attempts after this long unheard (0: no fence wait)
    heartbeat_interval_s: float = 1.0
    log_stream_prefix: Callable[[JobRecord], str] = _default_stream  # an attempt's log stream: PREFIX/default/ID
    reconcile_after: int = 3  # heartbeats an attempt may go unlisted before the head asks (anti-entropy)
    quarantine_after: int = QUARANTINE_AFTER  # tries of a failing agent message before it is set aside
    raise_on: str | None = None  # test-only fault injection (RAISE_ON_ENV); never set in production


class Engine:
    """Live job state plus the scheduler; see the module docstring."""

    def __init__(
        self,
        store: Store,
        logs: LogStore,
        *,
        send: Callable[[str, p.Message], None],
        clock_ms: Callable[[], int],
        monotonic: Callable[[], float] = time.monotonic,
        options: EngineOptions | None = None,
    ) -> None:
        opts = options or EngineOptions()
        self.store = store
        self.logs = logs
        self.scheduler = Scheduler()
        # Every job not yet SUCCEEDED/FAILED. Shared with the engine's parts only (their ``*Host``
        # protocols name it); the rest of the head and the tests read it through ``job``/``jobs_where``.
        self.jobs: dict[str, JobRecord] = {}
        self.registry = NodeRegistry(FencingConfig(opts.fence_after_s, opts.heartbeat_interval_s))
        self._send = send
        self._now = clock_ms
        self._mono = monotonic  # deadlines (fence holds) run on it: a stepped wall clock moves none
        self._kill_grace_s = opts.kill_grace_s
        self.container_capabilities: list[str] = []  # the head's config: given back to every container
        # Agents kill their attempts after fence_after_s unheard (hpcbatch.fencing): a lost
        # node's retries wait that long (or the node's own word that its attempt ended); the
        # registry keeps the holds, the engine owns the one timer that wakes it.
        self._fence_timer: asyncio.TimerHandle | None = None
        # STONITH (hpcbatch.head.power): asked to power off a lost node whose retries are held;
        # ``node_fenced`` releases them once it is off.
        self.fence_node: Callable[[str], object] | None = None
        # MANAGED compute environments (hpcbatch.head.power.PowerManager), set by the daemon.
        self.power: Any = None
        self._stream_prefix = opts.log_stream_prefix
        self._seq = 0
        self._dependents: dict[str, set[str]] = {}  # job -> PENDING jobs waiting on it
        self.commits = CommitBatcher(store, send, self.step)  # dirty jobs, events, audit, outbox: one commit
        self.arrays = Arrays(self)  # array parents and their children (JOBID:i)
        self.gangs = Gangs(self)  # multi-node jobs and their nodes (JOBID#i)
        self._sched_events: list[Event] = []
        self._event_counter = 0
        # Observers (the event feed, metrics): told after each commit which job and node
        # events it stored (``commit_observers``), and how long each scheduler pass took (seconds).
        self.commit_observers = self.commits.observers
        self.pass_observers: list[Callable[[float], None]] = []
        # Fault containment (hpcbatch.head.faults): failed messages counted, decided, set aside.
        self.faults = MessageFaults(opts.quarantine_after)
        # Test-only fault injection (RAISE_ON_ENV, never set in production; tests/chaos).
        self._injection = FaultInjection.parse(opts.raise_on)
        if self._injection is not None:
            log.warning("TEST-ONLY fault injection is on (%s): the head fails %r of jobs named %s", RAISE_ON_ENV,
                        self._injection.kind, self._injection.pattern)
        self.reports = AgentReports(self, reconcile_after=opts.reconcile_after, injection=self._injection)
        self.preemptions = Preemptions(self, opts.preempt_grace_s)

    # ------------------------------------------- what the rest of the head may read
    # The service, console, metrics, power and fleet read live state through these, never
    # through the engine's dictionaries; the records returned are live: read, do not change.
    def job(self, job_id: str) -> JobRecord | None:
        """The live (not yet SUCCEEDED/FAILED) job ``job_id``, or None (look in the store)."""
        return self.jobs.get(job_id)

    def jobs_where(self, keep: Callable[[JobRecord], bool]) -> list[JobRecord]:
        """The live jobs ``keep`` accepts."""
        return [job for job in self.jobs.values() if keep(job)]

    def job_with_attempt(self, attempt_id: str) -> JobRecord | None:
        """The live job one of whose attempts is ``attempt_id`` (a scan: for rare lookups)."""
        return next((j for j in self.jobs.values() if any(a.attempt_id == attempt_id for a in j.attempts)), None)

    def node(self, name: str) -> NodeInfo | None:
        return self.registry.get(name)

    def has_node(self, name: str) -> bool:
        return name in self.registry

    def nodes_snapshot(self) -> dict[str, NodeInfo]:
        """Node name -> what the head knows of it (a new dict of the live records)."""
        return self.registry.snapshot()

    def node_names(self) -> list[str]:
        """Every known node's name, sorted."""
        return self.registry.names()

    def node_shapes_version(self) -> int:
        """Moves whenever a node becomes known, registers (new facts) or changes compute environment."""
        return self.registry.shapes_version

    def drained_nodes(self) -> dict[str, str]:
        """Node -> drain reason, for the nodes drained now (kept across head restarts by the service)."""
        return self.registry.drained()

    def node_usage(self, name: str) -> tuple[float, int, int]:
        """(vCPUs, MiB, GPUs) the scheduler has placed on ``name`` (zeros when it knows none)."""
        return self.scheduler.node_usage(name) or (0.0, 0, 0)

    def gpu_holders(self, name: str) -> dict[str, str]:
        """GPU id -> the job holding it, on ``name``."""
        return self.scheduler.gpu_holders(name)

    def expected_start(self, job_id: str) -> float | None:
        """When the scheduler expects a RUNNABLE job to start (seconds), if it has a guess."""
        return self.scheduler.expected_start(job_id)

    def front_of_queue(self, queue: str, limit: int = 100) -> list[str]:
        """The RUNNABLE jobs of ``queue`` in the order the scheduler would start them."""
        return self.scheduler.front_of_queue(queue, limit=limit)

    def decisions_about(self, job_id: str) -> list[tuple[str, str]]:
        """The scheduler's recent decisions about ``job_id`` (``hpcbatch why``)."""
        return self.scheduler.decisions_about(job_id)

    # --------------------------------------------- what the rest of the head may ask
    def detach_array_child(self, job_id: str) -> JobRecord | None:
        """Array child JOBID:i, not placed yet, gets its own record now so it can be cancelled or
        terminated alone (the array's range skips it from now on); None where it cannot."""
        return self.arrays.detach(job_id)

    def restore_drains(self, drained: dict[str, str]) -> None:
        """Drains kept across a head restart (an admin's decision): the nodes stay drained when they join."""
        for name, reason in drained.items():
            self.registry.ensure(name).drain_reason = reason

    # ----------------------------------------------------------------- plumbing
    def event_id(self) -> str:
        self._event_counter += 1
        return f"e{self._event_counter}"

    def feed(self, event: Event) -> None:
        self._sched_events.append(event)
        self.request_step()

    def request_step(self) -> None:
        """Run one engine step soon; many requests in one loop iteration give one step."""
        self.commits.request_step()

    def touch(self, job: JobRecord) -> None:
        self.commits.touch(job)

    def born(self, job: JobRecord) -> None:
        """A live job made by the head itself (an array child): kept, recorded, stored with the step."""
        self.jobs[job.job_id] = job
        self.commits.record(job.job_id, self._now(), job.status.value, None)
        self.touch(job)

    def now_ms(self) -> int:
        return self._now()

    def mono(self) -> float:
        return self._mono()

    def next_seq(self) -> int:
        """The next submission order number (the scheduler's FIFO tie-break)."""
        self._seq += 1
        return self._seq

    def requeue(self, job: JobRecord) -> None:
        """Feed ``job`` to the scheduler as RUNNABLE again (a retry, or a released hold)."""
        self.feed(self._runnable(job, self.next_seq()))

    def new_attempt(self, job: JobRecord, node: str, compute_environment: str, gpus: list[str]) -> Attempt:
        """A new attempt of ``job`` on ``node`` (its log stream named after ``job``)."""
        attempt_id = uuid.uuid4().hex
        return Attempt(attempt_id=attempt_id, node=node, compute_environment=compute_environment,
                       log_stream_name=f"{self._stream_prefix(job)}/default/{attempt_id}", gpus=gpus)

    def kill(self, node: str, attempt_id: str, reason: str, *, grace_s: float | None = None,
             warning_signal: str | None = None) -> None:
        """Tell ``node`` to kill the attempt (``grace_s``: the configured one) once this step is committed."""
        self.commits.send(node, p.KillAttempt(attempt_id=attempt_id, reason=reason, warning_signal=warning_signal,
                                              grace_s=self._kill_grace_s if grace_s is None else grace_s))

    def move(self, job: JobRecord, event: JobEvent, reason: str | None) -> None:
        children = self.gangs.children(job) if job.is_gang and event in FAMILY_EVENTS else []
        self._move_one(job, event, reason)
        for child in children:
            if child.ended_alone and event in (JobEvent.SUCCEEDED, JobEvent.ATTEMPT_FAILED_FINAL):
                # A node that ended on its own keeps the status it showed since (JobRecord.shown),
                # already in its history: the job's end does not rewrite it.
                shown, shown_reason, child.stopped_at = child.shown
                own = JobEvent.SUCCEEDED if shown is JobStatus.SUCCEEDED else JobEvent.ATTEMPT_FAILED_FINAL
                if can_apply(child.status, own):
                    self._move_one(child, own, shown_reason, record=False)
            elif can_apply(child.status, event):
                self._move_one(child, event, reason)

    def _runnable(self, job: JobRecord, seq: int) -> JobRunnable:
        return sched_events.runnable(self.event_id(), job, seq)

    def _move_one(self, job: JobRecord, event: JobEvent, reason: str | None, *, record: bool = True) -> None:
        now = self._now()
        old = job.status
        job.status = next_status(job.job_id, job.status, event)
        job.status_reason = reason
        if job.status is not JobStatus.RUNNABLE and job.fence_hold is not None:
            self.drop_hold(job)
        if record:
            self.commits.record(job.job_id, now, job.status.value, reason)
        if job.status.is_final:
            job.stopped_at = job.stopped_at or now
            self.jobs.pop(job.job_id, None)
            self._settle_dependents(job)
        self.touch(job)
        if job.array_parent is not None:
            self.arrays.child_moved(job, old)

    def step(self) -> None:
        """Schedule, persist, then tell the agents: the order that keeps restarts safe."""
        self.commits.step_began()
        events, self._sched_events = self._sched_events, []
        if events:
            # The core never reads a clock: it gets the time (seconds, like timeouts) here.
            events.insert(0, Tick(self.event_id(), self._now() / 1000))
            began = time.perf_counter()
            try:
                actions = self.scheduler.handle(*events)
            except Exception:  # a bug in the core: this pass's events are lost, not the head
                log.exception("the scheduler failed on a pass of %d events; they are dropped", len(events))
                actions = []
            for observe in self.pass_observers:
                observe(time.perf_counter() - began)
            for action in actions:
                try:
                    self._apply(action)
                except Exception as exc:  # contained: that job fails, the others go on
                    self._action_failed(action, exc)
        self.flush()

    def _apply(self, action: object) -> None:
        if isinstance(action, StartAttempt):
            self._start(action)
        elif isinstance(action, StartGang):
            self.gangs.start(action)
        elif isinstance(action, PreemptAttempt):
            self.preemptions.preempt(action)
        elif isinstance(action, CancelRunnable):  # a jobStateTimeLimitAction fired
            job = self.jobs.get(action.job_id)
            if job is not None:
                self.cancel(job, action.reason)
        elif isinstance(action, SetWaitReason):
            job = self.jobs.get(action.job_id)
            if job is not None and job.status is JobStatus.RUNNABLE:
                job.status_reason = action.reason
                self.commits.mark(job)

    def _action_failed(self, action: StartAttempt | StartGang | CancelRunnable | SetWaitReason, exc: Exception) -> None:
        """Applying one of the scheduler's decisions raised: fail that job with the cause, free its hold."""
        job_id = action.job_id
        reason = f"The head could not apply its decision to {type(action).__name__}: {type(exc).__name__}: {exc}"
        log.error("job %s: %s", job_id, reason, exc_info=exc)
        self.faults.failed["decision"] = self.faults.failed.get("decision", 0) + 1
        self.feed(AttemptEnded(self.event_id(), job_id))
        job = self.jobs.get(job_id)
        try:
            if job is None or job.status.is_final:
                return
            if job.status is JobStatus.RUNNABLE:
                self.terminate(job, reason)
                return
            # Placed, but its start order was never queued (the order is the last thing made).
            for part in self.gangs.children(job) if job.is_gang else [job]:
                if part.current_attempt is not None and part.job_id in self.jobs:
                    self.finish_attempt(part, AttemptEnd(None, None, reason), retry=False)
        except Exception:
            log.exception("job %s: could not fail it after its decision failed", job_id)

    def audit(self, entry: dict[str, Any]) -> None:
        """Record a mutating call in the audit log, committed with the step's batch."""
        self.commits.audit(entry)

    def durable(self) -> asyncio.Future[None]:
        """A future that resolves once every change made so far is committed (hpcbatch.head.commits)."""
        return self.commits.durable()

    def flush(self) -> None:
        """Commit every pending change in one transaction, then send what waited on it."""
        self.commits.flush()

    # ------------------------------------------------------------------ startup
    def recover(self) -> None:
        """Rebuild live state from the store after a start or a crash."""
        # Run-time predictions learn from the latest finished jobs (hpcbatch.scheduler.predict).
        finished = self.store.list_jobs(JobQuery(statuses=(JobStatus.SUCCEEDED, JobStatus.FAILED), limit=5000,
                                                 include_children=True))
        self.feed(RunTimesLearned(self.event_id(), learned_runs(finished)))
        gangs = []
        for seq, job in self.store.unfinished_jobs():
            self._seq = max(self._seq, seq)
            self.jobs[job.job_id] = job
            if job.parent_id is not None:  # a node of a multi-node job: its parent decides
                attempt = job.current_attempt
                if job.status.is_active and attempt is not None:
                    self._expect(attempt.node, job.job_id)
                continue
            if job.is_gang and job.status.is_active:
                gangs.append(job)
                continue
            if job.status is JobStatus.SUBMITTED:
                self._admit(job)
            elif job.status is JobStatus.PENDING:
                self._wait_for_dependencies(job)
            elif job.status is JobStatus.RUNNABLE and job.fence_hold is not None and job.attempts:
                # Held when the head stopped: the node has heard no head since, so a full
                # fence from now is surely enough.
                self.hold_for_fence(job, job.fence_hold, self.registry.fence_hold_s(job.fence_hold.node))
            elif job.status is JobStatus.RUNNABLE:
                self.feed(self._runnable(job, seq))
            else:
                attempt = job.current_attempt
                if attempt is None:  # cannot happen unless the store was edited by hand
                    self.finish_attempt(job, AttemptEnd(None, None, "Attempt record missing after restart"))
                    continue
                self._expect(attempt.node, job.job_id)
        for gang in gangs:  # a try that was ending when the head stopped
            if gang.ending is not None:
                self.gangs.kill(gang, MAIN_NODE_EXITED)
                self.gangs.maybe_finish(gang)
        log.info("recovered %d unfinished jobs", len(self.jobs))

    def _expect(self, node_name: str, job_id: str) -> None:
        self.registry.expect(node_name, job_id, self._now())

    # ------------------------------------------------------------------ jobs in
    def submit(self, job: JobRecord, children: list[JobRecord] | None = None) -> None:
        """Admit a new job (and a multi-node job's nodes); committed with the step's batch (see ``durable``)."""
        for record in (job, *(children or ())):
            self.jobs[record.job_id] = record
            self.commits.record(record.job_id, record.created_at, record.status.value, None)
            self.touch(record)
        self._admit(job)

    def _admit(self, job: JobRecord) -> None:
        if dependency_state(job, live=self.jobs) is not Dependencies.NONE:
            self.move(job, JobEvent.WAIT_DEPENDENCIES, None)
            self._wait_for_dependencies(job)
        else:
            self._make_runnable(job)

    def _make_runnable(self, job: JobRecord) -> None:
        if job.array_size is not None:
            self.arrays.start(job)
            return
        self.move(job, JobEvent.READY, None)
        self.requeue(job)

    def _wait_for_dependencies(self, job: JobRecord) -> None:
        finished = [j for j in job_dependencies(job) if j not in self.jobs]
        failed = {dep.job_id for dep in self.store.get_jobs(finished) if dep.status is JobStatus.FAILED}
        self._apply_dependencies(job, dependency_state(job, live=self.jobs, failed=failed))

    def _apply_dependencies(self, job: JobRecord, state: Dependencies) -> None:
        """Act on where a PENDING job's dependencies stand (hpcbatch.model.decisions)."""
        if state is Dependencies.FAILED:
            self.move(job, JobEvent.DEPENDENCY_FAILED, DEPENDENCY_FAILED_REASON)
        elif state is Dependencies.WAITING:
            for dep_id in job_dependencies(job):
                if dep_id in self.jobs:
                    self._dependents.setdefault(dep_id, set()).add(job.job_id)
            job.status_reason = dependency_wait_reason(job, live=self.jobs)
            self.touch(job)
        else:
            self._make_runnable(job)

    def _settle_dependents(self, finished: JobRecord) -> None:
        failed = (finished.job_id,) if finished.status is JobStatus.FAILED else ()
        for job_id in sorted(self._dependents.pop(finished.job_id, ())):
            job = self.jobs.get(job_id)
            if job is not None and job.status is JobStatus.PENDING:
                self._apply_dependencies(job, dependency_state(job, live=self.jobs, failed=failed))

    def cancel(self, job: JobRecord, reason: str) -> None:
        """CancelJob: ends jobs not yet STARTING; later ones are left alone (as AWS does)."""
        if job.array_size is not None and job.status is JobStatus.PENDING:
            job.is_cancelled = True
            self.arrays.close(job, reason, terminate=False)
            return
        if job.status in (JobStatus.SUBMITTED, JobStatus.PENDING, JobStatus.RUNNABLE):
            job.is_cancelled = True
            self._withdraw(job)
            self.move(job, JobEvent.CANCEL, reason)

    def terminate(self, job: JobRecord, reason: str) -> None:
        """TerminateJob: like cancel, and a running attempt is killed and not retried."""
        if job.status.is_final:
            return
        job.is_terminated = True
        if job.array_size is not None and job.status is JobStatus.PENDING:
            self.arrays.close(job, reason, terminate=True)
            return
        if job.is_gang and job.status.is_active:
            self.gangs.terminate(job, reason)
        elif job.status.is_active:
            attempt = job.current_attempt
            assert attempt is not None
            job.stop_reason = reason
            self.touch(job)
            node = self.registry.get(attempt.node)
            if node is None or not node.up:
                self.finish_attempt(job, AttemptEnd(None, None, reason))
            else:
                self.kill(attempt.node, attempt.attempt_id, reason)
        else:
            self._withdraw(job)
            self.move(job, JobEvent.TERMINATE, reason)

    def _withdraw(self, job: JobRecord) -> None:
        if job.status is JobStatus.RUNNABLE:
            self.feed(JobWithdrawn(self.event_id(), job.job_id))
        for deps in self._dependents.values():
            deps.discard(job.job_id)

    # ---------------------------------------------------------------- placement
    def _start(self, action: StartAttempt) -> None:
        job = self.jobs.get(action.job_id)
        if job is None and ":" in action.job_id:  # an array child gets its record when placed
            job = self.arrays.placed(action.job_id)
        if job is None or job.status is not JobStatus.RUNNABLE:
            self.feed(AttemptEnded(self.event_id(), action.job_id))
            return
        if job.is_gang:  # a one-node gang placed as one job (a scheduler that knew no JobRunnable.gang)
            gpus = (action.gpus,) if action.gpus else ()
            self.gangs.start(StartGang(job_id=action.job_id, nodes=(action.node,),
                                       compute_environment=action.compute_environment, gpus=gpus))
            return
        if self._injection is not None:
            self._injection.check("start", job.job_id, job.job_name)
        attempt = self.new_attempt(job, action.node, action.compute_environment, list(action.gpus))
        job.attempts.append(attempt)
        self.registry.nodes[action.node].jobs.add(job.job_id)
        self.move(job, JobEvent.PLACED, None)
        self.commits.send(action.node, self.start_message(job, attempt))

    def start_message(self, job: JobRecord, attempt: Attempt) -> p.StartAttempt:
        """The message that starts ``attempt`` of ``job`` (hpcbatch.head.starts)."""
        script = self.store.get_script(job.script_id, job.owner) if job.script_id else None
        parent = self.jobs.get(job.parent_id) if job.parent_id else None
        gang = None
        if parent is not None and job.node_index is not None:
            gang = GangStart(parent, self.gangs.node_environment(parent, job.node_index),
                             self.registry.facts(attempt.node))
        return start_message(job, attempt, script=script, capabilities=self.container_capabilities, gang=gang)

    # ------------------------------------------------------------ agent reports
    # Served by hpcbatch.head.reports (AgentReports); these are the fleet's entry points.
    def handle(self, node: str, msg: p.AgentMessage) -> None:
        """Serve one message from a registered node, contained (see AgentReports.handle)."""
        self.reports.handle(node, msg)

    def message_failed(self, node: str, msg: p.Message, exc: BaseException) -> None:
        self.reports.message_failed(node, msg, exc)

    def on_register(self, name: str, msg: p.Register) -> p.Welcome | None:
        """A node (re)joined: reconcile what it runs with what the store says it should."""
        return self.reports.on_register(name, msg)

    def on_heartbeat(self, name: str, msg: p.AgentHeartbeat | None = None) -> None:
        self.reports.on_heartbeat(name, msg)

    def on_started(self, node: str, msg: p.AttemptStarted) -> None:
        self.reports.on_started(node, msg)

    def on_exited(self, node: str, msg: p.AttemptExited) -> None:
        """An attempt ended; acknowledged once the outcome is committed."""
        self.reports.on_exited(node, msg)

    def on_log(self, msg: p.LogChunk) -> None:
        self.reports.on_log(msg)

    # ------------------------------------------------------------ attempts end
    def finish_attempt(
        self, job: JobRecord, end: AttemptEnd, *, stopped_at: int | None = None, lost: bool = False,
        hold_s: float = 0.0, retry: bool = True,
    ) -> None:
        """``end``: how it ended as reported (its ``terminated`` is the job's own, set here);
        ``hold_s``: a retry waits this long for the (lost) node to fence the attempt;
        ``retry=False``: the job fails whatever its retry strategy says."""
        if job.parent_id is not None:
            if lost:  # the try ends; its retry waits for this node's fence as a single job's would
                self.registry.hold_gang(job.parent_id, self._mono() + hold_s)
            self.gangs.child_ended(job, end, stopped_at=stopped_at, lost=lost)
            return
        attempt = job.current_attempt
        assert attempt is not None
        attempt.stopped_at = stopped_at or self._now()
        attempt.exit_code = end.exit_code
        attempt.reason = end.reason
        attempt.timed_out, attempt.lost = end.timed_out, lost
        attempt.terminated = job.stop_reason is not None  # terminate() sets it on an active job
        attempt.preempted_by, preempt_reason = preempted(job)
        status_reason = job.stop_reason or preempt_reason or end.status_reason  # the head's reason is the story
        attempt.status_reason = status_reason or (EXITED_REASON if end.exit_code is not None else end.reason)
        self.release(attempt.node, job.job_id)
        self.feed(AttemptEnded(self.event_id(), job.job_id, run_s=attempt_run_s(attempt)))
        self._decide(job, attempt, status_reason, hold_s, retry)

    def _decide(
        self, job: JobRecord, attempt: Attempt, status_reason: str | None, hold_s: float = 0.0, retry: bool = True,
    ) -> None:
        """The job's next state after ``attempt`` (its last) ended: success, retry (maybe held), or failure.

        ``status_reason``: the reported one, which evaluateOnExit's ``onStatusReason`` matches.
        """
        end = AttemptEnd(attempt.exit_code, attempt.reason, status_reason, timed_out=attempt.timed_out,
                         terminated=attempt.terminated, preempted_by=attempt.preempted_by)
        verdict = attempt_verdict(job, end, may_retry=retry)
        if verdict is Verdict.SUCCEEDED:
            self.move(job, JobEvent.SUCCEEDED, EXITED_REASON)
        elif verdict is Verdict.RETRY:
            job.started_at = None
            self.move(job, JobEvent.ATTEMPT_FAILED_RETRY, attempt.status_reason)
            if hold_s > 0:
                self.hold_for_fence(job, FenceHold(node=attempt.node, attempt_id=attempt.attempt_id), hold_s)
            else:
                self.requeue(job)
        else:
            job.stopped_at = attempt.stopped_at
            self.move(job, JobEvent.ATTEMPT_FAILED_FINAL, attempt.status_reason)

    def node_up(self, name: str) -> None:
        """Tell the scheduler the node (again), with what runs there (``NodeInfo.allocations``)."""
        node = self.registry.nodes[name]
        self.feed(sched_events.node_up(self.event_id(), name, node, self.compute_environment_of(name), self.jobs))

    def compute_environment_of(self, name: str) -> str:
        """The node's compute environment: named in its config, or chosen by its labels (NodeRegistry)."""
        return self.registry.compute_environment_of(name)

    def release(self, name: str, job_id: str) -> None:
        """``job_id``'s attempt on node ``name`` ended: a DRAINING node left empty is DRAINED."""
        if self.registry.release(name, job_id):
            self.node_changed(name)

    def node_changed(self, name: str) -> None:
        """Put a node's new state in the event stream (once per change), committed with the step."""
        change = self.registry.state_change(name)
        if change is not None:
            self.commits.record(NODE_EVENT_PREFIX + name, self._now(), *change)
            self.request_step()

    def drain(self, name: str, reason: str | None) -> None:
        """Stop placing work on ``name`` (running jobs finish); ``reason=None`` resumes it."""
        if self.registry.set_drain(name, reason):
            self.node_changed(name)
            self.announce(name)

    def announce(self, name: str) -> None:
        """Tell the scheduler the node again (drain, GPUs out): what runs there as it holds now."""
        node = self.registry.nodes[name]
        if node.facts is not None:
            node.allocations = tuple(
                (job_id, self.jobs[job_id].resources) for job_id in sorted(node.jobs) if job_id in self.jobs
            )
            self.node_up(name)

    # ------------------------------------------------------------- client tasks
    def start_client_task(self, job: JobRecord, node_index: int, command: str) -> tuple[str, str] | str:
        """``hpcbatch run --jobid``: ``command`` inside the job's running attempt on node
        ``node_index`` (its owner, cgroup, environment; it ends with the attempt). (launch id,
        node name), or why not. The caller has checked who may; no node asked, so no node is
        told when it ends (origin ``""``): the client hears from the task itself."""
        if job.status is not JobStatus.RUNNING or (job.is_gang and job.ending is not None):
            return f"job {job.job_id} is {job.status.value}, not RUNNING"
        if job.is_gang:
            children = self.gangs.children(job)
            if not 0 <= node_index < len(children):
                return f"nodeIndex {node_index} is not a node of job {job.job_id} (0 to {len(children) - 1})"
            target = children[node_index].current_attempt
        elif node_index != 0:
            return f"nodeIndex {node_index}: job {job.job_id} runs on one node (nodeIndex 0)"
        else:
            target = job.current_attempt
        if target is None or not target.node:
            return f"node {node_index} of job {job.job_id} is not running"
        launch_id = uuid.uuid4().hex
        self.commits.send(target.node, p.StartTask(launch_id=launch_id, job_id=job.job_id,
                                                   attempt_id=target.attempt_id, command=command, origin=""))
        self.request_step()
        return launch_id, target.node

    # -------------------------------------------------------------------- nodes
    def prepull(self, nodes: list[str], image: str) -> None:
        """Ask ``nodes`` to put ``image`` in their caches (they report it when done)."""
        for name in nodes:
            self.commits.send(name, p.PullImage(image=image))
        self.request_step()

    def node_lost(self, name: str, silent_s: float, why: str | None = None) -> None:
        """No heartbeat for too long (or cut off): fail its attempts (retried per strategy)."""
        if not self.registry.needs_losing(name):
            return
        reason = f"Node {name} lost: {why or f'no heartbeat for {silent_s:.0f} s'}"
        jobs = self.registry.lose(name, reason)
        log.warning("%s; failing %d attempt(s)", reason, len(jobs))
        self.node_changed(name)
        # The node may still run them: retries wait until its agent has fenced them.
        hold_s = max(0.0, self.registry.fence_hold_s(name) - silent_s)
        for job_id in jobs:
            job = self.jobs.get(job_id)
            if job is not None and job.current_attempt is not None:
                self.finish_attempt(job, AttemptEnd(None, None, reason), lost=True, hold_s=hold_s)
        self.feed(NodeGone(self.event_id(), name))
        if self.fence_node is not None and self.registry.holds_on(name):
            self.fence_node(name)

    def node_fenced(self, name: str) -> None:
        """``name`` was powered off (STONITH): its attempts are surely dead; retry them now."""
        for job_id, _hold in self.registry.holds_on(name):
            log.info("job %s: node %s is powered off; the retry is no longer held", job_id, name)
            self.release_fence(job_id)

    # ----------------------------------------------------------------- fencing
    def hold_for_fence(self, job: JobRecord, lost: FenceHold, hold_s: float) -> None:
        """Keep ``job`` RUNNABLE but away from the scheduler until the ``lost`` attempt is surely dead."""
        self.registry.hold(job.job_id, lost, hold_s, self._mono())
        self._arm_fences()
        job.fence_hold = lost
        job.status_reason = FENCE_WAIT_REASON.format(node=lost.node)
        self.touch(job)
        log.info("job %s: retry held %.0f s for node %s to fence attempt %s", job.job_id, hold_s, lost.node,
                 lost.attempt_id[:8])

    def _arm_fences(self) -> None:
        """Wake ``expire_fences`` at the earliest hold's deadline (a timer is only a wake-up; the clock decides)."""
        if self._fence_timer is not None:
            self._fence_timer.cancel()
            self._fence_timer = None
        deadline = self.registry.next_deadline()
        if deadline is not None:  # no timer where no loop runs (driven by hand, tests): they call expire_fences
            self._fence_timer = self.commits.wake_later(max(0.0, deadline - self._mono()) + 0.001, self.expire_fences)

    def expire_fences(self) -> None:
        """Release every held retry whose fence time has passed (called by its timer, and on every tick)."""
        for job_id in self.registry.due(self._mono()):
            self.release_fence(job_id)
        self._arm_fences()

    def drop_hold(self, job: JobRecord) -> None:
        """Forget ``job``'s held retry (it left RUNNABLE, or its retry is released)."""
        job.fence_hold = None
        self.registry.drop_hold(job.job_id)

    def release_fence(self, job_id: str) -> None:
        hold = self.registry.held(job_id)
        job = self.jobs.get(job_id)
        if job is None or job.status is not JobStatus.RUNNABLE:  # cancelled or terminated meanwhile
            self.registry.drop_hold(job_id)
            return
        self.drop_hold(job)
        if hold is None:
            return
        job.status_reason = job.attempts[-1].status_reason if job.attempts else None
        self.touch(job)
        self.requeue(job)

    # ------------------------------------------------------- queues and CEs
    def compute_environment_changed(self, doc: dict[str, Any]) -> None:
        if self.registry.set_selector(doc["computeEnvironmentName"], doc.get("tags") or {}):
            for node_name in self.registry.joined_by_label():  # nodes that join by label may move
                self.node_up(node_name)
        self.feed(sched_events.compute_environment_changed(self.event_id(), doc))

    def compute_environment_removed(self, name: str) -> None:
        self.registry.drop_selector(name)
        self.feed(ComputeEnvironmentRemoved(self.event_id(), name))

    def job_queue_changed(self, doc: dict[str, Any]) -> None:
        policy_arn = doc.get("schedulingPolicyArn")
        policy = fair_share_of(self.store.get_resource("policy", policy_name(policy_arn))) if policy_arn else None
        self.feed(sched_events.job_queue_changed(self.event_id(), doc, policy))

    def scheduling_policy_changed(self, name: str) -> None:
        """A policy was updated: every queue that uses it gets the new shares."""
        for doc in self.store.list_resources("queue"):
            if policy_name(doc.get("schedulingPolicyArn", "")) == name:
                self.job_queue_changed(doc)

    def tick(self) -> None:
        """Let the scheduler see time pass (share decay, jobStateTimeLimitActions) with no other event."""
        self.expire_fences()
        self.feed(Tick(self.event_id(), self._now() / 1000))

    def job_queue_removed(self, name: str) -> None:
        self.feed(JobQueueRemoved(self.event_id(), name))

    def decision_records(self, job_id: str) -> list[Any]:
        """The scheduler's recent decisions about ``job_id`` (``scheduler.decisions.Decision``),
        each with the events that caused it, oldest first (``hpcbatch why``)."""
        return self.scheduler.decision_records(job_id)
