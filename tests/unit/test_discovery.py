"""Machine discovery: facts that fit protocol.NodeFacts, overrides, NVML optional."""

from __future__ import annotations

import ipaddress
import os
import sys
import types
from typing import Any

import psutil
import pytest

from hpcbatch.protocol import NodeFacts
from node_agent.discovery import discover, gpu_inventory


def _has_pynvml() -> bool:
    try:
        import pynvml  # noqa: F401
    except ImportError:
        return False
    return True


def test_discovered_facts_build_node_facts() -> None:
    facts = discover({})
    node = NodeFacts(name="n1", **facts)
    assert node.vcpus == len(os.sched_getaffinity(0))
    total_mib = psutil.virtual_memory().total // (1024 * 1024)
    assert node.memory_mib == total_mib
    assert node.hostname
    assert node.addresses
    for address in node.addresses:
        assert ipaddress.ip_address(address).version == 4
    if node.addresses != ["127.0.0.1"]:
        assert all(not ipaddress.ip_address(a).is_loopback for a in node.addresses)


def test_overrides_replace_what_is_found() -> None:
    facts = discover(
        {
            "vcpus": 64,
            "memory_mib": 1000,
            "addresses": ["10.0.0.5"],
            "container_runtime": "/opt/podman",
            "hostname": "node7",
        }
    )
    assert (facts["vcpus"], facts["memory_mib"], facts["addresses"]) == (64, 1000, ["10.0.0.5"])
    assert (facts["container_runtime"], facts["hostname"]) == ("/opt/podman", "node7")


def test_reserved_memory_is_subtracted() -> None:
    total = discover({})["memory_mib"]
    assert discover({"reserved_memory_mib": 512})["memory_mib"] == total - 512


@pytest.mark.skipif(_has_pynvml(), reason="pynvml is installed: NVML decides the GPUs here")
def test_without_nvml_gpus_come_from_config() -> None:
    assert gpu_inventory() == []
    assert discover({})["gpus"] == []
    assert discover({"gpus": ["GPU-a", "GPU-b"]})["gpus"] == ["GPU-a", "GPU-b"]


def _fake_pynvml(init_error: Exception | None) -> types.ModuleType:
    """A stand-in for nvidia-ml-py (third-party, absent here) with two GPUs."""
    fake = types.ModuleType("pynvml")

    def nvml_init() -> None:
        if init_error is not None:
            raise init_error

    memory = types.SimpleNamespace(total=80 * 1024**3)
    functions: dict[str, Any] = {
        "nvmlInit": nvml_init,
        "nvmlShutdown": lambda: None,
        "nvmlDeviceGetCount": lambda: 2,
        "nvmlDeviceGetHandleByIndex": lambda i: i,
        "nvmlDeviceGetUUID": lambda h: f"GPU-{h}",
        "nvmlDeviceGetName": lambda h: b"NVIDIA H100",  # old versions return bytes
        "nvmlDeviceGetMemoryInfo": lambda h: memory,
        "nvmlDeviceGetMinorNumber": lambda h: h,
    }
    for name, function in functions.items():
        setattr(fake, name, function)
    return fake


def test_gpu_inventory_reads_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(None))
    assert gpu_inventory() == [
        {"index": 0, "uuid": "GPU-0", "name": "NVIDIA H100", "memory_mib": 81920, "minor": 0},
        {"index": 1, "uuid": "GPU-1", "name": "NVIDIA H100", "memory_mib": 81920, "minor": 1},
    ]
    assert discover({"gpus": ["ignored"]})["gpus"] == ["GPU-0", "GPU-1"]


def test_gpu_inventory_never_raises_when_nvml_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(RuntimeError("driver not loaded")))
    assert gpu_inventory() == []
    assert discover({"gpus": ["GPU-x"]})["gpus"] == ["GPU-x"]
