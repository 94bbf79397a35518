"""The Python client against a stub head (a tiny http.server thread with canned answers)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from hpcbatch.client import (
    CLIENT_TOKEN_TAG,
    OPERATIONS,
    Client,
    HeadUnreachableError,
    resolve_endpoint,
)
from hpcbatch.errors import ClientError, NotFoundError, ServerError
from hpcbatch.operations import OPERATIONS as OPERATION_TABLE

Answer = dict[str, Any] | tuple[int, dict[str, Any]] | Callable[[dict[str, Any]], Any]


class StubHead:
    """An HTTP server that records POSTed JSON bodies and answers from ``self.answers``.

    An answer is a dict (HTTP 200), ``(status, dict)``, or a callable of the request body
    returning either. ``drop_after_reply`` closes each connection after answering without
    saying so (what a head does to an idle keep-alive connection).
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.answers: dict[str, Answer] = {}
        self.connections = 0
        self.drop_after_reply = False
        self.drop_next = 0  # this many requests are read, then their connection closed unanswered
        self.chunked = False
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # as aiohttp does; else 40 ms delayed ACKs

            def setup(self) -> None:
                super().setup()
                stub.connections += 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                stub.requests.append((self.path, body))
                if stub.drop_next > 0:  # read (maybe done), and the answer lost
                    stub.drop_next -= 1
                    self.close_connection = True
                    return
                answer: Any = stub.answers.get(self.path, {})
                if callable(answer):
                    answer = answer(body)
                status, doc = answer if isinstance(answer, tuple) else (200, answer)
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if stub.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    half = len(data) // 2
                    for part in (data[:half], data[half:], b""):
                        self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                else:
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                if stub.drop_after_reply:
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body in self.requests if p == path]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[StubHead]:
    head = StubHead()
    try:
        yield head
    finally:
        head.stop()


@pytest.fixture
def client(stub: StubHead) -> Iterator[Client]:
    with Client(stub.endpoint, timeout=5) as c:
        yield c


def test_every_operation_has_a_blocking_and_an_async_method() -> None:
    assert OPERATIONS["submit_job"] == "/v1/submitjob"
    assert OPERATIONS["describe_compute_environments"] == "/v1/describecomputeenvironments"
    assert OPERATIONS["get_job_logs"] == "/hpcbatch/v1/getjoblogs"
    assert OPERATIONS["list_events"] == "/hpcbatch/v1/listevents"
    assert len(OPERATIONS) == len(OPERATION_TABLE)  # every operation the head serves (hpcbatch.operations)
    assert OPERATIONS["tag_resource"] == "/hpcbatch/v1/tagresource"
    for name in OPERATIONS:
        assert callable(getattr(Client, name)), name
        assert callable(getattr(Client, name + "_async")), name


def test_list_events_posts_the_cursor_and_only_the_filters_given(stub: StubHead, client: Client) -> None:
    stub.answers["/hpcbatch/v1/listevents"] = {"events": [], "lastEventId": 7, "more": False}
    assert client.list_events(afterEventId=5, jobQueue="q")["lastEventId"] == 7
    assert client.list_events_async(jobId="j-1", maxResults=10).result(timeout=5)["lastEventId"] == 7
    assert stub.requests == [
        ("/hpcbatch/v1/listevents", {"afterEventId": 5, "waitSeconds": 0, "jobQueue": "q"}),
        ("/hpcbatch/v1/listevents", {"afterEventId": 0, "waitSeconds": 0, "maxResults": 10, "jobId": "j-1"}),
    ]
    with pytest.raises(ClientError, match="waitSeconds"):  # the long poll would outlast the client
        client.list_events(waitSeconds=60)
    assert len(stub.requests) == 2


def test_aws_operations_post_the_keyword_arguments_as_the_body(
    stub: StubHead, client: Client
) -> None:
    stub.answers["/v1/submitjob"] = {"jobId": "j-1", "jobName": "hi", "jobArn": "arn:j-1"}
    answer = client.submit_job(jobName="hi", jobQueue="default", jobDefinition="hpcbatch-default")
    assert answer["jobId"] == "j-1"
    [(path, body)] = stub.requests
    token = body.pop("tags").pop(CLIENT_TOKEN_TAG)  # every submit carries a fresh token
    assert len(token) == 32
    assert (path, body) == (
        "/v1/submitjob",
        {"jobName": "hi", "jobQueue": "default", "jobDefinition": "hpcbatch-default"},
    )


def test_async_twins_return_futures_and_run_concurrently(stub: StubHead) -> None:
    # All eight must be in the head at once: a barrier of eight opens only then (no timing).
    barrier = threading.Barrier(8, timeout=30)

    def together(body: dict[str, Any]) -> dict[str, Any]:
        barrier.wait()
        return {"jobs": [{"jobId": body["jobs"][0], "status": "RUNNING"}]}

    stub.answers["/v1/describejobs"] = together
    with Client(stub.endpoint, max_workers=8) as c:
        futures = [c.describe_jobs_async(jobs=[f"j{i}"]) for i in range(8)]
        assert all(isinstance(f, Future) for f in futures)
        ids = [f.result()["jobs"][0]["jobId"] for f in futures]
    assert ids == [f"j{i}" for i in range(8)]
    assert not barrier.broken  # 8 in parallel, not in series


