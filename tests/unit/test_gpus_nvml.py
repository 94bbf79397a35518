"""NVML discovery, topology, health and usage, with pynvml's functions replaced (no GPU here).

The fake machine: four GPUs, NVLink pairs (0,1) and (2,3), each pair under one PCIe switch
and on its own NUMA node (CPUs 0-3 and 4-7). Only pynvml's functions are replaced; the
module's own code runs as on a GPU node.
"""

from __future__ import annotations

import types
from typing import Any

import pynvml
import pytest

from node_agent.gpus_nvml import FATAL_XIDS, NvmlGpus

PAIRS = ({0, 1}, {2, 3})


class FakeMachine:
    """The answers NVML would give on the machine above; tests change them as a GPU fails."""

    def __init__(self, count: int = 4) -> None:
        self.count = count
        self.ecc = {i: 0 for i in range(count)}
        self.xids: list[tuple[int, int]] = []  # (gpu index, xid) pending in the event set
        self.lost: set[int] = set()
        self.unreadable: set[int] = set()  # nvmlDeviceGetHandleByIndex fails
        self.no_events = False
        self.shutdown = False

    def install(self, mp: pytest.MonkeyPatch) -> None:
        def same_pair(a: int, b: int) -> bool:
            return any({a, b} <= pair for pair in PAIRS)

        def handle(i: int) -> int:
            if i in self.unreadable:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
            return i

        def ecc(h: int, kind: int, counter: int) -> int:
            assert (kind, counter) == (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC)
            if h in self.lost:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
            return self.ecc[h]

        def event_set_create() -> str:
            if self.no_events:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
            return "events"

        def wait(events: str, timeout_ms: int) -> Any:
            assert events == "events" and timeout_ms == 0
            if not self.xids:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
            index, xid = self.xids.pop(0)
            return types.SimpleNamespace(device=index, eventData=xid, eventType=pynvml.nvmlEventTypeXidCriticalError)

        def memory(h: int) -> Any:
            if h in self.lost:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
            return types.SimpleNamespace(total=80 * 1024**3, used=(h + 1) * 1024**3, free=0)

        def shutdown() -> None:
            self.shutdown = True

        functions: dict[str, Any] = {
            "nvmlInit": lambda: None,
            "nvmlShutdown": shutdown,
            "nvmlDeviceGetCount": lambda: self.count,
            "nvmlDeviceGetHandleByIndex": handle,
            "nvmlDeviceGetUUID": lambda h: f"GPU-{h}",
            "nvmlDeviceGetName": lambda h: b"NVIDIA H100 80GB HBM3",  # bytes before nvidia-ml-py 11.5
            "nvmlDeviceGetMemoryInfo": memory,
            "nvmlDeviceGetMigMode": lambda h: (1, 1) if h == 3 else (0, 0),
            "nvmlDeviceGetNumaNodeId": lambda h: 0 if h < 2 else 1,
            "nvmlDeviceGetCpuAffinity": lambda h, words: [0x0F if h < 2 else 0xF0] + [0] * (words - 1),
            "nvmlDeviceGetP2PStatus": lambda a, b, cap: (
                pynvml.NVML_P2P_STATUS_OK if same_pair(a, b) else pynvml.NVML_P2P_STATUS_NOT_SUPPORTED
            ),
            "nvmlDeviceGetTopologyCommonAncestor": lambda a, b: (
                pynvml.NVML_TOPOLOGY_SINGLE if same_pair(a, b) else pynvml.NVML_TOPOLOGY_SYSTEM
            ),
            "nvmlDeviceGetTotalEccErrors": ecc,
            "nvmlEventSetCreate": event_set_create,
            "nvmlDeviceRegisterEvents": lambda h, kinds, events: None,
            "nvmlEventSetWait": wait,
            "nvmlEventSetFree": lambda events: None,
            "nvmlDeviceGetUtilizationRates": lambda h: types.SimpleNamespace(gpu=10 * (h + 1), memory=0),
        }
        for name, function in functions.items():
            mp.setattr(pynvml, name, function)


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> FakeMachine:
    m = FakeMachine()
    m.install(monkeypatch)
    return m


