"""Watching processes end: pidfds on the event loop (a 50 ms waitpid poll where they are
missing), reaping only our own children, and the /proc readings the runner decides on.

Each exit is watched through a pidfd registered with ``loop.add_reader``; where pidfds are
missing (Linux < 5.3) one 50 ms timer polls ``waitpid(WNOHANG)`` instead. Only the runner
reaps its children (through this module), so an exit status is never stolen. A process that
is not our child (an attempt re-adopted from an earlier agent process) is watched the same
way (a pidfd works on a non-child) and, when polled, by its identity (pid + start time).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from typing import Protocol

import psutil

from node_agent.cgroups import read_small

_POLL_INTERVAL_S = 0.05
_PAGE = os.sysconf("SC_PAGE_SIZE")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_BOOT_TIME: float | None = None


class Watched(Protocol):
    """A process the runner waits for: an attempt's or a launched task's."""

    @property
    def pid(self) -> int: ...

    @property
    def create_time(self) -> float: ...

    def is_child(self) -> bool:
        """False for a process an earlier agent started (it cannot be reaped here)."""
        ...


class ProcessWatcher:
    """Calls ``on_end(process, wait status or None)`` once when a watched process ends."""

    def __init__(self, on_end: Callable[[Watched, int | None], None]) -> None:
        self._on_end = on_end
        self.use_pidfd = pidfd_works()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._fds: dict[Watched, int] = {}
        self._polled: dict[Watched, None] = {}  # ordered: ends are reported in start order
        self._poll_timer: asyncio.TimerHandle | None = None

    def watch(self, proc: Watched) -> None:
        assert self.loop is not None
        fd = None
        if self.use_pidfd:
            with contextlib.suppress(OSError):  # cannot happen for our unreaped child; fall back anyway
                fd = os.pidfd_open(proc.pid)
        if fd is not None:
            self._fds[proc] = fd
            self.loop.add_reader(fd, self._on_pidfd, proc)
            return
        self._polled[proc] = None
        if self._poll_timer is None:
            self._poll_timer = self.loop.call_later(_POLL_INTERVAL_S, self._poll_tick)

    def unwatch(self, proc: Watched) -> None:
        self._polled.pop(proc, None)
        fd = self._fds.pop(proc, None)
        if fd is not None:
            if self.loop is not None:
                self.loop.remove_reader(fd)
            os.close(fd)

    def close(self) -> None:
        """Stop watching everything (the processes run on)."""
        for proc in [*self._fds, *self._polled]:
            self.unwatch(proc)
        if self._poll_timer is not None:
            self._poll_timer.cancel()
            self._poll_timer = None

    def _on_pidfd(self, proc: Watched) -> None:
        self.unwatch(proc)
        self._on_end(proc, reap(proc))

    def _poll_tick(self) -> None:
        self._poll_timer = None
        for proc in list(self._polled):
            if proc not in self._polled:  # ended meanwhile (another's end killed it, reaped it)
                continue
            ended, status = _poll(proc)
            if ended:
                self.unwatch(proc)
                self._on_end(proc, status)
        if self._polled and self.loop is not None:  # close() cancels it
            self._poll_timer = self.loop.call_later(_POLL_INTERVAL_S, self._poll_tick)


def _poll(proc: Watched) -> tuple[bool, int | None]:
    """(whether it ended, its wait status when known) without blocking."""
    if not proc.is_child():  # re-adopted: not ours to wait for
        return not alive(proc.pid, proc.create_time), None
    try:
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
    except ChildProcessError:
        return True, None
    return bool(pid), status


def reap(proc: Watched) -> int | None:
    """The wait status of an ended child; None for a re-adopted attempt (not our child)."""
    if not proc.is_child():
        return None
    try:
        _, status = os.waitpid(proc.pid, 0)  # readable pidfd: it has exited, no blocking
    except ChildProcessError:
        return None
    return status


def alive(pid: int, create_time: float) -> bool:
    """True while ``pid`` is the process that started at ``create_time`` (not a zombie)."""
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - create_time) < 0.005 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def signal_group(pgid: int, signum: int) -> None:
    # Safe after the leader is reaped: Linux never reuses a pid still naming a live group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def kill_orphan_group(pid: int, create_time: float) -> None:
    """SIGKILL a dead agent's attempt, checking identity so a reused pid is never hit."""
    try:
        leader = psutil.Process(pid)
        if abs(leader.create_time() - create_time) < 0.005:  # start times tick in 10 ms
            signal_group(pid, signal.SIGKILL)
        return  # alive but someone else: the pid was reused, our group is long gone
    except psutil.NoSuchProcess:
        pass
    # The leader is gone but its group may live on; the kernel keeps the number reserved
    # while the group exists, so members of group `pid` started after our leader are ours.
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pid and proc.create_time() >= create_time:
                proc.kill()
        except (psutil.Error, ProcessLookupError):
            continue


def pidfd_works() -> bool:
    try:
        fd = os.pidfd_open(os.getpid())
    except (AttributeError, OSError):
        return False
    os.close(fd)
    return True


def create_time(pid: int) -> float:
    """psutil's create_time for ``pid`` (same formula), without building a Process; 0.0 if gone.

    On the spawn hot path, psutil.Process() costs several /proc reads; one read of
    /proc/PID/stat gives the start tick.
    """
    global _BOOT_TIME
    if _BOOT_TIME is None:
        _BOOT_TIME = psutil.boot_time()
    try:
        stat = read_small(f"/proc/{pid}/stat")
    except OSError:
        return 0.0
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[19]) / _CLOCK_TICKS + _BOOT_TIME


def session_rss(sessions: set[int]) -> dict[int, int]:
    """Bytes resident per session id, summed over /proc in one pass.

    Reading /proc/<pid>/stat directly gives session and RSS in one read; psutil has no
    session id and would need two. Shared pages count once per process (an overestimate,
    as ``ps`` makes); processes that left the session with setsid are not seen.
    """
    totals = dict.fromkeys(sessions, 0)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        sid = int(fields[3])
        if sid in totals:
            totals[sid] += int(fields[21]) * _PAGE
    return totals