def test_one_thread_keeps_one_keep_alive_connection(stub: StubHead) -> None:
    with Client(stub.endpoint, max_workers=1) as c:
        for _ in range(5):
            c.list_nodes()
    assert stub.connections == 1


def test_a_dropped_keep_alive_connection_is_reopened_once(stub: StubHead) -> None:
    stub.drop_after_reply = True
    with Client(stub.endpoint, max_workers=1) as c:
        for _ in range(3):
            assert c.list_nodes() == {}
    assert len(stub.requests) == 3  # each request reached the head exactly once
    assert stub.connections == 3


def test_chunked_answers_are_read(stub: StubHead, client: Client) -> None:
    stub.chunked = True
    stub.answers["/v1/listjobs"] = {"jobSummaryList": [{"jobId": "a"}] * 50}
    assert len(client.list_jobs()["jobSummaryList"]) == 50
    assert len(client.list_jobs()["jobSummaryList"]) == 50


def test_4xx_raises_client_error_with_the_heads_message(stub: StubHead, client: Client) -> None:
    stub.answers["/v1/submitjob"] = (
        400,
        {"__type": "ClientException", "message": "retryStrategy.attempts must be between 1 and 10"},
    )
    with pytest.raises(ClientError, match="^retryStrategy.attempts must be between 1 and 10$"):
        client.submit_job(jobName="x")


def test_5xx_raises_server_error(stub: StubHead, client: Client) -> None:
    stub.answers["/v1/listjobs"] = (500, {"__type": "ServerException", "message": "disk full"})
    with pytest.raises(ServerError, match="disk full"):
        client.list_jobs()


def test_nothing_listening_raises_head_unreachable() -> None:
    with Client("http://127.0.0.1:1", timeout=2) as c:
        with pytest.raises(
            HeadUnreachableError, match=r"^cannot reach the hpcbatch head at http://127.0.0.1:1: "
        ):
            c.list_nodes()


def test_endpoint_comes_from_env_then_the_local_cluster_file(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPCBATCH_HOME", str(tmp_path))
    monkeypatch.delenv("HPCBATCH_ENDPOINT", raising=False)
    with pytest.raises(
        ClientError, match="no hpcbatch head found: start one with 'hpcbatch cluster up'"
    ):
        resolve_endpoint()
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "cluster.json").write_text(
        json.dumps({"endpoint": "http://127.0.0.1:9"})
    )
    assert resolve_endpoint() == "http://127.0.0.1:9"
    monkeypatch.setenv("HPCBATCH_ENDPOINT", "http://head:8471")
    assert resolve_endpoint() == "http://head:8471"
    assert Client("http://other:1").endpoint == "http://other:1"


def test_paginate_follows_next_token(stub: StubHead, client: Client) -> None:
    pages = {
        None: {"jobSummaryList": [{"jobId": "a"}, {"jobId": "b"}], "nextToken": "t1"},
        "t1": {"jobSummaryList": [{"jobId": "c"}]},
    }
    stub.answers["/v1/listjobs"] = lambda body: pages[body.get("nextToken")]
    ids = [j["jobId"] for j in client.paginate("list_jobs", "jobSummaryList", jobQueue="q")]
    assert ids == ["a", "b", "c"]
    assert stub.bodies("/v1/listjobs") == [{"jobQueue": "q"}, {"jobQueue": "q", "nextToken": "t1"}]


def test_wait_job_returns_the_final_job_detail(stub: StubHead, client: Client) -> None:
    states = iter(["RUNNABLE", "RUNNING", "SUCCEEDED"])
    stub.answers["/v1/describejobs"] = lambda body: {
        "jobs": [{"jobId": "j", "status": next(states)}]
    }
    assert client.wait_job("j", timeout=5, poll=0.01) == {"jobId": "j", "status": "SUCCEEDED"}


def test_wait_job_times_out(stub: StubHead, client: Client) -> None:
    stub.answers["/v1/describejobs"] = {"jobs": [{"jobId": "j", "status": "RUNNING"}]}
    with pytest.raises(TimeoutError):
        client.wait_job("j", timeout=0.2, poll=0.05)


def test_wait_job_on_an_unknown_id_is_not_found(stub: StubHead, client: Client) -> None:
    stub.answers["/v1/describejobs"] = {"jobs": []}
    with pytest.raises(NotFoundError, match="no job with id nope"):
        client.wait_job("nope", timeout=1)


def test_put_script_returns_the_script_id(stub: StubHead, client: Client) -> None:
    stub.answers["/hpcbatch/v1/putscript"] = {"scriptId": "sha256:abc"}
    assert client.put_script(b"#!/bin/sh\necho hi\n") == "sha256:abc"
    assert stub.requests[-1] == ("/hpcbatch/v1/putscript", {"script": "#!/bin/sh\necho hi\n"})
    assert client.put_script_async("x").result() == "sha256:abc"


