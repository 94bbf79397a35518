"""A head stopped for longer than the old fence costs no running job: the outage bound decides.

Before the outage bound (hpcbatch.fencing.OUTAGE_BOUND_S), an agent's fence was derived from
the heartbeats: 6 node-lost timeouts, at least 15 s (30 s with the default 1 s x 5). With the
harness's fast heartbeats (0.3 s x 5) that was 15 s, so stopping the head for 16 s killed
every running job. Now the default is the bound (600 s), whatever the heartbeats: node1 runs
on the default and its job finishes; node2 is given a short bound explicitly and fences,
so the same outage shows that the configured bound, not the heartbeat, decides.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from hpcbatch.fencing import OUTAGE_BOUND_S, default_fence_after_s
from tests.harness import TestCluster, wait_for

HEARTBEAT_S, LIVENESS = 0.3, 5
OLD_FENCE_S = 15.0  # what these heartbeats gave before: max(15 s, 0.3 x 5 x 6)
OUTAGE_S = OLD_FENCE_S + 1
SHORT_BOUND_S = 4.0  # node2's explicit fence_after_s


def test_a_head_stopped_longer_than_the_old_fence_costs_no_running_job(tmp_path: Path) -> None:
    assert default_fence_after_s(HEARTBEAT_S, LIVENESS) == OUTAGE_BOUND_S >= 600
    c = TestCluster(tmp_path, nodes=2, heartbeat_s=HEARTBEAT_S, liveness=LIVENESS, node_vcpus=1)
    c.add_agent("node2", extra=f"vcpus = 1\nfence_after_s = {SHORT_BOUND_S}\n")
    try:
        c.up()
        # One job per node (one vCPU each): it outlives the outage (it runs until the head is
        # back, at most a minute more), then exits with its own code.
        back = c.root / "head-back"
        wait = f'end=$(($(date +%s) + {int(OUTAGE_S) + 60})); while [ ! -e {back} ] && [ "$(date +%s)" -lt "$end" ]; do sleep 0.2; done'
        jobs = {c.submit(["sh", "-c", f"{wait}; exit 3"]) for _ in range(2)}
        on = {c.wait_status(j, "RUNNING")["nodeName"]: j for j in jobs}
        assert set(on) == {"node1", "node2"}, on
        c.kill("head", signal.SIGTERM)  # systemctl stop
        stopped = time.monotonic()
        fenced = c.root / "node2.log"
        wait_for(lambda: "no head has heard this node" in fenced.read_text(), OUTAGE_S, what="node2 to fence")
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))  # the outage itself
        c.start_head()
        assert c.job(on["node1"])["status"] == "RUNNING"
        back.touch()
        kept = c.wait_status(on["node1"], "SUCCEEDED", "FAILED", timeout=30)
        assert kept["status"] == "FAILED" and kept["container"]["exitCode"] == 3, kept  # its own exit code
        assert len(kept["attempts"]) == 1
        lost = c.wait_status(on["node2"], "SUCCEEDED", "FAILED", timeout=30)
        assert "fenced" in (lost.get("statusReason") or ""), lost
        log = (c.root / "node1.log").read_text()
        assert "no head has heard this node" not in log
        c.wait_active()
    finally:
        c.close()
