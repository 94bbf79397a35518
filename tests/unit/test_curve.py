"""Key files (hpcbatch.curve) and node key enrollment (hpcbatch.head.nodekeys), no daemons."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import zmq

from hpcbatch.curve import (
    CurveKeyError,
    ensure_keypair,
    load_public_key,
    load_secret_key,
    write_keypair,
)
from hpcbatch.errors import ClientError, NotFoundError
from hpcbatch.head.nodekeys import NodeKeyRegistry

# -- key files ---------------------------------------------------------------------------------


def test_a_new_secret_key_file_is_0600_even_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        pair = ensure_keypair(tmp_path / "curve" / "head.key_secret", tmp_path / "curve" / "head.key")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "curve" / "head.key_secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "curve").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "curve" / "head.key").stat().st_mode) == 0o644
    assert zmq.curve_public(pair.secret) == pair.public
    assert (tmp_path / "curve" / "head.key").read_bytes() == pair.public + b"\n"


def test_ensure_keypair_loads_what_it_generated(tmp_path: Path) -> None:
    first = ensure_keypair(tmp_path / "k_secret", tmp_path / "k")
    assert ensure_keypair(tmp_path / "k_secret", tmp_path / "k") == first


def test_a_missing_public_key_is_derived_from_the_secret_one(tmp_path: Path) -> None:
    first = ensure_keypair(tmp_path / "k_secret", tmp_path / "k")
    (tmp_path / "k").unlink()
    assert ensure_keypair(tmp_path / "k_secret", tmp_path / "k") == first
    assert load_public_key(tmp_path / "k") == first.public


def test_a_lost_secret_key_is_not_silently_replaced(tmp_path: Path) -> None:
    ensure_keypair(tmp_path / "k_secret", tmp_path / "k")
    (tmp_path / "k_secret").unlink()
    with pytest.raises(CurveKeyError, match="is missing but its public key"):
        ensure_keypair(tmp_path / "k_secret", tmp_path / "k")


def test_a_public_key_of_another_pair_is_refused(tmp_path: Path) -> None:
    ensure_keypair(tmp_path / "k_secret", tmp_path / "k")
    (tmp_path / "k").write_bytes(zmq.curve_keypair()[0] + b"\n")
    with pytest.raises(CurveKeyError, match="does not belong to secret key file"):
        ensure_keypair(tmp_path / "k_secret", tmp_path / "k")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_secret_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    ensure_keypair(tmp_path / "k_secret", tmp_path / "k")
    os.chmod(tmp_path / "k_secret", mode)
    with pytest.raises(CurveKeyError, match=r"readable by group or others .*chmod 600"):
        load_secret_key(tmp_path / "k_secret")
    with pytest.raises(CurveKeyError, match="readable by group or others"):
        ensure_keypair(tmp_path / "k_secret", tmp_path / "k")


def test_write_keypair_never_overwrites(tmp_path: Path) -> None:
    write_keypair(tmp_path / "k_secret", tmp_path / "k")
    with pytest.raises(CurveKeyError, match="exists already"):
        write_keypair(tmp_path / "k_secret", tmp_path / "k2")


@pytest.mark.parametrize("text", ["", "short", "x" * 41, "#" * 40])
def test_malformed_key_files_are_refused_naming_the_file(tmp_path: Path, text: str) -> None:
    (tmp_path / "k").write_text(text)
    with pytest.raises(CurveKeyError, match=str(tmp_path / "k")):
        load_public_key(tmp_path / "k")


def test_missing_key_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(CurveKeyError, match="public key file .*/nope does not exist"):
        load_public_key(tmp_path / "nope")
    with pytest.raises(CurveKeyError, match="secret key file .*/nope does not exist"):
        load_secret_key(tmp_path / "nope")


# -- the registry ------------------------------------------------------------------------------


def _key() -> str:
    return zmq.curve_keypair()[0].decode()


@pytest.fixture
def registry(tmp_path: Path) -> NodeKeyRegistry:
    return NodeKeyRegistry(tmp_path / "node_keys")


def _state(registry: NodeKeyRegistry, name: str) -> str | None:
    rows = {r["name"]: r for r in registry.list()}
    return rows[name]["state"] if name in rows else None


def test_an_unknown_key_is_filed_as_pending_and_not_trusted(registry: NodeKeyRegistry) -> None:
    key = _key()
    assert registry.zap_allows(key)  # into quarantine: the handshake is how its name is learned
    assert registry.note_unenrolled("node1", key) is False
    assert registry.node_for_key(key) is None
    [row] = registry.list()
    assert row["name"] == "node1" and row["publicKey"] == key and row["state"] == "pending"
    assert row["since"] > 0
    assert (registry.root / "pending" / "node1").read_text().strip() == key


def test_accept_trusts_the_pending_key(registry: NodeKeyRegistry) -> None:
    key = _key()
    registry.note_unenrolled("node1", key)
    registry.accept("node1")
    assert registry.node_for_key(key) == "node1"
    assert _state(registry, "node1") == "accepted"
    assert not (registry.root / "pending" / "node1").exists()
    assert registry.note_unenrolled("node1", key) is True


def test_reject_refuses_the_handshake(registry: NodeKeyRegistry) -> None:
    key = _key()
    registry.note_unenrolled("node1", key)
    registry.reject("node1")
    assert not registry.zap_allows(key)
    assert registry.node_for_key(key) is None
    assert _state(registry, "node1") == "rejected"


def test_revoke_moves_accepted_to_rejected_and_cuts_the_node_off(registry: NodeKeyRegistry) -> None:
    cut: list[str] = []
    registry.on_cut_off = cut.append
    key = _key()
    registry.note_unenrolled("node1", key)
    registry.accept("node1")
    registry.revoke("node1")
    assert cut == ["node1"]
    assert registry.node_for_key(key) is None
    assert not registry.zap_allows(key)
    assert _state(registry, "node1") == "rejected"
    registry.accept("node1")  # a revoked node may be trusted again
    assert registry.node_for_key(key) == "node1"


def test_delete_forgets_and_cuts_off_an_accepted_node(registry: NodeKeyRegistry) -> None:
    cut: list[str] = []
    registry.on_cut_off = cut.append
    key = _key()
    registry.note_unenrolled("node1", key)
    registry.accept("node1")
    registry.delete("node1")
    assert cut == ["node1"] and registry.list() == []
    assert registry.zap_allows(key)  # forgotten, not refused: it may enroll again
    registry.note_unenrolled("node1", key)
    assert _state(registry, "node1") == "pending"


@pytest.mark.parametrize(
    ("setup", "call", "message"),
    [
        ("accepted", "accept", "already accepted"),
        ("accepted", "reject", "use revoke"),
        ("pending", "revoke", "only an accepted key can be revoked"),
        ("rejected", "reject", "already rejected"),
        ("rejected", "revoke", "only an accepted key can be revoked"),
    ],
)
def test_illegal_transitions_are_client_errors(registry: NodeKeyRegistry, setup: str, call: str, message: str) -> None:
    registry.note_unenrolled("node1", _key())
    if setup == "accepted":
        registry.accept("node1")
    elif setup == "rejected":
        registry.reject("node1")
    with pytest.raises(ClientError, match=message):
        getattr(registry, call)("node1")
    assert _state(registry, "node1") == setup


@pytest.mark.parametrize("call", ["accept", "reject", "revoke", "delete"])
def test_unknown_names_are_not_found(registry: NodeKeyRegistry, call: str) -> None:
    with pytest.raises(NotFoundError, match="no key is known for node ghost"):
        getattr(registry, call)("ghost")


def test_another_key_for_an_accepted_name_is_an_impostor(registry: NodeKeyRegistry, caplog: pytest.LogCaptureFixture) -> None:
    real = _key()
    registry.note_unenrolled("node1", real)
    registry.accept("node1")
    impostor = _key()
    assert registry.note_unenrolled("node1", impostor) is False
    assert registry.node_for_key(impostor) is None
    assert registry.node_for_key(real) == "node1"
    assert "possible impostor" in caplog.text
    assert [r["publicKey"] for r in registry.list()] == [real]


def test_a_second_key_for_a_pending_name_does_not_replace_the_first(registry: NodeKeyRegistry) -> None:
    first = _key()
    registry.note_unenrolled("node1", first)
    registry.note_unenrolled("node1", _key())
    registry.accept("node1")
    assert registry.node_for_key(first) == "node1"


def test_auto_accept_trusts_listed_names_on_first_sight(tmp_path: Path) -> None:
    registry = NodeKeyRegistry(tmp_path, auto_accept=["node1"])
    key, other = _key(), _key()
    assert registry.note_unenrolled("node1", key) is True
    assert registry.node_for_key(key) == "node1"
    assert registry.note_unenrolled("node2", other) is False
    assert _state(registry, "node2") == "pending"


def test_a_pre_seeded_key_is_trusted_without_a_restart(registry: NodeKeyRegistry) -> None:
    key = _key()
    (registry.root / "accepted" / "node9").write_text(key + "\n")
    registry.refresh()
    assert registry.node_for_key(key) == "node9"


def test_a_key_removed_from_accepted_by_hand_is_cut_off(registry: NodeKeyRegistry) -> None:
    cut: list[str] = []
    registry.on_cut_off = cut.append
    key = _key()
    registry.note_unenrolled("node1", key)
    registry.accept("node1")
    (registry.root / "accepted" / "node1").unlink()
    registry.refresh()
    assert cut == ["node1"] and registry.node_for_key(key) is None


@pytest.mark.parametrize("name", ["../etc/passwd", ".hidden", "a/b", "", "x" * 300])
def test_names_that_are_not_file_names_are_never_filed(registry: NodeKeyRegistry, name: str) -> None:
    assert registry.note_unenrolled(name, _key()) is False
    assert registry.list() == []


def test_a_malformed_file_is_ignored(registry: NodeKeyRegistry) -> None:
    (registry.root / "accepted" / "node1").write_text("not a key\n")
    registry.refresh()
    assert registry.list() == []


def test_a_name_in_two_states_counts_as_the_more_cautious(registry: NodeKeyRegistry) -> None:
    key = _key()
    for state in ("accepted", "rejected"):
        (registry.root / state / "node1").write_text(key + "\n")
    registry.refresh()
    assert _state(registry, "node1") == "rejected"
    assert registry.node_for_key(key) is None
