"""CloudWatch Logs over the head's log store: line events, their stamps, tokens, patterns,
request shapes from botocore's model, and SigV4 scoped to service ``logs``.

The HTTP protocol, ownership and the real clients (boto3, the aws CLI) are in
tests/integration/test_aws_logs.py against a real head.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from unittest import mock

import botocore.auth
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDict, CIMultiDictProxy

from hpcbatch.auth.keys import AccessKey
from hpcbatch.auth.sigv4 import AuthError, SignedRequest, verify
from hpcbatch.head.cwlogs import (
    MAX_EVENT,
    CloudWatchLogs,
    FilterPattern,
    LogsError,
    StreamReader,
    validate,
)
from hpcbatch.head.logs import LogStore, Stamp

A = "0123456789abcdef0123456789abcdef"


def store_with(tmp_path: Path, chunks: list[tuple[bytes, int]]) -> LogStore:
    """A log store holding attempt ``A``'s output, chunk by chunk, each read at its time."""
    logs = LogStore(tmp_path / "logs")
    offset = 0
    for data, at in chunks:
        logs.write(A, offset, data, read_at_ms=at, stored_at_ms=at + 5, job_id="job-1")
        offset += len(data)
    return logs


def test_every_chunk_is_stamped_once_and_a_resent_chunk_keeps_its_first_time(tmp_path: Path) -> None:
    logs = store_with(tmp_path, [(b"one\ntw", 1000), (b"o\nthree\n", 2000)])
    logs.write(A, 0, b"one\ntw", read_at_ms=9000, job_id="job-1")  # after a reconnect
    logs.write(A, 4, b"two\nthree\nfour\n", read_at_ms=3000, job_id="job-1")  # overlaps, then new bytes
    assert logs.stamps(A) == [Stamp(0, 6, 1000, 1005), Stamp(6, 14, 2000, 2005), Stamp(14, 19, 3000, 3000)]
    assert logs.read(A, 0) == b"one\ntwo\nthree\nfour\n"  # the output file itself is unchanged in shape
    assert logs.job_of(A) == "job-1" and logs.attempts() == [A]
    logs.write("b" * 32, 0, b"old agent\n")  # no stamp given: an unstamped log, as before
    assert logs.stamps("b" * 32) == [] and logs.job_of("b" * 32) is None
    logs.delete(A)
    assert logs.stamps(A) == [] and logs.job_of(A) is None and logs.attempts() == []


def test_a_line_takes_the_time_of_the_chunk_that_ends_it(tmp_path: Path) -> None:
    logs = store_with(tmp_path, [(b"one\ntw", 1000), (b"o\n\nthree\n", 2000)])
    reader = StreamReader(logs, A, finished=False, fallback_ms=1)
    events, after = reader.scan(0, reader.end)
    assert [(e.message, e.timestamp, e.ingestion_time) for e in events] == [
        ("one", 1000, 1005), ("two", 2000, 2005), ("three", 2000, 2005)]  # the empty line is no event
    assert after == reader.end == logs.size(A)


def test_a_running_attempts_unfinished_line_is_held_back_until_it_stops(tmp_path: Path) -> None:
    logs = store_with(tmp_path, [(b"done\nhalf a li", 1000)])
    running = StreamReader(logs, A, finished=False, fallback_ms=1)
    assert running.end == 5 and [e.message for e in running.events(0, running.end)] == ["done"]
    stopped = StreamReader(logs, A, finished=True, fallback_ms=1)
    assert [e.message for e in stopped.events(0, stopped.end)] == ["done", "half a li"]


def test_a_line_longer_than_an_event_is_cut_from_its_start(tmp_path: Path) -> None:
    long = b"x" * (MAX_EVENT * 2 + 10)
    logs = store_with(tmp_path, [(b"a\n" + long + b"\nb\n", 1000)])
    reader = StreamReader(logs, A, finished=True, fallback_ms=1)
    sizes = [len(e.message) for e in reader.events(0, reader.end)]
    assert sizes == [1, MAX_EVENT, MAX_EVENT, 10, 1]
    assert reader.boundary_before(2 + MAX_EVENT + 7) == 2 + MAX_EVENT  # the same cuts, found backwards


def test_an_unstamped_log_reads_with_the_attempts_start(tmp_path: Path) -> None:
    logs = LogStore(tmp_path / "logs")
    logs.write(A, 0, b"from before the upgrade\n")
    reader = StreamReader(logs, A, finished=True, fallback_ms=42)
    assert [(e.message, e.timestamp) for e in reader.events(0, reader.end)] == [("from before the upgrade", 42)]


