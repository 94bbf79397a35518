"""A restart of the heads' PostgreSQL costs no running job, no head, no acknowledged write.

Real heads (two: active and standby), agents and PostgreSQL (tests/pg.py). While the
database server is stopped the heads stay up: the active one keeps answering the agents'
heartbeats and sends no order, every API call that needs the database answers 503 naming
it, and when the server is back the active head re-checks its lease, keeps it, commits
what waited and goes on. The store's own reconnect is checked first, without heads.
(docs/ha.md: the outage budget.)
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcbatch.client import Client
from hpcbatch.errors import HpcbatchError, ServerError
from hpcbatch.head.lease import HeadLease
from hpcbatch.store import open_store
from hpcbatch.store.postgres import DatabaseUnreachable, PostgresStore
from tests import pg
from tests.harness import TestCluster, wait_for
from tests.pg import PostgresServer

# Five of the harness's lease TTLs (2 s) and several node-lost timeouts (0.3 s x 5): the active
# head's lease goes unconfirmed for most of it, and a heartbeat left unanswered would lose
# the nodes. What an outage may last without costing a running job is the agents' fence
# (600 s), which no database outage here approaches; test_head_outage tests that bound.
OUTAGE_S = float(os.environ.get("HPCBATCH_DB_OUTAGE_S", "10"))
UNREACHABLE = "the state database is unreachable ("


def stop_server(server: PostgresServer) -> None:
    """``systemctl stop postgresql``, as a sysadmin's restart begins: every session ends."""
    server._run([str(pg.PG_BIN / "pg_ctl"), "-D", str(server.data), "-m", "fast", "-w", "stop"])  # noqa: SLF001


def start_server(server: PostgresServer) -> None:
    server._run([str(pg.PG_BIN / "pg_ctl"), "-D", str(server.data), "-l", str(server.dir / "server.log"),  # noqa: SLF001
                 "-w", "-t", "60", "start"])


def test_the_store_answers_503_while_the_server_is_down_and_reconnects_with_its_session(
    postgres: PostgresServer,
) -> None:
    store = open_store(postgres.create_database("outage", migrated=True))
    assert isinstance(store, PostgresStore)
    try:
        store.read_only(True)  # a standby's session: it must stay read-only on a new connection
        assert store.list_resources("queue") == []
        stop_server(postgres)
        try:
            with pytest.raises(DatabaseUnreachable, match="the state database is unreachable .*; retry") as caught:
                store.list_resources("queue")
            assert caught.value.http_status == 503 and caught.value.aws_code == "ServerException"
            with pytest.raises(DatabaseUnreachable), store.transaction():
                store.put_jobs([])
            with pytest.raises(DatabaseUnreachable):
                store.ping()
        finally:
            start_server(postgres)
        wait_for(lambda: _answers(store), 10, what="the store to connect again")
        with pytest.raises(Exception, match="read-only transaction"):
            store.put_resource("queue", "q", 1, "VALID", {})
        store.read_only(False)
        with store.transaction():
            store.put_resource("queue", "q", 1, "VALID", {"jobQueueName": "q"})
        assert [d["jobQueueName"] for d in store.list_resources("queue")] == ["q"]
        # Rows written in one batch (put_jobs, job events, audit) find the server gone the same
        # way, even as the first call to: once a bare psycopg error, not the 503.
        stop_server(postgres)
        try:
            with pytest.raises(DatabaseUnreachable, match="; retry"):
                store.add_audit([{"at": 1, "user": "u", "operation": "CreateJobQueue", "outcome": "ok"}])
        finally:
            start_server(postgres)
    finally:
        store.close()


def _answers(store: PostgresStore) -> bool:
    try:
        store.ping()
        return True
    except DatabaseUnreachable:
        return False


@pytest.fixture
def ha(tmp_path: Path, postgres: PostgresServer) -> Iterator[TestCluster]:
    c = TestCluster(tmp_path, nodes=2, store="postgresql", heads=2, node_vcpus=8)
    try:
        yield c.up()
    finally:
        c.close()


class Load:
    """Submits a short marked job every ``every_s`` until stopped; keeps what was acknowledged
    and the messages of what was refused."""

    def __init__(self, c: TestCluster, marks: Path, every_s: float = 0.25) -> None:
        self._client = Client(c.heads["head"]["socket"], timeout=10)
        self._marks = marks
        self._every_s = every_s
        self.acknowledged: list[str] = []
        self.refused: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                job = self._client.submit_job(jobName="load", jobQueue="default", jobDefinition="hpcbatch-default",
                                              containerOverrides={"command": marked(self._marks, 0)})
                self.acknowledged.append(job["jobId"])
            except HpcbatchError as exc:
                self.refused.append(exc.message)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._client.close()


