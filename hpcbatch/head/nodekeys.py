"""Which node keys the head trusts: enrollment as Salt's key acceptance does it.

Layout: ``node_keys_dir/{pending,accepted,rejected}/<NAME>``, each file the node's public
key (Z85 text). A node is trusted exactly while ``accepted/<NAME>`` holds the key it
presents.

Theory of operation:

* The ZAP handler sees a connecting agent's key but not its name (libzmq hands ZAP the
  *server's* routing id, never the client's). So a key the head does not know completes
  the CurveZMQ handshake into *quarantine*: the fleet reads only the node name from its
  ``Register``, files the key under ``pending/<NAME>`` and never answers it or passes
  anything of it on. The agent logs that it waits for enrollment.
* ``accept NAME`` (pending or rejected -> accepted) trusts the key: the quarantined agent's
  next message is served. ``reject NAME`` (pending -> rejected) refuses it;
  ``revoke NAME`` (accepted -> rejected) refuses it *and cuts the node off at once*
  (``on_cut_off``: the fleet forgets it, drops its connection, marks it lost);
  ``delete NAME`` forgets the name in any state (an accepted one is cut off too).
* A rejected key fails the handshake itself (ZAP says 400); every refusal is logged.
* A key that differs from the one accepted (or pending) for a name is never filed: it is
  logged as a possible impostor. A node whose key really changed (state dir wiped) is
  re-enrolled with ``delete NAME`` then ``accept NAME``.
* Names listed in ``auto_accept`` are accepted on first sight (automation, the local
  cluster); a name already rejected stays rejected.

Pre-seeding: automation (Ansible, the local cluster) may drop a node's public key file as
``accepted/<NAME>`` before the node first connects, even while the head runs: a node's
own files are read when it registers under that name (O(1): three paths), and the
directories are rescanned when they change (at most every ``MIN_RESCAN_S``, and every
``RESCAN_S`` regardless), so a key removed from ``accepted/`` by hand is cut off at the next
tick. A rescan reads only the files whose inode, size or time changed; the head's own
transitions update its maps in place. So enrolling N nodes costs O(N), not O(N^2).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from hpcbatch.curve import CurveKeyError, parse_key
from hpcbatch.errors import ClientError, NotFoundError

log = logging.getLogger("hpcbatch.nodekeys")

PENDING, ACCEPTED, REJECTED = "pending", "accepted", "rejected"
STATES = (PENDING, ACCEPTED, REJECTED)
# A node name is a file name here: no path separators, no leading dot.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
MAX_PENDING = 1024  # unknown keys cannot fill the disk: past this, new names are refused
MIN_RESCAN_S = 0.5  # a changed directory is rescanned at most this often (bulk enrolment)
RESCAN_S = 30.0  # and every directory this often even if unchanged (a change in the same mtime tick)


def valid_name(name: str) -> bool:
    return NAME_RE.fullmatch(name) is not None


class NodeKeyRegistry:
    """The node keys in ``root``; see the module docstring. Not thread-safe: one event loop."""

    def __init__(self, root: str | Path, *, auto_accept: Collection[str] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = Path(root)
        self.auto_accept = frozenset(auto_accept)
        self.on_cut_off: Callable[[str], None] | None = None
        self.on_handshake: Callable[[str], None] | None = None  # an accepted node is (re)connecting
        self._clock = clock
        for state in STATES:
            (self.root / state).mkdir(parents=True, exist_ok=True)
        # What the files say: state -> name -> (key, (inode, size, mtime_ns)); valid files only.
        self._files: dict[str, dict[str, tuple[str, tuple[int, int, int]]]] = {s: {} for s in STATES}
        self._keys: dict[str, dict[str, str]] = {s: {} for s in STATES}  # effective: state -> name -> key
        self._since: dict[tuple[str, str], int] = {}
        self._by_key: dict[str, str] = {}  # accepted key -> name
        self._rejected_keys: dict[str, str] = {}  # rejected key -> name
        self._stamp: tuple[int, ...] = (-1, -1, -1)
        self._scanned = -1e18
        self._warned: set[tuple[str, str, str]] = set()
        self.refresh(force=True)

    # ------------------------------------------------------------------ reading
    def _dir_stamp(self) -> tuple[int, ...]:
        stamp = []
        for state in STATES:
            try:
                stamp.append(os.stat(self.root / state).st_mtime_ns)
            except FileNotFoundError:
                (self.root / state).mkdir(parents=True, exist_ok=True)
                stamp.append(0)
        return tuple(stamp)

    def refresh(self, force: bool = False, hot: bool = False) -> None:
        """Rescan the directories that changed (see the module docstring); accepted keys that
        vanished are cut off. ``force``: whatever changed or not; ``hot`` (a handshake, an
        unknown key): not more often than every ``MIN_RESCAN_S``."""
        now = self._clock()
        if hot and now - self._scanned < MIN_RESCAN_S:
            return
        stamp = self._dir_stamp()
        due = force or now - self._scanned >= RESCAN_S
        if stamp == self._stamp and not due:
            return
        old, self._stamp, self._scanned = self._stamp, stamp, now
        changed: set[str] = set()
        for i, state in enumerate(STATES):
            if stamp[i] != old[i] or due:
                changed |= self._scan(state)
        for name in changed:
            self._settle(name)

    def _scan(self, state: str) -> set[str]:
        """Re-list ``state``'s directory; read only new or changed files. Returns the names touched."""
        known = self._files[state]
        seen: set[str] = set()
        changed: set[str] = set()
        with os.scandir(self.root / state) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                if not valid_name(entry.name):
                    self._warn_once(entry.name, state, f"ignoring {state}/{entry.name}: not a valid node name")
                    continue
                seen.add(entry.name)
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    seen.discard(entry.name)
                    continue
                ident = (st.st_ino, st.st_size, st.st_mtime_ns)
                held = known.get(entry.name)
                if held is not None and held[1] == ident:
                    continue
                changed.add(entry.name)
                self._read(state, entry.name, ident)
        for name in set(known) - seen:
            del known[name]
            changed.add(name)
        return changed

    def _read(self, state: str, name: str, ident: tuple[int, int, int]) -> None:
        try:
            with open(self.root / state / name, "rb") as f:
                key = parse_key(f.read(256), f"{state}/{name}").decode()
        except FileNotFoundError:
            self._files[state].pop(name, None)
            return
        except (OSError, CurveKeyError) as exc:
            self._warn_once(name, state, f"ignoring {state}/{name}: {exc}")
            self._files[state].pop(name, None)
            return
        self._files[state][name] = (key, ident)
        self._since[(state, name)] = ident[2] // 1_000_000

    def _reload_name(self, name: str) -> None:
        """Re-read ``name``'s own files (O(1)): what the head does about one node."""
        for state in STATES:
            try:
                st = os.stat(self.root / state / name, follow_symlinks=False)
            except FileNotFoundError:
                self._files[state].pop(name, None)
                continue
            ident = (st.st_ino, st.st_size, st.st_mtime_ns)
            held = self._files[state].get(name)
            if held is None or held[1] != ident:
                self._read(state, name, ident)
        self._settle(name)

    def _settle(self, name: str) -> None:
        """Derive ``name``'s one state from its files (a crash mid-move leaves two: the most
        cautious wins), update the maps, and cut the node off if its accepted key went."""
        before = self._keys[ACCEPTED].get(name)
        effective = next((s for s in (REJECTED, ACCEPTED, PENDING) if name in self._files[s]), None)
        for state in STATES:
            old = self._keys[state].pop(name, None)
            if old is not None:
                if state == ACCEPTED and self._by_key.get(old) == name:
                    del self._by_key[old]
                if state == REJECTED and self._rejected_keys.get(old) == name:
                    del self._rejected_keys[old]
            if name not in self._files[state]:
                self._since.pop((state, name), None)
        if effective is not None:
            key = self._files[effective][name][0]
            self._keys[effective][name] = key
            if effective == ACCEPTED:
                self._by_key[key] = name
            elif effective == REJECTED:
                self._rejected_keys[key] = name
        if before is not None and self._keys[ACCEPTED].get(name) != before:
            self._cut_off(name)

    def state_of(self, name: str) -> str | None:
        for state in STATES:
            if name in self._keys[state]:
                return state
        return None

    def node_for_key(self, key: str) -> str | None:
        """The accepted node presenting ``key``, or None (the fleet's hot path: no disk)."""
        return self._by_key.get(key)

    def list(self) -> list[dict[str, Any]]:
        """Every known name: ``{"name", "publicKey", "state", "since"}`` (since: epoch ms)."""
        self.refresh(force=True)
        rows = [
            {"name": name, "publicKey": key, "state": state, "since": self._since.get((state, name), 0)}
            for state in STATES
            for name, key in self._keys[state].items()
        ]
        return sorted(rows, key=lambda r: r["name"])

    # -------------------------------------------------------------- transitions
    def _require(self, name: str) -> str:
        self._reload_name(name)
        state = self.state_of(name)
        if state is None:
            raise NotFoundError(f"no key is known for node {name}: `hpcbatch nodes keys list` shows them")
        return state

    def _move(self, name: str, src: str | None, dst: str | None, key: str) -> None:
        """Write the destination first, then remove the source (a crash leaves both; the
        more cautious state wins on reading)."""
        if dst is not None:
            path = self.root / dst / name
            tmp = self.root / dst / f".{name}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="ascii") as f:
                f.write(key + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        if src is not None and src != dst:
            try:
                os.unlink(self.root / src / name)
            except FileNotFoundError:
                pass
        self._reload_name(name)  # this name's files only: O(1) per transition

    def accept(self, name: str) -> None:
        """pending or rejected -> accepted: the key is trusted from the next message on."""
        state = self._require(name)
        if state == ACCEPTED:
            raise ClientError(f"node key {name} is already accepted")
        self._move(name, state, ACCEPTED, self._keys[state][name])
        log.info("node key %s accepted (was %s)", name, state)

    def reject(self, name: str) -> None:
        """pending -> rejected: the key's handshakes fail from now on."""
        state = self._require(name)
        if state == ACCEPTED:
            raise ClientError(f"node key {name} is accepted: use revoke to cut the node off")
        if state == REJECTED:
            raise ClientError(f"node key {name} is already rejected")
        self._move(name, state, REJECTED, self._keys[state][name])
        log.info("node key %s rejected", name)

    def revoke(self, name: str) -> None:
        """accepted -> rejected, and the node is cut off at once."""
        state = self._require(name)
        if state != ACCEPTED:
            raise ClientError(f"node key {name} is {state}, not accepted: only an accepted key can be revoked")
        self._move(name, state, REJECTED, self._keys[state][name])
        log.warning("node key %s revoked: node cut off", name)

    def delete(self, name: str) -> None:
        """Forget ``name`` in any state (an accepted node is cut off); it may enroll again."""
        state = self._require(name)
        self._move(name, state, None, self._keys[state][name])
        log.info("node key %s deleted (was %s)", name, state)

    def _cut_off(self, name: str) -> None:
        if self.on_cut_off is not None:
            self.on_cut_off(name)

    # ------------------------------------------------------------ the handshake
    def zap_allows(self, key: str) -> bool:
        """ZAP's question: may this key complete the handshake? Only rejected keys may not."""
        self.refresh(hot=True)
        name = self._rejected_keys.get(key)
        if name is None:
            known = self._by_key.get(key)
            if known is not None and self.on_handshake is not None:
                self.on_handshake(known)  # alive: a reconnect storm's nodes are not silent
            return True
        log.warning("refused node %s (key %s): its key is rejected", name, key)
        return False

    def note_unenrolled(self, name: str, key: str) -> bool:
        """A quarantined agent says it is ``name``: file its key; True if now accepted."""
        if valid_name(name):
            self._reload_name(name)  # pre-seeded since the last scan: three paths, not the folder
        if key in self._by_key:  # accepted since (by hand, or pre-seeded)
            return self._by_key[key] == name
        if not valid_name(name):
            self._warn_once(name[:64], key, f"refused a node calling itself {name[:64]!r} (key {key}): not a valid node name")
            return False
        state = self.state_of(name)
        if state is None:
            if name in self.auto_accept:
                self._move(name, None, ACCEPTED, key)
                log.info("node key %s accepted on first sight (auto_accept_nodes)", name)
                return True
            if len(self._keys[PENDING]) >= MAX_PENDING:
                self._warn_once(name, key, f"refused node {name} (key {key}): {MAX_PENDING} keys are pending already")
                return False
            self._move(name, None, PENDING, key)
            log.warning(
                "node %s (key %s) is not enrolled: its key is pending; run `hpcbatch nodes keys accept %s`",
                name, key, name,
            )
            return False
        held = self._keys[state][name]
        if held == key:
            if state == PENDING:
                self._warn_once(name, key, f"refused node {name} (key {key}): its key is pending acceptance")
            else:
                self._warn_once(name, key, f"refused node {name} (key {key}): its key is {state}")
        elif state == REJECTED:
            self._warn_once(name, key, f"refused node {name} (key {key}): the name is rejected")
        else:
            self._warn_once(
                name, key,
                f"refused node {name} presenting key {key}: the {state} key for {name} is {held}: "
                "possible impostor (if the node's key really changed: delete, then accept it)",
            )
        return False

    def _warn_once(self, name: str, key: str, message: str) -> None:
        """Quarantined agents repeat themselves every heartbeat: say each thing once."""
        if (name, key, message) in self._warned:
            return
        if len(self._warned) > 10_000:
            self._warned.clear()
        self._warned.add((name, key, message))
        log.warning("%s", message)


class ZapCredentials:
    """pyzmq's ``credentials_provider`` for ``configure_curve_callback``: asks the registry."""

    def __init__(self, registry: NodeKeyRegistry) -> None:
        self._registry = registry

    def callback(self, domain: str, key: bytes) -> bool:
        return self._registry.zap_allows(key.decode())
