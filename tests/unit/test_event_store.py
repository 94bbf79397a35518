"""The store's event-stream queries on both backends: one sequence for job and node events, filters, counts.

The tests taking ``store`` run on SQLite and on PostgreSQL (as tests/unit/test_store.py's
do), so the two backends answer alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcbatch.model.lifecycle import JobStatus
from hpcbatch.store import SqliteStore, Store, open_store
from hpcbatch.store.base import NODE_EVENT_PREFIX
from tests import pg
from tests.unit.test_store import BACKENDS, job


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh store: a SQLite file, or a new database on the session's PostgreSQL (tests/pg.py)."""
    if request.param == "sqlite":
        target = str(tmp_path / "head.db")
    else:
        postgres: pg.PostgresServer = request.getfixturevalue("postgres")
        target = postgres.create_database("events", migrated=True)
    s = open_store(target)
    try:
        yield s
    finally:
        s.close()


def test_job_and_node_events_share_one_resumable_sequence(store: Store) -> None:
    with store.transaction():
        store.put_jobs([job("a", queue="q1"), job("b", queue="q2", owner="bob")])
        store.add_job_events([("a", 1, "SUBMITTED", None), (NODE_EVENT_PREFIX + "n1", 2, "DRAINED", "disk"),
                              ("b", 3, "SUBMITTED", None), ("a", 4, "RUNNABLE", None)])
    rows = store.events_after(0, 100)
    assert [(r.job_id, r.status) for r in rows] == [("a", "SUBMITTED"), ("node/n1", "DRAINED"), ("b", "SUBMITTED"), ("a", "RUNNABLE")]
    assert [r.event_id for r in rows] == sorted(r.event_id for r in rows)
    assert (rows[0].queue, rows[0].owner) == ("q1", "alice") and rows[1].queue is None and rows[1].reason == "disk"
    assert store.events_after(rows[1].event_id, 100) == rows[2:]
    assert store.events_after(0, 2) == rows[:2]
    assert store.last_event_id() == rows[-1].event_id


def test_events_filter_by_job_with_its_children_and_by_queue(store: Store) -> None:
    with store.transaction():
        store.put_jobs([job("p", queue="q1"), job("p:0", queue="q1"), job("p#1", queue="q1"), job("pq", queue="q2")])
        store.add_job_events([("p", 1, "SUBMITTED", None), ("p:0", 2, "RUNNABLE", None), ("p#1", 3, "RUNNABLE", None),
                              ("pq", 4, "SUBMITTED", None), (NODE_EVENT_PREFIX + "n", 5, "ACTIVE", None)])
    assert [r.job_id for r in store.events_after(0, 100, job_id="p")] == ["p", "p:0", "p#1"]
    assert [r.job_id for r in store.events_after(0, 100, queue="q2")] == ["pq"]
    assert store.events_after(0, 100, job_id="nope") == []


def test_job_counts_by_queue_and_status_leave_out_children(store: Store) -> None:
    with store.transaction():
        store.put_jobs([job("a", queue="q1", status=JobStatus.SUCCEEDED), job("b", queue="q1", status=JobStatus.SUCCEEDED),
                        job("b:0", queue="q1", status=JobStatus.SUCCEEDED), job("c#0", queue="q1"),
                        job("d", queue="q2", status=JobStatus.FAILED)])
    assert store.count_jobs_by_queue_status() == {("q1", "SUCCEEDED"): 2, ("q2", "FAILED"): 1}


def test_under_private_data_a_user_reads_only_their_jobs_events_and_every_nodes(tmp_path: Path) -> None:
    from hpcbatch.auth.policy import Caller
    from hpcbatch.head.engine import Engine
    from hpcbatch.head.events import EventFeed
    from hpcbatch.head.logs import LogStore
    from hpcbatch.head.service import BatchService

    store = SqliteStore(tmp_path / "feed.db")
    try:
        service = BatchService(store, Engine(store, LogStore(tmp_path / "logs"), send=lambda n, m: None, clock_ms=lambda: 1),
                               region="local", account="0")
        feed = EventFeed(service)
        with store.transaction():
            store.put_jobs([job("a", owner="alice"), job("b", owner="bob")])
            store.add_job_events([("a", 1, "SUBMITTED", None), ("b", 2, "SUBMITTED", None), (NODE_EVENT_PREFIX + "n", 3, "DOWN", "lost")])
        bob = Caller(user="bob", role="user", via="socket")
        admin = Caller(user="root", role="admin", via="socket")
        assert len(feed.read(bob, 0, 100)[0]) == 3  # private_data off: everyone sees everything
        service.private_data = True
        events, cursor, more = feed.read(bob, 0, 100)
        assert [(e["type"], e.get("jobId") or e.get("node")) for e in events] == [("job", "b"), ("node", "n")]
        assert cursor == store.last_event_id() and not more
        assert len(feed.read(admin, 0, 100)[0]) == 3
        # A page of hidden events still moves the cursor on, so a follower never stalls.
        events, cursor, more = feed.read(bob, 0, 1)
        assert events == [] and cursor == 1 and more
    finally:
        store.close()


def test_job_filter_matches_its_children_and_nothing_else_even_with_like_wildcards(store: Store) -> None:
    # A job id holding LIKE's or GLOB's wildcards (%, _, *, ?) or psycopg's placeholder
    # character matches literally on both backends: "a%b" is not "axb", "a_b" is not "acb".
    with store.transaction():
        store.put_jobs([job("a%b", queue="q1"), job("axb", queue="q1"), job("a_b", queue="q1"), job("acb", queue="q1"),
                        job("a%b#0", queue="q1"), job("axb#0", queue="q1"),
                        job("a*b", queue="q2"), job("axb:0", queue="q2")])
        store.add_job_events([("a%b", 1, "SUBMITTED", None), ("axb", 2, "SUBMITTED", None), ("a_b", 3, "SUBMITTED", None),
                              ("acb", 4, "SUBMITTED", None), ("a%b#0", 5, "RUNNABLE", None), ("axb#0", 6, "RUNNABLE", None),
                              ("a*b", 7, "SUBMITTED", None), ("axb:0", 8, "RUNNABLE", None)])
    assert [r.job_id for r in store.events_after(0, 100, job_id="a%b")] == ["a%b", "a%b#0"]
    assert [r.job_id for r in store.events_after(0, 100, job_id="a_b")] == ["a_b"]
    assert store.events_after(0, 100, job_id="A%B") == []  # job ids are case-sensitive (SQLite's LIKE is not)
    assert [r.job_id for r in store.events_after(0, 100, job_id="a*b")] == ["a*b"]
    assert [r.job_id for r in store.events_after(0, 100, job_id="axb")] == ["axb", "axb#0", "axb:0"]
    assert [r.job_id for r in store.events_after(0, 100, queue="q2")] == ["a*b", "axb:0"]
    assert store.last_event_id() == store.events_after(0, 100)[-1].event_id


def test_an_empty_store_has_no_events_and_no_counts(store: Store) -> None:
    assert store.events_after(0, 100) == [] and store.last_event_id() == 0
    assert store.count_jobs_by_queue_status() == {}
