"""GPU utilization: NVML read on the agent (fake NVML: no GPU here), exported by the head's /metrics."""

from __future__ import annotations

import asyncio
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hpcbatch import protocol as p
from hpcbatch.head.engine import Engine
from hpcbatch.head.logs import LogStore
from hpcbatch.head.metrics import HeadMetrics
from hpcbatch.head.service import BatchService
from hpcbatch.store import SqliteStore
from node_agent.gpus_nvml import NvmlGpus


def fake_nvml(busy: list[int], init_error: Exception | None = None) -> types.ModuleType:
    """The few pynvml calls utilization needs (the rest are missing, as in an old pynvml), for ``len(busy)`` GPUs at those percentages."""
    fake = types.ModuleType("pynvml")
    calls = {"init": 0}

    def init() -> None:
        calls["init"] += 1
        if init_error is not None:
            raise init_error

    functions: dict[str, Any] = {
        "nvmlInit": init, "nvmlShutdown": lambda: None, "nvmlDeviceGetCount": lambda: len(busy),
        "nvmlDeviceGetHandleByIndex": lambda i: i, "nvmlDeviceGetUUID": lambda h: f"GPU-{h}".encode(),
        "nvmlDeviceGetUtilizationRates": lambda h: types.SimpleNamespace(gpu=busy[h], memory=0),
    }
    for name, function in functions.items():
        setattr(fake, name, function)
    fake.calls = calls  # type: ignore[attr-defined]
    return fake


def test_utilization_is_read_per_gpu_as_a_fraction(monkeypatch: pytest.MonkeyPatch) -> None:
    busy = [37, 100]
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(busy))
    sampler = NvmlGpus()
    sampler.open()  # the agent's one NVML session (discovery, health, usage, utilization)
    assert sampler.utilization() == {"GPU-0": 0.37, "GPU-1": 1.0}
    busy[0] = 5
    assert sampler.utilization() == {"GPU-0": 0.05, "GPU-1": 1.0}


def test_without_nvml_there_is_nothing_and_no_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = fake_nvml([], RuntimeError("driver not loaded"))
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    sampler = NvmlGpus()
    sampler.open()
    assert sampler.utilization() == {} and sampler.utilization() == {}
    assert nvml.calls["init"] == 1  # type: ignore[attr-defined]


def test_the_head_exports_the_last_heartbeats_utilization(tmp_path: Path) -> None:
    async def scrape() -> dict[tuple[str, ...], float]:
        store = SqliteStore(tmp_path / "head.db")
        engine = Engine(store, LogStore(tmp_path / "logs"), send=lambda node, msg: None, clock_ms=lambda: 1)
        metrics = HeadMetrics(BatchService(store, engine, region="local", account="0"))
        facts = p.NodeFacts(name="g1", hostname="g1", addresses=["10.0.0.1"], vcpus=8, memory_mib=1024, gpus=["GPU-0", "GPU-1"])
        engine.on_register("g1", p.Register(instance_id="i", node=facts))
        engine.on_heartbeat("g1", p.AgentHeartbeat(instance_id="i", gpu_utilization={"GPU-0": 0.25, "GPU-1": 0.0}))
        text = metrics.page().decode()
        store.close()
        return {
            (s.labels["node"], s.labels["gpu"]): s.value
            for family in text_string_to_metric_families(text) if family.name == "hpcbatch_gpu_utilization_ratio"
            for s in family.samples
        }

    assert asyncio.run(scrape()) == {("g1", "GPU-0"): 0.25, ("g1", "GPU-1"): 0.0}
