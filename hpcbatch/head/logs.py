"""Attempt output kept by the head: one file per attempt, written at the agent's offsets.

Writes are positional (``pwrite`` at the offset the agent read the bytes from), so a chunk
that arrives twice after a reconnect or a head restart changes nothing.

Job output is private (it may hold anything a job printed): the directory is created 0700
and each file 0600 (0750/0640 with the head's ``state_group``), whatever the umask.

Timestamps (CloudWatch Logs needs one per line, hpcbatch.head.cwlogs): beside
``<attempt>.log`` (the output bytes, unchanged, which GetJobLogs reads) the store keeps
``<attempt>.ts``, one fixed-size record per chunk of new bytes (start, end, when the agent
read them, when the head stored them; little-endian u64/i64), and ``<attempt>.job``, the
job's id. A record is appended only for bytes beyond the last one recorded, so a chunk sent
twice keeps its first times. A log written before these files existed has neither: its
lines are still readable with GetJobLogs, and cwlogs stamps them with the attempt's start.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import NamedTuple

_STAMP = struct.Struct("<QQqq")


class Stamp(NamedTuple):
    """When the bytes ``[start, end)`` of an attempt's output were read and stored (epoch ms)."""

    start: int
    end: int
    read_at_ms: int
    stored_at_ms: int


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

    def write(self, attempt_id: str, offset: int, data: bytes, *, read_at_ms: int | None = None,
              stored_at_ms: int | None = None, job_id: str | None = None) -> None:
        """Keep ``data`` at ``offset``; with ``read_at_ms``, stamp the bytes not stamped yet."""
        # The umask can only take bits away from 0600/0640: never widens a job's output.
        fd = os.open(self._path(attempt_id), os.O_WRONLY | os.O_CREAT, self._mode)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)
        if read_at_ms is not None and data:
            self._stamp(attempt_id, offset, offset + len(data), read_at_ms,
                        read_at_ms if stored_at_ms is None else stored_at_ms, job_id)

    def _stamp(self, attempt_id: str, start: int, end: int, read_at_ms: int, stored_at_ms: int,
               job_id: str | None) -> None:
        path = self._dir / f"{attempt_id}.ts"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, self._mode)
        try:
            size = os.fstat(fd).st_size
            size -= size % _STAMP.size  # a record torn by a crash is overwritten by the next
            if size:
                last = Stamp(*_STAMP.unpack(os.pread(fd, _STAMP.size, size - _STAMP.size)))
                start = max(start, last.end)
                if start >= end:
                    return  # already stamped: a resent chunk keeps its first times
            elif job_id:
                self._write_job(attempt_id, job_id)
            os.ftruncate(fd, size)
            os.write(fd, _STAMP.pack(start, end, read_at_ms, stored_at_ms))
        finally:
            os.close(fd)

    def _write_job(self, attempt_id: str, job_id: str) -> None:
        fd = os.open(self._dir / f"{attempt_id}.job", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self._mode)
        try:
            os.write(fd, job_id.encode())
        finally:
            os.close(fd)

    def stamps(self, attempt_id: str) -> list[Stamp]:
        """Every stamp of the attempt's output, in offset order ([] for an unstamped log)."""
        try:
            raw = (self._dir / f"{attempt_id}.ts").read_bytes()
        except FileNotFoundError:
            return []
        return [Stamp(*t) for t in _STAMP.iter_unpack(raw[: len(raw) - len(raw) % _STAMP.size])]

    def job_of(self, attempt_id: str) -> str | None:
        """The job whose attempt wrote this output (None for a log kept before jobs were noted)."""
        try:
            return (self._dir / f"{attempt_id}.job").read_text() or None
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    def attempts(self) -> list[str]:
        """The attempts whose output names its job (``<attempt>.job``), in no given order."""
        with os.scandir(self._dir) as entries:
            return [e.name[:-4] for e in entries if e.name.endswith(".job")]

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
        (self._dir / f"{attempt_id}.ts").unlink(missing_ok=True)
        (self._dir / f"{attempt_id}.job").unlink(missing_ok=True)

