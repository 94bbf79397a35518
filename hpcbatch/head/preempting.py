"""Preemption in the head: the scheduler's ``PreemptAttempt`` carried out on a running job.

Rules / theory of operation (the choice of victims is the pure core's,
hpcbatch.scheduler.preemption; what a preempted attempt means for retries is
hpcbatch.model.decisions'):

* The victim's order is stored on it first (``JobRecord.preempting``: by whom, why), then
  its attempt is stopped as AWS stops a Spot-interrupted one, shortened: its warning signal
  (``hpcbatch:signal``, hpcbatch.model.interrupts) and SIGTERM at once, SIGKILL after
  ``preempt_grace_s``. A multi-node victim is stopped whole: every node, and its try ends
  with the preemption's reason.
* When the attempt ends, however it exited, it is marked ``preempted_by`` (a typed fact, not
  words in a reason) and the job goes back to RUNNABLE as a new attempt that does not count
  against ``retryStrategy.attempts``; its statusReason names the job it made room for.
* Durable: the order is committed with the step that sends the kill. A head restarted
  mid-preemption still knows it (the attempt's end is counted as a preemption), and when the
  victim's node registers again and still runs it, the stop is sent again (the kill may
  never have left the old head).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from hpcbatch.model.decisions import AttemptEnd
from hpcbatch.model.interrupts import warning_signal
from hpcbatch.model.jobs import GangEnding, JobRecord, PreemptOrder
from hpcbatch.scheduler import PreemptAttempt

if TYPE_CHECKING:  # typing only: the gangs part is the engine's, handed in
    from hpcbatch.head.gangs import Gangs
    from hpcbatch.head.nodes import NodeRegistry

log = logging.getLogger("hpcbatch.engine")


class PreemptHost(Protocol):
    """What preemption needs of the engine."""

    jobs: dict[str, JobRecord]
    registry: NodeRegistry
    gangs: Gangs

    def touch(self, job: JobRecord) -> None: ...
    def finish_attempt(self, job: JobRecord, end: AttemptEnd, *, stopped_at: int | None = None,
                       lost: bool = False, hold_s: float = 0.0, retry: bool = True) -> None: ...
    def kill(self, node: str, attempt_id: str, reason: str, *, grace_s: float | None = None,
             warning_signal: str | None = None) -> None: ...
    def request_step(self) -> None: ...


class Preemptions:
    """Carries out the scheduler's preemptions; see the module docstring."""

    def __init__(self, host: PreemptHost, grace_s: float) -> None:
        self._host = host
        self.grace_s = grace_s

    def preempt(self, action: PreemptAttempt) -> None:
        """Stop ``action.job_id``'s attempt so ``action.for_job`` can start."""
        job = self._host.jobs.get(action.job_id)
        if job is None or not job.status.is_active or job.parent_id is not None:
            return  # it ended meanwhile: its AttemptEnded frees the room
        if job.preempting is not None:
            return  # being stopped already (a restarted scheduler chose it again)
        job.preempting = PreemptOrder(by=action.for_job, reason=action.reason)
        self._host.touch(job)
        log.info("job %s: preempted for %s (grace %g s)", job.job_id, action.for_job, self.grace_s)
        try:
            self._stop(job)
        except Exception:  # contained: the victim runs on, its order stays (resent when its node registers)
            log.exception("job %s: could not stop it for %s", job.job_id, action.for_job)

    def _stop(self, job: JobRecord) -> None:
        order = job.preempting
        assert order is not None
        sig = _signal_name(job)
        if job.is_gang:
            if job.ending is None:  # the try ends with the preemption's words, whatever a node says later
                job.ending = GangEnding(status_reason=order.reason)
            self._host.gangs.kill(job, order.reason, grace_s=self.grace_s, warning_signal=sig)
            self._host.gangs.maybe_finish(job)
            return
        attempt = job.current_attempt
        if attempt is None:
            return
        node = self._host.registry.get(attempt.node)
        if node is None or not node.up:
            self._host.finish_attempt(job, AttemptEnd(None, None, order.reason))
        else:
            self._host.kill(attempt.node, attempt.attempt_id, order.reason, grace_s=self.grace_s, warning_signal=sig)
        self._host.request_step()

    def resend(self, node: str, job: JobRecord, attempt_id: str) -> None:
        """A registering ``node`` still runs ``attempt_id`` of ``job`` (or of a gang's node):
        if it is being preempted, tell the node again (the kill may have been lost)."""
        owner = self._host.jobs.get(job.parent_id) if job.parent_id is not None else job
        order = owner.preempting if owner is not None else None
        if owner is None or order is None:
            return
        self._host.kill(node, attempt_id, order.reason, grace_s=self.grace_s, warning_signal=_signal_name(owner))


def _signal_name(job: JobRecord) -> str | None:
    spec = warning_signal(job.tags)
    return spec.name if spec is not None else None
