"""Could any set of nodes ever hold a job? The submit-time check, and its reasons with the numbers.

Rules (issue 18, "feedback that never leaves a user guessing"):

* A job is satisfiable when one compute environment of its queue has ``num_nodes`` nodes
  that can each hold the per-node request (vCPUs, MiB, GPUs in service, features such as a
  container runtime), ``num_nodes x vcpus`` stays within that compute environment's
  ``maxvCpus``, and, where the compute environment requires one placement group, one group
  holds them all. That is the scheduler's own rule for a gang (``core._gang_why_never``),
  applied to every node the head knows, whatever its state: a DRAINING, DRAINED, DOWN or
  powered-down node comes back, so it counts as able to hold the job.
* With no node known in any of the queue's compute environments nothing can be judged
  (a cluster still starting, a scaled-to-zero environment): the job is satisfiable.
* Otherwise the answer is one line naming the field that asks too much and the numbers
  that fall short (``numNodes 6: compute environment default has 4 nodes``), for the
  compute environment that comes closest.

Pure: shapes in, a sentence or None out; no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hpcbatch.model.jobs import ResourceRequest

# hpcbatch extension: the tag (SubmitJob ``tags``) that accepts a job no node set can hold.
ALLOW_UNSATISFIABLE_TAG = "hpcbatch:allowUnsatisfiable"

_FEATURE_TEXT = {"container": "a container runtime (the job names an image)"}


@dataclass(frozen=True)
class NodeShape:
    """One node as the check sees it: its size and where it sits."""

    name: str
    vcpus: float
    memory_mib: int
    gpus: int = 0  # GPUs in service
    placement_group: str | None = None
    features: frozenset[str] = frozenset()

    def holds(self, r: ResourceRequest) -> bool:
        return (
            r.vcpus <= self.vcpus + 1e-9 and r.memory_mib <= self.memory_mib and r.gpus <= self.gpus
            and r.requires <= self.features
        )


@dataclass(frozen=True)
class EnvironmentShape:
    """A compute environment of the queue: its limits and every node the head knows in it."""

    name: str
    max_vcpus: float | None = None
    require_placement_group: bool = False
    nodes: tuple[NodeShape, ...] = field(default=())


def allows_unsatisfiable(tags: dict[str, str] | None) -> bool:
    """True when SubmitJob's tags accept an unsatisfiable job (``hpcbatch:allowUnsatisfiable``)."""
    value = (tags or {}).get(ALLOW_UNSATISFIABLE_TAG)
    return value is not None and value.lower() in ("true", "1", "yes")


def why_unsatisfiable(num_nodes: int, r: ResourceRequest, ces: Sequence[EnvironmentShape]) -> str | None:
    """Why no node set of ``ces`` could ever hold ``num_nodes`` x ``r``; None when one could.

    >>> ce = EnvironmentShape("default", nodes=tuple(NodeShape(f"n{i}", 2, 4000) for i in range(4)))
    >>> why_unsatisfiable(6, ResourceRequest(vcpus=1, memory_mib=512), [ce])
    'numNodes 6: compute environment default has 4 nodes'
    >>> why_unsatisfiable(4, ResourceRequest(vcpus=1, memory_mib=512), [ce]) is None
    True
    """
    if not any(ce.nodes for ce in ces):
        return None
    for ce in ces:
        able = [n for n in ce.nodes if n.holds(r)]
        if len(able) < num_nodes or _over_max(ce, num_nodes, r):
            continue
        if ce.require_placement_group and _largest_group(able) < num_nodes:
            continue
        return None
    nodes = [n for ce in ces for n in ce.nodes]
    names = _names(ces)
    if not any(n.holds(r) for n in nodes):
        return _per_node(r, nodes, names)
    what = "nodes" if num_nodes > 1 else "node"
    closest = max(ces, key=lambda ce: sum(n.holds(r) for n in ce.nodes))
    able = [n for n in closest.nodes if n.holds(r)]
    if len(able) < num_nodes:
        if len(able) == len(closest.nodes):
            return f"numNodes {num_nodes}: compute environment {closest.name} has {len(able)} {_plural(len(able))}"
        return (
            f"numNodes {num_nodes}: compute environment {closest.name} has {len(able)} {_plural(len(able))} "
            f"(of {len(closest.nodes)}) that can each hold {_request(r)}"
        )
    if _over_max(closest, num_nodes, r):
        return (
            f"numNodes {num_nodes} x vcpus {r.vcpus:g} = {num_nodes * r.vcpus:g} vCPUs: compute environment "
            f"{closest.name} has maxvCpus {closest.max_vcpus:g}"
        )
    return (
        f"numNodes {num_nodes}: compute environment {closest.name} requires one placement group for the "
        f"{what}, and its largest group has {_largest_group(able)} that can hold {_request(r)}"
    )


def _per_node(r: ResourceRequest, nodes: Sequence[NodeShape], names: str) -> str:
    """No node at all can hold ``r``: the first dimension that asks too much, with the most there is."""
    missing = r.requires - frozenset().union(*(n.features for n in nodes))
    if missing:
        return f"no node of compute environments {names} offers " + ", ".join(
            sorted(_FEATURE_TEXT.get(f, f) for f in missing)
        )
    most_vcpus = max(n.vcpus for n in nodes)
    if r.vcpus > most_vcpus + 1e-9:
        return f"vcpus {r.vcpus:g}: the largest node of compute environments {names} has {most_vcpus:g} vCPUs"
    most_memory = max(n.memory_mib for n in nodes)
    if r.memory_mib > most_memory:
        return f"memory {r.memory_mib} MiB: the largest node of compute environments {names} has {most_memory} MiB"
    most_gpus = max(n.gpus for n in nodes)
    if r.gpus > most_gpus:
        return f"gpus {r.gpus}: the node with the most GPUs in compute environments {names} has {most_gpus}"
    return f"no single node of compute environments {names} has {_request(r)} at once"


def _over_max(ce: EnvironmentShape, num_nodes: int, r: ResourceRequest) -> bool:
    return ce.max_vcpus is not None and num_nodes * r.vcpus > ce.max_vcpus + 1e-9


def _largest_group(nodes: Sequence[NodeShape]) -> int:
    counts: dict[str, int] = {}
    for n in nodes:
        if n.placement_group is not None:
            counts[n.placement_group] = counts.get(n.placement_group, 0) + 1
    return max(counts.values(), default=0)


def _names(ces: Sequence[EnvironmentShape]) -> str:
    return ", ".join(ce.name for ce in ces)


def _plural(n: int) -> str:
    return "node" if n == 1 else "nodes"


def _request(r: ResourceRequest) -> str:
    gpus = f" gpus={r.gpus}" if r.gpus else ""
    return f"vcpus={r.vcpus:g} memory={r.memory_mib}MiB{gpus}"