def test_get_job_logs_sends_attempt_only_when_given(stub: StubHead, client: Client) -> None:
    client.get_job_logs("j")
    client.get_job_logs("j", attempt=1, startFromOffset=10)
    assert stub.bodies("/hpcbatch/v1/getjoblogs") == [
        {"jobId": "j", "startFromOffset": 0},
        {"jobId": "j", "attempt": 1, "startFromOffset": 10},
    ]


def test_a_bad_endpoint_is_a_client_error() -> None:
    with pytest.raises(ClientError, match="must start with http://, https:// or unix:"):
        Client("ftp://head:8471").list_nodes()


def test_only_reads_are_asked_again_of_the_next_head_after_a_broken_connection() -> None:
    from hpcbatch.client import READ_ONLY_PATHS

    assert {"/v1/describejobs", "/v1/listjobs", "/hpcbatch/v1/getjoblogs"} <= READ_ONLY_PATHS
    assert not {"/v1/submitjob", "/v1/terminatejob", "/v1/canceljob", "/v1/createjobqueue"} & READ_ONLY_PATHS


# -- retries ----------------------------------------------------------------------------------


@pytest.fixture
def sleeps(client: Client) -> list[float]:
    """The backoff waits ``client`` would sleep, recorded instead of slept."""
    waits: list[float] = []
    client._sleep = waits.append
    return waits


def test_every_submit_carries_a_fresh_client_token_and_keeps_one_given(stub: StubHead, client: Client) -> None:
    client.submit_job(jobName="a")
    client.submit_job(jobName="b")
    client.submit_job(jobName="c", tags={CLIENT_TOKEN_TAG: "mine", "team": "x"})
    tokens = [body["tags"][CLIENT_TOKEN_TAG] for body in stub.bodies("/v1/submitjob")]
    assert tokens[0] != tokens[1] and tokens[2] == "mine"
    assert stub.bodies("/v1/submitjob")[2]["tags"]["team"] == "x"


def test_a_read_is_sent_again_after_its_connection_broke(stub: StubHead, client: Client, sleeps: list[float]) -> None:
    stub.answers["/v1/describejobs"] = {"jobs": []}
    stub.drop_next = 1
    assert client.describe_jobs(jobs=["j"]) == {"jobs": []}
    assert len(stub.requests) == 2 and len(sleeps) == 1


def test_a_submit_with_a_token_is_sent_again_with_the_same_token(
    stub: StubHead, client: Client, sleeps: list[float]
) -> None:
    stub.answers["/v1/submitjob"] = {"jobId": "j-1"}
    stub.drop_next = 1  # the head may have committed the first: the token makes that harmless
    assert client.submit_job(jobName="x")["jobId"] == "j-1"
    first, second = stub.bodies("/v1/submitjob")
    assert first == second


def test_a_plain_write_is_never_sent_twice_after_its_connection_broke(
    stub: StubHead, client: Client, sleeps: list[float]
) -> None:
    stub.drop_next = 1
    with pytest.raises(HeadUnreachableError, match="may have been done"):
        client.cancel_job(jobId="j", reason="r")
    with pytest.raises(HeadUnreachableError, match="may have been done"):
        stub.drop_next = 1
        client.call("/v1/submitjob", {"jobName": "x"})  # no token: not resent
    assert [p for p, _ in stub.requests] == ["/v1/canceljob", "/v1/submitjob"]
    assert sleeps == []


@pytest.mark.parametrize("status", [429, 503])
def test_throttled_and_unavailable_answers_are_retried_with_jittered_backoff(
    stub: StubHead, client: Client, sleeps: list[float], status: int
) -> None:
    answers = iter([(status, {"__type": "TooManyRequestsException", "message": "slow down"})] * 2 + [{}])
    stub.answers["/v1/canceljob"] = lambda body: next(answers)  # refused unseen: even a write retries
    assert client.cancel_job(jobId="j", reason="r") == {}
    assert len(stub.requests) == 3
    assert 0 <= sleeps[0] <= 1 and 0 <= sleeps[1] <= 2  # boto3 standard: random up to 2**(n-1) s


def test_retries_stop_after_three_attempts_in_all(stub: StubHead, client: Client, sleeps: list[float]) -> None:
    stub.answers["/v1/listjobs"] = (429, {"__type": "TooManyRequestsException", "message": "slow down"})
    with pytest.raises(ClientError, match="slow down"):
        client.list_jobs()
    assert len(stub.requests) == 3 and len(sleeps) == 2


def test_aws_max_attempts_sets_the_number_of_attempts(stub: StubHead, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    stub.answers["/v1/listjobs"] = (503, {"__type": "ServerException", "message": "busy"})
    with Client(stub.endpoint, timeout=5) as c, pytest.raises(ServerError, match="busy"):
        c.list_jobs()
    assert len(stub.requests) == 1


def test_server_errors_are_not_retried(stub: StubHead, client: Client, sleeps: list[float]) -> None:
    stub.answers["/v1/canceljob"] = (500, {"__type": "ServerException", "message": "disk full"})
    with pytest.raises(ServerError, match="disk full"):
        client.cancel_job(jobId="j", reason="r")  # the head may have done part of it
    assert len(stub.requests) == 1
