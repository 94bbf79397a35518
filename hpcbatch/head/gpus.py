"""The head's view of node GPUs: health flags, the declared-count check, topology, usage samples.

Rules (Slurm's, where it has one):

* A GPU the node reports unhealthy (uncorrectable ECC, fatal XID, lost, or taken out in
  its config) is out of service: the scheduler never hands it out again (``NodeUp.gpu_out``)
  and the node stays ACTIVE but flagged, its reason naming the GPU and why.
* A node that reports fewer GPUs than its config declares is drained (Slurm drains a node
  whose gres count is short), with a reason that names both counts; an admin resumes it
  (``hpcbatch nodes resume``) once the machine is repaired or its config corrected.
* Usage: the agent samples the GPUs of each running attempt (NVML) with its heartbeats; the
  head keeps the latest and the peak per GPU on the attempt (in memory while it runs, stored
  with the attempt when the job is next written, at the latest when it ends).
"""

from __future__ import annotations

from hpcbatch import protocol as p
from hpcbatch.model.jobs import Attempt, GpuUsageSummary
from hpcbatch.scheduler.gpus import GpuPlace


def unhealthy_gpus(facts: p.NodeFacts) -> dict[str, str]:
    """GPU uuid -> reason, for the GPUs a registering node reports out of service."""
    return {g.uuid: g.unhealthy for g in facts.gpu_facts if g.unhealthy}


def gpu_shortfall(facts: p.NodeFacts) -> str | None:
    """The drain reason for a node that has fewer GPUs than its config declares, else None."""
    if len(facts.gpus) >= facts.declared_gpus:
        return None
    return (
        f"GPU count too low: the node reports {len(facts.gpus)} GPUs, its config declares "
        f"{facts.declared_gpus} (a GPU lost or off the bus? fix it, then `hpcbatch nodes resume {facts.name}`)"
    )


def gpu_flag(unhealthy: dict[str, str]) -> str:
    """The node's reason text while it has GPUs out of service ("" when it has none)."""
    if not unhealthy:
        return ""
    listed = "; ".join(f"{uuid}: {why}" for uuid, why in sorted(unhealthy.items()))
    return f"{len(unhealthy)} GPU(s) out of service ({listed})"


def gpu_places(facts: p.NodeFacts) -> tuple[GpuPlace, ...]:
    """The topology of ``facts.gpus`` in order, for the scheduler; () when none is known."""
    by_uuid = {g.uuid: g for g in facts.gpu_facts}
    places = []
    for uuid in facts.gpus:
        g = by_uuid.get(uuid)
        places.append(GpuPlace(g.nvlink_domain, g.pcie_switch, g.numa_node) if g else GpuPlace())
    return tuple(places) if any(pl != GpuPlace() for pl in places) else ()


def record_usage(attempt: Attempt, samples: list[p.GpuUsage]) -> None:
    """Fold ``samples`` of ``attempt``'s GPUs into its latest/peak figures."""
    by_uuid = {u.uuid: u for u in attempt.gpu_usage}
    for s in samples:
        if s.uuid not in attempt.gpus:
            continue  # only the GPUs it holds: a late sample of another's GPU is dropped
        u = by_uuid.get(s.uuid)
        if u is None:
            u = by_uuid[s.uuid] = GpuUsageSummary(uuid=s.uuid)
            attempt.gpu_usage = [*attempt.gpu_usage, u]
        u.utilization_pct, u.memory_used_mib = s.utilization_pct, s.memory_used_mib
        u.peak_utilization_pct = max(u.peak_utilization_pct, s.utilization_pct)
        u.peak_memory_used_mib = max(u.peak_memory_used_mib, s.memory_used_mib)
        u.samples += 1


def node_gpu_listing(facts: p.NodeFacts | None, holders: dict[str, str], unhealthy: dict[str, str]) -> dict[str, object]:
    """ListNodes' GPU fields: free/used/unhealthy counts and what is known of each GPU."""
    if facts is None or not facts.gpus:
        return {"freeGpus": 0, "unhealthyGpus": {}, "gpuDetails": []}
    by_uuid = {g.uuid: g for g in facts.gpu_facts}
    details = []
    for uuid in facts.gpus:
        g = by_uuid.get(uuid) or p.GpuFacts(uuid=uuid)
        details.append(
            {
                "gpuId": uuid, "index": g.index, "name": g.name or None, "memoryMiB": g.memory_mib or None,
                "mig": g.mig, "nvlinkDomain": g.nvlink_domain, "pcieSwitch": g.pcie_switch,
                "numaNode": g.numa_node, "heldBy": holders.get(uuid), "unhealthy": unhealthy.get(uuid),
            }
        )
    out = [u for u in unhealthy if u not in holders and u in facts.gpus]
    return {
        "freeGpus": len(facts.gpus) - len(holders) - len(out),
        "unhealthyGpus": dict(unhealthy),
        "gpuDetails": details,
    }
