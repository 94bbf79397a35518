"""Wait reasons that tell the truth (issues 20 and 21): a node held whole by a multi-node job
is named as such (not "no free vCPUs"); a boot's wording is one and the same for single-node
jobs and gangs, and an overdue boot says so. Pure: events in, reasons out."""

from __future__ import annotations

import itertools

from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.scheduler import (
    ComputeEnvironmentChanged,
    JobQueueChanged,
    JobRunnable,
    NodeUp,
    Scheduler,
    SetWaitReason,
    StartGang,
    Tick,
)
from hpcbatch.scheduler.reasons import CAPACITY

_ids = itertools.count(1)


def _e() -> str:
    return f"e{next(_ids)}"


def reasons(actions: list) -> dict[str, str]:
    return {a.job_id: a.reason for a in actions if isinstance(a, SetWaitReason)}


def test_a_single_node_job_behind_a_gang_holding_every_node_is_told_so() -> None:
    s = Scheduler()
    s.handle(Tick(_e(), 10.0), ComputeEnvironmentChanged(_e(), "ce", True, None),
             JobQueueChanged(_e(), "q", True, 1, ("ce",)),
             NodeUp(_e(), "node1", "ce", 8, 16384, 0), NodeUp(_e(), "node2", "ce", 8, 16384, 0))
    acts = s.handle(JobRunnable(_e(), "G", "q", ResourceRequest(2, 1024), 1, num_nodes=2, time_limit_s=None))
    assert [a for a in acts if isinstance(a, StartGang)], acts  # G holds node[1-2] whole, 6 vCPUs spare each
    acts = s.handle(JobRunnable(_e(), "j", "q", ResourceRequest(1, 512), 2, time_limit_s=None))
    why = reasons(acts)["j"]
    assert why.startswith(CAPACITY), why
    assert "no node has free vCPUs" not in why, why
    assert "node[1-2] are held whole by multi-node job G" in why, why
