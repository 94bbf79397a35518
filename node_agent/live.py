"""The runner's live records: an attempt it watches, the tasks launched into it, and how
their ends read (an exit status, the shim's status file, the OOM killer) in AWS's terms."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from node_agent.attempts import MAX_SIGNAL, OOM_EXIT_CODE, OOM_REASON, AttemptSpec
from node_agent.cgroups import MemoryCgroups
from node_agent.container_cgroup import ContainerCgroup
from node_agent.identity import Owner
from node_agent.journal import JournalEntry
from node_agent.watching import session_rss, signal_group, signal_name

if TYPE_CHECKING:
    from node_agent.containers import Podman

_MIB = 1024 * 1024


@dataclass(slots=True, eq=False)
class LiveAttempt:
    """A live attempt; mutable, owned by the Runner."""

    spec: AttemptSpec
    pid: int  # the attempt's process: its supervisor (shim) where it has one; its group's id
    started_at: int
    create_time: float
    cgroup: Path | None
    popen: subprocess.Popen[bytes] | None = None  # None: re-adopted from an earlier agent process
    oom_base: int = 0  # its cgroup's OOM-kill count when it started (a reused cgroup: cgroups.Lease)
    oom_kills: int | None = None  # that count when it ended (None: not read)
    status_reason: str | None = None
    oom: bool = False
    kill_handle: asyncio.TimerHandle | None = None
    timeout_handle: asyncio.TimerHandle | None = None
    warning_handle: asyncio.TimerHandle | None = None  # its warning signal before the timeout
    warned: bool = False  # its warning signal was sent (journaled: a re-adopting agent does not resend it)
    # What launched tasks inherit: the job's final environment, directory and identity.
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    cwd: str = ""
    drop: Owner | None = None
    uid: int = -1
    tasks: dict[str, LiveTask] = dataclasses.field(default_factory=dict)
    terminating: bool = False
    container: bool = False  # runs in a podman container named after the attempt
    container_cgroup: ContainerCgroup | None = None  # its cgroup's parent: how its OOM is seen
    status_file: Path | None = None  # where its shim writes the job's exit status (None: no shim)
    timed_out: bool = False
    fenced: bool = False

    def is_child(self) -> bool:
        return self.popen is not None

    def adoptable(self) -> bool:
        """Whether a later agent process can re-adopt it: it has a shim and needs no bridge."""
        return self.status_file is not None and not self.spec.multinode and not self.spec.hold

    def signal_tasks(self, signum: int) -> None:
        for task in self.tasks.values():
            signal_group(task.pid, signum)

    def terminate(self, loop: asyncio.AbstractEventLoop, grace_s: float, containers: Podman | None) -> None:
        """SIGTERM now (tasks first: a holder outlives its tasks' grace), SIGKILL after the grace."""
        self.terminating = True
        if grace_s <= 0:
            self.sigkill(containers)
            return
        self.signal_tasks(signal.SIGTERM)
        if not (self.spec.hold and self.tasks):
            signal_group(self.pid, signal.SIGTERM)
        deadline = loop.time() + grace_s
        if self.kill_handle is not None:
            if self.kill_handle.when() <= deadline:
                return  # an earlier SIGKILL is already due
            self.kill_handle.cancel()
        self.kill_handle = loop.call_at(deadline, self.sigkill, containers)

    def sigkill(self, containers: Podman | None) -> None:
        """SIGKILL its tasks, its process group, its cgroup and its container."""
        self.signal_tasks(signal.SIGKILL)
        signal_group(self.pid, signal.SIGKILL)
        if self.cgroup is not None:
            MemoryCgroups.kill(self.cgroup)  # also what left the group with setsid
        if self.container and containers is not None:
            containers.remove(self.spec.attempt_id)  # what runs inside, and the container

    def warn(self, name: str | None = None) -> None:
        """Send the job's warning signal (``name``, else its spec's; no SIG prefix) to its
        processes, unless it is already being stopped (Slurm's ``--signal``)."""
        self.warning_handle = None
        name = name or self.spec.warning_signal
        if name and not self.terminating:
            self.warned = True
            signum = signal.Signals[f"SIG{name}"]
            self.signal_tasks(signum)
            signal_group(self.pid, signum)

    def cancel_timers(self) -> None:
        for handle in (self.kill_handle, self.timeout_handle, self.warning_handle):
            if handle is not None:
                handle.cancel()

    def journal_entry(self) -> JournalEntry:
        """What a later agent process needs to re-adopt it (``adopt_orphans``)."""
        spec = self.spec
        return JournalEntry(
            attempt_id=spec.attempt_id, job_id=spec.job_id, pid=self.pid, create_time=self.create_time,
            started_at=self.started_at, cgroup=str(self.cgroup) if self.cgroup else None,
            container=self.container, status_file=str(self.status_file) if self.status_file else None,
            timeout_at=self.started_at + spec.timeout_s * 1000 if spec.timeout_s else None,
            memory_mib=spec.memory_mib, uid=self.uid, adoptable=not (spec.multinode or spec.hold),
            warning_signal=spec.warning_signal, warning_s=spec.warning_s, warned=self.warned,
            oom_base=self.oom_base,
        )


TaskExit = Callable[[str, int | None, str | None], None]  # (launch_id, exit_code, reason)


@dataclass(slots=True, eq=False)
class LiveTask:
    """A command launched into a live attempt (an MPI daemon): its own process group."""

    launch_id: str
    attempt: LiveAttempt
    popen: subprocess.Popen[bytes]
    on_exit: TaskExit

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def create_time(self) -> float:
        return 0.0  # always our child: reaped, never identified by start time

    def is_child(self) -> bool:
        return True


def exit_status(rec: LiveAttempt, status: int | None) -> int | None:
    """How the job ended, as os.waitstatus_to_exitcode gives it (-N: signal N); None: unknown.

    Under a shim, ``status`` is the shim's: it exits with sh's $? (128+N for signal N),
    or dies of the group's SIGKILL (then the status file, if the job ended first, tells).
    A re-adopted attempt (not our child) has only the status file.
    """
    code = None if status is None else os.waitstatus_to_exitcode(status)
    if rec.status_file is None:
        return code
    if code is None or code < 0:
        try:
            code = int(rec.status_file.read_text())
        except (OSError, ValueError):
            return code
    if 128 < code <= 128 + MAX_SIGNAL and not rec.container:  # podman's codes are the container's
        return 128 - code  # as sh reports it: a job that exits 137 itself reads as SIGKILL
    return code


def ending(code: int | None, *, oom: bool, killed: bool) -> tuple[int | None, str | None, bool]:
    """(exitCode, container reason, lost) of an attempt whose job ended with ``code``."""
    if oom:
        return OOM_EXIT_CODE, OOM_REASON, False
    if code is None and killed:  # we killed it, and SIGKILL took the shim too
        return None, "Killed by signal SIGKILL", False
    if code is None:
        return None, "Exit status lost: no process recorded it", True
    if code < 0:
        return None, f"Killed by signal {signal_name(-code)}", False
    return code, None, False


def task_ending(code: int | None) -> tuple[int | None, str | None]:
    """(exit code, reason) of a launched task."""
    if code is None:
        return None, "Exit status lost (reaped elsewhere)"
    if code < 0:
        return None, f"Killed by signal {signal_name(-code)}"
    return code, None


def over_memory(watched: dict[int, LiveAttempt]) -> list[tuple[LiveAttempt, int]]:
    """The attempts (by session id) whose sessions, their tasks' included, are over their limit."""
    owners = dict(watched)  # session id -> attempt; a task's session counts for its attempt
    for rec in watched.values():
        owners.update(dict.fromkeys((t.pid for t in rec.tasks.values()), rec))
    totals: dict[int, int] = {}
    for sid, rss in session_rss(set(owners)).items():
        totals[owners[sid].pid] = totals.get(owners[sid].pid, 0) + rss
    return [(watched[pid], rss) for pid, rss in totals.items() if rss > watched[pid].spec.memory_mib * _MIB]
