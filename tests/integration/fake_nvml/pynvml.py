"""A stand-in for pynvml where no NVIDIA GPU is (the foreign boundary tests cannot have here).

The real module's constants and error classes, with its functions answering as a machine
with two GPUs joined by NVLink would: GPU-fake-0 local to CPU 0, GPU-fake-1 to CPU 1, each
55 % busy with 1,234 MiB used. A test raises XID events by writing
``{"xids": [[index, xid], ...]}`` to the file named by ``FAKE_NVML_STATE``; each is
delivered once. Put this directory first on PYTHONPATH of an agent to use it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from typing import Any


def _real_module() -> types.ModuleType:
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        path = os.path.join(os.path.abspath(entry or "."), "pynvml.py")
        if os.path.dirname(path) != here and os.path.isfile(path):
            spec = importlib.util.spec_from_file_location("_real_pynvml", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules["_real_pynvml"] = module  # it looks itself up there to add its error classes
            spec.loader.exec_module(module)
            return module
    raise ImportError("the real pynvml (nvidia-ml-py) is not installed")


_real = _real_module()
globals().update({k: v for k, v in vars(_real).items() if not k.startswith("__")})

_COUNT = 2
_delivered = 0  # XID events already handed out


def nvmlInit() -> None:
    pass


def nvmlShutdown() -> None:
    pass


def nvmlDeviceGetCount() -> int:
    return _COUNT


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    return index


def nvmlDeviceGetUUID(handle: int) -> str:
    return f"GPU-fake-{handle}"


def nvmlDeviceGetName(handle: int) -> str:
    return "Fake H100"


def nvmlDeviceGetMemoryInfo(handle: int) -> Any:
    return types.SimpleNamespace(total=80 * 1024**3, used=1234 * 1024**2, free=0)


def nvmlDeviceGetMigMode(handle: int) -> tuple[int, int]:
    return (0, 0)


def nvmlDeviceGetNumaNodeId(handle: int) -> int:
    return handle


def nvmlDeviceGetCpuAffinity(handle: int, words: int) -> list[int]:
    return [1 << handle] + [0] * (words - 1)


def nvmlDeviceGetP2PStatus(a: int, b: int, cap: int) -> int:
    return _real.NVML_P2P_STATUS_OK


def nvmlDeviceGetTopologyCommonAncestor(a: int, b: int) -> int:
    return _real.NVML_TOPOLOGY_SINGLE


def nvmlDeviceGetTotalEccErrors(handle: int, kind: int, counter: int) -> int:
    return 0


def nvmlEventSetCreate() -> str:
    return "events"


def nvmlDeviceRegisterEvents(handle: int, kinds: int, events: str) -> None:
    pass


def nvmlEventSetFree(events: str) -> None:
    pass


def nvmlEventSetWait(events: str, timeout_ms: int) -> Any:
    global _delivered
    try:
        with open(os.environ["FAKE_NVML_STATE"]) as f:
            xids = json.load(f).get("xids", [])
    except (KeyError, OSError, ValueError):
        xids = []
    if _delivered >= len(xids):
        raise _real.NVMLError(_real.NVML_ERROR_TIMEOUT)
    index, xid = xids[_delivered]
    _delivered += 1
    return types.SimpleNamespace(device=index, eventData=xid, eventType=_real.nvmlEventTypeXidCriticalError)


def nvmlDeviceGetUtilizationRates(handle: int) -> Any:
    return types.SimpleNamespace(gpu=55, memory=10)
