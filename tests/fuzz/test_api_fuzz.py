"""Every API operation, fuzzed with bodies drawn from AWS Batch's model: never a 5xx.

The head runs for real (no agents needed: nothing fuzzed here runs a job). Each operation
gets ``HPCBATCH_FUZZ_EXAMPLES`` cases (default 100), half over the Unix socket (kernel peer
credentials, root: admin, so every operation reaches the service) and half over TCP signed
with an admin access key; the cases are the same every run (``derandomize``). Afterwards
everything stored is read back whole, then again after a ``kill -9`` and restart of the head
(on PostgreSQL, from the standby that took over).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.fuzz.driver import check_store, operations, run_fuzz
from tests.fuzz.wire import Wire
from tests.harness import TestCluster
from tests.variants import STORES, active_http_port, active_socket, make_cluster

EXAMPLES = int(os.environ.get("HPCBATCH_FUZZ_EXAMPLES", "100"))


@pytest.fixture(scope="module", params=STORES)
def fuzz_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    c = make_cluster(tmp_path_factory.mktemp("fuzz"), request.param, nodes=0)
    try:
        c.up()
        yield c
    finally:
        c.close()


def wires_for(cluster: TestCluster) -> dict[str, Wire]:
    key = cluster.client.call("/hpcbatch/v1/createaccesskey", {"user": "root", "role": "admin"})
    return {
        "socket": Wire(unix_path=active_socket(cluster)),
        "sigv4": Wire(tcp=("127.0.0.1", active_http_port(cluster)), credentials=(key["accessKeyId"], key["secretAccessKey"])),
    }


def test_no_operation_answers_a_5xx_or_stores_a_half_object(fuzz_cluster: TestCluster) -> None:
    wires = wires_for(fuzz_cluster)
    ops = sorted(operations().items())
    report = run_fuzz(wires, ops, EXAMPLES)
    assert report.cases >= EXAMPLES * len(ops) // 2
    assert not report.findings, f"{report.server_errors} 5xx; findings:\n" + "\n".join(report.findings)
    assert fuzz_cluster.procs["head"].poll() is None, "the head died during fuzzing"
    assert check_store(wires["socket"]) == []
    # What was stored loads again: a kill -9 and restart serves the same objects (on
    # PostgreSQL, the standby that took over serves them).
    fuzz_cluster.kill("head")
    fuzz_cluster.start_head()
    assert check_store(Wire(unix_path=active_socket(fuzz_cluster))) == []


def test_unsigned_and_badly_signed_tcp_requests_get_aws_errors(fuzz_cluster: TestCluster) -> None:
    plain = Wire(tcp=("127.0.0.1", active_http_port(fuzz_cluster)))
    for headers in ({}, {"Authorization": "AWS4-HMAC-SHA256 garbage"}, {"Authorization": "x" * 5000},
                    {"X-Amz-Date": "not a date", "Authorization": "AWS4-HMAC-SHA256 Credential=a/b/c/d/e, SignedHeaders=host, Signature=00"}):
        answer = plain.post("/v1/submitjob", b"{}", headers)
        assert 400 <= answer.status < 500, (headers, answer)
        assert answer.json()["__type"] == answer.error_type
    # A header that is not HTTP at all is refused by the HTTP parser itself (plain 400).
    assert plain.post("/v1/submitjob", b"{}", {"Authorization": "\x7f"}).status == 400
