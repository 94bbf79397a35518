"""GPU utilization from NVML, sent with the agent's heartbeats (the head exports it on /metrics)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("hpcbatch.agent.gpus")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuUtilization:
    """Samples each GPU's busy fraction; {} on nodes without NVML (checked once). Never raises."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: list[tuple[str, Any]] = []
        self._unavailable = False

    def _open(self) -> bool:
        try:
            import pynvml  # optional: nvidia-ml-py, only on GPU nodes

            pynvml.nvmlInit()
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded, ...
            log.debug("no GPU utilization: NVML unavailable: %s", exc)
            self._unavailable = True
            return False
        self._nvml = pynvml
        try:
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                self._handles.append((_text(pynvml.nvmlDeviceGetUUID(handle)), handle))
        except Exception as exc:
            log.warning("NVML: cannot list GPUs for utilization: %s", exc)
        if not self._handles:
            self.close()
            self._unavailable = True
            return False
        return True

    def sample(self) -> dict[str, float]:
        """GPU uuid -> fraction of the last sample period a kernel ran (NVML utilization.gpu / 100)."""
        if self._unavailable or (self._nvml is None and not self._open()):
            return {}
        out: dict[str, float] = {}
        for uuid, handle in self._handles:
            try:
                out[uuid] = float(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu) / 100.0
            except Exception as exc:  # a GPU fallen off the bus must not stop the heartbeat
                log.warning("NVML: no utilization for %s: %s", uuid, exc)
        return out

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._nvml = None
