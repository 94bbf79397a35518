"""The head's state at rest: the modes it creates its state with, and the modes it refuses.

The state directory holds the store (SQLite and its -wal/-shm), the secrets key that seals
access keys, the CurveZMQ secret key and every job's output: a local user who could read it
could become anyone. So, as sshd's StrictModes does for ``~/.ssh``, the head creates it
0700 (0750 when ``state_group`` names a group that may read it: backups, monitoring) and
every file in it 0600 (0640), whatever the umask, and refuses to start when it finds any
of them wider, or the directory owned by another user, naming the path and the command
that fixes it. Nothing here loosens a mode it finds: that is the operator's decision.
"""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

from hpcbatch.errors import ServerError
from hpcbatch.head.config import HeadConfig
from hpcbatch.store.migrate import is_postgresql


class StateModeError(ServerError):
    """The state directory or a file in it is open to others (or not the head's own)."""


def state_modes(config: HeadConfig) -> tuple[int, int]:
    """(directory mode, file mode) the head keeps its state with."""
    return (0o750, 0o640) if config.state_group else (0o700, 0o600)


def _group_id(config: HeadConfig) -> int | None:
    if not config.state_group:
        return None
    try:
        return grp.getgrnam(config.state_group).gr_gid
    except KeyError:
        raise StateModeError(f"state_group: no group named {config.state_group!r} on this host") from None


def _check(path: Path, allowed: int, what: str, *, directory: bool) -> None:
    """Refuse ``path`` if it grants more than ``allowed`` (or is not this user's); absent is fine."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in (os.geteuid(), 0):
        raise StateModeError(
            f"{what} {path} is owned by uid {st.st_uid}, not by the head's user (uid {os.geteuid()}): "
            f"run chown {os.geteuid()} {path}"
        )
    if mode & ~allowed:
        hint = "" if allowed & 0o070 else " (or chmod 750 / 640 and set state_group in the head's config)"
        raise StateModeError(
            f"{what} {path} is mode {mode:04o}, open to {'others' if mode & 0o007 else 'its group'}: "
            f"run chmod {allowed:o} {path}{hint}"
        )
    if directory and not stat.S_ISDIR(st.st_mode):
        raise StateModeError(f"{what} {path} is not a directory")


def create_private_dir(path: Path, mode: int, gid: int | None = None) -> None:
    """``path`` made with exactly ``mode`` (the umask cannot widen or narrow it); existing: untouched."""
    try:
        path.mkdir(mode=mode, parents=True)
    except FileExistsError:
        return
    if gid is not None:
        os.chown(path, -1, gid)
    os.chmod(path, mode)


def create_private_file(path: Path, mode: int) -> None:
    """An empty ``path`` with exactly ``mode`` if it does not exist (before SQLite makes it 0644)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def secure_state(config: HeadConfig) -> None:
    """Create the state directory and the SQLite file private; refuse to go on if anything is wider.

    Checked: the state directory, ``logs/`` in it, the SQLite store and its -wal/-shm, the
    secrets key file and the TLS key (the CurveZMQ secret key is checked where it is read).
    """
    dir_mode, file_mode = state_modes(config)
    gid = _group_id(config)
    state = config.state_path
    create_private_dir(state, dir_mode, gid)
    _check(state, dir_mode, "state directory", directory=True)
    _check(state / "logs", dir_mode, "log directory", directory=True)
    if not is_postgresql(config.store_target):
        db = Path(config.store_target)
        create_private_dir(db.parent, dir_mode, gid)
        create_private_file(db, file_mode)
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            _check(path, file_mode, "store file", directory=False)
    _check(config.secrets_key_path, file_mode, "secrets key file", directory=False)
    if config.tls_key:
        _check(Path(config.tls_key), file_mode, "TLS key file", directory=False)
