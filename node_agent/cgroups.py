"""The memory cgroups of attempts: one per attempt, under a parent this agent owns.

With a writable memory cgroup (v2 preferred, v1 accepted) each attempt runs in its own
cgroup with its limit and swap off, joined in the child before exec so nothing escapes; an
OOM kill is read from the cgroup's counters. Without one the runner polls RSS instead
(``node_agent.watching.session_rss``). A cgroup is removed once its processes are gone:
right away when it is empty, else retried for a while (``BusyCgroups``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)

_MIB = 1024 * 1024
_RETRY_S = 0.05  # how often a busy cgroup's rmdir is tried again


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
        tag = hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:10]
        try:
            return cls.setup(tag)
        except OSError as exc:
            if mode == "cgroup":
                raise CgroupUnavailable(f"no writable memory cgroup: {exc}") from exc
            log.info("memory limits by RSS polling: no writable memory cgroup (%s)", exc)
            return None

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
                parent = v1_root / _own_cgroup("memory").lstrip("/") / f"hpcbatch-{tag}"
                return cls(parent, 1, v1_root)._make_parent()._probe()
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
        return cls(v2_root / f"hpcbatch-{tag}", 2, v2_root)._make_parent()._probe()

    def _make_parent(self) -> MemoryCgroups:
        self.parent.mkdir(exist_ok=True)
        if self.version == 2:
            write_text(self.parent / "cgroup.subtree_control", "+memory")
        return self

    def _probe(self) -> MemoryCgroups:
        path = self.create(f"probe-{os.getpid()}", 64)
        self.remove(path)
        return self

    def create(self, name: str, memory_mib: int) -> Path:
        """Make the attempt's cgroup with its limit; swap off so the limit is real."""
        path = self.parent / name
        try:
            path.mkdir(exist_ok=True)
        except FileNotFoundError:  # the parent was removed under us (a cleanup by hand)
            self._make_parent()
            path.mkdir(exist_ok=True)
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

    @staticmethod
    def oom_kills(path: Path) -> int:
        """How many processes the kernel's OOM killer ended in this cgroup."""
        for name in ("memory.events", "memory.oom_control"):  # v2, v1
            try:
                fd = os.open(path / name, os.O_RDONLY | os.O_CLOEXEC)  # no buffered file: on every exit
                try:
                    text = os.read(fd, 65536)
                finally:
                    os.close(fd)
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
