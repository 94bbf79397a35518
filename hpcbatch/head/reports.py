"""What agents report, served: heartbeats, registrations, attempt starts and exits, logs, images.

Every message from a registered node comes in through ``handle``, guarded: a handler that
raises fails only what the message is about (``message_failed``: hpcbatch.head.faults decides
whether its attempt fails, the message is refused, set aside or dropped), never the head.

A (re)registering node is reconciled with what the store says it should run: attempts it
no longer runs are lost, ones the head has ended are killed, a STARTING one whose start may
never have left the head is sent again. A lost attempt that turns out alive before its retry
started is adopted (the job goes on with it); one whose real exit arrives in time gives the
job that outcome (``_late_exit``), so nothing runs twice. Heartbeats drive anti-entropy
(hpcbatch.model.reconcile) and GPU health.

Part of the engine (hpcbatch.head.engine): it changes jobs only through the engine's moves
(``ReportHost``) and nodes through its registry.
"""

from __future__ import annotations

import logging
from typing import Protocol

from hpcbatch import protocol as p
from hpcbatch.errors import HpcbatchError
from hpcbatch.head import gpus as head_gpus
from hpcbatch.head.commits import CommitBatcher
from hpcbatch.head.faults import FaultInjection, MessageFaults, Outcome, Quarantined
from hpcbatch.head.gangs import EXITED_REASON, Gangs
from hpcbatch.head.logs import LogStore
from hpcbatch.head.nodes import NodeInfo, NodeRegistry
from hpcbatch.head.preempting import Preemptions
from hpcbatch.model.decisions import AttemptEnd, Verdict, attempt_verdict
from hpcbatch.model.jobs import Attempt, JobRecord
from hpcbatch.model.lifecycle import JobEvent, JobStatus
from hpcbatch.model.multinode import split_child_id
from hpcbatch.model.reconcile import reconcile
from hpcbatch.scheduler import Event, JobWithdrawn

log = logging.getLogger("hpcbatch.engine")

NO_LONGER_CURRENT = "Attempt is no longer current"


def message_ids(msg: p.Message) -> tuple[str, str]:
    """(job id, attempt id) a message is about, where it names them ("" where not)."""
    return str(getattr(msg, "job_id", "") or ""), str(getattr(msg, "attempt_id", "") or "")


class ReportHost(Protocol):
    """What serving agent reports needs of the engine."""

    jobs: dict[str, JobRecord]
    registry: NodeRegistry
    commits: CommitBatcher
    logs: LogStore
    faults: MessageFaults
    gangs: Gangs
    preemptions: Preemptions

    def move(self, job: JobRecord, event: JobEvent, reason: str | None) -> None: ...
    def touch(self, job: JobRecord) -> None: ...
    def feed(self, event: Event) -> None: ...
    def event_id(self) -> str: ...
    def requeue(self, job: JobRecord) -> None: ...
    def request_step(self) -> None: ...
    def now_ms(self) -> int: ...
    def finish_attempt(self, job: JobRecord, end: AttemptEnd, *, stopped_at: int | None = None,
                       lost: bool = False, hold_s: float = 0.0, retry: bool = True) -> None: ...
    def drop_hold(self, job: JobRecord) -> None: ...
    def release_fence(self, job_id: str) -> None: ...
    def node_up(self, name: str) -> None: ...
    def node_changed(self, name: str) -> None: ...
    def announce(self, name: str) -> None: ...
    def start_message(self, job: JobRecord, attempt: Attempt) -> p.StartAttempt: ...


