"""Fixtures that start real head and agent processes; they always tear down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import TestCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    """A shared 2-node cluster for tests that do not break it (module scope keeps the suite fast)."""
    c = TestCluster(tmp_path_factory.mktemp("cluster"), nodes=2)
    try:
        yield c.up()
    finally:
        c.close()


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[TestCluster]:
    """A private cluster for tests that kill or restart its processes; call ``.up()`` yourself."""
    c = TestCluster(tmp_path, nodes=2)
    try:
        yield c
    finally:
        c.close()
