"""Both store backends, the same tests: resources, jobs, events, scripts, transactions.

Every test taking ``store`` or ``target`` runs on SQLite (a temporary file) and on
PostgreSQL (a fresh database on the session's throwaway server, tests/pg.py; skipped
where PostgreSQL's server binaries are missing). A new Store method gets its tests here.
"""

from __future__ import annotations

import gc
import secrets
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcbatch.model.jobs import Attempt, JobRecord, ResourceRequest
from hpcbatch.model.lifecycle import JobStatus
from hpcbatch.store import JobQuery, SqliteStore, Store, open_store
from tests import pg

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store lives: a SQLite file path, or a new PostgreSQL database's URL."""
    if request.param == "sqlite":
        return str(tmp_path / "state" / "head.db")
    postgres: pg.PostgresServer = request.getfixturevalue("postgres")
    return postgres.create_database("store", migrated=True)


@pytest.fixture
def store(target: str) -> Iterator[Store]:
    s = open_store(target)
    try:
        yield s
    finally:
        s.close()


def job(job_id: str, *, queue: str = "q", name: str | None = None, **fields: Any) -> JobRecord:
    """A job record with the tests' defaults; ``fields`` are JobRecord's own (created_at, status, ...)."""
    defaults: dict[str, Any] = {
        "created_at": 1000, "status": JobStatus.RUNNABLE, "owner": "alice",
        "job_definition": "arn:aws:batch:eu-west-1:123456789012:job-definition/d:1",
    }
    return JobRecord(
        job_id=job_id,
        job_name=name or f"name-{job_id}",
        job_queue=queue,
        job_queue_arn=f"arn:aws:batch:eu-west-1:123456789012:job-queue/{queue}",
        command=["echo", job_id],
        environment={},
        resources=ResourceRequest(1, 512),
        container={"command": ["echo", job_id]},
        **{**defaults, **fields},
    )


def ids(jobs: list[JobRecord]) -> list[str]:
    return [j.job_id for j in jobs]


# -------------------------------------------------------------------- resources
def test_resource_revisions_are_kept_and_zero_means_latest(store: Store) -> None:
    with store.transaction():
        store.put_resource("jobdef", "train", 1, "ACTIVE", {"revision": 1})
        store.put_resource("jobdef", "train", 2, "ACTIVE", {"revision": 2})
    assert store.get_resource("jobdef", "train") == {"revision": 2}
    assert store.get_resource("jobdef", "train", 1) == {"revision": 1}
    assert store.get_resource("jobdef", "train", 3) is None
    assert store.latest_revision("jobdef", "train") == 2


def test_unknown_resource_is_none_and_has_revision_zero(store: Store) -> None:
    assert store.get_resource("queue", "nope") is None
    assert store.latest_revision("queue", "nope") == 0
    assert store.list_resources("queue") == []


def test_putting_the_same_revision_again_replaces_it(store: Store) -> None:
    store.put_resource("queue", "q", 1, "ENABLED", {"state": "ENABLED"})
    store.put_resource("queue", "q", 1, "DISABLED", {"state": "DISABLED"})
    assert store.list_resources("queue") == [{"state": "DISABLED"}]


def test_list_resources_orders_by_name_then_revision(store: Store) -> None:
    for name, rev in [("b", 2), ("a", 1), ("b", 1), ("a", 2)]:
        store.put_resource("jobdef", name, rev, "ACTIVE", {"n": name, "r": rev})
    assert [(d["n"], d["r"]) for d in store.list_resources("jobdef")] == [
        ("a", 1),
        ("a", 2),
        ("b", 1),
        ("b", 2),
    ]
    assert [d["r"] for d in store.list_resources("jobdef", "b")] == [1, 2]


def test_resource_kinds_are_separate_namespaces(store: Store) -> None:
    store.put_resource("ce", "same", 1, "ENABLED", {"kind": "ce"})
    store.put_resource("queue", "same", 1, "ENABLED", {"kind": "queue"})
    assert store.get_resource("ce", "same") == {"kind": "ce"}
    store.delete_resource("ce", "same")
    assert store.get_resource("ce", "same") is None
    assert store.get_resource("queue", "same") == {"kind": "queue"}


def test_delete_resource_removes_every_revision(store: Store) -> None:
    for rev in (1, 2, 3):
        store.put_resource("jobdef", "d", rev, "ACTIVE", {"r": rev})
    store.delete_resource("jobdef", "d")
    assert store.list_resources("jobdef", "d") == []
    assert store.latest_revision("jobdef", "d") == 0


