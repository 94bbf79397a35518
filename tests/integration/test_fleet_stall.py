"""A head stopped (SIGSTOP) for longer than the liveness window loses no node and retries no job.

Before hpcbatch.head.liveness, the head stamped a node's "last heard" when it handled a
message, so on resuming its first liveness tick found every node silent for the whole stop
and failed the fleet at once. Now the head's own blind time counts against nobody, and
what arrived meanwhile is read, stamped on arrival, before anyone is judged.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.harness import TestCluster, wait_for

HEARTBEAT_S, LIVENESS = 0.3, 5
STALL_S = HEARTBEAT_S * LIVENESS * 3  # three liveness windows


def test_a_stopped_head_loses_no_node_and_retries_no_job(tmp_path: Path) -> None:
    c = TestCluster(tmp_path, nodes=3, heartbeat_s=HEARTBEAT_S, liveness=LIVENESS, node_vcpus=1)
    try:
        c.up()
        jobs = [c.submit(["sleep", str(STALL_S + 3)], containerOverrides={"vcpus": 1}) for _ in range(3)]
        on = {c.wait_status(j, "RUNNING")["nodeName"] for j in jobs}
        assert on == {"node1", "node2", "node3"}
        head = c.procs["head"]
        head.send_signal(signal.SIGSTOP)
        try:
            time.sleep(STALL_S)  # the stall itself: nothing to wait on
        finally:
            head.send_signal(signal.SIGCONT)
        for job in jobs:
            done = c.wait_status(job, "SUCCEEDED", "FAILED", timeout=30)
            assert done["status"] == "SUCCEEDED", done
            assert len(done["attempts"]) == 1, done["attempts"]
        assert all(n["state"] == "ACTIVE" for n in c.nodes().values())
        log = (c.root / "head.log").read_text(errors="replace")
        assert " lost: " not in log
        assert "stalled for" in log  # the head saw its own stop
        # The nodes carry on: a new job runs at once.
        wait_for(lambda: c.wait_status(c.submit(["true"]), "SUCCEEDED")["status"] == "SUCCEEDED", 30)
    finally:
        c.close()
