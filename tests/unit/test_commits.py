"""The engine's group commit (hpcbatch.head.commits): one transaction per step, then the outbox.

A real SQLite store; a refused commit is made by a store whose ``put_jobs`` raises (disk full).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hpcbatch import protocol as p
from hpcbatch.head.commits import CommitBatcher
from hpcbatch.model.jobs import JobRecord, ResourceRequest
from hpcbatch.model.lifecycle import JobStatus
from hpcbatch.store.sqlite import SqliteStore


class FullDisk(SqliteStore):
    full = True

    def put_jobs(self, jobs: Any) -> None:
        if self.full:
            raise OSError(28, "No space left on device")
        super().put_jobs(jobs)


def job(job_id: str = "j1") -> JobRecord:
    return JobRecord(job_id=job_id, job_name=job_id, job_queue="q", job_queue_arn="arn:q", job_definition="arn:d",
                     owner="alice", status=JobStatus.SUBMITTED, created_at=1, command=["true"], environment={},
                     resources=ResourceRequest(vcpus=1, memory_mib=64), container={})


def test_one_step_commits_then_sends_with_acks_merged(tmp_path: Path) -> None:
    sent: list[tuple[str, p.Message]] = []
    seen: list[Any] = []

    async def run() -> None:
        store = SqliteStore(tmp_path / "db.sqlite")
        commits = CommitBatcher(store, lambda n, m: sent.append((n, m)), lambda: commits.flush())
        commits.observers.append(seen.append)
        commits.touch(job())
        commits.record("j1", 1, "SUBMITTED", None)
        commits.send("n1", p.AckExits(attempt_ids=["a1"]))
        commits.send("n1", p.PullImage(image="busybox"))
        commits.send("n1", p.AckExits(attempt_ids=["a2"]))
        await commits.durable()
        assert store.get_job("j1") is not None
        assert seen == [[("j1", 1, "SUBMITTED", None)]]
        assert sent == [("n1", p.PullImage(image="busybox")), ("n1", p.AckExits(attempt_ids=["a1", "a2"]))]
        assert not commits.pending

    asyncio.run(run())


def test_a_refused_commit_stays_pending_and_holds_the_outbox(tmp_path: Path) -> None:
    sent: list[tuple[str, p.Message]] = []

    async def run() -> None:
        store = FullDisk(tmp_path / "db.sqlite")
        commits = CommitBatcher(store, lambda n, m: sent.append((n, m)), lambda: commits.flush())
        commits.touch(job())
        commits.send("n1", p.PullImage(image="busybox"))
        with pytest.raises(OSError, match="No space"):
            await commits.durable()
        assert commits.pending and sent == []  # nothing leaves before its commit
        store.full = False
        commits.flush()  # what the retry timer's step does
        assert store.get_job("j1") is not None and sent == [("n1", p.PullImage(image="busybox"))]

    asyncio.run(run())
