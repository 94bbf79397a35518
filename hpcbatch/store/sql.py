"""Every query of the store, once, for both backends: SQLite and PostgreSQL.

Theory of operation: the two backends hold the same tables (hpcbatch/store/migrations) and
agree on almost all of SQL, upserts (``ON CONFLICT ... DO UPDATE SET x = excluded.x``)
included. ``SqlStore`` writes each query once, with ``?`` for its parameters, and asks a
``Dialect`` for the few pieces that differ:

* the driver's parameter marks (sqlite3's ``?``, psycopg's ``%s``, where a literal ``%``
  must be doubled);
* "column is one of these values" (``IN (?, ?, ...)`` against ``= ANY(?)`` with an array);
* "column starts with this text, taken literally and case-sensitively" (SQLite's ``GLOB``,
  PostgreSQL's ``LIKE ... ESCAPE``; SQLite's ``LIKE`` ignores ASCII case);
* the column that keeps a job's submission order (SQLite's ``rowid``, PostgreSQL's ``seq``);
* ordering text by its bytes: SQLite's default, while PostgreSQL orders by the database's
  collation (``en_US.UTF-8`` puts ``a`` before ``B``), so names are ordered ``COLLATE "C"``
  there and both list resources in the same order. (Job ids, UUIDs, order alike in every
  collation: ListJobs keeps its index order.)

A backend (``hpcbatch.store.sqlite``, ``hpcbatch.store.postgres``) is ``SqlStore`` plus its
connection: how a statement runs, how the outermost transaction begins and ends (with the
lease's fencing check on PostgreSQL) and how it closes. Nesting of ``transaction()`` is
here, the same for both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import msgspec

from hpcbatch.model.jobs import JobRecord
from hpcbatch.model.lifecycle import JobStatus
from hpcbatch.store.base import (
    NODE_EVENT_PREFIX,
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

_encode = msgspec.json.Encoder().encode
_decode_job = msgspec.json.Decoder(JobRecord).decode
_decode_doc = msgspec.json.Decoder(dict[str, Any]).decode

DELETE_BATCH = 500  # ids per DELETE: under SQLite's limit on parameters in one statement
# Whole jobs only: multi-node nodes are JOBID#i, array children JOBID:i.
_WHOLE_JOBS = "job_id NOT LIKE '%#%' AND job_id NOT LIKE '%:%'"


class Dialect:
    """What differs between the two SQL dialects; SQLite's by default."""

    name = "sqlite"
    seq_column = "rowid"  # a job's submission order (FIFO): SQLite's own row id

    def sql(self, text: str) -> str:
        """``text`` (parameters marked ``?``) as the driver takes it."""
        return text

    def any_of(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """``column`` equals one of ``values`` (none: nothing matches)."""
        return f"{column} IN ({','.join('?' * len(values))})", list(values)

    def starts_with(self, column: str, prefix: str) -> tuple[str, list[Any]]:
        """``column`` begins with ``prefix``, every character of it literal, case-sensitive."""
        return f"{column} GLOB ?", ["".join(f"[{c}]" if c in "*?[" else c for c in prefix) + "*"]

    def bytewise(self, column: str) -> str:
        """``column`` ordered by its bytes, whatever the database's collation."""
        return column


class PostgresDialect(Dialect):
    """PostgreSQL (psycopg 3): ``%s`` marks, arrays for lists, LIKE with an escape."""

    name = "postgresql"
    seq_column = "seq"  # an identity column (migrations/postgresql/0001)

    def sql(self, text: str) -> str:
        return text.replace("%", "%%").replace("?", "%s")

    def any_of(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?)", [list(values)]

    def starts_with(self, column: str, prefix: str) -> tuple[str, list[Any]]:
        literal = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return f"{column} LIKE ? ESCAPE '\\'", [literal + "%"]

    def bytewise(self, column: str) -> str:
        return f'{column} COLLATE "C"'


SQLITE = Dialect()
POSTGRESQL = PostgresDialect()


class _Where:
    """A WHERE clause built one condition at a time (conditions joined by AND)."""

    def __init__(self) -> None:
        self.conditions: list[str] = []
        self.args: list[Any] = []

    def add(self, condition: str, *args: Any) -> None:
        self.conditions.append(condition)
        self.args.extend(args)

    def add_pair(self, pair: tuple[str, list[Any]]) -> None:
        self.add(pair[0], *pair[1])

    def __str__(self) -> str:
        return " WHERE " + " AND ".join(self.conditions) if self.conditions else ""


def _job_row(j: JobRecord) -> tuple[Any, ...]:
    return (
        j.job_id, j.job_queue, j.status.value, j.job_name, j.owner, j.created_at, j.stopped_at,
        _encode(j), client_token_of(j), j.request_digest, jobdef_column(j),
    )


class SqlStore(ABC):
    """The Store interface (hpcbatch.store.base) in SQL; a backend adds its connection."""

    def __init__(self, dialect: Dialect, sealer: SecretSealer | None) -> None:
        self.dialect = dialect
        self.sealer = sealer  # access keys' secrets are sealed with it (hpcbatch.store.base)
        self._depth = 0  # transaction() nesting: only the outermost begins and commits

    # ------------------------------------------------------------ the backend's part
    @abstractmethod
    def _run(self, sql: str, args: Sequence[Any]) -> Any:
        """Run one statement (already in the driver's marks); its cursor."""

    @abstractmethod
    def _run_many(self, sql: str, rows: list[Sequence[Any]]) -> None:
        """Run one statement once per row (already in the driver's marks)."""

    @abstractmethod
    def _outermost(self) -> AbstractContextManager[None]:
        """Begin a transaction; commit when the block ends well, roll back otherwise."""

    @abstractmethod
    def close(self) -> None: ...

    # ------------------------------------------------------------------- plumbing
    def _execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._run(self.dialect.sql(sql), args)

    def _executemany(self, sql: str, rows: list[Sequence[Any]]) -> None:
        if rows:
            self._run_many(self.dialect.sql(sql), rows)

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
        with self._outermost():
            self._depth = 1
            try:
                yield
            finally:
                self._depth = 0

    # ---------------------------------------------------------------- resources
    def put_resource(self, kind: str, name: str, revision: int, status: str, doc: dict[str, Any]) -> None:
        self._execute(
            "INSERT INTO resources (kind, name, revision, status, doc) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (kind, name, revision) DO UPDATE SET status = excluded.status, doc = excluded.doc",
            (kind, name, revision, status, _encode(doc)),
        )

    def get_resource(self, kind: str, name: str, revision: int = 0) -> dict[str, Any] | None:
        """One resource; revision 0 means the latest."""
        if revision:
            row = self._execute(
                "SELECT doc FROM resources WHERE kind = ? AND name = ? AND revision = ?", (kind, name, revision)
            ).fetchone()
        else:
            row = self._execute(
                "SELECT doc FROM resources WHERE kind = ? AND name = ? ORDER BY revision DESC LIMIT 1", (kind, name)
            ).fetchone()
        return _decode_doc(row[0]) if row else None

    def list_resources(self, kind: str, name: str | None = None) -> list[dict[str, Any]]:
        if name is None:
            by_name = self.dialect.bytewise("name")
            rows = self._execute(f"SELECT doc FROM resources WHERE kind = ? ORDER BY {by_name}, revision", (kind,))
        else:
            rows = self._execute(
                "SELECT doc FROM resources WHERE kind = ? AND name = ? ORDER BY revision", (kind, name)
            )
        return [_decode_doc(r[0]) for r in rows]

    def delete_resource(self, kind: str, name: str) -> None:
        self._execute("DELETE FROM resources WHERE kind = ? AND name = ?", (kind, name))

    def latest_revision(self, kind: str, name: str) -> int:
        row = self._execute("SELECT MAX(revision) FROM resources WHERE kind = ? AND name = ?", (kind, name)).fetchone()
        return int(row[0] or 0) if row else 0

    # --------------------------------------------------------------------- jobs
    def put_jobs(self, jobs: list[JobRecord]) -> None:
        self._executemany(
            "INSERT INTO jobs (job_id, queue, status, name, owner, created_at, stopped_at, doc, "
            "client_token, request_digest, jobdef) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (job_id) DO UPDATE SET status = excluded.status, "
            "stopped_at = excluded.stopped_at, doc = excluded.doc",
            [_job_row(j) for j in jobs],
        )

    def add_job_events(self, events: list[tuple[str, int, str, str | None]]) -> None:
        self._executemany("INSERT INTO job_events (job_id, at, status, reason) VALUES (?, ?, ?, ?)", list(events))

    def get_job(self, job_id: str) -> JobRecord | None:
        row = self._execute("SELECT doc FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _decode_job(row[0]) if row else None

    def get_jobs(self, job_ids: list[str]) -> list[JobRecord]:
        if not job_ids:
            return []
        condition, args = self.dialect.any_of("job_id", job_ids)
        rows = self._execute(f"SELECT doc FROM jobs WHERE {condition}", args)
        by_id = {j.job_id: j for j in (_decode_job(r[0]) for r in rows)}
        return [by_id[i] for i in job_ids if i in by_id]

    def list_jobs(self, query: JobQuery) -> list[JobRecord]:
        where = _Where()
        self._select_jobs(query, where)
        self._select_page(query, where)
        order = "length(job_id), job_id" if query.children_of else "created_at DESC, job_id DESC"
        sql = f"SELECT doc FROM jobs{where} ORDER BY {order} LIMIT ?"
        return [_decode_job(r[0]) for r in self._execute(sql, [*where.args, query.limit])]

    def _select_jobs(self, query: JobQuery, where: _Where) -> None:
        """ListJobs' filters: the columns each one matches."""
        if query.queue is not None:
            where.add("queue = ?", query.queue)
        if query.statuses:
            where.add_pair(self.dialect.any_of("status", [s.value for s in query.statuses]))
        if query.owner is not None:
            where.add("owner = ?", query.owner)
        if query.name_like is not None:
            # AWS matches JOB_NAME case-insensitively, with an optional trailing '*'.
            if query.name_like.endswith("*"):
                prefix = query.name_like[:-1]
                where.add("lower(substr(name, 1, ?)) = lower(?)", len(prefix), prefix)
            else:
                where.add("lower(name) = lower(?)", query.name_like)
        if query.job_definition is not None:
            where.add_pair(jobdef_condition(query.job_definition, "?"))

    def _select_page(self, query: JobQuery, where: _Where) -> None:
        """Which part of the list: a time window, whole jobs or one job's children, past ``after``."""
        if query.created_after is not None:
            where.add("created_at >= ?", query.created_after)
        if query.created_before is not None:
            where.add("created_at <= ?", query.created_before)
        if query.children_of is not None:
            parent, separator = query.children_of
            where.add_pair(self.dialect.starts_with("job_id", parent + separator))
            if separator == ":":  # an array's children, not the nodes of a multi-node child (JOBID:i#n)
                where.add("job_id NOT LIKE '%#%'")
        elif not query.include_children:
            where.add(_WHOLE_JOBS)
        if query.after is not None:
            where.add("(created_at, job_id) < (?, ?)", *query.after)

    def job_by_client_token(self, owner: str, token: str) -> JobRecord | None:
        """The job ``owner`` submitted with client token ``token`` (SubmitJob idempotency)."""
        row = self._execute("SELECT doc FROM jobs WHERE owner = ? AND client_token = ?", (owner, token)).fetchone()
        return _decode_job(row[0]) if row else None

    def unfinished_jobs(self) -> Iterator[tuple[int, JobRecord]]:
        """(submission sequence, job) for every job not yet final, oldest first."""
        seq = self.dialect.seq_column
        rows = self._execute(
            f"SELECT {seq}, doc FROM jobs WHERE status NOT IN ('SUCCEEDED', 'FAILED') ORDER BY {seq}"
        ).fetchall()
        for number, doc in rows:
            yield int(number), _decode_job(doc)

    def job_seq(self, job_id: str) -> int:
        """Submission sequence of a job (its FIFO position); 0 if unknown."""
        row = self._execute(f"SELECT {self.dialect.seq_column} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return int(row[0]) if row else 0

    def count_jobs(self, queue: str, statuses: tuple[JobStatus, ...]) -> int:
        condition, args = self.dialect.any_of("status", [s.value for s in statuses])
        row = self._execute(f"SELECT COUNT(*) FROM jobs WHERE queue = ? AND {condition}", [queue, *args]).fetchone()
        return int(row[0]) if row else 0

    def prune_jobs(self, stopped_before: int) -> list[JobRecord]:
        """Delete finished jobs that stopped before ``stopped_before`` (retention); return them.

        The caller removes what lives outside the database (attempt logs).
        """
        rows = self._execute(
            "SELECT doc FROM jobs WHERE stopped_at IS NOT NULL AND stopped_at < ? "
            "AND status IN ('SUCCEEDED', 'FAILED')",
            (stopped_before,),
        ).fetchall()
        pruned = [_decode_job(r[0]) for r in rows]
        ids = [j.job_id for j in pruned]
        for start in range(0, len(ids), DELETE_BATCH):
            condition, args = self.dialect.any_of("job_id", ids[start : start + DELETE_BATCH])
            self._execute(f"DELETE FROM job_events WHERE {condition}", args)
            self._execute(f"DELETE FROM jobs WHERE {condition}", args)
        return pruned

    def prune_node_events(self, before: int) -> int:
        """Delete node state changes (``NODE_EVENT_PREFIX`` rows) recorded before ``before``.

        Row ids grow with time, so the first row at or after ``before`` bounds what may go: the
        delete reads only ids below it, where after the first prune little is left but the
        events of jobs still kept (no index on ``at`` is needed, none is scanned whole).
        """
        row = self._execute("SELECT id FROM job_events WHERE at >= ? ORDER BY id LIMIT 1", (before,)).fetchone()
        bound = int(row[0]) if row else self.last_event_id() + 1
        pattern = NODE_EVENT_PREFIX + "%"
        return int(self._execute("DELETE FROM job_events WHERE id < ? AND at < ? AND job_id LIKE ?",
                                 (bound, before, pattern)).rowcount)

    def job_events(self, job_id: str) -> list[tuple[int, str, str | None]]:
        rows = self._execute("SELECT at, status, reason FROM job_events WHERE job_id = ? ORDER BY id", (job_id,))
        return [(int(at), status, reason) for at, status, reason in rows]

    def events_after(
        self, after: int, limit: int, job_id: str | None = None, queue: str | None = None
    ) -> list[EventRow]:
        """Events with an id above ``after``, oldest first: of one job (with its array and
        node children), of one queue's jobs, or all (nodes included)."""
        where = _Where()
        where.add("e.id > ?", after)
        if job_id is not None:
            # The job, its array children (id:n) and node children (id#n); the id matches literally.
            arrays, array_args = self.dialect.starts_with("e.job_id", job_id + ":")
            nodes, node_args = self.dialect.starts_with("e.job_id", job_id + "#")
            where.add(f"(e.job_id = ? OR {arrays} OR {nodes})", job_id, *array_args, *node_args)
        if queue is not None:
            where.add("j.queue = ?", queue)
        sql = (
            "SELECT e.id, e.job_id, e.at, e.status, e.reason, j.queue, j.owner "
            f"FROM job_events e LEFT JOIN jobs j ON j.job_id = e.job_id{where} ORDER BY e.id LIMIT ?"
        )
        rows = self._execute(sql, [*where.args, limit])
        return [EventRow(int(r[0]), r[1], int(r[2]), r[3], r[4], r[5], r[6]) for r in rows]

    def last_event_id(self) -> int:
        row = self._execute("SELECT MAX(id) FROM job_events").fetchone()
        return int(row[0] or 0) if row else 0

    def count_jobs_by_queue_status(self) -> dict[tuple[str, str], int]:
        """(queue, status) -> number of jobs, as ListJobs counts them (no array/node children)."""
        rows = self._execute(f"SELECT queue, status, COUNT(*) FROM jobs WHERE {_WHOLE_JOBS} GROUP BY queue, status")
        return {(q, s): int(n) for q, s, n in rows}

    # ------------------------------------------------------------------ scripts
    def put_script(self, script_id: str, data: bytes, owner: str) -> None:
        """Store a script for ``owner``; the same text from two users is two scripts."""
        self._execute(
            "INSERT INTO scripts (script_id, owner, data) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (script_id, owner, data),
        )

    def get_script(self, script_id: str, owner: str) -> bytes | None:
        """``owner``'s script; None when that user never stored it (scripts are never shared)."""
        row = self._execute("SELECT data FROM scripts WHERE script_id = ? AND owner = ?", (script_id, owner)).fetchone()
        return bytes(row[0]) if row else None

    # -------------------------------------------------------------- access keys
    def put_access_key(self, access_key_id: str, doc: dict[str, Any]) -> None:
        self._execute(
            "INSERT INTO access_keys (access_key_id, doc) VALUES (?, ?) "
            "ON CONFLICT (access_key_id) DO UPDATE SET doc = excluded.doc",
            (access_key_id, _encode(seal_key_doc(self.sealer, access_key_id, doc))),
        )

    def get_access_key(self, access_key_id: str) -> dict[str, Any] | None:
        row = self._execute("SELECT doc FROM access_keys WHERE access_key_id = ?", (access_key_id,)).fetchone()
        return open_key_doc(self.sealer, access_key_id, _decode_doc(row[0])) if row else None

    def list_access_keys(self) -> list[dict[str, Any]]:
        by_id = self.dialect.bytewise("access_key_id")
        rows = self._execute(f"SELECT access_key_id, doc FROM access_keys ORDER BY {by_id}")
        return [open_key_doc(self.sealer, r[0], _decode_doc(r[1])) for r in rows]

    def delete_access_key(self, access_key_id: str) -> bool:
        return self._execute("DELETE FROM access_keys WHERE access_key_id = ?", (access_key_id,)).rowcount > 0

    def seal_access_keys(self) -> int:
        """Seal the secrets stored in the clear (by an hpcbatch before sealing); check the rest open."""
        if self.sealer is None:
            return 0
        name, plain = SECRETS_CHECK
        row = self._execute("SELECT value FROM meta WHERE key = ?", (name,)).fetchone()
        if row is None:
            self._execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                (name, self.sealer.seal(name, plain)),
            )
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
        self._executemany(
            'INSERT INTO audit (at, "user", operation, target, outcome, doc) VALUES (?, ?, ?, ?, ?, ?)',
            [(e["at"], e["user"], e["operation"], e.get("target"), e["outcome"], _encode(e)) for e in entries],
        )

    def prune_audit(self, before: int) -> int:
        """Delete audit entries older than ``before`` (epoch ms)."""
        return int(self._execute("DELETE FROM audit WHERE at < ?", (before,)).rowcount)

    def list_audit(self, limit: int = 100, user: str | None = None, since: int | None = None) -> list[dict[str, Any]]:
        """Newest first."""
        where = _Where()
        if user is not None:
            where.add('"user" = ?', user)
        if since is not None:
            where.add("at >= ?", since)
        rows = self._execute(f"SELECT doc FROM audit{where} ORDER BY id DESC LIMIT ?", [*where.args, limit])
        return [_decode_doc(r[0]) for r in rows]
