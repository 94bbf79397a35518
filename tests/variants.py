"""Which store backends (and how many heads) the fuzz and chaos suites run against.

Today every suite runs on SQLite with one head. The PostgreSQL backend with active/standby
heads is being built beside this (``TestCluster(store="postgresql", heads=2)``); once the
harness takes those arguments, add ``"postgresql"`` to ``STORES`` and every fixture built
with ``make_cluster`` runs on both, nothing else to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.harness import TestCluster

STORES: tuple[str, ...] = ("sqlite",)


def make_cluster(root: Path, store: str, **options: Any) -> TestCluster:
    """A TestCluster on ``store``: the embedded default, or PostgreSQL with a standby head."""
    if store == "sqlite":
        return TestCluster(root, **options)
    return TestCluster(root, store=store, heads=2, **options)  # type: ignore[call-arg]
