"""Versioned schema migrations for both store backends, run by yoyo-migrations.

Each backend has its own folder of numbered SQL files (``migrations/sqlite``,
``migrations/postgresql``) describing the same tables in its dialect; a change to the
schema is a new file in *both* folders with the same number and name (yoyo records each
applied file in ``_yoyo_migration``, so a store is upgraded in place, in order, once).

Who applies them: ``hpcbatch admin migrate --store TARGET`` always; a head on start only
when the store is brand new (an empty database) or embedded (SQLite, one head). A
PostgreSQL store shared by several heads with migrations pending is refused at start, so
an upgraded standby never changes the schema under the active head's feet.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from hpcbatch.errors import ClientError

MIGRATIONS = Path(__file__).parent / "migrations"
YOYO_TABLE = "_yoyo_migration"


def is_postgresql(target: str) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``) URL; anything else is a SQLite path."""
    return target.startswith(("postgresql://", "postgres://"))


def backend_of(target: str) -> str:
    return "postgresql" if is_postgresql(target) else "sqlite"


def migration_ids(backend: str) -> list[str]:
    """Every migration of ``backend``, in the order they apply (file names without .sql)."""
    return sorted(p.stem for p in (MIGRATIONS / backend).glob("*.sql"))


def _yoyo_uri(target: str) -> str:
    if is_postgresql(target):
        # yoyo's "postgresql" scheme means psycopg2; "+psycopg" is psycopg 3, which we use.
        parts = urlsplit(target)
        return urlunsplit(("postgresql+psycopg", *parts[1:]))
    return "sqlite:///" + str(Path(target).resolve())


def applied_ids_sqlite(db: sqlite3.Connection) -> set[str]:
    """Migrations recorded as applied in an open SQLite store (empty for a new file)."""
    try:
        return {row[0] for row in db.execute(f"SELECT migration_id FROM {YOYO_TABLE}")}
    except sqlite3.OperationalError:  # no such table: yoyo never ran here
        return set()


def pending(target: str) -> list[str]:
    """Migrations not yet applied to the store at ``target``, in order."""
    from yoyo import get_backend, read_migrations  # ~0.4 s to import: only when needed

    backend = _connect(target, get_backend)
    try:
        return [m.id for m in backend.to_apply(read_migrations(str(MIGRATIONS / backend_of(target))))]
    finally:
        _close(backend)


def migrate(target: str) -> list[str]:
    """Apply every pending migration to the store at ``target``; return the ids applied."""
    from yoyo import get_backend, read_migrations

    backend = _connect(target, get_backend)
    try:
        migrations = read_migrations(str(MIGRATIONS / backend_of(target)))
        # yoyo's lock: two heads (or an admin and a head) migrating at once take turns.
        with backend.lock(timeout=60):
            todo = backend.to_apply(migrations)
            backend.apply_migrations(todo)
        return [m.id for m in todo]
    finally:
        _close(backend)


def _connect(target: str, get_backend: object) -> object:
    if not is_postgresql(target):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
    try:
        return get_backend(_yoyo_uri(target), migration_table=YOYO_TABLE)  # type: ignore[operator]
    except Exception as exc:  # the driver's own error class varies: say what and where
        raise ClientError(f"store {redact(target)}: cannot open it to migrate: {exc}") from None


def _close(backend: object) -> None:
    connection = getattr(backend, "_connection", None)
    if connection is not None:
        connection.close()


def redact(target: str) -> str:
    """``target`` with any password replaced, for logs and error messages."""
    if not is_postgresql(target):
        return target
    parts = urlsplit(target)
    if parts.password is None:
        return target
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, *parts[2:]))
