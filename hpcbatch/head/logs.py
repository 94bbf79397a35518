"""Attempt output kept by the head: one file per attempt, written at the agent's offsets.

Writes are positional (``pwrite`` at the offset the agent read the bytes from), so a chunk
that arrives twice after a reconnect or a head restart changes nothing.

Job output is private (it may hold anything a job printed): the directory is created 0700
and each file 0600 (0750/0640 with the head's ``state_group``), whatever the umask.
"""

from __future__ import annotations

import os
from pathlib import Path


class LogStore:
    """Per-attempt output files under one directory."""

    def __init__(self, directory: Path, *, file_mode: int = 0o600) -> None:
        self._dir = directory
        self._mode = file_mode
        dir_mode = file_mode | ((file_mode & 0o444) >> 2)  # x wherever r: 0600 -> 0700, 0640 -> 0750
        try:
            self._dir.mkdir(mode=dir_mode, parents=True)
            os.chmod(self._dir, dir_mode)  # mkdir's mode went through the umask
        except FileExistsError:
            pass

    def _path(self, attempt_id: str) -> Path:
        return self._dir / f"{attempt_id}.log"

    def write(self, attempt_id: str, offset: int, data: bytes) -> None:
        # The umask can only take bits away from 0600/0640: never widens a job's output.
        fd = os.open(self._path(attempt_id), os.O_WRONLY | os.O_CREAT, self._mode)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    def size(self, attempt_id: str) -> int:
        try:
            return self._path(attempt_id).stat().st_size
        except FileNotFoundError:
            return 0

    def read(self, attempt_id: str, offset: int, limit: int = 1 << 20) -> bytes:
        try:
            with open(self._path(attempt_id), "rb") as f:
                f.seek(offset)
                return f.read(limit)
        except FileNotFoundError:
            return b""

    def delete(self, attempt_id: str) -> None:
        self._path(attempt_id).unlink(missing_ok=True)