def test_inventory_reads_identity_memory_and_mig(machine: FakeMachine) -> None:
    nvml = NvmlGpus()
    gpus = nvml.open()
    assert [g.uuid for g in gpus] == ["GPU-0", "GPU-1", "GPU-2", "GPU-3"]
    assert [g.index for g in gpus] == [0, 1, 2, 3]
    assert {g.name for g in gpus} == {"NVIDIA H100 80GB HBM3"}
    assert {g.memory_mib for g in gpus} == {81920}
    assert [g.mig for g in gpus] == [False, False, False, True]
    nvml.close()
    assert machine.shutdown


def test_topology_groups_nvlink_peers_and_pcie_switches(machine: FakeMachine) -> None:
    gpus = NvmlGpus().open()
    assert [g.nvlink_domain for g in gpus] == ["nvl0", "nvl0", "nvl2", "nvl2"]
    assert [g.pcie_switch for g in gpus] == ["pcie0", "pcie0", "pcie2", "pcie2"]


def test_numa_affinity_comes_from_node_id_and_cpu_mask(machine: FakeMachine) -> None:
    gpus = NvmlGpus().open()
    assert [g.numa_node for g in gpus] == [0, 0, 1, 1]
    assert gpus[0].cpus == [0, 1, 2, 3]
    assert gpus[3].cpus == [4, 5, 6, 7]


def test_a_gpu_without_peers_has_no_group(machine: FakeMachine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynvml, "nvmlDeviceGetP2PStatus", lambda a, b, cap: pynvml.NVML_P2P_STATUS_NOT_SUPPORTED)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetTopologyCommonAncestor", lambda a, b: pynvml.NVML_TOPOLOGY_SYSTEM)
    gpus = NvmlGpus().open()
    assert {g.nvlink_domain for g in gpus} == {None}
    assert {g.pcie_switch for g in gpus} == {None}


def test_uncorrectable_ecc_at_start_keeps_the_gpu_out_of_service(machine: FakeMachine) -> None:
    machine.ecc[2] = 3
    gpus = NvmlGpus().open()
    assert gpus[2].unhealthy == "3 volatile uncorrectable ECC errors"
    assert [g.unhealthy for g in gpus if g.index != 2] == [None, None, None]


def test_a_fatal_xid_marks_the_gpu_unhealthy_and_it_stays_so(machine: FakeMachine) -> None:
    nvml = NvmlGpus()
    nvml.open()
    assert nvml.health() == {}
    machine.xids += [(1, 13), (3, 79)]  # 13: an application's fault, not the GPU's
    assert 79 in FATAL_XIDS and 13 not in FATAL_XIDS
    assert nvml.health() == {"GPU-3": "fatal XID 79"}
    assert nvml.health() == {"GPU-3": "fatal XID 79"}  # sticky: the event is consumed once


def test_a_gpu_lost_while_running_is_unhealthy_not_an_error(machine: FakeMachine) -> None:
    nvml = NvmlGpus()
    nvml.open()
    machine.lost.add(0)
    assert nvml.health() == {"GPU-0": "GPU is lost (fallen off the bus)"}
    assert nvml.usage(["GPU-0", "GPU-1"]) == {"GPU-1": (20, 2048)}


def test_ecc_not_supported_is_healthy(machine: FakeMachine, monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(*args: Any) -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetTotalEccErrors", unsupported)
    nvml = NvmlGpus()
    nvml.open()
    assert nvml.health() == {}


def test_without_event_sets_ecc_still_counts(machine: FakeMachine) -> None:
    machine.no_events = True
    nvml = NvmlGpus()
    nvml.open()
    machine.ecc[1] = 1
    assert nvml.health() == {"GPU-1": "1 volatile uncorrectable ECC errors"}


def test_an_unreadable_gpu_is_left_out_of_the_inventory(machine: FakeMachine) -> None:
    machine.unreadable.add(1)
    assert [g.uuid for g in NvmlGpus().open()] == ["GPU-0", "GPU-2", "GPU-3"]


def test_usage_samples_utilization_and_memory(machine: FakeMachine) -> None:
    nvml = NvmlGpus()
    nvml.open()
    assert nvml.usage(["GPU-2", "GPU-unknown"]) == {"GPU-2": (30, 3072)}


def test_no_nvml_means_no_gpus_and_no_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_library() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_library)
    nvml = NvmlGpus()
    assert nvml.open() == []
    assert not nvml.available
    assert nvml.health() == {} and nvml.usage(["GPU-0"]) == {}
    nvml.close()
