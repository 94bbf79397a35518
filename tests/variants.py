"""Which store backends (and how many heads) the fuzz, flood and chaos suites run against.

Every fixture built with ``make_cluster`` runs on both: SQLite with one head (the embedded
default), and PostgreSQL with two heads, one active and one standby, so that a head kill
is a failover. Rounds that do not depend on the store (a cut link, a stepped clock) are
parametrized to SQLite alone and run once, to keep CI's time; tests/pg.py skips the PostgreSQL variants
where the server binaries are missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.harness import TestCluster

STORES: tuple[str, ...] = ("sqlite", "postgresql")


def make_cluster(root: Path, store: str, **options: Any) -> TestCluster:
    """A TestCluster on ``store``: the embedded default, or PostgreSQL with a standby head."""
    if store == "sqlite":
        return TestCluster(root, store="sqlite", **options)
    return TestCluster(root, store=store, heads=2, **options)


def active_http_port(cluster: TestCluster) -> int:
    """The TCP API port of the active head (a standby answers 503 StandbyHeadException)."""
    return int(cluster.heads[cluster.active_head()]["http_port"])


def active_socket(cluster: TestCluster) -> str:
    """The Unix socket path of the active head (after a failover, not necessarily ``head``)."""
    return str(cluster.heads[cluster.active_head()]["api_socket"])
