"""ListJobs through the real service over a real store, on both backends (SQLite and
PostgreSQL, tests/unit/test_store.py's ``target``): the store selects and pages; the
service finds the parent and who may see it; hpcbatch.head.joblist reads the request.
No cluster: the engine is built over the store and never started.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.auth.policy import Caller
from hpcbatch.errors import ClientError, NotFoundError
from hpcbatch.head.engine import Engine
from hpcbatch.head.logs import LogStore
from hpcbatch.head.service import BatchService
from hpcbatch.model.jobs import Attempt
from hpcbatch.model.lifecycle import JobStatus
from hpcbatch.store import open_store
from tests.unit.test_store import job, target  # noqa: F401  (target: the backends fixture)

ALICE = Caller(user="alice", role="user", via="socket")
BOB = Caller(user="bob", role="user", via="socket")
S = JobStatus


@pytest.fixture
def service(target: str, tmp_path: Path) -> Iterator[BatchService]:  # noqa: F811
    store = open_store(target)
    try:
        engine = Engine(store, LogStore(tmp_path / "logs"), send=lambda n, m: None, clock_ms=lambda: 1)
        svc = BatchService(store, engine, region="local", account="0")
        store.put_resource("queue", "q", 1, "VALID", {"jobQueueName": "q"})
        yield svc
    finally:
        store.close()


def listed(service: BatchService, caller: Caller = ALICE, **body: Any) -> list[str]:
    return [s["jobId"] for s in service.ListJobs(body, caller)["jobSummaryList"]]


def test_a_queue_is_listed_newest_first_a_page_at_a_time(service: BatchService) -> None:
    service.store.put_jobs([job(f"j{i:02d}", created_at=i, status=S.RUNNING) for i in range(7)])
    service.store.put_jobs([job("done", created_at=99, status=S.SUCCEEDED), job("j03#0", parent_id="j03", node_index=0)])
    seen, token, pages = [], None, 0
    while True:
        body: dict[str, Any] = {"jobQueue": "arn:aws:batch:local:0:job-queue/q", "maxResults": 3}
        if token:
            body["nextToken"] = token
        out = service.ListJobs(body, ALICE)
        seen += [s["jobId"] for s in out["jobSummaryList"]]
        pages += 1
        token = out.get("nextToken")
        if not token:
            break
    assert seen == [f"j{i:02d}" for i in range(6, -1, -1)] and pages == 3  # RUNNING only, by default
    assert listed(service, jobQueue="q", jobStatus="SUCCEEDED") == ["done"]


def test_filters_replace_the_status_and_are_matched_by_the_store(service: BatchService) -> None:
    service.store.put_jobs([
        job("a", name="train-1", created_at=10, status=S.SUCCEEDED),
        job("b", name="Train-2", created_at=20, status=S.RUNNABLE, owner="bob"),
        job("c", name="eval", created_at=30),
    ])  # fmt: skip
    assert listed(service, filters=[{"name": "JOB_NAME", "values": ["train*"]}]) == ["b", "a"]
    assert listed(service, filters=[{"name": "AFTER_CREATED_AT", "values": ["20"]}]) == ["c", "b"]
    assert listed(service, filters=[{"name": "OWNER", "values": ["bob"]}]) == ["b"]
    jobdef = "arn:aws:batch:eu-west-1:123456789012:job-definition/d:1"
    assert listed(service, filters=[{"name": "JOB_DEFINITION", "values": [jobdef]}]) == ["c", "b", "a"]


@pytest.mark.parametrize(("body", "message"), [
    ({"filters": [{"values": ["x"]}]}, "filters[0].name is required"),
    ({"filters": [{"name": "JOB_NAME", "values": []}]}, "filters JOB_NAME: give one value"),
    ({"filters": [{"name": "BEFORE_CREATED_AT", "values": ["yesterday"]}]}, "value must be epoch milliseconds"),
    ({"filters": [{"name": "COLOUR", "values": ["x"]}]}, "filters name COLOUR is not one of JOB_NAME"),
    ({"filters": [{"name": "JOB_DEFINITION", "values": ["arn:aws:batch:r:1:job-definition/d*"]}]},
     "an asterisk"),
    ({"nextToken": "not-ours"}, "nextToken is not a token this API returned"),
])  # fmt: skip
def test_a_bad_request_is_one_line_naming_the_field(service: BatchService, body: dict[str, Any], message: str) -> None:
    with pytest.raises(ClientError, match=message.replace("[", r"\[").replace("]", r"\]")):
        service.ListJobs(body, ALICE)


def test_under_private_data_a_user_lists_only_their_own_jobs(service: BatchService) -> None:
    service.store.put_jobs([job("a", status=S.RUNNING), job("b", owner="bob", status=S.RUNNING)])
    assert sorted(listed(service)) == ["a", "b"]
    service.private_data = True
    assert listed(service) == ["a"] and listed(service, BOB) == ["b"]
    assert listed(service, filters=[{"name": "OWNER", "values": ["bob"]}]) == []


def test_a_multi_node_jobs_nodes_are_listed_in_order_and_matched_by_status(service: BatchService) -> None:
    service.store.put_jobs([
        job("g", num_nodes=12, status=S.RUNNING),
        *[job(f"g#{i}", parent_id="g", node_index=i, num_nodes=12, status=S.RUNNING) for i in range(12)],
    ])  # fmt: skip
    service.store.put_jobs([job("g#10", parent_id="g", node_index=10, num_nodes=12, status=S.SUCCEEDED)])
    assert listed(service, multiNodeJobId="g") == [f"g#{i}" for i in range(12)]
    assert listed(service, multiNodeJobId="g", jobStatus="SUCCEEDED") == ["g#10"]
    assert listed(service, multiNodeJobId="g#3") == []  # a node has no nodes
    with pytest.raises(NotFoundError, match="jobId nope does not exist"):
        listed(service, multiNodeJobId="nope")
    service.private_data = True
    assert listed(service, BOB, multiNodeJobId="g") == []


def test_an_arrays_children_are_listed_placed_or_not_in_index_order(service: BatchService) -> None:
    parent = job("arr", array_size=12, array_next=11, status=S.PENDING)
    service.store.put_jobs([parent])
    service.store.put_jobs([
        job(f"arr:{i}", array_parent="arr", array_index=i, status=S.SUCCEEDED if i % 2 else S.RUNNING)
        for i in range(11)
    ])  # fmt: skip
    children = service.ListJobs({"arrayJobId": "arr"}, ALICE)["jobSummaryList"]
    assert [c["arrayProperties"]["index"] for c in children] == list(range(12))
    assert children[11]["status"] == "RUNNABLE" and children[11]["jobId"] == "arr:11"  # not placed yet
    assert listed(service, arrayJobId="arr", jobStatus="SUCCEEDED") == [f"arr:{i}" for i in range(1, 11, 2)]
    assert listed(service, arrayJobId="arr", jobStatus="RUNNABLE") == ["arr:11"]
    assert listed(service, arrayJobId="arr:3") == []  # a child is no array


def test_a_job_is_listed_as_the_engine_holds_it_now(service: BatchService) -> None:
    stored = job("a", status=S.RUNNING, attempts=[Attempt(attempt_id="a1", node="n1", compute_environment="ce", log_stream_name="s")])
    service.store.put_jobs([stored])

    async def recover() -> None:  # the engine holds it live, as a head that restarts does
        service.engine.recover()

    asyncio.run(recover())
    live = service.engine.job("a")
    assert live is not None
    live.status_reason = "live"
    assert service.ListJobs({}, ALICE)["jobSummaryList"][0]["statusReason"] == "live"
