"""Whole-GPU assignment in the scheduler core: specific, exclusive devices per job."""

from __future__ import annotations

import itertools
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.scheduler.core import (
    Action,
    JobRunnable,
    NodeGone,
    NodeUp,
    Scheduler,
    SetWaitReason,
    StartAttempt,
    StartGang,
)
from tests.unit.scheduler_events import ended, next_seq, queue
from tests.unit.scheduler_events import event_id as _eid


def node(
    name: str,
    gpus: int = 2,
    ids: tuple[str, ...] | None = None,
    vcpus: float = 16,
    allocations: tuple[tuple[str, ResourceRequest], ...] = (),
    holds: tuple[tuple[str, tuple[str, ...]], ...] = (),
    gang_jobs: tuple[str, ...] = (),
) -> NodeUp:
    gpu_ids = ids if ids is not None else tuple(f"GPU-{name}-{j}" for j in range(gpus))
    return NodeUp(
        _eid(), name, "ce", vcpus, 65536, len(gpu_ids), allocations,
        gang_jobs=gang_jobs, gpu_ids=gpu_ids, gpu_holds=holds,
    )


def gpu_req(gpus: int, vcpus: float = 1) -> ResourceRequest:
    return ResourceRequest(vcpus=vcpus, memory_mib=1024, gpus=gpus)


def job(job_id: str, gpus: int = 1, nodes: int = 1) -> JobRunnable:
    return JobRunnable(_eid(), job_id, "q", gpu_req(gpus), next_seq(), num_nodes=nodes)


def starts(actions: list[Action]) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {a.job_id: (a.node, a.gpus) for a in actions if isinstance(a, StartAttempt)}


def reasons(actions: list[Action]) -> dict[str, str]:
    """Wait reasons without AWS's ``CODE - `` prefix and the capacity numbers (tested apart)."""
    return {
        a.job_id: re.sub(r"\A[A-Z]+:[A-Z_]+ - ", "", a.reason).split(" (needs ")[0]
        for a in actions
        if isinstance(a, SetWaitReason)
    }


def test_five_one_gpu_jobs_on_two_nodes_of_two_gpus() -> None:
    s = Scheduler()
    s.handle(queue(), node("n1"), node("n2"))
    actions = s.handle(*(job(f"j{i}") for i in range(5)))
    started = starts(actions)
    assert sorted(started) == ["j0", "j1", "j2", "j3"]
    pairs = {(n, g) for n, gs in started.values() for g in gs}
    assert all(len(gs) == 1 for _, gs in started.values())
    assert pairs == {("n1", "GPU-n1-0"), ("n1", "GPU-n1-1"), ("n2", "GPU-n2-0"), ("n2", "GPU-n2-1")}
    assert "j4" in reasons(actions)
    freed = started["j2"]
    actions = s.handle(ended("j2"))
    assert starts(actions) == {"j4": freed}
    assert s.allocated_gpus("j4") == {freed[0]: freed[1]}
    assert s.allocated_gpus("j2") == {}


def test_a_two_gpu_job_gets_an_adjacent_pair() -> None:
    s = Scheduler()
    s.handle(queue(), node("n1", gpus=4))
    # Free GPUs 1 and 2 of four: a pair goes there, adjacent.
    first = starts(s.handle(job("a"), job("b"), job("c"), job("d")))
    assert [first[j][1] for j in "abcd"] == [("GPU-n1-0",), ("GPU-n1-1",), ("GPU-n1-2",), ("GPU-n1-3",)]
    s.handle(ended("b"), ended("c"))
    assert starts(s.handle(job("pair", gpus=2))) == {"pair": ("n1", ("GPU-n1-1", "GPU-n1-2"))}
    s.handle(ended("pair"), ended("d"))  # free: 1, 2, 3; held: 0
    s.handle(job("one"))  # takes the lowest: 1; free 2, 3
    assert s.gpu_holders("n1") == {"GPU-n1-0": "a", "GPU-n1-1": "one"}
    assert starts(s.handle(job("pair2", gpus=2))) == {"pair2": ("n1", ("GPU-n1-2", "GPU-n1-3"))}


def test_two_gpus_not_adjacent_still_start_on_the_lowest_free() -> None:
    s = Scheduler()
    s.handle(queue(), node("n1", gpus=4))
    s.handle(job("a"), job("b"), job("c"), job("d"))
    s.handle(ended("a"), ended("c"))  # free: 0 and 2
    assert starts(s.handle(job("pair", gpus=2))) == {"pair": ("n1", ("GPU-n1-0", "GPU-n1-2"))}


def test_a_job_needing_more_gpus_than_any_node_has_waits_with_a_gpu_reason() -> None:
    s = Scheduler()
    s.handle(queue(), node("n1"), node("n2"))
    actions = s.handle(job("big", gpus=3))
    assert starts(actions) == {}
    reason = reasons(actions)["big"]
    assert "3 GPUs" in reason and "the most is 2" in reason and "gpus=3" in reason


