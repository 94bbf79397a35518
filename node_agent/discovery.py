"""What an agent learns about its machine: the facts it registers with (protocol.NodeFacts)."""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import msgspec
import psutil

from hpcbatch.protocol import GpuFacts

log = logging.getLogger(__name__)

_MIB = 1024 * 1024


def discover(
    config_overrides: dict[str, Any], *, sysfs: str | Path = "/sys", nvml_gpus: list[GpuFacts] | None = None
) -> dict[str, Any]:
    """Facts for protocol.NodeFacts; a key in ``config_overrides`` replaces what is found.

    Keys: hostname, addresses, vcpus, memory_mib, gpus, gpu_count, container_runtime,
    fabric_interface, fabric_kind. ``name`` and the cluster placement fields are the caller's
    (they come from configuration, not the machine). ``sysfs`` is where /sys is (tests give a
    fake tree). ``nvml_gpus``: what NVML found (gpus_nvml); none found: the declared ``gpus``.
    The declared count (``gpu_count``, else how many ``gpus`` are declared) goes along, so the
    head drains a node that has fewer.
    """
    cfg = config_overrides
    vcpus = cfg.get("vcpus")
    if vcpus is None:
        vcpus = _vcpus()
    memory_mib = cfg.get("memory_mib")
    if memory_mib is None:
        total = psutil.virtual_memory().total // _MIB
        memory_mib = max(0, total - int(cfg.get("reserved_memory_mib", 0)))
    declared = declared_gpu_facts(list(cfg.get("gpus") or []))
    gpu_facts = nvml_gpus or declared
    gpu_count = cfg.get("gpu_count")
    runtime = cfg["container_runtime"] if "container_runtime" in cfg else shutil.which("podman")
    return {
        "hostname": cfg.get("hostname") or socket.gethostname(),
        "addresses": list(cfg.get("addresses") or _ipv4_addresses()),
        "vcpus": int(vcpus),
        "memory_mib": int(memory_mib),
        "gpus": [g.uuid for g in gpu_facts],
        "gpu_facts": gpu_facts,
        "declared_gpus": int(gpu_count) if gpu_count is not None else len(declared),
        "container_runtime": runtime,
        **fabric_facts(cfg.get("fabric_interface"), cfg.get("fabric_kind"), sysfs=sysfs),
    }


def fabric_facts(
    interface: str | None, kind: str | None = None, *, sysfs: str | Path = "/sys"
) -> dict[str, Any]:
    """The fast network MPI/NCCL should use: fabric_interface, _address, _kind, _devices.

    EFA first (an RDMA device bound to the ``efa`` driver), then InfiniBand/RoCE (any other
    RDMA device, e.g. mlx5_0), else the configured ``interface`` as plain TCP. The
    interface is the RDMA device's own netdev when it has one (IPoIB, RoCE; EFA has none),
    else the configured one; its IPv4 address is ``fabric_address``. A configured ``kind``
    wins over what is found (provisioned data, e.g. to force TCP on an IB node).
    """
    if kind is not None and kind not in FABRIC_KINDS:
        raise ValueError(f"fabric_kind must be one of {', '.join(FABRIC_KINDS)}, not {kind!r}")
    root = Path(sysfs)
    efa, ib = rdma_devices(root)
    found_kind, devices = ("efa", efa) if efa else ("infiniband", ib) if ib else ("tcp", [])
    if kind is not None and kind != found_kind:
        found_kind = kind
        devices = efa if kind == "efa" else ib if kind == "infiniband" else []
    netdev = next((n for d in devices for n in _netdevs(root, d)), None)
    iface = netdev or interface
    if iface is None and found_kind == "tcp":
        return {"fabric_interface": None, "fabric_address": None, "fabric_kind": None, "fabric_devices": []}
    return {
        "fabric_interface": iface,
        "fabric_address": interface_ipv4(iface) if iface else None,
        "fabric_kind": found_kind,
        "fabric_devices": devices,
    }


FABRIC_KINDS = ("efa", "infiniband", "tcp")


def rdma_devices(sysfs: Path) -> tuple[list[str], list[str]]:
    """(EFA devices, other RDMA devices) under ``sysfs``/class/infiniband, sorted by name."""
    efa: list[str] = []
    ib: list[str] = []
    try:
        names = sorted(os.listdir(sysfs / "class" / "infiniband"))
    except OSError:
        return efa, ib
    efa_module = sysfs / "module" / "efa" / "drivers"
    for name in names:
        dev = sysfs / "class" / "infiniband" / name / "device"
        driver = os.path.basename(os.path.realpath(dev / "driver")) if (dev / "driver").exists() else ""
        if driver == "efa" or _bound_to(efa_module, dev):
            efa.append(name)
        else:
            ib.append(name)
    return efa, ib


def _bound_to(module_drivers: Path, device: Path) -> bool:
    """Is ``device`` listed under the module's driver directories (sysfs module/X/drivers/*/)?"""
    try:
        real = os.path.realpath(device)
        for driver in os.listdir(module_drivers):
            for entry in os.listdir(module_drivers / driver):
                if os.path.realpath(module_drivers / driver / entry) == real:
                    return True
    except OSError:
        return False
    return False


def _netdevs(sysfs: Path, device: str) -> list[str]:
    try:
        return sorted(os.listdir(sysfs / "class" / "infiniband" / device / "device" / "net"))
    except OSError:
        return []


def interface_ipv4(interface: str) -> str | None:
    """The first IPv4 address of ``interface``, or None (absent, down, no address)."""
    for addr in psutil.net_if_addrs().get(interface, []):
        if addr.family == socket.AF_INET:
            return str(addr.address)
    return None


def declared_gpu_facts(declared: list[Any]) -> list[GpuFacts]:
    """The agent config's ``gpus`` (uuids, or tables with topology/NUMA/health) as GpuFacts."""
    facts: list[GpuFacts] = []
    for index, gpu in enumerate(declared):
        if isinstance(gpu, str):
            facts.append(GpuFacts(uuid=gpu, index=index))
        else:
            fields = gpu if isinstance(gpu, dict) else msgspec.structs.asdict(gpu)
            facts.append(msgspec.convert({**fields, "index": index}, GpuFacts))
    return facts


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
