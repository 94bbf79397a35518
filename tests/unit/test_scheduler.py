"""The scheduler core, driven event by event: events in, actions out, no I/O and no clock."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.scheduler.core import (
    WAIT_MAX_VCPUS,
    WAIT_NO_CE,
    WAIT_QUEUE_DISABLED,
    WAIT_RESOURCES,
    Action,
    AttemptEnded,
    ComputeEnvironmentChanged,
    ComputeEnvironmentRemoved,
    Event,
    JobQueueChanged,
    JobQueueRemoved,
    JobRunnable,
    JobWithdrawn,
    NodeGone,
    NodeUp,
    PreemptAttempt,
    Scheduler,
    SetWaitReason,
    StartAttempt,
    StartGang,
    Tick,
)
from hpcbatch.scheduler.gpus import placement_key

_ids = itertools.count(1)
_seqs = itertools.count(1)


def _eid() -> str:
    return f"ev-{next(_ids)}"


def req(vcpus: float = 1, memory_mib: int = 1024, gpus: int = 0) -> ResourceRequest:
    return ResourceRequest(vcpus=vcpus, memory_mib=memory_mib, gpus=gpus)


def queue(
    name: str = "q", ces: Iterable[str] = ("ce",), priority: int = 1, enabled: bool = True
) -> JobQueueChanged:
    return JobQueueChanged(_eid(), name, enabled, priority, tuple(ces))


def node(
    name: str,
    ce: str = "ce",
    vcpus: float = 4,
    memory_mib: int = 8192,
    gpus: int = 0,
    allocations: tuple[tuple[str, ResourceRequest], ...] = (),
    accepting: bool = True,
) -> NodeUp:
    return NodeUp(_eid(), name, ce, vcpus, memory_mib, gpus, allocations, accepting)


def job(job_id: str, q: str = "q", request: ResourceRequest | None = None) -> JobRunnable:
    return JobRunnable(_eid(), job_id, q, request or req(), next(_seqs))


def ended(job_id: str) -> AttemptEnded:
    return AttemptEnded(_eid(), job_id)


def ce_changed(
    name: str = "ce", enabled: bool = True, max_vcpus: float | None = None
) -> ComputeEnvironmentChanged:
    return ComputeEnvironmentChanged(_eid(), name, enabled, max_vcpus)


def starts(actions: list[Action]) -> list[tuple[str, str]]:
    """(job, node) of every StartAttempt, in order."""
    return [(a.job_id, a.node) for a in actions if isinstance(a, StartAttempt)]


def started_jobs(actions: list[Action]) -> list[str]:
    return [a.job_id for a in actions if isinstance(a, StartAttempt)]


def reasons(actions: list[Action]) -> dict[str, str]:
    """Wait reasons without AWS's ``CODE - `` prefix and the capacity numbers (tested apart)."""
    return {
        a.job_id: re.sub(r"\A[A-Z]+:[A-Z_]+ - ", "", a.reason).split(" (needs ")[0]
        for a in actions
        if isinstance(a, SetWaitReason)
    }


def one_node_cluster(vcpus: float = 4, memory_mib: int = 8192, gpus: int = 0) -> Scheduler:
    s = Scheduler()
    assert s.handle(queue(), node("n1", vcpus=vcpus, memory_mib=memory_mib, gpus=gpus)) == []
    return s


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


# ---------------------------------------------------------------- properties
CES = ("ce-a", "ce-b")
NODE_NAMES = ("n0", "n1", "n2", "n3")
JOB_IDS = tuple(f"j{i}" for i in range(8))
QUEUES = {  # name -> (priority, computeEnvironmentOrder)
    "q-hi": (10, ("ce-a", "ce-b")),
    "q-lo": (1, ("ce-b",)),
    "q-late": (5, ("ce-b", "ce-a")),  # created only by an event, so jobs may arrive first
}
NODE_SIZES = [(1, 1024, 0), (2, 4096, 0), (4, 8192, 1), (8, 16384, 2)]
REQUESTS = [
    req(v, m, g)
    for v, m, g in [
        (0.5, 256, 0),
        (1, 1024, 0),
        (2, 1024, 0),
        (3, 4096, 0),
        (4, 8192, 0),
        (1, 1024, 1),
        (2, 2048, 2),
        (16, 1024, 0),
    ]
]

