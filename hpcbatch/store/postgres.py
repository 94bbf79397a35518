"""PostgreSQL backend of the store (psycopg 3): what several heads share for high availability.

The methods mirror ``hpcbatch.store.sqlite`` one for one, in the same order, with the same
SQL where the dialects agree; a new Store method is added to both files (and the
parametrized tests in tests/unit/test_store.py run it on both).

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import psycopg

from hpcbatch.errors import ClientError, ServerError, ServiceUnavailable
from hpcbatch.model.jobs import JobRecord
from hpcbatch.model.lifecycle import JobStatus
from hpcbatch.store.base import (
    SEALED_FIELD,
    SECRETS_CHECK,
    EventRow,
    JobQuery,
    SecretSealer,
    client_token_of,
    jobdef_column,
    jobdef_condition,
    open_key_doc,
    seal_key_doc,
)
from hpcbatch.store.migrate import YOYO_TABLE, migrate, migration_ids, redact

_encode = msgspec.json.Encoder().encode


def _like_literal(text: str) -> str:
    """``text`` inside a LIKE pattern (``ESCAPE '\\'``): its %, _ and \\ match only themselves."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
_decode_job = msgspec.json.Decoder(JobRecord).decode
_decode_doc = msgspec.json.Decoder(dict[str, Any]).decode


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


