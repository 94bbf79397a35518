"""Whole, exclusive GPUs on a loopback cluster with declared GPUs (2 nodes x 2, no devices)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

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
        overlapping = [(n2, g2) for s2, e2, n2, g2 in spans if s2 < e1 - slack and s1 < e2 - slack]
        assert len(overlapping) <= 4, spans  # itself included
        assert overlapping.count((n1, g1)) == 1, f"{g1} on {n1} shared while running: {spans}"
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
    job_id = submit_gpu_job(c, 3, 0)
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