def test_resource_documents_round_trip_nested_json(store: Store) -> None:
    doc = {
        "jobDefinitionName": "d",
        "containerProperties": {"command": ["a", "b"], "vcpus": 0.5, "privileged": False},
        "parameters": {},
        "tags": {"k": "v"},
        "timeout": None,
    }
    store.put_resource("jobdef", "d", 1, "ACTIVE", doc)
    assert store.get_resource("jobdef", "d") == doc


# ------------------------------------------------------------------------- jobs
def test_job_round_trips_with_attempts_and_status(store: Store) -> None:
    original = job(
        "j1",
        status=JobStatus.FAILED,
        stopped_at=5000,
        parameters={"p": "1"},
        evaluate_on_exit=[{"action": "EXIT", "onExitCode": "1"}],
        attempts=[
            Attempt(
                attempt_id="a1",
                node="n1",
                compute_environment="ce",
                log_stream_name="d/default/a1",
                started_at=1,
                stopped_at=2,
                exit_code=1,
            )
        ],
    )
    store.put_jobs([original])
    loaded = store.get_job("j1")
    assert loaded == original
    assert loaded is not None and loaded.status is JobStatus.FAILED
    assert loaded.resources == ResourceRequest(1, 512)


def test_unknown_job_is_none(store: Store) -> None:
    assert store.get_job("nope") is None
    assert store.job_seq("nope") == 0


def test_get_jobs_keeps_the_requested_order_and_skips_unknown(store: Store) -> None:
    store.put_jobs([job("a"), job("b"), job("c")])
    assert ids(store.get_jobs(["c", "missing", "a"])) == ["c", "a"]
    assert store.get_jobs([]) == []


def test_putting_a_job_again_updates_it_in_place(store: Store) -> None:
    store.put_jobs([job("a"), job("b")])
    seq = store.job_seq("a")
    store.put_jobs([job("a", status=JobStatus.RUNNING)])
    assert store.get_job("a").status is JobStatus.RUNNING  # type: ignore[union-attr]
    assert store.job_seq("a") == seq
    assert store.list_jobs(JobQuery(statuses=(JobStatus.RUNNING,))) == [
        job("a", status=JobStatus.RUNNING)
    ]


def test_list_jobs_is_newest_first_with_job_id_breaking_ties(store: Store) -> None:
    store.put_jobs(
        [
            job("b", created_at=2),
            job("a", created_at=3),
            job("c", created_at=2),
            job("d", created_at=1),
        ]
    )
    assert ids(store.list_jobs(JobQuery())) == ["a", "c", "b", "d"]


def test_list_jobs_filters_by_queue(store: Store) -> None:
    store.put_jobs(
        [job("a", queue="cpu"), job("b", queue="gpu"), job("c", queue="cpu", created_at=2000)]
    )
    assert ids(store.list_jobs(JobQuery(queue="cpu"))) == ["c", "a"]
    assert store.list_jobs(JobQuery(queue="none")) == []


def test_list_jobs_filters_by_any_of_several_statuses(store: Store) -> None:
    store.put_jobs(
        [
            job("a", status=JobStatus.RUNNABLE, created_at=1),
            job("b", status=JobStatus.RUNNING, created_at=2),
            job("c", status=JobStatus.SUCCEEDED, created_at=3),
        ]
    )
    assert ids(store.list_jobs(JobQuery(statuses=(JobStatus.RUNNING,)))) == ["b"]
    assert ids(store.list_jobs(JobQuery(statuses=(JobStatus.RUNNABLE, JobStatus.SUCCEEDED)))) == [
        "c",
        "a",
    ]


def test_list_jobs_filters_by_owner(store: Store) -> None:
    store.put_jobs([job("a", owner="alice"), job("b", owner="bob")])
    assert ids(store.list_jobs(JobQuery(owner="bob"))) == ["b"]


def test_job_name_filter_without_star_is_an_exact_match(store: Store) -> None:
    store.put_jobs([job("a", name="train"), job("b", name="train-2"), job("c", name="pretrain")])
    assert ids(store.list_jobs(JobQuery(name_like="train"))) == ["a"]


def test_job_name_filter_with_trailing_star_is_a_prefix_match(store: Store) -> None:
    store.put_jobs(
        [
            job("a", name="train", created_at=1),
            job("b", name="train-2", created_at=2),
            job("c", name="pretrain", created_at=3),
        ]
    )
    assert ids(store.list_jobs(JobQuery(name_like="train*"))) == ["b", "a"]
    assert len(store.list_jobs(JobQuery(name_like="*"))) == 3


