"""SQLite (WAL) backend of the store: the embedded default.

Durability: WAL with ``synchronous=NORMAL`` makes a committed transaction survive the
death of the head process (``kill -9``): the commit has reached the WAL file in the OS
before ``transaction()`` returns. (Power loss may drop the last commits; ``durability =
"full"`` in the head config switches to ``synchronous=FULL`` for machines that need it.)
The head is the only writer and calls the store from its event-loop thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

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
from hpcbatch.store.migrate import applied_ids_sqlite, migrate, migration_ids

_encode = msgspec.json.Encoder().encode


def _glob_literal(text: str) -> str:
    """``text`` inside a GLOB pattern: its *, ? and [ match only themselves. GLOB, not LIKE:
    SQLite's LIKE ignores ASCII case, PostgreSQL's (and job ids) do not."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)
_decode_job = msgspec.json.Decoder(JobRecord).decode
_decode_doc = msgspec.json.Decoder(dict[str, Any]).decode

_FINAL = ("SUCCEEDED", "FAILED")


class SqliteStore:
    """The Store interface on one SQLite file."""

    def __init__(self, path: Path, *, durability: str = "normal", sealer: SecretSealer | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.sealer = sealer  # access keys' secrets are sealed with it (hpcbatch.store.base)
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
        self._depth = 0

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
        self._depth = 1
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")
        finally:
            self._depth = 0

    # ---------------------------------------------------------------- resources
    def put_resource(self, kind: str, name: str, revision: int, status: str, doc: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO resources (kind, name, revision, status, doc) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (kind, name, revision) DO UPDATE SET status = excluded.status, doc = excluded.doc",
            (kind, name, revision, status, _encode(doc)),
        )

    def get_resource(self, kind: str, name: str, revision: int = 0) -> dict[str, Any] | None:
        """One resource; revision 0 means the latest."""
        if revision:
            row = self._db.execute(
                "SELECT doc FROM resources WHERE kind = ? AND name = ? AND revision = ?",
                (kind, name, revision),
            ).fetchone()
        else:
            row = self._db.execute(
                "SELECT doc FROM resources WHERE kind = ? AND name = ? ORDER BY revision DESC LIMIT 1",
                (kind, name),
            ).fetchone()
        return _decode_doc(row[0]) if row else None

    def list_resources(self, kind: str, name: str | None = None) -> list[dict[str, Any]]:
        if name is None:
            rows = self._db.execute(
                "SELECT doc FROM resources WHERE kind = ? ORDER BY name, revision", (kind,)
            )
        else:
            rows = self._db.execute(
                "SELECT doc FROM resources WHERE kind = ? AND name = ? ORDER BY revision", (kind, name)
            )
        return [_decode_doc(r[0]) for r in rows]

    def delete_resource(self, kind: str, name: str) -> None:
        self._db.execute("DELETE FROM resources WHERE kind = ? AND name = ?", (kind, name))

    def latest_revision(self, kind: str, name: str) -> int:
        row = self._db.execute(
            "SELECT MAX(revision) FROM resources WHERE kind = ? AND name = ?", (kind, name)
        ).fetchone()
        return int(row[0] or 0)

    # --------------------------------------------------------------------- jobs
    def put_jobs(self, jobs: list[JobRecord]) -> None:
        self._db.executemany(
            "INSERT INTO jobs (job_id, queue, status, name, owner, created_at, stopped_at, doc, "
            "client_token, request_digest, jobdef) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
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
        self._db.executemany(
            "INSERT INTO job_events (job_id, at, status, reason) VALUES (?, ?, ?, ?)", events
        )

    def get_job(self, job_id: str) -> JobRecord | None:
        row = self._db.execute("SELECT doc FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _decode_job(row[0]) if row else None

    def get_jobs(self, job_ids: list[str]) -> list[JobRecord]:
        if not job_ids:
            return []
        marks = ",".join("?" * len(job_ids))
        rows = self._db.execute(f"SELECT doc FROM jobs WHERE job_id IN ({marks})", job_ids)
        by_id = {j.job_id: j for j in (_decode_job(r[0]) for r in rows)}
        return [by_id[i] for i in job_ids if i in by_id]

    def list_jobs(self, query: JobQuery) -> list[JobRecord]:
        where: list[str] = []
        args: list[Any] = []
        if query.queue is not None:
            where.append("queue = ?")
            args.append(query.queue)
        if query.statuses:
            where.append(f"status IN ({','.join('?' * len(query.statuses))})")
            args.extend(s.value for s in query.statuses)
        if query.owner is not None:
            where.append("owner = ?")
            args.append(query.owner)
        if query.name_like is not None:
            # AWS matches JOB_NAME case-insensitively, with an optional trailing '*'.
            if query.name_like.endswith("*"):
                where.append("lower(substr(name, 1, ?)) = lower(?)")
                prefix = query.name_like[:-1]
                args.extend([len(prefix), prefix])
            else:
                where.append("lower(name) = lower(?)")
                args.append(query.name_like)
        if query.job_definition is not None:
            condition, values = jobdef_condition(query.job_definition, "?")
            where.append(condition)
            args.extend(values)
        if query.created_after is not None:
            where.append("created_at >= ?")
            args.append(query.created_after)
        if query.created_before is not None:
            where.append("created_at <= ?")
            args.append(query.created_before)
        if not query.include_children:
            where.append("instr(job_id, '#') = 0 AND instr(job_id, ':') = 0")
        if query.after is not None:
            where.append("(created_at, job_id) < (?, ?)")
            args.extend(query.after)
        sql = "SELECT doc FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, job_id DESC LIMIT ?"
        args.append(query.limit)
        return [_decode_job(r[0]) for r in self._db.execute(sql, args)]

    def job_by_client_token(self, owner: str, token: str) -> JobRecord | None:
        """The job ``owner`` submitted with client token ``token`` (SubmitJob idempotency)."""
        row = self._db.execute(
            "SELECT doc FROM jobs WHERE owner = ? AND client_token = ?", (owner, token)
        ).fetchone()
        return _decode_job(row[0]) if row else None

    def unfinished_jobs(self) -> Iterator[tuple[int, JobRecord]]:
        """(submission sequence, job) for every job not yet final, oldest first."""
        rows = self._db.execute(
            "SELECT rowid, doc FROM jobs WHERE status NOT IN ('SUCCEEDED', 'FAILED') ORDER BY rowid"
        ).fetchall()
        for seq, doc in rows:
            yield int(seq), _decode_job(doc)

    def job_seq(self, job_id: str) -> int:
        """Submission sequence of a job (its FIFO position); 0 if unknown."""
        row = self._db.execute("SELECT rowid FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return int(row[0]) if row else 0

    def count_jobs(self, queue: str, statuses: tuple[JobStatus, ...]) -> int:
        marks = ",".join("?" * len(statuses))
        row = self._db.execute(
            f"SELECT COUNT(*) FROM jobs WHERE queue = ? AND status IN ({marks})",
            [queue, *(s.value for s in statuses)],
        ).fetchone()
        return int(row[0])

    def prune_jobs(self, stopped_before: int) -> list[JobRecord]:
        """Delete finished jobs that stopped before ``stopped_before`` (retention); return them.

        The caller removes what lives outside the database (attempt logs).
        """
        rows = self._db.execute(
            "SELECT doc FROM jobs WHERE stopped_at IS NOT NULL AND stopped_at < ? "
            "AND status IN ('SUCCEEDED', 'FAILED')",
            (stopped_before,),
        ).fetchall()
        pruned = [_decode_job(r[0]) for r in rows]
        ids = [j.job_id for j in pruned]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            self._db.execute(f"DELETE FROM job_events WHERE job_id IN ({marks})", chunk)
            self._db.execute(f"DELETE FROM jobs WHERE job_id IN ({marks})", chunk)
        return pruned

    def job_events(self, job_id: str) -> list[tuple[int, str, str | None]]:
        return [
            (int(at), status, reason)
            for at, status, reason in self._db.execute(
                "SELECT at, status, reason FROM job_events WHERE job_id = ? ORDER BY id", (job_id,)
            )
        ]

    def events_after(
        self, after: int, limit: int, job_id: str | None = None, queue: str | None = None
    ) -> list[EventRow]:
        """Events with an id above ``after``, oldest first: of one job (with its array and
        node children), of one queue's jobs, or all (nodes included)."""
        sql = (
            "SELECT e.id, e.job_id, e.at, e.status, e.reason, j.queue, j.owner "
            "FROM job_events e LEFT JOIN jobs j ON j.job_id = e.job_id WHERE e.id > ?"
        )
        args: list[Any] = [after]
        if job_id is not None:
            # The job, its array children (id#n) and node children (id:n); the id matches literally.
            sql += " AND (e.job_id = ? OR e.job_id GLOB ? OR e.job_id GLOB ?)"
            args.extend([job_id, _glob_literal(job_id) + "#*", _glob_literal(job_id) + ":*"])
        if queue is not None:
            sql += " AND j.queue = ?"
            args.append(queue)
        sql += " ORDER BY e.id LIMIT ?"
        args.append(limit)
        return [EventRow(int(r[0]), r[1], int(r[2]), r[3], r[4], r[5], r[6]) for r in self._db.execute(sql, args)]

    def last_event_id(self) -> int:
        row = self._db.execute("SELECT MAX(id) FROM job_events").fetchone()
        return int(row[0] or 0)

    def count_jobs_by_queue_status(self) -> dict[tuple[str, str], int]:
        """(queue, status) -> number of jobs, as ListJobs counts them (no array/node children)."""
        rows = self._db.execute(
            "SELECT queue, status, COUNT(*) FROM jobs "
            "WHERE job_id NOT LIKE '%#%' AND job_id NOT LIKE '%:%' GROUP BY queue, status"
        )
        return {(q, s): int(n) for q, s, n in rows}

    # ------------------------------------------------------------------ scripts
    def put_script(self, script_id: str, data: bytes, owner: str) -> None:
        """Store a script for ``owner``; the same text from two users is two scripts."""
        self._db.execute(
            "INSERT OR IGNORE INTO scripts (script_id, owner, data) VALUES (?, ?, ?)",
            (script_id, owner, data),
        )

    # -------------------------------------------------------------- access keys
    def put_access_key(self, access_key_id: str, doc: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO access_keys (access_key_id, doc) VALUES (?, ?) "
            "ON CONFLICT (access_key_id) DO UPDATE SET doc = excluded.doc",
            (access_key_id, _encode(seal_key_doc(self.sealer, access_key_id, doc))),
        )

    def get_access_key(self, access_key_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT doc FROM access_keys WHERE access_key_id = ?", (access_key_id,)).fetchone()
        return open_key_doc(self.sealer, access_key_id, _decode_doc(row[0])) if row else None

    def list_access_keys(self) -> list[dict[str, Any]]:
        return [
            open_key_doc(self.sealer, r[0], _decode_doc(r[1]))
            for r in self._db.execute("SELECT access_key_id, doc FROM access_keys ORDER BY access_key_id")
        ]

    def delete_access_key(self, access_key_id: str) -> bool:
        return self._db.execute("DELETE FROM access_keys WHERE access_key_id = ?", (access_key_id,)).rowcount > 0

    def seal_access_keys(self) -> int:
        """Seal the secrets stored in the clear (by an hpcbatch before sealing); check the rest open."""
        if self.sealer is None:
            return 0
        name, plain = SECRETS_CHECK
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (name,)).fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                  (name, self.sealer.seal(name, plain)))
        else:
            self.sealer.open(name, row[0])  # SecretsKeyError: not the key file the store was sealed with
        sealed = 0
        for key_id, raw in self._db.execute("SELECT access_key_id, doc FROM access_keys").fetchall():
            doc = _decode_doc(raw)
            if SEALED_FIELD in doc:
                open_key_doc(self.sealer, key_id, doc)  # SecretsKeyError: another head's key file
            else:
                self.put_access_key(key_id, doc)
                sealed += 1
        return sealed

    # -------------------------------------------------------------------- audit
    def add_audit(self, entries: list[dict[str, Any]]) -> None:
        self._db.executemany(
            "INSERT INTO audit (at, user, operation, target, outcome, doc) VALUES (?, ?, ?, ?, ?, ?)",
            [(e["at"], e["user"], e["operation"], e.get("target"), e["outcome"], _encode(e)) for e in entries],
        )

    def prune_audit(self, before: int) -> int:
        """Delete audit entries older than ``before`` (epoch ms)."""
        return self._db.execute("DELETE FROM audit WHERE at < ?", (before,)).rowcount

    def list_audit(self, limit: int = 100, user: str | None = None, since: int | None = None) -> list[dict[str, Any]]:
        """Newest first."""
        where, args = [], []
        if user is not None:
            where.append("user = ?")
            args.append(user)
        if since is not None:
            where.append("at >= ?")
            args.append(since)
        sql = "SELECT doc FROM audit" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [_decode_doc(r[0]) for r in self._db.execute(sql, args)]

    def get_script(self, script_id: str, owner: str) -> bytes | None:
        """``owner``'s script; None when that user never stored it (scripts are never shared)."""
        row = self._db.execute(
            "SELECT data FROM scripts WHERE script_id = ? AND owner = ?", (script_id, owner)
        ).fetchone()
        return bytes(row[0]) if row else None

    def close(self) -> None:
        self._db.close()
