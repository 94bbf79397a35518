"""State at rest: the head's state directory, store and keys are private, and secrets in the
store are sealed (docs/security.md, "State at rest").

Run as root with real unprivileged users (tests/users.py) against real heads started as
``hpcbatch head`` under umask 022: what a hostile local user tries, and what a database
dump or backup would hand out.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcbatch.client import Client
from hpcbatch.errors import HpcbatchError
from hpcbatch.store import open_store
from tests import pg
from tests.harness import TestCluster
from tests.security.barehead import BareHead
from tests.users import call_as, ensure_users, need_root

ALICE = "hpcb_alice"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """``argv`` run as ``user`` (a real login's uid, gid and groups)."""
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True, timeout=30,
                          check=False)


@pytest.fixture(scope="module")
def users() -> None:
    need_root()
    ensure_users()


@pytest.fixture(scope="module")
def open_root() -> Iterator[Path]:
    """A folder other users can pass through (o+x), outside pytest's: a concurrent pytest run
    sets /tmp/pytest-of-root back to 0700, which would lock them out of our sockets."""
    root = Path(tempfile.mkdtemp(prefix="hpcb-sec-"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def fresh(users: None, open_root: Path) -> Iterator[BareHead]:
    """A head started on a state directory that does not exist yet, under umask 022, with a key issued."""
    root = open_root / "fresh"
    root.mkdir(mode=0o711)
    head = BareHead(root)
    assert head.start(umask=0o022) is None, head.output()
    try:
        head.created = head.call("/hpcbatch/v1/createaccesskey", {"user": "root", "role": "admin"})  # type: ignore[attr-defined]
        yield head
    finally:
        head.stop()


def test_a_fresh_head_under_umask_022_makes_its_state_private(fresh: BareHead) -> None:
    state = fresh.state
    assert mode(state) == 0o700
    for name in ("hpcbatch.db", "hpcbatch.db-wal", "hpcbatch.db-shm", "secrets.key", "curve/head.key_secret"):
        assert mode(state / name) == 0o600, name
    assert mode(state / "logs") == 0o700


def test_an_unprivileged_user_cannot_read_the_state_directory_or_the_database(fresh: BareHead) -> None:
    state = fresh.state
    # She reaches the directory (its parents are open to her) and sees it is closed.
    looked = as_user(ALICE, "stat", "-c", "%a", str(state))
    assert looked.returncode == 0 and looked.stdout.strip() == "700", looked
    for argv in (["ls", str(state)], ["cat", str(state / "hpcbatch.db")], ["cat", str(state / "hpcbatch.db-wal")],
                 ["cat", str(state / "secrets.key")], ["sqlite3", str(state / "hpcbatch.db"), ".dump"]):
        out = as_user(ALICE, *argv)
        assert out.returncode != 0 and fresh.created["secretAccessKey"] not in out.stdout, argv  # type: ignore[attr-defined]
        assert "ermission denied" in out.stderr or "unable to open" in out.stderr, (argv, out.stderr)


def test_a_database_dump_holds_no_secret(fresh: BareHead) -> None:
    secret = fresh.created["secretAccessKey"]  # type: ignore[attr-defined]
    dump = subprocess.run(["sqlite3", str(fresh.state / "hpcbatch.db"), ".dump"], capture_output=True, text=True,
                          check=True).stdout
    assert fresh.created["accessKeyId"] in dump  # type: ignore[attr-defined]
    assert secret not in dump and secret.encode().hex() not in dump
    # The raw files (free pages, the WAL) hold it nowhere either.
    for name in ("hpcbatch.db", "hpcbatch.db-wal"):
        assert secret.encode() not in (fresh.state / name).read_bytes(), name


def test_the_audit_log_names_who_created_each_key(fresh: BareHead) -> None:
    events = fresh.call("/hpcbatch/v1/listaudit", {"maxResults": 100})["events"]
    created = [e for e in events if e["operation"] == "CreateAccessKey" and e["outcome"] == "ok"]
    assert [(e["user"], e["via"], e["target"]) for e in created] == [
        ("root", "socket", fresh.created["accessKeyId"])  # type: ignore[attr-defined]
    ]
    assert fresh.created["secretAccessKey"] not in json.dumps(events)  # type: ignore[attr-defined]


@pytest.mark.parametrize("wide", ["state directory", "store file", "secrets key file"])
def test_a_head_with_wide_state_refuses_to_start_naming_the_chmod(
    users: None, tmp_path: Path, wide: str
) -> None:
    head = BareHead(tmp_path)
    assert head.start() is None, head.output()
    head.stop()
    path = {"state directory": head.state, "store file": head.state / "hpcbatch.db",
            "secrets key file": head.state / "secrets.key"}[wide]
    path.chmod(0o755 if path.is_dir() else 0o644)
    code = head.start()
    assert code == 3, head.output()
    want = f"run chmod {700 if path.is_dir() else 600} {path}"
    assert want in head.output() and wide in head.output(), head.output()
    assert not head.api_socket.exists()  # it never served


def test_a_head_refuses_a_secrets_key_that_is_not_the_stores(users: None, tmp_path: Path) -> None:
    head = BareHead(tmp_path)
    assert head.start() is None, head.output()
    head.call("/hpcbatch/v1/createaccesskey", {"user": "root", "role": "admin"})
    head.stop()
    (head.state / "secrets.key").unlink()  # lost: a new one would be made, and not open the store
    assert head.start() == 3, head.output()
    assert "does not open with the secrets key file" in head.output(), head.output()


def test_secrets_stored_in_clear_by_an_older_head_are_sealed_on_upgrade(users: None, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    # What hpcbatch wrote before sealing: the secret in the document, in the clear.
    old = open_store(str(state / "hpcbatch.db"))
    doc = {"access_key_id": "AKIAOLDKEY0000000000", "secret_access_key": "s" * 40, "user": "root",
           "role": "admin", "status": "Active", "created_at": 1}
    with old.transaction():
        old.put_access_key(doc["access_key_id"], doc)
    old.close()
    (state / "hpcbatch.db").chmod(0o600)
    head = BareHead(tmp_path, state)
    assert head.start() is None, head.output()
    try:
        dump = subprocess.run(["sqlite3", str(state / "hpcbatch.db"), ".dump access_keys"], capture_output=True,
                              text=True, check=True).stdout
        assert "AKIAOLDKEY0000000000" in dump and ("s" * 40) not in dump
        with Client(head.endpoint, credentials=(doc["access_key_id"], "s" * 40)) as signed:
            assert signed.call("/hpcbatch/v1/whoami", {})["user"] == "root"  # the old key still signs
    finally:
        head.stop()


def test_a_postgresql_dump_holds_no_secret(users: None, tmp_path: Path, postgres: pg.PostgresServer) -> None:
    url = postgres.create_database("atrest", migrated=True)
    head = BareHead(tmp_path, extra=f'store = "{url}"\n')
    assert head.start() is None, head.output()
    try:
        created = head.call("/hpcbatch/v1/createaccesskey", {"user": "root", "role": "admin"})
        dump = subprocess.run([str(pg.PG_BIN / "pg_dump"), "-d", url, "-a", "-t", "access_keys", "-t", "meta"],
                              capture_output=True, text=True, check=True).stdout
        assert created["accessKeyId"] in dump and "aesgcm1:" in dump
        assert created["secretAccessKey"] not in dump
        with Client(head.endpoint, credentials=(created["accessKeyId"], created["secretAccessKey"])) as signed:
            assert signed.call("/hpcbatch/v1/whoami", {})["user"] == "root"
    finally:
        head.stop()


# ---------------------------------------------------------------- the stolen-key chain

@pytest.fixture(scope="module")
def cluster(users: None, open_root: Path) -> Iterator[TestCluster]:
    (open_root / "chain").mkdir(mode=0o711)
    c = TestCluster(open_root / "chain", nodes=1)
    try:
        yield c.up()
    finally:
        c.close()


def test_the_stolen_key_chain_fails(cluster: TestCluster) -> None:
    """Read an admin's secret, issue a key for root with it, run a job as uid 0: every step fails."""
    admin = cluster.client.call("/hpcbatch/v1/createaccesskey", {"user": "root", "role": "admin"})
    db = cluster.root / "head" / "hpcbatch.db"
    # 1. Alice cannot read the store, nor anything in the state directory.
    for path in (db, Path(f"{db}-wal"), cluster.root / "head" / "secrets.key"):
        out = as_user(ALICE, "cat", str(path))
        assert out.returncode != 0 and "ermission denied" in out.stderr, (path, out)
    # 2. Even a copy of the database (a backup that leaked) holds only a sealed value, which signs nothing.
    row = subprocess.run(["sqlite3", str(db), f"SELECT doc FROM access_keys WHERE access_key_id = '{admin['accessKeyId']}'"],
                         capture_output=True, text=True, check=True).stdout
    stored = json.loads(row)
    assert "secret_access_key" not in stored and stored["secret_sealed"].startswith("aesgcm1:")
    with Client(cluster.endpoint, credentials=(admin["accessKeyId"], stored["secret_sealed"])) as stolen, \
            pytest.raises(HpcbatchError, match="(?i)signature"):
        stolen.call("/hpcbatch/v1/whoami", {})
    # 3. Over the socket she is herself, a user: no key for root.
    refused = call_as(ALICE, cluster.socket_endpoint, "/hpcbatch/v1/createaccesskey", {"user": "root", "role": "admin"})
    assert "error" in refused and "needs role admin" in refused["error"], refused
    # 4. What she submits runs as her, never as uid 0.
    job = call_as(ALICE, cluster.socket_endpoint, "/v1/submitjob", {
        "jobName": "who", "jobQueue": "default", "jobDefinition": "hpcbatch-default",
        "containerOverrides": {"command": ["id", "-u"]}})
    done = cluster.wait_status(job["jobId"], "SUCCEEDED", "FAILED")
    assert done["status"] == "SUCCEEDED" and done["owner"] == ALICE
    deadline = time.monotonic() + 10
    while not cluster.logs(job["jobId"]).strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cluster.logs(job["jobId"]).split() == [str(_uid(ALICE))]
    # Nothing of hers appeared among the keys.
    keys = cluster.client.call("/hpcbatch/v1/listaccesskeys", {})["accessKeys"]
    assert [k["access_key_id"] for k in keys] == [admin["accessKeyId"]]
    assert all("secret_access_key" not in k and "secret_sealed" not in k for k in keys)


def _uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


def test_job_output_is_private(cluster: TestCluster) -> None:
    job = cluster.submit(["echo", "private"])
    cluster.wait_status(job, "SUCCEEDED")
    logs = cluster.root / "head" / "logs"
    assert mode(logs) == 0o700
    files = list(logs.iterdir())
    assert files and all(mode(f) == 0o600 for f in files), [(f.name, oct(mode(f))) for f in files]
    assert os.stat(cluster.root / "head").st_mode & 0o077 == 0


def test_a_state_group_may_read_the_state_and_no_one_else(users: None, tmp_path: Path) -> None:
    import grp

    from tests.users import GROUP

    head = BareHead(tmp_path, extra=f'state_group = "{GROUP}"\n')
    assert head.start(umask=0o002) is None, head.output()  # a umask that would leave files group-writable
    try:
        head.call("/hpcbatch/v1/createaccesskey", {"user": "root", "role": "admin"})
        assert mode(head.state) == 0o750 and head.state.stat().st_gid == grp.getgrnam(GROUP).gr_gid
        assert mode(head.state / "logs") == 0o750
        for name in ("hpcbatch.db", "hpcbatch.db-wal", "secrets.key"):
            assert mode(head.state / name) == 0o640, name
    finally:
        head.stop()
    (head.state / "secrets.key").chmod(0o660)  # group-writable: still too wide
    assert head.start() == 3
    assert f"run chmod 640 {head.state / 'secrets.key'}" in head.output(), head.output()
