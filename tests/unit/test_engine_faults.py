"""Fault containment: a handler that fails on one message fails that attempt or request, not the head.

A real engine over a real store; the failures are the test-only hook's
(``HPCBATCH_TEST_RAISE_ON``, here the engine's ``raise_on``), which makes the handler of
one kind of message about one job raise, as a bug or bad value would.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from hpcbatch import protocol as p
from hpcbatch.head.faults import RAISE_ON_ENV
from hpcbatch.model.lifecycle import JobStatus
from tests.unit.test_fencing import Cluster, run_on

N = 3  # quarantine_after


def exited(job_id: str, attempt_id: str, code: int = 0) -> p.AttemptExited:
    return p.AttemptExited(attempt_id=attempt_id, job_id=job_id, exit_code=code, started_at=1, stopped_at=2)


def acks(c: Cluster) -> list[str]:
    return [a for _n, m in c.sent if isinstance(m, p.AckExits) for a in m.attempt_ids]


def test_an_exit_report_that_keeps_failing_is_quarantined_and_its_attempt_failed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def run() -> None:
        c = Cluster(tmp_path, quarantine_after=N, raise_on="exited:poison*")
        job = c.submit("poison-1", retry_attempts=3)
        node = run_on(c, job)
        attempt_id = job.attempts[0].attempt_id
        report = exited(job.job_id, attempt_id)
        for _ in range(N - 1):  # the agent resends it with each heartbeat until acknowledged
            c.engine.handle(node, report)
            c.engine.step()
            assert job.status is JobStatus.RUNNING and acks(c) == []
        c.engine.handle(node, report)
        c.engine.step()
        assert acks(c) == [attempt_id]  # set aside: the agent stops resending it
        # Failed, with a reason naming the cause, and not retried: its command may have finished.
        assert job.status is JobStatus.FAILED and len(job.attempts) == 1
        assert job.status_reason is not None
        assert job.status_reason.startswith("The head could not process the attempt's exit report (3 tries)")
        assert "InjectedFault" in job.status_reason
        (q,) = c.engine.node(node).quarantined
        assert (q.kind, q.job_id, q.attempt_id, q.tries) == ("exited", job.job_id, attempt_id, N)
        assert c.engine.faults.failed == {"exited": N} and c.engine.faults.quarantined == {"exited": 1}
        stored = c.engine.store.get_jobs([job.job_id])[0]
        assert stored.status is JobStatus.FAILED
        # Logged with the message's type and ids.
        assert any("'exited' message" in r.message and job.job_id in r.message and attempt_id in r.message
                   for r in caplog.records)
        # The rest of the head goes on: another job's exit is served as ever.
        c.sent.clear()
        healthy = c.submit("fine-1")
        other = run_on(c, healthy)
        c.engine.handle(other, exited(healthy.job_id, healthy.attempts[0].attempt_id))
        c.engine.step()
        assert healthy.status is JobStatus.SUCCEEDED

    with caplog.at_level(logging.ERROR, logger="hpcbatch.engine"):
        asyncio.run(run())


def test_an_exit_report_that_fails_once_is_served_on_its_resend(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path, quarantine_after=N, raise_on="exited:poison*")
        job = c.submit("poison-2")
        node = run_on(c, job)
        report = exited(job.job_id, job.attempts[0].attempt_id)
        c.engine.handle(node, report)
        c.engine.reports._injection = None  # noqa: SLF001 (the fault was transient; reports serve messages)
        c.engine.handle(node, report)
        c.engine.step()
        assert job.status is JobStatus.SUCCEEDED and c.engine.node(node).quarantined == []
        assert c.engine.faults.tries == {}  # forgotten once served

    asyncio.run(run())


def test_a_start_report_that_fails_fails_its_attempt_at_once_and_kills_it(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path, raise_on="started:poison*")
        job = c.submit("poison-3")
        ((node, start),) = c.starts()
        c.engine.handle(node, p.AttemptStarted(attempt_id=start.attempt_id, job_id=job.job_id, pid=1, started_at=1))
        c.engine.step()
        assert job.status is JobStatus.FAILED
        assert (job.status_reason or "").startswith("The head could not process the attempt's start: InjectedFault")
        kills = [m.attempt_id for n, m in c.sent if isinstance(m, p.KillAttempt) and n == node]
        assert kills == [start.attempt_id]

    asyncio.run(run())


def test_a_launch_request_that_fails_is_refused(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path, raise_on="launch_req")
        job = c.submit("any")
        c.engine.handle("n1", p.LaunchRequest(launch_id="L1", job_id=job.job_id, attempt_id="a", target="n2",
                                              command="true"))
        c.engine.step()
        (done,) = [m for n, m in c.sent if isinstance(m, p.LaunchDone) and n == "n1"]
        assert done.launch_id == "L1" and done.exit_code is None and "InjectedFault" in (done.error or "")

    asyncio.run(run())


def test_the_hook_is_named_by_an_environment_variable_that_only_tests_set() -> None:
    import os

    assert RAISE_ON_ENV == "HPCBATCH_TEST_RAISE_ON" and RAISE_ON_ENV not in os.environ


def test_a_decision_the_head_fails_to_apply_fails_that_job_and_the_rest_are_placed(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path, raise_on="start:poison*")
        poisoned = c.submit("poison-4")
        fine = c.submit("fine-4")
        c.engine.step()
        assert poisoned.status is JobStatus.FAILED and poisoned.attempts == []
        assert (poisoned.status_reason or "").startswith("The head could not apply its decision to StartAttempt")
        assert "InjectedFault" in (poisoned.status_reason or "")
        assert fine.status is JobStatus.STARTING
        assert [m.job_id for _n, m in c.starts()] == [fine.job_id]
        assert c.engine.faults.failed == {"decision": 1}
        # Its place was given back: another job takes the node it was given.
        later = c.submit("fine-5")
        assert later.status is JobStatus.STARTING

    asyncio.run(run())


# ------------------------------------------------------------ the pure rules (hpcbatch.head.faults)
def test_the_rules_per_kind_of_message() -> None:
    from hpcbatch.head.faults import Outcome, outcome

    assert [outcome("exited", t, 3) for t in (1, 2, 3, 4)] == [
        Outcome.WAIT_FOR_RESEND, Outcome.WAIT_FOR_RESEND, Outcome.QUARANTINE_AND_FAIL, Outcome.QUARANTINE_AND_FAIL]
    assert outcome("started", 1, 3) is Outcome.FAIL_AND_KILL
    assert outcome("launch_req", 1, 3) is outcome("task_exited", 1, 3) is Outcome.REFUSE
    assert [outcome("agent_hb", t, 3) for t in (1, 3)] == [Outcome.DROP, Outcome.QUARANTINE]


def test_a_message_is_set_aside_once_and_the_list_is_bounded() -> None:
    from hpcbatch.head.faults import QUARANTINE_KEPT, MessageFaults, Quarantined

    faults = MessageFaults()
    listed: list[Quarantined] = []
    entry = Quarantined("exited", "j", "a", 3, "boom", 1)
    assert faults.set_aside(listed, entry) and not faults.set_aside(listed, entry)
    for i in range(QUARANTINE_KEPT + 5):
        faults.set_aside(listed, Quarantined("exited", "j", f"a{i}", 3, "boom", 1))
    assert len(listed) == QUARANTINE_KEPT and faults.quarantined == {"exited": QUARANTINE_KEPT + 6}


def test_the_hook_is_parsed_from_kind_and_glob() -> None:
    from hpcbatch.head.faults import FaultInjection, InjectedFault

    assert FaultInjection.parse("") is None and FaultInjection.parse(None) is None
    hook = FaultInjection.parse("exited:poison*")
    assert hook == FaultInjection("exited", "poison*")
    hook.check("exited", "j1", "fine")  # another job: nothing
    hook.check("started", "j1", "poison1")  # another kind: nothing
    with pytest.raises(InjectedFault, match="j1"):
        hook.check("exited", "j1", "poison1")
    assert FaultInjection.parse("started") == FaultInjection("started", "*")
