"""A flood of signed SubmitJob calls from one caller, and the head's memory around it.

Used by the flood test (a few thousand calls) and by bench/chaos (100,000): several forked
processes, each with one keep-alive connection, send as fast as the head answers; what
comes back is counted by HTTP status.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

from tests.fuzz.wire import Wire

SUBMIT = json.dumps({"jobName": "flood", "jobQueue": "default", "jobDefinition": "hpcbatch-default",
                     "containerOverrides": {"command": ["true"]}}).encode()


def _send(port: int, credentials: tuple[str, str], count: int) -> dict[int, int]:
    wire = Wire(tcp=("127.0.0.1", port), credentials=credentials)
    statuses: Counter[int] = Counter()
    for _ in range(count):
        statuses[wire.post("/v1/submitjob", SUBMIT).status] += 1
    wire.close()
    return dict(statuses)


def flood(port: int, credentials: tuple[str, str], total: int, processes: int = 4) -> Counter[int]:
    """Send ``total`` SubmitJob calls signed with ``credentials``; the count of each HTTP status."""
    share = [total // processes + (i < total % processes) for i in range(processes)]
    statuses: Counter[int] = Counter()
    with ProcessPoolExecutor(processes) as pool:
        for result in pool.map(_send, [port] * processes, [credentials] * processes, share):
            statuses.update(result)
    return statuses


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_count() -> int:
    return max(1, min(4, os.cpu_count() or 1))
