"""The scheduler's reservations for the head of a queue, its start-time forecasts and preemption."""

from __future__ import annotations

import itertools

import pytest

from hpcbatch.scheduler.core import (
    WAIT_RESOURCES,
    Action,
    Event,
    JobQueueChanged,
    JobRunnable,
    PreemptAttempt,
    Scheduler,
    StartGang,
    Tick,
)
from tests.unit.scheduler_events import (
    _eid,
    _seqs,
    ended,
    job,
    node,
    one_node_cluster,
    queue,
    reasons,
    req,
    started_jobs,
    starts,
)


# ------------------------------------------------- reservations for the head of a queue
def timed(job_id: str, vcpus: float, limit: int | None, q: str = "q") -> JobRunnable:
    return JobRunnable(_eid(), job_id, q, req(vcpus), next(_seqs), time_limit_s=limit)


def test_a_wide_single_node_job_at_the_head_reserves_the_node_that_has_room_soonest() -> None:
    s = Scheduler()
    s.handle(queue(), node("n1"), node("n2"))
    s.handle(Tick(_eid(), 0.0), timed("a", 3, 100), timed("b", 3, 500))  # n1 free at 100, n2 at 500
    actions = s.handle(timed("wide", 4, None))
    res = s.reservation("wide")
    assert res is not None and res.nodes == ("n1",) and res.start_s == 100
    # Its reason keeps AWS's CAPACITY code (jobStateTimeLimitActions match it).
    assert reasons(actions)["wide"].startswith(WAIT_RESOURCES)
    assert any(d == "reserve for wide: Reserved nodes n1 in compute environment ce from t=100" for _, d in s.decisions)
    actions = s.handle(timed("long", 1, 1000), timed("short", 1, 50), timed("unknown", 1, None))
    # n1's last vCPU only for what ends by t=100; n2's for anything.
    assert starts(actions) == [("long", "n2"), ("short", "n1")]
    assert reasons(actions)["unknown"].startswith(WAIT_RESOURCES)
    assert s.reservation("wide") == res


@pytest.mark.parametrize("depth", [1, 0])
def test_a_wide_single_node_job_is_not_starved_by_a_stream_of_narrow_timed_jobs(depth: int) -> None:
    s = Scheduler(reservation_depth=depth)  # 0: the control, no reservations
    s.handle(Tick(_eid(), 0.0), queue(), node("n1"), node("n2"))
    running = {f"pre{i}": 10.0 * (i + 1) for i in range(8)}  # job -> its end
    s.handle(*(timed(j, 1, int(end)) for j, end in running.items()))
    s.handle(timed("wide", 4, 60))
    now, counter = 0.0, itertools.count()
    for _ in range(40):
        now += 10
        done = [j for j, end in running.items() if end <= now]
        events: list[Event] = [Tick(_eid(), now), *(ended(j) for j in done)]
        for j in done:
            del running[j]
        fresh = [f"s{next(counter)}" for _ in range(2)]
        events += [timed(j, 1, 35) for j in fresh]
        actions = s.handle(*events)
        for j in started_jobs(actions):
            running[j] = now + (60 if j == "wide" else 35)
        if "wide" in started_jobs(actions):
            break
    if depth:
        assert "wide" in running and now <= 80  # n1's last pre-job ends at 70
    else:
        assert "wide" not in running  # the stream is a real threat


def test_without_known_ends_a_narrow_job_still_passes_a_wide_one() -> None:
    s = one_node_cluster(vcpus=4)
    s.handle(job("half", request=req(2)))  # no time limit, no history: its end is unknown
    actions = s.handle(job("big", request=req(4)), job("small", request=req(1)))
    assert started_jobs(actions) == ["small"] and s.reservation("big") is None



# ------------------------------------------------------------- start-time forecasts
def test_forecast_follows_the_plan_in_order_with_backfill() -> None:
    s = Scheduler()
    s.handle(Tick(_eid(), 10.0), queue(), node("n1"), node("n2"))
    s.handle(timed("a", 4, 100), timed("b", 3, 300))  # n1 until 110, n2 until 310 (1 vCPU free)
    s.handle(timed("wide", 4, 50), timed("next", 4, 50), timed("narrow", 1, 40), timed("late", 2, 1000))
    # narrow took n2's free vCPU now; wide gets n1 at 110, next follows it at 160; late (2 vCPUs,
    # 1000 s) may pass neither (it would not end before them), so it gets n1 after next, at 210.
    assert s.allocation("narrow") == ("n2", "ce")
    assert s.forecast() == {"wide": 110.0, "next": 160.0, "late": 210.0}
    assert s.expected_start("wide") == 110.0 == s.reservation("wide").start_s  # type: ignore[union-attr]
    assert s.expected_start("narrow") is None  # running, not waiting


def test_a_job_waiting_on_unknown_ends_has_no_forecast_nor_do_the_jobs_it_holds_back() -> None:
    s = one_node_cluster(vcpus=4)
    s.handle(Tick(_eid(), 0.0), timed("forever", 4, None))
    s.handle(timed("after", 4, 10), timed("also", 4, 10))
    assert s.forecast() == {}
    assert s.expected_start("after") is None


