"""Which GPUs of a node a job gets, and which nodes a job should prefer (pure functions).

Rules (the core calls these; nothing here holds state):

* A job's GPUs should be close: all in one NVLink domain if some domain has enough free
  GPUs, else under one PCIe switch, else on one NUMA node, else the old rule (the lowest
  contiguous run of indices, else the lowest free ones). Among groups that can hold the
  job the one with the fewest free GPUs wins (best fit, ties to the lowest index), so a
  1-GPU job fills a half-used NVLink domain and leaves a whole one for a bigger job.
* Node preference among nodes that fit: a job without GPUs prefers nodes without GPUs
  (GPU jobs are not blocked by CPU work, an AWS Batch pain point); it still lands on a
  GPU node when no CPU-only node can hold it. A GPU job prefers the node with the fewest
  free GPUs that fits (keeps whole GPU nodes for bigger jobs). Then best fit on vCPUs and
  memory, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuPlace:
    """Where one GPU sits: the groups whose members talk fast to each other (None: unknown)."""

    nvlink_domain: str | None = None
    pcie_switch: str | None = None
    numa_node: int | None = None

    def level(self, depth: int) -> str | int | None:
        """The group at ``depth``: 0 NVLink domain, 1 PCIe switch, 2 NUMA node."""
        return (self.nvlink_domain, self.pcie_switch, self.numa_node)[depth]


LEVELS = ("NVLink domain", "PCIe switch", "NUMA node")


def choose_gpus(free: Sequence[int], count: int, places: Sequence[GpuPlace] = ()) -> tuple[int, ...]:
    """``count`` of the ``free`` GPU indices (ascending), closest together first; see the module doc."""
    if count <= 0:
        return ()
    if places:
        for depth in range(len(LEVELS)):
            groups: dict[str | int, list[int]] = {}
            for i in free:
                key = places[i].level(depth) if i < len(places) else None
                if key is not None:
                    groups.setdefault(key, []).append(i)
            fitting = [g for g in groups.values() if len(g) >= count]
            if fitting:
                best = min(fitting, key=lambda g: (len(g), g[0]))
                return _adjacent(best, count)
    return _adjacent(list(free), count)


def _adjacent(free: list[int], count: int) -> tuple[int, ...]:
    """The lowest contiguous run of ``count`` indices, else the lowest ``count``."""
    for k in range(len(free) - count + 1):
        if free[k + count - 1] - free[k] == count - 1:
            return tuple(free[k:k + count])
    return tuple(free[:count])


def closeness(chosen: Sequence[int], places: Sequence[GpuPlace]) -> str | None:
    """The closest group holding all of ``chosen`` (e.g. "NVLink domain"), None when none does."""
    if len(chosen) < 2 or not places:
        return None
    for depth, name in enumerate(LEVELS):
        keys = {places[i].level(depth) if i < len(places) else None for i in chosen}
        if len(keys) == 1 and None not in keys:
            return name
    return None


def steering_rank(request_gpus: int, node_gpus: int, node_free_gpus: int) -> tuple[int, int]:
    """Rank among nodes that fit a job, ahead of the allocation strategy: lower is preferred.

    A job without GPUs prefers a node without GPUs; a GPU job the node with the fewest free
    GPUs (keeping whole GPU nodes for big GPU jobs)."""
    if request_gpus == 0:
        return (1 if node_gpus else 0, 0)
    return (0, node_free_gpus)


def placement_key(
    request_gpus: int, node_gpus: int, node_free_gpus: int, free_vcpus: float, free_memory_mib: int
) -> tuple[int, int, float, int]:
    """Sort key among nodes that fit a job under BEST_FIT: steering, then the tightest fit."""
    return (*steering_rank(request_gpus, node_gpus, node_free_gpus), free_vcpus, free_memory_mib)
