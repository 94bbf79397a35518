"""The memory cgroups of attempts: one per attempt, under a parent this agent owns.

With a writable memory cgroup (v2 preferred, v1 accepted) each attempt runs in its own
cgroup with its limit and swap off, joined in the child before exec so nothing escapes; an
OOM kill is read from the cgroup's counters. Without one the runner polls RSS instead
(``node_agent.watching.session_rss``). A cgroup is removed once its processes are gone:
right away when it is empty, else retried for a while (``BusyCgroups``); or kept empty
for a later attempt (``CgroupPool``): a memory cgroup's mkdir and rmdir were the
largest kernel cost of a short job (issue 22).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_MIB = 1024 * 1024
_RETRY_S = 0.05  # how often a busy cgroup's rmdir is tried again
# What the last job may leave charged to its cgroup for it to be reused. A trivial job
# leaves 0.3-1 MiB (per-CPU charge batches, the dentries and inodes of the files it made);
# more (a big page cache, a file in /dev/shm) would count against the next job's limit:
# such a cgroup is removed instead.
_REUSE_MAX_CHARGE = 4 * _MIB


class CgroupUnavailable(RuntimeError):
    """memory_enforcement="cgroup" was asked for but no writable memory cgroup exists."""


class MemoryCgroups:
    """One memory cgroup per attempt, under a parent this agent owns (v2, or v1's memory)."""

    def __init__(self, parent: Path, version: int, root: Path) -> None:
        self.parent = parent
        self.version = version
        self.root = root  # the hierarchy's mount point

    @classmethod
    def open(cls, state_dir: Path, mode: str) -> MemoryCgroups | None:
        """The agent's cgroups for ``memory_enforcement`` ``mode`` (auto, cgroup, rss); None: RSS polling.

        The parent is named after the state dir, so two agents on one machine never share it.
        """
        if mode == "rss":
            return None
        try:
            cgroups = cls.setup(parent_tag(state_dir))
        except OSError as exc:
            if mode == "cgroup":
                raise CgroupUnavailable(f"no writable memory cgroup: {exc}") from exc
            log.info("memory limits by RSS polling: no writable memory cgroup (%s)", exc)
            return None
        cgroups.sweep_empty()
        return cgroups

    @classmethod
    def setup(cls, tag: str) -> MemoryCgroups:
        """Find a writable memory hierarchy and make our parent in it; OSError if none."""
        v2_root, v1_root = _cgroup_mounts()
        errors = []
        if v2_root is not None:
            try:
                return cls._setup_v2(v2_root, tag)
            except OSError as exc:
                errors.append(f"cgroup v2: {exc}")
        if v1_root is not None:
            try:
                # v1 allows children next to processes: nest under our own cgroup so a
                # limit put on the agent's service also bounds its jobs.
                return cls(_v1_parent(v1_root, tag), 1, v1_root)._make_parent()._probe()
            except OSError as exc:
                errors.append(f"cgroup v1: {exc}")
        raise OSError("; ".join(errors) or "no memory cgroup mounted")

    @classmethod
    def _setup_v2(cls, v2_root: Path, tag: str) -> MemoryCgroups:
        controllers = (v2_root / "cgroup.controllers").read_text().split()
        if "memory" not in controllers:
            raise OSError(f"{v2_root} has no memory controller")
        if "memory" not in (v2_root / "cgroup.subtree_control").read_text().split():
            write_text(v2_root / "cgroup.subtree_control", "+memory")
        # A sibling of the agent's own cgroup: v2 forbids processes in a cgroup
        # that hands controllers to children, and the agent's has the agent.
        return cls(_v2_parent(v2_root, tag), 2, v2_root)._make_parent()._probe()

    def _make_parent(self) -> MemoryCgroups:
        self.parent.mkdir(exist_ok=True)
        if self.version == 2:
            write_text(self.parent / "cgroup.subtree_control", "+memory")
        return self

    def _probe(self) -> MemoryCgroups:
        path = self.create(f"probe-{os.getpid()}", 64)
        self.remove(path)
        return self

    def create(self, name: str, memory_mib: int, *, exclusive: bool = False) -> Path:
        """Make the attempt's cgroup with its limit; swap off so the limit is real.

        ``exclusive``: never an existing directory (FileExistsError then).
        """
        path = self.parent / name
        try:
            path.mkdir(exist_ok=not exclusive)
        except FileNotFoundError:  # the parent was removed under us (a cleanup by hand)
            self._make_parent()
            path.mkdir(exist_ok=not exclusive)
        if memory_mib > 0:
            try:
                self._limit(path, str(memory_mib * _MIB))
            except OSError:  # the kernel refused the limit: no half-made cgroup stays behind
                self.remove(path)
                raise
        return path

    def _limit(self, path: Path, limit: str) -> None:
        if self.version == 2:
            write_text(path / "memory.max", limit)
            with contextlib.suppress(OSError):  # absent without swap accounting
                write_text(path / "memory.swap.max", "0")
            with contextlib.suppress(OSError):  # the whole "container" dies, as on k8s
                write_text(path / "memory.oom.group", "1")
        else:
            write_text(path / "memory.limit_in_bytes", limit)
            with contextlib.suppress(OSError):
                write_text(path / "memory.memsw.limit_in_bytes", limit)

    def sweep_empty(self) -> None:
        """Start-up: remove the empty cgroups an earlier agent process left in our parent (its
        pool's, ``CgroupPool``); rmdir fails on any that still holds a process."""
        with contextlib.suppress(OSError):
            for child in self.parent.iterdir():
                if child.is_dir():
                    self.remove(child)

    @staticmethod
    def oom_kills(path: Path) -> int:
        """How many processes the kernel's OOM killer ended in this cgroup."""
        for name in ("memory.events", "memory.oom_control"):  # v2, v1
            try:
                text = read_small(path / name)
            except OSError:
                continue
            for line in text.splitlines():
                key, _, value = line.partition(b" ")
                if key == b"oom_kill":
                    return int(value)
        return 0

    @staticmethod
    def kill(path: Path) -> None:
        """SIGKILL everything in the cgroup."""
        try:
            write_text(path / "cgroup.kill", "1")  # v2, Linux >= 5.14
            return
        except OSError:
            pass
        pids = []
        for procs in (path / "cgroup.procs", *path.glob("*/cgroup.procs")):  # a container's: a child
            with contextlib.suppress(OSError):
                pids += procs.read_text().split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)

    @staticmethod
    def remove(path: Path) -> bool:
        """rmdir the cgroup; False while processes are still leaving it."""
        try:
            path.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True


