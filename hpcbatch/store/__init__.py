"""Durable state behind one interface: SQLite (embedded default) or PostgreSQL (shared, for HA)."""

from pathlib import Path

from hpcbatch.store.base import JobQuery, SecretSealer, Store
from hpcbatch.store.migrate import is_postgresql
from hpcbatch.store.sqlite import SqliteStore

__all__ = ["JobQuery", "SqliteStore", "Store", "is_postgresql", "open_store"]


def open_store(target: str, *, durability: str = "normal", sealer: SecretSealer | None = None) -> Store:
    """The store at ``target``: a ``postgresql://`` URL, or the path of a SQLite file.

    ``sealer``: encrypts access keys' secrets at rest (the head's; hpcbatch.auth.keys.SecretBox).
    """
    if is_postgresql(target):
        from hpcbatch.store.postgres import PostgresStore  # psycopg only where it is used

        return PostgresStore(target, sealer=sealer)
    return SqliteStore(Path(target), durability=durability, sealer=sealer)