class PostgresStore:
    """The Store interface on one PostgreSQL database."""

    def __init__(self, url: str, *, sealer: SecretSealer | None = None) -> None:
        self.url = url
        self.sealer = sealer  # access keys' secrets are sealed with it (hpcbatch.store.base)
        # autocommit: a read outside ``transaction()`` is its own short transaction, so no
        # connection sits "idle in transaction" holding a snapshot between head steps.
        self._conn = connect(url)
        _ensure_schema(self._conn, url)
        self._depth = 0
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
    def transaction(self) -> Iterator[None]:
        """Group writes; commit on success, roll back on any error. Nests (inner is a no-op)."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        db = self._db  # live (connected again if it broke) before the transaction begins
        self._depth = 1
        try:
            with self._unreachable_on_connection_loss(), db.transaction():
                if self._epoch is not None:
                    row = self._db.execute("SELECT epoch, holder FROM head_lease WHERE id = 1 FOR SHARE").fetchone()
                    if row is None or row[0] != self._epoch:
                        lost = LeaseLost(
                            f"this head's lease (epoch {self._epoch}) was taken over"
                            + (f" by head {row[1]} (epoch {row[0]})" if row else "")
                            + ": it must not write any more"
                        )
                        if self.on_unusable is not None:
                            self.on_unusable(lost.message)
                        raise lost
                yield
        finally:
            self._depth = 0

    @contextmanager
    def _unreachable_on_connection_loss(self) -> Iterator[None]:
        try:
            yield
        except psycopg.OperationalError as exc:
            self._last_error = _one_line(exc)
            if self._conn.closed:
                self._next_connect = 0.0  # the next call outside a transaction connects at once
            raise DatabaseUnreachable(self._last_error) from None

    def _execute(self, sql: str, args: Any = None) -> psycopg.Cursor[Any]:
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

    # ---------------------------------------------------------------- resources
    def put_resource(self, kind: str, name: str, revision: int, status: str, doc: dict[str, Any]) -> None:
        self._execute(
            "INSERT INTO resources (kind, name, revision, status, doc) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (kind, name, revision) DO UPDATE SET status = excluded.status, doc = excluded.doc",
            (kind, name, revision, status, _encode(doc)),
        )

    def get_resource(self, kind: str, name: str, revision: int = 0) -> dict[str, Any] | None:
        """One resource; revision 0 means the latest."""
        if revision:
            row = self._execute(
                "SELECT doc FROM resources WHERE kind = %s AND name = %s AND revision = %s",
                (kind, name, revision),
            ).fetchone()
        else:
            row = self._execute(
                "SELECT doc FROM resources WHERE kind = %s AND name = %s ORDER BY revision DESC LIMIT 1",
                (kind, name),
            ).fetchone()
        return _decode_doc(row[0]) if row else None

    def list_resources(self, kind: str, name: str | None = None) -> list[dict[str, Any]]:
        if name is None:
            rows = self._execute("SELECT doc FROM resources WHERE kind = %s ORDER BY name, revision", (kind,))
        else:
            rows = self._execute(
                "SELECT doc FROM resources WHERE kind = %s AND name = %s ORDER BY revision", (kind, name)
            )
        return [_decode_doc(r[0]) for r in rows]

    def delete_resource(self, kind: str, name: str) -> None:
        self._execute("DELETE FROM resources WHERE kind = %s AND name = %s", (kind, name))

    def latest_revision(self, kind: str, name: str) -> int:
        row = self._execute(
            "SELECT MAX(revision) FROM resources WHERE kind = %s AND name = %s", (kind, name)
        ).fetchone()
        return int(row[0] or 0) if row else 0

    # --------------------------------------------------------------------- jobs
    def put_jobs(self, jobs: list[JobRecord]) -> None:
        if not jobs:
            return
        with self._db.cursor() as cur:  # executemany pipelines the rows: one round trip
            cur.executemany(
                "INSERT INTO jobs (job_id, queue, status, name, owner, created_at, stopped_at, doc, "
                "client_token, request_digest, jobdef) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (job_id) DO UPDATE SET status = excluded.status, "
                "stopped_at = excluded.stopped_at, doc = excluded.doc",
                [
                    (
                        j.job_id, j.job_queue, j.status.value, j.job_name, j.owner,
                        j.created_at, j.stopped_at, _encode(j),
                        client_token_of(j), j.request_digest, jobdef_column(j),
                    )
                    for j in jobs
                ],
            )

    def add_job_events(self, events: list[tuple[str, int, str, str | None]]) -> None:
        if not events:
            return
        with self._db.cursor() as cur:
            cur.executemany("INSERT INTO job_events (job_id, at, status, reason) VALUES (%s, %s, %s, %s)", events)

    def get_job(self, job_id: str) -> JobRecord | None:
        row = self._execute("SELECT doc FROM jobs WHERE job_id = %s", (job_id,)).fetchone()
        return _decode_job(row[0]) if row else None

    def get_jobs(self, job_ids: list[str]) -> list[JobRecord]:
        if not job_ids:
            return []
        rows = self._execute("SELECT doc FROM jobs WHERE job_id = ANY(%s)", (job_ids,))
        by_id = {j.job_id: j for j in (_decode_job(r[0]) for r in rows)}
        return [by_id[i] for i in job_ids if i in by_id]

    def list_jobs(self, query: JobQuery) -> list[JobRecord]:
        where: list[str] = []
        args: list[Any] = []
        if query.queue is not None:
            where.append("queue = %s")
            args.append(query.queue)
        if query.statuses:
            where.append("status = ANY(%s)")
            args.append([s.value for s in query.statuses])
        if query.owner is not None:
            where.append("owner = %s")
            args.append(query.owner)
        if query.name_like is not None:
            # AWS matches JOB_NAME case-insensitively, with an optional trailing '*'.
            if query.name_like.endswith("*"):
                where.append("lower(substr(name, 1, %s)) = lower(%s)")
                prefix = query.name_like[:-1]
                args.extend([len(prefix), prefix])
            else:
                where.append("lower(name) = lower(%s)")
                args.append(query.name_like)
        if query.job_definition is not None:
            condition, values = jobdef_condition(query.job_definition, "%s")
            where.append(condition)
            args.extend(values)
        if query.created_after is not None:
            where.append("created_at >= %s")
            args.append(query.created_after)
        if query.created_before is not None:
            where.append("created_at <= %s")
            args.append(query.created_before)
        if not query.include_children:
            where.append("strpos(job_id, '#') = 0 AND strpos(job_id, ':') = 0")
        if query.after is not None:
            where.append("(created_at, job_id) < (%s, %s)")
            args.extend(query.after)
        sql = "SELECT doc FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, job_id DESC LIMIT %s"
        args.append(query.limit)
        return [_decode_job(r[0]) for r in self._execute(sql, args)]

    def job_by_client_token(self, owner: str, token: str) -> JobRecord | None:
        """The job ``owner`` submitted with client token ``token`` (SubmitJob idempotency)."""
        row = self._execute(
            "SELECT doc FROM jobs WHERE owner = %s AND client_token = %s", (owner, token)
        ).fetchone()
        return _decode_job(row[0]) if row else None

    def unfinished_jobs(self) -> Iterator[tuple[int, JobRecord]]:
        """(submission sequence, job) for every job not yet final, oldest first."""
        rows = self._execute(
            "SELECT seq, doc FROM jobs WHERE status NOT IN ('SUCCEEDED', 'FAILED') ORDER BY seq"
        ).fetchall()
        for seq, doc in rows:
            yield int(seq), _decode_job(doc)

    def job_seq(self, job_id: str) -> int:
        """Submission sequence of a job (its FIFO position); 0 if unknown."""
        row = self._execute("SELECT seq FROM jobs WHERE job_id = %s", (job_id,)).fetchone()
        return int(row[0]) if row else 0

    def count_jobs(self, queue: str, statuses: tuple[JobStatus, ...]) -> int:
        row = self._execute(
            "SELECT COUNT(*) FROM jobs WHERE queue = %s AND status = ANY(%s)",
            (queue, [s.value for s in statuses]),
        ).fetchone()
        return int(row[0]) if row else 0

    def prune_jobs(self, stopped_before: int) -> list[JobRecord]:
        """Delete finished jobs that stopped before ``stopped_before`` (retention); return them.

        The caller removes what lives outside the database (attempt logs).
        """
        rows = self._execute(
            "SELECT doc FROM jobs WHERE stopped_at IS NOT NULL AND stopped_at < %s "
            "AND status IN ('SUCCEEDED', 'FAILED')",
            (stopped_before,),
        ).fetchall()
        pruned = [_decode_job(r[0]) for r in rows]
        ids = [j.job_id for j in pruned]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            self._execute("DELETE FROM job_events WHERE job_id = ANY(%s)", (chunk,))
            self._execute("DELETE FROM jobs WHERE job_id = ANY(%s)", (chunk,))
        return pruned

    def job_events(self, job_id: str) -> list[tuple[int, str, str | None]]:
        return [
            (int(at), status, reason)
            for at, status, reason in self._execute(
                "SELECT at, status, reason FROM job_events WHERE job_id = %s ORDER BY id", (job_id,)
            )
        ]

    def events_after(
        self, after: int, limit: int, job_id: str | None = None, queue: str | None = None
    ) -> list[EventRow]:
        """Events with an id above ``after``, oldest first: of one job (with its array and
        node children), of one queue's jobs, or all (nodes included)."""
        sql = (
            "SELECT e.id, e.job_id, e.at, e.status, e.reason, j.queue, j.owner "
            "FROM job_events e LEFT JOIN jobs j ON j.job_id = e.job_id WHERE e.id > %s"
        )
        args: list[Any] = [after]
        if job_id is not None:
            # The job, its array children (id#n) and node children (id:n); the id matches literally.
            sql += " AND (e.job_id = %s OR e.job_id LIKE %s ESCAPE '\\' OR e.job_id LIKE %s ESCAPE '\\')"
            args.extend([job_id, _like_literal(job_id) + "#%", _like_literal(job_id) + ":%"])
        if queue is not None:
            sql += " AND j.queue = %s"
            args.append(queue)
        sql += " ORDER BY e.id LIMIT %s"
        args.append(limit)
        return [EventRow(int(r[0]), r[1], int(r[2]), r[3], r[4], r[5], r[6]) for r in self._execute(sql, args)]

    def last_event_id(self) -> int:
        rows = list(self._execute("SELECT MAX(id) FROM job_events", ()))
        return int(rows[0][0] or 0) if rows else 0

    def count_jobs_by_queue_status(self) -> dict[tuple[str, str], int]:
        """(queue, status) -> number of jobs, as ListJobs counts them (no array/node children)."""
        rows = self._execute(
            "SELECT queue, status, COUNT(*) FROM jobs "
            "WHERE job_id NOT LIKE '%%#%%' AND job_id NOT LIKE '%%:%%' GROUP BY queue, status", ()
        )
        return {(q, s): int(n) for q, s, n in rows}

    # ------------------------------------------------------------------ scripts
    def put_script(self, script_id: str, data: bytes, owner: str) -> None:
        """Store a script for ``owner``; the same text from two users is two scripts."""
        self._execute(
            "INSERT INTO scripts (script_id, owner, data) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            (script_id, owner, data),
        )

    # -------------------------------------------------------------- access keys
    def put_access_key(self, access_key_id: str, doc: dict[str, Any]) -> None:
        self._execute(
            "INSERT INTO access_keys (access_key_id, doc) VALUES (%s, %s) "
            "ON CONFLICT (access_key_id) DO UPDATE SET doc = excluded.doc",
            (access_key_id, _encode(seal_key_doc(self.sealer, access_key_id, doc))),
        )

    def get_access_key(self, access_key_id: str) -> dict[str, Any] | None:
        row = self._execute("SELECT doc FROM access_keys WHERE access_key_id = %s", (access_key_id,)).fetchone()
        return open_key_doc(self.sealer, access_key_id, _decode_doc(row[0])) if row else None

    def list_access_keys(self) -> list[dict[str, Any]]:
        return [
            open_key_doc(self.sealer, r[0], _decode_doc(r[1]))
            for r in self._execute("SELECT access_key_id, doc FROM access_keys ORDER BY access_key_id")
        ]

    def delete_access_key(self, access_key_id: str) -> bool:
        return self._execute("DELETE FROM access_keys WHERE access_key_id = %s", (access_key_id,)).rowcount > 0

    def seal_access_keys(self) -> int:
        """Seal the secrets stored in the clear (by an hpcbatch before sealing); check the rest open."""
        if self.sealer is None:
            return 0
        name, plain = SECRETS_CHECK
        row = self._execute("SELECT value FROM meta WHERE key = %s", (name,)).fetchone()
        if row is None:
            self._execute("INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                  (name, self.sealer.seal(name, plain)))
        else:
            self.sealer.open(name, row[0])  # SecretsKeyError: not the key file the store was sealed with
        sealed = 0
        for key_id, raw in self._execute("SELECT access_key_id, doc FROM access_keys").fetchall():
            doc = _decode_doc(raw)
            if SEALED_FIELD in doc:
                open_key_doc(self.sealer, key_id, doc)  # SecretsKeyError: another head's key file
            else:
                self.put_access_key(key_id, doc)
                sealed += 1
        return sealed

    # -------------------------------------------------------------------- audit
    def add_audit(self, entries: list[dict[str, Any]]) -> None:
        if not entries:
            return
        with self._db.cursor() as cur:
            cur.executemany(
                'INSERT INTO audit (at, "user", operation, target, outcome, doc) VALUES (%s, %s, %s, %s, %s, %s)',
                [(e["at"], e["user"], e["operation"], e.get("target"), e["outcome"], _encode(e)) for e in entries],
            )

    def prune_audit(self, before: int) -> int:
        """Delete audit entries older than ``before`` (epoch ms)."""
        return self._execute("DELETE FROM audit WHERE at < %s", (before,)).rowcount

    def list_audit(self, limit: int = 100, user: str | None = None, since: int | None = None) -> list[dict[str, Any]]:
        """Newest first."""
        where, args = [], []
        if user is not None:
            where.append('"user" = %s')
            args.append(user)
        if since is not None:
            where.append("at >= %s")
            args.append(since)
        sql = "SELECT doc FROM audit" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY id DESC LIMIT %s"
        args.append(limit)
        return [_decode_doc(r[0]) for r in self._execute(sql, args)]

    def get_script(self, script_id: str, owner: str) -> bytes | None:
        """``owner``'s script; None when that user never stored it (scripts are never shared)."""
        row = self._execute(
            "SELECT data FROM scripts WHERE script_id = %s AND owner = %s", (script_id, owner)
        ).fetchone()
        return bytes(row[0]) if row else None

    def close(self) -> None:
        self._conn.close()