@dataclass(frozen=True, slots=True)
class Lease:
    """An attempt's cgroup, and its OOM-kill count when the attempt got it: a reused cgroup's
    ``memory.events`` counters are cumulative and cannot be reset, so the job's own OOM
    kills are the count at its end less ``oom_base``."""

    path: Path
    oom_base: int = 0


class CgroupPool:
    """Emptied attempt cgroups kept for later attempts instead of rmdir and mkdir.

    Rules, each for a reason:

    * Kept only when provably empty (``reusable``): v2's ``cgroup.events`` says ``populated
      0``, v1's ``tasks`` lists no thread, read after the end's SIGKILLs. That covers what
      the job left behind with setsid or a double fork. Only root can move a process in
      afterwards (cgroup.procs is root's), so it stays empty until it is handed out. A
      cgroup that still holds anything goes the old way: killed and removed.
    * Kept only when the last job left at most ``_REUSE_MAX_CHARGE`` (4 MiB) charged to it
      (``memory.current``), so the next job does not pay for its tmpfs pages or page cache.
    * A bare job's only: a container's has podman's child cgroup and its controllers.
    * Handed out with every setting a fresh one gets written again (v2: ``memory.max``,
      ``memory.swap.max``, ``memory.oom.group``; v1: ``memory.limit_in_bytes`` and
      ``memory.memsw.limit_in_bytes``; as ``MemoryCgroups.create`` would, unlimited and
      defaults where the job has no limit), and with its ``oom_kill`` count as the next
      job's baseline (``Lease``).
    * Kept for the same owner only (a Unix uid): a cgroup's name (the attempt that made it)
      and the counters no write resets (v1's ``memory.max_usage_in_bytes`` and
      ``memory.failcnt``, v2's ``memory.peak`` and ``memory.stat``'s event counts) stay
      readable to the job that gets it next, and one user's job must learn nothing of
      another's. A user's array of short jobs, the case this is for, reuses every time.
    * At most ``size`` kept, all owners together; more are removed. ``drain`` removes them
      all (shutdown); ``MemoryCgroups.sweep_empty`` those a killed agent left.

    Fresh ones are made ``exclusive``: a reused cgroup keeps the name of the attempt that
    made it, and an attempt id sent again must never share a live cgroup.
    """

    def __init__(self, cgroups: MemoryCgroups, size: int) -> None:
        self.cgroups = cgroups
        self.size = size
        # owner's uid -> (cgroup, its oom_kill count), the most recently kept last
        self._idle: dict[int, deque[tuple[Path, int]]] = {}
        self._kept = 0
        self._serial = 0
        self.closed = False

    def __len__(self) -> int:
        return self._kept

    def acquire(self, name: str, memory_mib: int, uid: int) -> Lease:
        """An empty cgroup with ``memory_mib``'s limit: one ``uid``'s jobs left, else a new one
        named ``name``."""
        idle = self._idle.get(uid)
        while idle:
            path, oom_kills = idle.pop()  # the most recently used: its pages are warm
            self._kept -= 1
            if not idle:
                del self._idle[uid]
            try:
                self._configure(path, memory_mib)
            except OSError as exc:  # removed by hand meanwhile, or the limit refused: a new one
                log.info("cgroup %s not reused: %s", path, exc)
                MemoryCgroups.remove(path)
                continue
            return Lease(path, oom_kills)
        try:
            return Lease(self.cgroups.create(name, memory_mib, exclusive=True))
        except FileExistsError:  # a kept cgroup has this name (its attempt id came again)
            self._serial += 1
            return Lease(self.cgroups.create(f"{name}.{os.getpid()}-{self._serial}", memory_mib, exclusive=True))

    def _configure(self, path: Path, memory_mib: int) -> None:
        """Write every setting ``MemoryCgroups.create`` makes, as a fresh cgroup would have it."""
        limited = memory_mib > 0
        limit = str(memory_mib * _MIB)
        if self.cgroups.version == 1:
            # memsw may never be below the limit: lift it first, whichever way the limit moves.
            with contextlib.suppress(OSError):  # absent without swap accounting
                write_text(path / "memory.memsw.limit_in_bytes", "-1")
            write_text(path / "memory.limit_in_bytes", limit if limited else "-1")
            if limited:
                with contextlib.suppress(OSError):
                    write_text(path / "memory.memsw.limit_in_bytes", limit)
            return
        write_text(path / "memory.max", limit if limited else "max")
        with contextlib.suppress(OSError):  # absent without swap accounting
            write_text(path / "memory.swap.max", "0" if limited else "max")
        with contextlib.suppress(OSError):  # absent before Linux 4.19: never set then either
            write_text(path / "memory.oom.group", "1" if limited else "0")

    def keep(self, path: Path, oom_kills: int, uid: int) -> bool:
        """Keep the ended attempt's cgroup for a later one of its owner ``uid`` when the rules
        allow; False: not kept (the caller removes it as before)."""
        if self.closed or self._kept >= self.size or uid < 0:  # < 0: an old entry's, owner unknown
            return False
        try:
            if not reusable(path, self.cgroups.version):
                return False
        except (OSError, ValueError):  # unreadable counters: not provably empty
            return False
        self._idle.setdefault(uid, deque()).append((path, oom_kills))
        self._kept += 1
        return True

    def drain(self) -> None:
        """Remove every kept cgroup (shutdown): they are empty, rmdir is immediate."""
        self.closed = True
        kept = [path for idle in self._idle.values() for path, _ in idle]
        self._idle.clear()
        self._kept = 0
        for path in kept:
            if not MemoryCgroups.remove(path):
                log.warning("kept cgroup %s could not be removed", path)