_pick = st.integers(0, 63)  # which of the eligible jobs an op acts on (modulo their number)
_mostly = st.sampled_from([True, True, True, False])
_op = st.one_of(
    st.tuples(
        st.just("node_up"),
        st.sampled_from(NODE_NAMES),
        st.sampled_from(CES),
        st.sampled_from(NODE_SIZES),
        _mostly,
    ),
    st.tuples(st.just("node_gone"), st.sampled_from(NODE_NAMES)),
    st.tuples(
        st.just("runnable"), _pick, st.sampled_from(sorted(QUEUES)), st.sampled_from(REQUESTS)
    ),
    st.tuples(
        st.just("runnable"), _pick, st.sampled_from(sorted(QUEUES)), st.sampled_from(REQUESTS)
    ),
    st.tuples(st.just("withdraw"), _pick),
    st.tuples(st.just("end"), _pick),
    st.tuples(st.just("end"), _pick),
    st.tuples(st.just("ce"), st.sampled_from(CES), _mostly, st.sampled_from([None, 2, 4, 8])),
    st.tuples(st.just("queue"), st.sampled_from(sorted(QUEUES)), _mostly),
)


@dataclass
class _Model:
    """What the head knows, kept independently of the core to check its actions."""

    reregister: bool
    nodes: dict[str, tuple[str, tuple[float, int, int], bool]] = field(default_factory=dict)
    ces: dict[str, tuple[bool, float | None]] = field(default_factory=dict)
    queues: dict[str, bool] = field(default_factory=dict)  # existing queue -> enabled
    state: dict[str, str] = field(default_factory=lambda: dict.fromkeys(JOB_IDS, "idle"))
    queue_of: dict[str, str] = field(default_factory=dict)
    request: dict[str, ResourceRequest] = field(default_factory=dict)
    live: dict[str, str] = field(default_factory=dict)  # started job -> node holding it
    reason: dict[str, str] = field(default_factory=dict)
    seq: int = 0

    def event_for(self, op: tuple) -> Event | None:  # type: ignore[type-arg]
        """Turn a generated op into an event the head could send now, and note its effect."""
        kind = op[0]
        if kind == "node_up":
            _, name, ce, size, accepting = op
            if name in self.nodes:
                if not self.reregister:
                    return None
                ce, size, _ = self.nodes[name]  # same machine, maybe now draining
                allocations = tuple((j, self.request[j]) for j, n in self.live.items() if n == name)
            else:
                allocations = ()
            self.nodes[name] = (ce, size, accepting)
            self.ces.setdefault(ce, (True, None))
            return NodeUp(_eid(), name, ce, *size, allocations, accepting)
        if kind == "node_gone":
            self.nodes.pop(op[1], None)
            for j in [j for j, n in self.live.items() if n == op[1]]:
                del self.live[j]
                self.state[j] = "lost"  # the head still has to end the attempt
            return NodeGone(_eid(), op[1])
        if kind == "runnable":
            _, k, q, r = op
            j = self._eligible(k, "idle")
            if j is None:
                return None
            self.state[j], self.queue_of[j], self.request[j] = "runnable", q, r
            self.reason.pop(j, None)
            self.seq += 1
            return JobRunnable(_eid(), j, q, r, self.seq)
        if kind == "withdraw":
            j = self._eligible(op[1], "runnable")
            if j is None:
                return None
            self.state[j] = "idle"
            return JobWithdrawn(_eid(), j)
        if kind == "end":
            j = self._eligible(op[1], "started", "lost")
            if j is None:
                return None
            self.state[j] = "idle"
            self.live.pop(j, None)
            return AttemptEnded(_eid(), j)
        if kind == "ce":
            _, name, enabled, max_vcpus = op
            self.ces[name] = (enabled, max_vcpus)
            return ComputeEnvironmentChanged(_eid(), name, enabled, max_vcpus)
        _, name, enabled = op
        self.queues[name] = enabled
        priority, ces = QUEUES[name]
        return JobQueueChanged(_eid(), name, enabled, priority, ces)

    def _eligible(self, k: int, *states: str) -> str | None:
        """The ``k``-th job (modulo) in one of ``states``, so every generated op is usable."""
        jobs = [j for j in JOB_IDS if self.state[j] in states]
        return jobs[k % len(jobs)] if jobs else None

    def usage(self, node_name: str) -> tuple[float, int, int]:
        held = [self.request[j] for j, n in self.live.items() if n == node_name]
        return (
            sum(r.vcpus for r in held),
            sum(r.memory_mib for r in held),
            sum(r.gpus for r in held),
        )

    def ce_vcpus(self, ce: str) -> float:
        return sum(self.request[j].vcpus for j, n in self.live.items() if self.nodes[n][0] == ce)

    def room_in(self, j: str, ce: str) -> list[tuple[Any, ...]]:
        """(*placement key, node) of every node of ``ce`` the runnable ``j`` fits now."""
        enabled, max_vcpus = self.ces.get(ce, (True, None))
        r = self.request[j]
        if not enabled or (max_vcpus is not None and self.ce_vcpus(ce) + r.vcpus > max_vcpus):
            return []
        out = []
        for name, (node_ce, (v, m, g), accepting) in self.nodes.items():
            uv, um, ug = self.usage(name)
            if (
                node_ce == ce
                and accepting
                and uv + r.vcpus <= v
                and um + r.memory_mib <= m
                and ug + r.gpus <= g
            ):
                out.append((*placement_key(r.gpus, g, g - ug, v - uv, m - um), name))
        return out

    def fits_somewhere(self, j: str) -> str | None:
        """A node the runnable job ``j`` could start on right now, by the documented rules."""
        q = self.queue_of[j]
        if not self.queues.get(q, False):
            return None
        for ce in QUEUES[q][1]:
            room = self.room_in(j, ce)
            if room:
                return room[0][-1]
        return None


