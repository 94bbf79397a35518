"""The node's GPUs through NVML (pynvml): inventory, topology, NUMA affinity, health, usage.

One ``NvmlGpus`` per agent keeps an NVML session open: the inventory is read once at start,
health (uncorrectable ECC counts, fatal XID events from an NVML event set) and the usage of
the GPUs a job holds are read on each heartbeat. Nothing here raises: a node without NVML
(no driver, no pynvml) has no GPUs from NVML and uses its declared ones, and a GPU that
falls off the bus while the agent runs becomes an unhealthy GPU, never a dead agent.

Topology, from NVML's pairwise answers, reduced to the groups the scheduler ranks by:

* ``nvlink_domain``: GPUs joined by NVLink (``nvmlDeviceGetP2PStatus(.., NVLINK)`` OK),
  transitively: the connected components, named ``nvl<lowest index>``.
* ``pcie_switch``: GPUs whose common ancestor is at most a PCIe switch
  (``nvmlDeviceGetTopologyCommonAncestor`` <= ``NVML_TOPOLOGY_MULTIPLE``), named the same way.
* ``numa_node`` / ``cpus``: ``nvmlDeviceGetNumaNodeId`` where the driver has it, the CPUs
  from ``nvmlDeviceGetCpuAffinity`` (a bit mask of 64-bit words).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from hpcbatch.protocol import GpuFacts

log = logging.getLogger(__name__)

_MIB = 1024 * 1024
_CPU_MASK_WORDS = 16  # 16 x 64 CPUs: enough for any machine NVML runs on today
# XIDs after which the GPU needs a reset or a replacement (NVIDIA's XID catalogue: double-bit
# ECC, fallen off the bus, NVLink error, uncontained ECC, row-remap failure, GSP errors).
FATAL_XIDS = frozenset({48, 62, 64, 74, 79, 92, 95, 119, 120})
_ECC_CHECK = "volatile uncorrectable ECC errors"


class NvmlGpus:
    """An agent's NVML session; ``available`` is False where NVML cannot be used."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: dict[str, Any] = {}  # uuid -> NVML device handle
        self._events: Any = None  # the XID event set, where the driver supports it
        self._unhealthy: dict[str, str] = {}  # sticky: a fatal XID is not undone by waiting

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def open(self) -> list[GpuFacts]:
        """Start NVML and read the GPUs; [] without NVML. Never raises."""
        try:
            import pynvml  # optional: nvidia-ml-py
        except ImportError:
            return []
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            log.debug("NVML unavailable: %s", exc)
            return []
        self._nvml = pynvml
        gpus = self._inventory()
        self._watch_xids()
        self.health()  # ECC counts at start: a bad GPU never enters service
        for gpu in gpus:
            gpu.unhealthy = self._unhealthy.get(gpu.uuid)
        return gpus

    def close(self) -> None:
        nv = self._nvml
        if nv is None:
            return
        self._nvml = None
        try:
            if self._events is not None:
                nv.nvmlEventSetFree(self._events)
            nv.nvmlShutdown()
        except Exception:  # shutting down: nothing to do about it
            pass

    # ------------------------------------------------------------------ inventory
    def _inventory(self) -> list[GpuFacts]:
        nv = self._nvml
        gpus: list[GpuFacts] = []
        try:
            count = int(nv.nvmlDeviceGetCount())
        except Exception as exc:
            log.warning("NVML cannot count GPUs: %s", exc)
            return []
        for index in range(count):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(nv.nvmlDeviceGetUUID(handle))
            except Exception as exc:  # off the bus: not reported, so a declared count drains the node
                log.warning("NVML cannot read GPU %d: %s", index, exc)
                continue
            self._handles[uuid] = handle
            gpus.append(
                GpuFacts(
                    uuid=uuid,
                    index=index,
                    name=_text(_ask(lambda h=handle: nv.nvmlDeviceGetName(h), default="")),
                    memory_mib=int(getattr(_ask(lambda h=handle: nv.nvmlDeviceGetMemoryInfo(h)), "total", 0)) // _MIB,
                    mig=_mig_on(nv, handle),
                    numa_node=_numa_node(nv, handle),
                    cpus=_cpu_affinity(nv, handle),
                )
            )
        handles = [self._handles[g.uuid] for g in gpus]
        nvlink = _components(len(gpus), lambda i, j: _nvlinked(nv, handles[i], handles[j]))
        switch = _components(len(gpus), lambda i, j: _same_switch(nv, handles[i], handles[j]))
        for i, gpu in enumerate(gpus):
            gpu.nvlink_domain = f"nvl{gpus[nvlink[i]].index}" if nvlink[i] is not None else None
            gpu.pcie_switch = f"pcie{gpus[switch[i]].index}" if switch[i] is not None else None
        return gpus

    # ------------------------------------------------------------------ health
    def _watch_xids(self) -> None:
        nv = self._nvml
        try:
            self._events = nv.nvmlEventSetCreate()
        except Exception as exc:
            log.info("NVML event sets unavailable, XIDs not watched: %s", exc)
            return
        for uuid, handle in self._handles.items():
            try:
                nv.nvmlDeviceRegisterEvents(handle, nv.nvmlEventTypeXidCriticalError, self._events)
            except Exception as exc:  # NOT_SUPPORTED on some boards: ECC counts still apply
                log.info("GPU %s: XID events unavailable: %s", uuid, exc)

    def health(self) -> dict[str, str]:
        """GPU uuid -> why it is out of service, for every unhealthy GPU. Never raises."""
        nv = self._nvml
        if nv is None:
            return dict(self._unhealthy)
        self._drain_xids()
        for uuid, handle in self._handles.items():
            if uuid in self._unhealthy:
                continue
            try:
                errors = int(
                    nv.nvmlDeviceGetTotalEccErrors(
                        handle, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC
                    )
                )
            except Exception as exc:
                if _is(nv, exc, "NVMLError_NotSupported"):
                    continue  # no ECC on this board (consumer GPUs)
                if _is(nv, exc, "NVMLError_GpuIsLost"):
                    self._mark(uuid, "GPU is lost (fallen off the bus)")
                continue
            if errors > 0:
                self._mark(uuid, f"{errors} {_ECC_CHECK}")
        return dict(self._unhealthy)

    def _drain_xids(self) -> None:
        nv = self._nvml
        if self._events is None:
            return
        for _ in range(64):  # a storm of events must not hold the agent's loop
            try:
                data = nv.nvmlEventSetWait(self._events, 0)
            except Exception:  # NVMLError_Timeout: nothing pending
                return
            xid = int(getattr(data, "eventData", 0))
            try:
                uuid = _text(nv.nvmlDeviceGetUUID(data.device))
            except Exception:  # the device may be gone already: its ECC/lost check catches it
                continue
            if xid in FATAL_XIDS:
                self._mark(uuid, f"fatal XID {xid}")
            else:
                log.info("GPU %s reported XID %d (not fatal)", uuid, xid)

    def _mark(self, uuid: str, why: str) -> None:
        if uuid not in self._unhealthy:
            log.error("GPU %s taken out of service: %s", uuid, why)
            self._unhealthy[uuid] = why

    # ------------------------------------------------------------------ usage
    def utilization(self) -> dict[str, float]:
        """GPU uuid -> fraction of the last sample period a kernel ran, for every GPU NVML can
        read now ({} without NVML): what the head exports on /metrics."""
        nv = self._nvml
        if nv is None:
            return {}
        busy = {uuid: _ask(lambda h=handle: nv.nvmlDeviceGetUtilizationRates(h).gpu) for uuid, handle in self._handles.items()}
        return {uuid: float(pct) / 100.0 for uuid, pct in busy.items() if pct is not None}

    def usage(self, uuids: Iterable[str]) -> dict[str, tuple[int, int]]:
        """uuid -> (GPU utilization %, memory used MiB) for those NVML can read now."""
        nv = self._nvml
        found: dict[str, tuple[int, int]] = {}
        if nv is None:
            return found
        for uuid in uuids:
            handle = self._handles.get(uuid)
            if handle is None:
                continue
            try:
                util = int(nv.nvmlDeviceGetUtilizationRates(handle).gpu)
                used = int(nv.nvmlDeviceGetMemoryInfo(handle).used) // _MIB
            except Exception:  # a lost GPU: health reports it
                continue
            found[uuid] = (util, used)
        return found


