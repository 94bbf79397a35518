"""Builders for the scheduler's events and readers of its actions, shared by its unit tests."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.scheduler.core import (
    Action,
    AttemptEnded,
    ComputeEnvironmentChanged,
    JobQueueChanged,
    JobRunnable,
    NodeUp,
    Scheduler,
    SetWaitReason,
    StartAttempt,
)

_ids = itertools.count(1)
_seqs = itertools.count(1)


def _eid() -> str:
    return f"ev-{next(_ids)}"


def event_id() -> str:
    """A fresh event id, unique across every test module that builds events here."""
    return _eid()


def next_seq() -> int:
    """The next submission sequence number (a job's place in its queue's order)."""
    return next(_seqs)


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
