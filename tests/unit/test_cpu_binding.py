"""CPU binding of GPU jobs to their GPUs' NUMA node (node_agent/cpu_binding.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hpcbatch.protocol import GpuFacts
from node_agent.cpu_binding import bind_argv, gpu_local_cpus, numa_node_cpus, parse_cpulist
from tests import prereq

GPUS = [
    GpuFacts(uuid="GPU-0", cpus=[0, 1, 2, 3]),
    GpuFacts(uuid="GPU-1", numa_node=1),
    GpuFacts(uuid="GPU-2"),  # place unknown
]


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    node1 = tmp_path / "devices/system/node/node1"
    node1.mkdir(parents=True)
    (node1 / "cpulist").write_text("4-5,7\n")
    return tmp_path


def test_parse_cpulist() -> None:
    assert parse_cpulist("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert parse_cpulist("") == set()


def test_numa_node_cpus_read_sysfs(sysfs: Path) -> None:
    assert numa_node_cpus(1, sysfs) == {4, 5, 7}
    assert numa_node_cpus(9, sysfs) == set()


def test_a_gpu_job_gets_its_gpus_cpus_within_the_agents(sysfs: Path) -> None:
    allowed = set(range(8))
    assert gpu_local_cpus(["GPU-0"], GPUS, allowed, sysfs) == [0, 1, 2, 3]
    assert gpu_local_cpus(["GPU-1"], GPUS, allowed, sysfs) == [4, 5, 7]  # from its declared NUMA node
    assert gpu_local_cpus(["GPU-0", "GPU-1"], GPUS, allowed, sysfs) == [0, 1, 2, 3, 4, 5, 7]
    assert gpu_local_cpus(["GPU-0"], GPUS, {2, 3, 6}, sysfs) == [2, 3]


def test_unknown_places_mean_no_binding(sysfs: Path) -> None:
    assert gpu_local_cpus(["GPU-0", "GPU-2"], GPUS, set(range(8)), sysfs) == []
    assert gpu_local_cpus(["GPU-nope"], GPUS, set(range(8)), sysfs) == []
    assert gpu_local_cpus(["GPU-0"], GPUS, {6}, sysfs) == []  # none of them is the agent's


@prereq.skipif(shutil.which("taskset") is None, "taskset", "taskset (util-linux) is not installed")
def test_bind_argv_puts_taskset_in_front() -> None:
    taskset = shutil.which("taskset")
    assert bind_argv(["sleep", "1"], [0, 1], "/usr/bin:/bin") == [taskset, "-c", "0,1", "sleep", "1"]
    assert bind_argv(["sleep", "1"], [], "/usr/bin:/bin") == ["sleep", "1"]
    # A missing program is the runner's to report, in its own words.
    assert bind_argv(["no-such-program-x"], [0], "/usr/bin:/bin") == ["no-such-program-x"]
    assert bind_argv(["./relative.sh"], [0], "/usr/bin") == [taskset, "-c", "0", "./relative.sh"]
