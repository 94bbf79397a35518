"""The head's job decisions as pure functions: did an attempt succeed, is it retried, are a
job's dependencies met.

They sit beside ``should_retry`` and ``attempt_succeeded`` (hpcbatch.model.jobs), which they
combine: facts in (the job, how its attempt ended, which jobs are still live), a verdict out.
No store, no clock: the engine gathers the facts (a finished dependency is read from the
store there) and applies the verdict through the job transition table
(hpcbatch.model.lifecycle).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

from hpcbatch.model.jobs import JobRecord, attempt_succeeded, should_retry

DEPENDENCY_FAILED_REASON = "Dependent Job failed"
SHOWN_DEPENDENCIES = 5  # a PENDING job's statusReason names at most this many


class Verdict(StrEnum):
    """How a job goes on after its attempt ended."""

    SUCCEEDED = "succeeded"
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True)
class AttemptEnd:
    """How an attempt ended, as facts (``status_reason``: the reported one, which
    evaluateOnExit's ``onStatusReason`` matches)."""

    exit_code: int | None
    reason: str | None
    status_reason: str | None = None
    timed_out: bool = False
    terminated: bool = False
    preempted_by: str | None = None  # stopped so this job could start (hpcbatch.scheduler.preempt)


def attempt_verdict(job: JobRecord, end: AttemptEnd, *, may_retry: bool = True) -> Verdict:
    """SUCCEEDED when the command exited 0 on its own; else RETRY where the job's retry
    strategy says so (and ``may_retry``: a failure the head made is never retried); else FAILED.

    A preempted attempt is retried whatever it exited with (it was stopped, not finished)
    and whatever retryStrategy says (it does not count, as AWS treats a Spot interruption),
    unless the job was cancelled or terminated meanwhile. ``job.attempts`` must already
    hold the attempt that ended (attempts are counted).
    """
    if end.preempted_by is not None and not (job.is_cancelled or job.is_terminated):
        return Verdict.RETRY
    if attempt_succeeded(end.exit_code, end.reason, timed_out=end.timed_out, terminated=end.terminated):
        return Verdict.SUCCEEDED
    if may_retry and should_retry(job, end.exit_code, end.reason, end.status_reason, timed_out=end.timed_out):
        return Verdict.RETRY
    return Verdict.FAILED


class Dependencies(StrEnum):
    """Where a job's (whole-job) dependencies stand."""

    NONE = "none"  # it names none: it is ready from the start
    MET = "met"  # every one finished, none failed
    WAITING = "waiting"  # some are still live
    FAILED = "failed"  # one failed: the job fails too (AWS's "Dependent Job failed")


def job_dependencies(job: JobRecord) -> list[str]:
    """The jobs ``job`` waits on as a whole (array ``SEQUENTIAL``/``N_TO_N`` ones are the array's own)."""
    return [str(d["jobId"]) for d in job.depends_on if d.get("jobId") and not d.get("type")]


def dependency_state(job: JobRecord, live: Collection[str], failed: Collection[str] = ()) -> Dependencies:
    """Are ``job``'s dependencies met? ``live``: the job ids not yet finished; ``failed``:
    finished dependencies known to have FAILED (a failure wins over any still waiting)."""
    names = job_dependencies(job)
    if not names:
        return Dependencies.NONE
    if any(name in failed for name in names):
        return Dependencies.FAILED
    if any(name in live for name in names):
        return Dependencies.WAITING
    return Dependencies.MET


def dependency_wait_reason(job: JobRecord, live: Collection[str]) -> str:
    """Why a PENDING job waits (hpcbatch's wording; AWS leaves it empty): the jobs still unfinished."""
    left = [name for name in job_dependencies(job) if name in live]
    shown = ", ".join(left[:SHOWN_DEPENDENCIES])
    return f"Waiting for dependencies: {shown}{' ...' if len(left) > SHOWN_DEPENDENCIES else ''}"
