"""Token buckets per caller and operation class (hpcbatch.head.ratelimit), on a fake clock."""

from __future__ import annotations

import pytest

from hpcbatch.auth.policy import Caller
from hpcbatch.head.ratelimit import (
    DEFAULT_RATES,
    Rate,
    RateLimiter,
    TooManyRequests,
    operation_class,
)

ALICE = Caller(user="alice", role="user", via="socket")
BOB = Caller(user="bob", role="user", via="socket")
ROOT = Caller(user="root", role="admin", via="socket")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, **kw: object) -> RateLimiter:
    return RateLimiter({"submit": Rate(2, 4), "read": Rate(0, 1), "write": Rate(1, 1)}, ["role:admin"], clock, **kw)  # type: ignore[arg-type]


def test_submit_default_is_aws_50_tps() -> None:
    assert DEFAULT_RATES["submit"].per_second == 50
    assert operation_class("SubmitJob") == "submit"
    assert operation_class("DescribeJobs") == "read"
    assert operation_class("CancelJob") == "write"


def test_a_burst_then_the_rate_then_too_many_requests() -> None:
    clock = Clock()
    rl = limiter(clock)
    for _ in range(4):
        rl.check(ALICE, "SubmitJob")
    with pytest.raises(TooManyRequests) as info:
        rl.check(ALICE, "SubmitJob")
    assert info.value.http_status == 429 and info.value.aws_code == "TooManyRequestsException"
    clock.now = 0.5  # one token flowed in
    rl.check(ALICE, "SubmitJob")
    with pytest.raises(TooManyRequests):
        rl.check(ALICE, "SubmitJob")


def test_callers_and_classes_have_their_own_buckets_and_admins_are_exempt() -> None:
    rl = limiter(Clock())
    rl.check(ALICE, "CancelJob")
    with pytest.raises(TooManyRequests):
        rl.check(ALICE, "CancelJob")
    rl.check(BOB, "CancelJob")
    rl.check(ALICE, "SubmitJob")
    for _ in range(100):
        rl.check(ROOT, "SubmitJob")
        rl.check(ALICE, "ListJobs")  # rate 0: this class is not limited


def test_buckets_are_bounded_by_max_callers() -> None:
    rl = limiter(Clock(), max_callers=100)
    for i in range(1_000):
        rl.check(Caller(user=f"u{i}", role="user", via="sigv4", access_key_id=f"K{i}"), "SubmitJob")
    assert rl.callers == 100


def test_requests_failing_authentication_are_limited_per_source_address() -> None:
    from hpcbatch.head.ratelimit import RateLimiter

    clock = Clock()
    lim = RateLimiter({"unauthenticated": Rate(1, 3)}, [], clock)
    assert [lim.unauthenticated("10.0.0.1") is None for _ in range(5)] == [True, True, True, False, False]
    refused = lim.unauthenticated("10.0.0.1")
    assert isinstance(refused, TooManyRequests) and "from 10.0.0.1" in refused.message
    assert lim.unauthenticated("10.0.0.2") is None  # another address has its own bucket
    clock.now += 1.0
    assert lim.unauthenticated("10.0.0.1") is None
    assert DEFAULT_RATES["unauthenticated"].per_second > 0  # on by default


def test_a_flood_of_refusals_logs_a_few_lines_and_a_summary() -> None:
    from hpcbatch.head.ratelimit import RefusalLog

    clock = Clock()
    refusals = RefusalLog(clock, window_s=60, max_addresses=3)
    lines = [line for i in range(10_000) for line in refusals.note(f"10.0.0.{i % 50}", "SubmitJob refused: x")]
    assert len(lines) == 3  # the first refusal of three addresses; the rest only counted
    clock.now += 61
    summary = refusals.note("10.0.0.1", "SubmitJob refused: x")
    assert len(summary) == 2 and summary[0].startswith("refused 9997 more unauthenticated request(s) in the last 61 s")
    assert "from 10.0.0.1;" in summary[1]
