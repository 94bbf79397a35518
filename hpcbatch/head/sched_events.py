"""What the engine tells the scheduler, built from jobs, nodes and resource documents.

Pure functions: values in, one scheduler event out (hpcbatch.scheduler's typed events). The
engine (hpcbatch.head.engine) gathers the facts (a live job, a node as the registry knows
it, a compute environment or job queue document as stored) and feeds what these return.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hpcbatch.head import gpus as head_gpus
from hpcbatch.head.containers import CONTAINER_FEATURE
from hpcbatch.head.nodes import NodeInfo
from hpcbatch.model import interrupts
from hpcbatch.model.jobs import JobRecord
from hpcbatch.scheduler import (
    ComputeEnvironmentChanged,
    JobQueueChanged,
    JobRunnable,
    NodeUp,
    StateTimeLimit,
)
from hpcbatch.scheduler.fairshare import FairSharePolicy


def runnable(event_id: str, job: JobRecord, seq: int) -> JobRunnable:
    """``job`` may be placed (``seq``: its submission order, the FIFO tie-break)."""
    return JobRunnable(
        event_id, job.job_id, job.job_queue, job.resources, seq,
        num_nodes=job.num_nodes, time_limit_s=job.timeout_s,
        share=job.share_identifier, priority=job.scheduling_priority or 0, gang=job.is_gang,
        owner=job.owner, definition=job.job_definition,  # run-time predictions
    )


def node_up(event_id: str, name: str, node: NodeInfo, compute_environment: str,
            jobs: Mapping[str, JobRecord]) -> NodeUp:
    """The node as the scheduler must see it, with what already runs there (``node.allocations``).

    A node of a multi-node job rejoins its gang's hold (single tenancy survives restarts).
    The GPU ids each running attempt holds (stored on the attempt) come along, so a
    restarted head never hands out a held GPU twice; fair shares are charged again.
    """
    facts = node.facts
    assert facts is not None
    allocations = []
    gangs = []
    holds = []
    shares = []
    for job_id, request in node.allocations:
        job = jobs.get(job_id)
        sched_id = job_id
        if job is not None and job.parent_id is not None:
            sched_id = job.parent_id
            gangs.append(job.parent_id)
        allocations.append((sched_id, request))
        if job is not None and job.share_identifier is not None:  # fair share: charge it again
            shares.append((sched_id, job.job_queue, job.share_identifier))
        attempt = job.current_attempt if job is not None else None
        if attempt is not None and attempt.node == name and attempt.gpus:
            holds.append((sched_id, tuple(attempt.gpus)))
    return NodeUp(
        event_id, name, compute_environment, facts.vcpus, facts.memory_mib,
        len(facts.gpus), tuple(allocations), accepting=node.drain_reason is None,
        placement_group=facts.placement_group, gang_jobs=tuple(gangs),
        gpu_ids=tuple(facts.gpus), gpu_holds=tuple(holds), shares=tuple(shares),
        gpu_places=head_gpus.gpu_places(facts), gpu_out=tuple(node.gpu_unhealthy),
        features=frozenset((CONTAINER_FEATURE,)) if facts.container_runtime else frozenset(),
    )


def compute_environment_changed(event_id: str, doc: dict[str, Any]) -> ComputeEnvironmentChanged:
    """A compute environment as stored (AWS's ComputeEnvironmentDetail shape)."""
    resources = doc.get("computeResources") or {}
    max_vcpus = resources.get("maxvCpus")
    return ComputeEnvironmentChanged(
        event_id, doc["computeEnvironmentName"], doc["state"] == "ENABLED",
        None if max_vcpus is None else float(max_vcpus),
        # AWS's computeResources.placementGroup: gangs must stay inside one group.
        require_placement_group=bool(resources.get("placementGroup")),
        allocation_strategy=resources.get("allocationStrategy") or "BEST_FIT",
    )


def job_queue_changed(event_id: str, doc: dict[str, Any], policy: FairSharePolicy | None) -> JobQueueChanged:
    """A job queue as stored (AWS's JobQueueDetail shape), with its scheduling policy's fair share
    and its preemption settings (tags ``hpcbatch:preempts``/``hpcbatch:preemptible``)."""
    order = sorted(doc["computeEnvironmentOrder"], key=lambda e: e["order"])
    names = tuple(e["computeEnvironment"].rsplit("/", 1)[-1] for e in order)
    limits = tuple(
        StateTimeLimit(a["reason"], float(a["maxTimeSeconds"]), a["action"])
        for a in doc.get("jobStateTimeLimitActions", [])
        if a.get("state", "RUNNABLE") == "RUNNABLE"
    )
    return JobQueueChanged(
        event_id, doc["jobQueueName"], doc["state"] == "ENABLED", doc["priority"], names,
        fair_share=policy, time_limits=limits,
        preempts=interrupts.queue_flag(doc.get("tags"), interrupts.PREEMPTS_TAG),
        preemptible=interrupts.queue_flag(doc.get("tags"), interrupts.PREEMPTIBLE_TAG),
    )
