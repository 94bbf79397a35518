"""The runner's durable memory: an entry per live attempt, a result per finished one.

* ``state_dir/running/<attempt id>.json`` (a ``JournalEntry``) is written when an attempt
  starts and dropped once its result is written: what a later agent process needs to
  re-adopt it or to report it (``node_agent.runner.Runner.adopt_orphans``).
* ``state_dir/attempts/<attempt id>/result.json`` is its ``AttemptResult``, kept until the
  head acknowledges it (``forget``); until then ``unacknowledged`` lists it after a restart.

No fsync: the journal only has to outlive the agent process; a machine crash takes the jobs
with it. On the hot path (``record_start``, ``record_end``) each file is created in place
with one ``write`` (``write_whole``), no temporary file and rename: a SIGKILL ends a process
at a system call's edge, and a write of a few hundred bytes to a regular file is one page
copy, so a file the agent is killed over is absent, empty or whole, and in the first two
cases the call never returned: nothing was acknowledged from it (a start is acknowledged
after ``record_start``; an end's entry is dropped only after its result is whole). An empty
or garbled entry is garbage (dropped by ``orphans``), an empty result is none (the entry
stays and tells). Results written outside the hot path (an orphan's) go by rename. An exit
is reported before anything is written; a write that fails (a full disk) is retried every
second, and the exit is not lost meanwhile. The last ``_KEEP_RESULTS`` results are also
answered from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Container, Iterator
from dataclasses import dataclass
from pathlib import Path

from node_agent.attempts import (
    LOST_REASON,
    MAX_SIGNAL,
    STATUS_FILE,
    WORK_DIR,
    AttemptResult,
    os_error,
)
from node_agent.watching import signal_name

log = logging.getLogger(__name__)

_KEEP_RESULTS = 10_000  # finished results answered from memory; older ones from result.json
_WRITE_RETRY_S = 1.0  # a journal write that failed (full disk) is retried this often
_RESULT = "result.json"


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """What a later agent process needs to re-adopt a live attempt, or to report it."""

    attempt_id: str
    job_id: str
    pid: int
    create_time: float  # with pid, the process's identity (pids are reused)
    started_at: int  # epoch ms
    cgroup: str | None = None
    container: bool = False
    status_file: str | None = None  # where its shim writes the job's exit status
    timeout_at: int | None = None  # epoch ms
    memory_mib: int = 0
    uid: int = -1
    adoptable: bool = False  # a later agent may watch it on (single-node, under a shim)
    # Its warning signal before the timeout (``--signal SIG@warning_s``; no SIG prefix), and
    # whether it was sent: a later agent sets the timer again, and never sends it twice.
    warning_signal: str | None = None
    warning_s: int = 0
    warned: bool = False
    oom_base: int = 0  # its cgroup's OOM-kill count at start: a reused cgroup's counters are cumulative

    def to_json(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in _ENTRY_FIELDS}  # flat: asdict's deep copy costs

    @classmethod
    def from_json(cls, data: object) -> JournalEntry | None:
        """The entry ``data`` describes; None for garbage (a torn write, another format)."""
        if not isinstance(data, dict):
            return None
        try:
            timeout_at = data.get("timeout_at")
            return cls(
                attempt_id=str(data["attempt_id"]),
                job_id=str(data.get("job_id", "")),
                pid=int(data["pid"]),
                create_time=float(data["create_time"]),
                started_at=int(data["started_at"]),
                cgroup=str(data["cgroup"]) if data.get("cgroup") else None,
                container=bool(data.get("container")),
                status_file=str(data["status_file"]) if data.get("status_file") else None,
                timeout_at=timeout_at if isinstance(timeout_at, int) else None,
                memory_mib=int(data.get("memory_mib") or 0),
                uid=int(data.get("uid", -1)),
                adoptable=bool(data.get("adoptable")),
                oom_base=int(data.get("oom_base") or 0),
                **_warning(data),
            )
        except (KeyError, ValueError, TypeError):
            return None

    def readoptable(self) -> bool:
        return self.adoptable and self.status_file is not None

    def recorded_status(self) -> int | None:
        """The exit status its shim wrote (it ended while no agent watched); None if none."""
        if self.status_file is None:
            return None
        try:
            return int(Path(self.status_file).read_text())
        except (OSError, ValueError):
            return None


_ENTRY_FIELDS = tuple(f.name for f in dataclasses.fields(JournalEntry))


def _warning(data: dict[str, object]) -> dict[str, object]:
    """An entry's warning fields (absent from entries an older agent wrote: no warning)."""
    name = data.get("warning_signal")
    seconds = data.get("warning_s")
    return {
        "warning_signal": name if isinstance(name, str) and name else None,
        "warning_s": seconds if isinstance(seconds, int) and not isinstance(seconds, bool) else 0,
        "warned": data.get("warned") is True,
    }


