"""The local cluster's supervisor: what systemd does for a real cluster's agents.

``hpcbatch cluster up`` starts ``python -m hpcbatch.localsupervisor supervise HOME``; it
looks at the recorded agents twice a second and restarts one that died
(``LocalCluster.tend``), waiting longer after each quick death (``next_restart``, as
systemd's ``RestartSec`` without giving up). A restarted agent kills or reports what its
predecessor left running (node_agent.runner.adopt_orphans). It stops on SIGTERM
(``cluster down``) or when the cluster's record is gone.

Daemons are known by what they are: the ``--config`` file they were started with
(``running_by_config``), so a pid recorded before a crash, or a daemon restarted by
hand, never misleads ``status``, ``down`` or the supervisor.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from typing import Any

import psutil

SUPERVISE_INTERVAL_S = 0.5  # how often the supervisor looks at the agents
RESTART_BACKOFF_S = (0.0, 1.0, 5.0, 30.0)  # waits before restarts that follow quick deaths
STABLE_AFTER_S = 60.0  # an agent that ran this long starts its backoff afresh
SUPERVISOR_MODULE = "hpcbatch.localsupervisor"

log = logging.getLogger("hpcbatch.localsupervisor")


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


def supervise(home: str) -> int:
    """Restart the local cluster's agents when they die, until ``down`` (SIGTERM) or the record goes."""
    from hpcbatch.localcluster import LocalCluster, _alive  # it starts this module's process

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cluster = LocalCluster(home)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    restarts: dict[str, list[float]] = {}
    log.info("supervising the agents of %s (pid %d)", cluster.dir, os.getpid())
    while not stopping:
        doc = cluster.record()
        if doc is None:
            log.info("no cluster recorded in %s any more: stopping", cluster.dir)
            return 0
        other = doc.get("supervisor")
        if isinstance(other, dict) and other.get("pid") != os.getpid() and _alive(other):
            log.info("supervisor %s took over: stopping", other.get("pid"))
            return 0
        for name in cluster.tend(restarts, time.monotonic()):
            log.warning("%s was not running: restarted it (log: %s)", name, cluster.log_path(name))
        time.sleep(SUPERVISE_INTERVAL_S)
    log.info("stopped (SIGTERM)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "supervise":
        sys.exit("usage: python -m hpcbatch.localsupervisor supervise HOME")
    sys.exit(supervise(sys.argv[2]))
