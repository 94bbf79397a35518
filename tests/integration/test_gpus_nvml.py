"""The NVML path end to end on a machine without a GPU: a real head and agent, with pynvml's
answers replaced at the library boundary (tests/integration/fake_nvml: two NVLink-joined
GPUs, each local to one CPU). What the agent reads from NVML reaches the head, the
scheduler, the job's CPU binding, describe's usage samples, and a runtime XID takes a GPU
out of service.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import TestCluster, wait_for

FAKE_NVML = Path(__file__).resolve().parent / "fake_nvml"
GPU_INFO = Path(__file__).resolve().parents[2] / "examples" / "gpu_info.py"


@pytest.fixture(scope="module")
def nvml_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestCluster, Path]]:
    root = tmp_path_factory.mktemp("nvml")
    state = root / "nvml_state.json"
    state.write_text("{}")
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "FAKE_NVML_STATE")}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(FAKE_NVML), saved["PYTHONPATH"]) if p)
    os.environ["FAKE_NVML_STATE"] = str(state)
    c = TestCluster(root, nodes=1)
    try:
        c.up()
        yield c, state
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        c.close()


def gpu_job(c: TestCluster, gpus: int, command: list[str]) -> str:
    return c.submit(command, containerOverrides={"resourceRequirements": [{"type": "GPU", "value": str(gpus)}]})


def test_the_node_reports_what_nvml_sees(nvml_cluster: tuple[TestCluster, Path]) -> None:
    c, _ = nvml_cluster
    node = c.nodes()["node1"]
    assert node["gpus"] == ["GPU-fake-0", "GPU-fake-1"]
    details = node["gpuDetails"]
    assert [d["name"] for d in details] == ["Fake H100", "Fake H100"]
    assert [d["nvlinkDomain"] for d in details] == ["nvl0", "nvl0"]
    assert [d["numaNode"] for d in details] == [0, 1]


def test_a_running_job_shows_gpu_usage_and_its_cpu_binding(nvml_cluster: tuple[TestCluster, Path]) -> None:
    c, _ = nvml_cluster
    job_id = gpu_job(c, 1, ["sh", "-c", f"{sys.executable} {GPU_INFO}; sleep 2"])
    usage = wait_for(
        lambda: (c.job(job_id)["container"].get("gpuUsage")), 30, what="GPU usage samples in describe"
    )
    assert usage[0]["gpuId"] == "GPU-fake-0"
    assert usage[0]["utilizationPercent"] == 55 and usage[0]["memoryUsedMiB"] == 1234
    assert usage[0]["peakUtilizationPercent"] == 55 and usage[0]["samples"] >= 1
    d = c.wait_status(job_id, "SUCCEEDED", timeout=60)
    assert d["container"]["gpuUsage"][0]["gpuId"] == "GPU-fake-0"  # kept after the job ended
    out = wait_for(lambda: "cpu_affinity=" in (t := c.logs(job_id)) and t, 10, what="gpu_info output")
    assert "cpu_affinity=0\n" in out and "nvidia_visible_devices=GPU-fake-0\n" in out, out


def test_a_fatal_xid_takes_the_gpu_out_of_service(nvml_cluster: tuple[TestCluster, Path]) -> None:
    c, state = nvml_cluster
    state.write_text(json.dumps({"xids": [[1, 79]]}))
    node = wait_for(lambda: (n := c.nodes()["node1"])["unhealthyGpus"] and n, 20, what="GPU-fake-1 out of service")
    assert node["unhealthyGpus"] == {"GPU-fake-1": "fatal XID 79"}
    assert node["state"] == "ACTIVE" and "GPU-fake-1: fatal XID 79" in node["stateReason"]
    pair = gpu_job(c, 2, ["true"])
    try:
        job = wait_for(lambda: (j := c.job(pair)).get("statusReason") and j, 20, what="a wait reason")
        assert job["status"] == "RUNNABLE" and "the most is 1" in job["statusReason"], job
    finally:
        c.client.terminate_job(jobId=pair, reason="test done")
    ones = [gpu_job(c, 1, ["true"]) for _ in range(2)]
    for j in ones:
        assert c.wait_status(j, "SUCCEEDED", timeout=60)["container"]["gpuIds"] == ["GPU-fake-0"]
