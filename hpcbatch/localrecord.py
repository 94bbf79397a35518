"""What a local cluster is, as its ``cluster.json`` records it: its shape (``ClusterShape``:
nodes, heads, store, GPUs, namespaces) and its processes. The pieces ``hpcbatch.localcluster``
and its supervisor (``hpcbatch.localsupervisor``) both use, below both of them.

Daemons are known by what they are: the ``--config`` file they were started with
(``running_by_config``), so a pid recorded before a crash, or a daemon restarted by
hand, never misleads ``status``, ``down`` or the supervisor. A recorded process is its pid
*and* its start time (``record_of``, ``alive``): a recycled pid is never taken for ours.
The restart policy (``next_restart``) is pure: time is an argument.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import psutil

from hpcbatch.store.migrate import is_postgresql, redact

SUPERVISOR_MODULE = "hpcbatch.localsupervisor"
RESTART_BACKOFF_S = (0.0, 1.0, 5.0, 30.0)  # waits before restarts that follow quick deaths
STABLE_AFTER_S = 60.0  # an agent that ran this long starts its backoff afresh
DEFAULT_NODES = 4


@dataclass(frozen=True, kw_only=True)
class ClusterShape:
    """What ``LocalCluster.up`` is asked for; None: as recorded (a running cluster) or the default.

    ``netns``: every node in its own network and UTS namespaces (root only).
    ``gpus_per_node``: each agent declares that many GPUs (``GPU-node<i>-<j>``; no devices
    behind them): scheduling and ``CUDA_VISIBLE_DEVICES`` without hardware.
    ``store``: a ``postgresql://`` URL to keep the state in (default: SQLite in the head's
    folder); ``heads``: how many heads share it (one active, the rest standbys).
    ``tls``: HTTPS on the TCP API, with the local CA (``LocalCluster.ca_bundle``).
    """

    nodes: int | None = None
    netns: bool = False
    gpus_per_node: int | None = None
    store: str | None = None
    heads: int | None = None
    tls: bool = True

    def with_defaults(self) -> ClusterShape:
        """The shape a new cluster gets: every count filled in."""
        return replace(
            self, nodes=DEFAULT_NODES if self.nodes is None else self.nodes,
            heads=1 if self.heads is None else self.heads,
            gpus_per_node=0 if self.gpus_per_node is None else self.gpus_per_node,
        )

    def problem(self) -> str | None:
        """The first option that cannot be (of a shape ``with_defaults``), naming it; None if none."""
        if (self.nodes or 0) < 1:
            return "nodes: must be at least 1"
        if (self.heads or 0) < 1:
            return "heads: must be at least 1"
        if self.store and not is_postgresql(self.store):
            return (f"store: {self.store!r} is not a postgresql:// URL "
                    "(without --store the cluster keeps SQLite in its folder)")
        if (self.heads or 1) > 1 and not self.store:
            return "heads: several heads share one PostgreSQL store: give --store postgresql://…"
        if (self.gpus_per_node or 0) < 0:
            return "gpus_per_node: must not be negative"
        return None

    def differences(self, doc: dict[str, Any]) -> list[str]:
        """The options given that differ from the recorded cluster ``doc``, as the user wrote them."""
        differs = []
        if self.nodes is not None and self.nodes != doc.get("nodes"):
            differs.append(f"--nodes {self.nodes} (it has {doc.get('nodes')})")
        if self.heads is not None and self.heads != len(doc.get("heads") or ["head"]):
            differs.append(f"--heads {self.heads} (it has {len(doc.get('heads') or ['head'])})")
        if self.gpus_per_node is not None and self.gpus_per_node != doc.get("gpus_per_node", 0):
            differs.append(f"--gpus-per-node {self.gpus_per_node} (it has {doc.get('gpus_per_node', 0)})")
        if self.store is not None and redact(self.store) != doc.get("store"):
            differs.append(f"--store {redact(self.store)} (it has {doc.get('store')})")
        if self.netns and not doc.get("netns"):
            differs.append("--netns (it has none)")
        return differs


def next_restart(last_start: float, quick: int, now: float) -> tuple[int, float]:
    """An agent found dead at ``now``: its quick deaths in a row, and when to restart it.

    ``last_start``: when it was last started (``-inf``: not by us); ``quick``: its quick
    deaths in a row before this one. Pure: time is an argument.
    """
    quick = quick + 1 if now - last_start < STABLE_AFTER_S else 0
    return quick, now + RESTART_BACKOFF_S[min(quick, len(RESTART_BACKOFF_S) - 1)]


def config_of(proc: psutil.Process) -> str | None:
    """The absolute ``--config`` path a daemon was started with (what it is), or None."""
    try:
        argv = proc.cmdline()
        for i, arg in enumerate(argv):
            if arg == "--config" and i + 1 < len(argv):
                path = argv[i + 1]
            elif arg.startswith("--config="):
                path = arg.split("=", 1)[1]
            else:
                continue
            return os.path.normpath(path if os.path.isabs(path) else os.path.join(proc.cwd(), path))
    except (psutil.Error, OSError):
        return None
    return None


def running_by_config() -> dict[str, psutil.Process]:
    """Every live process started with ``--config FILE``, by the file's absolute path."""
    found: dict[str, psutil.Process] = {}
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid == me or proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        path = config_of(proc)
        if path is not None:
            # A launcher and the daemon it runs with the same argv: keep the newest, the daemon.
            known = found.get(path)
            try:
                if known is None or proc.create_time() >= known.create_time():
                    found[path] = proc
            except psutil.Error:
                continue
    return found


def find_supervisor(home: str) -> psutil.Process | None:
    """A live supervisor of the cluster in ``home``, found by its command line."""
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.cmdline()[-3:] == [SUPERVISOR_MODULE, "supervise", home] and proc.status() != psutil.STATUS_ZOMBIE:
                return proc
        except psutil.Error:
            continue
    return None


def record_of(proc: psutil.Process) -> dict[str, Any]:
    """What cluster.json records of a process: pid and start time (a recycled pid is not it)."""
    return {"pid": proc.pid, "create_time": proc.create_time()}


def alive(record: dict[str, Any]) -> bool:
    """Is the recorded process still the one we started (same pid and start time)?"""
    try:
        proc = psutil.Process(int(record["pid"]))
        same = abs(proc.create_time() - float(record["create_time"])) < 0.01
        return same and bool(proc.status() != psutil.STATUS_ZOMBIE)
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False
