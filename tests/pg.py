"""A throwaway PostgreSQL server for tests: initdb + pg_ctl on a Unix socket in a temp dir.

One server per test session (``shared_server()``, stopped by the session fixture in
tests/conftest.py, or at exit); a fresh database per test cluster or store
(``create_database()``). No TCP listener: the socket lives in the server's own directory.
As root the server runs as the ``postgres`` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import atexit
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path


def _pg_bin() -> Path:
    """$HPCBATCH_PG_BIN, else Debian's newest /usr/lib/postgresql/<version>/bin."""
    if os.environ.get("HPCBATCH_PG_BIN"):
        return Path(os.environ["HPCBATCH_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
                   if p.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()


def available() -> str | None:
    """None if a test server can run here, else why not (for pytest.skip)."""
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL server binaries not found in {PG_BIN} (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root needs a 'postgres' user to run the server as"
    return None


class PostgresServer:
    """One initdb'd cluster, started with pg_ctl; ``stop`` removes it."""

    def __init__(self, fsync: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hpcbatch-pg-"))
        self.data = self.dir / "data"
        self._template = ""
        self._user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        self._run([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", self._user, "--auth=trust",
                   "-E", "UTF8", "--no-sync"])
        settings = [
            "listen_addresses = ''",
            f"unix_socket_directories = '{self.dir}'",
            "max_connections = 200",
        ]
        if not fsync:  # tests kill heads, not the database: durability on disk is not what they check
            settings += ["fsync = off", "full_page_writes = off"]
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n".join(settings) + "\n")
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "server.log"),
                   "-w", "-t", "60", "start"])
        atexit.register(self.stop)

    def _run(self, argv: list[str]) -> None:
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, timeout=120, cwd="/")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self._user}@/{database}?host={self.dir}"

    def create_database(self, prefix: str = "hpcb", *, migrated: bool = False) -> str:
        """A new database, empty or (``migrated``) with hpcbatch's schema; returns its URL.

        Migrated ones are copies of a template migrated once per server: a file copy in
        PostgreSQL, much cheaper than running every migration for every test.
        """
        import psycopg

        name = f"{prefix}_{secrets.token_hex(4)}"
        template = ""
        if migrated:
            if not self._template:
                from hpcbatch.store import open_store

                with psycopg.connect(self.url(), autocommit=True) as db:
                    db.execute('CREATE DATABASE "hpcb_template"')
                open_store(self.url("hpcb_template")).close()
                self._template = "hpcb_template"
            template = f' TEMPLATE "{self._template}"'
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"{template}')
        return self.url(name)

    def stop(self) -> None:
        if not self.data.exists():
            return
        try:
            self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.dir, ignore_errors=True)


_shared: PostgresServer | None = None


def shared_server() -> PostgresServer:
    """The session's server, started on first use."""
    global _shared
    if _shared is None:
        _shared = PostgresServer()
    return _shared


def stop_shared_server() -> None:
    global _shared
    if _shared is not None:
        _shared.stop()
        _shared = None
