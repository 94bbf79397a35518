"""SQLite (WAL) backend of the store: the embedded default.

The queries are hpcbatch.store.sql's, shared with PostgreSQL; this module is the
connection: its settings, how a statement runs and how a transaction begins and ends.

Durability: WAL with ``synchronous=NORMAL`` makes a committed transaction survive the
death of the head process (``kill -9``): the commit has reached the WAL file in the OS
before ``transaction()`` returns. (Power loss may drop the last commits; ``durability =
"full"`` in the head config switches to ``synchronous=FULL`` for machines that need it.)
The head is the only writer and calls the store from its event-loop thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hpcbatch.store.base import SecretSealer
from hpcbatch.store.migrate import applied_ids_sqlite, migrate, migration_ids
from hpcbatch.store.sql import SQLITE, SqlStore


class SqliteStore(SqlStore):
    """The Store interface on one SQLite file."""

    def __init__(self, path: Path, *, durability: str = "normal", sealer: SecretSealer | None = None) -> None:
        super().__init__(SQLITE, sealer)
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per block.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
        self._db.execute("PRAGMA foreign_keys=ON")
        # A row deleted or rewritten (a secret sealed on upgrade) is zeroed in its page, not left
        # behind in free space; FAST: only in pages written anyway, no extra I/O.
        self._db.execute("PRAGMA secure_delete=FAST")
        # The schema is hpcbatch/store/migrations/sqlite, applied by yoyo (hpcbatch.store.migrate);
        # the embedded store has one head, so it upgrades itself on open.
        if set(migration_ids("sqlite")) - applied_ids_sqlite(self._db):
            migrate(str(path))

    def _run(self, sql: str, args: Sequence[Any]) -> sqlite3.Cursor:
        return self._db.execute(sql, args)

    def _run_many(self, sql: str, rows: list[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)

    @contextmanager
    def _outermost(self) -> Iterator[None]:
        # IMMEDIATE: take the write lock now, so the block never fails half-way on a busy database.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # SQLite may have rolled back already (a failed COMMIT, I/O error)
                self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()
