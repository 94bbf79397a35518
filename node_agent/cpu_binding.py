"""Bind a GPU job's processes to the CPUs next to its GPUs (their NUMA node), where known.

A process feeding a GPU from the far socket pays the inter-socket link on every copy, so a
job that holds GPUs runs on the CPUs local to them: the union of each GPU's CPUs (NVML's
CPU affinity, or the declared ``cpus``, or the CPUs of its declared ``numa_node`` from
sysfs), within the CPUs the agent itself may use. When any of its GPUs has no known place,
or nothing is left after the intersection, the job is not bound (better unbound than
squeezed onto the wrong CPUs).

The binding is ``taskset -c LIST`` in front of the command (util-linux, next to setpriv),
so it holds from the first instruction and every child inherits it; an affinity set from
the agent after the spawn could miss children the job forks at once.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from hpcbatch.protocol import GpuFacts

log = logging.getLogger(__name__)


def parse_cpulist(text: str) -> set[int]:
    """sysfs/cpuset list notation (``0-3,8,10-11``) as a set; "" is empty."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def numa_node_cpus(node: int, sysfs: str | Path = "/sys") -> set[int]:
    """The CPUs of NUMA node ``node`` (empty when sysfs does not say)."""
    try:
        return parse_cpulist((Path(sysfs) / "devices/system/node" / f"node{node}" / "cpulist").read_text())
    except (OSError, ValueError):
        return set()


def gpu_local_cpus(
    gpu_ids: Sequence[str], gpus: Iterable[GpuFacts], allowed: set[int], sysfs: str | Path = "/sys"
) -> list[int]:
    """The CPUs a job holding ``gpu_ids`` should run on, sorted; [] means do not bind."""
    by_uuid = {g.uuid: g for g in gpus}
    local: set[int] = set()
    for uuid in gpu_ids:
        g = by_uuid.get(uuid)
        if g is None:
            return []
        cpus = set(g.cpus) or (numa_node_cpus(g.numa_node, sysfs) if g.numa_node is not None else set())
        if not cpus:
            return []
        local |= cpus
    return sorted(local & allowed)


def agent_cpus() -> set[int]:
    """The CPUs this agent process may use (jobs cannot get more)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set()


def bind_argv(argv: list[str], cpus: Sequence[int], path: str | None) -> list[str]:
    """``argv`` behind ``taskset -c`` when ``cpus`` are given and both programs can be found.

    A missing job program is left for the runner to report in its usual words (taskset would
    only say it failed to execute it); a node without taskset runs the job unbound.
    """
    if not cpus or not argv:
        return argv
    taskset = shutil.which("taskset")
    if taskset is None:
        log.warning("taskset not found: GPU jobs run without CPU binding (install util-linux)")
        return argv
    program = argv[0]
    if shutil.which(program, path=None if "/" in program else path) is None and not (
        "/" in program and not os.path.isabs(program)  # relative to the job's cwd: taskset finds it
    ):
        return argv
    return [taskset, "-c", ",".join(map(str, cpus)), *argv]
