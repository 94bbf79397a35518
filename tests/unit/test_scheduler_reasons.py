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
    NodePowerChanged,
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


# ------------------------------------------------------------ waits on power: one wording
BOOT = 90.0


def _pool(now: float = 10.0) -> Scheduler:
    s = Scheduler()
    s.handle(Tick(_e(), now), ComputeEnvironmentChanged(_e(), "ce", True, None),
             JobQueueChanged(_e(), "q", True, 1, ("ce",)), NodeUp(_e(), "n1", "ce", 4, 8192, 0))
    return s


def _power(name: str, state: str, since: float = 0.0) -> NodePowerChanged:
    return NodePowerChanged(_e(), name, "ce", state, BOOT, 4, 8192, since_s=since, resume_timeout_s=300.0)


def test_a_gang_and_a_single_node_job_waiting_on_a_boot_say_it_in_the_same_words() -> None:
    s = _pool()
    acts = s.handle(_power("n2", "POWERING_UP", since=10.0), _power("n3", "POWERING_UP", since=10.0),
                    JobRunnable(_e(), "g", "q", ResourceRequest(4, 1024), 1, num_nodes=3, time_limit_s=None))
    power = "powering up n[2-3], expected up by t=100"
    assert reasons(acts)["g"] == f"Reserved nodes n[1-3] in compute environment ce; {power}"
    s2 = _pool()
    acts = s2.handle(_power("n2", "POWERING_UP", since=10.0), _power("n3", "POWERING_UP", since=10.0),
                     JobRunnable(_e(), "big", "q", ResourceRequest(4, 1024), 1, time_limit_s=None),
                     JobRunnable(_e(), "j", "q", ResourceRequest(4, 1024), 2, time_limit_s=None))
    assert reasons(acts)["j"].startswith(CAPACITY) and reasons(acts)["j"].endswith(f"; {power}"), reasons(acts)


def test_a_power_up_begun_after_the_reservation_changes_the_reason_to_when_it_is_expected() -> None:
    s = _pool()
    acts = s.handle(_power("n2", "POWERED_DOWN"),
                    JobRunnable(_e(), "g", "q", ResourceRequest(4, 1024), 1, num_nodes=2, time_limit_s=None))
    assert reasons(acts)["g"].endswith("; n2 is powered down, up ~90 s after a power-up")
    acts = s.handle(Tick(_e(), 11.0), _power("n2", "POWERING_UP", since=11.0))  # the power manager's fact
    assert reasons(acts)["g"] == "Reserved nodes n[1-2] in compute environment ce; powering up n2, expected up by t=101"


def test_an_overdue_boot_says_so_not_expected_in_0_s() -> None:
    s = _pool()
    acts = s.handle(_power("n2", "POWERING_UP", since=10.0),
                    JobRunnable(_e(), "g", "q", ResourceRequest(4, 1024), 1, num_nodes=2, time_limit_s=None),
                    JobRunnable(_e(), "j", "q", ResourceRequest(4, 1024), 2, time_limit_s=None))
    assert "expected up by t=100" in reasons(acts)["g"]
    acts = s.handle(Tick(_e(), 130.0))  # no other event: the boot is 30 s overdue
    overdue = "powering up n2, expected up by now (overdue since t=100; resume_timeout_s is 300 s)"
    assert reasons(acts)["g"] == f"Reserved nodes n[1-2] in compute environment ce, expected free now; {overdue}"
    acts = s.handle(Tick(_e(), 140.0))
    assert "g" not in reasons(acts)  # said once, not every pass


def test_a_single_node_job_waiting_on_a_boot_is_told_when_it_is_overdue() -> None:
    s = _pool()
    acts = s.handle(_power("n2", "POWERING_UP", since=10.0),
                    JobRunnable(_e(), "big", "q", ResourceRequest(4, 1024), 1, time_limit_s=None),
                    JobRunnable(_e(), "j", "q", ResourceRequest(4, 1024), 2, time_limit_s=None))
    assert reasons(acts)["j"].endswith("; powering up n2, expected up by t=100")
    acts = s.handle(Tick(_e(), 130.0))
    assert reasons(acts)["j"].endswith(
        "; powering up n2, expected up by now (overdue since t=100; resume_timeout_s is 300 s)"), reasons(acts)
