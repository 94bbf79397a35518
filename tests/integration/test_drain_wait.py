"""``hpcbatch nodes drain NODE --wait``: returns once the node's running jobs ended; with a
``--timeout`` that expires first it exits 1, names the jobs, and the node stays draining."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.harness import TestCluster


def _cli(c: TestCluster, *args: str) -> list[str]:
    return [sys.executable, "-m", "hpcbatch.cli.main", "--endpoint", c.socket_endpoint, *args]


def test_drain_wait_returns_when_the_running_job_ends(own_cluster: TestCluster, tmp_path: Path) -> None:
    c = own_cluster.up()
    gate = tmp_path / "go"
    running = c.submit(["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"])
    node = c.wait_status(running, "RUNNING")["nodeName"]

    short = subprocess.run(_cli(c, "nodes", "drain", node, "--wait", "--timeout", "0.5"),
                           capture_output=True, text=True, timeout=60, check=False)
    assert short.returncode == 1, short.stdout + short.stderr
    assert f"{node} still DRAINING after 0.5 s" in short.stderr and running in short.stderr
    assert c.nodes()[node]["state"] == "DRAINING"

    waiting = subprocess.Popen(_cli(c, "nodes", "drain", node, "--reason", "upgrade", "--wait", "--timeout", "60"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        gate.touch()
        out, err = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, err
    assert out.strip() == f"{node} DRAINED: upgrade"
    assert c.wait_status(running, "SUCCEEDED")["status"] == "SUCCEEDED"
