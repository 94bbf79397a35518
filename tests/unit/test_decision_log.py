"""The scheduler's decision log: keyed by job id (never a search of the texts), and each
decision carries the events that led to it; ``hpcbatch why`` reads it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.scheduler import (
    AttemptEnded,
    JobQueueChanged,
    JobRunnable,
    NodeUp,
    Scheduler,
    Tick,
)
from hpcbatch.scheduler.decisions import Cause, Decision, DecisionLog, jobs_named
from tests.unit.scheduler_events import event_id as _eid
from tests.unit.scheduler_events import next_seq


def queue(name: str = "q", priority: int = 1, **policy: bool) -> JobQueueChanged:
    return JobQueueChanged(_eid(), name, True, priority, ("ce",), **policy)


def node(name: str, vcpus: float = 4) -> NodeUp:
    return NodeUp(_eid(), name, "ce", vcpus, 8192, 0)


def job(job_id: str, vcpus: float = 1, q: str = "q", limit: int | None = None, **more: int) -> JobRunnable:
    return JobRunnable(_eid(), job_id, q, ResourceRequest(vcpus=vcpus, memory_mib=256), next_seq(),
                       time_limit_s=limit, **more)


def test_a_job_never_sees_the_decisions_about_a_job_whose_id_contains_its_own() -> None:
    s = Scheduler()
    s.handle(queue(), node("n1", vcpus=100))
    s.handle(job("a1"), job("a10"), job("xa1"))
    assert s.decisions_about("a1") == [(s.decisions_about("a1")[0][0], "start a1 on n1 (ce)")]
    assert [d for _, d in s.decisions_about("a10")] == ["start a10 on n1 (ce)"]
    assert s.decisions_about("a") == []


def test_the_last_decision_names_the_events_that_led_to_it() -> None:
    s = Scheduler()
    s.handle(Tick(_eid(), 0.0), queue(), node("n1"))
    s.handle(job("busy", vcpus=4))
    waiting = job("late", vcpus=4)
    s.handle(waiting)
    assert s.last_decision("late") is None  # it waits: no decision yet, only a reason
    tick, end, other = Tick(_eid(), 5.0), AttemptEnded(_eid(), "busy", run_s=5.0), job("other", vcpus=4)
    s.handle(tick, end, other)
    last = s.last_decision("late")
    assert last is not None and last.text == "start late on n1 (ce)"
    assert last.cause == other.event_id  # the pass's last event, as the log always said
    # What made it runnable, and what freed the node; another job's arrival did not.
    assert set(last.causes) == {
        Cause("JobRunnable", waiting.event_id, "late"),
        Cause("Tick", tick.event_id),
        Cause("AttemptEnded", end.event_id, "busy"),
    }
    assert s.decision_records("late") == [last]


def test_a_backfill_is_filed_under_the_job_whose_reservation_it_ran_before() -> None:
    s = Scheduler()
    s.handle(Tick(_eid(), 0.0), queue(), node("n1"), node("n2"))
    s.handle(job("a", vcpus=3, limit=100), job("b", vcpus=3, limit=500))
    s.handle(job("wide", vcpus=4))  # reserves n1 from t=100
    s.handle(job("short", limit=50))
    backfill = [d for _, d in s.decisions_about("wide") if d.startswith("start short")]
    assert backfill == ["start short on n1 (ce), backfilled before wide's reservation at t=100"]
    assert [d for _, d in s.decisions_about("short")] == backfill


def test_a_preemption_is_filed_under_both_the_victim_and_the_job_it_is_for() -> None:
    s = Scheduler()
    s.handle(Tick(_eid(), 0.0), queue("hi", 10, preempts=True), queue("lo", 1, preemptible=True), node("n1"))
    s.handle(job("victim", vcpus=4, q="lo"))
    urgent = job("urgent", vcpus=4, q="hi")
    s.handle(urgent)
    text = "preempt victim for urgent on n1 (ce)"
    assert text in [d for _, d in s.decisions_about("victim")]
    preempt = [d for d in s.decision_records("urgent") if d.text == text]
    assert len(preempt) == 1 and preempt[0].jobs == ("victim", "urgent")
    assert Cause("JobRunnable", urgent.event_id, "urgent") in preempt[0].causes
    last = s.last_decision("urgent")  # then its hold on the room the victim frees
    assert last is not None and last.text.startswith("reserve for urgent: Reserved nodes n1")


def test_an_array_task_start_is_filed_under_the_task_and_its_array() -> None:
    s = Scheduler()
    s.handle(queue(), node("n1"))
    s.handle(job("arr", array_count=2))
    assert [d for _, d in s.decisions_about("arr")] == ["start arr:0 on n1 (ce)", "start arr:1 on n1 (ce)"]
    assert [d for _, d in s.decisions_about("arr:1")] == ["start arr:1 on n1 (ce)"]


def test_a_full_log_forgets_its_oldest_decisions_everywhere() -> None:
    s = Scheduler(log_size=3)
    s.handle(queue(), node("n1", vcpus=100))
    for i in range(10):
        s.handle(job(f"j{i}"))
    assert len(s.decisions) == 3
    assert s.decisions_about("j6") == [] and s.last_decision("j6") is None
    assert [d for _, d in s.decisions_about("j9")] == ["start j9 on n1 (ce)"]


def test_a_job_keeps_only_its_latest_decisions() -> None:
    log = DecisionLog(maxlen=100, per_job=2)
    for i in range(5):
        log.record(Decision(f"e{i}", f"plan for j: {i}", ("j",)))
    assert [d.text for d in log.about("j")] == ["plan for j: 3", "plan for j: 4"]
    assert [d.text for d in log.about("j", limit=1)] == ["plan for j: 4"]


def test_a_pair_appended_in_the_cores_phrasing_is_filed_under_the_jobs_it_names() -> None:
    s = Scheduler()
    s.decisions.append(("e7", "start mine on node1 (default), backfilled before theirs#0's reservation at t=5"))
    assert s.decisions_about("mine") == [("e7", "start mine on node1 (default), backfilled before theirs#0's "
                                                "reservation at t=5")]
    assert len(s.decisions_about("theirs#0")) == 1 and s.decisions_about("theirs") == []
    assert jobs_named("start gang g on n[1-2] (ce)") == ("g",)
    assert jobs_named("reserve for g: Reserved nodes n1") == ("g",)
    assert jobs_named("preempt v for p on n1 (ce)") == ("v", "p")
    assert jobs_named("cancel c: Canceled by JobStateTimeLimit action") == ("c",)
    assert jobs_named("start a:3 on n1 (ce)") == ("a:3", "a")


_names = st.sampled_from(["a", "a1", "a10", "a1:0", "b", "ab", "a:1"])


@settings(max_examples=200, deadline=None, derandomize=True)
@given(entries=st.lists(st.tuples(st.lists(_names, min_size=1, max_size=3), st.integers(0, 5)), max_size=40),
       maxlen=st.integers(1, 12))
def test_a_job_sees_exactly_the_logged_decisions_that_name_it(entries: list[tuple[list[str], int]], maxlen: int) -> None:
    log = DecisionLog(maxlen=maxlen)
    for i, (jobs, _) in enumerate(entries):
        log.record(Decision(f"e{i}", f"d{i}", tuple(dict.fromkeys(jobs))))
    kept = [Decision(f"e{i}", f"d{i}", tuple(dict.fromkeys(jobs))) for i, (jobs, _) in enumerate(entries)][-maxlen:]
    assert list(log) == [(d.cause, d.text) for d in kept]
    for name in ["a", "a1", "a10", "a1:0", "b", "ab", "a:1", "zz"]:
        assert log.about(name, limit=100) == [d for d in kept if name in d.jobs]
        assert log.last(name) == next((d for d in reversed(kept) if name in d.jobs), None)
