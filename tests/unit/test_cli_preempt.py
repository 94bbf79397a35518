"""The CLI's preemption flags: ``submit --signal`` and ``queue create/update --preempts/--preemptible``,
against a stub head that records what was sent (the tags AWS clients can send too)."""

from __future__ import annotations

import pytest

from tests.unit.test_cli import run, sent
from tests.unit.test_cli import stub as stub  # noqa: F401 - the fixture
from tests.unit.test_client import StubHead

QUEUE = {"jobQueueName": "lo", "jobQueueArn": "arn:aws:batch:us-east-1:123456789012:job-queue/lo"}


def test_submit_signal_becomes_the_tag(stub: StubHead) -> None:  # noqa: F811
    result = run("submit", "--signal", "sigusr1@60", "--timeout", "120", "--", "sleep", "1")
    assert result.exit_code == 0, result.output
    assert sent(stub, "/v1/submitjob")["tags"] == {"hpcbatch:signal": "USR1@60"}


@pytest.mark.parametrize("args, words", [
    (["--signal", "KILL@5"], "not one a job can catch"),
    (["--signal", "USR1"], "SIGNAL@SECONDS"),
    (["--signal", "USR1@90", "--timeout", "60"], "must not exceed"),
])
def test_submit_refuses_a_bad_signal_naming_the_flag(stub: StubHead, args: list[str], words: str) -> None:  # noqa: F811
    result = run("submit", *args, "--", "true")
    assert result.exit_code != 0 and "--signal" in result.output and words in result.output
    assert stub.bodies("/v1/submitjob") == []


def test_queue_create_preempt_flags_become_tags(stub: StubHead) -> None:  # noqa: F811
    stub.answers["/v1/createjobqueue"] = QUEUE
    result = run("queue", "create", "hi", "--ce", "default", "--priority", "10", "--preempts")
    assert result.exit_code == 0, result.output
    assert sent(stub, "/v1/createjobqueue")["tags"] == {"hpcbatch:preempts": "true"}


def test_queue_update_tags_then_updates(stub: StubHead) -> None:  # noqa: F811
    stub.answers["/v1/describejobqueues"] = {"jobQueues": [QUEUE]}
    stub.answers["/v1/updatejobqueue"] = QUEUE
    stub.answers["/hpcbatch/v1/tagresource"] = {}
    result = run("queue", "update", "lo", "--preemptible", "--no-preempts")
    assert result.exit_code == 0, result.output
    paths = [path for path, _b in stub.requests]
    assert paths == ["/v1/describejobqueues", "/hpcbatch/v1/tagresource", "/v1/updatejobqueue"]
    assert stub.requests[1][1] == {"resourceArn": QUEUE["jobQueueArn"],
                                   "tags": {"hpcbatch:preempts": "false", "hpcbatch:preemptible": "true"}}
    assert sent(stub, "/v1/updatejobqueue") == {"jobQueue": "lo"}

