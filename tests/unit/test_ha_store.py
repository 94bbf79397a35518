"""Migrations on both backends, and the head lease with its fencing, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from yoyo import get_backend, read_migrations

from hpcbatch.cli.main import cli
from hpcbatch.client import Client, HeadUnreachableError
from hpcbatch.errors import ClientError
from hpcbatch.head.config import load_head_config
from hpcbatch.head.lease import HeadLease
from hpcbatch.store import migrate, open_store
from hpcbatch.store.postgres import LeaseLost, PostgresStore
from tests.pg import PostgresServer
from tests.unit.test_store import job


def test_a_sqlite_store_made_before_migrations_is_adopted_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "head.db"
    old = sqlite3.connect(path)  # what hpcbatch wrote before yoyo: the tables, no _yoyo_migration
    old.executescript((migrate.MIGRATIONS / "sqlite" / "0001.initial.sql").read_text())
    old.execute("INSERT INTO resources VALUES ('ce', 'old', 1, 'VALID', '{\"keep\": 1}')")
    old.commit()
    old.close()
    store = open_store(str(path))
    try:
        assert store.get_resource("ce", "old") == {"keep": 1}
    finally:
        store.close()
    assert migrate.pending(str(path)) == []


def test_admin_migrate_reports_nothing_to_do_on_a_current_sqlite_store(tmp_path: Path) -> None:
    path = tmp_path / "head.db"
    open_store(str(path)).close()
    result = CliRunner().invoke(cli, ["admin", "migrate", "--store", str(path)])
    assert result.exit_code == 0, result.output
    assert "nothing: the schema is current" in result.output


def test_a_postgresql_store_with_migrations_pending_is_refused_until_admin_migrate(postgres: PostgresServer) -> None:
    url = postgres.create_database("migrate")
    # A store at 0001 only, as an older hpcbatch left it (yoyo applying that one file).
    backend = get_backend(url.replace("postgresql://", "postgresql+psycopg://"), migration_table=migrate.YOYO_TABLE)
    first = read_migrations(str(migrate.MIGRATIONS / "postgresql")).filter(lambda m: m.id == "0001.initial")
    with backend.lock():
        backend.apply_migrations(backend.to_apply(first))
    backend.connection.close()
    with pytest.raises(ClientError, match=r"pending \(0002.head-lease, 0003.jobs-by-queue-status[,)].*hpcbatch admin migrate"):
        open_store(url)
    dry = CliRunner().invoke(cli, ["admin", "migrate", "--dry-run", "--store", url])
    assert "would apply 0002.head-lease" in dry.output, dry.output
    result = CliRunner().invoke(cli, ["admin", "migrate", "--store", url])
    assert result.exit_code == 0 and "applied 0002.head-lease" in result.output, result.output
    open_store(url).close()


def test_a_new_postgresql_database_gets_the_whole_schema_on_first_open(postgres: PostgresServer) -> None:
    url = postgres.create_database("fresh")
    open_store(url).close()
    assert migrate.pending(url) == []


def test_a_standby_takes_the_lapsed_lease_and_the_old_holder_is_fenced(postgres: PostgresServer) -> None:
    url = postgres.create_database("lease")
    old_store = open_store(url)
    assert isinstance(old_store, PostgresStore)

    async def scenario() -> tuple[int, int, str]:
        first = HeadLease(url, "first", "http://a", ttl_s=1.0)
        second = HeadLease(url, "second", "http://b", ttl_s=1.0)
        never = asyncio.Event()
        old_epoch = await first.acquire(never)
        assert old_epoch is not None
        old_store.fence(old_epoch, stall_s=1.0)
        with old_store.transaction():
            old_store.put_jobs([job("before")])
        keeping = asyncio.create_task(first.keep())
        # While the first head renews, the second waits ...
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(second.acquire(never), 2.5)
        keeping.cancel()  # ... the first stops renewing (a paused head) ...
        new_epoch = await asyncio.wait_for(second.acquire(never), 10)  # ... and the lease lapses to the second
        assert new_epoch is not None
        why = await first.keep()  # the first, resumed, learns it at its next renewal
        holder = await second.holder()
        assert holder is not None and holder.head_id == "second"
        for lease in (first, second):
            await lease.close()
        return old_epoch, new_epoch, why

    old_epoch, new_epoch, why = asyncio.run(scenario())
    assert new_epoch == old_epoch + 1
    assert "taken over by head second" in why
    with pytest.raises(LeaseLost, match="taken over"), old_store.transaction():
        old_store.put_jobs([job("after")])
    assert old_store.get_job("after") is None  # the fenced head wrote nothing
    assert old_store.get_job("before") is not None
    old_store.close()


def test_a_client_with_several_endpoints_names_them_all_when_none_answers(tmp_path: Path) -> None:
    endpoints = f"unix:{tmp_path}/a.sock,unix:{tmp_path}/b.sock"
    with Client(endpoints, failover_wait_s=0.5) as client, pytest.raises(HeadUnreachableError) as err:
        client.list_nodes()
    assert "a.sock" in err.value.message and "b.sock" in err.value.message


def test_head_config_takes_a_postgresql_store_and_the_command_line_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "head.toml"
    path.write_text(f'state_dir = "{tmp_path}"\nstore = "postgresql://db/hpcbatch"\n')
    assert load_head_config(path).store_target == "postgresql://db/hpcbatch"
    assert load_head_config(path, store="/srv/h.db").store_target == "/srv/h.db"
    path.write_text(f'state_dir = "{tmp_path}"\n')
    assert load_head_config(path).store_target == str(tmp_path / "hpcbatch.db")  # SQLite by default
    path.write_text(f'state_dir = "{tmp_path}"\nstore = "mysql://db/x"\n')
    with pytest.raises(ClientError, match="store must be a postgresql:// URL"):
        load_head_config(path)


def test_a_standbys_read_only_session_reads_and_postgresql_refuses_its_writes(postgres: PostgresServer) -> None:
    import psycopg

    store = open_store(postgres.create_database("readonly"))
    assert isinstance(store, PostgresStore)
    try:
        with store.transaction():
            store.put_jobs([job("a")])
        store.read_only(True)  # what a standby's head does until it takes the lease
        assert store.get_job("a") is not None and store.last_event_id() == 0
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), store.transaction():
            store.put_jobs([job("b")])
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            store.put_resource("ce", "x", 1, "VALID", {})  # outside a transaction too
        store.read_only(False)  # it took the lease
        with store.transaction():
            store.put_jobs([job("b")])
        assert store.get_job("b") is not None
    finally:
        store.close()
