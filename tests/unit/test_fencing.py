"""Fencing a lost node: the head holds a retry until the node's agent has surely killed the
attempt, or the node itself says it ended.

A real engine over a real SQLite store, fed the protocol messages agents send; what it
sends back is recorded. Time is passed in: the engine's monotonic clock is the test's
``Cluster.mono``, moved by hand, and ``expire_fences`` is called as its timer (or a tick)
would; nothing sleeps. (The agent's side, and the whole of it over a cut link, is
tests/chaos/test_chaos.py.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hpcbatch import protocol as p
from hpcbatch.fencing import OUTAGE_BOUND_S, default_fence_after_s, retry_hold_s
from hpcbatch.head.engine import Engine, EngineOptions
from hpcbatch.head.logs import LogStore
from hpcbatch.model.jobs import FenceHold, JobRecord, ResourceRequest
from hpcbatch.model.lifecycle import JobStatus
from hpcbatch.store.sqlite import SqliteStore
from node_agent.config import ConfigError, load_agent_config

FENCE_S = 30.0
HOLD_S = retry_hold_s(FENCE_S, 1.0)


class Cluster:
    """An engine with nodes n1 and n2 in CE ``default`` behind queue ``q``."""

    def __init__(self, tmp_path: Path, *, restarted: bool = False, **engine: Any) -> None:
        self.sent: list[tuple[str, p.Message]] = []
        self.mono = 100.0  # the head's monotonic clock, seconds
        self.engine = Engine(SqliteStore(tmp_path / "db.sqlite"), LogStore(tmp_path / "logs"),
                             send=lambda node, msg: self.sent.append((node, msg)), clock_ms=lambda: 1_000,
                             monotonic=lambda: self.mono,
                             options=EngineOptions(fence_after_s=FENCE_S, heartbeat_interval_s=1.0, **engine))
        self.engine.compute_environment_changed(
            {"computeEnvironmentName": "default", "state": "ENABLED", "computeResources": {}})
        self.engine.job_queue_changed({"jobQueueName": "q", "state": "ENABLED", "priority": 1,
                                       "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": "default"}]})
        if restarted:  # a head started again on the same store: what it held, it recovers
            self.engine.recover()
            return  # its nodes have not come back yet
        for name in ("n1", "n2"):
            self.register(name)

    def register(self, name: str, running: list[p.RunningAttempt] | None = None, fence_after_s: float = 0.0) -> None:
        facts = p.NodeFacts(name=name, hostname=name, addresses=[], vcpus=1, memory_mib=1024,
                            fence_after_s=fence_after_s)
        self.engine.on_register(name, p.Register(instance_id=name, node=facts, running=running or []))
        self.engine.step()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on the head's clock; held retries whose time came are released."""
        self.mono += seconds
        self.engine.expire_fences()
        self.engine.step()

    def starts(self) -> list[tuple[str, p.StartAttempt]]:
        found = [(n, m) for n, m in self.sent if isinstance(m, p.StartAttempt)]
        self.sent.clear()
        return found

    def submit(self, job_id: str = "job-1", **fields: Any) -> JobRecord:
        fields.setdefault("retry_attempts", 2)
        job = JobRecord(job_id=job_id, job_name=job_id, job_queue="q", job_queue_arn="arn:q", job_definition="arn:d",
                        owner="alice", status=JobStatus.SUBMITTED, created_at=1_000, command=["sleep", "60"],
                        environment={}, resources=ResourceRequest(vcpus=1, memory_mib=64), container={},
                        **fields)
        self.engine.submit(job)
        self.engine.step()
        return job


def run_on(cluster: Cluster, job: JobRecord) -> str:
    """Start the job, mark it running; the node it runs on."""
    ((node, start),) = cluster.starts()
    cluster.engine.on_started(node, p.AttemptStarted(attempt_id=start.attempt_id, job_id=job.job_id, pid=1, started_at=1))
    cluster.engine.step()
    assert job.status is JobStatus.RUNNING
    return node


