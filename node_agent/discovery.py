"""What an agent learns about its machine: the facts it registers with (protocol.NodeFacts)."""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import socket
from typing import Any

import psutil

log = logging.getLogger(__name__)

_MIB = 1024 * 1024


def discover(config_overrides: dict[str, Any]) -> dict[str, Any]:
    """Facts for protocol.NodeFacts; a key in ``config_overrides`` replaces what is found.

    Keys: hostname, addresses, vcpus, memory_mib, gpus, container_runtime. ``name`` and the
    cluster placement fields are the caller's (they come from configuration, not the machine).
    """
    cfg = config_overrides
    vcpus = cfg.get("vcpus")
    if vcpus is None:
        vcpus = _vcpus()
    memory_mib = cfg.get("memory_mib")
    if memory_mib is None:
        total = psutil.virtual_memory().total // _MIB
        memory_mib = max(0, total - int(cfg.get("reserved_memory_mib", 0)))
    gpus = [g["uuid"] for g in gpu_inventory()] or list(cfg.get("gpus") or [])
    runtime = cfg["container_runtime"] if "container_runtime" in cfg else shutil.which("podman")
    return {
        "hostname": cfg.get("hostname") or socket.gethostname(),
        "addresses": list(cfg.get("addresses") or _ipv4_addresses()),
        "vcpus": int(vcpus),
        "memory_mib": int(memory_mib),
        "gpus": gpus,
        "container_runtime": runtime,
    }


def gpu_inventory() -> list[dict[str, Any]]:
    """GPUs seen by NVML (index, uuid, name, memory_mib, minor); [] without it. Never raises."""
    try:
        import pynvml  # optional: nvidia-ml-py, only on GPU nodes
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        log.debug("NVML unavailable: %s", exc)
        return []
    gpus: list[dict[str, Any]] = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append(
                {
                    "index": index,
                    "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
                    "name": _text(pynvml.nvmlDeviceGetName(handle)),
                    "memory_mib": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total) // _MIB,
                    "minor": int(pynvml.nvmlDeviceGetMinorNumber(handle)),
                }
            )
    except Exception as exc:  # a GPU fallen off the bus must not stop the agent
        log.warning("NVML query failed after %d GPUs: %s", len(gpus), exc)
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return gpus


def _vcpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this agent may use, not the whole box
    except (AttributeError, OSError):
        return psutil.cpu_count() or 1


def _ipv4_addresses() -> list[str]:
    """Non-loopback IPv4 addresses of up interfaces; 127.0.0.1 when there is nothing else."""
    stats = psutil.net_if_stats()
    found: list[str] = []
    for ifname, addrs in psutil.net_if_addrs().items():
        if ifname in stats and not stats[ifname].isup:
            continue
        for addr in addrs:
            if addr.family != socket.AF_INET:
                continue
            ip = ipaddress.ip_address(addr.address)
            if ip.is_loopback or ip.is_link_local or addr.address in found:
                continue
            found.append(addr.address)
    return found or ["127.0.0.1"]


def _text(value: str | bytes) -> str:
    # nvidia-ml-py returns str from 11.5 on, bytes before.
    return value.decode() if isinstance(value, bytes) else value
