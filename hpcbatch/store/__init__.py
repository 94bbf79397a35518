"""Durable state behind one interface, so a PostgreSQL backend can replace SQLite."""

from hpcbatch.store.base import JobQuery, Store
from hpcbatch.store.sqlite import SqliteStore

__all__ = ["JobQuery", "SqliteStore", "Store"]