def test_job_name_prefix_treats_sql_wildcards_literally(store: Store) -> None:
    store.put_jobs([job("a", name="run_1%x"), job("b", name="runX1yx")])
    assert ids(store.list_jobs(JobQuery(name_like="run_1%*"))) == ["a"]


def test_job_name_filter_is_case_insensitive_like_aws(store: Store) -> None:
    store.put_jobs([job("a", name="Test1", created_at=1), job("b", name="Test10", created_at=2)])
    assert ids(store.list_jobs(JobQuery(name_like="test1"))) == ["a"]
    assert ids(store.list_jobs(JobQuery(name_like="test1*"))) == ["b", "a"]


def test_list_jobs_filters_by_creation_time(store: Store) -> None:
    store.put_jobs([job(f"j{t}", created_at=t) for t in (100, 200, 300, 400)])
    assert ids(store.list_jobs(JobQuery(created_after=150))) == ["j400", "j300", "j200"]
    assert ids(store.list_jobs(JobQuery(created_before=250))) == ["j200", "j100"]
    assert ids(store.list_jobs(JobQuery(created_after=150, created_before=350))) == ["j300", "j200"]


def test_list_jobs_combines_filters(store: Store) -> None:
    store.put_jobs(
        [
            job("hit", queue="q", owner="bob", name="x-1", status=JobStatus.RUNNING),
            job("other-owner", queue="q", owner="alice", name="x-2", status=JobStatus.RUNNING),
            job("other-queue", queue="r", owner="bob", name="x-3", status=JobStatus.RUNNING),
            job("other-status", queue="q", owner="bob", name="x-4", status=JobStatus.RUNNABLE),
            job("other-name", queue="q", owner="bob", name="y-1", status=JobStatus.RUNNING),
        ]
    )
    query = JobQuery(queue="q", owner="bob", name_like="x*", statuses=(JobStatus.RUNNING,))
    assert ids(store.list_jobs(query)) == ["hit"]


JOBDEF_ARN = "arn:aws:batch:eu-west-1:123456789012:job-definition/"


def _with_definitions(store: Store) -> None:
    """d:1, d:2, dx:1 and D:1 (names are case-sensitive), one job each, newest last."""
    store.put_jobs([
        job(f"j{i}", created_at=i, job_definition=JOBDEF_ARN + d)
        for i, d in enumerate(["d:1", "d:2", "dx:1", "D:1"])
    ])  # fmt: skip


def test_job_definition_filter_by_name_matches_every_revision_of_that_name_only(store: Store) -> None:
    _with_definitions(store)
    assert ids(store.list_jobs(JobQuery(job_definition="d"))) == ["j1", "j0"]
    assert ids(store.list_jobs(JobQuery(job_definition="D"))) == ["j3"]
    assert store.list_jobs(JobQuery(job_definition="e")) == []


def test_job_definition_filter_with_a_revision_matches_that_revision_only(store: Store) -> None:
    _with_definitions(store)
    assert ids(store.list_jobs(JobQuery(job_definition="d:2"))) == ["j1"]
    assert store.list_jobs(JobQuery(job_definition="d:3")) == []


def test_job_definition_filter_with_trailing_star_is_a_case_sensitive_name_prefix(store: Store) -> None:
    _with_definitions(store)
    assert ids(store.list_jobs(JobQuery(job_definition="d*"))) == ["j2", "j1", "j0"]
    assert ids(store.list_jobs(JobQuery(job_definition="dx*"))) == ["j2"]
    assert len(store.list_jobs(JobQuery(job_definition="*"))) == 4


