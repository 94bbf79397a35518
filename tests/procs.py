"""This test's own processes, never the whole machine's: other clusters run beside ours.

Every process of a job (the main process, mpirun's daemons started through the bridge, the
ranks, a container's processes) carries the job's environment, and so ``AWS_BATCH_JOB_ID``:
the job's id (``ID``, ``ID#node`` for a multi-node child, ``ID:index`` for an array child).
Job ids are unique, so a scan for them finds this cluster's processes and no one else's.
"""

from __future__ import annotations

import os
from pathlib import Path


def _environ(pid: str) -> dict[bytes, bytes] | None:
    try:
        raw = Path("/proc", pid, "environ").read_bytes()
    except OSError:  # gone, or a kernel thread
        return None
    return dict(v.split(b"=", 1) for v in raw.split(b"\0") if b"=" in v)


def _args(pid: str) -> str:
    try:
        return Path("/proc", pid, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _zombie(pid: str) -> bool:
    try:
        stat = Path("/proc", pid, "stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


def job_processes(job_id: str) -> list[str]:
    """``"PID ARGS"`` of each live process whose environment names job ``job_id``."""
    ids = {job_id.encode()}
    prefixes = (f"{job_id}#".encode(), f"{job_id}:".encode())
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or entry.name == str(os.getpid()):
            continue
        env = _environ(entry.name)
        value = env.get(b"AWS_BATCH_JOB_ID") if env else None
        if value is None or not (value in ids or value.startswith(prefixes)):
            continue
        if not _zombie(entry.name):
            found.append(f"{entry.name} {_args(entry.name)}")
    return found