def _check_actions(model: _Model, s: Scheduler, actions: list[Action]) -> None:
    started_in: set[str] = set()
    for a in actions:
        if isinstance(a, StartAttempt):
            assert model.state[a.job_id] == "runnable", (
                f"{a.job_id} started while {model.state[a.job_id]}"
            )
            assert a.node in model.nodes, f"{a.job_id} started on absent node {a.node}"
            ce, _, accepting = model.nodes[a.node]
            assert accepting and ce == a.compute_environment
            assert model.ces.get(ce, (True, None))[0], f"{a.job_id} placed in disabled {ce}"
            q = model.queue_of[a.job_id]
            assert model.queues.get(q) is True, f"{a.job_id} started from missing/disabled {q}"
            order = QUEUES[q][1]
            assert ce in order
            for earlier in order[: order.index(ce)]:
                assert not model.room_in(a.job_id, earlier), f"{a.job_id}: {earlier} comes first"
            room = model.room_in(a.job_id, ce)
            chosen = next((r for r in room if r[-1] == a.node), None)
            assert chosen is not None, f"{a.job_id} does not fit on {a.node}"
            assert chosen[:-1] == min(r[:-1] for r in room), (
                f"{a.job_id}: {a.node} is not the best fit"
            )
            model.state[a.job_id] = "started"
            model.live[a.job_id] = a.node
            model.reason.pop(a.job_id, None)
            started_in.add(ce)
        else:
            assert isinstance(a, SetWaitReason)
            assert model.state[a.job_id] == "runnable", (
                f"wait reason for {a.job_id} while {model.state[a.job_id]}"
            )
            assert model.reason.get(a.job_id) != a.reason, (
                f"{a.job_id}: unchanged reason re-emitted"
            )
            model.reason[a.job_id] = a.reason
    for name, (_, cap, _) in model.nodes.items():
        used = model.usage(name)
        assert all(u <= c + 1e-9 for u, c in zip(used, cap, strict=True)), (
            f"{name} over-allocated: {used} > {cap}"
        )
        assert s.node_usage(name) == pytest.approx(used), (
            f"{name}: core usage {s.node_usage(name)} != {used}"
        )
    for ce in started_in:
        max_vcpus = model.ces.get(ce, (True, None))[1]
        assert max_vcpus is None or model.ce_vcpus(ce) <= max_vcpus + 1e-9, f"{ce} past maxvCpus"
    for j, st_ in model.state.items():
        if st_ != "runnable":
            continue
        room = model.fits_somewhere(j)
        assert room is None, f"{j} left waiting although {room} has room for it"
        if model.queue_of[j] in model.queues:
            assert j in model.reason, f"runnable {j} has no wait reason"


def _run(reregister: bool, batches: list[list[tuple]]) -> None:  # type: ignore[type-arg]
    s = Scheduler()
    model = _Model(reregister=reregister)
    # q-hi and q-lo and a node in each CE exist from the start; q-late only once an op
    # creates it, so jobs submitted to it first wait for it.
    for op in (
        ("queue", "q-hi", True),
        ("queue", "q-lo", True),
        ("node_up", "n0", "ce-a", (4, 8192, 1), True),
        ("node_up", "n1", "ce-b", (8, 16384, 2), True),
    ):
        _check_actions(model, s, s.handle(model.event_for(op)))  # type: ignore[arg-type]
    for batch in batches:
        events = [e for e in (model.event_for(op) for op in batch) if e is not None]
        _check_actions(model, s, s.handle(*events))


_batches = st.lists(st.lists(_op, min_size=1, max_size=3), max_size=40)


@settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(batches=_batches)
def test_random_event_sequences_never_over_allocate_or_double_start(
    batches: list[list[tuple]],
) -> None:  # type: ignore[type-arg]
    """Nodes come and go (a returning node starts empty), jobs become runnable, are
    withdrawn, start and end: no node or CE is over-committed, no job starts twice or
    unrunnable, placement follows CE order and best fit, and no job is left waiting
    while a node it fits on has room."""
    _run(False, batches)


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    phases=[Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
@given(batches=_batches)
def test_random_event_sequences_with_live_reregistration_never_over_allocate(
    batches: list[list[tuple]],  # type: ignore[type-arg]
) -> None:
    """The same, with nodes re-registering while up and reporting what they run."""
    _run(True, batches)


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