def test_job_definition_filter_pages_are_full_while_matches_remain(store: Store) -> None:
    # Before the filter went into SQL it ran after LIMIT: pages came back short.
    store.put_jobs([
        job(f"j{i:02d}", created_at=i, job_definition=JOBDEF_ARN + ("want:1" if i % 3 == 0 else "other:1"))
        for i in range(30)
    ])  # fmt: skip
    seen: list[str] = []
    after = None
    while True:
        page = store.list_jobs(JobQuery(job_definition="want", limit=4, after=after))
        seen.extend(ids(page))
        if len(page) < 4:
            break
        after = (page[-1].created_at, page[-1].job_id)
    assert seen == [f"j{i:02d}" for i in range(27, -1, -3)]
    assert len(store.list_jobs(JobQuery(job_definition="want", limit=4))) == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_migration_0006_fills_the_job_definition_of_jobs_stored_before_it(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from yoyo import get_backend, read_migrations

    from hpcbatch.store import migrate

    if backend == "sqlite":
        target = str(tmp_path / "head.db")
    else:
        target = request.getfixturevalue("postgres").create_database("upgrade")
    yoyo = get_backend(migrate._yoyo_uri(target), migration_table=migrate.YOYO_TABLE)
    try:
        older = read_migrations(str(migrate.MIGRATIONS / backend)).filter(lambda m: m.id < "0006")
        yoyo.apply_migrations(yoyo.to_apply(older))
    finally:
        migrate._close(yoyo)
    old = job("old", job_definition=JOBDEF_ARN + "legacy:3")
    row = (old.job_id, old.job_queue, old.status.value, old.job_name, old.owner, old.created_at, None,
           msgspec.json.encode(old))
    columns = "INSERT INTO jobs (job_id, queue, status, name, owner, created_at, stopped_at, doc) VALUES "
    if backend == "sqlite":
        with sqlite3.connect(target) as db:
            db.execute(columns + "(?, ?, ?, ?, ?, ?, ?, ?)", row)
        db.close()
    else:
        import psycopg

        with psycopg.connect(target, autocommit=True) as pgdb:
            pgdb.execute(columns + "(%s, %s, %s, %s, %s, %s, %s, %s)", row)
    if backend == "postgresql":
        migrate.migrate(target)  # several heads may share it: upgrading is an admin's act
    s = open_store(target)
    try:
        assert ids(s.list_jobs(JobQuery(job_definition="legacy"))) == ["old"]
        assert ids(s.list_jobs(JobQuery(job_definition="legacy:3"))) == ["old"]
        # The shared queries read a row the previous schema wrote (no client token, no jobdef then).
        assert [(j.job_id, seq) for seq, j in s.unfinished_jobs()] == [("old", s.job_seq("old"))]
        assert s.job_by_client_token("alice", "t") is None
        s.put_jobs([job("old", status=JobStatus.SUCCEEDED, job_definition=JOBDEF_ARN + "legacy:3")])
        assert list(s.unfinished_jobs()) == [] and s.count_jobs("q", (JobStatus.SUCCEEDED,)) == 1
    finally:
        s.close()


# -------------------------------------------------------------- client tokens
def test_a_job_is_found_by_its_owner_and_client_token(store: Store) -> None:
    store.put_jobs([job("a", owner="alice", client_token="t1", request_digest="h")])
    found = store.job_by_client_token("alice", "t1")
    assert found is not None and found.job_id == "a" and found.request_digest == "h"
    assert store.job_by_client_token("bob", "t1") is None
    assert store.job_by_client_token("alice", "t2") is None


def test_a_client_token_is_unique_per_owner(store: Store) -> None:
    store.put_jobs([job("a", owner="alice", client_token="t1")])
    store.put_jobs([job("b", owner="bob", client_token="t1")])  # another owner's token
    store.put_jobs([job("a", owner="alice", client_token="t1", status=JobStatus.RUNNING)])  # an update
    with pytest.raises(Exception, match="(?i)unique"), store.transaction():
        store.put_jobs([job("c", owner="alice", client_token="t1")])
    assert store.get_job("c") is None


def test_children_do_not_carry_their_parents_client_token(store: Store) -> None:
    # Array children are copies of their parent; node children share its fields.
    store.put_jobs([
        job("p", client_token="t1"),
        job("p:0", client_token="t1", array_parent="p", array_index=0),
        job("p#0", client_token="t1", parent_id="p", node_index=0),
    ])  # fmt: skip
    found = store.job_by_client_token("alice", "t1")
    assert found is not None and found.job_id == "p"


def test_list_jobs_honours_limit(store: Store) -> None:
    store.put_jobs([job(f"j{i}", created_at=i) for i in range(10)])
    assert ids(store.list_jobs(JobQuery(limit=3))) == ["j9", "j8", "j7"]


def test_after_continues_from_the_last_item_of_the_previous_page(store: Store) -> None:
    store.put_jobs(
        [
            job("a", created_at=1),
            job("b", created_at=2),
            job("c", created_at=2),
            job("d", created_at=3),
        ]
    )
    first = store.list_jobs(JobQuery(limit=2))
    assert ids(first) == ["d", "c"]
    last = first[-1]
    second = store.list_jobs(JobQuery(limit=2, after=(last.created_at, last.job_id)))
    assert ids(second) == ["b", "a"]
    assert store.list_jobs(JobQuery(limit=2, after=(1, "a"))) == []


def _all_pages(store: Store, query: JobQuery) -> list[str]:
    out: list[str] = []
    after = None
    while True:
        page = store.list_jobs(JobQuery(queue=query.queue, limit=query.limit, after=after))
        out.extend(ids(page))
        if len(page) < query.limit:
            return out
        after = (page[-1].created_at, page[-1].job_id)


@settings(max_examples=50, deadline=None)
@given(
    created=st.lists(st.integers(0, 5), min_size=0, max_size=25),
    limit=st.integers(1, 7),
)
def test_paging_with_after_visits_every_job_once_newest_first(
    created: list[int], limit: int
) -> None:
    with tempfile.TemporaryDirectory() as d:
        s = SqliteStore(Path(d) / "h.db")
        try:
            jobs = [job(f"j{i:02d}", created_at=t) for i, t in enumerate(created)]
            s.put_jobs(jobs)
            expected = ids(sorted(jobs, key=lambda j: (j.created_at, j.job_id), reverse=True))
            assert _all_pages(s, JobQuery(limit=limit)) == expected
        finally:
            s.close()


def test_unfinished_jobs_come_oldest_submission_first_and_skip_final_ones(
    store: Store,
) -> None:
    # Submission order (insertion), not created_at, decides.
    store.put_jobs([job("first", created_at=900), job("done", status=JobStatus.SUCCEEDED)])
    store.put_jobs([job("second", created_at=100), job("failed", status=JobStatus.FAILED)])
    store.put_jobs([job("third", status=JobStatus.PENDING)])
    store.put_jobs([job("first", status=JobStatus.RUNNING)])  # an update keeps its place
    got = list(store.unfinished_jobs())
    assert [j.job_id for _, j in got] == ["first", "second", "third"]
    assert [seq for seq, _ in got] == sorted(seq for seq, _ in got)
    assert all(seq == store.job_seq(j.job_id) for seq, j in got)
    assert got[0][1].status is JobStatus.RUNNING


def test_count_jobs_counts_a_queue_in_the_given_states(store: Store) -> None:
    store.put_jobs(
        [
            job("a", queue="q", status=JobStatus.RUNNABLE),
            job("b", queue="q", status=JobStatus.RUNNING),
            job("c", queue="q", status=JobStatus.SUCCEEDED),
            job("d", queue="r", status=JobStatus.RUNNING),
        ]
    )
    assert store.count_jobs("q", (JobStatus.RUNNABLE, JobStatus.RUNNING)) == 2
    assert store.count_jobs("r", (JobStatus.RUNNABLE,)) == 0


def test_prune_deletes_only_finished_jobs_stopped_before_the_cutoff(store: Store) -> None:
    store.put_jobs(
        [
            job("old-ok", status=JobStatus.SUCCEEDED, stopped_at=100),
            job("old-failed", status=JobStatus.FAILED, stopped_at=199),
            job("recent", status=JobStatus.SUCCEEDED, stopped_at=200),
            job("running", status=JobStatus.RUNNING),
        ]
    )
    store.add_job_events([("old-ok", 100, "SUCCEEDED", None), ("recent", 200, "SUCCEEDED", None)])
    assert len(store.prune_jobs(stopped_before=200)) == 2
    assert ids(store.list_jobs(JobQuery())) == sorted(["recent", "running"], reverse=True)
    assert store.job_events("old-ok") == []
    assert store.job_events("recent") == [(200, "SUCCEEDED", None)]
    assert store.prune_jobs(stopped_before=200) == []


def test_prune_handles_more_jobs_than_one_delete_batch(store: Store) -> None:
    store.put_jobs(
        [job(f"j{i:04d}", status=JobStatus.SUCCEEDED, stopped_at=1) for i in range(1203)]
    )
    store.put_jobs([job("keep")])
    assert len(store.prune_jobs(stopped_before=2)) == 1203
    assert ids(store.list_jobs(JobQuery())) == ["keep"]


# ------------------------------------------------------------------ job events
def test_job_events_come_back_in_the_order_written_per_job(store: Store) -> None:
    store.add_job_events(
        [
            ("a", 10, "SUBMITTED", None),
            ("b", 11, "SUBMITTED", None),
            ("a", 12, "RUNNABLE", None),
            ("a", 12, "STARTING", "placed on n1"),
        ]
    )
    store.add_job_events([("a", 9, "RUNNING", None)])  # order written, not timestamp
    assert store.job_events("a") == [
        (10, "SUBMITTED", None),
        (12, "RUNNABLE", None),
        (12, "STARTING", "placed on n1"),
        (9, "RUNNING", None),
    ]
    assert store.job_events("b") == [(11, "SUBMITTED", None)]
    assert store.job_events("nobody") == []


# --------------------------------------------------------------------- scripts
def test_scripts_store_bytes_exactly(store: Store) -> None:
    data = b"#!/bin/sh\necho \x00\xff\n"
    store.put_script("sha-1", data, "alice")
    assert store.get_script("sha-1", "alice") == data
    assert store.get_script("missing", "alice") is None


def test_putting_a_script_id_again_keeps_the_first_content(store: Store) -> None:
    store.put_script("sha-1", b"one", "alice")
    store.put_script("sha-1", b"two", "alice")
    assert store.get_script("sha-1", "alice") == b"one"


# ---------------------------------------------------------------- transactions
class Boom(Exception):
    pass


def test_transaction_rollback_on_error_leaves_nothing(store: Store) -> None:
    with pytest.raises(Boom), store.transaction():
        store.put_resource("queue", "q", 1, "ENABLED", {})
        store.put_jobs([job("a")])
        store.add_job_events([("a", 1, "SUBMITTED", None)])
        store.put_script("s", b"x", "alice")
        raise Boom
    assert store.get_resource("queue", "q") is None
    assert store.get_job("a") is None
    assert store.job_events("a") == []
    assert store.get_script("s", "alice") is None
    assert list(store.unfinished_jobs()) == []


def test_error_in_a_nested_transaction_rolls_back_the_outer_one(store: Store) -> None:
    with pytest.raises(Boom), store.transaction():
        store.put_jobs([job("outer")])
        with store.transaction():
            store.put_jobs([job("inner")])
            raise Boom
    assert store.get_jobs(["outer", "inner"]) == []


def test_nested_transaction_commits_with_the_outer_one(store: Store, target: str) -> None:
    other = open_store(target)
    try:
        with store.transaction():
            store.put_jobs([job("outer")])
            with store.transaction():
                store.put_jobs([job("inner")])
            # The inner block's end commits nothing: other readers see nothing yet.
            assert other.get_jobs(["outer", "inner"]) == []
        assert ids(other.get_jobs(["outer", "inner"])) == ["outer", "inner"]
    finally:
        other.close()


def test_store_is_usable_after_a_rolled_back_transaction(store: Store) -> None:
    with pytest.raises(Boom), store.transaction():
        store.put_jobs([job("lost")])
        raise Boom
    with store.transaction():
        store.put_jobs([job("kept")])
    assert ids(store.get_jobs(["lost", "kept"])) == ["kept"]


def test_committed_write_survives_the_store_being_dropped_without_close(target: str) -> None:
    first = open_store(target)
    with first.transaction():
        first.put_resource("queue", "q", 1, "ENABLED", {"jobQueueName": "q"})
        first.put_jobs([job("a")])
        first.add_job_events([("a", 1, "SUBMITTED", None)])
        first.put_script("s", b"x", "alice")
    # Still open, never closed: what a fresh process sees after `kill -9` of the head.
    second = open_store(target)
    try:
        assert second.get_resource("queue", "q") == {"jobQueueName": "q"}
        assert ids(second.get_jobs(["a"])) == ["a"]
        assert second.job_events("a") == [(1, "SUBMITTED", None)]
        assert second.get_script("s", "alice") == b"x"
    finally:
        second.close()
    del first
    gc.collect()
    third = open_store(target)
    try:
        assert [j.job_id for _, j in third.unfinished_jobs()] == ["a"]
    finally:
        third.close()


def test_uncommitted_write_is_invisible_to_another_store(target: str) -> None:
    first = open_store(target)
    second = open_store(target)
    try:
        with first.transaction():
            first.put_jobs([job("a")])
            assert second.get_job("a") is None  # a reader is not blocked by the writer
        assert second.get_job("a") is not None
    finally:
        first.close()
        second.close()


def schema_of(target: str) -> list[tuple[Any, ...]]:
    """Every table, column, index and applied migration of the store at ``target``."""
    if not target.startswith("postgresql"):
        with sqlite3.connect(target) as db:
            rows = db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
            rows += db.execute("SELECT migration_id FROM _yoyo_migration ORDER BY migration_id").fetchall()
        db.close()
        return rows
    import psycopg

    with psycopg.connect(target) as pgdb:
        return [
            *pgdb.execute("SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
                          "WHERE table_schema = 'public' ORDER BY 1, 2").fetchall(),
            *pgdb.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1").fetchall(),
            *pgdb.execute("SELECT migration_id FROM _yoyo_migration ORDER BY 1").fetchall(),
        ]


def test_opening_an_existing_file_keeps_its_data_and_schema(target: str) -> None:
    s = open_store(target)
    s.put_jobs([job("a")])
    s.close()
    before = schema_of(target)
    s = open_store(target)
    try:
        assert schema_of(target) == before  # opened as it is: nothing created, altered or migrated
        assert s.get_job("a") is not None
        s.put_jobs([job("b")])
        assert [j.job_id for _, j in s.unfinished_jobs()] == ["a", "b"]
    finally:
        s.close()


def test_store_creates_missing_parent_directories(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "a" / "b" / "head.db")
    try:
        assert (tmp_path / "a" / "b" / "head.db").exists()
    finally:
        s.close()


def test_full_durability_mode_opens_and_writes(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "head.db", durability="full")
    try:
        with s.transaction():
            s.put_jobs([job("a")])
        assert s.get_job("a") is not None
    finally:
        s.close()


def test_scripts_are_never_shared_between_owners(store: Store) -> None:
    store.put_script("sha-1", b"alice's", "alice")
    assert store.get_script("sha-1", "bob") is None
    store.put_script("sha-1", b"bob's", "bob")
    assert store.get_script("sha-1", "bob") == b"bob's"
    assert store.get_script("sha-1", "alice") == b"alice's"


def test_node_events_are_pruned_by_age_and_job_events_stay_with_their_job(store: Store) -> None:
    """Node state changes older than the cutoff go (they belonged to no job, so prune_jobs never
    took them and a fleet's event table grew for ever); a kept job's events and newer node
    events stay, and the event ids after them are unchanged."""
    from hpcbatch.store.base import NODE_EVENT_PREFIX

    with store.transaction():
        store.add_job_events([
            (NODE_EVENT_PREFIX + "n1", 100, "DOWN", "lost"),
            ("job-1", 150, "RUNNABLE", None),
            (NODE_EVENT_PREFIX + "n2", 180, "ACTIVE", None),
            (NODE_EVENT_PREFIX + "n1", 300, "ACTIVE", None),
            ("job-1", 350, "RUNNING", None),
        ])
    kept_after = store.events_after(0, 100)[2].event_id
    with store.transaction():
        assert store.prune_node_events(before=200) == 2
    rows = store.events_after(0, 100)
    assert [(r.job_id, r.at) for r in rows] == [("job-1", 150), (NODE_EVENT_PREFIX + "n1", 300), ("job-1", 350)]
    assert rows[1].event_id > kept_after
    with store.transaction():
        assert store.prune_node_events(before=200) == 0  # nothing older left: a second pass is a no-op
        assert store.prune_node_events(before=10_000) == 1
    assert [r.job_id for r in store.events_after(0, 100)] == ["job-1", "job-1"]


def test_audit_entries_are_pruned_by_age(store: Store) -> None:
    with store.transaction():
        store.add_audit([
            {"at": 100, "user": "a", "operation": "SubmitJob", "outcome": "ok"},
            {"at": 300, "user": "b", "operation": "CancelJob", "outcome": "ok"},
        ])
        assert store.prune_audit(before=200) == 1
    assert [e["user"] for e in store.list_audit()] == ["b"]


def test_access_key_secrets_are_sealed_at_rest_and_old_ones_sealed_on_upgrade(target: str, tmp_path: Path) -> None:
    from hpcbatch.auth.keys import SecretBox, SecretsKeyError

    doc = {"access_key_id": "AKIAPLAIN00000000000", "secret_access_key": "p" * 40, "user": "u", "role": "user",
           "status": "Active", "created_at": 1}
    old = open_store(target)  # an hpcbatch from before sealing: the secret in the clear
    with old.transaction():
        old.put_access_key(doc["access_key_id"], doc)
    old.close()
    box = SecretBox.load(tmp_path / "keys" / "secrets.key")
    s = open_store(target, sealer=box)
    try:
        assert s.get_access_key(doc["access_key_id"]) == doc  # read as it was, before the upgrade
        with s.transaction():
            assert s.seal_access_keys() == 1
            assert s.seal_access_keys() == 0
            s.put_access_key("AKIANEW0000000000000", {**doc, "access_key_id": "AKIANEW0000000000000"})
        assert s.get_access_key(doc["access_key_id"]) == doc
        assert [k["secret_access_key"] for k in s.list_access_keys()] == ["p" * 40] * 2
    finally:
        s.close()
    raw = open_store(target)  # what a dump sees: only sealed values
    try:
        for stored in raw.list_access_keys():
            assert "secret_access_key" not in stored and stored["secret_sealed"].startswith("aesgcm1:")
    finally:
        raw.close()
    other = open_store(target, sealer=SecretBox.load(tmp_path / "other.key"))
    try:
        with pytest.raises(SecretsKeyError, match="does not open with the secrets key file"):
            with other.transaction():
                other.seal_access_keys()
    finally:
        other.close()


# ------------------------------------------------ one job's children (ListJobs)
def test_an_arrays_children_come_in_index_order_without_their_nodes(store: Store) -> None:
    store.put_jobs([job("p", created_at=1)])
    # Placed out of order and at different times; p:3 is itself a multi-node job with nodes.
    store.put_jobs([job(f"p:{i}", created_at=100 - i, array_parent="p", array_index=i) for i in (10, 2, 0, 3, 1)])
    store.put_jobs([job("p:3#0", parent_id="p:3", node_index=0), job("px:1"), job("q:1")])
    assert ids(store.list_jobs(JobQuery(array_job="p", limit=100))) == ["p:0", "p:1", "p:2", "p:3", "p:10"]
    assert ids(store.list_jobs(JobQuery(multi_node_job="p:3", limit=100))) == ["p:3#0"]


def test_children_listing_filters_by_status_and_matches_the_parent_id_literally(store: Store) -> None:
    store.put_jobs([
        job("a_b", status=JobStatus.RUNNING),
        *[job(f"a_b#{i}", parent_id="a_b", node_index=i, status=JobStatus.RUNNING) for i in range(12)],
        job("axb#0", parent_id="axb", node_index=0),  # '_' is a wildcard in LIKE: must not match
    ])  # fmt: skip
    store.put_jobs([job("a_b#11", parent_id="a_b", node_index=11, status=JobStatus.SUCCEEDED)])
    every = store.list_jobs(JobQuery(multi_node_job="a_b", limit=100))
    assert ids(every) == [f"a_b#{i}" for i in range(12)]
    done = JobQuery(multi_node_job="a_b", statuses=(JobStatus.SUCCEEDED,), limit=100)
    assert ids(store.list_jobs(done)) == ["a_b#11"]
    assert ids(store.list_jobs(JobQuery(multi_node_job="a_b", limit=3))) == ["a_b#0", "a_b#1", "a_b#2"]


# -------------------------------------------------- where the dialects drifted
def test_names_are_listed_in_byte_order_whatever_the_databases_collation(
    target: str, request: pytest.FixtureRequest
) -> None:
    """SQLite orders text by its bytes; PostgreSQL by the database's collation, which on most
    servers is a language's (en_US: a, A, b, B). Both must list resources alike: bytes."""
    if target.startswith("postgresql"):
        import psycopg

        server: pg.PostgresServer = request.getfixturevalue("postgres")
        name = f"store_icu_{secrets.token_hex(4)}"
        target = server.url(name)
        with psycopg.connect(server.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}" LOCALE_PROVIDER icu ICU_LOCALE \'en-US\' '
                       "LOCALE 'C.UTF-8' TEMPLATE template0")
    s = open_store(target)
    try:
        for name in ["b", "B", "a", "A", "a-b", "ab"]:
            s.put_resource("queue", name, 1, "VALID", {"jobQueueName": name})
            s.put_access_key(f"K{name}", {"access_key_id": f"K{name}"})
        by_bytes = ["A", "B", "a", "a-b", "ab", "b"]
        assert [d["jobQueueName"] for d in s.list_resources("queue")] == by_bytes
        assert [k["access_key_id"] for k in s.list_access_keys()] == [f"K{n}" for n in by_bytes]
    finally:
        s.close()