def reusable(path: Path, version: int) -> bool:
    """Whether an ended attempt's cgroup holds no process and little charged memory.

    v2: ``populated 0`` (none in it or its descendants). v1 has no such flag: ``tasks`` is
    empty (no thread at all). Either way no child cgroup (a link count of 2: one a root job
    made would stay behind in the next job's).
    """
    if os.stat(path).st_nlink != 2:
        return False
    if version == 1:
        if read_small(path / "tasks").strip():
            return False
        return int(read_small(path / "memory.usage_in_bytes")) <= _REUSE_MAX_CHARGE
    if b"populated 0" not in read_small(path / "cgroup.events").splitlines():
        return False
    return int(read_small(path / "memory.current")) <= _REUSE_MAX_CHARGE


class BusyCgroups:
    """Emptied cgroups whose rmdir must wait for their killed processes to leave."""

    def __init__(self) -> None:
        self._paths: set[Path] = set()
        self.loop: asyncio.AbstractEventLoop | None = None

    def __bool__(self) -> bool:
        return bool(self._paths)

    def remove_later(self, path: Path, tries: int) -> None:
        """rmdir ``path`` now, or retry every 50 ms, ``tries`` more times."""
        self._paths.add(path)
        if MemoryCgroups.remove(path):
            self._paths.discard(path)
        elif tries <= 0:
            log.warning("cgroup %s still busy; left in place", path)
        elif self.loop is not None and not self.loop.is_closed():
            self.loop.call_later(_RETRY_S, self.remove_later, path, tries - 1)

    def settle(self, deadline_s: float) -> None:
        """Shutdown: wait briefly for each to empty (their processes were SIGKILLed)."""
        for path in list(self._paths):
            if remove_soon(path, deadline_s):
                self._paths.discard(path)


