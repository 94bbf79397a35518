"""Fair share, jobStateTimeLimitActions, allocation strategies and AWS reason codes in the pure core."""

from __future__ import annotations

import pytest

from hpcbatch.scheduler import (
    Action,
    AttemptEnded,
    CancelRunnable,
    ComputeEnvironmentChanged,
    FairSharePolicy,
    JobQueueChanged,
    JobRunnable,
    NodeUp,
    Scheduler,
    SetWaitReason,
    StartAttempt,
    StateTimeLimit,
    Tick,
)
from hpcbatch.scheduler.core import CAPACITY, MAX_RESOURCE, REQUIREMENT
from tests.unit.scheduler_events import event_id as _eid
from tests.unit.scheduler_events import next_seq, req


def node(name: str, vcpus: float = 4, memory_mib: int = 8192, ce: str = "ce") -> NodeUp:
    return NodeUp(_eid(), name, ce, vcpus, memory_mib, 0)


def job(job_id: str, share: str | None = None, vcpus: float = 1, priority: int = 0, q: str = "q") -> JobRunnable:
    return JobRunnable(_eid(), job_id, q, req(vcpus), next_seq(), share=share, priority=priority)


def fair_queue(policy: FairSharePolicy | None, limits: tuple[StateTimeLimit, ...] = ()) -> JobQueueChanged:
    return JobQueueChanged(_eid(), "q", True, 1, ("ce",), fair_share=policy, time_limits=limits)


def started(actions: list[Action]) -> list[str]:
    return [a.job_id for a in actions if isinstance(a, StartAttempt)]


def reasons(actions: list[Action]) -> dict[str, str]:
    return {a.job_id: a.reason for a in actions if isinstance(a, SetWaitReason)}


# -------------------------------------------------------------------- the policy
def test_weight_is_exact_entry_then_longest_prefix_then_one() -> None:
    p = FairSharePolicy(shares=(("lab*", 2.0), ("labx*", 3.0), ("labxy", 0.5)))
    assert p.weight("labxy") == 0.5
    assert p.weight("labxz") == 3.0
    assert p.weight("lab1") == 2.0
    assert p.weight("other") == 1.0


def test_compute_reservation_follows_aws_formula() -> None:
    p = FairSharePolicy(compute_reservation=50)
    assert [p.reserved_fraction(n) for n in (1, 2, 3)] == [0.5, 0.25, 0.125]


# ------------------------------------------------------------------ fair order
def test_two_equal_shares_alternate_whatever_the_submission_order() -> None:
    s = Scheduler()
    s.handle(fair_queue(FairSharePolicy()), node("n1", vcpus=4))
    actions = s.handle(*[job(f"a{i}", "A") for i in range(4)], *[job(f"b{i}", "B") for i in range(4)])
    assert sorted(started(actions)) == ["a0", "a1", "b0", "b1"]


def test_lower_weight_gets_the_larger_share() -> None:
    s = Scheduler()
    s.handle(fair_queue(FairSharePolicy(shares=(("A", 0.5), ("B", 1.0)))), node("n1", vcpus=6))
    actions = s.handle(*[job(f"a{i}", "A") for i in range(6)], *[job(f"b{i}", "B") for i in range(6)])
    got = started(actions)
    assert sum(j.startswith("a") for j in got) == 4 and sum(j.startswith("b") for j in got) == 2


def test_busy_share_yields_to_an_idle_one_when_a_node_frees() -> None:
    s = Scheduler()
    s.handle(fair_queue(FairSharePolicy()), node("n1", vcpus=2))
    s.handle(job("a0", "A"), job("a1", "A"))  # A takes the node while B has nothing
    actions = s.handle(job("a2", "A"), job("b0", "B"), AttemptEnded(_eid(), "a0"))
    assert started(actions) == ["b0"]


