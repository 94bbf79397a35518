"""PostgreSQL backend of the store (psycopg 3): what several heads share for high availability.

The queries are hpcbatch.store.sql's, shared with SQLite (a new Store method is written
there once, and the parametrized tests in tests/unit/test_store.py run it on both); this
module is the connection: reconnecting, the session's settings, fencing and outages.

Durability: a transaction's COMMIT returns once PostgreSQL has flushed it to its WAL
(``synchronous_commit`` on, the server default), so an acknowledged write survives
``kill -9`` of the head, and of the database server too. With a synchronous standby
(docs/ha.md) it also survives losing the database machine.

Fencing: a head that holds the lease (hpcbatch.head.lease) calls ``fence(epoch)``; every
later transaction first reads the lease row ``FOR SHARE`` and refuses to go on (raises
``LeaseLost``, writing nothing) if another head has taken over since. The share lock
also makes a takeover wait for the old head's transaction in flight, so the new head's
recovery sees every write the old head committed, and the old head none after it.

Outages (docs/ha.md): the store's connection survives a restart of the server. A call that
finds it broken raises ``DatabaseUnreachable`` (HTTP 503, "the state database is
unreachable (...); retry"), never a bare error, and the next call outside a transaction
connects again (at most once per ``RECONNECT_EVERY_S``) with this session's settings (the
fence's stall timeout, a standby's read-only mode). A transaction is never carried on over
a new connection: what broke mid-way was rolled back by the server, and the caller retries
the whole of it (the engine does, every second).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from hpcbatch.errors import ClientError, ServerError, ServiceUnavailable
from hpcbatch.store.base import SecretSealer
from hpcbatch.store.migrate import YOYO_TABLE, migrate, migration_ids, redact
from hpcbatch.store.sql import POSTGRESQL, SqlStore

log = logging.getLogger("hpcbatch.store")

RECONNECT_EVERY_S = 1.0  # while the server is away, calls fail at once between connection attempts
RECONNECT_TIMEOUT_S = 3  # a connection attempt waits this long at most (the head's loop waits with it)
# Over TCP, a server that vanished without a word (a black-holed network) is noticed within
# seconds rather than the kernel's minutes: the calls are synchronous, so the head's loop waits
# that long. (libpq ignores these on Unix sockets.)
TCP_SETTINGS: dict[str, Any] = {
    "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
    "tcp_user_timeout": 5000,
}


class LeaseLost(ServerError):
    """Another head took the lease (a newer epoch): this head must stop, having written nothing."""


class DatabaseUnreachable(ServiceUnavailable):
    """The PostgreSQL server cannot be reached now (a restart, the network): nothing was
    written; the caller retries (HTTP 503, which SDKs retry)."""

    def __init__(self, cause: str) -> None:
        super().__init__(f"the state database is unreachable ({cause}); retry")
        self.cause = cause


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def connect(url: str, *, application_name: str = "hpcbatch-head") -> psycopg.Connection[Any]:
    """An autocommit connection to ``url``; a failure is one line naming the store."""
    try:
        return psycopg.connect(url, autocommit=True, application_name=application_name, connect_timeout=10,
                               **TCP_SETTINGS)
    except psycopg.Error as exc:
        raise ClientError(f"store {redact(url)}: cannot connect: {' '.join(str(exc).split())}") from None


def _ensure_schema(db: psycopg.Connection[Any], url: str) -> None:
    """Create the schema in a brand-new database; refuse one with migrations pending.

    Several heads may share this database: upgrading it is an admin's act
    (``hpcbatch admin migrate``), done once, not a side effect of a head starting.
    """
    row = db.execute("SELECT to_regclass(%s)", (YOYO_TABLE,)).fetchone()
    applied = set() if row is None or row[0] is None else {
        r[0] for r in db.execute(f"SELECT migration_id FROM {YOYO_TABLE}")
    }
    missing = [m for m in migration_ids("postgresql") if m not in applied]
    if not missing:
        return
    if not applied:
        migrate(url)
        return
    raise ClientError(
        f"store {redact(url)}: {len(missing)} schema migration(s) pending ({', '.join(missing)}): "
        f"run `hpcbatch admin migrate --store URL` once, then start the heads"
    )


class PostgresStore(SqlStore):
    """The Store interface on one PostgreSQL database."""

    def __init__(self, url: str, *, sealer: SecretSealer | None = None) -> None:
        super().__init__(POSTGRESQL, sealer)
        self.url = url
        # autocommit: a read outside ``transaction()`` is its own short transaction, so no
        # connection sits "idle in transaction" holding a snapshot between head steps.
        self._conn = connect(url)
        _ensure_schema(self._conn, url)
        self._epoch: int | None = None
        self._session: dict[str, str] = {}  # SET name = value: applied again on every new connection
        self._next_connect = 0.0  # monotonic: no connection attempt before this
        self._last_error = "the connection is closed"
        # Called (with why) when this store must not be used any more: another head took
        # the lease. The head stops; its supervisor starts it again, as a standby.
        self.on_unusable: Callable[[str], None] | None = None

    @property
    def _db(self) -> psycopg.Connection[Any]:
        """The live connection: a broken one is replaced, outside a transaction only."""
        if not self._conn.closed:
            return self._conn
        if self._depth:  # never carry a transaction on over a new connection
            raise DatabaseUnreachable(f"the connection broke inside a transaction ({self._last_error})")
        now = time.monotonic()
        if now < self._next_connect:
            raise DatabaseUnreachable(self._last_error)
        self._next_connect = now + RECONNECT_EVERY_S
        try:
            conn = psycopg.connect(self.url, autocommit=True, application_name="hpcbatch-head",
                                   connect_timeout=RECONNECT_TIMEOUT_S, **TCP_SETTINGS)
            for name, value in self._session.items():
                conn.execute(f"SET {name} = {value}")
        except psycopg.Error as exc:
            self._last_error = _one_line(exc)
            # An attempt that waited (a silent network) is tried again less often: the head's
            # loop spends at most a third of its time waiting on it.
            self._next_connect = max(self._next_connect, time.monotonic() + 2 * (time.monotonic() - now))
            raise DatabaseUnreachable(self._last_error) from None
        log.warning("connected to the state database %s again", redact(self.url))
        self._conn = conn
        return conn

    def _set(self, name: str, value: str) -> None:
        """``SET name = value`` on this session, and on every connection that replaces it."""
        self._session[name] = value
        self._execute(f"SET {name} = {value}")

    def ping(self) -> None:
        """Raise DatabaseUnreachable unless the server answers now (connecting again if need be)."""
        self._execute("SELECT 1")

    def fence(self, epoch: int, stall_s: float) -> None:
        """From now on, commit only while the lease's epoch is still ``epoch``.

        ``stall_s``: the server ends this session if it sits inside a transaction that
        long (a paused head), so its share lock on the lease row cannot block a takeover.
        """
        self._epoch = epoch
        self._set("idle_in_transaction_session_timeout", str(max(1, int(stall_s * 1000))))

    def read_only(self, on: bool) -> None:
        """Make this session read-only (a standby's), or writable again: while it is,
        PostgreSQL itself refuses any write through it, whatever the head's code does."""
        self._set("default_transaction_read_only", "on" if on else "off")

    @contextmanager
    def _outermost(self) -> Iterator[None]:
        db = self._db  # live (connected again if it broke) before the transaction begins
        with self._unreachable_on_connection_loss(), db.transaction():
            self._check_lease(db)
            yield

    def _check_lease(self, db: psycopg.Connection[Any]) -> None:
        """Fencing: go on only while this head's epoch is the lease's (share-locked till commit)."""
        if self._epoch is None:
            return
        row = db.execute("SELECT epoch, holder FROM head_lease WHERE id = 1 FOR SHARE").fetchone()
        if row is None or row[0] != self._epoch:
            lost = LeaseLost(
                f"this head's lease (epoch {self._epoch}) was taken over"
                + (f" by head {row[1]} (epoch {row[0]})" if row else "")
                + ": it must not write any more"
            )
            if self.on_unusable is not None:
                self.on_unusable(lost.message)
            raise lost

    @contextmanager
    def _unreachable_on_connection_loss(self) -> Iterator[None]:
        try:
            yield
        except psycopg.OperationalError as exc:
            self._last_error = _one_line(exc)
            if self._conn.closed:
                self._next_connect = 0.0  # the next call outside a transaction connects at once
            raise DatabaseUnreachable(self._last_error) from None

    def _run(self, sql: str, args: Sequence[Any]) -> psycopg.Cursor[Any]:
        try:
            return self._db.execute(sql, args)
        except psycopg.OperationalError as exc:
            self._last_error = _one_line(exc)
            if self._depth or not self._conn.closed:
                raise DatabaseUnreachable(self._last_error) from None
        # The connection just broke (a server restart ends every session): one new try at once.
        self._next_connect = 0.0
        try:
            return self._db.execute(sql, args)
        except psycopg.OperationalError as exc:
            self._last_error = _one_line(exc)
            raise DatabaseUnreachable(self._last_error) from None

    def _run_many(self, sql: str, rows: list[Sequence[Any]]) -> None:
        # Not tried again on a new connection: outside a transaction some rows may be in.
        with self._unreachable_on_connection_loss(), self._db.cursor() as cur:
            cur.executemany(sql, rows)  # pipelined: one round trip for all the rows

    def close(self) -> None:
        self._conn.close()
