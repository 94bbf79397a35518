"""PyTorch DDP across network-namespace hosts: torchrun on every node, gloo over the fabric.

The GPU-team path (torchrun with MASTER_ADDR/MASTER_PORT/NNODES/NODE_RANK from the job's
environment) proven without a GPU: the CPU build of PyTorch trains examples/ddp_train.py
over gloo between two "hosts". Needs root for the namespaces and torch in the venv
(scripts/setup installs the CPU build when it can).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import prereq
from tests.harness import TestCluster, wait_for

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TORCHRUN = BIN / "torchrun"
SCRIPT = REPO / "examples" / "ddp_train.py"
NODES = 2
PROCS_PER_NODE = 2
FEATURES = 65536  # 256 KiB of gradients per step: enough bytes to see which network carried them


@pytest.fixture(scope="module")
def ns2() -> Iterator[TestCluster]:
    if os.geteuid() != 0:
        prereq.skip("netns", "needs root for network namespaces (CI runs as root)")
    if importlib.util.find_spec("torch") is None or not TORCHRUN.exists():
        prereq.skip("torch", f"PyTorch not installed in {BIN.parent} (scripts/setup installs the CPU build: pip install torch)")
    root = Path(tempfile.mkdtemp(prefix="hpcb-torch-"))
    os.chmod(root, 0o755)
    c = TestCluster(root, nodes=NODES, netns=True)
    try:
        yield c.up()
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)


def torchrun_command(*script_args: str) -> list[str]:
    """The same command for every node: torchrun reads its place from the job's environment."""
    line = (f'exec {TORCHRUN} --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node {PROCS_PER_NODE}'
            f' --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" {SCRIPT} {" ".join(script_args)}')
    return ["sh", "-c", line]


def submit_torchrun(c: TestCluster, command: list[str]) -> str:
    overrides = {
        "command": command,
        "environment": [{"name": "PATH", "value": f"{BIN}:/usr/local/bin:/usr/bin:/bin"}],
        # torchrun and two ranks, each a Python with torch loaded: well over the default 512 MiB.
        "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "3072"}],
    }
    body: dict[str, Any] = {
        "jobName": "ddp", "jobQueue": "default", "jobDefinition": "hpcbatch-default-mnp",
        "timeout": {"attemptDurationSeconds": 120},
        "nodeOverrides": {"numNodes": NODES, "nodePropertyOverrides": [
            {"targetNodes": "0", "containerOverrides": overrides},
            {"targetNodes": "1:", "containerOverrides": overrides},
        ]},
    }
    return str(c.client.submit_job(**body)["jobId"])


def _bytes(c: TestCluster, node: str, iface: str) -> int:
    out = c.on_node(node, ["cat", "/proc/net/dev"]).stdout
    for line in out.splitlines():
        if line.strip().startswith(f"{iface}:"):
            fields = line.split(":", 1)[1].split()
            return int(fields[0]) + int(fields[8])  # rx + tx bytes
    raise AssertionError(f"no {iface} on {node}: {out}")


def test_torchrun_ddp_trains_across_hosts_over_the_fabric(ns2: TestCluster) -> None:
    before = {(n, i): _bytes(ns2, n, i) for n in ns2.node_names for i in ("fab0", "mgmt0")}
    job_id = submit_torchrun(ns2, torchrun_command("--features", str(FEATURES)))
    job = ns2.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=120)
    out = wait_for(lambda: ns2.logs(f"{job_id}#0"), 10, what="rank 0 output")
    assert job["status"] == "SUCCEEDED", (out, ns2.logs(f"{job_id}#1"))

    summary = re.search(r"world_size=(\d+) ranks_seen=\[([\d, ]*)\] hosts=\[([^\]]*)\] "
                        r"loss_first=([\d.e+-]+) loss_last=([\d.e+-]+)", out)
    assert summary, out
    world = NODES * PROCS_PER_NODE
    assert int(summary[1]) == world, out
    assert [int(r) for r in summary[2].split(",")] == list(range(world)), out
    assert sorted(re.findall(r"'([^']+)'", summary[3])) == [f"node{i}" for i in range(1, NODES + 1)], out
    assert float(summary[5]) < float(summary[4]) / 2, out  # it learned, not just moved

    fabric = sum(_bytes(ns2, n, "fab0") - before[(n, "fab0")] for n in ns2.node_names)
    management = sum(_bytes(ns2, n, "mgmt0") - before[(n, "mgmt0")] for n in ns2.node_names)
    assert fabric > 8 * (1 << 20), (fabric, management, out)
    assert management < fabric / 10, (fabric, management)
