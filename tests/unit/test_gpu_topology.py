"""Topology-aware GPU choice and GPU/CPU node steering (scheduler/gpus.py, through the core)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.scheduler.core import (
    Action,
    AttemptEnded,
    JobQueueChanged,
    JobRunnable,
    NodeUp,
    Scheduler,
    SetWaitReason,
    StartAttempt,
    StartGang,
)
from hpcbatch.scheduler.gpus import GpuPlace, choose_gpus, closeness, placement_key
from tests.unit.scheduler_events import event_id as _eid
from tests.unit.scheduler_events import next_seq

# Eight GPUs as on a DGX-like box cut in halves: NVLink pairs (0,4) (1,5) (2,6) (3,7) —
# deliberately not adjacent indices — PCIe switches {0,1,4,5} {2,3,6,7}, NUMA 0 / 1 likewise.
EIGHT = tuple(
    GpuPlace(nvlink_domain=f"nvl{i % 4}", pcie_switch=f"sw{(i % 4) // 2}", numa_node=(i % 4) // 2)
    for i in range(8)
)


def node(name: str, gpus: int = 0, places: tuple[GpuPlace, ...] = (), vcpus: float = 16) -> NodeUp:
    ids = tuple(f"GPU-{name}-{j}" for j in range(gpus))
    return NodeUp(_eid(), name, "ce", vcpus, 65536, gpus, gpu_ids=ids, gpu_places=places)


def job(job_id: str, gpus: int = 1, vcpus: float = 1) -> JobRunnable:
    return JobRunnable(_eid(), job_id, "q", ResourceRequest(vcpus=vcpus, memory_mib=512, gpus=gpus), next_seq())


def starts(actions: list[Action]) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {a.job_id: (a.node, a.gpus) for a in actions if isinstance(a, StartAttempt)}


def scheduler(*nodes: NodeUp) -> Scheduler:
    s = Scheduler()
    s.handle(JobQueueChanged(_eid(), "q", True, 1, ("ce",)), *nodes)
    return s


# ------------------------------------------------------------------ choose_gpus
def test_a_pair_goes_to_one_nvlink_domain_not_to_adjacent_indices() -> None:
    assert choose_gpus(range(8), 2, EIGHT) == (0, 4)
    assert closeness((0, 4), EIGHT) == "NVLink domain"


def test_without_a_free_nvlink_pair_the_same_pcie_switch_wins() -> None:
    free = [0, 1, 2, 7]  # no domain has two free; switch 0 has 0 and 1
    assert choose_gpus(free, 2, EIGHT) == (0, 1)
    assert closeness((0, 1), EIGHT) == "PCIe switch"


def test_four_gpus_take_one_switch_whole() -> None:
    assert choose_gpus(range(8), 4, EIGHT) == (0, 1, 4, 5)
    assert choose_gpus([0, 2, 3, 5, 6, 7], 4, EIGHT) == (2, 3, 6, 7)


def test_numa_node_is_the_last_topology_level() -> None:
    places = tuple(GpuPlace(numa_node=n) for n in (0, 1, 0, 1))
    assert choose_gpus(range(4), 2, places) == (0, 2)
    assert closeness((0, 2), places) == "NUMA node"


def test_one_gpu_fills_a_half_used_domain_first() -> None:
    """Best fit: the whole NVLink pairs stay whole for a 2-GPU job."""
    # Domains with one free GPU left (1: peer 5 taken; 4: peer 0 taken) go before 2 and 6's.
    assert choose_gpus([1, 2, 4, 6], 1, EIGHT) == (1,)
    assert choose_gpus([2, 4, 6], 1, EIGHT) == (4,)


def test_no_group_big_enough_falls_back_to_adjacent_indices() -> None:
    assert choose_gpus([0, 2, 3, 6], 3, EIGHT) == (2, 3, 6)  # switch 1 holds 2, 3, 6
    places = tuple(GpuPlace(nvlink_domain=f"d{i}") for i in range(4))  # no two share anything
    assert choose_gpus([0, 2, 3], 2, places) == (2, 3)
    assert choose_gpus([0, 2], 2, ()) == (0, 2)


@given(st.sets(st.integers(0, 7)), st.integers(1, 8))
def test_the_choice_is_always_free_distinct_and_enough(free: set[int], count: int) -> None:
    chosen = choose_gpus(sorted(free), count, EIGHT)
    assert len(chosen) == min(count, len(free)) and len(set(chosen)) == len(chosen)
    assert set(chosen) <= free


# ------------------------------------------------------------------ through the core
def test_the_core_gives_a_two_gpu_job_an_nvlink_pair() -> None:
    s = scheduler(node("g1", 8, EIGHT))
    assert starts(s.handle(job("pair", gpus=2))) == {"pair": ("g1", ("GPU-g1-0", "GPU-g1-4"))}
    assert starts(s.handle(job("quad", gpus=4))) == {"quad": ("g1", ("GPU-g1-2", "GPU-g1-3", "GPU-g1-6", "GPU-g1-7"))}


def test_one_gpu_jobs_keep_a_whole_domain_for_a_pair() -> None:
    places = (GpuPlace(nvlink_domain="a"), GpuPlace(nvlink_domain="b"), GpuPlace(nvlink_domain="a"), GpuPlace(nvlink_domain="b"))
    s = scheduler(node("g1", 4, places))
    s.handle(job("one"))  # GPU 0, domain a
    assert starts(s.handle(job("two"))) == {"two": ("g1", ("GPU-g1-2",))}  # the rest of domain a
    assert starts(s.handle(job("pair", gpus=2))) == {"pair": ("g1", ("GPU-g1-1", "GPU-g1-3"))}


def test_cpu_jobs_prefer_nodes_without_gpus() -> None:
    s = scheduler(node("gpu1", 2, vcpus=32), node("cpu1", 0, vcpus=4))
    got = starts(s.handle(*(job(f"c{i}", gpus=0, vcpus=1) for i in range(4))))
    assert {n for n, _ in got.values()} == {"cpu1"}


def test_cpu_jobs_use_gpu_nodes_when_cpu_nodes_are_full() -> None:
    s = scheduler(node("gpu1", 2, vcpus=8), node("cpu1", 0, vcpus=2))
    got = starts(s.handle(*(job(f"c{i}", gpus=0, vcpus=1) for i in range(3))))
    assert sorted(n for n, _ in got.values()) == ["cpu1", "cpu1", "gpu1"]


def test_a_gpu_job_is_not_blocked_by_cpu_work_that_had_somewhere_else_to_go() -> None:
    s = scheduler(node("gpu1", 1, vcpus=2), node("cpu1", 0, vcpus=2))
    assert starts(s.handle(job("cpu", gpus=0, vcpus=2))) == {"cpu": ("cpu1", ())}
    assert starts(s.handle(job("train", gpus=1, vcpus=2))) == {"train": ("gpu1", ("GPU-gpu1-0",))}


def test_gpu_jobs_prefer_the_node_with_fewest_free_gpus() -> None:
    s = scheduler(node("a", 4), node("b", 2))
    s.handle(job("x"))  # b: fewer free GPUs, best fit
    assert s.gpu_holders("b") == {"GPU-b-0": "x"}
    assert starts(s.handle(job("big", gpus=4))) == {"big": ("a", ("GPU-a-0", "GPU-a-1", "GPU-a-2", "GPU-a-3"))}


def test_placement_key_orders_cpu_only_nodes_first_for_cpu_jobs() -> None:
    assert placement_key(0, 0, 0, 8, 1000) < placement_key(0, 4, 4, 1, 10)
    assert placement_key(1, 4, 1, 8, 1000) < placement_key(1, 4, 3, 1, 10)


# ------------------------------------------------------------------ health
def test_an_unhealthy_gpu_is_never_handed_out() -> None:
    s = Scheduler()
    up = NodeUp(_eid(), "g1", "ce", 16, 65536, 2, gpu_ids=("GPU-g1-0", "GPU-g1-1"), gpu_out=("GPU-g1-0",))
    s.handle(JobQueueChanged(_eid(), "q", True, 1, ("ce",)), up)
    got = starts(s.handle(job("a"), job("b")))
    assert got == {"a": ("g1", ("GPU-g1-1",))}
    assert s.node_usage("g1") == (1, 512, 1)


def test_a_job_needing_the_unhealthy_gpu_too_can_never_run_and_says_so() -> None:
    s = Scheduler()
    up = NodeUp(_eid(), "g1", "ce", 16, 65536, 2, gpu_ids=("GPU-g1-0", "GPU-g1-1"), gpu_out=("GPU-g1-1",))
    s.handle(JobQueueChanged(_eid(), "q", True, 1, ("ce",)), up)
    actions = s.handle(job("pair", gpus=2))
    reason = next(a.reason for a in actions if isinstance(a, SetWaitReason))
    assert "2 GPUs (the most is 1)" in reason


def test_a_job_on_a_gpu_that_turns_unhealthy_keeps_it_and_it_is_not_reused() -> None:
    s = scheduler(node("g1", 2))
    assert starts(s.handle(job("a"))) == {"a": ("g1", ("GPU-g1-0",))}
    # The node reports GPU 0 bad while ``a`` still runs on it.
    hold = (("a", ResourceRequest(vcpus=1, memory_mib=512, gpus=1)),)
    s.handle(NodeUp(_eid(), "g1", "ce", 16, 65536, 2, hold, gpu_ids=("GPU-g1-0", "GPU-g1-1"),
                    gpu_holds=(("a", ("GPU-g1-0",)),), gpu_out=("GPU-g1-0",)))
    assert s.gpu_holders("g1") == {"GPU-g1-0": "a"}
    s.handle(AttemptEnded(_eid(), "a"))
    got = starts(s.handle(job("b"), job("c")))
    assert got == {"b": ("g1", ("GPU-g1-1",))}


def test_a_cpu_gang_prefers_cpu_only_nodes_when_they_can_hold_it() -> None:
    s = scheduler(node("a-gpu", 2, vcpus=4), node("b-cpu", 0, vcpus=8), node("c-cpu", 0, vcpus=8))
    gang = JobRunnable(_eid(), "g", "q", ResourceRequest(vcpus=1, memory_mib=64), next_seq(), num_nodes=2)
    started = [a for a in s.handle(gang) if isinstance(a, StartGang)]
    assert [a.nodes for a in started] == [("b-cpu", "c-cpu")]
    # Three nodes needed: the GPU node joins, since the CPU-only ones cannot hold it alone.
    gang3 = JobRunnable(_eid(), "g3", "q", ResourceRequest(vcpus=1, memory_mib=64), next_seq(), num_nodes=3)
    s.handle(AttemptEnded(_eid(), "g"))
    started = [a for a in s.handle(gang3) if isinstance(a, StartGang)]
    assert [a.nodes for a in started] == [("a-gpu", "b-cpu", "c-cpu")]