def marked(marks: Path, seconds: float, until: Path | None = None) -> list[str]:
    """A job that appends its attempt to its own marker file, then sleeps (``seconds``, or until
    the file ``until`` exists, for at most ``seconds``): one line per start."""
    mark = f'echo "$AWS_BATCH_JOB_ATTEMPT" >> {marks}/"$AWS_BATCH_JOB_ID"'
    if until is None:
        return ["sh", "-c", f"{mark}; sleep {seconds}"]
    return ["sh", "-c", f"{mark}; end=$(($(date +%s) + {int(seconds)})); "
                        f'while [ ! -e {until} ] && [ "$(date +%s)" -lt "$end" ]; do sleep 0.2; done']


def test_a_database_restart_under_load_costs_no_head_no_running_job_and_no_write(
    ha: TestCluster, postgres: PostgresServer, tmp_path: Path,
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    marks.chmod(0o777)
    release = tmp_path / "release"  # the running jobs run on through the outage until the test is past it
    running = [ha.submit(marked(marks, OUTAGE_S + 60, until=release)) for _ in range(2)]
    for job_id in running:
        ha.wait_status(job_id, "RUNNING")
    epoch = ha.head_client("head").describe_head()["epoch"]
    seen_503: dict[str, str] = {}
    with Load(ha, marks) as load:
        wait_for(lambda: len(load.acknowledged) >= 3, 20, what="submits before the outage")
        stop_server(postgres)
        stopped_at = time.monotonic()
        try:
            while time.monotonic() - stopped_at < OUTAGE_S:
                for head in ("head", "head2"):
                    assert ha.procs[head].poll() is None, f"{head} exited during the database outage"
                    if head not in seen_503:
                        try:
                            with ha.head_client(head) as client:  # queues live in the database only
                                client.describe_job_queues()
                        except ServerError as exc:
                            if UNREACHABLE in exc.message:
                                seen_503[head] = exc.message
                time.sleep(1)
        finally:
            start_server(postgres)
        acknowledged_at_restart = len(load.acknowledged)
        wait_for(lambda: len(load.acknowledged) >= acknowledged_at_restart + 3, 30,
                 what="submits acknowledged again after the restart")
    for job_id in running:  # they ran through the outage and still run
        assert ha.job(job_id)["status"] == "RUNNING", ha.job(job_id)
    release.touch()
    # Both heads answered 503 naming the database, AWS-shaped (ServerError: a 5xx ServerException).
    assert set(seen_503) == {"head", "head2"}, seen_503
    assert all(m.endswith("; retry") for m in seen_503.values()), seen_503
    assert any(UNREACHABLE in m for m in load.refused), load.refused[:3]
    assert all(UNREACHABLE in m for m in load.refused), [m for m in load.refused if UNREACHABLE not in m][:3]
    # No head exited; the active one kept its lease (the same epoch: no failover was needed).
    for head in ("head", "head2"):
        assert ha.procs[head].poll() is None, f"{head} exited after the database outage"
    assert ha.active_head() == "head"
    assert ha.head_client("head").describe_head()["epoch"] == epoch
    # The running jobs ran through it; every acknowledged job ran, exactly once.
    for job_id in running + load.acknowledged:
        job = ha.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=90)
        assert job["status"] == "SUCCEEDED", (job_id, job.get("statusReason"))
        assert len(job["attempts"]) == 1, job["attempts"]
    started = {path.name: path.read_text().split() for path in marks.iterdir()}
    assert set(running + load.acknowledged) <= set(started)
    assert all(lines == ["1"] for lines in started.values()), {j: n for j, n in started.items() if n != ["1"]}
    log = (tmp_path / "head.log").read_text()
    assert "cannot renew the lease" in log and "the state database answers again" in log
    assert " lost: " not in log  # heartbeats were answered throughout: no node was lost


def test_a_standby_takes_the_lease_only_when_its_store_works(postgres: PostgresServer) -> None:
    url = postgres.create_database("lease", migrated=True)

    async def scenario() -> None:
        lease = HeadLease(url, "standby", "http://b", ttl_s=1.0)
        never = asyncio.Event()
        problem: str | None = "store down"
        with pytest.raises(TimeoutError):  # the lease is free, but this head could not use it
            await asyncio.wait_for(lease.acquire(never, usable=lambda: problem), 1.5)
        holder = await lease.holder()
        assert holder is not None and holder.head_id != "standby"
        problem = None
        assert await asyncio.wait_for(lease.acquire(never, usable=lambda: problem), 10) is not None
        assert lease.confirmed()
        await lease.close()

    asyncio.run(scenario())


def test_a_head_started_while_its_database_is_down_waits_for_it(tmp_path: Path, postgres: PostgresServer) -> None:
    c = TestCluster(tmp_path, nodes=0, store="postgresql")
    stop_server(postgres)
    back = threading.Timer(3.0, start_server, args=(postgres,))
    try:
        back.start()
        c.start_head()  # answers once the database is back: it did not exit meanwhile
        assert c.procs["head"].poll() is None
        assert "waiting for the state database to answer" in (tmp_path / "head.log").read_text()
    finally:
        back.join()
        c.close()
