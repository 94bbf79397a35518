"""Placement: which node (or, for a gang, which whole nodes) a job can start on now.

Rules (``core``'s docstring has them all): a compute environment's nodes are indexed by free
capacity (``nodeindex``), so a placement walks candidates in allocation-strategy order and
stops at the first node as good as any can be; GPU steering (``gpus.steering_rank``) ranks
ahead of that order. A node reserved for a waiting job takes only that job, or a job
planned to end before the reservation starts (backfill, ``may_use``). A gang takes idle
whole nodes of one compute environment, CPU-only nodes first when it asks for no GPUs.
"""

from __future__ import annotations

import math

from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.scheduler.events import JobRunnable
from hpcbatch.scheduler.gang import Reservation
from hpcbatch.scheduler.gpus import steering_rank
from hpcbatch.scheduler.state import CeState, NodeState, SchedulerState

ANY_LIMIT = -math.inf  # a failure that no time limit (backfill) could have avoided


def has_room(st: SchedulerState, ces: list[CeState], reserved: dict[str, Reservation]) -> bool:
    """Whether some node of ``ces`` has free vCPUs a job may use now (not reserved from now on)."""
    return any(
        n.name not in reserved or reserved[n.name].start_s > st.now
        for ce in ces
        if ce.max_vcpus is None or ce.used_vcpus < ce.max_vcpus - 1e-9
        for n in ce.index.any_free()  # only ACTIVE, accepting, non-gang nodes with free vCPUs
    )


def may_use(
    st: SchedulerState, node: str, reserved: dict[str, Reservation], job_id: str, time_limit_s: float | None,
) -> bool:
    """A reserved node takes only its own gang, or a job that ends before it is needed."""
    res = reserved.get(node)
    return res is None or res.job_id == job_id or res.admits(st.now, time_limit_s)


def place(
    st: SchedulerState, r: ResourceRequest, time_limit_s: float | None, ces: list[CeState],
    reserved: dict[str, Reservation],
) -> tuple[NodeState, CeState] | None:
    """The node ``r`` starts on now (first compute environment in order that has one), or None."""
    for ce in ces:  # computeEnvironmentOrder: the first CE that can take it wins
        if ce.caps(r.vcpus):
            continue
        # The index yields nodes with enough free vCPUs in allocation-strategy order; GPU
        # steering ranks ahead of that order, and the walk stops at the first node that
        # is as good as any can be (in a CE without GPU nodes: the first that fits).
        best: NodeState | None = None
        best_rank: tuple[int, int] | None = None
        ideal = steering_rank(r.gpus, 0, r.gpus)
        for node in ce.index.candidates(r.vcpus):
            if node.fits(r) and (not reserved or may_use(st, node.name, reserved, "", time_limit_s)):
                rank = steering_rank(r.gpus, node.gpus, node.free_gpus)
                if rank == ideal:
                    return node, ce  # type: ignore[return-value]
                if best_rank is None or rank < best_rank:
                    best, best_rank = node, rank  # type: ignore[assignment]
        if best is not None:
            return best, ce
    return None


def place_gang(
    st: SchedulerState, job: JobRunnable, estimate: float | None, ces: list[CeState],
    reserved: dict[str, Reservation],
) -> tuple[list[NodeState], CeState] | None:
    """``num_nodes`` idle nodes of the first compute environment that has them, or None.

    ``pick_nodes``' rule for nodes that are all free now, without building candidates:
    the placement group with the fewest fitting idle nodes that still holds the gang
    (then by name), else (no group required) any; smallest nodes first, then by name.
    """
    n, r = job.num_nodes, job.request

    def fits(shape: tuple[float, int, int, int, frozenset[str]]) -> bool:  # could_ever_fit, by shape
        return r.vcpus <= shape[0] + 1e-9 and r.memory_mib <= shape[1] and r.gpus <= shape[3] and r.requires <= shape[4]

    def cpu_only(shape: tuple[float, int, int, int, frozenset[str]]) -> bool:
        return shape[2] == 0 and fits(shape)

    for ce in ces:
        if ce.caps(n * r.vcpus) or len(ce.idle) < n:
            continue
        unusable = {
            name for name in reserved
            if name in ce.idle and not may_use(st, name, reserved, job.job_id, estimate)
        }
        picked = None
        if r.gpus == 0 and ce.idle.with_gpus:  # steering: CPU-only nodes first (gpus.py), when GPU nodes fit too
            able = sum(ce.idle.counts(fits, unusable).values())
            if able >= n and sum(ce.idle.counts(cpu_only, unusable).values()) < able:
                picked = ce.idle.pick(n, cpu_only, unusable, ce.require_placement_group)
        picked = picked or ce.idle.pick(n, fits, unusable, ce.require_placement_group)
        if picked is not None:
            return picked, ce
    return None


def limit_key(time_limit_s: float | None) -> float:
    """A time limit for comparisons: no limit is the longest."""
    return math.inf if time_limit_s is None else float(time_limit_s)


def dominates(a: ResourceRequest, b: ResourceRequest) -> bool:
    """True when ``a`` needs at least what ``b`` needs in every dimension."""
    return a.vcpus >= b.vcpus and a.memory_mib >= b.memory_mib and a.gpus >= b.gpus and a.requires >= b.requires
