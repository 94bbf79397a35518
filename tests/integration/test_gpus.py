"""Whole, exclusive GPUs on a loopback cluster with declared GPUs (2 nodes x 2, no devices).

The last tests add two nodes in a compute environment of their own ("topo"): node3 declares
four GPUs with topology (NVLink pairs 0+2 and 1+3, each pair's CPUs), GPU 3 out of service;
node4 declares one GPU but must have two (``gpu_count``), so the head drains it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.errors import ClientError
from tests.harness import TestCluster, wait_for

ECHO = "echo $CUDA_VISIBLE_DEVICES $NVIDIA_VISIBLE_DEVICES"


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    c = TestCluster(tmp_path_factory.mktemp("gpus"), nodes=2, gpus_per_node=2)
    try:
        yield c.up()
    finally:
        c.close()


def submit_gpu_job(c: TestCluster, gpus: int, seconds: float) -> str:
    return c.submit(
        ["sh", "-c", f"{ECHO}; sleep {seconds}"],
        containerOverrides={"resourceRequirements": [{"type": "GPU", "value": str(gpus)}]},
    )


def nodes_by_name(c: TestCluster) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in c.client.list_nodes()["nodes"]}


def test_nodes_list_their_declared_gpus(gpu_cluster: TestCluster) -> None:
    nodes = nodes_by_name(gpu_cluster)
    assert nodes["node1"]["gpus"] == ["GPU-node1-0", "GPU-node1-1"]
    assert nodes["node2"]["gpus"] == ["GPU-node2-0", "GPU-node2-1"]
    assert all(n["allocatedGpus"] == 0 for n in nodes.values())


def test_five_one_gpu_jobs_share_four_gpus_exclusively(gpu_cluster: TestCluster) -> None:
    c = gpu_cluster
    jobs = [submit_gpu_job(c, 1, 2) for _ in range(5)]
    # While the first four run, the nodes show every GPU allocated.
    wait_for(
        lambda: all(n["allocatedGpus"] == 2 for n in nodes_by_name(c).values()), 20,
        what="all four GPUs allocated",
    )
    holders = {g: j for n in nodes_by_name(c).values() for g, j in n["gpuHolders"].items()}
    assert len(holders) == 4 and len(set(holders.values())) == 4
    details = [c.wait_status(j, "SUCCEEDED", timeout=40) for j in jobs]
    spans = []
    for d in details:
        node, gpus = d["nodeName"], d["container"]["gpuIds"]
        assert len(gpus) == 1 and gpus[0].startswith(f"GPU-{node}-")
        index = gpus[0].rsplit("-", 1)[1]
        out = wait_for(lambda d=d: c.logs(d["jobId"]), 10, what="job output")
        assert out.split() == [index, gpus[0]], out  # CUDA index as the job sees it, then the UUID
        spans.append((d["startedAt"], d["stoppedAt"], node, gpus[0]))
    # Times are stamped where they happen (start: the agent, stop: after the reap), so a
    # job that started on a freed GPU may show a few ms of overlap with its predecessor.
    slack = 200
    for s1, e1, n1, g1 in spans:
        # At most four running at any instant (checked at each start; a pairwise overlap count
        # would also count a job's predecessor and successor on one GPU, which never met).
        running = [(n2, g2) for s2, e2, n2, g2 in spans if s2 <= s1 < e2 - slack]
        assert len(running) <= 4, spans  # itself included
        sharing = [(n2, g2) for s2, e2, n2, g2 in spans if s2 < e1 - slack and s1 < e2 - slack]
        assert sharing.count((n1, g1)) == 1, f"{g1} on {n1} shared while running: {spans}"
    assert len({(n, g) for _, _, n, g in spans}) == 4  # the fifth ran on a freed device
    wait_for(
        lambda: all(n["allocatedGpus"] == 0 for n in nodes_by_name(c).values()), 10,
        what="GPUs freed",
    )


def test_a_two_gpu_job_sees_two_devices(gpu_cluster: TestCluster) -> None:
    c = gpu_cluster
    job_id = submit_gpu_job(c, 2, 0)
    d = c.wait_status(job_id, "SUCCEEDED", timeout=30)
    node = d["nodeName"]
    assert d["container"]["gpuIds"] == [f"GPU-{node}-0", f"GPU-{node}-1"]
    out = wait_for(lambda: c.logs(job_id), 10, what="job output")
    assert out.split() == ["0,1", f"GPU-{node}-0,GPU-{node}-1"], out


def test_a_job_needing_more_gpus_than_any_node_waits_naming_gpus(gpu_cluster: TestCluster) -> None:
    c = gpu_cluster
    three = {"resourceRequirements": [{"type": "GPU", "value": "3"}]}
    with pytest.raises(ClientError, match="gpus 3: the node with the most GPUs in compute environments default has 2"):
        c.submit(["true"], containerOverrides=dict(three))  # refused at submit, with the numbers (issue 18)
    job_id = c.submit(["true"], containerOverrides=three, tags={"hpcbatch:allowUnsatisfiable": "true"})
    try:
        job = wait_for(
            lambda: (j := c.job(job_id))["status"] == "RUNNABLE" and j.get("statusReason") and j, 20,
            what="a wait reason",
        )
        assert "3 GPUs" in job["statusReason"], job["statusReason"]
    finally:
        c.client.terminate_job(jobId=job_id, reason="test done")


def test_a_job_without_gpus_sees_none_on_a_gpu_node(gpu_cluster: TestCluster) -> None:
    gpus = gpu_cluster
    job_id = gpus.submit(["sh", "-c", 'echo "cuda=[$CUDA_VISIBLE_DEVICES] nvidia=[$NVIDIA_VISIBLE_DEVICES]"'])
    gpus.wait_status(job_id, "SUCCEEDED")
    assert "cuda=[] nvidia=[void]" in wait_for(lambda: gpus.logs(job_id), 10, what="output")


# ------------------------------------------------ declared topology, health, count (node3, node4)
GPU_INFO = Path(__file__).resolve().parents[2] / "examples" / "gpu_info.py"
NODE3_GPUS = [  # NVLink pairs (0, 2) and (1, 3); pair 0+2 local to CPU 0, pair 1+3 to CPU 1
    {"uuid": f"GPU-node3-{i}", "nvlink_domain": f"nvl{i % 2}", "numa_node": i % 2, "cpus": [i % 2]}
    for i in range(4)
]
NODE3_GPUS[3]["unhealthy"] = "uncorrectable ECC errors (declared by the admin)"


@pytest.fixture(scope="module")
def topo(gpu_cluster: TestCluster) -> TestCluster:
    c = gpu_cluster
    tables = ", ".join("{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in g.items()) + "}" for g in NODE3_GPUS)
    extra3 = f'compute_environment = "topo"\ngpus = [{tables}]'
    c.add_agent("node3", extra=extra3)
    c.add_agent("node4", extra='compute_environment = "topo"\ngpus = ["GPU-node4-0"]\ngpu_count = 2')
    c.start_agent("node3")
    c.start_agent("node4")
    c.client.create_compute_environment(computeEnvironmentName="topo", type="UNMANAGED")
    c.client.create_job_queue(
        jobQueueName="topo", priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "topo"}],
    )
    c.wait_active(["node3"])
    return c


def gpu_info_job(c: TestCluster, gpus: int, queue: str = "topo", sleep: float = 0) -> str:
    command = [sys.executable, str(GPU_INFO)] if not sleep else ["sh", "-c", f"{ECHO}; sleep {sleep}"]
    return c.submit(
        command, jobQueue=queue,
        containerOverrides={"resourceRequirements": [{"type": "GPU", "value": str(gpus)}]},
    )


def info(c: TestCluster, job_id: str) -> dict[str, str]:
    out = wait_for(lambda: "cpu_affinity=" in (text := c.logs(job_id)) and text, 10, what="gpu_info output")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_a_node_reporting_fewer_gpus_than_declared_is_drained(topo: TestCluster) -> None:
    node4 = wait_for(lambda: (n := nodes_by_name(topo).get("node4")) and n["state"] == "DRAINED" and n, 20,
                     what="node4 drained")
    assert "reports 1 GPUs" in node4["stateReason"] and "declares 2" in node4["stateReason"], node4


def test_nodes_list_shows_topology_and_the_unhealthy_gpu(topo: TestCluster) -> None:
    node3 = nodes_by_name(topo)["node3"]
    assert node3["state"] == "ACTIVE"
    assert "GPU-node3-3" in node3["stateReason"] and "uncorrectable ECC" in node3["stateReason"]
    assert node3["unhealthyGpus"] == {"GPU-node3-3": NODE3_GPUS[3]["unhealthy"]}
    assert node3["freeGpus"] == 3
    assert [d["nvlinkDomain"] for d in node3["gpuDetails"]] == ["nvl0", "nvl1", "nvl0", "nvl1"]


def test_a_two_gpu_job_gets_an_nvlink_pair_and_its_numa_cpus(topo: TestCluster) -> None:
    job_id = gpu_info_job(topo, 2)
    d = topo.wait_status(job_id, "SUCCEEDED", timeout=60)
    assert d["container"]["gpuIds"] == ["GPU-node3-0", "GPU-node3-2"]  # one NVLink domain, not 0+1
    seen = info(topo, job_id)
    assert seen["cuda_visible_devices"] == "0,2"
    assert seen["nvidia_visible_devices"] == "GPU-node3-0,GPU-node3-2"
    assert seen["cpu_affinity"] == "0", seen  # the pair's NUMA CPUs, bound by the agent
    assert "torch_cuda_available" in seen


def test_an_unhealthy_gpu_is_never_handed_out(topo: TestCluster) -> None:
    c = topo
    jobs = [gpu_info_job(c, 1, sleep=1) for _ in range(4)]  # three healthy GPUs for four jobs
    details = [c.wait_status(j, "SUCCEEDED", timeout=60) for j in jobs]
    used = {g for d in details for g in d["container"]["gpuIds"]}
    assert used <= {"GPU-node3-0", "GPU-node3-1", "GPU-node3-2"}, used
    assert "GPU-node3-3" not in nodes_by_name(c)["node3"]["gpuHolders"]


def test_a_cpu_job_runs_on_a_gpu_node_when_no_cpu_only_node_can_hold_it(topo: TestCluster) -> None:
    """Steering only prefers: in "topo" (node3 with GPUs, node4 drained) a CPU job still runs."""
    job_id = topo.submit(["true"], jobQueue="topo")
    assert topo.wait_status(job_id, "SUCCEEDED")["nodeName"] == "node3"
