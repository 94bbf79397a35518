"""STONITH: a lost node with a power driver is powered off, and its job's retry starts at once.

Without a driver, a lost node's retries wait for its agent's fence: the control-plane outage
bound, 600 s by default (hpcbatch.fencing). Here node agents keep that default, and the
head's ``command`` driver "powers a node off" by killing its agent and its job's processes
(what cutting the power does); the retry then starts on the other node within seconds.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from tests.harness import TestCluster, wait_for


def _alive(pid: int) -> bool:
    """Running (a zombie, killed and not yet reaped by its parent, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_a_lost_node_is_powered_off_and_its_job_retried_without_waiting_for_the_fence(tmp_path: Path) -> None:
    power = tmp_path / "power"
    power.mkdir()
    marks = tmp_path / "marks"
    marks.mkdir()
    marks.chmod(0o777)
    # The power-off: kill -9 every process listed for the node ("{node}" is its name).
    command = ["sh", "-c", f"kill -KILL $(cat {power}/{{node}}.pids) && echo {{node}} >> {power}/off"]
    head_extra = f"[power.compute_environments.default]\ndriver = \"command\"\npower_off = {json.dumps(command)}\n" \
                 "timeout_s = 10\n"
    c = TestCluster(tmp_path, nodes=2, node_vcpus=1, head_extra=head_extra)
    pids: list[int] = []
    try:
        c.up()
        job_id = c.submit(
            ["sh", "-c", f'echo $$ > {marks}/"$AWS_BATCH_JOB_ATTEMPT"; '
                         '[ "$AWS_BATCH_JOB_ATTEMPT" = 1 ] && exec sleep 300; exit 0'],
            retryStrategy={"attempts": 2},
        )
        victim = c.wait_status(job_id, "RUNNING")["nodeName"]
        first = int(wait_for(lambda: (marks / "1").exists() and (marks / "1").read_text().strip(), 10,
                             what="the first attempt's pid"))
        pids = [c.procs[victim].pid, first]
        (power / f"{victim}.pids").write_text(" ".join(map(str, pids)) + "\n")
        # The node goes silent (a hung kernel, a dead NIC): its agent can neither heartbeat nor fence.
        os.kill(pids[0], signal.SIGSTOP)
        lost_at = time.monotonic()
        job = c.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=60)
        retried_after = time.monotonic() - lost_at
        assert job["status"] == "SUCCEEDED" and len(job["attempts"]) == 2, job
        assert f"Node {victim} lost" in job["attempts"][0]["statusReason"]
        assert job["attempts"][1]["container"]["exitCode"] == 0
        assert (power / "off").read_text().split() == [victim]  # powered off once
        assert not _alive(first), first  # the first attempt died with its node
        assert retried_after < 60 < 600  # not the agents' 600 s fence
        log = (tmp_path / "head.log").read_text()
        assert f"node {victim} is powered off" in log
        c.procs.pop(victim).wait(timeout=10)
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        c.close()
