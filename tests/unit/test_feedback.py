"""Issue 18's pure parts: the submit-time satisfiability check, reasons that name drained and
down nodes, human times in ``why``, and a failed gang's reason naming its node."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

from hpcbatch.cli.timetext import human_reason, in_words
from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.model.multinode import NodeEnd, gang_failure_reason, names_resource, whole_node
from hpcbatch.scheduler import (
    JobQueueChanged,
    JobRunnable,
    NodeGone,
    NodeUp,
    Scheduler,
    SetWaitReason,
)
from hpcbatch.scheduler.satisfy import (
    EnvironmentShape,
    NodeShape,
    allows_unsatisfiable,
    why_unsatisfiable,
)
from node_agent import shm
from tests import prereq

_ids = itertools.count(1)


def _eid() -> str:
    return f"fb-{next(_ids)}"


def req(vcpus: float = 1, memory_mib: int = 512, gpus: int = 0, image: bool = False) -> ResourceRequest:
    return ResourceRequest(vcpus=vcpus, memory_mib=memory_mib, gpus=gpus,
                           requires=frozenset(("container",)) if image else frozenset())


def four(name: str = "default", **kw: object) -> EnvironmentShape:
    nodes = tuple(NodeShape(f"node{i}", 2, 4000, **kw) for i in range(1, 5))  # type: ignore[arg-type]
    return EnvironmentShape(name, nodes=nodes)


# ------------------------------------------------------------ the submit-time check
def test_a_six_node_gang_on_four_nodes_is_refused_with_the_numbers() -> None:
    assert why_unsatisfiable(6, req(), [four()]) == "numNodes 6: compute environment default has 4 nodes"


def test_a_gang_that_fits_and_a_queue_with_no_known_node_are_satisfiable() -> None:
    assert why_unsatisfiable(4, req(2, 4000), [four()]) is None
    assert why_unsatisfiable(64, req(), [EnvironmentShape("empty")]) is None  # nothing to judge by


def test_per_node_requests_larger_than_any_node_name_the_field_and_the_largest_node() -> None:
    assert why_unsatisfiable(1, req(vcpus=8), [four()]) == (
        "vcpus 8: the largest node of compute environments default has 2 vCPUs")
    assert why_unsatisfiable(2, req(memory_mib=9000), [four()]) == (
        "memory 9000 MiB: the largest node of compute environments default has 4000 MiB")
    assert why_unsatisfiable(1, req(gpus=2), [four(gpus=1)]) == (
        "gpus 2: the node with the most GPUs in compute environments default has 1")
    assert "container runtime" in (why_unsatisfiable(1, req(image=True), [four()]) or "")


def test_a_gang_counts_only_the_nodes_that_can_each_hold_it_in_one_compute_environment() -> None:
    mixed = EnvironmentShape("mixed", nodes=(NodeShape("big1", 8, 16000), NodeShape("big2", 8, 16000),
                                             NodeShape("small", 2, 4000)))
    assert why_unsatisfiable(3, req(vcpus=4), [mixed, four("other")]) == (
        "numNodes 3: compute environment mixed has 2 nodes (of 3) that can each hold vcpus=4 memory=512MiB")
    # Two compute environments of 4 do not make one gang of 6: a gang stays in one.
    assert why_unsatisfiable(6, req(), [four("a"), four("b")]) == "numNodes 6: compute environment a has 4 nodes"


def test_max_vcpus_and_a_required_placement_group_are_limits_with_numbers() -> None:
    capped = EnvironmentShape("capped", max_vcpus=4, nodes=four().nodes)
    assert why_unsatisfiable(4, req(2), [capped]) == (
        "numNodes 4 x vcpus 2 = 8 vCPUs: compute environment capped has maxvCpus 4")
    split = EnvironmentShape("racks", require_placement_group=True, nodes=(
        NodeShape("a1", 2, 4000, placement_group="r1"), NodeShape("a2", 2, 4000, placement_group="r1"),
        NodeShape("b1", 2, 4000, placement_group="r2")))
    assert "largest group has 2" in (why_unsatisfiable(3, req(), [split]) or "")
    assert why_unsatisfiable(2, req(), [split]) is None


def test_the_allow_unsatisfiable_tag_is_read_as_a_boolean() -> None:
    assert allows_unsatisfiable({"hpcbatch:allowUnsatisfiable": "true"})
    assert allows_unsatisfiable({"hpcbatch:allowUnsatisfiable": "TRUE"})
    assert not allows_unsatisfiable({"hpcbatch:allowUnsatisfiable": "false"})
    assert not allows_unsatisfiable(None)


# ------------------------------------------------------------ reasons: drained and down nodes
def _cluster(*nodes: NodeUp) -> Scheduler:
    s = Scheduler()
    s.handle(JobQueueChanged(_eid(), "q", True, 1, ("ce",)), *nodes)
    return s


def _node(name: str, accepting: bool = True) -> NodeUp:
    return NodeUp(_eid(), name, "ce", 2, 4000, 0, accepting=accepting)


def _reason(actions: list[object], job_id: str) -> str:
    return next(a.reason for a in actions if isinstance(a, SetWaitReason) and a.job_id == job_id)


def test_a_gang_short_of_a_down_node_waits_for_capacity_naming_it() -> None:
    s = _cluster(*(_node(f"node{i}") for i in range(1, 5)))
    s.handle(NodeGone(_eid(), "node4"))
    actions = s.handle(JobRunnable(_eid(), "g", "q", req(), 1, num_nodes=4))
    reason = _reason(actions, "g")
    assert reason.startswith("CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - "), reason
    assert "3 can hold it now; node4 is down" in reason, reason
    # Once it is back, the gang starts.
    assert any(type(a).__name__ == "StartGang" for a in s.handle(_node("node4")))


def test_a_single_job_whose_only_fitting_node_is_drained_names_it() -> None:
    s = _cluster(_node("node1"), NodeUp(_eid(), "fat", "ce", 16, 64000, 0, accepting=False))
    reason = _reason(s.handle(JobRunnable(_eid(), "j", "q", req(vcpus=8), 1)), "j")
    assert reason.startswith("CAPACITY:") and "fat is drained or draining" in reason, reason


def test_a_gang_larger_than_every_node_even_drained_ones_stays_a_misconfiguration() -> None:
    s = _cluster(_node("node1"), _node("node2", accepting=False))
    reason = _reason(s.handle(JobRunnable(_eid(), "g", "q", req(), 1, num_nodes=6)), "g")
    assert reason.startswith("MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT"), reason


# ------------------------------------------------------------ human times
def test_epoch_seconds_in_reasons_read_as_local_times_and_how_far_off() -> None:
    now = time.time()
    text = f"Reserved nodes node[1-4] in compute environment default from t={now + 180:.3f}"
    shown = human_reason(text, now)
    assert "t=" not in shown and "(in 3 min)" in shown and "local time" in shown, shown
    assert time.strftime("%H:%M", time.localtime(now + 180)) in shown
    assert in_words(30) == "in 30 s" and in_words(3 * 3600) == "in 3 h" and in_words(0) == "now"
    assert human_reason("no times here", now) == "no times here"


# ------------------------------------------------------------ a failed gang names its node
def test_a_failed_gang_names_the_oom_killed_node_over_the_main_nodes_exit() -> None:
    ends = [
        NodeEnd(0, "node1", 1, None, 900),
        NodeEnd(1, "node2", None, "Killed by signal SIGTERM", 950),  # stopped after the main: ours
        NodeEnd(2, "node3", 137, "OutOfMemoryError: Container killed due to memory usage", 500),
    ]
    assert gang_failure_reason(0, ends, "Essential container in task exited") == (
        "OutOfMemoryError on node 2 (node3): Container killed due to memory usage")


def test_a_failed_gang_names_a_node_that_failed_before_the_main_else_the_main() -> None:
    early = [NodeEnd(0, "node1", 1, None, 900), NodeEnd(3, "node4", None, "Killed by signal SIGSEGV", 400)]
    assert gang_failure_reason(0, early, "E") == "Killed by signal SIGSEGV on node 3 (node4)"
    plain = [NodeEnd(0, "node1", 3, None, 900), NodeEnd(1, "node2", None, "Killed by signal SIGTERM", 990)]
    assert gang_failure_reason(0, plain, "Essential container in task exited") == (
        "Essential container in task exited: exit code 3 on node 0 (node1)")


# ------------------------------------------------------------ whole nodes are whole
def test_a_node_that_names_no_vcpus_or_memory_gets_the_whole_node() -> None:
    assert whole_node({"command": []}, 1.0, 512, 16, 64000) == (16.0, 64000)
    named = {"resourceRequirements": [{"type": "VCPU", "value": "2"}]}
    assert whole_node(named, 2.0, 512, 16, 64000) == (2.0, 64000)
    assert whole_node({"vcpus": 4, "memory": 100}, 4.0, 100, 16, 64000) == (4.0, 100)
    assert names_resource({"resourceRequirements": [{"type": "MEMORY", "value": "64"}]}, "MEMORY")


# ------------------------------------------------------------ /dev/shm leftovers
def test_shm_cleanup_removes_the_jobs_unused_transport_files_only(tmp_path: Path) -> None:
    uid = os.geteuid()
    since = time.time()
    segment = tmp_path / "sm_segment.node3.0.7d60001.2"
    held = tmp_path / "sm_segment.node3.0.7d60001.3"
    other = tmp_path / "notes.txt"
    for f in (segment, held, other):
        f.write_bytes(b"x")
    (tmp_path / "ucx_shm_dir").mkdir()  # directories stay
    with open(held, "rb"):  # a live process (this one) has it open: never removed
        removed = shm.clean(uid, since, any_name=False, shm_dir=tmp_path)
    assert removed == [segment.name]
    assert held.exists() and other.exists() and (tmp_path / "ucx_shm_dir").is_dir()
    # Files from before the job started are not its own.
    old = tmp_path / "sm_segment.old"
    old.write_bytes(b"x")
    assert shm.clean(uid, time.time() + 60, any_name=False, shm_dir=tmp_path) == []
    if uid != 0:  # a job of a plain user alone on its node: every file of its lifetime is its own
        assert sorted(shm.clean(uid, since, any_name=True, shm_dir=tmp_path)) == sorted([held.name, old.name, other.name])


def test_shm_cleanup_of_a_plain_users_job_alone_on_its_node_takes_all_its_new_files(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        prereq.skip("root", "needs root to own files as another user")
    nobody = 65534
    since = time.time()
    mine = [tmp_path / "sm_segment.n1.65534.1.0", tmp_path / "torch_123", tmp_path / "scratch.bin"]
    theirs = tmp_path / "sm_segment.n1.0.1.0"  # root's, not this job's user
    for f in (*mine, theirs):
        f.write_bytes(b"x")
    for f in mine:
        os.chown(f, nobody, nobody)
    # Another attempt of the same user runs here: only the transports' names are sure to be this job's.
    assert sorted(shm.clean(nobody, since, any_name=False, shm_dir=tmp_path)) == ["sm_segment.n1.65534.1.0", "torch_123"]
    assert shm.clean(nobody, since, any_name=True, shm_dir=tmp_path) == ["scratch.bin"]
    assert theirs.exists()


def test_an_overdue_boot_reads_as_how_long_ago_it_was_expected_not_in_0_s() -> None:
    now = time.time()
    text = (f"CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - Waiting for a node that can hold the job: powering up cn1, "
            f"expected up by now (overdue since t={now - 40:.3f}; resume_timeout_s is 300 s)")
    shown = human_reason(text, now)
    assert "(40 s ago)" in shown and "in 0 s" not in shown, shown
    assert in_words(-40) == "40 s ago" and in_words(-185) == "3 min ago" and in_words(-0.5) == "now"