class AgentReports:
    """Serves the messages agents send; see the module docstring."""

    def __init__(self, host: ReportHost, *, reconcile_after: int, injection: FaultInjection | None) -> None:
        self._host = host
        # Anti-entropy (hpcbatch.model.reconcile): heartbeats an attempt may go unlisted before the head asks.
        self._reconcile_after = reconcile_after
        self._injection = injection  # test-only fault injection (RAISE_ON_ENV; tests/chaos)

    def handle(self, node: str, msg: p.AgentMessage) -> None:
        """Serve one message from a registered node, contained: a handler that raises fails only
        what the message is about (``message_failed``), never the head. A ``Reports`` is its
        items served one after another, each contained as if it came alone."""
        if isinstance(msg, p.Reports):
            for item in msg.items:
                self.handle(node, item)
            return
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
                    self._host.gangs.launch_request(node, msg)
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
        job_id, attempt_id = message_ids(msg)
        self._host.faults.served(node, msg.__struct_config__.tag, attempt_id or job_id)

    def _inject(self, msg: p.Message) -> None:
        """The test-only fault hook (``RAISE_ON_ENV``): raise on the chosen kind of message and job."""
        if self._injection is not None:
            job_id, _ = message_ids(msg)
            job = self._host.jobs.get(job_id)
            self._injection.check(msg.__struct_config__.tag, job_id, job.job_name if job is not None else None)

    def message_failed(self, node: str, msg: p.Message, exc: BaseException) -> None:
        """A handler raised on ``msg`` from ``node``: log it with the message's type and ids, and
        do what hpcbatch.head.faults decides (fail its attempt, refuse it, set it aside, drop it)."""
        kind = str(msg.__struct_config__.tag)
        job_id, attempt_id = message_ids(msg)
        cause = f"{type(exc).__name__}: {exc}"
        decided = self._host.faults.failure(node, kind, attempt_id or job_id)
        tries = self._host.faults.tries.get((node, kind, attempt_id or job_id), 0)
        log.error("node %s: the head failed on a %r message (job %s, attempt %s), try %d: %s", node, kind,
                  job_id or "-", attempt_id or "-", tries, cause, exc_info=exc)
        try:
            if decided in (Outcome.QUARANTINE_AND_FAIL, Outcome.QUARANTINE):
                info = self._host.registry.ensure(node)
                if self._host.faults.set_aside(info.quarantined, Quarantined(kind, job_id, attempt_id, tries, cause,
                                                                       self._host.now_ms())):
                    log.error("node %s: %r message of job %s, attempt %s quarantined after %d tries", node, kind,
                              job_id or "-", attempt_id or "-", tries)
            if decided is Outcome.QUARANTINE_AND_FAIL:
                self._host.commits.send(node, p.AckExits(attempt_ids=[attempt_id]))  # the agent stops resending it
                self._fail_attempt(node, job_id, attempt_id,
                                   f"The head could not process the attempt's exit report ({tries} tries): {cause}")
            elif decided is Outcome.FAIL_AND_KILL:
                self._host.commits.send(node, p.KillAttempt(attempt_id=attempt_id, reason=cause, grace_s=0))
                self._fail_attempt(node, job_id, attempt_id, f"The head could not process the attempt's start: {cause}")
            elif decided is Outcome.REFUSE and isinstance(msg, p.LaunchRequest | p.TaskExited):
                to = node if isinstance(msg, p.LaunchRequest) else msg.origin
                if to:  # a client's task (origin "") has no node to tell
                    self._host.commits.send(to, p.LaunchDone(launch_id=msg.launch_id, exit_code=None, error=cause))
        except Exception:  # failing the attempt failed too: it stays as it is; the log says why
            log.exception("node %s: could not fail the attempt of a %r message (job %s, attempt %s)", node, kind,
                          job_id or "-", attempt_id or "-")
        self._host.request_step()

    def _fail_attempt(self, node: str, job_id: str, attempt_id: str, reason: str) -> None:
        """End the attempt a failed message was about, FAILED with ``reason`` (never retried:
        its command may have run to completion, and running it again is not ours to decide)."""
        job = self._current(node, job_id, attempt_id)
        if job is None:
            return
        self._host.finish_attempt(job, AttemptEnd(None, None, reason), retry=False)

    def _reconcile(self, name: str, node: NodeInfo, listed: list[str]) -> None:
        """Anti-entropy (hpcbatch.model.reconcile): the heartbeat's running set against the head's view."""
        expected: dict[str, bool] = {}
        jobs: dict[str, JobRecord] = {}
        for job_id in node.jobs:
            job = self._host.jobs.get(job_id)
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
            self._host.commits.send(name, p.KillAttempt(attempt_id=attempt_id, reason=NO_LONGER_CURRENT,
                                                  grace_s=0))
        for attempt_id in decided.started:  # its AttemptStarted was lost, or is behind
            self._mark_started(jobs[attempt_id], self._host.now_ms())
        for attempt_id in decided.ask:
            job = jobs[attempt_id]
            attempt = job.current_attempt
            assert attempt is not None
            log.info("node %s has not listed attempt %s of job %s for %d heartbeats: asking", name,
                     attempt_id[:8], job.job_id, decided.misses[attempt_id])
            self._host.commits.send(name, self._host.start_message(job, attempt))
        for attempt_id in decided.lost:
            job = jobs[attempt_id]
            missed = node.missing.pop(attempt_id, 0)
            log.warning("node %s: attempt %s of job %s unlisted for %d heartbeats and unreported: lost", name,
                        attempt_id[:8], job.job_id, missed)
            why = f"Attempt lost: the agent on {name} has not listed it for {missed} heartbeats"
            self._host.finish_attempt(job, AttemptEnd(None, None, why), lost=True)
        if decided.kill or decided.started or decided.ask or decided.lost:
            self._host.request_step()

    def _current(self, node: str, job_id: str, attempt_id: str) -> JobRecord | None:
        job = self._host.jobs.get(job_id)
        if job is None:
            return None
        attempt = job.current_attempt
        if attempt is None or attempt.attempt_id != attempt_id or attempt.node != node:
            return None
        return job

    def on_started(self, node: str, msg: p.AttemptStarted) -> None:
        job = self._current(node, msg.job_id, msg.attempt_id)
        if job is None:
            self._host.commits.send(node, p.KillAttempt(attempt_id=msg.attempt_id, reason=NO_LONGER_CURRENT, grace_s=0))
            self._host.request_step()
            return
        # The agent just said it runs: the heartbeats that missed it while it was STARTING (a
        # long image pull) must not count against it running (hpcbatch.model.reconcile). A
        # short job that ends before the next heartbeat is unlisted in it, its exit report
        # still behind: with the pull's misses kept, it was failed as lost at once.
        registered = self._host.registry.get(node)
        if registered is not None:
            registered.missing.pop(msg.attempt_id, None)
        self._mark_started(job, msg.started_at)

    def _mark_started(self, job: JobRecord, started_at: int) -> None:
        attempt = job.current_attempt
        assert attempt is not None
        attempt.started_at = started_at
        if job.started_at is None:
            job.started_at = started_at
        if job.status is JobStatus.STARTING:
            self._host.move(job, JobEvent.STARTED, None)
        parent = self._host.jobs.get(job.parent_id) if job.parent_id else None
        if parent is not None and job.node_index == parent.main_node and parent.current_attempt is not None:
            self._mark_started(parent, started_at)

    def on_exited(self, node: str, msg: p.AttemptExited) -> None:
        """An attempt ended; acknowledged once the outcome is committed."""
        job = self._current(node, msg.job_id, msg.attempt_id)
        held_id = msg.job_id if self._host.registry.held(msg.job_id) is not None else split_child_id(msg.job_id)[0]
        hold = self._host.registry.held(held_id)
        if job is None and self._late_exit(node, msg):
            pass  # a lost attempt's real end: the job takes it, nothing runs again
        elif hold is not None and hold.attempt_id == msg.attempt_id:  # the lost attempt ended: retry now
            self._host.release_fence(held_id)
        if job is not None:
            attempt = job.current_attempt
            assert attempt is not None
            if attempt.started_at is None and msg.started_at is not None:
                self._mark_started(job, msg.started_at)
            end = AttemptEnd(msg.exit_code, msg.reason, msg.status_reason, timed_out=msg.timed_out)
            self._host.finish_attempt(job, end, stopped_at=msg.stopped_at, lost=msg.lost)
        self._host.commits.send(node, p.AckExits(attempt_ids=[msg.attempt_id]))
        self._host.request_step()

    def on_task_exited(self, node: str, msg: p.TaskExited) -> None:
        """A launched task ended on ``node``: tell the launcher's node (none for a client's task)."""
        error = msg.reason if msg.exit_code is None else None
        if msg.origin:
            self._host.commits.send(msg.origin, p.LaunchDone(launch_id=msg.launch_id, exit_code=msg.exit_code, error=error))
        elif msg.exit_code is None:
            log.warning("task %s on %s (hpcbatch run --jobid) did not run: %s", msg.launch_id[:8], node, error)
        self._host.request_step()

    def on_log(self, msg: p.LogChunk) -> None:
        try:
            self._host.logs.write(msg.attempt_id, msg.offset, msg.data, read_at_ms=msg.read_at_ms or self._host.now_ms(),
                            stored_at_ms=self._host.now_ms(), job_id=msg.job_id)
        except OSError as exc:  # disk full: lose this chunk of output, not the head
            log.error("could not keep %d bytes of output of attempt %s: %s", len(msg.data), msg.attempt_id, exc)

    def on_register(self, name: str, msg: p.Register) -> p.Welcome | None:
        """A node (re)joined: reconcile what it runs with what the store says it should."""
        node, shortfall = self._host.registry.register(name, msg, self._host.now_ms())
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
                self._host.commits.send(name, p.KillAttempt(attempt_id=running.attempt_id, reason=NO_LONGER_CURRENT, grace_s=0))
                continue
            node.jobs.add(job.job_id)
            allocations.append((job.job_id, job.resources))
            if job.status is JobStatus.STARTING:
                self._mark_started(job, running.started_at)
            self._host.preemptions.resend(name, job, running.attempt_id)  # a head restarted mid-preemption
        finished = {e.job_id for e in msg.exited}
        for job_id in sorted(node.jobs - reported - finished):
            job = self._host.jobs.get(job_id)
            attempt = job.current_attempt if job else None
            if job is None or attempt is None or attempt.node != name:
                node.jobs.discard(job_id)
            elif job.status is JobStatus.STARTING:
                # The start may never have left the head before a crash: send it again
                # (agents start an attempt id at most once).
                allocations.append((job.job_id, job.resources))
                self._host.commits.send(name, self._host.start_message(job, attempt))
            else:
                self._host.finish_attempt(job, AttemptEnd(None, None, f"Attempt lost: the agent on {name} no longer runs it"), lost=True)
        # Retries held for this node's lost attempts: those it no longer runs are provably
        # over; one it still runs was just told to die, and its exit report releases it.
        alive = {r.attempt_id for r in msg.running}
        for job_id, hold in self._host.registry.holds_on(name):
            if hold.attempt_id in alive:
                hold.still_running = True
            elif self._maybe_starting(job_id, hold.attempt_id):
                # Lost before it ran: the agent may still be starting it (an image pull), and a
                # starting attempt is listed nowhere. It is told to die; its exit releases the retry.
                hold.still_running = True
                self._host.commits.send(name, p.KillAttempt(attempt_id=hold.attempt_id, reason=NO_LONGER_CURRENT,
                                                            grace_s=0))
            else:
                self._host.release_fence(job_id)
        node.allocations = tuple(allocations)
        self._host.node_up(name)
        self._host.node_changed(name)
        offsets = {
            r.attempt_id: {"output": self._host.logs.size(r.attempt_id)} for r in msg.running
        }
        return p.Welcome(head_id="", heartbeat_interval_s=0, liveness=0, log_offsets=offsets)

    def _maybe_starting(self, job_id: str, attempt_id: str) -> bool:
        """The held attempt ``attempt_id`` of ``job_id`` was never heard running (it was lost STARTING)."""
        job = self._host.jobs.get(job_id)
        attempt = next((a for a in job.attempts if a.attempt_id == attempt_id), None) if job is not None else None
        return attempt is not None and attempt.started_at is None

    def _lost_attempt(self, node: str, job_id: str, attempt_id: str) -> tuple[JobRecord, Attempt] | None:
        """The job whose last attempt (on ``node``) the head gave up as lost and whose retry has not started."""
        job = self._host.jobs.get(job_id)
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
        self._host.move(job, JobEvent.ADOPTED, None)  # the scheduler learns it from the node's allocations
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
        self._host.drop_hold(job)
        self._host.feed(JobWithdrawn(self._host.event_id(), job.job_id))  # its retry, if it was queued already
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
            self._host.move(job, JobEvent.LOST_ATTEMPT_SUCCEEDED, EXITED_REASON)
        elif verdict is Verdict.RETRY:
            job.started_at = None
            job.status_reason = attempt.status_reason
            self._host.touch(job)
            self._host.requeue(job)
        else:
            job.stopped_at = attempt.stopped_at
            self._host.move(job, JobEvent.LOST_ATTEMPT_FAILED, attempt.status_reason)
        return True

    def on_images(self, name: str, msg: p.ImagesCached) -> None:
        info = self._host.registry.get(name)
        if info is not None:
            info.images = list(msg.images)

    def on_heartbeat(self, name: str, msg: p.AgentHeartbeat | None = None) -> None:
        node = self._host.registry.heartbeat(name, self._host.now_ms())
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
                a.attempt_id: a for j in node.jobs if (job := self._host.jobs.get(j)) and (a := job.current_attempt)
            }
            for attempt_id, attempt in attempts.items():
                head_gpus.record_usage(attempt, [u for u in msg.gpu_usage if u.attempt_id == attempt_id])
        new = {gpu: why for gpu, why in msg.unhealthy_gpus.items() if gpu not in node.gpu_unhealthy}
        if new and node.facts is not None and node.up:
            for gpu, why in new.items():
                log.error("node %s: GPU %s out of service: %s", name, gpu, why)
            self._host.registry.gpus_out(name, new)
            self._host.announce(name)
