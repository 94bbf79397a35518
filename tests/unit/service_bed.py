"""The real BatchService over a real SQLite store, its engine built and never started: the
test bed of the unit tests that call service operations directly (no head process, no HTTP)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from hpcbatch.head.engine import Engine
from hpcbatch.head.logs import LogStore
from hpcbatch.head.service import BatchService
from hpcbatch.store import SqliteStore


def batch_service(tmp_path: Path) -> Iterator[BatchService]:
    """Yield the service (for a fixture: ``yield from batch_service(tmp_path)``); closes its store."""
    store = SqliteStore(tmp_path / "service.db")
    try:
        engine = Engine(store, LogStore(tmp_path / "logs"), send=lambda n, m: None, clock_ms=lambda: 1)
        yield BatchService(store, engine, region="local", account="0")
    finally:
        store.close()