def remove_soon(path: Path, deadline_s: float = 2.0) -> bool:
    """rmdir a cgroup whose processes were just killed, waiting briefly for them to go."""
    end = time.monotonic() + deadline_s
    while not MemoryCgroups.remove(path):
        if time.monotonic() > end:
            return False
        time.sleep(0.02)  # sync start-up and shutdown paths, no attempts to serve meanwhile
    return True


def write_text(path: str | Path, text: str) -> None:
    """Write a cgroup control file: one open, one write (open()'s buffering costs an fstat
    and an ioctl more on every start)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def parent_tag(state_dir: Path) -> str:
    """What names the cgroup parent of the agent whose state is ``state_dir``."""
    return hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:10]


def _v2_parent(v2_root: Path, tag: str) -> Path:
    return v2_root / f"hpcbatch-{tag}"


def _v1_parent(v1_root: Path, tag: str) -> Path:
    return v1_root / _own_cgroup("memory").lstrip("/") / f"hpcbatch-{tag}"


def agent_parents(state_dir: Path) -> list[Path]:
    """Where the agent whose state is ``state_dir`` keeps its cgroups, in each hierarchy this
    machine has (whether or not it made them): for whoever cleans up after it."""
    v2_root, v1_root = _cgroup_mounts()
    tag = parent_tag(state_dir)
    parents = [_v2_parent(v2_root, tag)] if v2_root is not None else []
    if v1_root is not None:
        with contextlib.suppress(OSError):
            parents.append(_v1_parent(v1_root, tag))
    return parents


def read_small(path: str | Path) -> bytes:
    """A small file (a cgroup counter, /proc) in one read: no buffered file's fstat and ioctl,
    which on every job's exit add up."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


def _cgroup_mounts() -> tuple[Path | None, Path | None]:
    """(cgroup v2 mount, cgroup v1 memory mount) from /proc/self/mounts."""
    v2 = v1 = None
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 4:
                continue
            if parts[2] == "cgroup2" and v2 is None:
                v2 = Path(parts[1])
            elif parts[2] == "cgroup" and "memory" in parts[3].split(",") and v1 is None:
                v1 = Path(parts[1])
    return v2, v1


def _own_cgroup(controller: str) -> str:
    """This process's cgroup path in the v1 hierarchy of ``controller``."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                return path
    raise OSError(f"not in a {controller} cgroup")
