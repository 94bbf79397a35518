"""The scheduler core, driven event by event: events in, actions out, no I/O and no clock.

Order, limits, reasons, resources coming back, re-registration and queue membership here;
reservations, forecasts and preemption in test_scheduler_planning.py; random event sequences
in test_scheduler_sequences.py."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.scheduler.core import (
    WAIT_MAX_VCPUS,
    WAIT_NO_CE,
    WAIT_QUEUE_DISABLED,
    WAIT_RESOURCES,
    ComputeEnvironmentRemoved,
    Event,
    JobQueueRemoved,
    JobWithdrawn,
    NodeGone,
    Scheduler,
    SetWaitReason,
    StartAttempt,
)
from tests.unit.scheduler_events import (
    _eid,
    ce_changed,
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


# ------------------------------------------------------------------------- order
def test_jobs_in_one_queue_start_in_fifo_order() -> None:
    s = one_node_cluster(vcpus=1)
    actions = s.handle(job("a"), job("b"), job("c"))
    assert started_jobs(actions) == ["a"]
    assert reasons(actions) == {"b": WAIT_RESOURCES, "c": WAIT_RESOURCES}
    assert started_jobs(s.handle(ended("a"))) == ["b"]
    assert started_jobs(s.handle(ended("b"))) == ["c"]


def test_fifo_holds_when_jobs_arrive_in_separate_events() -> None:
    s = one_node_cluster(vcpus=1)
    s.handle(job("hold"))
    for j in ("a", "b", "c"):
        s.handle(job(j))
    assert started_jobs(s.handle(ended("hold"))) == ["a"]
    assert started_jobs(s.handle(ended("a"))) == ["b"]


def test_higher_priority_queue_is_served_first() -> None:
    s = Scheduler()
    s.handle(queue("low", priority=1), queue("high", priority=10), node("n1", vcpus=1))
    actions = s.handle(job("low-1", "low"), job("high-1", "high"))
    assert started_jobs(actions) == ["high-1"]
    assert reasons(actions) == {"low-1": WAIT_RESOURCES}


def test_queues_of_equal_priority_are_served_by_name() -> None:
    s = Scheduler()
    s.handle(queue("b-queue", priority=5), queue("a-queue", priority=5), node("n1", vcpus=1))
    assert started_jobs(s.handle(job("from-b", "b-queue"), job("from-a", "a-queue"))) == ["from-a"]


def test_raising_a_queue_priority_reorders_it_ahead() -> None:
    s = Scheduler()
    s.handle(queue("x", priority=1), queue("y", priority=2), node("n1", vcpus=1))
    s.handle(job("hold", "y"), job("x-1", "x"), job("y-1", "y"))
    s.handle(queue("x", priority=3))
    assert started_jobs(s.handle(ended("hold"))) == ["x-1"]


def test_compute_environments_are_tried_in_compute_environment_order() -> None:
    s = Scheduler()
    s.handle(
        queue(ces=("second", "first")),
        node("in-first", ce="first", vcpus=2),
        node("in-second", ce="second", vcpus=2),
    )
    actions = s.handle(job("a", request=req(2)), job("b", request=req(2)), job("c", request=req(2)))
    assert starts(actions) == [("a", "in-second"), ("b", "in-first")]
    assert [(a.job_id, a.compute_environment) for a in actions if isinstance(a, StartAttempt)] == [
        ("a", "second"),
        ("b", "first"),
    ]
    assert reasons(actions) == {"c": WAIT_RESOURCES}


def test_first_compute_environment_wins_even_when_a_later_one_fits_tighter() -> None:
    s = Scheduler()
    s.handle(
        queue(ces=("big", "small")),
        node("huge", ce="big", vcpus=64),
        node("tiny", ce="small", vcpus=1),
    )
    assert starts(s.handle(job("a"))) == [("a", "huge")]


def test_best_fit_picks_the_node_with_fewest_vcpus_left_over() -> None:
    s = Scheduler()
    s.handle(queue(), node("n8", vcpus=8), node("n2", vcpus=2), node("n4", vcpus=4))
    assert starts(s.handle(job("a", request=req(2)))) == [("a", "n2")]
    assert starts(s.handle(job("b", request=req(3)))) == [("b", "n4")]
    assert starts(s.handle(job("c", request=req(1)))) == [("c", "n4")]


def test_best_fit_breaks_vcpu_ties_by_least_memory_left_over() -> None:
    s = Scheduler()
    s.handle(queue(), node("roomy", memory_mib=65536), node("snug", memory_mib=4096))
    assert starts(s.handle(job("a", request=req(1, 2048)))) == [("a", "snug")]


def test_best_fit_keeps_a_whole_node_free_for_a_big_job() -> None:
    s = Scheduler()
    s.handle(queue(), node("big", vcpus=8), node("partly-used", vcpus=8))
    s.handle(job("filler", request=req(4)))  # lands on one 8-vCPU node
    actions = s.handle(job("small", request=req(2)), job("whole", request=req(8)))
    placed = dict(starts(actions))
    assert placed["small"] == s.allocation("filler")[0]  # type: ignore[index]
    assert placed["whole"] != placed["small"]


# ------------------------------------------------------------------------ limits
@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(req(3, 1024, 0), req(2, 1024, 0), id="vcpus"),
        pytest.param(req(1, 6000, 0), req(1, 4000, 0), id="memory"),
        pytest.param(req(1, 1024, 2), req(1, 1024, 1), id="gpus"),
    ],
)
def test_a_job_waits_when_one_dimension_of_the_node_is_used_up(
    first: ResourceRequest, second: ResourceRequest
) -> None:
    s = one_node_cluster(vcpus=4, memory_mib=8192, gpus=2)
    assert started_jobs(s.handle(job("first", request=first))) == ["first"]
    actions = s.handle(job("second", request=second))
    assert starts(actions) == []
    assert reasons(actions) == {"second": WAIT_RESOURCES}
    assert s.node_usage("n1") == (first.vcpus, first.memory_mib, first.gpus)


def test_jobs_fill_a_node_exactly_and_no_further() -> None:
    s = one_node_cluster(vcpus=4, memory_mib=4096, gpus=2)
    actions = s.handle(*(job(f"j{i}", request=req(1, 1024, 0)) for i in range(5)))
    assert started_jobs(actions) == ["j0", "j1", "j2", "j3"]
    assert s.node_usage("n1") == (4, 4096, 0)


def test_fractional_vcpus_pack_onto_one_node() -> None:
    s = one_node_cluster(vcpus=1)
    actions = s.handle(
        job("a", request=req(0.25)), job("b", request=req(0.75)), job("c", request=req(0.25))
    )
    assert started_jobs(actions) == ["a", "b"]


def test_gpu_job_goes_only_to_a_node_with_gpus() -> None:
    s = Scheduler()
    s.handle(queue(), node("cpu", vcpus=4, gpus=0), node("gpu", vcpus=64, gpus=4))
    assert starts(s.handle(job("a", request=req(1, 1024, 1)))) == [("a", "gpu")]


def test_compute_environment_max_vcpus_caps_its_allocations() -> None:
    s = Scheduler()
    s.handle(queue(), ce_changed(max_vcpus=4), node("n1", vcpus=4), node("n2", vcpus=4))
    actions = s.handle(job("a", request=req(2)), job("b", request=req(2)), job("c", request=req(2)))
    assert started_jobs(actions) == ["a", "b"]
    assert "c" in reasons(actions)
    assert s.node_usage("n2") == (0, 0, 0)  # idle, yet the cap keeps c off it
    assert started_jobs(s.handle(ended("a"))) == ["c"]


def test_job_that_would_pass_max_vcpus_gets_the_max_vcpus_reason() -> None:
    s = Scheduler()
    s.handle(queue(), ce_changed(max_vcpus=4), node("n1", vcpus=8))
    actions = s.handle(job("a", request=req(3)), job("b", request=req(2)))
    assert started_jobs(actions) == ["a"]
    assert reasons(actions) == {"b": WAIT_MAX_VCPUS}


def test_job_held_back_by_a_full_max_vcpus_gets_the_max_vcpus_reason() -> None:
    s = Scheduler()
    s.handle(queue(), ce_changed(max_vcpus=4), node("n1", vcpus=8))
    assert started_jobs(s.handle(job("a", request=req(4)))) == ["a"]
    assert reasons(s.handle(job("b", request=req(2)))) == {"b": WAIT_MAX_VCPUS}


def test_raising_max_vcpus_lets_waiting_jobs_start() -> None:
    s = Scheduler()
    s.handle(queue(), ce_changed(max_vcpus=2), node("n1", vcpus=8))
    s.handle(job("a", request=req(2)), job("b", request=req(2)))
    assert started_jobs(s.handle(ce_changed(max_vcpus=None))) == ["b"]


def test_a_capped_compute_environment_overflows_to_the_next_in_order() -> None:
    s = Scheduler()
    s.handle(
        queue(ces=("capped", "spill")),
        ce_changed("capped", max_vcpus=2),
        node("c1", ce="capped", vcpus=8),
        node("s1", ce="spill", vcpus=8),
    )
    actions = s.handle(job("a", request=req(2)), job("b", request=req(2)))
    assert starts(actions) == [("a", "c1"), ("b", "s1")]


# --------------------------------------------------- enable / disable and reasons
def test_disabled_compute_environment_places_nothing_new() -> None:
    s = one_node_cluster(vcpus=4)
    s.handle(ce_changed(enabled=False))
    actions = s.handle(job("a"))
    assert starts(actions) == []
    assert reasons(actions) == {"a": WAIT_NO_CE}
    assert started_jobs(s.handle(ce_changed(enabled=True))) == ["a"]


def test_allocations_hold_while_their_compute_environment_is_disabled() -> None:
    s = one_node_cluster(vcpus=4)
    s.handle(job("running", request=req(4)))
    s.handle(ce_changed(enabled=False), job("waiting", request=req(1)))
    assert s.allocation("running") == ("n1", "ce")
    assert s.node_usage("n1") == (4, 1024, 0)
    # Re-enabled with the node still full: the waiting job must not be squeezed in.
    assert starts(s.handle(ce_changed(enabled=True))) == []
    assert started_jobs(s.handle(ended("running"))) == ["waiting"]


def test_disabled_compute_environment_is_skipped_for_the_next_in_order() -> None:
    s = Scheduler()
    s.handle(queue(ces=("off", "on")), node("n-off", ce="off"), node("n-on", ce="on"))
    s.handle(ce_changed("off", enabled=False))
    assert starts(s.handle(job("a"))) == [("a", "n-on")]


def test_disabled_queue_gives_the_queue_disabled_reason() -> None:
    s = Scheduler()
    s.handle(queue(enabled=False), node("n1"))
    actions = s.handle(job("a"))
    assert starts(actions) == []
    assert reasons(actions) == {"a": WAIT_QUEUE_DISABLED}
    assert started_jobs(s.handle(queue(enabled=True))) == ["a"]


def test_queue_with_no_nodes_in_its_compute_environments_says_so() -> None:
    s = Scheduler()
    s.handle(queue(ces=("empty",)), ce_changed("empty"), node("elsewhere", ce="other"))
    assert reasons(s.handle(job("a"))) == {"a": WAIT_NO_CE}


def test_job_bigger_than_any_node_gets_the_cannot_hold_reason() -> None:
    s = one_node_cluster(vcpus=4, memory_mib=8192, gpus=0)
    actions = s.handle(job("huge", request=req(64, 1024, 0)))
    assert starts(actions) == []
    reason = reasons(actions)["huge"]
    assert reason.startswith("No node in compute environments ce can hold")
    assert "vcpus=64" in reason and "memory=1024MiB" in reason and "gpus=0" in reason


@pytest.mark.parametrize(
    "request_",
    [req(1, 16384, 0), req(1, 1024, 1)],
    ids=["memory", "gpus"],
)
def test_job_needing_more_memory_or_gpus_than_any_node_gets_the_cannot_hold_reason(
    request_: ResourceRequest,
) -> None:
    s = one_node_cluster(vcpus=4, memory_mib=8192, gpus=0)
    assert reasons(s.handle(job("a", request=request_)))["a"].startswith(
        "No node in compute environments"
    )


def test_job_bigger_than_any_node_gets_the_cannot_hold_reason_behind_a_waiting_job() -> None:
    s = one_node_cluster(vcpus=4)
    s.handle(job("occupant", request=req(3)))  # 1 vCPU left: the node has room, not enough
    actions = s.handle(job("small", request=req(2)), job("huge", request=req(64)))
    assert reasons(actions)["small"] == WAIT_RESOURCES
    assert reasons(actions)["huge"].startswith("No node in compute environments ce can hold")


def test_job_bigger_than_any_node_gets_the_cannot_hold_reason_on_a_full_cluster() -> None:
    s = one_node_cluster(vcpus=4)
    s.handle(job("occupant", request=req(4)))
    actions = s.handle(job("huge", request=req(64)))
    assert reasons(actions)["huge"].startswith("No node in compute environments ce can hold")


def test_every_job_held_back_by_max_vcpus_gets_the_max_vcpus_reason() -> None:
    s = Scheduler()
    s.handle(queue(), ce_changed(max_vcpus=4), node("n1", vcpus=8))
    actions = s.handle(job("a", request=req(3)), job("b", request=req(2)), job("c", request=req(2)))
    assert reasons(actions) == {"b": WAIT_MAX_VCPUS, "c": WAIT_MAX_VCPUS}


def test_wait_reason_is_emitted_only_when_it_changes() -> None:
    s = one_node_cluster(vcpus=1)
    s.handle(job("running"))
    assert reasons(s.handle(job("a"))) == {"a": WAIT_RESOURCES}
    assert s.handle() == []
    assert reasons(s.handle(job("b"))) == {"b": WAIT_RESOURCES}
    assert s.handle(node("elsewhere", ce="other")) == []
    assert reasons(s.handle(queue(enabled=False))) == {
        "a": WAIT_QUEUE_DISABLED,
        "b": WAIT_QUEUE_DISABLED,
    }
    assert s.handle(queue(enabled=False)) == []
    assert reasons(s.handle(queue(enabled=True))) == {"a": WAIT_RESOURCES, "b": WAIT_RESOURCES}


def test_a_job_made_runnable_again_gets_its_wait_reason_again() -> None:
    s = one_node_cluster(vcpus=1)
    s.handle(job("hold"), job("a"))
    s.handle(JobWithdrawn(_eid(), "a"))
    assert reasons(s.handle(job("a"))) == {"a": WAIT_RESOURCES}


# --------------------------------------------------------- resources coming back
def test_attempt_ended_frees_resources_and_the_next_job_starts() -> None:
    s = one_node_cluster(vcpus=4, memory_mib=8192, gpus=1)
    s.handle(job("a", request=req(4, 8192, 1)), job("b", request=req(4, 8192, 1)))
    actions = s.handle(ended("a"))
    assert starts(actions) == [("b", "n1")]
    assert s.allocation("a") is None
    assert s.node_usage("n1") == (4, 8192, 1)


def test_attempt_ended_for_an_unknown_job_changes_nothing() -> None:
    s = one_node_cluster()
    s.handle(job("a"))
    assert s.handle(ended("never-started")) == []
    assert s.node_usage("n1") == (1, 1024, 0)


def test_attempt_ended_twice_frees_resources_once() -> None:
    s = one_node_cluster(vcpus=2)
    s.handle(job("a"), job("b"))
    s.handle(ended("a"))
    s.handle(ended("a"))
    assert s.node_usage("n1") == (1, 1024, 0)


def test_node_gone_drops_its_allocations() -> None:
    s = one_node_cluster(vcpus=4)
    s.handle(job("a", request=req(4)), job("b", request=req(4)))
    assert s.handle(NodeGone(_eid(), "n1")) == [SetWaitReason("b", WAIT_NO_CE)]
    assert s.allocation("a") is None
    assert s.node_usage("n1") is None
    # The node comes back empty (its attempts are gone): b gets the whole node.
    assert starts(s.handle(node("n1", vcpus=4))) == [("b", "n1")]
    assert s.node_usage("n1") == (4, 1024, 0)


def test_node_gone_gives_back_its_compute_environment_max_vcpus_share() -> None:
    s = Scheduler()
    s.handle(queue(), ce_changed(max_vcpus=4), node("n1", vcpus=4))
    s.handle(job("a", request=req(4)))
    s.handle(NodeGone(_eid(), "n1"), node("n2", vcpus=4))
    assert starts(s.handle(job("b", request=req(4)))) == [("b", "n2")]


def test_node_gone_for_an_unknown_node_is_harmless() -> None:
    s = one_node_cluster()
    assert s.handle(NodeGone(_eid(), "ghost")) == []


def test_draining_node_gets_nothing_new_but_keeps_its_allocations() -> None:
    s = Scheduler()
    s.handle(queue(), node("n1", vcpus=4, allocations=(("old", req(1)),), accepting=False))
    actions = s.handle(job("a"))
    assert starts(actions) == []
    assert reasons(actions) == {"a": WAIT_RESOURCES}
    assert s.allocation("old") == ("n1", "ce")
    assert starts(s.handle(node("n2"))) == [("a", "n2")]


# ------------------------------------------------------------- re-registration
def test_node_reporting_allocations_after_a_head_restart_holds_them() -> None:
    s = Scheduler()  # a fresh core, as after a head restart
    s.handle(
        queue(), node("n1", vcpus=4, memory_mib=8192, gpus=1, allocations=(("a", req(3, 4096, 1)),))
    )
    assert s.allocation("a") == ("n1", "ce")
    assert s.node_usage("n1") == (3, 4096, 1)
    actions = s.handle(
        job("b", request=req(2)), job("c", request=req(1, 1024, 1)), job("d", request=req(1))
    )
    assert started_jobs(actions) == ["d"]  # no double-booking of what a holds
    assert started_jobs(s.handle(ended("a"))) == ["b", "c"]


def test_allocations_reported_at_registration_count_toward_max_vcpus() -> None:
    s = Scheduler()
    s.handle(queue(), ce_changed(max_vcpus=4), node("n1", vcpus=8, allocations=(("a", req(3)),)))
    actions = s.handle(job("b", request=req(2)), job("c", request=req(1)))
    assert started_jobs(actions) == ["c"]
    assert reasons(actions) == {"b": WAIT_MAX_VCPUS}


def test_a_job_a_node_reports_running_is_no_longer_runnable() -> None:
    s = Scheduler()
    s.handle(queue(), node("full", vcpus=1))
    s.handle(job("occupant"), job("a"))
    assert s.runnable_count == 1
    s.handle(node("n2", vcpus=1, allocations=(("a", req()),)))
    assert s.runnable_count == 0
    assert s.allocation("a") == ("n2", "ce")
    assert s.handle(ended("occupant")) == []


def test_live_reregistration_with_the_same_allocation_does_not_double_book() -> None:
    s = one_node_cluster(vcpus=4)
    s.handle(job("a", request=req(4)))
    s.handle(node("n1", vcpus=4, allocations=(("a", req(4)),)))  # agent reconnects
    assert s.node_usage("n1") == (4, 1024, 0)
    assert starts(s.handle(job("b", request=req(4)))) == []


def test_live_reregistration_without_an_attempt_drops_its_stale_hold() -> None:
    s = one_node_cluster(vcpus=4)
    s.handle(job("a", request=req(4)))
    s.handle(node("n1", vcpus=4))  # the agent no longer runs a
    assert s.allocation("a") is None
    assert s.node_usage("n1") == (0, 0, 0)
    assert started_jobs(s.handle(job("b", request=req(4)), job("c", request=req(4)))) == ["b"]


def test_node_moving_to_another_compute_environment_serves_that_environment() -> None:
    s = Scheduler()
    s.handle(queue("qa", ces=("a",)), queue("qb", ces=("b",)), node("n1", ce="a"))
    s.handle(node("n1", ce="b"))
    actions = s.handle(job("ja", "qa"), job("jb", "qb"))
    assert starts(actions) == [("jb", "n1")]
    assert reasons(actions) == {"ja": WAIT_NO_CE}


# ------------------------------------------------------------ queue membership
def test_withdrawn_job_is_never_started() -> None:
    s = one_node_cluster(vcpus=1)
    s.handle(job("occupant"), job("a"), job("b"))
    assert s.runnable_count == 2
    s.handle(JobWithdrawn(_eid(), "a"))
    assert s.runnable_count == 1
    assert started_jobs(s.handle(ended("occupant"))) == ["b"]


def test_withdrawing_an_unknown_job_is_harmless() -> None:
    s = one_node_cluster()
    assert s.handle(JobWithdrawn(_eid(), "nobody")) == []


def test_job_for_a_queue_that_does_not_exist_yet_starts_once_it_appears() -> None:
    s = Scheduler()
    s.handle(node("n1"))
    assert s.handle(job("early", "late-queue")) == []
    assert s.runnable_count == 1
    assert starts(s.handle(queue("late-queue"))) == [("early", "n1")]
    assert s.runnable_count == 0


def test_jobs_of_a_removed_queue_wait_until_it_is_recreated() -> None:
    s = Scheduler()
    s.handle(queue(), node("n1", vcpus=1))
    s.handle(job("occupant"), job("a"))
    s.handle(JobQueueRemoved(_eid(), "q"))
    assert s.handle(ended("occupant")) == []
    assert s.runnable_count == 1
    assert starts(s.handle(queue())) == [("a", "n1")]


def test_small_job_may_pass_a_big_one_that_does_not_fit() -> None:
    s = one_node_cluster(vcpus=4)
    s.handle(job("half", request=req(2)))
    actions = s.handle(job("big", request=req(4)), job("small", request=req(1)))
    assert started_jobs(actions) == ["small"]
    assert reasons(actions) == {"big": WAIT_RESOURCES}


def test_removed_compute_environment_without_nodes_serves_nothing() -> None:
    s = Scheduler()
    s.handle(queue(ces=("gone",)), ce_changed("gone"))
    s.handle(ComputeEnvironmentRemoved(_eid(), "gone"))
    assert reasons(s.handle(job("a"))) == {"a": WAIT_NO_CE}
    # The name coming back with a node works from scratch.
    assert starts(s.handle(node("n1", ce="gone"))) == [("a", "n1")]


def test_unknown_event_type_is_rejected() -> None:
    @dataclass(frozen=True)
    class Bogus(Event):
        pass

    with pytest.raises(TypeError, match="unknown scheduler event"):
        Scheduler().handle(Bogus("x"))


def test_every_start_is_logged_with_the_event_that_caused_it() -> None:
    s = one_node_cluster()
    ev = job("a")
    s.handle(ev)
    assert list(s.decisions) == [(ev.event_id, "start a on n1 (ce)")]


def test_decision_log_is_bounded() -> None:
    s = Scheduler(log_size=3)
    s.handle(queue(), node("n1", vcpus=100, memory_mib=100 * 1024))
    for i in range(10):
        s.handle(job(f"j{i}"))
    assert [d for _, d in s.decisions] == [f"start j{i} on n1 (ce)" for i in (7, 8, 9)]
