"""Preemption against gangs, pure: a gang holds its nodes whole, so a single-node preemptor
sees nothing free on a victim gang's node and stops the gang whole (issue 21)."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hpcbatch.scheduler.core import (
    Action,
    AttemptEnded,
    JobQueueChanged,
    JobRunnable,
    NodeUp,
    PreemptAttempt,
    Scheduler,
    SetWaitReason,
    StartAttempt,
    StartGang,
    Tick,
)
from tests.unit.scheduler_events import event_id as _eid
from tests.unit.scheduler_events import next_seq, req


def node(name: str, vcpus: float = 4) -> NodeUp:
    return NodeUp(_eid(), name, "ce", vcpus, 8192, 0, (), True)


def prio_queue(name: str, priority: int, preempts: bool = False, preemptible: bool = False) -> JobQueueChanged:
    return JobQueueChanged(_eid(), name, True, priority, ("ce",), preempts=preempts, preemptible=preemptible)


def runnable(job_id: str, q: str, vcpus: float = 1, num_nodes: int = 1) -> JobRunnable:
    return JobRunnable(_eid(), job_id, q, req(vcpus), next_seq(), num_nodes=num_nodes)


def preempted(actions: list[Action]) -> dict[str, str]:
    return {a.job_id: a.for_job for a in actions if isinstance(a, PreemptAttempt)}


def reasons(actions: list[Action]) -> dict[str, str]:
    return {a.job_id: re.sub(r"\A[A-Z]+:[A-Z_]+ - ", "", a.reason) for a in actions if isinstance(a, SetWaitReason)}


def gang_cluster(*, lo_preemptible: bool = True) -> Scheduler:
    """Two 4-vCPU nodes, both held whole by a 2x1-vCPU gang of queue ``lo``."""
    s = Scheduler()
    s.handle(Tick(_eid(), 0.0), prio_queue("hi", 10, preempts=True),
             prio_queue("lo", 1, preemptible=lo_preemptible), node("n1"), node("n2"))
    s.handle(Tick(_eid(), 1.0), runnable("lg", "lo", 1, num_nodes=2))
    return s


def test_a_single_node_job_preempts_a_gang_whose_nodes_have_unused_vcpus() -> None:
    s = gang_cluster()
    actions = s.handle(Tick(_eid(), 5.0), runnable("urgent", "hi"))
    assert preempted(actions) == {"lg": "urgent"}
    assert reasons(actions)["urgent"] == "Preempting lg to start"
    # The gang is stopped whole; once it has ended, urgent starts on one of its nodes.
    started = [a for a in s.handle(Tick(_eid(), 6.0), AttemptEnded(_eid(), "lg")) if isinstance(a, StartAttempt)]
    assert [a.job_id for a in started] == ["urgent"] and started[0].node in {"n1", "n2"}


def test_a_gang_that_is_not_preemptible_is_not_stopped_and_the_job_waits_for_resources() -> None:
    s = gang_cluster(lo_preemptible=False)
    actions = s.handle(Tick(_eid(), 5.0), runnable("urgent", "hi"))
    assert preempted(actions) == {}
    assert reasons(actions)["urgent"].startswith("Waiting for resources")


# ---------------------------------------------------------------- property
_job = st.tuples(st.sampled_from(("lo", "keep")), st.integers(1, 4), st.integers(1, 2))


def _run_lower(s: Scheduler, jobs: list[tuple[str, int, int]]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Submit ``jobs`` (queue, vCPUs, nodes) one a second: what started, by id -> (queue, nodes)."""
    running: dict[str, tuple[str, tuple[str, ...]]] = {}
    queue_of = {}
    for i, (q, vcpus, n) in enumerate(jobs):
        queue_of[f"j{i}"] = q
        for a in s.handle(Tick(_eid(), 1.0 + i), runnable(f"j{i}", q, vcpus, num_nodes=n)):
            if isinstance(a, StartAttempt):
                running[a.job_id] = (queue_of[a.job_id], (a.node,))
            elif isinstance(a, StartGang):
                running[a.job_id] = (queue_of[a.job_id], a.nodes)
    return running


def _room_once_preemptible_stop(
    sizes: dict[str, int], running: dict[str, tuple[str, tuple[str, ...]]], jobs: list[tuple[str, int, int]],
    vcpus: int,
) -> bool:
    """Whether a ``vcpus`` single-node job fits somewhere once every ``lo`` job has stopped."""
    shape = {f"j{i}": (v, n) for i, (_, v, n) in enumerate(jobs)}
    for name, size in sizes.items():
        kept = [j for j, (q, nodes) in running.items() if q == "keep" and name in nodes]
        if any(shape[j][1] > 1 for j in kept):
            continue  # a gang that stays holds the node whole
        if size - sum(shape[j][0] for j in kept) >= vcpus:
            return True
    return False


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.sampled_from((2, 4, 8)), min_size=1, max_size=3),
    jobs=st.lists(_job, max_size=6),
    vcpus=st.integers(1, 8),
)
@example(sizes=[4, 4], jobs=[("lo", 1, 2)], vcpus=1)  # issue 21: the gang's nodes looked free
@example(sizes=[4, 4, 2], jobs=[("lo", 2, 2), ("keep", 2, 1), ("lo", 1, 1)], vcpus=3)
def test_a_preempting_head_that_fits_once_preemptible_work_stops_always_gets_room(
    sizes: list[int], jobs: list[tuple[str, int, int]], vcpus: int,
) -> None:
    """A preempting head-of-queue job that fits on the cluster once all preemptible
    lower-priority work is stopped either starts or gets victims chosen."""
    s = Scheduler()
    nodes = {f"n{i}": size for i, size in enumerate(sizes)}
    s.handle(Tick(_eid(), 0.0), prio_queue("hi", 10, preempts=True), prio_queue("lo", 1, preemptible=True),
             prio_queue("keep", 1), *(node(name, size) for name, size in nodes.items()))
    running = _run_lower(s, jobs)
    actions = s.handle(Tick(_eid(), 100.0), runnable("urgent", "hi", vcpus))
    fits = _room_once_preemptible_stop(nodes, running, jobs, vcpus)
    got_room = "urgent" in {a.job_id for a in actions if isinstance(a, StartAttempt)} or bool(preempted(actions))
    assert got_room == fits, (running, actions)
    assert all(running[v][0] == "lo" for v in preempted(actions))