def result_json(result: AttemptResult) -> dict[str, object]:
    """``result`` as the JSON object ``result.json`` holds (its fields are flat values)."""
    return dict(vars(result))


def orphan_result(entry: JournalEntry, code: int | None, now: int) -> AttemptResult:
    """How an attempt a dead agent left ended: from its shim's status ``code``, else lost.

    sh reports death by signal N as 128+N; a container's codes are podman's (the job's own).
    """
    if code is None:
        return AttemptResult(entry.attempt_id, entry.job_id, None, None, LOST_REASON, entry.started_at, now, lost=True)
    if 128 < code <= 128 + MAX_SIGNAL and not entry.container:
        exit_code, reason = None, f"Killed by signal {signal_name(code - 128)}"
    else:
        exit_code, reason = code, None
    return AttemptResult(entry.attempt_id, entry.job_id, exit_code, reason, None, entry.started_at, now)


class Journal:
    """The journal and results under ``state_dir``, with the retry of writes that failed."""

    def __init__(self, state_dir: Path) -> None:
        self.attempts_dir = state_dir / "attempts"
        self.running_dir = state_dir / "running"
        self.attempts_dir.mkdir(parents=True, exist_ok=True)
        self.running_dir.mkdir(parents=True, exist_ok=True)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        # Writes that failed (a full disk): path -> (data, journal entry to drop once
        # written). The exit was reported already; these are retried every second.
        self._pending: dict[Path, tuple[dict[str, object], Path | None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._finished: dict[str, AttemptResult] = {}

    def attempt_dir(self, attempt_id: str) -> Path:
        return self.attempts_dir / attempt_id

    def _entry_path(self, attempt_id: str) -> Path:
        return self.running_dir / f"{attempt_id}.json"

    # ------------------------------------------------------------------ writing
    def record_start(self, entry: JournalEntry) -> None:
        """The attempt runs: journal it for a later agent process."""
        self._durable(self._entry_path(entry.attempt_id), entry.to_json())

    def record_warned(self, entry: JournalEntry) -> None:
        """Its warning signal was sent: the entry says so, replaced by rename (not in place:
        the old entry must survive a SIGKILL mid-write, or the attempt would be lost)."""
        path = self._entry_path(entry.attempt_id)
        pending = self._pending.get(path)
        if pending is not None:  # its start is not written yet (a full disk): write this instead
            self._pending[path] = (entry.to_json(), pending[1])
            return
        try:
            write_json(path, entry.to_json())
        except OSError as exc:  # best-effort: at worst a re-adopting agent sends it again
            log.warning("cannot note that attempt %s was warned (%s)", entry.attempt_id, os_error(exc))

    def record_end(self, result: AttemptResult) -> None:
        """The attempt ended (and was reported): its result replaces its journal entry."""
        self.remember(result)
        entry = self._entry_path(result.attempt_id)
        self._pending.pop(entry, None)  # a start entry not yet written: no longer needed
        self._durable(self.attempt_dir(result.attempt_id) / _RESULT, result_json(result), entry)

    def record_refusal(self, result: AttemptResult) -> None:
        """An attempt that never ran: its result, best-effort (a full disk is often why)."""
        self.remember(result)
        self._durable(self.attempt_dir(result.attempt_id) / _RESULT, result_json(result))

    def record_orphan(self, result: AttemptResult) -> None:
        """How an attempt of a dead agent ended, kept until the head has it (``unacknowledged``)."""
        self.remember(result)
        adir = self.attempt_dir(result.attempt_id)
        if adir.is_dir():
            with contextlib.suppress(OSError):  # the exit goes out anyway
                write_json(adir / _RESULT, result_json(result))

    def _durable(self, path: Path, data: dict[str, object], then_unlink: Path | None = None) -> None:
        """Write ``path`` in place (module doc), then drop ``then_unlink``; on failure retry every second."""
        try:
            write_whole(path, json.dumps(data).encode())
            if then_unlink is not None:
                then_unlink.unlink(missing_ok=True)
        except OSError as exc:
            if path not in self._pending:
                log.warning("cannot write %s (%s): retrying every %g s", path, os_error(exc), _WRITE_RETRY_S)
            self._pending[path] = (data, then_unlink)
            self._schedule_retry()
            return
        self._pending.pop(path, None)

    def _schedule_retry(self) -> None:
        if self._timer is None and self.loop is not None and not self._closed:
            self._timer = self.loop.call_later(_WRITE_RETRY_S, self._retry)

    def _retry(self) -> None:
        self._timer = None
        for path, (data, then_unlink) in list(self._pending.items()):
            if not path.parent.is_dir():  # forgotten meanwhile: the head has it all
                del self._pending[path]
                continue
            try:
                write_json(path, data)
                if then_unlink is not None:
                    then_unlink.unlink(missing_ok=True)
            except OSError:
                break  # still full: the rest waits too
            del self._pending[path]
            log.info("wrote %s after all", path)
        if self._pending:
            self._schedule_retry()

    def pending(self) -> int:
        """Files not yet written (the disk was full): for logs and tests."""
        return len(self._pending)

    def closing(self) -> None:
        """Shutdown began: no more retry timers."""
        self._closed = True

    def close(self) -> None:
        """A last try at what is still owed; what still fails is lost with this process."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            self._retry()
            if self._pending:
                log.warning("shutdown: %d journal files could not be written", len(self._pending))

    # ------------------------------------------------------------------ reading, acknowledging
    def remember(self, result: AttemptResult) -> None:
        self._finished[result.attempt_id] = result
        if len(self._finished) > _KEEP_RESULTS:
            del self._finished[next(iter(self._finished))]

    def known(self, attempt_id: str) -> AttemptResult | None:
        """The result of an attempt that ended under this agent process, if still remembered."""
        return self._finished.get(attempt_id)

    def stored_result(self, attempt_id: str) -> AttemptResult | None:
        return read_result(self.attempt_dir(attempt_id))

    def unacknowledged(self, running: Container[str]) -> list[AttemptResult]:
        """Results of finished attempts still on disk (not yet ``forget``-ten), oldest first."""
        found = []
        for adir in self.attempts_dir.iterdir():
            if adir.name in running:
                continue
            result = read_result(adir)
            if result is not None:
                found.append(result)
        return sorted(found, key=lambda r: r.stopped_at)

    def forget(self, attempt_id: str) -> None:
        """The head has the result: drop it from memory, the journal and what is owed."""
        self._finished.pop(attempt_id, None)
        entry = self._entry_path(attempt_id)
        self._pending.pop(entry, None)
        self._pending.pop(self.attempt_dir(attempt_id) / _RESULT, None)
        with contextlib.suppress(OSError):
            entry.unlink(missing_ok=True)

    def orphans(self) -> Iterator[tuple[Path, JournalEntry]]:
        """Every journal entry an earlier agent process left, by name; garbage is removed."""
        for path in sorted(self.running_dir.iterdir()):
            try:
                entry = JournalEntry.from_json(json.loads(path.read_bytes()))
            except (OSError, ValueError):
                entry = None
            if entry is None:
                path.unlink(missing_ok=True)  # a torn .tmp or garbage: nothing to adopt
                continue
            yield path, entry


def remove_attempt_dir(adir: Path, keep_workdir: bool) -> None:
    """Delete an acknowledged attempt's directory (``keep_workdir``: all but the owner's work dir)."""
    if keep_workdir and (adir / WORK_DIR).is_dir():
        for entry in adir.iterdir():
            if entry.name == WORK_DIR:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        log.info("keep_workdir: left %s", adir / WORK_DIR)
        return
    # Most attempts leave only what we made: remove those by name (a few syscalls);
    # rmtree (dozens) only when the job left files behind.
    for name in ("output.log", _RESULT, "script", STATUS_FILE):
        with contextlib.suppress(OSError):
            os.unlink(adir / name)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(adir / WORK_DIR)
        os.rmdir(adir)
    except OSError:
        shutil.rmtree(adir, ignore_errors=True)


def remove_attempt_dirs(adirs: list[Path], keep_workdir: bool) -> None:
    """``remove_attempt_dir`` for each of a batch (one hand-off to the remover's thread)."""
    for adir in adirs:
        try:
            remove_attempt_dir(adir, keep_workdir)
        except Exception:  # one odd directory must not keep the rest of the batch
            log.exception("cannot remove %s", adir)


def read_result(adir: Path) -> AttemptResult | None:
    try:
        return AttemptResult(**json.loads((adir / _RESULT).read_bytes()))
    except (OSError, ValueError, TypeError):
        return None


def write_whole(path: Path, data: bytes) -> None:
    """Create or replace ``path`` with ``data`` in one write (why that is enough: module doc).

    os.open and os.write, not open(): a buffered file costs an fstat and an ioctl more.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:  # one write for what the journal holds; a loop for what a full disk cuts short
            view = view[os.write(fd, view) :]
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)  # a full disk must not keep the half it took
        raise
    finally:
        os.close(fd)


def write_json(path: Path, data: dict[str, object]) -> None:
    """Write by rename, so a crash leaves the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(json.dumps(data).encode())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # a full disk must not keep the half it took
        raise
