"""Jobs' work directories hold no setuid file that takes effect: the attempts dir is nosuid,nodev.

A job (bare or in a container) can leave a file in its work directory with the setuid bit,
or a device node; root in a container could even leave one owned by a privileged id. The
agent makes its ``attempts`` directory a mount point of its own, mounted ``nosuid,nodev``, so
the kernel ignores setuid/setgid bits and device nodes anywhere below it, whoever runs them
on the host (docs/security.md, "Containers"):

    mount --bind D D; mount -o remount,bind,nosuid,nodev D

through mount(2) (ctypes), so nothing is spawned. Idempotent: an agent that finds D already
mounted (its predecessor died) only makes sure of the flags. Agents of the namespace test bed
share one file system; each protects its own state directory's ``attempts``. ``release``
(agent shutdown) detaches the mount (MNT_DETACH: attempts left running keep their view).
Only root can mount: a rootless agent runs jobs as itself and logs that it cannot.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MNT_DETACH = 0x2

_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
        _libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return _libc


def _mount(source: Path, target: Path, flags: int) -> None:
    if _c().mount(os.fsencode(source), os.fsencode(target), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def mount_options(path: Path) -> set[str] | None:
    """The per-mount options of the mount whose mount point is ``path``, or None if it is none."""
    target = os.path.realpath(path)
    found: set[str] | None = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            # fields[4]: the mount point (octal escapes for spaces), fields[5]: its options
            if fields[4].encode().decode("unicode_escape") == target:
                found = set(fields[5].split(","))  # the last one listed is on top
    return found


class WorkdirMount:
    """The agent's attempts directory, mounted nosuid,nodev on itself while the agent runs."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.mounted = False  # by this agent (or adopted from its predecessor)

    @classmethod
    def protect(cls, path: Path) -> WorkdirMount:
        """Mount ``path`` nosuid,nodev (or keep it so); failures are logged, never raised."""
        m = cls(path)
        if os.geteuid() != 0:
            log.info("work dirs: not root, %s stays as it is (jobs run as this agent's user)", path)
            return m
        try:
            opts = mount_options(m.path)
            if opts is None:
                _mount(m.path, m.path, MS_BIND)
                opts = set()
            if not {"nosuid", "nodev"} <= opts:
                _mount(m.path, m.path, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
            m.mounted = True
        except OSError as exc:
            log.error("work dirs: cannot mount %s nosuid,nodev (%s): setuid files in jobs' work dirs take effect",
                      path, exc)
        return m

    def release(self) -> None:
        """Undo ``protect`` (agent shutdown)."""
        if not self.mounted:
            return
        self.mounted = False
        if _c().umount2(os.fsencode(self.path), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            log.warning("work dirs: umount %s: %s", self.path, os.strerror(err))
