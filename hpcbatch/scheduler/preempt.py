"""Preemption: which running jobs of preemptible queues make room for a job that preempts.

Rules (pure; the scheduler core gathers the candidates and applies the choice):

* A job queue with ``preempts`` may stop jobs of ENABLED-or-not queues with ``preemptible``
  and a lower ``priority`` that run in its compute environments (AWS Batch has no
  preemption; this is Slurm's partition PreemptMode=REQUEUE, with Spot-interruption
  semantics for the victim: SIGTERM, a grace, SIGKILL, then RUNNABLE again as a new attempt
  that does not count against ``retryStrategy``).
* Only the job at the head of its queue preempts, and only when it cannot start otherwise.
* Single-node job: the node where the fewest victims make room (then the fewest vCPUs
  stopped, then the youngest), victims the youngest first (the least work lost). Gang: ``num_nodes`` whole
  nodes of one compute environment, idle ones first, then those emptied by the fewest
  victims. A victim gang is stopped whole (all its nodes), never in part. A gang holds its
  nodes whole (nothing is placed beside it), so a node a victim gang holds has nothing free
  to a single-node job: the gang's share there is the whole node, and it is stopped first.
* A job already being stopped is never chosen twice; the preemptor holds the nodes its
  victims free until they have ended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hpcbatch.model.jobs import ResourceRequest

_EPS = 1e-9


@dataclass(frozen=True)
class Victim:
    """A running job that may be stopped: its share of one node and how big it is in all."""

    job_id: str
    started_at: float
    vcpus: float  # on this node
    memory_mib: int
    gpus: int
    total_vcpus: float  # on all its nodes (a gang is stopped whole)


@dataclass(frozen=True)
class NodeRoom:
    """One node as preemption sees it."""

    name: str
    free: tuple[float, int, int]  # vCPUs, MiB, GPUs free now
    victims: tuple[Victim, ...]  # what may be stopped there
    keeps: int  # allocations that may not be stopped (another queue, a restart's unknowns)
    whole: str | None = None  # the victim gang holding it whole: its share is the whole node, stopped first


def for_single(r: ResourceRequest, nodes: Sequence[NodeRoom]) -> tuple[str, tuple[str, ...]] | None:
    """(node, victims) that makes room for ``r`` at the least cost, or None."""
    best: tuple[tuple[int, float, float, str], str, tuple[str, ...]] | None = None
    for node in nodes:
        chosen = _make_room(r, node)
        if not chosen:
            continue
        # Fewest victims, fewest vCPUs stopped, then the least work lost (the youngest).
        cost = (len(chosen), sum(x.total_vcpus for x in chosen), -min(x.started_at for x in chosen), node.name)
        if best is None or cost < best[0]:
            best = (cost, node.name, tuple(x.job_id for x in chosen))
    return None if best is None else (best[1], best[2])


def _make_room(r: ResourceRequest, node: NodeRoom) -> list[Victim]:
    """The victims on ``node`` whose stopping lets ``r`` fit there: a gang holding it whole
    first (nothing fits beside it), then the youngest first; empty when none are needed or
    stopping them all is not enough."""
    v, m, g = node.free
    chosen: list[Victim] = []
    # A victim gang holding the node whole goes first (False sorts first), then the youngest.
    for victim in sorted(node.victims, key=lambda x: (x.job_id != node.whole, -x.started_at, x.job_id)):
        if v + _EPS >= r.vcpus and m >= r.memory_mib and g >= r.gpus and (node.whole is None or chosen):
            break
        chosen.append(victim)
        v, m, g = v + victim.vcpus, m + victim.memory_mib, g + victim.gpus
    if not (v + _EPS >= r.vcpus and m >= r.memory_mib and g >= r.gpus):
        return []
    return chosen


def for_gang(n: int, nodes: Sequence[NodeRoom]) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(nodes, victims) emptying ``n`` whole nodes at the least cost, or None (``nodes`` are
    the candidates of ONE compute environment, each able to hold the per-node request)."""
    able = [node for node in nodes if node.keeps == 0]
    if len(able) < n:
        return None
    able.sort(key=lambda x: (len(x.victims), sum(v.total_vcpus for v in x.victims), x.name))
    chosen = able[:n]
    victims = tuple(dict.fromkeys(v.job_id for node in chosen for v in node.victims))
    return tuple(node.name for node in chosen), victims
