"""Preemption against gangs, pure: a gang holds its nodes whole, so a single-node preemptor
sees nothing free on a victim gang's node and stops the gang whole (issue 21)."""

from __future__ import annotations

import itertools
import re

from hpcbatch.model.jobs import ResourceRequest
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
    Tick,
)

_ids = itertools.count(1)
_seqs = itertools.count(1)


def _eid() -> str:
    return f"pg-{next(_ids)}"


def req(vcpus: float = 1) -> ResourceRequest:
    return ResourceRequest(vcpus=vcpus, memory_mib=1024, gpus=0)


def node(name: str, vcpus: float = 4) -> NodeUp:
    return NodeUp(_eid(), name, "ce", vcpus, 8192, 0, (), True)


def prio_queue(name: str, priority: int, preempts: bool = False, preemptible: bool = False) -> JobQueueChanged:
    return JobQueueChanged(_eid(), name, True, priority, ("ce",), preempts=preempts, preemptible=preemptible)


def runnable(job_id: str, q: str, vcpus: float = 1, num_nodes: int = 1) -> JobRunnable:
    return JobRunnable(_eid(), job_id, q, req(vcpus), next(_seqs), num_nodes=num_nodes)


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
