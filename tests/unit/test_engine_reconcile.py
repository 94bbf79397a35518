"""Anti-entropy: every heartbeat's running set against the head's view (hpcbatch.model.reconcile).

The pure rules first, then a real engine over a real store fed heartbeats; heartbeats are
counted, not timed: nothing sleeps.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from hpcbatch import protocol as p
from hpcbatch.model.lifecycle import JobStatus
from hpcbatch.model.reconcile import reconcile
from tests.unit.test_fencing import Cluster, run_on

K = 3  # heartbeats an attempt may go unlisted before the head asks


# ----------------------------------------------------------------- the pure rules
def test_an_attempt_the_head_has_ended_is_killed() -> None:
    assert reconcile({}, ["x"], {}, K).kill == ["x"]


def test_a_listed_attempt_resets_its_misses_and_a_listed_starting_one_is_running() -> None:
    out = reconcile({"a": False, "s": True}, ["a", "s"], {"a": 2}, K)
    assert out.misses == {} and out.started == ["s"] and not (out.ask or out.lost or out.kill)


def test_a_running_attempt_unlisted_is_asked_for_then_lost() -> None:
    misses: dict[str, int] = {}
    asked, lost = [], []
    for beat in range(1, 2 * K + 1):
        out = reconcile({"a": False}, [], misses, K)
        misses = out.misses
        asked += [beat] if out.ask else []
        lost += [beat] if out.lost else []
    assert asked == [K] and lost == [2 * K]


def test_a_starting_attempt_unlisted_is_asked_for_again_and_again_but_never_lost() -> None:
    misses: dict[str, int] = {}
    asked = []
    for beat in range(1, 4 * K + 1):
        out = reconcile({"s": True}, [], misses, K)
        misses = out.misses
        assert not out.lost
        asked += [beat] if out.ask else []
    assert asked == [K, 2 * K, 3 * K, 4 * K]


# ------------------------------------------------------------------- the engine
def beat(c: Cluster, node: str, running: list[str]) -> None:
    c.engine.handle(node, p.AgentHeartbeat(instance_id=node, running=running))
    c.engine.step()


def sent(c: Cluster, kind: type) -> list[tuple[str, p.Message]]:
    found = [(n, m) for n, m in c.sent if isinstance(m, kind)]
    c.sent.clear()
    return found


def test_a_running_attempt_the_agent_stops_listing_is_asked_for_then_failed_with_a_reason(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path, reconcile_after=K)
        job = c.submit(retry_attempts=1)
        node = run_on(c, job)
        first = job.attempts[0].attempt_id
        beat(c, node, [first])
        for _ in range(K - 1):
            beat(c, node, [])
        assert sent(c, p.StartAttempt) == []
        beat(c, node, [])  # K in a row: ask (the start order again; the agent answers with the exit)
        ((to, asked),) = sent(c, p.StartAttempt)
        assert to == node and asked.attempt_id == first
        for _ in range(K - 1):
            beat(c, node, [])
        assert job.status is JobStatus.RUNNING
        beat(c, node, [])
        assert job.status is JobStatus.FAILED and job.attempts[0].lost
        assert job.status_reason == f"Attempt lost: the agent on {node} has not listed it for {2 * K} heartbeats"
        assert c.engine.node(node).jobs == set() and c.engine.node(node).missing == {}

    asyncio.run(run())


def test_the_answer_to_the_ask_ends_the_attempt_with_its_real_exit(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path, reconcile_after=K)
        job = c.submit()
        node = run_on(c, job)
        first = job.attempts[0].attempt_id
        for _ in range(K):
            beat(c, node, [])
        assert len(sent(c, p.StartAttempt)) == 1
        c.engine.handle(node, p.AttemptExited(attempt_id=first, job_id=job.job_id, exit_code=0, started_at=1,
                                              stopped_at=2))
        c.engine.step()
        assert job.status is JobStatus.SUCCEEDED and not job.attempts[0].lost
        for _ in range(2 * K):
            beat(c, node, [])
        assert len(job.attempts) == 1 and sent(c, p.StartAttempt) == []

    asyncio.run(run())


def test_an_attempt_listed_again_is_not_counted_lost(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path, reconcile_after=K)
        job = c.submit()
        node = run_on(c, job)
        first = job.attempts[0].attempt_id
        for _ in range(5):
            for _ in range(K - 1):
                beat(c, node, [])
            beat(c, node, [first])
        assert job.status is JobStatus.RUNNING and sent(c, p.StartAttempt) == []

    asyncio.run(run())


def test_a_starting_attempt_is_never_failed_for_a_heartbeat_that_crossed_its_start(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path, reconcile_after=K)
        job = c.submit()
        ((node, start),) = c.starts()
        for _ in range(4 * K):  # an image pull, say: unlisted for long
            beat(c, node, [])
        assert job.status is JobStatus.STARTING
        assert [m.attempt_id for _n, m in sent(c, p.StartAttempt)] == [start.attempt_id] * 4
        beat(c, node, [start.attempt_id])  # listed: its AttemptStarted was lost, it runs
        assert job.status is JobStatus.RUNNING and job.started_at is not None

    asyncio.run(run())


def test_an_attempt_that_reports_its_start_after_a_long_pull_starts_its_misses_afresh(tmp_path: Path) -> None:
    """The misses a STARTING attempt piled up (a long image pull) do not count once its
    AttemptStarted arrives: a short job (TorchX's echo) started and ended between two
    heartbeats, its exit report behind the next one, was failed as lost ("not listed for 38
    heartbeats") although the agent had just said it runs."""

    async def run() -> None:
        c = Cluster(tmp_path, reconcile_after=K)
        job = c.submit()
        ((node, start),) = c.starts()
        for _ in range(4 * K):  # a long pull: unlisted, asked for again and again
            beat(c, node, [])
        c.engine.on_started(node, p.AttemptStarted(attempt_id=start.attempt_id, job_id=job.job_id, pid=1,
                                                   started_at=1))
        c.engine.step()
        assert job.status is JobStatus.RUNNING
        for _ in range(2 * K - 1):  # it ended before the next heartbeat; its exit report is behind them
            beat(c, node, [])
        assert job.status is JobStatus.RUNNING and not job.attempts[0].lost
        c.engine.handle(node, p.AttemptExited(attempt_id=start.attempt_id, job_id=job.job_id, exit_code=0,
                                              started_at=1, stopped_at=2))
        c.engine.step()
        assert job.status is JobStatus.SUCCEEDED

    asyncio.run(run())


def test_an_attempt_the_agent_runs_that_the_head_ended_is_killed(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path, reconcile_after=K)
        job = c.submit(retry_attempts=1)
        node = run_on(c, job)
        beat(c, node, [job.attempts[0].attempt_id, "stray"])
        kills = sent(c, p.KillAttempt)
        assert [(n, m.attempt_id) for n, m in kills] == [(node, "stray")]

    asyncio.run(run())


def test_a_gang_node_the_agent_stops_listing_ends_the_try(tmp_path: Path) -> None:
    async def run() -> None:
        from hpcbatch.model.jobs import JobRecord, ResourceRequest
        from hpcbatch.model.multinode import child_job_id

        c = Cluster(tmp_path, reconcile_after=K)
        common = dict(job_queue="q", job_queue_arn="arn:q", job_definition="arn:d", owner="alice",
                      status=JobStatus.SUBMITTED, created_at=1_000, command=["sleep", "60"], environment={},
                      resources=ResourceRequest(vcpus=1, memory_mib=64), container={}, num_nodes=2)
        parent = JobRecord(job_id="g", job_name="g", **common)  # type: ignore[arg-type]
        children = [JobRecord(job_id=child_job_id("g", i), job_name="g", parent_id="g", node_index=i,
                              **common) for i in range(2)]  # type: ignore[arg-type]
        c.engine.submit(parent, children)
        c.engine.step()
        starts = c.starts()
        assert len(starts) == 2
        for node, start in starts:
            c.engine.handle(node, p.AttemptStarted(attempt_id=start.attempt_id, job_id=start.job_id, pid=1,
                                                   started_at=1))
        c.engine.step()
        assert parent.status is JobStatus.RUNNING
        (main_node, main), (other_node, other) = sorted(starts, key=lambda s: s[1].node_index)
        for _ in range(2 * K):
            beat(c, other_node, [])
            beat(c, main_node, [main.attempt_id])
        # The lost node ends the try: the main node is told to stop.
        assert children[1].attempts[-1].lost
        assert [m.attempt_id for n, m in sent(c, p.KillAttempt) if n == main_node] == [main.attempt_id]

    asyncio.run(run())
