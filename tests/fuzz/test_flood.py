"""Per-caller rate limits: a flood from one caller gets HTTP 429 in AWS's shape, others are served.

The head runs with a small SubmitJob limit (5/s, bursts of 10) so a few thousand calls are
a flood; what is asserted is counts and memory, never time: every accepted call is one
stored job and nothing else was stored, the throttled caller's limit does not touch another
caller, and the head's memory does not grow with the flood.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.fuzz.flood import SUBMIT, flood, rss_bytes
from tests.fuzz.wire import Wire
from tests.harness import TestCluster
from tests.variants import STORES, make_cluster

RATE, BURST = 5, 10


@pytest.fixture(scope="module", params=STORES)
def limited(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    c = make_cluster(tmp_path_factory.mktemp("flood"), request.param, nodes=0,
                     head_extra=f"[rate_limits]\nsubmit = {{per_second = {RATE}, burst = {BURST}}}\n")
    try:
        c.up()
        yield c
    finally:
        c.close()


def user_key(cluster: TestCluster, user: str) -> tuple[str, str]:
    key = cluster.client.call("/hpcbatch/v1/createaccesskey", {"user": user, "role": "user"})
    return key["accessKeyId"], key["secretAccessKey"]


def test_a_flooding_caller_is_throttled_with_too_many_requests(limited: TestCluster) -> None:
    flooder = user_key(limited, "hpcb_flood")
    answer = Wire(tcp=("127.0.0.1", limited.http_port), credentials=flooder)
    started = time.monotonic()
    statuses = flood(limited.http_port, flooder, 2_000, processes=2)
    elapsed = time.monotonic() - started
    assert set(statuses) == {200, 429}, statuses
    # The bucket's bound: the burst plus what flowed in meanwhile (a count, not a timing).
    assert statuses[200] <= BURST + RATE * (elapsed + 1)
    refused, probes_accepted = None, 0
    for _ in range(50):
        a = answer.post("/v1/submitjob", SUBMIT)
        if a.status == 429:
            refused = a
            break
        probes_accepted += a.status == 200
    assert refused is not None
    assert refused.error_type == "TooManyRequestsException" == refused.json()["__type"]
    assert "per second" in refused.json()["message"]
    # Every accepted call is one stored job; the refused ones stored nothing (not even audit).
    jobs = limited.client.list_jobs(jobQueue="default", filters=[{"name": "OWNER", "values": ["hpcb_flood"]}],
                                    maxResults=1000)["jobSummaryList"]
    assert len(jobs) == statuses[200] + probes_accepted
    audit = limited.client.call("/hpcbatch/v1/listaudit", {"user": "hpcb_flood", "maxResults": 10_000})["events"]
    assert len(audit) == len(jobs)


def test_another_caller_and_admins_are_not_throttled_by_a_flood(limited: TestCluster) -> None:
    flood(limited.http_port, user_key(limited, "hpcb_flood2"), 300, processes=1)
    other = Wire(tcp=("127.0.0.1", limited.http_port), credentials=user_key(limited, "hpcb_other"))
    assert other.post("/v1/describejobqueues", b"{}").status == 200
    assert other.post("/v1/submitjob", SUBMIT).status == 200
    # Root over the Unix socket is an admin, exempt by default (rate_limit_exempt = ["role:admin"]).
    for _ in range(3 * BURST):
        limited.submit(["true"])


def test_head_memory_stays_bounded_under_a_flood(limited: TestCluster) -> None:
    credentials = user_key(limited, "hpcb_flood3")
    pid = limited.procs["head"].pid
    flood(limited.http_port, credentials, 1_000, processes=2)  # warm: buffers, caches, first jobs
    before = rss_bytes(pid)
    statuses = flood(limited.http_port, credentials, 5_000, processes=2)
    after = rss_bytes(pid)
    assert statuses[429] > statuses[200]
    # Refused calls keep nothing: 5,000 of them must not cost the head even 1 KiB each.
    assert after - before < 5 << 20, f"head RSS grew {(after - before) >> 10} KiB over a 5,000-call flood"