def test_a_time_finds_the_first_line_stamped_then_or_later(tmp_path: Path) -> None:
    logs = store_with(tmp_path, [(b"a\nb", 1000), (b"\nc\n", 2000), (b"d\n", 3000)])
    reader = StreamReader(logs, A, finished=True, fallback_ms=1)
    assert reader.position_at(None, 0) == 0
    assert reader.position_at(1500, 0) == 2  # "b" ends in the 2000 chunk: it starts at 2
    assert reader.position_at(3000, 0) == 6
    assert reader.position_at(9999, 0) == reader.end


@pytest.mark.parametrize(
    "pattern, matched",
    [
        ("", ["ERROR disk full", "WARN slow", "INFO ok", "error lower"]),
        ("ERROR", ["ERROR disk full"]),
        ("ERROR full", ["ERROR disk full"]),
        ('"disk full"', ["ERROR disk full"]),
        ('"full disk"', []),
        ("?ERROR ?WARN", ["ERROR disk full", "WARN slow"]),
        ("-ERROR -WARN", ["INFO ok", "error lower"]),
    ],
)
def test_filter_patterns_match_terms_phrases_any_and_none(pattern: str, matched: list[str]) -> None:
    messages = ["ERROR disk full", "WARN slow", "INFO ok", "error lower"]
    assert [m for m in messages if FilterPattern.parse(pattern).matches(m)] == matched


@pytest.mark.parametrize("pattern", ['{ $.level = "ERROR" }', "[ip, user]", '"unclosed', "%ERR.*%"])
def test_unsupported_or_broken_patterns_are_refused_by_name(pattern: str) -> None:
    with pytest.raises(LogsError) as info:
        FilterPattern.parse(pattern)
    assert info.value.aws_code == "InvalidParameterException" and "filterPattern" in info.value.message


@pytest.mark.parametrize(
    "operation, body, words",
    [
        ("GetLogEvents", {"logGroupName": "/aws/batch/job"}, "logStreamName is required"),
        ("GetLogEvents", {"logGroupName": "/aws/batch/job", "logStreamName": "s", "limit": 0}, "limit must be"),
        ("GetLogEvents", {"logGroupName": "/aws/batch/job", "logStreamName": "a:b"}, "logStreamName"),
        ("GetLogEvents", {"logStreamName": "s", "startTime": "soon"}, "startTime must be an integer"),
        ("FilterLogEvents", {"logGroupName": "/aws/batch/job", "bogus": 1}, "bogus is not a parameter"),
        ("DescribeLogStreams", {"logGroupName": "/aws/batch/job", "orderBy": "Size"}, "orderBy must be one of"),
        ("DescribeLogStreams", {"logGroupName": "/aws/batch/job", "limit": 51}, "limit must be between 1 and 50"),
    ],
)
def test_requests_are_checked_against_botocores_model(operation: str, body: dict[str, object], words: str) -> None:
    with pytest.raises(LogsError) as info:
        validate(operation, body)
    assert info.value.aws_code == "InvalidParameterException" and words in info.value.message


