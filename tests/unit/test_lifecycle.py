"""The job state machine: AWS Batch's lifecycle as one table, everything else illegal."""

from __future__ import annotations

import itertools

import botocore.session
import pytest

from hpcbatch.model.lifecycle import (
    TRANSITIONS,
    IllegalTransition,
    JobEvent,
    JobStatus,
    can_apply,
    next_status,
)

S, E = JobStatus, JobEvent

# AWS Batch job states (docs: "Job states"), written out independently of the module.
LEGAL: dict[tuple[JobStatus, JobEvent], JobStatus] = {
    # SUBMITTED: accepted; goes PENDING with unmet dependencies, else RUNNABLE.
    (S.SUBMITTED, E.WAIT_DEPENDENCIES): S.PENDING,
    (S.SUBMITTED, E.READY): S.RUNNABLE,
    (S.SUBMITTED, E.CANCEL): S.FAILED,
    (S.SUBMITTED, E.TERMINATE): S.FAILED,
    (S.SUBMITTED, E.DEPENDENCY_FAILED): S.FAILED,
    # PENDING: waits on dependencies.
    (S.PENDING, E.READY): S.RUNNABLE,
    (S.PENDING, E.CANCEL): S.FAILED,
    (S.PENDING, E.TERMINATE): S.FAILED,
    (S.PENDING, E.DEPENDENCY_FAILED): S.FAILED,
    # Array parents: PENDING while their children run, then the children's outcome.
    (S.SUBMITTED, E.ARRAY_STARTED): S.PENDING,
    (S.PENDING, E.ARRAY_SUCCEEDED): S.SUCCEEDED,
    (S.PENDING, E.ARRAY_FAILED): S.FAILED,
    # RUNNABLE: in the queue, waiting for a node.
    (S.RUNNABLE, E.PLACED): S.STARTING,
    (S.RUNNABLE, E.CANCEL): S.FAILED,
    (S.RUNNABLE, E.TERMINATE): S.FAILED,
    # RUNNABLE after a lost attempt, its retry not started: the attempt turned out alive,
    # or ended, and that stands (at most once: the command does not run again).
    (S.RUNNABLE, E.ADOPTED): S.RUNNING,
    (S.RUNNABLE, E.LOST_ATTEMPT_SUCCEEDED): S.SUCCEEDED,
    (S.RUNNABLE, E.LOST_ATTEMPT_FAILED): S.FAILED,
    # STARTING: sent to a node; an attempt may end before its start is reported.
    (S.STARTING, E.STARTED): S.RUNNING,
    (S.STARTING, E.SUCCEEDED): S.SUCCEEDED,
    (S.STARTING, E.ATTEMPT_FAILED_RETRY): S.RUNNABLE,
    (S.STARTING, E.ATTEMPT_FAILED_FINAL): S.FAILED,
    # RUNNING: ends, or goes back to RUNNABLE for another attempt.
    (S.RUNNING, E.SUCCEEDED): S.SUCCEEDED,
    (S.RUNNING, E.ATTEMPT_FAILED_RETRY): S.RUNNABLE,
    (S.RUNNING, E.ATTEMPT_FAILED_FINAL): S.FAILED,
}

ALL_PAIRS = list(itertools.product(JobStatus, JobEvent))


@pytest.mark.parametrize(("status", "event"), list(LEGAL), ids=lambda v: v.value)
def test_every_legal_transition_leads_where_aws_batch_says(
    status: JobStatus, event: JobEvent
) -> None:
    assert next_status("job-1", status, event) is LEGAL[(status, event)]
    assert can_apply(status, event)


def test_the_table_holds_exactly_the_legal_transitions() -> None:
    assert TRANSITIONS == LEGAL


@pytest.mark.parametrize(
    ("status", "event"), [p for p in ALL_PAIRS if p not in LEGAL], ids=lambda v: v.value
)
def test_every_other_move_is_illegal(status: JobStatus, event: JobEvent) -> None:
    assert not can_apply(status, event)
    with pytest.raises(IllegalTransition):
        next_status("job-1", status, event)


@pytest.mark.parametrize("status", [S.SUCCEEDED, S.FAILED])
@pytest.mark.parametrize("event", list(JobEvent), ids=lambda v: v.value)
def test_final_states_accept_nothing(status: JobStatus, event: JobEvent) -> None:
    assert not can_apply(status, event)
    with pytest.raises(IllegalTransition):
        next_status("job-1", status, event)


def test_illegal_transition_names_the_job_the_state_and_the_event() -> None:
    with pytest.raises(IllegalTransition) as info:
        next_status("0f1e-abc", S.SUCCEEDED, E.CANCEL)
    err = info.value
    assert (err.job_id, err.status, err.event) == ("0f1e-abc", S.SUCCEEDED, E.CANCEL)
    message = str(err)
    assert "0f1e-abc" in message and "SUCCEEDED" in message and "cancel" in message


def test_illegal_transition_does_not_chain_the_lookup_error() -> None:
    with pytest.raises(IllegalTransition) as info:
        next_status("j", S.RUNNING, E.PLACED)
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("status", [S.STARTING, S.RUNNING])
def test_cancel_does_not_move_a_job_that_already_holds_a_node(status: JobStatus) -> None:
    # AWS: CancelJob leaves STARTING/RUNNING jobs alone; TerminateJob kills the attempt,
    # and the job then ends through the attempt's final failure.
    assert not can_apply(status, E.CANCEL)
    assert next_status("j", status, E.ATTEMPT_FAILED_FINAL) is S.FAILED


def test_a_retried_job_can_run_again() -> None:
    path = [E.READY, E.PLACED, E.STARTED, E.ATTEMPT_FAILED_RETRY, E.PLACED, E.STARTED, E.SUCCEEDED]
    status = S.SUBMITTED
    seen = [status]
    for event in path:
        status = next_status("j", status, event)
        seen.append(status)
    assert seen == [
        S.SUBMITTED,
        S.RUNNABLE,
        S.STARTING,
        S.RUNNING,
        S.RUNNABLE,
        S.STARTING,
        S.RUNNING,
        S.SUCCEEDED,
    ]


def test_every_state_is_reachable_from_submitted() -> None:
    reached = {S.SUBMITTED}
    frontier = [S.SUBMITTED]
    while frontier:
        status = frontier.pop()
        for (src, _), dst in TRANSITIONS.items():
            if src is status and dst not in reached:
                reached.add(dst)
                frontier.append(dst)
    assert reached == set(JobStatus)


@pytest.mark.parametrize("status", list(JobStatus), ids=lambda v: v.value)
def test_final_and_active_flags(status: JobStatus) -> None:
    assert status.is_final == (status in (S.SUCCEEDED, S.FAILED))
    assert status.is_active == (status in (S.STARTING, S.RUNNING))


def test_states_are_exactly_aws_batch_job_status_enum() -> None:
    aws = botocore.session.get_session().get_service_model("batch").shape_for("JobStatus").enum
    assert [s.value for s in JobStatus] == list(aws)


def test_states_store_as_plain_text() -> None:
    assert JobStatus("RUNNABLE") is S.RUNNABLE
    assert S.RUNNING == "RUNNING"
