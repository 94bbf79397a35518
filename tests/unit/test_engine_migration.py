"""Migration 0005: the facts recovery decides on move out of status sentences into typed fields.

A job document as an older head wrote it (a held retry known only by its statusReason, a
timeout known only by the agent's wording) is put in a store, 0005 is applied, and the
fields come out typed; a head recovering from that store holds the retry by the field.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from hpcbatch.head.engine import Engine, EngineOptions
from hpcbatch.head.logs import LogStore
from hpcbatch.model.jobs import FenceHold
from hpcbatch.model.lifecycle import JobStatus
from hpcbatch.store import open_store
from hpcbatch.store.migrate import YOYO_TABLE, is_postgresql, migrate
from tests import pg

MIGRATION = "0005.typed-job-facts"
TIMEOUT_WORDS = "Job attempt duration exceeded timeout"


def old_doc(job_id: str, status: str, **fields: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "job_id": job_id, "job_name": job_id, "job_queue": "q", "job_queue_arn": "arn:q", "job_definition": "arn:d",
        "owner": "alice", "status": status, "created_at": 1, "command": ["true"], "environment": {},
        "resources": {"vcpus": 1.0, "memory_mib": 64}, "container": {}, "retry_attempts": 2,
    }
    doc.update(fields)
    return doc


def attempt(attempt_id: str, node: str, status_reason: str | None) -> dict[str, object]:
    return {"attempt_id": attempt_id, "node": node, "compute_environment": "default", "log_stream_name": "s",
            "started_at": 1, "stopped_at": 2, "status_reason": status_reason}


OLD = [
    old_doc("held", "RUNNABLE", status_reason="Waiting for node n1 to fence its attempts",
            attempts=[attempt("a1", "n1", "Node n1 lost: no heartbeat for 5 s")]),
    old_doc("timedout", "FAILED", status_reason=TIMEOUT_WORDS,
            attempts=[attempt("b1", "n1", "Essential container in task exited"), attempt("b2", "n2", TIMEOUT_WORDS)]),
    old_doc("terminated", "FAILED", is_terminated=True, stop_reason="by alice",
            attempts=[attempt("c1", "n1", "by alice")]),
    old_doc("gang", "RUNNING", num_nodes=2, attempts=[],
            ending={"exit_code": None, "reason": None, "status_reason": TIMEOUT_WORDS, "stopped_at": 5}),
    old_doc("plain", "RUNNABLE", status_reason="Waiting for node n9 to fence its attempts",
            attempts=[attempt("d1", "n1", "Node n1 lost: no heartbeat for 5 s")]),  # another node: not a hold
]


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "head.db")
    postgres: pg.PostgresServer = request.getfixturevalue("postgres")
    return postgres.create_database("mig", migrated=True)


def write_as_an_older_head(target: str) -> None:
    """Documents written before 0005, and 0005 marked as not applied."""
    open_store(target).close()  # the schema, every migration applied
    rows = [(d["job_id"], d["status"], json.dumps(d).encode()) for d in OLD]
    if is_postgresql(target):
        import psycopg

        with psycopg.connect(target, autocommit=True) as db:
            for job_id, status, doc in rows:
                db.execute("INSERT INTO jobs (job_id, queue, status, name, owner, created_at, doc) "
                           "VALUES (%s, 'q', %s, %s, 'alice', 1, %s)", (job_id, status, job_id, doc))
            db.execute(f"DELETE FROM {YOYO_TABLE} WHERE migration_id = %s", (MIGRATION,))
        return
    import sqlite3

    db = sqlite3.connect(target)
    with db:
        db.executemany("INSERT INTO jobs (job_id, queue, status, name, owner, created_at, doc) "
                       "VALUES (?, 'q', ?, ?, 'alice', 1, ?)", [(j, s, j, d) for j, s, d in rows])
        db.execute(f"DELETE FROM {YOYO_TABLE} WHERE migration_id = ?", (MIGRATION,))
    db.close()


def test_0005_turns_status_sentences_into_typed_fields(target: str) -> None:
    write_as_an_older_head(target)
    assert migrate(target) == [MIGRATION]
    store = open_store(target)
    try:
        jobs = {j.job_id: j for j in store.get_jobs([str(d["job_id"]) for d in OLD])}
    finally:
        store.close()
    assert jobs["held"].fence_hold == FenceHold(node="n1", attempt_id="a1")
    assert jobs["held"].attempts[0].lost
    assert [a.timed_out for a in jobs["timedout"].attempts] == [False, True]
    assert jobs["terminated"].attempts[0].terminated
    assert jobs["gang"].ending is not None and jobs["gang"].ending.timed_out
    assert jobs["plain"].fence_hold is None


def test_a_head_on_a_migrated_store_holds_the_retry_by_the_field(target: str, tmp_path: Path) -> None:
    write_as_an_older_head(target)
    migrate(target)

    async def run() -> None:
        store = open_store(target)
        engine = Engine(store, LogStore(tmp_path / "logs"), send=lambda node, msg: None, clock_ms=lambda: 1_000,
                        monotonic=lambda: 0.0, options=EngineOptions(fence_after_s=30.0, heartbeat_interval_s=1.0))
        try:
            engine.recover()
            held = engine.job("held")
            assert held.status is JobStatus.RUNNABLE and held.fence_hold is not None
            assert engine.registry.held("held") is not None  # not fed to the scheduler: held
            assert engine.registry.held("plain") is None
        finally:
            store.close()

    asyncio.run(run())
