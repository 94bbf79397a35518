"""The head's pure job decisions (hpcbatch.model.decisions): success, retry, dependencies."""

from __future__ import annotations

from typing import Any

import pytest

from hpcbatch.model.decisions import (
    AttemptEnd,
    Dependencies,
    Verdict,
    attempt_verdict,
    dependency_state,
    dependency_wait_reason,
    job_dependencies,
)
from hpcbatch.model.jobs import Attempt, JobRecord, ResourceRequest
from hpcbatch.model.lifecycle import JobStatus


def record(attempts: int = 1, **kw: Any) -> JobRecord:
    tries = [Attempt(attempt_id=f"a{i}", node="n1", compute_environment="ce", log_stream_name="s")
             for i in range(attempts)]
    base: dict[str, Any] = {
        "job_id": "j", "job_name": "j", "job_queue": "q", "job_queue_arn": "arn:q", "job_definition": "arn:d",
        "owner": "alice", "status": JobStatus.RUNNING, "created_at": 1, "command": ["true"], "environment": {},
        "resources": ResourceRequest(vcpus=1, memory_mib=64), "container": {}, "attempts": tries,
    }
    base.update(kw)
    return JobRecord(**base)


def test_exit_zero_on_its_own_succeeds() -> None:
    assert attempt_verdict(record(), AttemptEnd(0, None)) is Verdict.SUCCEEDED


@pytest.mark.parametrize("end", [
    AttemptEnd(0, "OutOfMemoryError"), AttemptEnd(0, None, timed_out=True), AttemptEnd(0, None, terminated=True),
])
def test_exit_zero_that_was_killed_timed_out_or_terminated_does_not_succeed(end: AttemptEnd) -> None:
    assert attempt_verdict(record(retry_attempts=1), end) is Verdict.FAILED


def test_a_failure_is_retried_while_attempts_remain() -> None:
    assert attempt_verdict(record(1, retry_attempts=3), AttemptEnd(1, None)) is Verdict.RETRY
    assert attempt_verdict(record(3, retry_attempts=3), AttemptEnd(1, None)) is Verdict.FAILED


def test_a_failure_the_head_made_is_never_retried() -> None:
    assert attempt_verdict(record(1, retry_attempts=3), AttemptEnd(None, None), may_retry=False) is Verdict.FAILED


def test_evaluate_on_exit_matches_the_reported_status_reason() -> None:
    job = record(1, retry_attempts=3, evaluate_on_exit=[{"onStatusReason": "Host*", "action": "EXIT"}])
    assert attempt_verdict(job, AttemptEnd(1, None, "Host EC2 terminated")) is Verdict.FAILED
    assert attempt_verdict(job, AttemptEnd(1, None, "Essential container exited")) is Verdict.RETRY


def test_timed_out_is_never_retried() -> None:
    assert attempt_verdict(record(1, retry_attempts=3), AttemptEnd(None, None, timed_out=True)) is Verdict.FAILED


def deps(*ids: str, typed: str | None = None) -> list[dict[str, str]]:
    return [{"jobId": i, **({"type": typed} if typed else {})} for i in ids]


def test_no_whole_job_dependencies_is_none() -> None:
    assert dependency_state(record(), live={"x"}) is Dependencies.NONE
    # An array's SEQUENTIAL / N_TO_N dependencies are the array's own, not the job's.
    assert dependency_state(record(depends_on=deps("x", typed="N_TO_N")), live={"x"}) is Dependencies.NONE


def test_dependencies_waiting_met_or_failed() -> None:
    job = record(depends_on=deps("a", "b"))
    assert job_dependencies(job) == ["a", "b"]
    assert dependency_state(job, live={"a"}) is Dependencies.WAITING
    assert dependency_state(job, live=set()) is Dependencies.MET
    assert dependency_state(job, live={"a"}, failed={"b"}) is Dependencies.FAILED  # a failure wins


def test_the_wait_reason_names_at_most_five_live_dependencies() -> None:
    job = record(depends_on=deps(*(f"j{i}" for i in range(7))))
    assert dependency_wait_reason(job, live={"j1", "j2"}) == "Waiting for dependencies: j1, j2"
    live = {f"j{i}" for i in range(7)}
    assert dependency_wait_reason(job, live=live) == "Waiting for dependencies: j0, j1, j2, j3, j4 ..."


def test_a_preempted_attempt_is_retried_whatever_it_exited_with_and_is_not_counted() -> None:
    job = record(1, retry_attempts=1)
    job.attempts[0].preempted_by = "hi-1"
    # exit 0 (it trapped SIGTERM and left cleanly) is not success: it was stopped, not finished
    assert attempt_verdict(job, AttemptEnd(0, None, preempted_by="hi-1")) is Verdict.RETRY
    assert attempt_verdict(job, AttemptEnd(None, None, preempted_by="hi-1")) is Verdict.RETRY
    # the next (counted) attempt still has retryStrategy.attempts=1 to itself: its failure is final
    job.attempts.append(Attempt(attempt_id="a1", node="n1", compute_environment="ce", log_stream_name="s"))
    assert attempt_verdict(job, AttemptEnd(1, None)) is Verdict.FAILED
    assert attempt_verdict(job, AttemptEnd(0, None)) is Verdict.SUCCEEDED


def test_preempted_attempts_do_not_use_up_retries() -> None:
    job = record(3, retry_attempts=2)
    job.attempts[0].preempted_by = job.attempts[1].preempted_by = "hi"
    assert attempt_verdict(job, AttemptEnd(1, None)) is Verdict.RETRY  # 1 counted of 2
    job.attempts[0].preempted_by = None
    assert attempt_verdict(job, AttemptEnd(1, None)) is Verdict.FAILED  # 2 counted of 2


def test_a_preempted_job_that_was_terminated_meanwhile_is_not_retried() -> None:
    assert attempt_verdict(record(1, is_terminated=True), AttemptEnd(None, None, terminated=True,
                                                                     preempted_by="hi")) is Verdict.FAILED
