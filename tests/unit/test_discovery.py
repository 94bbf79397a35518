"""Machine discovery: facts that fit protocol.NodeFacts, overrides, NVML optional."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import psutil
import pytest

from hpcbatch.protocol import GpuFacts, NodeFacts
from node_agent.config import ConfigError, DeclaredGpu, load_agent_config
from node_agent.discovery import discover


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


def test_without_nvml_gpus_come_from_config() -> None:
    assert discover({})["gpus"] == []
    found = discover({"gpus": ["GPU-a", {"uuid": "GPU-b", "numa_node": 1, "nvlink_domain": "x"}]})
    assert found["gpus"] == ["GPU-a", "GPU-b"]
    assert found["declared_gpus"] == 2
    b = found["gpu_facts"][1]
    assert (b.index, b.numa_node, b.nvlink_domain) == (1, 1, "x")


def test_gpus_found_by_nvml_win_over_declared_ones() -> None:
    nvml = [GpuFacts(uuid="GPU-0"), GpuFacts(uuid="GPU-1", index=1)]
    found = discover({"gpus": ["GPU-x", "GPU-y", "GPU-z"]}, nvml_gpus=nvml)
    assert found["gpus"] == ["GPU-0", "GPU-1"]
    assert found["declared_gpus"] == 3  # fewer found than declared: the head drains the node


def test_gpu_count_declares_how_many_a_node_must_have() -> None:
    assert discover({"gpus": ["GPU-a"], "gpu_count": 2})["declared_gpus"] == 2


def _config(tmp_path: Path, gpus: str) -> Path:
    (tmp_path / "head.key").write_text("x")
    config = tmp_path / "agent.toml"
    config.write_text(
        f'name = "n1"\nhead = "tcp://h:1"\nstate_dir = "{tmp_path}"\n'
        f'head_public_key = "{tmp_path / "head.key"}"\n{gpus}\n'
    )
    return config


def test_config_declares_gpus_with_topology(tmp_path: Path) -> None:
    config = load_agent_config(_config(tmp_path, 'gpus = ["GPU-a", {uuid = "GPU-b", numa_node = 1}]\ngpu_count = 2'))
    assert config.gpus[0] == "GPU-a" and isinstance(config.gpus[1], DeclaredGpu) and config.gpus[1].numa_node == 1


def test_config_rejects_bad_gpu_declarations(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="distinct"):
        load_agent_config(_config(tmp_path, 'gpus = ["GPU-a", {uuid = "GPU-a"}]'))
    with pytest.raises(ConfigError, match="nvlink"):
        load_agent_config(_config(tmp_path, 'gpus = [{uuid = "GPU-a", nvlink = "x"}]'))  # nvlink_domain
    with pytest.raises(ConfigError, match="gpu_count"):
        load_agent_config(_config(tmp_path, "gpu_count = -1"))
