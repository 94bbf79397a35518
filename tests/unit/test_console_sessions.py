"""Console sessions kept in the head's store (hpcbatch.console.sessions): a head restart, an
upgrade or a failover signs nobody out; the store holds no session id; a session made with
an access key ends with the key; expired ones leave the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcbatch.auth.policy import Caller
from hpcbatch.console.sessions import SESSION_TTL_S, STORE_KIND, Sessions
from hpcbatch.store import Store, open_store

ALICE = Caller(user="alice", role="user", via="console")


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "state" / "head.db")


def test_a_session_outlives_the_head_that_made_it(db: str) -> None:
    before = Sessions(open_store(db))
    session = before.redeem(before.create_link(ALICE))
    assert session is not None
    after = Sessions(open_store(db))  # a restarted (or upgraded) head over the same store
    found = after.get(session.session_id)
    assert found is not None and found.caller == ALICE and found.csrf_ok(session.csrf)
    assert after.get("forged-" + session.session_id) is None


def test_a_forged_cookie_writes_nothing(db: str) -> None:
    """An unknown session id is a read of the store, never a write (a flood of forged cookies
    must not become a flood of transactions)."""
    store = open_store(db)
    sessions = Sessions(store)
    writes = []
    real = store.transaction
    store.transaction = lambda: writes.append(1) or real()  # type: ignore[method-assign]
    assert sessions.get("forged") is None and writes == []


def test_the_store_holds_no_session_id_and_a_sign_out_removes_it(db: str) -> None:
    store = open_store(db)
    sessions = Sessions(store)
    session = sessions.start(ALICE)
    (doc,) = store.list_resources(STORE_KIND)
    assert session.session_id not in repr(doc)  # only its SHA-256: a database reader gets no cookie
    sessions.end(session.session_id)
    assert store.list_resources(STORE_KIND) == []
    assert Sessions(open_store(db)).get(session.session_id) is None


def test_an_expired_session_is_refused_and_leaves_the_store(db: str) -> None:
    store = open_store(db)
    sessions = Sessions(store)
    session = sessions.start(ALICE)
    later = Sessions(store)
    later._now = lambda: session.expires + 1
    assert later.get(session.session_id) is None
    assert store.list_resources(STORE_KIND) == []


def test_sign_ins_sweep_expired_sessions_from_the_store(db: str) -> None:
    store = open_store(db)
    old = Sessions(store)
    for _ in range(3):
        old.start(ALICE)
    now = Sessions(store)
    now._now = lambda: old._now() + SESSION_TTL_S + 1
    for _ in range(64):  # the 64th sign-in sweeps
        now.start(ALICE)
    assert len(store.list_resources(STORE_KIND)) == 64


def _key(store: Store, status: str = "Active") -> str:
    key_id = "AKIACONSOLE000000000"
    with store.transaction():
        store.put_access_key(key_id, {"access_key_id": key_id, "secret_access_key": "s" * 40, "user": "alice",
                                      "role": "user", "status": status, "created_at": 1})
    return key_id


def test_a_session_signed_in_with_a_key_ends_when_the_key_is_deleted_or_inactive(db: str) -> None:
    store = open_store(db)
    key_id = _key(store)
    sessions = Sessions(store)
    session = sessions.start(Caller(user="alice", role="user", via="console", access_key_id=key_id))
    assert sessions.get(session.session_id) is not None
    _key(store, "Inactive")
    assert sessions.get(session.session_id) is None
    _key(store)
    session = sessions.start(Caller(user="alice", role="user", via="console", access_key_id=key_id))
    with store.transaction():
        store.delete_access_key(key_id)
    assert Sessions(store).get(session.session_id) is None
