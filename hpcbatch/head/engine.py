"""The engine: holds the live jobs, feeds the scheduler, and applies what it decides.

Decisions flow one way (API -> store -> scheduler -> fleet -> agents) and facts flow back
(agents -> fleet -> engine -> store). Everything that changes a job happens here, in the
head's event-loop thread, and is batched: a burst of submits, exits and heartbeats that
arrives in one loop iteration becomes one scheduler pass, one store transaction, then the
messages to agents. A message that starts an attempt is sent only after the attempt is
committed, and an agent's exit report is acknowledged only after it is committed, so a
``kill -9`` of the head at any point loses nothing and runs nothing twice.

Faults stay small (DESIGN.md): every agent message is served guarded (``handle``), and a
decision that raises fails only its job. The policies that need no I/O live beside, pure,
with time passed in: fence holds (hpcbatch.fencing, on the injected monotonic clock),
anti-entropy (hpcbatch.model.reconcile), fault containment (hpcbatch.head.faults), success
and retry (hpcbatch.model.jobs). The module is long (~1,500 lines) because arrays, gangs
and the node registry still live here; they are the next parts to move out, as facts in
and decisions out.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from hpcbatch import protocol as p
from hpcbatch.errors import HpcbatchError
from hpcbatch.head import gpus as head_gpus
from hpcbatch.head.commits import CommitBatcher
from hpcbatch.head.containers import CONTAINER_FEATURE, container_options
from hpcbatch.head.faults import (
    QUARANTINE_AFTER,
    RAISE_ON_ENV,
    FaultInjection,
    MessageFaults,
    Outcome,
    Quarantined,
)
from hpcbatch.head.logs import LogStore
from hpcbatch.head.nodes import FencingConfig, NodeInfo, NodeRegistry
from hpcbatch.head.policies import fair_share_of, policy_name
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
from hpcbatch.model.jobs import Attempt, FenceHold, GangEnding, JobRecord
from hpcbatch.model.lifecycle import JobEvent, JobStatus, can_apply, next_status
from hpcbatch.model.multinode import (
    NodeEnd,
    child_job_id,
    gang_failure_reason,
    names_resource,
    split_child_id,
    whole_node,
)
from hpcbatch.model.reconcile import reconcile
from hpcbatch.scheduler import (
    AttemptEnded,
    CancelRunnable,
    ComputeEnvironmentChanged,
    ComputeEnvironmentRemoved,
    Event,
    JobQueueChanged,
    JobQueueRemoved,
    JobRunnable,
    JobWithdrawn,
    NodeGone,
    NodeUp,
    Scheduler,
    SetWaitReason,
    StartAttempt,
    StartGang,
    StateTimeLimit,
    Tick,
)
from hpcbatch.scheduler.core import RunTimesLearned
from hpcbatch.scheduler.predict import attempt_run_s, learned_runs
from hpcbatch.store import Store
from hpcbatch.store.base import NODE_EVENT_PREFIX, JobQuery

log = logging.getLogger("hpcbatch.engine")

EXITED_REASON = "Essential container in task exited"
MAIN_NODE_EXITED = "Main node exited"
MASTER_PORT = "29500"  # torchrun's default rendezvous port on the main node
# Events that move a multi-node job's nodes together with the job.
FAMILY_EVENTS = frozenset(
    {
        JobEvent.WAIT_DEPENDENCIES, JobEvent.READY, JobEvent.CANCEL, JobEvent.TERMINATE,
        JobEvent.DEPENDENCY_FAILED, JobEvent.SUCCEEDED, JobEvent.ATTEMPT_FAILED_RETRY,
        JobEvent.ATTEMPT_FAILED_FINAL,
    }
)
FENCE_WAIT_REASON = "Waiting for node {node} to fence its attempts"  # a lost node's retry, held


def _message_ids(msg: p.Message) -> tuple[str, str]:
    """(job id, attempt id) a message is about, where it names them ("" where not)."""
    return str(getattr(msg, "job_id", "") or ""), str(getattr(msg, "attempt_id", "") or "")


def _sequential(job: JobRecord) -> bool:
    return any(d.get("type") == "SEQUENTIAL" for d in job.depends_on)


def _n_to_n_partner(job: JobRecord) -> str | None:
    for dep in job.depends_on:
        if dep.get("type") == "N_TO_N" and dep.get("jobId"):
            return str(dep["jobId"])
    return None


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
        kill_grace_s: float = 10.0,
        fence_after_s: float = 0.0,
        heartbeat_interval_s: float = 1.0,
        log_stream_prefix: Callable[[JobRecord], str] = lambda job: "default",
        reconcile_after: int = 3,
        quarantine_after: int = QUARANTINE_AFTER,
        raise_on: str | None = None,
    ) -> None:
        self.store = store
        self.logs = logs
        self.scheduler = Scheduler()
        self.jobs: dict[str, JobRecord] = {}  # every job not yet SUCCEEDED/FAILED
        self.registry = NodeRegistry(FencingConfig(fence_after_s, heartbeat_interval_s))
        self.nodes = self.registry.nodes  # name -> NodeInfo: read through ``registry`` (node, nodes_snapshot)
        self._send = send
        self._now = clock_ms
        self._mono = monotonic  # deadlines (fence holds) run on it: a stepped wall clock moves none
        self._kill_grace_s = kill_grace_s
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
        self._stream_prefix = log_stream_prefix
        self._seq = 0
        self._dependents: dict[str, set[str]] = {}  # job -> PENDING jobs waiting on it
        self._n_to_n: dict[str, set[str]] = {}  # array -> arrays whose child i waits on its child i
        self.commits = CommitBatcher(store, send, self.step)  # dirty jobs, events, audit, outbox: one commit
        self._sched_events: list[Event] = []
        self._event_counter = 0
        # Observers (the event feed, metrics): told after each commit which job and node
        # events it stored (``commit_observers``), and how long each scheduler pass took (seconds).
        self.commit_observers = self.commits.observers
        self.pass_observers: list[Callable[[float], None]] = []
        # Anti-entropy (hpcbatch.model.reconcile): heartbeats an attempt may go unlisted before the head asks.
        self._reconcile_after = reconcile_after
        # Fault containment (hpcbatch.head.faults): failed messages counted, decided, set aside.
        self.faults = MessageFaults(quarantine_after)
        # Test-only fault injection (RAISE_ON_ENV, never set in production; tests/chaos).
        self._injection = FaultInjection.parse(raise_on)
        if self._injection is not None:
            log.warning("TEST-ONLY fault injection is on (%s): the head fails %r of jobs named %s", RAISE_ON_ENV,
                        self._injection.kind, self._injection.pattern)

    # ----------------------------------------------------------------- plumbing
    def _event_id(self) -> str:
        self._event_counter += 1
        return f"e{self._event_counter}"

    def _feed(self, event: Event) -> None:
        self._sched_events.append(event)
        self.request_step()

    def request_step(self) -> None:
        """Run one engine step soon; many requests in one loop iteration give one step."""
        self.commits.request_step()

    def _touch(self, job: JobRecord) -> None:
        self.commits.touch(job)

    def _move(self, job: JobRecord, event: JobEvent, reason: str | None) -> None:
        children = self._children(job) if job.is_gang and event in FAMILY_EVENTS else []
        self._move_one(job, event, reason)
        for child in children:
            if can_apply(child.status, event):
                self._move_one(child, event, reason)

    def _children(self, parent: JobRecord) -> list[JobRecord]:
        """The live nodes (JOBID#i) of a multi-node job, in index order."""
        ids = (child_job_id(parent.job_id, i) for i in range(parent.num_nodes))
        return [self.jobs[c] for c in ids if c in self.jobs]

    def _runnable(self, job: JobRecord, seq: int) -> JobRunnable:
        return JobRunnable(
            self._event_id(), job.job_id, job.job_queue, job.resources, seq,
            num_nodes=job.num_nodes, time_limit_s=job.timeout_s,
            share=job.share_identifier, priority=job.scheduling_priority or 0, gang=job.is_gang,
            owner=job.owner, definition=job.job_definition,  # run-time predictions
        )

    def _move_one(self, job: JobRecord, event: JobEvent, reason: str | None) -> None:
        now = self._now()
        old = job.status
        job.status = next_status(job.job_id, job.status, event)
        job.status_reason = reason
        if job.status is not JobStatus.RUNNABLE and job.fence_hold is not None:
            self._drop_hold(job)
        self.commits.record(job.job_id, now, job.status.value, reason)
        if job.status.is_final:
            job.stopped_at = job.stopped_at or now
            self.jobs.pop(job.job_id, None)
            self._settle_dependents(job)
        self._touch(job)
        if job.array_parent is not None:
            self._array_child_moved(job, old)

    # ------------------------------------------------------------------ arrays
    def _array_child_moved(self, child: JobRecord, old: JobStatus) -> None:
        parent = self.jobs.get(child.array_parent or "")
        if parent is None:
            return
        counts = parent.array_counts
        counts[old.value] = max(0, counts.get(old.value, 0) - 1)
        counts[child.status.value] = counts.get(child.status.value, 0) + 1
        self._touch(parent)
        if not child.status.is_final:
            return
        index = child.array_index or 0
        ok = child.status is JobStatus.SUCCEEDED
        for dependent_id in sorted(self._n_to_n.get(parent.job_id, ())):  # N_TO_N partners
            dependent = self.jobs.get(dependent_id)
            if dependent is not None and dependent.status is JobStatus.PENDING and not dependent.array_closed:
                if ok:
                    self._feed_task(dependent, index)
                else:
                    self.materialize_array_child(dependent, index, failed=DEPENDENCY_FAILED_REASON)
        if _sequential(parent) and not parent.array_closed:
            if ok and index + 1 < (parent.array_size or 0):
                self._feed_task(parent, index + 1)
            elif not ok:
                parent.array_closed = True  # the rest of the sequence can never run
        self._maybe_finish_array(parent)

    def _start_array(self, parent: JobRecord) -> None:
        """The array may run: feed its children to the scheduler (all, in sequence, or N_TO_N)."""
        if parent.status is JobStatus.SUBMITTED:
            self._move(parent, JobEvent.ARRAY_STARTED, None)
        size = parent.array_size or 0
        partner = _n_to_n_partner(parent)
        if partner is not None:
            self._n_to_n.setdefault(partner, set()).add(parent.job_id)
            done = {j.array_index: j for j in self.store.get_jobs([f"{partner}:{i}" for i in range(size)])}
            mine = {j.array_index for j in self.store.get_jobs([f"{parent.job_id}:{i}" for i in range(size)])}
            for index in range(size):
                other = self.jobs.get(f"{partner}:{index}") or done.get(index)
                if index in mine or other is None or not other.status.is_final:
                    continue
                if other.status is JobStatus.SUCCEEDED:
                    self._feed_task(parent, index)
                else:
                    self.materialize_array_child(parent, index, failed=DEPENDENCY_FAILED_REASON)
        elif _sequential(parent):
            running = any(j.array_parent == parent.job_id for j in self.jobs.values())
            if not running and parent.array_next < size:
                self._feed_task(parent, parent.array_next)
        elif parent.array_next < size:
            self._seq += 1
            self._feed(
                JobRunnable(
                    self._event_id(), parent.job_id, parent.job_queue, parent.resources, self._seq,
                    time_limit_s=parent.timeout_s, array_count=size - parent.array_next,
                    first_index=parent.array_next, max_running=parent.max_running,
                    share=parent.share_identifier, priority=parent.scheduling_priority or 0,
                    owner=parent.owner, definition=parent.job_definition,
                )
            )
        self._maybe_finish_array(parent)

    def _feed_task(self, parent: JobRecord, index: int) -> None:
        """One child of an array, fed alone (SEQUENTIAL and N_TO_N children)."""
        self._seq += 1
        self._feed(
            JobRunnable(
                self._event_id(), f"{parent.job_id}:{index}", parent.job_queue, parent.resources, self._seq,
                time_limit_s=parent.timeout_s,
                share=parent.share_identifier, priority=parent.scheduling_priority or 0,
                owner=parent.owner, definition=parent.job_definition,
            )
        )

    def materialize_array_child(self, parent: JobRecord, index: int, failed: str | None = None) -> JobRecord | None:
        """Give child ``index`` of an array its own record (when placed, or when it can never run)."""
        if index in parent.array_skipped or not 0 <= index < (parent.array_size or 0):
            return None
        env = dict(parent.environment)
        env["AWS_BATCH_JOB_ARRAY_INDEX"] = str(index)
        child = msgspec.structs.replace(
            parent,
            job_id=f"{parent.job_id}:{index}",
            # Born RUNNABLE, through the table like every other move (never PENDING: the parent waited).
            status=next_status(f"{parent.job_id}:{index}", JobStatus.SUBMITTED, JobEvent.READY),
            status_reason=None,
            environment=env,
            attempts=[],
            depends_on=[],
            array_size=None,
            array_next=0,
            array_counts={},
            array_skipped=[],
            array_closed=False,
            array_parent=parent.job_id,
            array_index=index,
            started_at=None,
            stopped_at=None,
        )
        parent.array_next = max(parent.array_next, index + 1)
        parent.array_counts["RUNNABLE"] = parent.array_counts.get("RUNNABLE", 0) + 1
        self.jobs[child.job_id] = child
        self.commits.record(child.job_id, self._now(), child.status.value, None)
        self._touch(child)
        self._touch(parent)
        if failed is not None:
            parent.array_skipped.append(index)
            self._move(child, JobEvent.CANCEL, failed)
        return child

    def _maybe_finish_array(self, parent: JobRecord) -> None:
        """When every child has ended (or can never run), the parent takes the outcome."""
        if parent.status is not JobStatus.PENDING or parent.array_size is None:
            return
        counts = parent.array_counts
        active = sum(n for status, n in counts.items() if not JobStatus(status).is_final)
        finished = counts.get("SUCCEEDED", 0) + counts.get("FAILED", 0)
        unplaced = parent.array_size - finished - active
        if active or (unplaced and not parent.array_closed):
            return
        self._feed(JobWithdrawn(self._event_id(), parent.job_id))
        if counts.get("FAILED", 0) or unplaced:
            self._move(parent, JobEvent.ARRAY_FAILED, parent.stop_reason or "One or more child jobs failed")
        else:
            self._move(parent, JobEvent.ARRAY_SUCCEEDED, "All child jobs succeeded")

    def _close_array(self, parent: JobRecord, reason: str, terminate: bool) -> None:
        """Cancel (or terminate) an array: no child starts any more; waiting ones end."""
        parent.array_closed = True
        parent.stop_reason = reason
        self._feed(JobWithdrawn(self._event_id(), parent.job_id))
        for child in [j for j in self.jobs.values() if j.array_parent == parent.job_id]:
            if terminate:
                self.terminate(child, reason)
            else:
                self.cancel(child, reason)
        self._maybe_finish_array(parent)

    def step(self) -> None:
        """Schedule, persist, then tell the agents: the order that keeps restarts safe."""
        self.commits.step_began()
        events, self._sched_events = self._sched_events, []
        if events:
            # The core never reads a clock: it gets the time (seconds, like timeouts) here.
            events.insert(0, Tick(self._event_id(), self._now() / 1000))
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
            self._start_gang(action)
        elif isinstance(action, CancelRunnable):  # a jobStateTimeLimitAction fired
            job = self.jobs.get(action.job_id)
            if job is not None:
                self.cancel(job, action.reason)
        elif isinstance(action, SetWaitReason):
            job = self.jobs.get(action.job_id)
            if job is not None and job.status is JobStatus.RUNNABLE:
                job.status_reason = action.reason
                self.commits.mark(job)

    def note_wait(self, job_id: str, reason: str) -> None:
        """Why a RUNNABLE job waits, from outside the scheduler (power planning: "powering up node[5-8]")."""
        job = self.jobs.get(job_id)
        if job is not None and job.status is JobStatus.RUNNABLE and job.status_reason != reason:
            job.status_reason = reason
            self.commits.touch(job)

    def _action_failed(self, action: StartAttempt | StartGang | CancelRunnable | SetWaitReason, exc: Exception) -> None:
        """Applying one of the scheduler's decisions raised: fail that job with the cause, free its hold."""
        job_id = action.job_id
        reason = f"The head could not apply its decision to {type(action).__name__}: {type(exc).__name__}: {exc}"
        log.error("job %s: %s", job_id, reason, exc_info=exc)
        self.faults.failed["decision"] = self.faults.failed.get("decision", 0) + 1
        self._feed(AttemptEnded(self._event_id(), job_id))
        job = self.jobs.get(job_id)
        try:
            if job is None or job.status.is_final:
                return
            if job.status is JobStatus.RUNNABLE:
                self.terminate(job, reason)
                return
            # Placed, but its start order was never queued (the order is the last thing made).
            for part in self._children(job) if job.is_gang else [job]:
                if part.current_attempt is not None and part.job_id in self.jobs:
                    self._finish_attempt(part, None, None, reason, retry=False)
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
        self._feed(RunTimesLearned(self._event_id(), learned_runs(finished)))
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
                self._hold_for_fence(job, job.fence_hold, self.registry.fence_hold_s(job.fence_hold.node))
            elif job.status is JobStatus.RUNNABLE:
                self._feed(self._runnable(job, seq))
            else:
                attempt = job.current_attempt
                if attempt is None:  # cannot happen unless the store was edited by hand
                    self._finish_attempt(job, None, None, "Attempt record missing after restart")
                    continue
                self._expect(attempt.node, job.job_id)
        for gang in gangs:  # a try that was ending when the head stopped
            if gang.ending is not None:
                self._kill_gang(gang, MAIN_NODE_EXITED)
                self._maybe_finish_gang(gang)
        log.info("recovered %d unfinished jobs", len(self.jobs))

    def _expect(self, node_name: str, job_id: str) -> None:
        self.registry.expect(node_name, job_id, self._now())

    # ------------------------------------------------------------------ jobs in
    def submit(self, job: JobRecord, children: list[JobRecord] | None = None) -> None:
        """Admit a new job (and a multi-node job's nodes); committed with the step's batch (see ``durable``)."""
        for record in (job, *(children or ())):
            self.jobs[record.job_id] = record
            self.commits.record(record.job_id, record.created_at, record.status.value, None)
            self._touch(record)
        self._admit(job)

    def _admit(self, job: JobRecord) -> None:
        if dependency_state(job, live=self.jobs) is not Dependencies.NONE:
            self._move(job, JobEvent.WAIT_DEPENDENCIES, None)
            self._wait_for_dependencies(job)
        else:
            self._make_runnable(job)

    def _make_runnable(self, job: JobRecord) -> None:
        if job.array_size is not None:
            self._start_array(job)
            return
        self._move(job, JobEvent.READY, None)
        self._seq += 1
        self._feed(self._runnable(job, self._seq))

    def _wait_for_dependencies(self, job: JobRecord) -> None:
        finished = [j for j in job_dependencies(job) if j not in self.jobs]
        failed = {dep.job_id for dep in self.store.get_jobs(finished) if dep.status is JobStatus.FAILED}
        self._apply_dependencies(job, dependency_state(job, live=self.jobs, failed=failed))

    def _apply_dependencies(self, job: JobRecord, state: Dependencies) -> None:
        """Act on where a PENDING job's dependencies stand (hpcbatch.model.decisions)."""
        if state is Dependencies.FAILED:
            self._move(job, JobEvent.DEPENDENCY_FAILED, DEPENDENCY_FAILED_REASON)
        elif state is Dependencies.WAITING:
            for dep_id in job_dependencies(job):
                if dep_id in self.jobs:
                    self._dependents.setdefault(dep_id, set()).add(job.job_id)
            job.status_reason = dependency_wait_reason(job, live=self.jobs)
            self._touch(job)
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
            self._close_array(job, reason, terminate=False)
            return
        if job.status in (JobStatus.SUBMITTED, JobStatus.PENDING, JobStatus.RUNNABLE):
            job.is_cancelled = True
            self._withdraw(job)
            self._move(job, JobEvent.CANCEL, reason)

    def terminate(self, job: JobRecord, reason: str) -> None:
        """TerminateJob: like cancel, and a running attempt is killed and not retried."""
        if job.status.is_final:
            return
        job.is_terminated = True
        if job.array_size is not None and job.status is JobStatus.PENDING:
            self._close_array(job, reason, terminate=True)
            return
        if job.is_gang and job.status.is_active:
            job.stop_reason = reason
            self._touch(job)
            if job.ending is None:
                job.ending = GangEnding(status_reason=reason, stopped_at=self._now())
            self._kill_gang(job, reason)
            self._maybe_finish_gang(job)
        elif job.status.is_active:
            attempt = job.current_attempt
            assert attempt is not None
            job.stop_reason = reason
            self._touch(job)
            node = self.registry.get(attempt.node)
            if node is None or not node.up:
                self._finish_attempt(job, None, None, reason)
            else:
                kill = p.KillAttempt(attempt_id=attempt.attempt_id, reason=reason, grace_s=self._kill_grace_s)
                self.commits.send(attempt.node, kill)
        else:
            self._withdraw(job)
            self._move(job, JobEvent.TERMINATE, reason)

    def _withdraw(self, job: JobRecord) -> None:
        if job.status is JobStatus.RUNNABLE:
            self._feed(JobWithdrawn(self._event_id(), job.job_id))
        for deps in self._dependents.values():
            deps.discard(job.job_id)

    # ---------------------------------------------------------------- placement
    def _start(self, action: StartAttempt) -> None:
        job = self.jobs.get(action.job_id)
        if job is None and ":" in action.job_id:  # an array child gets its record when placed
            parent_id, _, index = action.job_id.rpartition(":")
            parent = self.jobs.get(parent_id)
            if parent is not None and parent.array_size is not None and not parent.array_closed and index.isdigit():
                job = self.materialize_array_child(parent, int(index))
        if job is None or job.status is not JobStatus.RUNNABLE:
            self._feed(AttemptEnded(self._event_id(), action.job_id))
            return
        if job.is_gang:  # a one-node gang placed as one job (a scheduler that knew no JobRunnable.gang)
            gpus = (action.gpus,) if action.gpus else ()
            self._start_gang(StartGang(job_id=action.job_id, nodes=(action.node,),
                                       compute_environment=action.compute_environment, gpus=gpus))
            return
        if self._injection is not None:
            self._injection.check("start", job.job_id, job.job_name)
        attempt_id = uuid.uuid4().hex
        attempt = Attempt(
            attempt_id=attempt_id,
            node=action.node,
            compute_environment=action.compute_environment,
            log_stream_name=f"{self._stream_prefix(job)}/default/{attempt_id}",
            gpus=list(action.gpus),
        )
        job.attempts.append(attempt)
        self.nodes[action.node].jobs.add(job.job_id)
        self._move(job, JobEvent.PLACED, None)
        self.commits.send(action.node, self._start_message(job, attempt))

    def _start_message(self, job: JobRecord, attempt: Attempt) -> p.StartAttempt:
        env = dict(job.environment)
        env.update(
            AWS_BATCH_JOB_ID=job.job_id,
            AWS_BATCH_JOB_ATTEMPT=str(len(job.attempts)),
            AWS_BATCH_JQ_NAME=job.job_queue,
            AWS_BATCH_CE_NAME=attempt.compute_environment,
        )
        # ECS sets it in every AWS Batch container on EC2; Metaflow's @batch reads it (KeyError without).
        env.setdefault("AWS_EXECUTION_ENV", "AWS_ECS_EC2")
        script = self.store.get_script(job.script_id, job.owner) if job.script_id else None
        multi: dict[str, Any] = {}
        parent = self.jobs.get(job.parent_id) if job.parent_id else None
        vcpus, memory_mib = job.resources.vcpus, job.resources.memory_mib
        if parent is not None and job.node_index is not None:
            facts = self.registry.facts(attempt.node)
            if facts is not None:  # whole nodes are whole: what the job does not name is the node's
                vcpus, memory_mib = whole_node(job.container, vcpus, memory_mib, facts.vcpus, facts.memory_mib)
            env["AWS_BATCH_JOB_ATTEMPT"] = str(len(parent.attempts))
            env.update(self._node_environment(parent, job.node_index))
            multi = {
                "hosts": list(parent.hosts),
                "node_index": job.node_index,
                "launch_secret": parent.launch_secret,
                "hold": not job.command and job.script_id is None,
            }
        return p.StartAttempt(
            attempt_id=attempt.attempt_id,
            job_id=job.job_id,
            attempt_number=len(job.attempts),
            command=job.command,
            environment=env,
            vcpus=vcpus,
            memory_mib=memory_mib,
            gpus=job.resources.gpus,
            gpu_ids=list(attempt.gpus),
            timeout_s=job.timeout_s,
            image=job.image,
            container=container_options(job.container, self.container_capabilities) if job.image else None,
            script=script,
            log_stream_name=attempt.log_stream_name,
            owner=job.owner,
            **multi,
        )

    def _node_environment(self, parent: JobRecord, index: int) -> dict[str, str]:
        """AWS's multi-node variables, plus what torchrun/NCCL need to find the main node."""
        main_facts = self.registry.facts(parent.hosts[parent.main_node]) if parent.hosts else None
        main_ip = main_facts.addresses[0] if main_facts and main_facts.addresses else ""
        fabric_ip = (main_facts.fabric_address if main_facts else None) or main_ip
        env = {
            "AWS_BATCH_JOB_NODE_INDEX": str(index),
            "AWS_BATCH_JOB_NUM_NODES": str(parent.num_nodes),
            "AWS_BATCH_JOB_MAIN_NODE_INDEX": str(parent.main_node),
            "HPCBATCH_SLOTS_PER_NODE": str(self._slots_per_node(parent)),
            # The fabric address is what ranks and torchrun use; the management one keeps its own name.
            "HPCBATCH_MAIN_NODE_MANAGEMENT_ADDRESS": main_ip,
            "MASTER_ADDR": fabric_ip,
            "MASTER_PORT": MASTER_PORT,
            "NNODES": str(parent.num_nodes),
            "NODE_RANK": str(index),
        }
        if index != parent.main_node:  # AWS sets it on the other nodes only
            env["AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"] = fabric_ip
        return env

    def _slots_per_node(self, parent: JobRecord) -> int:
        """MPI slots per host in the hostfile: the vCPUs each node gives the job; a job that names
        none holds its nodes whole, so the smallest node's vCPUs (one number serves every host)."""
        if names_resource(parent.container, "VCPU") or not parent.hosts:
            return max(1, int(parent.resources.vcpus))
        sizes = [facts.vcpus for h in parent.hosts if (facts := self.registry.facts(h)) is not None]
        return max(1, min(sizes, default=int(parent.resources.vcpus)))

    def _start_gang(self, action: StartGang) -> None:
        """Place every node of a multi-node job at once (the scheduler chose the nodes)."""
        parent = self.jobs.get(action.job_id)
        children = self._children(parent) if parent is not None else []
        if parent is None or parent.status is not JobStatus.RUNNABLE or len(children) != parent.num_nodes:
            self._feed(AttemptEnded(self._event_id(), action.job_id))
            return
        parent.hosts = list(action.nodes)
        parent.launch_secret = secrets.token_hex(16)
        parent.ending = None
        gpus = action.gpus or tuple(() for _ in action.nodes)
        for child, node, node_gpus in zip(children, action.nodes, gpus, strict=True):
            attempt_id = uuid.uuid4().hex
            child.attempts.append(
                Attempt(
                    attempt_id=attempt_id, node=node, compute_environment=action.compute_environment,
                    log_stream_name=f"{self._stream_prefix(parent)}/default/{attempt_id}",
                    gpus=list(node_gpus),
                )
            )
            self.nodes[node].jobs.add(child.job_id)
            self._move(child, JobEvent.PLACED, None)
        main_attempt = children[parent.main_node].attempts[-1]
        parent.attempts.append(
            Attempt(
                attempt_id=main_attempt.attempt_id, node=main_attempt.node,
                compute_environment=action.compute_environment, log_stream_name=main_attempt.log_stream_name,
                gpus=list(main_attempt.gpus),
            )
        )
        self._move(parent, JobEvent.PLACED, None)
        for child in children:
            self.commits.send(child.attempts[-1].node, self._start_message(child, child.attempts[-1]))

    def _kill_gang(self, parent: JobRecord, reason: str) -> None:
        """Stop every node of the current try that still runs (the try is ending)."""
        for child in self._children(parent):
            attempt = child.current_attempt
            if attempt is None:
                continue
            node = self.registry.get(attempt.node)
            if node is None or not node.up:
                self._child_ended(child, None, None, reason)
            else:
                kill = p.KillAttempt(attempt_id=attempt.attempt_id, reason=reason, grace_s=self._kill_grace_s)
                self.commits.send(attempt.node, kill)
        self.request_step()

    def _child_ended(
        self, child: JobRecord, exit_code: int | None, reason: str | None, status_reason: str | None,
        stopped_at: int | None = None, lost: bool = False, timed_out: bool = False,
    ) -> None:
        """One node of a multi-node job ended; the main node's end (or a lost node) ends the try."""
        attempt = child.current_attempt
        if attempt is None:
            return
        attempt.stopped_at = stopped_at or self._now()
        attempt.exit_code, attempt.reason = exit_code, reason
        attempt.timed_out, attempt.lost = timed_out, lost
        attempt.status_reason = status_reason or (EXITED_REASON if exit_code is not None else reason)
        self._release(attempt.node, child.job_id)
        self._touch(child)
        parent = self.jobs.get(child.parent_id or "")
        if parent is None:
            return
        if parent.ending is None and (child.node_index == parent.main_node or lost):
            parent.ending = GangEnding(
                exit_code=exit_code if not lost else None, reason=reason, status_reason=attempt.status_reason,
                stopped_at=attempt.stopped_at, timed_out=timed_out, lost=lost,
                lost_attempt=FenceHold(node=attempt.node, attempt_id=attempt.attempt_id) if lost else None,
            )
            self._touch(parent)
            self._kill_gang(parent, MAIN_NODE_EXITED if not lost else attempt.status_reason or "Node lost")
        self._maybe_finish_gang(parent)

    def _maybe_finish_gang(self, parent: JobRecord) -> None:
        """When every node of an ending try has stopped: decide the job (success, retry, fail)."""
        ending = parent.ending
        if ending is None or any(c.current_attempt is not None for c in self._children(parent)):
            return
        attempt = parent.current_attempt
        if attempt is None:
            return
        exit_code, reason, timed_out = ending.exit_code, ending.reason, ending.timed_out
        status_reason = parent.stop_reason or ending.status_reason
        attempt.stopped_at = ending.stopped_at or self._now()
        attempt.exit_code, attempt.reason, attempt.status_reason = exit_code, reason, status_reason
        attempt.timed_out, attempt.lost, attempt.terminated = timed_out, ending.lost, parent.is_terminated
        parent.ending = None
        self._feed(AttemptEnded(self._event_id(), parent.job_id, run_s=attempt_run_s(attempt)))
        for child in self._children(parent):  # holds re-created per node after a head restart
            self._feed(AttemptEnded(self._event_id(), child.job_id))
        held = self.registry.pop_gang_hold(parent.job_id)
        end = AttemptEnd(exit_code, reason, status_reason, timed_out=timed_out, terminated=parent.stop_reason is not None)
        verdict = attempt_verdict(parent, end)
        if verdict is Verdict.SUCCEEDED:
            self._move(parent, JobEvent.SUCCEEDED, EXITED_REASON)
        elif verdict is Verdict.RETRY:
            parent.started_at = None
            attempt.status_reason = self._gang_failure(parent, ending, status_reason)
            self._move(parent, JobEvent.ATTEMPT_FAILED_RETRY, attempt.status_reason)
            hold_s = 0.0
            if ending.lost_attempt is not None:
                # Its deadline, or (the head restarted meanwhile) a whole fence from now.
                hold_s = held - self._mono() if held is not None else self.registry.fence_hold_s(ending.lost_attempt.node)
            if ending.lost_attempt is not None and hold_s > 0:
                self._hold_for_fence(parent, ending.lost_attempt, hold_s)
            else:
                self._seq += 1
                self._feed(self._runnable(parent, self._seq))
        else:
            parent.stopped_at = attempt.stopped_at
            attempt.status_reason = self._gang_failure(parent, ending, status_reason)
            self._move(parent, JobEvent.ATTEMPT_FAILED_FINAL, attempt.status_reason)

    def _gang_failure(self, parent: JobRecord, ending: GangEnding, status_reason: str | None) -> str | None:
        """A failed try's statusReason naming the node that failed and how (model.multinode);
        a terminate, timeout or lost node keeps its own words."""
        if parent.stop_reason is not None or ending.timed_out or ending.lost:
            return status_reason
        ends = [
            NodeEnd(child.node_index or 0, a.node, a.exit_code, a.reason, a.stopped_at)
            for child in self._children(parent)
            if child.node_index is not None and (a := child.attempts[-1] if child.attempts else None) is not None
        ]
        return gang_failure_reason(parent.main_node, ends, status_reason)

    # ------------------------------------------------------------ agent reports
    def handle(self, node: str, msg: p.AgentMessage) -> None:
        """Serve one message from a registered node, contained: a handler that raises fails only
        what the message is about (``message_failed``), never the head."""
        try:
            self._inject(msg)
            match msg:
                case p.AgentHeartbeat():
                    self.on_heartbeat(node, msg)
                case p.AttemptStarted():
                    self.on_started(node, msg)
                case p.AttemptExited():
                    self.on_exited(node, msg)
                case p.LogChunk():
                    self.on_log(msg)
                case p.LaunchRequest():
                    self.on_launch_request(node, msg)
                case p.ImagesCached():
                    self.on_images(node, msg)
                case p.TaskExited():
                    self.on_task_exited(node, msg)
        except HpcbatchError:
            # The store is away (docs/ha.md), not this message at fault: it is not counted
            # against the message (the agent sends it again); the caller logs and drops it.
            raise
        except Exception as exc:  # one message's failure is that message's, not the process's
            self.message_failed(node, msg, exc)
            return
        job_id, attempt_id = _message_ids(msg)
        self.faults.served(node, msg.__struct_config__.tag, attempt_id or job_id)

    def _inject(self, msg: p.Message) -> None:
        """The test-only fault hook (``RAISE_ON_ENV``): raise on the chosen kind of message and job."""
        if self._injection is not None:
            job_id, _ = _message_ids(msg)
            job = self.jobs.get(job_id)
            self._injection.check(msg.__struct_config__.tag, job_id, job.job_name if job is not None else None)

    def message_failed(self, node: str, msg: p.Message, exc: BaseException) -> None:
        """A handler raised on ``msg`` from ``node``: log it with the message's type and ids, and
        do what hpcbatch.head.faults decides (fail its attempt, refuse it, set it aside, drop it)."""
        kind = str(msg.__struct_config__.tag)
        job_id, attempt_id = _message_ids(msg)
        cause = f"{type(exc).__name__}: {exc}"
        decided = self.faults.failure(node, kind, attempt_id or job_id)
        tries = self.faults.tries.get((node, kind, attempt_id or job_id), 0)
        log.error("node %s: the head failed on a %r message (job %s, attempt %s), try %d: %s", node, kind,
                  job_id or "-", attempt_id or "-", tries, cause, exc_info=exc)
        try:
            if decided in (Outcome.QUARANTINE_AND_FAIL, Outcome.QUARANTINE):
                info = self.registry.ensure(node)
                if self.faults.set_aside(info.quarantined, Quarantined(kind, job_id, attempt_id, tries, cause,
                                                                       self._now())):
                    log.error("node %s: %r message of job %s, attempt %s quarantined after %d tries", node, kind,
                              job_id or "-", attempt_id or "-", tries)
            if decided is Outcome.QUARANTINE_AND_FAIL:
                self.commits.send(node, p.AckExits(attempt_ids=[attempt_id]))  # the agent stops resending it
                self._fail_attempt(node, job_id, attempt_id,
                                   f"The head could not process the attempt's exit report ({tries} tries): {cause}")
            elif decided is Outcome.FAIL_AND_KILL:
                self.commits.send(node, p.KillAttempt(attempt_id=attempt_id, reason=cause, grace_s=0))
                self._fail_attempt(node, job_id, attempt_id, f"The head could not process the attempt's start: {cause}")
            elif decided is Outcome.REFUSE and isinstance(msg, p.LaunchRequest | p.TaskExited):
                to = node if isinstance(msg, p.LaunchRequest) else msg.origin
                if to:  # a client's task (origin "") has no node to tell
                    self.commits.send(to, p.LaunchDone(launch_id=msg.launch_id, exit_code=None, error=cause))
        except Exception:  # failing the attempt failed too: it stays as it is; the log says why
            log.exception("node %s: could not fail the attempt of a %r message (job %s, attempt %s)", node, kind,
                          job_id or "-", attempt_id or "-")
        self.request_step()

    def _fail_attempt(self, node: str, job_id: str, attempt_id: str, reason: str) -> None:
        """End the attempt a failed message was about, FAILED with ``reason`` (never retried:
        its command may have run to completion, and running it again is not ours to decide)."""
        job = self._current(node, job_id, attempt_id)
        if job is None:
            return
        self._finish_attempt(job, None, None, reason, retry=False)

    def _reconcile(self, name: str, node: NodeInfo, listed: list[str]) -> None:
        """Anti-entropy (hpcbatch.model.reconcile): the heartbeat's running set against the head's view."""
        expected: dict[str, bool] = {}
        jobs: dict[str, JobRecord] = {}
        for job_id in node.jobs:
            job = self.jobs.get(job_id)
            attempt = job.current_attempt if job is not None else None
            if job is not None and attempt is not None and attempt.node == name:
                expected[attempt.attempt_id] = job.status is JobStatus.STARTING
                jobs[attempt.attempt_id] = job
        if not expected and not listed:
            return
        decided = reconcile(expected, listed, node.missing, self._reconcile_after)
        node.missing = dict(decided.misses)
        for attempt_id in decided.kill:
            log.warning("node %s runs attempt %s, which the head has ended: killing it", name, attempt_id[:8])
            self.commits.send(name, p.KillAttempt(attempt_id=attempt_id, reason="Attempt is no longer current",
                                                  grace_s=0))
        for attempt_id in decided.started:  # its AttemptStarted was lost, or is behind
            self._mark_started(jobs[attempt_id], self._now())
        for attempt_id in decided.ask:
            job = jobs[attempt_id]
            attempt = job.current_attempt
            assert attempt is not None
            log.info("node %s has not listed attempt %s of job %s for %d heartbeats: asking", name,
                     attempt_id[:8], job.job_id, decided.misses[attempt_id])
            self.commits.send(name, self._start_message(job, attempt))
        for attempt_id in decided.lost:
            job = jobs[attempt_id]
            missed = node.missing.pop(attempt_id, 0)
            log.warning("node %s: attempt %s of job %s unlisted for %d heartbeats and unreported: lost", name,
                        attempt_id[:8], job.job_id, missed)
            self._finish_attempt(
                job, None, None, f"Attempt lost: the agent on {name} has not listed it for {missed} heartbeats",
                lost=True,
            )
        if decided.kill or decided.started or decided.ask or decided.lost:
            self.request_step()

    def _current(self, node: str, job_id: str, attempt_id: str) -> JobRecord | None:
        job = self.jobs.get(job_id)
        if job is None:
            return None
        attempt = job.current_attempt
        if attempt is None or attempt.attempt_id != attempt_id or attempt.node != node:
            return None
        return job

    def on_started(self, node: str, msg: p.AttemptStarted) -> None:
        job = self._current(node, msg.job_id, msg.attempt_id)
        if job is None:
            self.commits.send(node, p.KillAttempt(attempt_id=msg.attempt_id, reason="Attempt is no longer current", grace_s=0))
            self.request_step()
            return
        self._mark_started(job, msg.started_at)

    def _mark_started(self, job: JobRecord, started_at: int) -> None:
        attempt = job.current_attempt
        assert attempt is not None
        attempt.started_at = started_at
        if job.started_at is None:
            job.started_at = started_at
        if job.status is JobStatus.STARTING:
            self._move(job, JobEvent.STARTED, None)
        parent = self.jobs.get(job.parent_id) if job.parent_id else None
        if parent is not None and job.node_index == parent.main_node and parent.current_attempt is not None:
            self._mark_started(parent, started_at)

    def on_exited(self, node: str, msg: p.AttemptExited) -> None:
        """An attempt ended; acknowledged once the outcome is committed."""
        job = self._current(node, msg.job_id, msg.attempt_id)
        held_id = msg.job_id if self.registry.held(msg.job_id) is not None else split_child_id(msg.job_id)[0]
        hold = self.registry.held(held_id)
        if job is None and self._late_exit(node, msg):
            pass  # a lost attempt's real end: the job takes it, nothing runs again
        elif hold is not None and hold.attempt_id == msg.attempt_id:  # the lost attempt ended: retry now
            self._release_fence(held_id)
        if job is not None:
            attempt = job.current_attempt
            assert attempt is not None
            if attempt.started_at is None and msg.started_at is not None:
                self._mark_started(job, msg.started_at)
            self._finish_attempt(job, msg.exit_code, msg.reason, msg.status_reason, msg.stopped_at,
                                 lost=msg.lost, timed_out=msg.timed_out)
        self.commits.send(node, p.AckExits(attempt_ids=[msg.attempt_id]))
        self.request_step()

    def _finish_attempt(
        self,
        job: JobRecord,
        exit_code: int | None,
        reason: str | None,
        status_reason: str | None,
        stopped_at: int | None = None,
        lost: bool = False,
        hold_s: float = 0.0,
        timed_out: bool = False,
        retry: bool = True,
    ) -> None:
        """``hold_s``: a retry waits this long for the (lost) node to fence the attempt;
        ``retry=False``: the job fails whatever its retry strategy says."""
        if job.parent_id is not None:
            if lost:  # the try ends; its retry waits for this node's fence as a single job's would
                self.registry.hold_gang(job.parent_id, self._mono() + hold_s)
            self._child_ended(job, exit_code, reason, status_reason, stopped_at, lost, timed_out)
            return
        attempt = job.current_attempt
        assert attempt is not None
        now = self._now()
        attempt.stopped_at = stopped_at or now
        attempt.exit_code = exit_code
        attempt.reason = reason
        attempt.timed_out, attempt.lost = timed_out, lost
        attempt.terminated = job.stop_reason is not None  # terminate() sets it on an active job
        if job.stop_reason is not None:  # terminated: the caller's reason is the story
            status_reason = job.stop_reason
        attempt.status_reason = status_reason or (EXITED_REASON if exit_code is not None else reason)
        self._release(attempt.node, job.job_id)
        self._feed(AttemptEnded(self._event_id(), job.job_id, run_s=attempt_run_s(attempt)))
        self._decide(job, attempt, status_reason, hold_s, retry)

    def _decide(
        self, job: JobRecord, attempt: Attempt, status_reason: str | None, hold_s: float = 0.0, retry: bool = True,
    ) -> None:
        """The job's next state after ``attempt`` (its last) ended: success, retry (maybe held), or failure.

        ``status_reason``: the reported one, which evaluateOnExit's ``onStatusReason`` matches.
        """
        end = AttemptEnd(attempt.exit_code, attempt.reason, status_reason, timed_out=attempt.timed_out,
                         terminated=attempt.terminated)
        verdict = attempt_verdict(job, end, may_retry=retry)
        if verdict is Verdict.SUCCEEDED:
            self._move(job, JobEvent.SUCCEEDED, EXITED_REASON)
        elif verdict is Verdict.RETRY:
            job.started_at = None
            self._move(job, JobEvent.ATTEMPT_FAILED_RETRY, attempt.status_reason)
            if hold_s > 0:
                self._hold_for_fence(job, FenceHold(node=attempt.node, attempt_id=attempt.attempt_id), hold_s)
            else:
                self._seq += 1
                self._feed(self._runnable(job, self._seq))
        else:
            job.stopped_at = attempt.stopped_at
            self._move(job, JobEvent.ATTEMPT_FAILED_FINAL, attempt.status_reason)

    def _node_up(self, name: str) -> None:
        node = self.registry.nodes[name]
        facts = node.facts
        assert facts is not None
        # A node of a multi-node job rejoins its gang's hold (single tenancy survives restarts).
        # The GPU ids each running attempt holds (stored on the attempt) come along, so a
        # restarted head never hands out a held GPU twice.
        allocations = []
        gangs = []
        holds = []
        shares = []
        for job_id, request in node.allocations:
            job = self.jobs.get(job_id)
            sched_id = job_id
            if job is not None and job.parent_id is not None:
                sched_id = job.parent_id
                gangs.append(job.parent_id)
            allocations.append((sched_id, request))
            if job is not None and job.share_identifier is not None:  # fair share: charge it again
                shares.append((sched_id, job.job_queue, job.share_identifier))
            attempt = job.current_attempt if job is not None else None
            if attempt is not None and attempt.node == name and attempt.gpus:
                holds.append((sched_id, tuple(attempt.gpus)))
        self._feed(
            NodeUp(
                self._event_id(), name, self.compute_environment_of(name), facts.vcpus, facts.memory_mib,
                len(facts.gpus), tuple(allocations), accepting=node.drain_reason is None,
                placement_group=facts.placement_group, gang_jobs=tuple(gangs),
                gpu_ids=tuple(facts.gpus), gpu_holds=tuple(holds), shares=tuple(shares),
                gpu_places=head_gpus.gpu_places(facts), gpu_out=tuple(node.gpu_unhealthy),
                features=frozenset((CONTAINER_FEATURE,)) if facts.container_runtime else frozenset(),
            )
        )

    def compute_environment_of(self, name: str) -> str:
        """The node's compute environment: named in its config, or chosen by its labels (NodeRegistry)."""
        return self.registry.compute_environment_of(name)

    def _release(self, name: str, job_id: str) -> None:
        """``job_id``'s attempt on node ``name`` ended: a DRAINING node left empty is DRAINED."""
        if self.registry.release(name, job_id):
            self._node_changed(name)

    def _node_changed(self, name: str) -> None:
        """Put a node's new state in the event stream (once per change), committed with the step."""
        change = self.registry.state_change(name)
        if change is not None:
            self.commits.record(NODE_EVENT_PREFIX + name, self._now(), *change)
            self.request_step()

    def drain(self, name: str, reason: str | None) -> None:
        """Stop placing work on ``name`` (running jobs finish); ``reason=None`` resumes it."""
        if self.registry.set_drain(name, reason):
            self._node_changed(name)
            self._announce(name)

    def _announce(self, name: str) -> None:
        """Tell the scheduler the node again (drain, GPUs out): what runs there as it holds now."""
        node = self.registry.nodes[name]
        if node.facts is not None:
            node.allocations = tuple(
                (job_id, self.jobs[job_id].resources) for job_id in sorted(node.jobs) if job_id in self.jobs
            )
            self._node_up(name)

    # ------------------------------------------------------- MPI launcher bridge
    def on_launch_request(self, node: str, msg: p.LaunchRequest) -> None:
        """mpirun on ``node`` wants a daemon on ``msg.target``: only inside the job's own gang."""
        parent = self.jobs.get(msg.job_id)
        error = None
        target_attempt = None
        if parent is None or not parent.is_gang or not parent.status.is_active or parent.ending is not None:
            error = f"job {msg.job_id} is not a running multi-node job"
        else:
            children = self._children(parent)
            asking = [c for c in children if (a := c.current_attempt) and a.attempt_id == msg.attempt_id and a.node == node]
            if not asking:
                error = f"attempt {msg.attempt_id} on {node} is not part of job {msg.job_id}"
            elif msg.target not in parent.hosts:
                error = f"job {msg.job_id} does not hold node {msg.target} (it holds {', '.join(parent.hosts)})"
            else:
                target = children[parent.hosts.index(msg.target)] if len(children) == parent.num_nodes else None
                target_attempt = target.current_attempt if target is not None else None
                if target_attempt is None:
                    error = f"node {msg.target} of job {msg.job_id} is not running"
        if error is not None or target_attempt is None:
            log.warning("launch %s refused: %s", msg.launch_id, error)
            self.commits.send(node, p.LaunchDone(launch_id=msg.launch_id, exit_code=None, error=error))
        else:
            start = p.StartTask(
                launch_id=msg.launch_id, job_id=msg.job_id, attempt_id=target_attempt.attempt_id,
                command=msg.command, origin=node,
            )
            self.commits.send(target_attempt.node, start)
        self.request_step()

    def on_task_exited(self, node: str, msg: p.TaskExited) -> None:
        """A launched task ended on ``node``: tell the launcher's node (none for a client's task)."""
        error = msg.reason if msg.exit_code is None else None
        if msg.origin:
            self.commits.send(msg.origin, p.LaunchDone(launch_id=msg.launch_id, exit_code=msg.exit_code, error=error))
        elif msg.exit_code is None:
            log.warning("task %s on %s (hpcbatch run --jobid) did not run: %s", msg.launch_id[:8], node, error)
        self.request_step()

    def start_client_task(self, job: JobRecord, node_index: int, command: str) -> tuple[str, str] | str:
        """``hpcbatch run --jobid``: ``command`` inside the job's running attempt on node
        ``node_index`` (its owner, cgroup, environment; it ends with the attempt). (launch id,
        node name), or why not. The caller has checked who may; no node asked, so no node is
        told when it ends (origin ``""``): the client hears from the task itself."""
        if job.status is not JobStatus.RUNNING or (job.is_gang and job.ending is not None):
            return f"job {job.job_id} is {job.status.value}, not RUNNING"
        if job.is_gang:
            children = self._children(job)
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

    def on_log(self, msg: p.LogChunk) -> None:
        try:
            self.logs.write(msg.attempt_id, msg.offset, msg.data, read_at_ms=msg.read_at_ms or self._now(),
                            stored_at_ms=self._now(), job_id=msg.job_id)
        except OSError as exc:  # disk full: lose this chunk of output, not the head
            log.error("could not keep %d bytes of output of attempt %s: %s", len(msg.data), msg.attempt_id, exc)

    # -------------------------------------------------------------------- nodes
    def on_register(self, name: str, msg: p.Register) -> p.Welcome | None:
        """A node (re)joined: reconcile what it runs with what the store says it should."""
        node, shortfall = self.registry.register(name, msg, self._now())
        if shortfall is not None:
            log.warning("draining node %s: %s", name, shortfall)
        for exited in msg.exited:
            self.on_exited(name, exited)
        allocations = []
        reported = set()
        for running in msg.running:
            reported.add(running.job_id)
            job = self._current(name, running.job_id, running.attempt_id) or self._adopt(name, running)
            if job is None:
                self.commits.send(name, p.KillAttempt(attempt_id=running.attempt_id, reason="Attempt is no longer current", grace_s=0))
                continue
            node.jobs.add(job.job_id)
            allocations.append((job.job_id, job.resources))
            if job.status is JobStatus.STARTING:
                self._mark_started(job, running.started_at)
        finished = {e.job_id for e in msg.exited}
        for job_id in sorted(node.jobs - reported - finished):
            job = self.jobs.get(job_id)
            attempt = job.current_attempt if job else None
            if job is None or attempt is None or attempt.node != name:
                node.jobs.discard(job_id)
            elif job.status is JobStatus.STARTING:
                # The start may never have left the head before a crash: send it again
                # (agents start an attempt id at most once).
                allocations.append((job.job_id, job.resources))
                self.commits.send(name, self._start_message(job, attempt))
            else:
                self._finish_attempt(job, None, None, f"Attempt lost: the agent on {name} no longer runs it", lost=True)
        # Retries held for this node's lost attempts: those it no longer runs are provably
        # over; one it still runs was just told to die, and its exit report releases it.
        alive = {r.attempt_id for r in msg.running}
        for job_id, hold in self.registry.holds_on(name):
            if hold.attempt_id in alive:
                hold.still_running = True
            else:
                self._release_fence(job_id)
        node.allocations = tuple(allocations)
        self._node_up(name)
        self._node_changed(name)
        offsets = {
            r.attempt_id: {"output": self.logs.size(r.attempt_id)} for r in msg.running
        }
        return p.Welcome(head_id="", heartbeat_interval_s=0, liveness=0, log_offsets=offsets)

    def _lost_attempt(self, node: str, job_id: str, attempt_id: str) -> tuple[JobRecord, Attempt] | None:
        """The job whose last attempt (on ``node``) the head gave up as lost and whose retry has not started."""
        job = self.jobs.get(job_id)
        if job is None or job.status is not JobStatus.RUNNABLE or job.parent_id is not None or job.is_gang:
            return None
        attempt = job.attempts[-1] if job.attempts else None
        if attempt is None or attempt.attempt_id != attempt_id or attempt.node != node or not attempt.lost:
            return None
        return job, attempt

    def _adopt(self, name: str, running: p.RunningAttempt) -> JobRecord | None:
        """A lost attempt runs after all (its node came back within the fence): it is the job's again.

        At most once: the retry has not started (the job is still RUNNABLE with this attempt
        last), so the job goes on with the attempt it already runs instead of a second one.
        """
        found = self._lost_attempt(name, running.job_id, running.attempt_id)
        if found is None:
            return None
        job, attempt = found
        attempt.stopped_at = attempt.exit_code = attempt.reason = attempt.status_reason = None
        attempt.lost = False
        attempt.started_at = attempt.started_at or running.started_at
        job.started_at = attempt.started_at
        self._move(job, JobEvent.ADOPTED, None)  # the scheduler learns it from the node's allocations
        log.info("job %s: lost attempt %s runs on %s after all; adopted, no retry", job.job_id,
                 attempt.attempt_id[:8], name)
        return job

    def _late_exit(self, node: str, msg: p.AttemptExited) -> bool:
        """A lost attempt's real exit, reported before its retry started: that outcome stands.

        Only an exit the command itself made (an exit code, or the timeout) counts; one that
        the fence or an unknown end made leaves the attempt lost, and its retry runs.
        """
        found = self._lost_attempt(node, msg.job_id, msg.attempt_id)
        if found is None or msg.lost or msg.fenced or (msg.exit_code is None and not msg.timed_out):
            return False
        job, attempt = found
        self._drop_hold(job)
        self._feed(JobWithdrawn(self._event_id(), job.job_id))  # its retry, if it was queued already
        attempt.exit_code, attempt.reason, attempt.lost, attempt.timed_out = msg.exit_code, msg.reason, False, msg.timed_out
        attempt.started_at = attempt.started_at or msg.started_at
        attempt.stopped_at = msg.stopped_at
        attempt.status_reason = msg.status_reason or (EXITED_REASON if msg.exit_code is not None else msg.reason)
        job.started_at = attempt.started_at
        log.info("job %s: lost attempt %s ended on %s with exit %s; taking that result", job.job_id,
                 attempt.attempt_id[:8], node, msg.exit_code)
        verdict = attempt_verdict(job, AttemptEnd(attempt.exit_code, attempt.reason, msg.status_reason,
                                                  timed_out=attempt.timed_out))
        if verdict is Verdict.SUCCEEDED:
            job.stopped_at = attempt.stopped_at
            self._move(job, JobEvent.LOST_ATTEMPT_SUCCEEDED, EXITED_REASON)
        elif verdict is Verdict.RETRY:
            job.started_at = None
            job.status_reason = attempt.status_reason
            self._touch(job)
            self._seq += 1
            self._feed(self._runnable(job, self._seq))
        else:
            job.stopped_at = attempt.stopped_at
            self._move(job, JobEvent.LOST_ATTEMPT_FAILED, attempt.status_reason)
        return True

    def on_images(self, name: str, msg: p.ImagesCached) -> None:
        info = self.registry.get(name)
        if info is not None:
            info.images = list(msg.images)

    def prepull(self, nodes: list[str], image: str) -> None:
        """Ask ``nodes`` to put ``image`` in their caches (they report it when done)."""
        for name in nodes:
            self.commits.send(name, p.PullImage(image=image))
        self.request_step()

    def on_heartbeat(self, name: str, msg: p.AgentHeartbeat | None = None) -> None:
        node = self.registry.heartbeat(name, self._now())
        if node is not None:
            if msg is not None and node.facts is not None and node.up:
                self._reconcile(name, node, msg.running)
            if msg is not None:
                node.gpu_utilization = msg.gpu_utilization
            if msg is not None and (msg.gpu_usage or msg.unhealthy_gpus.keys() - node.gpu_unhealthy.keys()):
                self._on_gpu_report(name, node, msg)

    def _on_gpu_report(self, name: str, node: NodeInfo, msg: p.AgentHeartbeat) -> None:
        """GPU health and usage from a heartbeat: take bad GPUs out, keep samples on attempts.

        Out of service is sticky until the node registers again (an agent restart after the
        repair reports the GPU afresh): a heartbeat only adds to it.
        """
        if msg.gpu_usage:
            attempts = {
                a.attempt_id: a for j in node.jobs if (job := self.jobs.get(j)) and (a := job.current_attempt)
            }
            for attempt_id, attempt in attempts.items():
                head_gpus.record_usage(attempt, [u for u in msg.gpu_usage if u.attempt_id == attempt_id])
        new = {gpu: why for gpu, why in msg.unhealthy_gpus.items() if gpu not in node.gpu_unhealthy}
        if new and node.facts is not None and node.up:
            for gpu, why in new.items():
                log.error("node %s: GPU %s out of service: %s", name, gpu, why)
            self.registry.gpus_out(name, new)
            self._announce(name)

    def node_lost(self, name: str, silent_s: float, why: str | None = None) -> None:
        """No heartbeat for too long (or cut off): fail its attempts (retried per strategy)."""
        if not self.registry.needs_losing(name):
            return
        reason = f"Node {name} lost: {why or f'no heartbeat for {silent_s:.0f} s'}"
        jobs = self.registry.lose(name, reason)
        log.warning("%s; failing %d attempt(s)", reason, len(jobs))
        self._node_changed(name)
        # The node may still run them: retries wait until its agent has fenced them.
        hold_s = max(0.0, self.registry.fence_hold_s(name) - silent_s)
        for job_id in jobs:
            job = self.jobs.get(job_id)
            if job is not None and job.current_attempt is not None:
                self._finish_attempt(job, None, None, reason, lost=True, hold_s=hold_s)
        self._feed(NodeGone(self._event_id(), name))
        if self.fence_node is not None and self.registry.holds_on(name):
            self.fence_node(name)

    def node_fenced(self, name: str) -> None:
        """``name`` was powered off (STONITH): its attempts are surely dead; retry them now."""
        for job_id, _hold in self.registry.holds_on(name):
            log.info("job %s: node %s is powered off; the retry is no longer held", job_id, name)
            self._release_fence(job_id)

    # ----------------------------------------------------------------- fencing
    def _hold_for_fence(self, job: JobRecord, lost: FenceHold, hold_s: float) -> None:
        """Keep ``job`` RUNNABLE but away from the scheduler until the ``lost`` attempt is surely dead."""
        self.registry.hold(job.job_id, lost, hold_s, self._mono())
        self._arm_fences()
        job.fence_hold = lost
        job.status_reason = FENCE_WAIT_REASON.format(node=lost.node)
        self._touch(job)
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
            self._release_fence(job_id)
        self._arm_fences()

    def _drop_hold(self, job: JobRecord) -> None:
        """Forget ``job``'s held retry (it left RUNNABLE, or its retry is released)."""
        job.fence_hold = None
        self.registry.drop_hold(job.job_id)

    def _release_fence(self, job_id: str) -> None:
        hold = self.registry.held(job_id)
        job = self.jobs.get(job_id)
        if job is None or job.status is not JobStatus.RUNNABLE:  # cancelled or terminated meanwhile
            self.registry.drop_hold(job_id)
            return
        self._drop_hold(job)
        if hold is None:
            return
        job.status_reason = job.attempts[-1].status_reason if job.attempts else None
        self._touch(job)
        self._seq += 1
        self._feed(self._runnable(job, self._seq))

    # ------------------------------------------------------- queues and CEs
    def compute_environment_changed(self, doc: dict[str, Any]) -> None:
        resources = doc.get("computeResources") or {}
        max_vcpus = resources.get("maxvCpus")
        if self.registry.set_selector(doc["computeEnvironmentName"], doc.get("tags") or {}):
            for node_name in self.registry.joined_by_label():  # nodes that join by label may move
                self._node_up(node_name)
        self._feed(
            ComputeEnvironmentChanged(
                self._event_id(), doc["computeEnvironmentName"], doc["state"] == "ENABLED",
                None if max_vcpus is None else float(max_vcpus),
                # AWS's computeResources.placementGroup: gangs must stay inside one group.
                require_placement_group=bool(resources.get("placementGroup")),
                allocation_strategy=resources.get("allocationStrategy") or "BEST_FIT",
            )
        )

    def compute_environment_removed(self, name: str) -> None:
        self.registry.drop_selector(name)
        self._feed(ComputeEnvironmentRemoved(self._event_id(), name))

    def job_queue_changed(self, doc: dict[str, Any]) -> None:
        order = sorted(doc["computeEnvironmentOrder"], key=lambda e: e["order"])
        names = tuple(e["computeEnvironment"].rsplit("/", 1)[-1] for e in order)
        policy_arn = doc.get("schedulingPolicyArn")
        policy = fair_share_of(self.store.get_resource("policy", policy_name(policy_arn))) if policy_arn else None
        limits = tuple(
            StateTimeLimit(a["reason"], float(a["maxTimeSeconds"]), a["action"])
            for a in doc.get("jobStateTimeLimitActions", [])
            if a.get("state", "RUNNABLE") == "RUNNABLE"
        )
        self._feed(
            JobQueueChanged(
                self._event_id(), doc["jobQueueName"], doc["state"] == "ENABLED", doc["priority"], names,
                fair_share=policy, time_limits=limits,
            )
        )

    def scheduling_policy_changed(self, name: str) -> None:
        """A policy was updated: every queue that uses it gets the new shares."""
        for doc in self.store.list_resources("queue"):
            if policy_name(doc.get("schedulingPolicyArn", "")) == name:
                self.job_queue_changed(doc)

    def tick(self) -> None:
        """Let the scheduler see time pass (share decay, jobStateTimeLimitActions) with no other event."""
        self.expire_fences()
        self._feed(Tick(self._event_id(), self._now() / 1000))

    def job_queue_removed(self, name: str) -> None:
        self._feed(JobQueueRemoved(self._event_id(), name))
