"""The local cluster's supervisor: what systemd does for a real cluster's agents.

``hpcbatch cluster up`` starts ``python -m hpcbatch.localsupervisor supervise HOME``; it
looks at the recorded agents twice a second and restarts one that died
(``LocalCluster.tend``), waiting longer after each quick death (``next_restart``, as
systemd's ``RestartSec`` without giving up). A restarted agent kills or reports what its
predecessor left running (node_agent.runner.adopt_orphans). It stops on SIGTERM
(``cluster down``) or when the cluster's record is gone.

Daemons are known by what they are (``hpcbatch.localrecord``): the module below both the
cluster and this supervisor, so neither imports the other back.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

from hpcbatch.localcluster import LocalCluster
from hpcbatch.localrecord import alive

SUPERVISE_INTERVAL_S = 0.5  # how often the supervisor looks at the agents

log = logging.getLogger("hpcbatch.localsupervisor")


def supervise(home: str) -> int:
    """Restart the local cluster's agents when they die, until ``down`` (SIGTERM) or the record goes."""
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
        if isinstance(other, dict) and other.get("pid") != os.getpid() and alive(other):
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
