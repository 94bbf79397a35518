"""Session-wide fixtures: the throwaway PostgreSQL server (tests/pg.py), when a test uses it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import pg, prereq
from tests.prereq import pytest_configure, pytest_runtest_setup  # noqa: F401  (hooks: HPCBATCH_REQUIRE)


@pytest.fixture(scope="session", autouse=True)
def _stop_postgres_at_the_end() -> Iterator[None]:
    """Stop the session's PostgreSQL (started lazily by whatever first needs it)."""
    yield
    pg.stop_shared_server()


@pytest.fixture(scope="session")
def postgres() -> pg.PostgresServer:
    """The session's PostgreSQL server; skips the test where none can run."""
    why = pg.available()
    if why:
        prereq.skip("postgres", why)
    return pg.shared_server()
