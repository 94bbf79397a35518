"""Attempt output kept by the head: one file per attempt, written at the agent's offsets.

Writes are positional (``pwrite`` at the offset the agent read the bytes from), so a chunk
that arrives twice after a reconnect or a head restart changes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path


class LogStore:
    """Per-attempt output files under one directory."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)

    def _path(self, attempt_id: str) -> Path:
        return self._dir / f"{attempt_id}.log"

    def write(self, attempt_id: str, offset: int, data: bytes) -> None:
        fd = os.open(self._path(attempt_id), os.O_WRONLY | os.O_CREAT, 0o640)
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
