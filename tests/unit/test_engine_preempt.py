"""Preemption in the head (hpcbatch.head.preempting): a real engine over a real store, fed the
messages agents send; the scheduler's PreemptAttempt becomes a kill with the preemption's
grace and the job's warning signal, and the victim comes back RUNNABLE as a new attempt that
does not count against retryStrategy, also across a head restart. Nothing sleeps."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hpcbatch import protocol as p
from hpcbatch.head.engine import Engine
from hpcbatch.model.jobs import JobRecord, ResourceRequest
from hpcbatch.model.lifecycle import JobStatus
from tests.unit.test_fencing import Cluster, run_on

GRACE_S = 2.5


def queues(engine: Engine) -> None:
    for name, priority, tag in (("lo", 1, "hpcbatch:preemptible"), ("hi", 10, "hpcbatch:preempts")):
        engine.job_queue_changed({"jobQueueName": name, "state": "ENABLED", "priority": priority, "tags": {tag: "true"},
                                  "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": "default"}]})
    engine.step()


def submit(c: Cluster, job_id: str, queue: str, **fields: object) -> JobRecord:
    job = JobRecord(job_id=job_id, job_name=job_id, job_queue=queue, job_queue_arn=f"arn:{queue}",
                    job_definition="arn:d", owner="alice", status=JobStatus.SUBMITTED, created_at=1_000,
                    command=["sleep", "60"], environment={}, resources=ResourceRequest(vcpus=1, memory_mib=64),
                    container={}, **fields)  # type: ignore[arg-type]
    c.engine.submit(job)
    c.engine.step()
    return job


def fill(c: Cluster) -> list[JobRecord]:
    """Both 1-vCPU nodes run a job of the preemptible queue (retryStrategy attempts=1)."""
    victims = []
    for i in (1, 2):
        job = submit(c, f"lo-{i}", "lo", retry_attempts=1, tags={"hpcbatch:signal": "USR1@30"})
        run_on(c, job)
        victims.append(job)
    return victims


def kills(c: Cluster) -> list[tuple[str, p.KillAttempt]]:
    found = [(n, m) for n, m in c.sent if isinstance(m, p.KillAttempt)]
    c.sent.clear()
    return found


def exited(c: Cluster, node: str, job: JobRecord, exit_code: int | None) -> None:
    attempt = job.attempts[-1]
    c.engine.on_exited(node, p.AttemptExited(attempt_id=attempt.attempt_id, job_id=job.job_id, exit_code=exit_code,
                                             status_reason="killed", started_at=1, stopped_at=2_000))
    c.engine.step()


def test_a_preempted_job_gets_its_signal_and_the_grace_then_is_runnable_again_uncounted(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path, preempt_grace_s=GRACE_S)
        queues(c.engine)
        victims = fill(c)
        submit(c, "hi-1", "hi")
        ((node, kill),) = kills(c)  # one victim is enough for a 1-vCPU job
        assert kill.grace_s == GRACE_S and kill.warning_signal == "USR1"
        assert "Preempted for hi-1" in kill.reason
        victim = next(v for v in victims if v.attempts[-1].attempt_id == kill.attempt_id)
        assert victim.preempting is not None and victim.preempting.by == "hi-1"
        assert c.engine.store.get_jobs([victim.job_id])[0].preempting == victim.preempting  # durable
        exited(c, node, victim, 0)  # it trapped SIGTERM and exited 0: still stopped, not finished
        assert victim.status is JobStatus.RUNNABLE
        # the ended attempt says why (the job's own statusReason moves on to why it waits now)
        assert "Preempted for hi-1" in (victim.attempts[-1].status_reason or "")
        assert victim.attempts[-1].preempted_by == "hi-1" and victim.preempting is None
        started = [m.job_id for _n, m in c.starts()]
        assert started == ["hi-1"]  # the preemptor gets the node; the victim waits, still retryable

    asyncio.run(run())


def test_a_head_restarted_mid_preemption_resends_the_stop_and_counts_no_failure(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path, preempt_grace_s=GRACE_S)
        queues(c.engine)
        fill(c)
        submit(c, "hi-1", "hi")
        ((node, kill),) = kills(c)
        running = [p.RunningAttempt(attempt_id=j.attempts[-1].attempt_id, job_id=j.job_id, pid=1, started_at=1)
                   for j in c.engine.jobs_where(lambda j: j.status is JobStatus.RUNNING)
                   if j.attempts[-1].node == node]
        again = Cluster(tmp_path, restarted=True, preempt_grace_s=GRACE_S)
        queues(again.engine)
        again.register(node, running=running)
        resent = [m for _n, m in kills(again) if m.attempt_id == kill.attempt_id]
        assert resent and resent[0].grace_s == GRACE_S and resent[0].warning_signal == "USR1"
        victim = again.engine.job(running[0].job_id)
        assert victim is not None and victim.preempting is not None
        exited(again, node, victim, None)
        assert victim.status is JobStatus.RUNNABLE and victim.attempts[-1].preempted_by == "hi-1"

    asyncio.run(run())


def test_a_gang_victim_is_stopped_whole_and_retried_uncounted(tmp_path: Path) -> None:
    from hpcbatch.model.multinode import child_job_id

    async def run() -> None:
        c = Cluster(tmp_path, preempt_grace_s=GRACE_S)
        queues(c.engine)
        common: dict = dict(job_queue="lo", job_queue_arn="arn:lo", job_definition="arn:d", owner="alice",
                            status=JobStatus.SUBMITTED, created_at=1_000, command=["sleep", "60"], environment={},
                            container={}, num_nodes=2, retry_attempts=1, resources=ResourceRequest(vcpus=1, memory_mib=64))
        parent = JobRecord(job_id="g", job_name="g", tags={"hpcbatch:signal": "USR2@10"}, **common)
        children = [JobRecord(job_id=child_job_id("g", i), job_name="g", parent_id="g", node_index=i, **common)
                    for i in range(2)]
        c.engine.submit(parent, children)
        c.engine.step()
        starts = sorted(c.starts(), key=lambda s: s[1].node_index)
        for node, start in starts:
            c.engine.on_started(node, p.AttemptStarted(attempt_id=start.attempt_id, job_id=start.job_id, pid=1,
                                                       started_at=1))
        c.engine.step()
        submit(c, "hi-1", "hi")
        stopped = kills(c)
        assert sorted(m.attempt_id for _n, m in stopped) == sorted(s.attempt_id for _n, s in starts)  # whole
        assert {(m.grace_s, m.warning_signal) for _n, m in stopped} == {(GRACE_S, "USR2")}
        for node, start in starts:
            c.engine.on_exited(node, p.AttemptExited(attempt_id=start.attempt_id, job_id=start.job_id, exit_code=None,
                                                     started_at=1, stopped_at=2))
            c.engine.step()
        assert parent.status is JobStatus.RUNNABLE and parent.preempting is None
        assert parent.attempts[-1].preempted_by == "hi-1"
        assert "Preempted for hi-1" in (parent.attempts[-1].status_reason or "")
        assert [m.job_id for _n, m in c.starts()] == ["hi-1"]

    asyncio.run(run())