# ---------------------------------------------------------------------- helpers
def _ask(query: Callable[[], Any], default: Any = None) -> Any:
    """``query()``, or ``default`` when NVML refuses it or this pynvml lacks the function."""
    try:
        return query()
    except Exception:  # NVMLError, and AttributeError from an older nvidia-ml-py
        return default


def _is(nv: Any, exc: Exception, name: str) -> bool:
    kind = getattr(nv, name, None)
    return isinstance(kind, type) and isinstance(exc, kind)


def _mig_on(nv: Any, handle: Any) -> bool:
    mode = _ask(lambda: nv.nvmlDeviceGetMigMode(handle))  # (current, pending); NOT_SUPPORTED before A100
    return bool(mode) and mode[0] == getattr(nv, "NVML_DEVICE_MIG_ENABLE", 1)


def _numa_node(nv: Any, handle: Any) -> int | None:
    node = _ask(lambda: nv.nvmlDeviceGetNumaNodeId(handle))
    return int(node) if isinstance(node, int) and node >= 0 else None


def _cpu_affinity(nv: Any, handle: Any) -> list[int]:
    words = _ask(lambda: nv.nvmlDeviceGetCpuAffinity(handle, _CPU_MASK_WORDS)) or []
    return [64 * w + bit for w, mask in enumerate(words) for bit in range(64) if int(mask) >> bit & 1]


def _nvlinked(nv: Any, a: Any, b: Any) -> bool:
    return bool(
        _ask(lambda: nv.nvmlDeviceGetP2PStatus(a, b, nv.NVML_P2P_CAPS_INDEX_NVLINK) == nv.NVML_P2P_STATUS_OK)
    )


def _same_switch(nv: Any, a: Any, b: Any) -> bool:
    return bool(_ask(lambda: int(nv.nvmlDeviceGetTopologyCommonAncestor(a, b)) <= nv.NVML_TOPOLOGY_MULTIPLE))


def _components(n: int, joined: Any) -> list[int | None]:
    """For each of ``n`` items the lowest index of its group under ``joined``; None when alone."""
    root = list(range(n))

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if find(i) != find(j) and joined(i, j):
                a, b = sorted((find(i), find(j)))
                root[b] = a
    groups = [find(i) for i in range(n)]
    sizes = {g: groups.count(g) for g in groups}
    return [g if sizes[g] > 1 else None for g in groups]


def _text(value: str | bytes) -> str:
    # nvidia-ml-py returns str from 11.5 on, bytes before.
    return value.decode() if isinstance(value, bytes) else value
