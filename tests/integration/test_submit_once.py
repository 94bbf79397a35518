"""A submit is done once: client tokens, retries after a dropped connection, kill -9 of the head.

Also ListJobs' filters and paging as boto3 sees them, on the same (real) head. One cluster
for the module; the test that kills the head runs last.
"""

from __future__ import annotations

import secrets
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO

import pytest

from hpcbatch.client import CLIENT_TOKEN_TAG, Client, HeadUnreachableError
from hpcbatch.errors import ClientError
from tests.harness import TestCluster

EVERY_STATUS = [{"name": "AFTER_CREATED_AT", "values": ["0"]}]


@pytest.fixture(scope="module")
def once(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    c = TestCluster(tmp_path_factory.mktemp("once"), nodes=1)
    try:
        yield c.up()
    finally:
        c.close()


@pytest.fixture(scope="module")
def key(once: TestCluster) -> tuple[str, str]:
    """An admin's access key: over TCP every request is signed (SigV4)."""
    created = once.client.call("/hpcbatch/v1/createaccesskey", {"user": "root", "role": "admin"})
    return created["accessKeyId"], created["secretAccessKey"]


def _boto3(c: TestCluster, key: tuple[str, str]) -> Any:
    import boto3

    return boto3.client("batch", endpoint_url=c.endpoint, region_name="local",
                        aws_access_key_id=key[0], aws_secret_access_key=key[1])


def _named(c: TestCluster, name: str) -> list[str]:
    page = c.client.list_jobs(jobQueue="default", filters=[{"name": "JOB_NAME", "values": [name]}])
    return [j["jobId"] for j in page["jobSummaryList"]]


def _body(name: str, token: str | None = None, command: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"jobName": name, "jobQueue": "default", "jobDefinition": "hpcbatch-default",
                            "containerOverrides": {"command": command or ["true"]}}
    if token is not None:
        body["tags"] = {CLIENT_TOKEN_TAG: token, "team": "a"}
    return body


# ---------------------------------------------------------------------- a tiny proxy
def _read_message(f: BinaryIO) -> bytes | None:
    """One HTTP/1.1 request or response with a Content-Length body; None at end of file."""
    head = b""
    while True:
        line = f.readline()
        if not line:
            return None
        head += line
        if line in (b"\r\n", b"\n"):
            break
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + f.read(length)


class DroppingProxy:
    """Forwards HTTP requests to the head; for the next ``drop`` of them it reads the head's
    answer (so the head has committed what the request did) and then closes the client's
    connection instead of passing the answer on: a network that fails at the worst moment."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.drop = 0
        self.forwarded: list[bytes] = []  # the request lines the head answered
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        with client, socket.create_connection(self.target) as head:
            from_client, from_head = client.makefile("rb"), head.makefile("rb")
            while (request := _read_message(from_client)) is not None:
                head.sendall(request)
                answer = _read_message(from_head)
                if answer is None:
                    return
                self.forwarded.append(request.split(b"\r\n", 1)[0])
                if self.drop > 0:
                    self.drop -= 1
                    return  # done on the head; the client hears nothing
                client.sendall(answer)

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def proxy(once: TestCluster) -> Iterator[DroppingProxy]:
    host, _, port = once.endpoint.removeprefix("http://").partition(":")
    p = DroppingProxy((host, int(port)))
    try:
        yield p
    finally:
        p.close()


# ----------------------------------------------------------------------------- tests
def test_a_second_submit_with_the_same_token_returns_the_first_job(once: TestCluster) -> None:
    name = f"twice-{secrets.token_hex(3)}"
    first = once.client.submit_job(**_body(name, "tok-1"))
    again = once.client.submit_job(**_body(name, "tok-1"))
    assert again == first
    assert _named(once, name) == [first["jobId"]]
    # The token is a control field, not one of the job's tags.
    assert once.job(first["jobId"])["tags"] == {"team": "a"}


def test_a_token_reused_with_another_request_is_refused_naming_it(once: TestCluster) -> None:
    name = f"reuse-{secrets.token_hex(3)}"
    first = once.client.submit_job(**_body(name, "tok-2"))
    with pytest.raises(ClientError, match=f"{CLIENT_TOKEN_TAG} tok-2: .*already used for job {first['jobId']}"):
        once.client.submit_job(**_body(name, "tok-2", ["echo", "other"]))
    assert _named(once, name) == [first["jobId"]]


def test_boto3_sends_the_token_as_a_tag(once: TestCluster, key: tuple[str, str]) -> None:
    batch = _boto3(once, key)
    name = f"boto-{secrets.token_hex(3)}"
    first = batch.submit_job(**_body(name, "tok-boto"))
    again = batch.submit_job(**_body(name, "tok-boto"))
    assert again["jobId"] == first["jobId"]
    assert _named(once, name) == [first["jobId"]]


def test_a_submit_whose_answer_is_lost_after_the_commit_makes_exactly_one_job(
    once: TestCluster, key: tuple[str, str], proxy: DroppingProxy
) -> None:
    name = f"dropped-{secrets.token_hex(3)}"
    with Client(proxy.endpoint, timeout=10, credentials=key) as client:
        proxy.drop = 1
        job = client.submit_job(**_body(name))  # a fresh token; the first answer never arrives
    assert [line.split()[1] for line in proxy.forwarded] == [b"/v1/submitjob", b"/v1/submitjob"]
    assert _named(once, name) == [job["jobId"]]


def test_a_plain_submit_whose_answer_is_lost_is_not_sent_again(
    once: TestCluster, key: tuple[str, str], proxy: DroppingProxy
) -> None:
    name = f"plain-{secrets.token_hex(3)}"
    with Client(proxy.endpoint, timeout=10, credentials=key) as client:
        proxy.drop = 1
        with pytest.raises(HeadUnreachableError, match="may have been done"):
            client.call("/v1/submitjob", _body(name))  # no token: the client cannot know
    assert len(proxy.forwarded) == 1
    assert len(_named(once, name)) == 1


def test_boto3_pages_job_definition_filters_full_with_next_token(once: TestCluster, key: tuple[str, str]) -> None:
    tag = secrets.token_hex(3)
    arns = {}
    for name, revisions in ((f"pd{tag}", 2), (f"pd{tag}x", 1)):
        for _ in range(revisions):
            registered = once.client.register_job_definition(
                jobDefinitionName=name, type="container",
                containerProperties={"command": ["true"], "resourceRequirements": [
                    {"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "64"}]})
            arns[f"{name}:{registered['revision']}"] = registered["jobDefinitionArn"]
    plan = {f"pd{tag}:1": 5, f"pd{tag}:2": 4, f"pd{tag}x:1": 3}
    submitted: dict[str, list[str]] = {}
    for jobdef, count in plan.items():
        submitted[jobdef] = [once.submit(["true"], jobDefinition=jobdef) for _ in range(count)]
    batch = _boto3(once, key)

    def pages(value: str) -> list[list[str]]:
        paginator = batch.get_paginator("list_jobs")
        filters = [{"name": "JOB_DEFINITION", "values": [value]}]
        return [[j["jobId"] for j in page["jobSummaryList"]]
                for page in paginator.paginate(jobQueue="default", filters=filters, PaginationConfig={"PageSize": 2})]

    by_name = pages(f"pd{tag}")
    assert [len(p) for p in by_name] == [2, 2, 2, 2, 1]  # full pages while matches remain
    assert sorted(sum(by_name, [])) == sorted(submitted[f"pd{tag}:1"] + submitted[f"pd{tag}:2"])
    assert sorted(sum(pages(f"pd{tag}:2"), [])) == sorted(submitted[f"pd{tag}:2"])
    assert sorted(sum(pages(arns[f"pd{tag}:1"]), [])) == sorted(submitted[f"pd{tag}:1"])
    assert len(sum(pages(f"pd{tag}*"), [])) == 12
    with pytest.raises(Exception, match="asterisk"):
        pages(arns[f"pd{tag}:1"] + "*")


def test_without_status_or_filter_only_running_jobs_are_listed(once: TestCluster, key: tuple[str, str]) -> None:
    done = once.submit(["true"], jobName="done")
    once.wait_status(done, "SUCCEEDED")
    running = once.submit(["sleep", "60"], jobName="running")
    try:
        once.wait_status(running, "RUNNING")
        listed = {j["jobId"]: j["status"] for j in _boto3(once, key).list_jobs(jobQueue="default")["jobSummaryList"]}
        assert running in listed and done not in listed
        assert set(listed.values()) == {"RUNNING"}
        every = once.client.list_jobs(jobQueue="default", filters=EVERY_STATUS, maxResults=1000)
        assert {done, running} <= {j["jobId"] for j in every["jobSummaryList"]}
    finally:
        once.client.terminate_job(jobId=running, reason="test over")


def test_a_token_survives_kill_9_of_the_head(once: TestCluster) -> None:
    name = f"killed-{secrets.token_hex(3)}"
    first = once.client.submit_job(**_body(name, "tok-kill"))  # answered: committed with its token
    once.kill("head", signal.SIGKILL)
    once.start_head()
    again = once.client.submit_job(**_body(name, "tok-kill"))
    assert again["jobId"] == first["jobId"]
    assert _named(once, name) == [first["jobId"]]
