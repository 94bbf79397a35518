"""A container inside its attempt's memory cgroup, so an OOM kill in it is seen after ``--rm``.

Why: ``podman run --rm`` removes the container's own cgroup before it exits, and with it the
``oom_kill`` counter; podman's ``State.OOMKilled`` needs the container kept and is not set
at all with cgroup v1 (conmon 2.1 on a hybrid layout). So the agent makes the attempt's
memory cgroup as for a bare job (the limit, swap off) and gives it to podman as
``--cgroup-parent``: the container's cgroup is a child of it, under its limit.

* cgroup v2: ``memory.events`` counts descendants' OOM kills, so the attempt cgroup's
  ``oom_kill`` says it after the child is gone. The container also gets ``--memory`` (its
  own ``memory.max`` shows the limit).
* cgroup v1: counters are not hierarchical, and an OOM notification reaches only the cgroup
  whose limit was hit and its descendants. So the limit is on the attempt cgroup only (no
  ``--memory``: a child limit would take the OOM where we cannot see it) and an eventfd
  registered on its ``memory.oom_control`` (``cgroup.event_control``) before podman starts
  counts the OOMs; the container still reads its limit in ``memory.stat``
  (``hierarchical_memory_limit``). podman creates the parent's path in every v1 hierarchy
  (cpu, pids..., and the unified one of a hybrid layout); those directories are removed once the container's are gone
  (``sweep``).
* ``--cgroups=no-conmon``: conmon and podman's cleanup process stay in the agent's cgroup,
  not charged to the job's memory, and leave nothing in the attempt's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

_V2_CONTROLLERS = ("cpu", "cpuset", "io", "pids")  # what runc sets for a container besides memory


class ContainerCgroup:
    """The attempt cgroup a container runs under: ``--cgroup-parent``, and whether it OOMed."""

    def __init__(self, path: Path, version: int, root: Path) -> None:
        self.path = path
        self.version = version
        self.root = root
        self.parent_arg = "/" + str(path.relative_to(root))  # podman's --cgroup-parent
        self._event: int | None = None
        self._control: int | None = None

    @classmethod
    def attach(cls, path: Path, version: int, root: Path) -> ContainerCgroup:
        """Ready ``path`` (made with the job's limit) for podman; OSError if it cannot be watched."""
        cg = cls(path, version, root)
        if version == 2:
            for level in (root, path.parent):  # runc sets cpu/pids/... in the child: hand them down
                for name in _V2_CONTROLLERS:
                    with contextlib.suppress(OSError):
                        (level / "cgroup.subtree_control").write_text(f"+{name}")
            return cg
        cg._event = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            cg._control = os.open(path / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
            (path / "cgroup.event_control").write_text(f"{cg._event} {cg._control}")
        except OSError:
            cg.close()
            raise
        return cg

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer acted in the container (call after it ended)."""
        if self.version == 2:
            try:
                text = (self.path / "memory.events").read_text()
            except OSError:
                return False
            return any(line.split()[:1] == ["oom_kill"] and line.split()[1] != "0" for line in text.splitlines())
        if self._event is None:
            return False
        try:
            return os.eventfd_read(self._event) > 0
        except BlockingIOError:  # no OOM: the counter is zero
            return False

    def close(self) -> None:
        for fd in (self._event, self._control):
            if fd is not None:
                os.close(fd)
        self._event = self._control = None

    def siblings(self) -> list[Path]:
        """The same path in the other hierarchies, where podman made it (v2: none)."""
        return siblings(self.path, self.version, self.root)


def siblings(path: Path, version: int, root: Path) -> list[Path]:
    """``path`` (of the memory hierarchy at ``root``) in the other hierarchies where it exists."""
    if version == 2:
        return []
    relative = path.relative_to(root)
    return [Path(mount) / relative for mount in _other_mounts() if (Path(mount) / relative).is_dir()]


_pending: set[Path] = set()  # sibling directories still holding a container's (podman removes it)


def sweep(paths: Sequence[Path] = ()) -> None:
    """rmdir ``paths`` (deepest first) and those an earlier sweep could not remove yet."""
    _pending.update(paths)
    for path in sorted(_pending, key=lambda p: len(p.parts), reverse=True):
        try:
            path.rmdir()
        except FileNotFoundError:
            pass
        except OSError:  # a container's cgroup is still in it
            continue
        _pending.discard(path)


def _other_mounts() -> list[str]:
    """Mount points of the hierarchies beside v1's memory one: the other v1 controllers, named
    ones (systemd) and, on a hybrid layout, the unified v2 one, where runc also makes the path."""
    mounts = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4 and (
                parts[2] == "cgroup2" or (parts[2] == "cgroup" and "memory" not in parts[3].split(","))
            ):
                mounts.append(parts[1])
    return mounts
