"""The agent's attempts directory is a nosuid,nodev mount while it runs (node_agent.workdir_mount); root only."""

from __future__ import annotations

import os
from pathlib import Path

from node_agent.workdir_mount import WorkdirMount, mount_options
from tests import prereq

pytestmark = prereq.skipif(os.geteuid() != 0, "root", "needs root to mount (CI runs as root)")


def _mounts_at(path: Path) -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f if line.split()[4].replace("\\040", " ") == str(path.resolve()))


def test_protect_is_idempotent_and_release_undoes_it(tmp_path: Path) -> None:
    attempts = tmp_path / "state dir" / "attempts"  # a space: mountinfo escapes it
    attempts.mkdir(parents=True)
    first = WorkdirMount.protect(attempts)
    try:
        assert first.mounted and {"nosuid", "nodev"} <= (mount_options(attempts) or set())
        assert os.statvfs(attempts).f_flag & os.ST_NOSUID
        again = WorkdirMount.protect(attempts)  # a restarted agent finds its predecessor's mount
        assert again.mounted and _mounts_at(attempts) == 1
    finally:
        first.release()
    assert mount_options(attempts) is None and not os.statvfs(attempts).f_flag & os.ST_NOSUID
    first.release()  # twice: nothing happens
