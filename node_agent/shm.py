"""What a job leaves in ``/dev/shm``: found and removed when its attempt on the node has ended.

Open MPI's shared-memory transport maps ``sm_segment.HOST.UID.JOBID.RANK`` files (16 MiB
and more) in /dev/shm; mpirun removes them at a clean end, but a daemon killed on another
node (an abnormal end, a terminate) leaves them there for good: a tmpfs filling with every
aborted job. NCCL, UCX, PSM2 and PyTorch do the same with their own names.

Rules (issue 18, "whole nodes are whole"), applied by the runner once an attempt and all its
launched tasks are gone:

* A file is the job's when its owner is the job's uid and it appeared (ctime) after the
  attempt started. A file some live process still has open or mapped is never removed (it
  belongs to something running: another job, or a node sharing this /dev/shm).
* Root owns the system's files too, so for a job running as root only the names of the
  transports above count. The same holds while another attempt of the same user runs on
  the node (its files cannot be told apart by owner and time); otherwise every file of the
  owner from the job's lifetime goes.
* Regular files only; directories and links are left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
# Transient IPC files of MPI/NCCL/UCX/PSM2/PyTorch; the only ones removed for root's jobs.
TRANSPORT_PREFIXES = (
    "sm_segment.", "vader_segment.", "psm2_shm.", "psm_shm.", "nccl-", "ucx_shm", "ompi.", "torch_", "pmix",
)
_SLACK_S = 1.0  # ctime granularity and clock skew between the job's start and its first file


def leftovers(shm_dir: Path, uid: int, since_s: float, any_name: bool) -> list[Path]:
    """Regular files of ``uid`` in ``shm_dir`` that appeared since ``since_s`` (names as above)."""
    found = []
    try:
        entries = list(os.scandir(shm_dir))
    except OSError:
        return []
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not entry.is_file(follow_symlinks=False) or st.st_uid != uid or st.st_ctime < since_s - _SLACK_S:
            continue
        if any_name or entry.name.startswith(TRANSPORT_PREFIXES):
            found.append(Path(entry.path))
    return found


def in_use(paths: Iterable[Path], proc: Path = Path("/proc")) -> set[str]:
    """Those of ``paths`` some live process has open or mapped (read from /proc)."""
    wanted = {str(p) for p in paths}
    if not wanted:
        return set()
    held: set[str] = set()
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(pid_dir / "maps", encoding="utf-8", errors="replace") as maps:
                for line in maps:
                    path = line.rstrip("\n").partition("/")[2]
                    if path and ("/" + path) in wanted:
                        held.add("/" + path)
        with contextlib.suppress(OSError):
            for fd in os.scandir(pid_dir / "fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(fd.path)
                    if target in wanted:
                        held.add(target)
        if held == wanted:
            break
    return held


def clean(uid: int, since_s: float, any_name: bool, shm_dir: Path = SHM_DIR) -> list[str]:
    """Remove the job's leftovers (see the module's rules); returns the names removed."""
    candidates = leftovers(shm_dir, uid, since_s, any_name and uid != 0)
    if not candidates:
        return []
    busy = in_use(candidates)
    removed = []
    for path in candidates:
        if str(path) in busy:
            continue
        with contextlib.suppress(FileNotFoundError):
            try:
                path.unlink()
            except OSError as exc:
                log.warning("cannot remove %s: %s", path, exc)
                continue
            removed.append(path.name)
    if removed:
        log.info("removed %d file(s) the job left in %s: %s", len(removed), shm_dir, ", ".join(sorted(removed)[:8]))
    return removed