def test_nodes_without_gpu_ids_fall_back_to_numbered_gpus() -> None:
    s = Scheduler()
    s.handle(queue(), NodeUp(_eid(), "n1", "ce", 8, 8192, 2))
    assert starts(s.handle(job("a"), job("b"))) == {"a": ("n1", ("0",)), "b": ("n1", ("1",))}


def test_cpu_jobs_get_no_gpus() -> None:
    s = Scheduler()
    s.handle(queue(), node("n1"))
    assert starts(s.handle(job("cpu", gpus=0))) == {"cpu": ("n1", ())}


def test_reregistration_keeps_reported_gpu_holds() -> None:
    """After a head restart the node reports which GPUs each job holds: never handed out twice."""
    s = Scheduler()
    s.handle(queue(), node("n1", gpus=4, allocations=(("old", gpu_req(1)), ("anon", gpu_req(1))), holds=(("old", ("GPU-n1-0",)),)))
    # ``anon`` came without ids: it gets a free one, never GPU 0.
    assert s.gpu_holders("n1") == {"GPU-n1-0": "old", "GPU-n1-1": "anon"}
    s.handle(node("n1", gpus=4, allocations=(("old", gpu_req(1)),), holds=(("old", ("GPU-n1-2",)),)))
    assert s.gpu_holders("n1") == {"GPU-n1-2": "old"}
    actions = s.handle(job("new", gpus=2))
    assert starts(actions) == {"new": ("n1", ("GPU-n1-0", "GPU-n1-1"))}
    actions = s.handle(job("new2", gpus=1))
    assert starts(actions) == {"new2": ("n1", ("GPU-n1-3",))}


def test_node_gone_frees_its_gpus() -> None:
    s = Scheduler()
    s.handle(queue(), node("n1", gpus=1))
    s.handle(job("a"))
    s.handle(NodeGone(_eid(), "n1"))
    assert s.allocated_gpus("a") == {}
    s.handle(node("n1", gpus=1))
    assert starts(s.handle(job("b"))) == {"b": ("n1", ("GPU-n1-0",))}


def test_a_gang_gets_gpus_on_every_node_in_node_order() -> None:
    s = Scheduler()
    s.handle(queue(), node("n1"), node("n2"))
    actions = s.handle(job("g", gpus=2, nodes=2))
    gangs = [a for a in actions if isinstance(a, StartGang)]
    assert gangs == [
        StartGang("g", ("n1", "n2"), "ce", (("GPU-n1-0", "GPU-n1-1"), ("GPU-n2-0", "GPU-n2-1")))
    ]
    # A re-registering gang node keeps its ids in the gang's hold.
    s.handle(node("n2", allocations=(("g", gpu_req(2)),), holds=(("g", ("GPU-n2-0", "GPU-n2-1")),), gang_jobs=("g",)))
    assert s.allocated_gpus("g") == {"n1": ("GPU-n1-0", "GPU-n1-1"), "n2": ("GPU-n2-0", "GPU-n2-1")}


# ------------------------------------------------------------------ property
_op = st.one_of(
    st.tuples(st.just("submit"), st.integers(0, 3)),
    st.tuples(st.just("end"), st.integers(0, 63)),
    st.tuples(st.just("restart"), st.integers(0, 2)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_op, max_size=40))
def test_no_gpu_is_ever_held_by_two_jobs_at_once(ops: list[tuple[str, int]]) -> None:
    s = Scheduler()
    sizes = {"n0": 2, "n1": 4, "n2": 3}
    s.handle(queue(), *(node(n, gpus=g) for n, g in sizes.items()))
    running: dict[str, tuple[str, tuple[str, ...]]] = {}  # job -> (node, gpus), as the head knows it
    requests: dict[str, int] = {}
    counter = itertools.count()

    def apply(actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, StartAttempt):
                assert a.job_id not in running
                assert len(a.gpus) == requests[a.job_id]
                running[a.job_id] = (a.node, a.gpus)
        held: dict[tuple[str, str], str] = {}
        for job_id, (n, gpus) in running.items():
            for g in gpus:
                assert (n, g) not in held, f"{g} on {n} held by {held[(n, g)]} and {job_id}"
                held[(n, g)] = job_id
        for n in sizes:
            assert s.gpu_holders(n) == {g: j for (hn, g), j in held.items() if hn == n}

    for kind, arg in ops:
        if kind == "submit":
            job_id = f"j{next(counter)}"
            requests[job_id] = arg
            apply(s.handle(job(job_id, gpus=arg)))
        elif kind == "end" and running:
            job_id = sorted(running)[arg % len(running)]
            del running[job_id]
            apply(s.handle(ended(job_id)))
        elif kind == "restart":  # the node re-registers, reporting what runs there and on which GPUs
            name = f"n{arg}"
            mine = {j: g for j, (n, g) in running.items() if n == name}
            apply(s.handle(node(
                name, gpus=sizes[name],
                allocations=tuple((j, gpu_req(requests[j])) for j in mine),
                holds=tuple(mine.items()),
            )))
