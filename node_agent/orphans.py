"""What an earlier agent process left running: re-adopted, or reported and cleaned up.

For every journal entry (``node_agent.journal``) with no live attempt of ours: a result on
disk means it ended before the old agent died, and that is reported. Else, when it still
runs and may be re-adopted (single-node, under a shim) and the caller re-adopts, it is
handed to ``readopt`` (the runner watches it again, as slurmd does after a restart with its
jobs under slurmstepd). Else it is reported: with the exit status its shim wrote when it
ended while no agent watched, or killed (its process group, identified by start time) and
reported lost. An ended orphan's container is removed and its cgroup emptied and removed.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
from collections.abc import Callable, Container
from pathlib import Path
from typing import TYPE_CHECKING

from node_agent.attempts import AttemptResult, now_ms
from node_agent.cgroups import MemoryCgroups, remove_soon
from node_agent.container_cgroup import siblings, sweep
from node_agent.journal import Journal, JournalEntry, orphan_result
from node_agent.watching import alive, kill_orphan_group

if TYPE_CHECKING:
    from node_agent.containers import Podman

log = logging.getLogger(__name__)

Readopt = Callable[[JournalEntry], None]


class OrphanAdoption:
    """One pass over the journal (``run``), with the parts an orphan's cleanup needs."""

    def __init__(self, journal: Journal, cgroups: MemoryCgroups | None, containers: Podman | None) -> None:
        self._journal = journal
        self._cgroups = cgroups
        self._containers = containers
        self._removals: list[tuple[subprocess.Popen[bytes], Path]] = []  # containers' podman rm, their cgroup

    def run(self, running: Container[str], readopt: Readopt | None) -> list[AttemptResult]:
        """The results of every orphan that ended or was ended; ``readopt`` gets those that run on."""
        results = []
        for path, entry in self._journal.orphans():
            if entry.attempt_id in running:
                continue
            try:
                result = self._adopt_one(entry, readopt)
            except Exception:  # one bad entry must not stop the agent from starting (a crash loop)
                log.exception("cannot adopt what %s describes; left in place", path)
                continue
            if result is not None:
                path.unlink(missing_ok=True)
                results.append(result)
        self._finish_removals()
        return results

    def _adopt_one(self, entry: JournalEntry, readopt: Readopt | None) -> AttemptResult | None:
        """One journal entry: its result, or None (re-adopted)."""
        # A result on disk means it ended before the old agent died: report the truth.
        result = self._journal.stored_result(entry.attempt_id)
        if result is None:
            is_alive = alive(entry.pid, entry.create_time)
            if is_alive and readopt is not None and entry.readoptable():
                readopt(entry)
                return None
            code = None if is_alive else entry.recorded_status()  # it ended while no agent watched
            if code is None:
                kill_orphan_group(entry.pid, entry.create_time)
            result = orphan_result(entry, code, now_ms())
            self._journal.record_orphan(result)
        self._clean(entry)
        self._journal.remember(result)
        return result

    def _clean(self, entry: JournalEntry) -> None:
        """What an ended orphan held: its container, its cgroup (once podman let go of it)."""
        removal = None
        if entry.container and self._containers is not None:
            removal = self._containers.remove(entry.attempt_id)
        if entry.cgroup is None:
            return
        cgroup = Path(entry.cgroup)
        MemoryCgroups.kill(cgroup)
        if removal is not None:  # the container's cgroup is in it until podman removed it
            self._removals.append((removal, cgroup))
        elif not remove_soon(cgroup):
            log.warning("orphan cgroup %s still busy; left in place", cgroup)

    def _finish_removals(self) -> None:
        """Wait for the containers' removal, then remove their cgroups (all at once, not one by one)."""
        for removal, cgroup in self._removals:
            with contextlib.suppress(subprocess.TimeoutExpired):
                removal.wait(timeout=60)
            if not remove_soon(cgroup):
                log.warning("orphan cgroup %s still busy; left in place", cgroup)
            if self._cgroups is not None and cgroup.is_relative_to(self._cgroups.root):
                sweep(siblings(cgroup, self._cgroups.version, self._cgroups.root))
        self._removals.clear()