def test_the_fence_defaults_to_the_outage_bound_whatever_the_heartbeats() -> None:
    assert OUTAGE_BOUND_S >= 600  # a head or database outage of minutes costs no running job
    assert default_fence_after_s(1.0, 5) == OUTAGE_BOUND_S
    assert default_fence_after_s(0.1, 3) == OUTAGE_BOUND_S  # short heartbeats never shorten it
    assert default_fence_after_s(60.0, 5) == 1800.0  # very slow ones lengthen it
    assert retry_hold_s(30.0, 1.0) > 30.0


def test_a_lost_nodes_retry_is_held_runnable_with_a_reason(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        job = c.submit()
        node = run_on(c, job)
        c.engine.node_lost(node, silent_s=5)
        c.engine.step()
        assert job.status is JobStatus.RUNNABLE
        assert job.status_reason == f"Waiting for node {node} to fence its attempts"
        assert (job.attempts[0].status_reason or "").startswith(f"Node {node} lost")
        assert job.attempts[0].lost and job.fence_hold == FenceHold(node=node, attempt_id=job.attempts[0].attempt_id)
        c.advance(HOLD_S - 5 - 0.5)
        assert c.starts() == []  # the node may still run the first attempt: no second one yet
        stored = c.engine.store.get_jobs([job.job_id])[0]
        assert stored.status_reason == job.status_reason  # what DescribeJobs shows
        assert stored.fence_hold == job.fence_hold  # what a restarted head holds it by

    asyncio.run(run())


def test_the_retry_starts_elsewhere_once_the_fence_time_has_passed(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        job = c.submit()
        node = run_on(c, job)
        c.engine.node_lost(node, silent_s=HOLD_S - 1)  # silent for nearly the whole hold already
        c.engine.step()
        assert c.starts() == []
        c.advance(0.9)
        assert c.starts() == []
        c.advance(0.2)
        ((placed, start),) = c.starts()
        assert placed != node and start.attempt_number == 2
        assert job.fence_hold is None

    asyncio.run(run())


def test_a_lost_node_back_without_the_attempt_releases_the_retry_at_once(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        job = c.submit()
        node = run_on(c, job)
        c.engine.node_lost(node, silent_s=5)
        c.engine.step()
        c.register(node)  # back, running nothing: the attempt is provably over
        ((_, start),) = c.starts()
        assert start.attempt_number == 2

    asyncio.run(run())


def test_a_lost_node_back_still_running_it_within_the_fence_keeps_it_and_starts_no_retry(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        job = c.submit()
        node = run_on(c, job)
        first = job.attempts[0].attempt_id
        c.engine.node_lost(node, silent_s=5)
        c.engine.step()
        assert job.status is JobStatus.RUNNABLE
        c.register(node, running=[p.RunningAttempt(attempt_id=first, job_id=job.job_id, pid=1, started_at=1)])
        assert [m for n, m in c.sent if isinstance(m, p.KillAttempt)] == []
        assert job.status is JobStatus.RUNNING and job.fence_hold is None
        assert len(job.attempts) == 1 and not job.attempts[0].lost and job.current_attempt is not None
        c.advance(HOLD_S * 2)
        assert c.starts() == []  # adopted: no retry, ever
        c.engine.on_exited(node, p.AttemptExited(attempt_id=first, job_id=job.job_id, exit_code=0,
                                                 started_at=1, stopped_at=2))
        c.engine.step()
        assert job.status is JobStatus.SUCCEEDED and len(job.attempts) == 1

    asyncio.run(run())


def test_a_lost_attempt_still_running_after_its_retry_started_is_killed(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        job = c.submit()
        node = run_on(c, job)
        first = job.attempts[0].attempt_id
        c.engine.node_lost(node, silent_s=HOLD_S + 1)  # the fence time has passed: retried at once
        c.engine.step()
        ((other, start),) = c.starts()
        assert other != node and start.attempt_number == 2
        c.register(node, running=[p.RunningAttempt(attempt_id=first, job_id=job.job_id, pid=1, started_at=1)])
        kills = [m for n, m in c.sent if isinstance(m, p.KillAttempt) and n == node]
        assert [k.attempt_id for k in kills] == [first]
        assert job.status is JobStatus.STARTING and job.current_attempt is not None
        assert job.current_attempt.attempt_id == start.attempt_id

    asyncio.run(run())


def test_a_lost_attempt_that_finished_while_its_node_was_away_is_not_run_again(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        job = c.submit()
        node = run_on(c, job)
        first = job.attempts[0].attempt_id
        c.engine.node_lost(node, silent_s=5)
        c.engine.step()
        exited = p.AttemptExited(attempt_id=first, job_id=job.job_id, exit_code=0, started_at=1, stopped_at=7)
        facts = p.NodeFacts(name=node, hostname=node, addresses=[], vcpus=1, memory_mib=1024)
        c.engine.on_register(node, p.Register(instance_id="again", node=facts, exited=[exited]))
        c.engine.step()
        assert job.status is JobStatus.SUCCEEDED
        assert len(job.attempts) == 1 and job.attempts[0].exit_code == 0 and not job.attempts[0].lost
        assert job.attempts[0].stopped_at == 7 and job.fence_hold is None
        acks = [m for n, m in c.sent if isinstance(m, p.AckExits)]
        assert [a.attempt_ids for a in acks] == [[first]]
        c.advance(HOLD_S * 2)
        assert c.starts() == []
        assert c.engine.store.get_jobs([job.job_id])[0].status is JobStatus.SUCCEEDED

    asyncio.run(run())


def test_a_lost_attempts_late_failure_counts_even_after_the_hold_if_the_retry_has_not_started(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        c.engine.drain("n1", "busy")
        c.engine.drain("n2", "busy")
        job = c.submit()
        c.engine.drain("n1", None)
        c.engine.step()
        node = run_on(c, job)
        c.engine.drain(node, "away")  # nowhere to run the retry
        c.engine.step()
        first = job.attempts[0].attempt_id
        c.engine.node_lost(node, silent_s=5)
        c.engine.step()
        c.advance(HOLD_S)  # released, queued, nowhere to go
        assert job.status is JobStatus.RUNNABLE and job.fence_hold is None and c.starts() == []
        c.engine.on_exited(node, p.AttemptExited(attempt_id=first, job_id=job.job_id, exit_code=3,
                                                 started_at=1, stopped_at=7))
        c.engine.step()
        # A real failure, recorded as such (not lost); the retry strategy (2 attempts) allows one more.
        assert job.status is JobStatus.RUNNABLE and job.attempts[0].exit_code == 3 and not job.attempts[0].lost
        assert job.attempts[0].status_reason == "Essential container in task exited"
        c.engine.drain("n1", None)
        c.engine.drain("n2", None)
        c.engine.step()
        ((_, start),) = c.starts()
        assert start.attempt_number == 2

    asyncio.run(run())


def test_a_fenced_end_of_a_lost_attempt_releases_its_retry(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        job = c.submit()
        node = run_on(c, job)
        first = job.attempts[0].attempt_id
        c.engine.node_lost(node, silent_s=5)
        c.engine.step()
        c.engine.on_exited(node, p.AttemptExited(attempt_id=first, job_id=job.job_id, exit_code=None, fenced=True,
                                                 status_reason="Node fenced", started_at=1, stopped_at=7))
        c.engine.step()
        ((_, start),) = c.starts()  # the command did not finish: its retry runs, now
        assert start.attempt_number == 2 and job.attempts[0].lost

    asyncio.run(run())


def test_the_hold_is_the_longer_of_the_heads_and_the_nodes_fence(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        c.register("n1", fence_after_s=120.0)
        assert c.engine.registry.fence_hold_s("n1") == retry_hold_s(120.0, 1.0)
        assert c.engine.registry.fence_hold_s("n2") == HOLD_S
        assert c.engine.registry.fence_hold_s("never-seen") == HOLD_S  # after a head restart

    asyncio.run(run())


def test_a_restarted_head_holds_the_retry_again(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        job = c.submit()
        node = run_on(c, job)
        c.engine.node_lost(node, silent_s=5)
        c.engine.step()
        # The hold is a field: a reason reworded (by another hpcbatch version, say) changes nothing.
        stored = c.engine.store.get_jobs([job.job_id])[0]
        stored.status_reason = "reworded"
        with c.engine.store.transaction():
            c.engine.store.put_jobs([stored])
        again = Cluster(tmp_path, restarted=True)
        held = again.engine.job(job.job_id)
        assert held.status is JobStatus.RUNNABLE and held.fence_hold is not None
        again.register("n2" if node == "n1" else "n1")
        again.advance(HOLD_S - 1)
        assert again.starts() == []  # held, though another node is free
        again.register(node)  # the lost node is back and runs nothing: go
        ((_, start),) = again.starts()
        assert start.attempt_number == 2

    asyncio.run(run())


def test_the_agents_fence_comes_from_its_config(tmp_path: Path) -> None:
    key = tmp_path / "head.key"
    key.write_text("x")
    path = tmp_path / "agent.toml"
    base = f'name = "n1"\nhead = "tcp://h:1"\nstate_dir = "{tmp_path}"\nhead_public_key = "{key}"\n'
    path.write_text(base)
    assert load_agent_config(path).fence_s == OUTAGE_BOUND_S
    path.write_text(base + "heartbeat_interval_s = 60.0\n")
    assert load_agent_config(path).fence_s == 1800.0
    path.write_text(base + "fence_after_s = 45\n")
    assert load_agent_config(path).fence_s == 45.0
    path.write_text(base + "fence_after_s = 0\n")
    assert load_agent_config(path).fence_s == 0.0
    path.write_text(base + "fence_after_s = -1\n")
    with pytest.raises(ConfigError, match="fence_after_s"):
        load_agent_config(path)


def test_a_gangs_retry_waits_for_its_lost_nodes_fence(tmp_path: Path) -> None:
    from hpcbatch.model.multinode import child_job_id

    async def run() -> None:
        c = Cluster(tmp_path)
        c.register("n3")
        common: dict[str, Any] = dict(
            job_queue="q", job_queue_arn="arn:q", job_definition="arn:d", owner="alice", status=JobStatus.SUBMITTED,
            created_at=1_000, command=["sleep", "60"], environment={}, container={}, num_nodes=2, retry_attempts=2,
            resources=ResourceRequest(vcpus=1, memory_mib=64))
        parent = JobRecord(job_id="g", job_name="g", **common)
        children = [JobRecord(job_id=child_job_id("g", i), job_name="g", parent_id="g", node_index=i, **common)
                    for i in range(2)]
        c.engine.submit(parent, children)
        c.engine.step()
        starts = sorted(c.starts(), key=lambda s: s[1].node_index)
        for node, start in starts:
            c.engine.on_started(node, p.AttemptStarted(attempt_id=start.attempt_id, job_id=start.job_id, pid=1,
                                                       started_at=1))
        c.engine.step()
        (main_node, main), (lost_node, lost) = starts
        c.engine.node_lost(lost_node, silent_s=5)
        c.engine.step()
        # The try ends: the main node is told to stop, and its exit ends the try.
        assert [m.attempt_id for n, m in c.sent if isinstance(m, p.KillAttempt) and n == main_node] == [main.attempt_id]
        c.engine.on_exited(main_node, p.AttemptExited(attempt_id=main.attempt_id, job_id=main.job_id, exit_code=None,
                                                      started_at=1, stopped_at=2))
        c.engine.step()
        assert parent.status is JobStatus.RUNNABLE
        assert parent.fence_hold == FenceHold(node=lost_node, attempt_id=lost.attempt_id)
        c.advance(HOLD_S - 5 - 0.5)
        assert c.starts() == []  # the lost node may still run its part of the first try
        c.advance(1)
        again = c.starts()
        assert len(again) == 2 and lost_node not in {n for n, _ in again}

    asyncio.run(run())


def test_a_restarted_head_adopts_a_lost_attempt_its_node_still_runs(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        job = c.submit()
        node = run_on(c, job)
        first = job.attempts[0].attempt_id
        c.engine.node_lost(node, silent_s=5)
        c.engine.step()
        again = Cluster(tmp_path, restarted=True)
        again.register(node, running=[p.RunningAttempt(attempt_id=first, job_id=job.job_id, pid=1, started_at=1)])
        held = again.engine.job(job.job_id)
        assert held.status is JobStatus.RUNNING and held.fence_hold is None and len(held.attempts) == 1
        assert [m for _n, m in again.sent if isinstance(m, p.KillAttempt)] == []
        assert again.engine.store.get_jobs([job.job_id])[0].status is JobStatus.RUNNING
        again.advance(HOLD_S * 2)
        assert again.starts() == []

    asyncio.run(run())
