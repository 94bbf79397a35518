"""Preemption settings of job queues and the warning signal: tags, parsed and checked (pure)."""

from __future__ import annotations

import pytest

from hpcbatch.errors import ClientError
from hpcbatch.head import sched_events
from hpcbatch.model import interrupts
from hpcbatch.validation import validate_request

QUEUE_ARN = "arn:aws:batch:us-east-1:123456789012:job-queue/lo"


def _queue(tags: dict[str, str]) -> dict:
    return {"jobQueueName": "lo", "priority": 1, "state": "ENABLED", "tags": tags,
            "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": "arn:x/ce"}]}


def test_queue_tags_reach_the_scheduler_event() -> None:
    event = sched_events.job_queue_changed("e1", _queue({"hpcbatch:preemptible": "TRUE"}), None)
    assert event.preemptible and not event.preempts
    event = sched_events.job_queue_changed("e2", _queue({"hpcbatch:preempts": "true"}), None)
    assert event.preempts and not event.preemptible
    assert not sched_events.job_queue_changed("e3", _queue({}), None).preempts


def test_create_job_queue_accepts_boolean_preemption_tags() -> None:
    body = {"jobQueueName": "lo", "priority": 1, "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": "c"}],
            "tags": {"hpcbatch:preempts": "false", "hpcbatch:preemptible": "true"}}
    validate_request("CreateJobQueue", body)


@pytest.mark.parametrize("op, body", [
    ("CreateJobQueue", {"jobQueueName": "lo", "priority": 1, "tags": {"hpcbatch:preemptible": "sometimes"},
                        "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": "c"}]}),
    ("TagResource", {"resourceArn": QUEUE_ARN, "tags": {"hpcbatch:preempts": "maybe"}}),
])
def test_a_bad_preemption_setting_names_the_tag(op: str, body: dict) -> None:
    with pytest.raises(ClientError) as err:
        validate_request(op, body)
    assert 'tags["hpcbatch:' in str(err.value) and "true or false" in str(err.value)


@pytest.mark.parametrize("text, expected", [("USR1@60", ("USR1", 60)), ("sigusr2@5", ("USR2", 5)),
                                            ("TERM@1", ("TERM", 1))])
def test_signal_parses(text: str, expected: tuple[str, int]) -> None:
    spec = interrupts.parse_signal(text)
    assert (spec.name, spec.seconds) == expected


@pytest.mark.parametrize("text, words", [("USR1", "SIGNAL@SECONDS"), ("KILL@10", "not one a job can catch"),
                                         ("USR1@0", "at least 1"), ("BOGUS@3", "not one")])
def test_bad_signal_is_refused_with_why(text: str, words: str) -> None:
    assert words in (interrupts.signal_error(text, None) or "")


def test_signal_must_fit_in_the_timeout() -> None:
    body = {"jobName": "j", "jobQueue": "q", "jobDefinition": "d", "timeout": {"attemptDurationSeconds": 60},
            "tags": {"hpcbatch:signal": "USR1@90"}}
    with pytest.raises(ClientError) as err:
        validate_request("SubmitJob", body)
    assert 'tags["hpcbatch:signal"]' in str(err.value) and "timeout" in str(err.value)
    body["tags"] = {"hpcbatch:signal": "USR1@60"}
    validate_request("SubmitJob", body)


def test_unreadable_stored_signal_reads_as_none() -> None:
    assert interrupts.warning_signal({"hpcbatch:signal": "junk"}) is None
    assert interrupts.warning_signal({"hpcbatch:signal": "USR1@7"}) == interrupts.WarningSignal("USR1", 7)