def test_scheduling_priority_orders_jobs_inside_a_share() -> None:
    s = Scheduler()
    s.handle(fair_queue(FairSharePolicy()), node("n1", vcpus=1))
    s.handle(job("blocker", "A"))
    s.handle(job("low", "A", priority=1), job("high", "A", priority=9))
    assert started(s.handle(AttemptEnded(_eid(), "blocker"))) == ["high"]


def test_decayed_usage_remembers_a_share_that_just_ran() -> None:
    s = Scheduler()
    s.handle(Tick(_eid(), 0.0), fair_queue(FairSharePolicy(share_decay_s=3600)), node("n1", vcpus=1))
    s.handle(job("a0", "A"))
    s.handle(Tick(_eid(), 1800.0), AttemptEnded(_eid(), "a0"))  # A ran for half an hour
    # B submitted after A's next job, yet B goes first: A's recent usage still counts.
    actions = s.handle(job("a1", "A"), job("b0", "B"))
    assert started(actions) == ["b0"]


def test_without_decay_only_current_usage_counts() -> None:
    s = Scheduler()
    s.handle(Tick(_eid(), 0.0), fair_queue(FairSharePolicy(share_decay_s=0)), node("n1", vcpus=1))
    s.handle(job("a0", "A"))
    s.handle(Tick(_eid(), 1800.0), AttemptEnded(_eid(), "a0"))
    actions = s.handle(job("a1", "A"), job("b0", "B"))
    assert started(actions) == ["a1"]  # a tie on usage: the share name breaks it


def test_compute_reservation_keeps_capacity_for_a_share_not_running_yet() -> None:
    s = Scheduler()
    s.handle(fair_queue(FairSharePolicy(compute_reservation=50)), node("n1", vcpus=4))
    actions = s.handle(*[job(f"a{i}", "A") for i in range(4)])
    assert started(actions) == ["a0", "a1"]  # 50% held back while one share is active
    assert reasons(actions)["a2"].startswith("Fair share: computeReservation 50 keeps 2 of 4 vCPUs")
    # A second share may use the reserve: with two active shares 25% (1 vCPU) stays back.
    assert started(s.handle(job("b0", "B"))) == ["b0"]


def test_wait_reason_shows_the_share_place_in_line() -> None:
    s = Scheduler()
    s.handle(fair_queue(FairSharePolicy()), node("n1", vcpus=1))
    actions = s.handle(job("a0", "A"), job("a1", "A"), job("b0", "B"))
    assert "fair share: share" in reasons(actions)["a1"]
    assert "in line (weight 1)" in reasons(actions)["b0"]


# ------------------------------------------------------------- time-limit actions
def test_job_stuck_at_the_head_with_the_reason_is_cancelled_after_max_time() -> None:
    s = Scheduler()
    limit = StateTimeLimit(CAPACITY, 600)
    s.handle(Tick(_eid(), 0.0), fair_queue(None, (limit,)), node("n1", vcpus=1))
    s.handle(job("running"), job("stuck"), job("next"))
    assert not any(isinstance(a, CancelRunnable) for a in s.handle(Tick(_eid(), 599.0)))
    actions = s.handle(Tick(_eid(), 600.0))
    assert [a for a in actions if isinstance(a, CancelRunnable)] == [
        CancelRunnable("stuck", f"Canceled by JobStateTimeLimit action due to reason: {CAPACITY}")
    ]
    assert s.front_of_queue("q") == ["next"]


def test_time_limit_for_another_reason_leaves_the_job_alone() -> None:
    s = Scheduler()
    s.handle(Tick(_eid(), 0.0), fair_queue(None, (StateTimeLimit(REQUIREMENT, 60),)), node("n1", vcpus=1))
    s.handle(job("running"), job("waits"))
    assert not any(isinstance(a, CancelRunnable) for a in s.handle(Tick(_eid(), 1000.0)))