def test_a_script_the_store_cannot_keep_is_an_error_never_silently_dropped(store: Store) -> None:
    # SQLite's INSERT OR IGNORE skipped a NOT NULL violation without a word; PostgreSQL's
    # ON CONFLICT DO NOTHING raised. Only a script already stored may be kept as it is.
    with pytest.raises(Exception, match="(?i)not.null|null value"), store.transaction():
        store.put_script("s", None, "alice")  # type: ignore[arg-type]
    assert store.get_script("s", "alice") is None


def test_a_transaction_whose_commit_fails_leaves_nothing_and_the_store_usable(store: Store) -> None:
    # A constraint checked only at COMMIT (deferred; in a scratch table of this session) makes
    # the COMMIT itself fail. PostgreSQL ends the transaction then; SQLite keeps it open, and
    # the SQLite store used to leave it so: every later transaction failed to begin.
    sql = store._execute  # type: ignore[attr-defined]  # noqa: SLF001
    sql("CREATE TEMP TABLE scratch_parent (id INTEGER PRIMARY KEY)")
    sql("CREATE TEMP TABLE scratch_child (parent INTEGER REFERENCES scratch_parent (id) DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(Exception, match="(?i)foreign key"), store.transaction():
        store.put_jobs([job("lost")])
        sql("INSERT INTO scratch_child (parent) VALUES (?)", (1,))
    assert store.get_job("lost") is None
    with store.transaction():
        store.put_jobs([job("kept")])
    assert store.get_job("kept") is not None
