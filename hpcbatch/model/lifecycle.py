"""The job state machine: every legal move of a job, in one table.

Rules / theory of operation (AWS Batch semantics):

* A job is SUBMITTED when accepted, PENDING while it waits on dependencies, RUNNABLE when
  it may be placed, STARTING once the head has chosen a node and sent the attempt,
  RUNNING when the agent reports the process started, and SUCCEEDED or FAILED at the end.
* An attempt that ends badly sends the job back to RUNNABLE when ``retryStrategy`` says
  retry and attempts remain; otherwise the job FAILS. Cancel acts only before STARTING;
  terminate acts at any state (a running attempt is killed first and never retried).
* A lost attempt (its node went silent) sends the job back to RUNNABLE, its retry held
  until the node has fenced it. When the node comes back still running that attempt, the
  job is RUNNING again with it (ADOPTED); when it reports the attempt's real exit before
  the retry started, the job takes that outcome (LOST_ATTEMPT_SUCCEEDED / _FAILED)
  instead of running the command a second time.
* SUCCEEDED and FAILED are final: nothing moves a job out of them.

Anything not in ``TRANSITIONS`` is illegal and raises ``IllegalTransition`` naming the
job, its state and the event, so a bug shows up as a clear error instead of a silently
corrupted job.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """AWS Batch's JobStatus enum, stored as plain text."""

    SUBMITTED = "SUBMITTED"
    PENDING = "PENDING"
    RUNNABLE = "RUNNABLE"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED)

    @property
    def is_active(self) -> bool:
        """True while the job holds (or is about to hold) a node."""
        return self in (JobStatus.STARTING, JobStatus.RUNNING)


class JobEvent(StrEnum):
    """What can happen to a job; the table below says where each leads."""

    WAIT_DEPENDENCIES = "wait_dependencies"
    READY = "ready"
    PLACED = "placed"
    STARTED = "started"
    SUCCEEDED = "succeeded"
    ATTEMPT_FAILED_RETRY = "attempt_failed_retry"
    ATTEMPT_FAILED_FINAL = "attempt_failed_final"
    CANCEL = "cancel"
    TERMINATE = "terminate"
    DEPENDENCY_FAILED = "dependency_failed"
    ARRAY_STARTED = "array_started"  # an array parent waits while its children run
    ARRAY_SUCCEEDED = "array_succeeded"
    ARRAY_FAILED = "array_failed"
    ADOPTED = "adopted"  # a lost attempt is alive after all, and its retry has not started
    LOST_ATTEMPT_SUCCEEDED = "lost_attempt_succeeded"  # ... or it ended, and that outcome stands
    LOST_ATTEMPT_FAILED = "lost_attempt_failed"


S, E = JobStatus, JobEvent

TRANSITIONS: dict[tuple[JobStatus, JobEvent], JobStatus] = {
    (S.SUBMITTED, E.WAIT_DEPENDENCIES): S.PENDING,
    (S.SUBMITTED, E.READY): S.RUNNABLE,
    (S.SUBMITTED, E.CANCEL): S.FAILED,
    (S.SUBMITTED, E.TERMINATE): S.FAILED,
    (S.SUBMITTED, E.DEPENDENCY_FAILED): S.FAILED,
    (S.PENDING, E.READY): S.RUNNABLE,
    # Array parents stay PENDING while their children (JOBID:i) run, then take their outcome.
    (S.SUBMITTED, E.ARRAY_STARTED): S.PENDING,
    (S.PENDING, E.ARRAY_SUCCEEDED): S.SUCCEEDED,
    (S.PENDING, E.ARRAY_FAILED): S.FAILED,
    (S.PENDING, E.CANCEL): S.FAILED,
    (S.PENDING, E.TERMINATE): S.FAILED,
    (S.PENDING, E.DEPENDENCY_FAILED): S.FAILED,
    (S.RUNNABLE, E.PLACED): S.STARTING,
    (S.RUNNABLE, E.CANCEL): S.FAILED,
    (S.RUNNABLE, E.TERMINATE): S.FAILED,
    (S.RUNNABLE, E.ADOPTED): S.RUNNING,
    (S.RUNNABLE, E.LOST_ATTEMPT_SUCCEEDED): S.SUCCEEDED,
    (S.RUNNABLE, E.LOST_ATTEMPT_FAILED): S.FAILED,
    (S.STARTING, E.STARTED): S.RUNNING,
    # An attempt can end before its "started" report is processed (a very short job, or
    # one that could not start at all), so STARTING accepts every ending.
    (S.STARTING, E.SUCCEEDED): S.SUCCEEDED,
    (S.STARTING, E.ATTEMPT_FAILED_RETRY): S.RUNNABLE,
    (S.STARTING, E.ATTEMPT_FAILED_FINAL): S.FAILED,
    (S.RUNNING, E.SUCCEEDED): S.SUCCEEDED,
    (S.RUNNING, E.ATTEMPT_FAILED_RETRY): S.RUNNABLE,
    (S.RUNNING, E.ATTEMPT_FAILED_FINAL): S.FAILED,
}


class IllegalTransition(Exception):
    """A move the state machine does not allow; always a bug or a race to report."""

    def __init__(self, job_id: str, status: JobStatus, event: JobEvent) -> None:
        super().__init__(f"job {job_id}: cannot apply {event.value!r} in state {status.value}")
        self.job_id, self.status, self.event = job_id, status, event


def next_status(job_id: str, status: JobStatus, event: JobEvent) -> JobStatus:
    """Return the state ``event`` leads to from ``status``, or raise IllegalTransition."""
    try:
        return TRANSITIONS[(status, event)]
    except KeyError:
        raise IllegalTransition(job_id, status, event) from None


def can_apply(status: JobStatus, event: JobEvent) -> bool:
    """True when ``event`` is legal in ``status``."""
    return (status, event) in TRANSITIONS