def test_job_no_node_can_hold_is_cancelled_by_a_requirement_limit() -> None:
    s = Scheduler()
    s.handle(Tick(_eid(), 0.0), fair_queue(None, (StateTimeLimit(REQUIREMENT, 60),)), node("n1", vcpus=1))
    assert reasons(s.handle(job("huge", vcpus=8)))["huge"].startswith(f"{REQUIREMENT} - ")
    assert any(isinstance(a, CancelRunnable) for a in s.handle(Tick(_eid(), 61.0)))


# -------------------------------------------------------------------- reasons
def test_capacity_reason_gives_the_numbers() -> None:
    s = Scheduler()
    s.handle(fair_queue(None), node("n1", vcpus=8), node("n2", vcpus=8))
    s.handle(job("a", vcpus=4), job("b", vcpus=6))  # a on n1 (4 left), b on n2 (2 left)
    reason = reasons(s.handle(job("c", vcpus=8)))["c"]
    assert reason.startswith(f"{CAPACITY} - ")
    assert "needs 8 vCPUs" in reason and "the largest free node has 4 vCPUs" in reason


def test_job_above_every_max_vcpus_says_max_resource_at_once() -> None:
    s = Scheduler()
    s.handle(fair_queue(None), ComputeEnvironmentChanged(_eid(), "ce", True, 4), node("n1", vcpus=16))
    assert reasons(s.handle(job("big", vcpus=8)))["big"].startswith(f"{MAX_RESOURCE} - needs 8 vCPUs")


# ---------------------------------------------------------- allocation strategies
@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("BEST_FIT", "small"), ("SPREAD", "big"), ("BEST_FIT_PROGRESSIVE", "small")],
)
def test_allocation_strategy_picks_the_node(strategy: str, expected: str) -> None:
    s = Scheduler()
    s.handle(
        fair_queue(None), ComputeEnvironmentChanged(_eid(), "ce", True, None, allocation_strategy=strategy),
        node("big", vcpus=16), node("small", vcpus=4),
    )
    assert [(a.job_id, a.node) for a in s.handle(job("j")) if isinstance(a, StartAttempt)] == [("j", expected)]


def test_best_fit_packs_and_spread_spreads() -> None:
    for strategy, nodes_used in (("BEST_FIT", 1), ("SPREAD", 4)):
        s = Scheduler()
        s.handle(fair_queue(None), ComputeEnvironmentChanged(_eid(), "ce", True, None, allocation_strategy=strategy),
                 *[node(f"n{i}", vcpus=4) for i in range(4)])
        actions = s.handle(*[job(f"{strategy}{i}") for i in range(4)])
        assert len({a.node for a in actions if isinstance(a, StartAttempt)}) == nodes_used


def test_best_fit_progressive_fills_busy_nodes_before_opening_an_idle_one() -> None:
    s = Scheduler()
    s.handle(
        fair_queue(None),
        ComputeEnvironmentChanged(_eid(), "ce", True, None, allocation_strategy="BEST_FIT_PROGRESSIVE"),
        node("big", vcpus=16), node("small", vcpus=2),
    )
    s.handle(job("first", vcpus=2))  # the smallest idle node that fits: small (now full)
    actions = s.handle(job("second"), job("third"))
    assert {a.node for a in actions if isinstance(a, StartAttempt)} == {"big"}


def test_front_of_a_fair_share_queue_is_in_fair_share_order() -> None:
    s = Scheduler()
    s.handle(fair_queue(FairSharePolicy()), node("n1", vcpus=1))
    s.handle(job("run", "A"), job("a1", "A"), job("a2", "A"), job("b1", "B"))
    assert s.front_of_queue("q") == ["b1", "a1", "a2"]


def test_reported_running_job_is_charged_to_its_share_after_a_restart() -> None:
    s = Scheduler()  # a restarted head: the node reports a job of share A still running
    s.handle(fair_queue(FairSharePolicy()))
    s.handle(NodeUp(_eid(), "n1", "ce", 2, 8192, 0, allocations=(("old", req()),), shares=(("old", "q", "A"),)))
    actions = s.handle(job("a1", "A"), job("b1", "B"))
    assert started(actions) == ["b1"]  # A already runs one: B goes first