def test_unknown_log_groups_are_resource_not_found() -> None:
    class Store:
        def list_resources(self, kind: str) -> list[dict[str, object]]:
            return [{"status": "ACTIVE", "containerProperties": {
                "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "/team/a"}}}}]

    class Service:
        store = Store()

    logs = CloudWatchLogs(Service())
    assert logs.groups() == ["/aws/batch/job", "/team/a"]
    assert logs._group_name({"logGroupIdentifier": "arn:aws:logs:local:0:log-group:/team/a:*"}) == "/team/a"
    with pytest.raises(LogsError) as info:
        logs._group_name({"logGroupName": "/nope"})
    assert info.value.aws_code == "ResourceNotFoundException"
    with pytest.raises(LogsError) as info:
        logs._group_name({"logGroupName": "/team/a", "logGroupIdentifier": "/team/a"})
    assert info.value.aws_code == "InvalidParameterException"


# -- SigV4 with service "logs" -------------------------------------------------------------
KEY = AccessKey(access_key_id="AKIAHPCBATCHLOGS0001", secret_access_key="s" * 40, user="alice",
                role="user", status="Active", created_at=0)
SIGNED_AT = dt.datetime(2026, 11, 30, 1, 30, tzinfo=dt.UTC)


def logs_signed(service: str) -> tuple[CIMultiDictProxy[str], bytes]:
    """A GetLogEvents request as botocore's SigV4 signs it for ``service``."""
    body = json.dumps({"logGroupName": "/aws/batch/job", "logStreamName": "x"}).encode()
    request = AWSRequest(method="POST", url="http://head.example:8471/", data=body, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "Logs_20140328.GetLogEvents"})
    signer = SigV4Auth(Credentials(KEY.access_key_id, KEY.secret_access_key), service, "local")
    with mock.patch.object(botocore.auth, "get_current_datetime", lambda: SIGNED_AT.replace(tzinfo=None)):
        signer.add_auth(request)
    headers = CIMultiDict(request.headers.items())
    headers["Host"] = "head.example:8471"
    return CIMultiDictProxy(headers), body


def test_a_logs_signature_is_accepted_for_logs_and_refused_for_batch() -> None:
    headers, body = logs_signed("logs")
    now = SIGNED_AT.timestamp()
    assert verify(SignedRequest("POST", "/", "", headers, body), now, {KEY.access_key_id: KEY}.get, service="logs") == KEY
    with pytest.raises(AuthError) as info:
        verify(SignedRequest("POST", "/", "", headers, body), now, {KEY.access_key_id: KEY}.get)  # the Batch routes' check
    assert info.value.aws_code == "InvalidSignatureException" and "'batch'" in info.value.message
    batch_headers, body = logs_signed("batch")
    with pytest.raises(AuthError) as info:
        verify(SignedRequest("POST", "/", "", batch_headers, body), now, {KEY.access_key_id: KEY}.get, service="logs")
    assert "'logs'" in info.value.message


# -- the operations over a real store, engine and service ------------------------------------
def test_ownership_follows_get_job_logs_and_private_data_hides_the_stream(tmp_path: Path) -> None:
    from hpcbatch import protocol as p
    from hpcbatch.auth.policy import AccessDenied, Caller
    from hpcbatch.head.engine import Engine
    from hpcbatch.head.service import BatchService
    from hpcbatch.model.jobs import Attempt
    from hpcbatch.model.lifecycle import JobStatus
    from hpcbatch.store import SqliteStore
    from tests.unit.test_store import job

    store = SqliteStore(tmp_path / "db.sqlite")
    try:
        engine = Engine(store, LogStore(tmp_path / "logs"), send=lambda n, m: None, clock_ms=lambda: 7_000)
        service = BatchService(store, engine, region="local", account="0")
        stream = f"d/default/{A}"
        record = job("j1", owner="alice", status=JobStatus.SUCCEEDED, stopped_at=9_000,
                     attempts=[Attempt(attempt_id=A, node="n1", compute_environment="ce", log_stream_name=stream,
                                       started_at=5_000, stopped_at=9_000)])
        with store.transaction():
            store.put_jobs([record])
        engine.on_log(p.LogChunk(attempt_id=A, job_id="j1", stream="output", offset=0, data=b"hi\n", read_at_ms=6_000))
        engine.on_log(p.LogChunk(attempt_id=A, job_id="j1", stream="output", offset=3, data=b"old agent\n"))
        logs = CloudWatchLogs(service)
        alice, bob = Caller("alice", "user", "socket"), Caller("bob", "user", "socket")
        body = {"logGroupName": "/aws/batch/job", "logStreamName": stream, "startFromHead": True}
        page = logs.GetLogEvents(body, alice)
        assert [(e["message"], e["timestamp"], e["ingestionTime"]) for e in page["events"]] == [
            ("hi", 6_000, 7_000), ("old agent", 7_000, 7_000)]  # no read time from the agent: the head's
        end = logs.GetLogEvents({**body, "nextToken": page["nextForwardToken"]}, alice)
        assert end["events"] == [] and end["nextForwardToken"] == page["nextForwardToken"]
        with pytest.raises(AccessDenied):
            logs.GetLogEvents(body, bob)
        assert [s.name for s in logs.streams(bob)] == [] and [s.name for s in logs.streams(alice)] == [stream]
        service.private_data = True
        with pytest.raises(LogsError) as info:
            logs.GetLogEvents(body, bob)
        assert info.value.aws_code == "ResourceNotFoundException"
        assert logs.GetLogEvents(body, Caller("root", "admin", "socket"))["events"] != []
    finally:
        store.close()