def test_forecast_of_a_gang_waits_for_whole_nodes() -> None:
    s = Scheduler()
    s.handle(Tick(_eid(), 0.0), queue(), node("n1"), node("n2"), node("n3"))
    s.handle(timed("x", 1, 100), timed("y", 1, 200))  # best fit: both on n1, until 200
    s.handle(JobRunnable(_eid(), "g", "q", req(4), next(_seqs), num_nodes=3, time_limit_s=60))
    assert s.forecast()["g"] == 200.0


def test_forecast_covers_the_first_jobs_of_each_queue_only() -> None:
    s = one_node_cluster(vcpus=1)
    s.handle(Tick(_eid(), 0.0), *(timed(f"j{i}", 1, 10) for i in range(6)))
    assert s.forecast(limit=3) == {"j1": 10.0, "j2": 20.0, "j3": 30.0}
    assert s.forecast()["j5"] == 50.0


def test_expected_start_is_recomputed_once_the_state_changed_and_it_is_old() -> None:
    s = one_node_cluster(vcpus=1)
    s.handle(Tick(_eid(), 0.0), timed("a", 1, 100), timed("b", 1, 10))
    assert s.expected_start("b") == 100.0
    s.handle(ended("a"), Tick(_eid(), 1.0), timed("c", 1, 10))  # b started at 1
    assert s.expected_start("c") == 11.0  # c is new: the forecast is redone at once
    s.handle(Tick(_eid(), 2.0), ended("b"))  # c starts at 2
    assert s.expected_start("c") is None  # running now



# ---------------------------------------------------------------- preemption
def prio_queue(name: str, priority: int, preempts: bool = False, preemptible: bool = False) -> JobQueueChanged:
    return JobQueueChanged(_eid(), name, True, priority, ("ce",), preempts=preempts, preemptible=preemptible)


def preempted(actions: list[Action]) -> dict[str, str]:
    return {a.job_id: a.for_job for a in actions if isinstance(a, PreemptAttempt)}


def preempt_cluster(**lo: bool) -> Scheduler:
    s = Scheduler()
    s.handle(Tick(_eid(), 0.0), prio_queue("hi", 10, preempts=True), prio_queue("lo", 1, **lo), node("n1"), node("n2"))
    for i, t in enumerate((1.0, 2.0, 3.0, 4.0)):  # n1: lo0 lo1, n2: lo2 lo3 (2 vCPUs each, best fit)
        s.handle(Tick(_eid(), t), timed(f"lo{i}", 2, None, q="lo"))
    return s


def test_a_preempting_queue_stops_the_fewest_youngest_preemptible_jobs_and_holds_the_room() -> None:
    s = preempt_cluster(preemptible=True)
    actions = s.handle(Tick(_eid(), 10.0), timed("urgent", 2, None, q="hi"))
    assert preempted(actions) == {"lo3": "urgent"}  # one 2-vCPU job is enough: the youngest
    assert reasons(actions)["urgent"] == "Preempting lo3 to start"
    assert any(d == "preempt lo3 for urgent on n2 (ce)" for _, d in s.decisions)
    # While lo3 is being stopped: nothing is stopped twice, and its room waits for urgent.
    assert preempted(s.handle(Tick(_eid(), 11.0), timed("more", 2, None, q="lo"))) == {}
    assert starts(s.handle(Tick(_eid(), 12.0), ended("lo3"))) == [("urgent", "n2")]


def test_a_queue_that_is_not_preemptible_is_never_preempted() -> None:
    s = preempt_cluster(preemptible=False)
    actions = s.handle(timed("urgent", 2, None, q="hi"))
    assert preempted(actions) == {} and reasons(actions)["urgent"].startswith(WAIT_RESOURCES)


def test_only_lower_priority_queues_are_preempted() -> None:
    s = Scheduler()
    s.handle(prio_queue("a", 5, preempts=True), prio_queue("b", 5, preemptible=True), node("n1"))
    s.handle(timed("b1", 4, None, q="b"))
    assert preempted(s.handle(timed("a1", 4, None, q="a"))) == {}


def test_a_preempting_gang_stops_a_preemptible_gang_whole() -> None:
    s = Scheduler()
    s.handle(Tick(_eid(), 0.0), prio_queue("hi", 10, preempts=True), prio_queue("lo", 1, preemptible=True),
             node("n1"), node("n2"), node("n3"))
    s.handle(JobRunnable(_eid(), "lg", "lo", req(4), next(_seqs), num_nodes=3))
    actions = s.handle(JobRunnable(_eid(), "hg", "hi", req(4), next(_seqs), num_nodes=2))
    assert preempted(actions) == {"lg": "hg"}
    actions = s.handle(ended("lg"))
    assert [a.nodes for a in actions if isinstance(a, StartGang)] == [("n1", "n2")]
