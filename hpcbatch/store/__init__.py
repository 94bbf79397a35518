"""Durable state behind one interface: SQLite (embedded default) or PostgreSQL (shared, for HA)."""

from pathlib import Path

from hpcbatch.store.base import JobQuery, Store
from hpcbatch.store.migrate import is_postgresql
from hpcbatch.store.sqlite import SqliteStore

__all__ = ["JobQuery", "SqliteStore", "Store", "is_postgresql", "open_store"]


def open_store(target: str, *, durability: str = "normal") -> Store:
    """The store at ``target``: a ``postgresql://`` URL, or the path of a SQLite file."""
    if is_postgresql(target):
        from hpcbatch.store.postgres import PostgresStore  # psycopg only where it is used

        return PostgresStore(target)
    return SqliteStore(Path(target), durability=durability)
