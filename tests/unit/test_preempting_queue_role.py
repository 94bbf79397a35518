"""Only an admin makes a job queue preempting (hpcbatch.auth.policy.check_preempting_queue):
a preempting queue's jobs stop other users' running jobs, which a developer may not do.
Through the real service over a real SQLite store, by CreateJobQueue and TagResource."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hpcbatch.auth.policy import AccessDenied, Caller
from hpcbatch.head.service import BatchService
from tests.unit.service_bed import batch_service

ADMIN = Caller(user="root", role="admin", via="socket")
DEV = Caller(user="dev", role="developer", via="socket")
CE = [{"order": 1, "computeEnvironment": "ce"}]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[BatchService]:
    yield from batch_service(tmp_path)


def run(service: BatchService, check: Callable[[], None]) -> None:
    async def inside() -> None:
        service.CreateComputeEnvironment({"computeEnvironmentName": "ce", "type": "UNMANAGED"}, ADMIN)
        check()

    asyncio.run(inside())


def test_a_developer_may_not_make_a_queue_preempting_but_may_do_the_rest(service: BatchService) -> None:
    def check() -> None:
        preempts = {"hpcbatch:preempts": "true"}
        with pytest.raises(AccessDenied, match=r'make job queue hi preempting \(tags\["hpcbatch:preempts"\]\).*admin'):
            service.CreateJobQueue({"jobQueueName": "hi", "priority": 10, "computeEnvironmentOrder": CE,
                                    "tags": preempts}, DEV)
        assert service.DescribeJobQueues({"jobQueues": ["hi"]}, ADMIN)["jobQueues"] == []  # nothing stored
        service.CreateJobQueue({"jobQueueName": "hi", "priority": 10, "computeEnvironmentOrder": CE}, DEV)
        arn = service.arn("job-queue", "hi")
        with pytest.raises(AccessDenied, match="needs role admin"):
            service.TagResource({"resourceArn": arn, "tags": {"hpcbatch:preempts": "TRUE"}}, DEV)
        assert service.ListTagsForResource({"resourceArn": arn}, DEV)["tags"] == {}
        service.TagResource({"resourceArn": arn, "tags": {"hpcbatch:preemptible": "true", "team": "a"}}, DEV)
        service.TagResource({"resourceArn": arn, "tags": preempts}, ADMIN)  # an admin may
        service.TagResource({"resourceArn": arn, "tags": {"team": "b"}}, DEV)  # it stays on: no change to it
        service.UntagResource({"resourceArn": arn, "tagKeys": ["hpcbatch:preempts"]}, DEV)  # turning it off is fine
        assert service.ListTagsForResource({"resourceArn": arn}, DEV)["tags"] == {
            "hpcbatch:preemptible": "true", "team": "b"}

    run(service, check)
