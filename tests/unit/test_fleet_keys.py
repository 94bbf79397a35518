"""Enrolling node keys costs O(1) per key (hpcbatch.head.nodekeys): no folder re-read per change."""

from __future__ import annotations

from pathlib import Path

import zmq

from hpcbatch.head.nodekeys import NodeKeyRegistry

N = 100


class CountingRegistry(NodeKeyRegistry):
    """The real registry, counting the key files it reads."""

    reads = 0

    def _read(self, state: str, name: str, ident: tuple[int, int, int]) -> None:
        self.reads += 1
        super()._read(state, name, ident)


def _key() -> str:
    return zmq.curve_keypair()[0].decode()


def test_enrolling_n_nodes_by_hand_reads_each_key_a_bounded_number_of_times(tmp_path: Path) -> None:
    registry = CountingRegistry(tmp_path)
    keys = {f"node{i}": _key() for i in range(N)}
    for name, key in keys.items():
        assert registry.zap_allows(key)
        assert registry.note_unenrolled(name, key) is False  # pending
    for name in keys:
        registry.accept(name)
    assert all(registry.node_for_key(key) == name for name, key in keys.items())
    assert registry.reads <= 3 * N  # a whole-folder re-read per change would be ~N*N/2


def test_pre_seeded_keys_are_read_once_and_an_unchanged_folder_not_at_all(tmp_path: Path) -> None:
    registry = CountingRegistry(tmp_path)
    keys = {f"node{i}": _key() for i in range(N)}
    for name, key in keys.items():
        (tmp_path / "accepted" / name).write_text(key + "\n")
    registry.refresh()
    assert registry.reads == N
    registry.refresh(force=True)
    assert registry.reads == N  # nothing changed: nothing read
    replaced = _key()
    (tmp_path / "accepted" / "node7").write_text(replaced + "\n")  # a hand edit
    registry.refresh(force=True)
    assert registry.reads == N + 1 and registry.node_for_key(replaced) == "node7"


def test_a_key_pre_seeded_after_the_last_scan_is_trusted_at_its_register(tmp_path: Path) -> None:
    now = [0.0]
    registry = NodeKeyRegistry(tmp_path, clock=lambda: now[0])
    key = _key()
    (tmp_path / "accepted" / "late").write_text(key + "\n")
    registry.refresh(hot=True)  # throttled: a handshake right after a scan does not rescan
    assert registry.node_for_key(key) is None
    assert registry.note_unenrolled("late", key) is True  # its own files are read by name
    assert registry.node_for_key(key) == "late"
    assert not (tmp_path / "pending" / "late").exists()
