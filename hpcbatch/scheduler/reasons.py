"""Why a job waits, in AWS's words, and the log of what the core decided.

Rules: a wait reason is ``CODE - detail`` in AWS Batch's ``statusReason`` vocabulary
(``MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT`` when no node could ever hold the job,
``MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE`` when every maxvCpus is too small,
``CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY`` when it would fit but not now), so
jobStateTimeLimitActions can match the code. Nodes away (drained, down) come back: a job only
they could hold waits with a ``CAPACITY`` reason naming them; so do pool nodes powered down
or booting (``booting``), in the one wording of a wait on power (``gang.power_note``: the
scheduler alone writes a waiting job's reason; the head's power manager only tells facts).
Nodes held whole by a gang are named as such, never "no free vCPUs" (``gang_held``). A reason is emitted
(``SetWaitReason``) only when it changes. Every decision goes to the decision log keyed by
the jobs it is about, with the events that caused it (``decide``; ``decisions``).
"""

from __future__ import annotations

from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.scheduler import booting
from hpcbatch.scheduler.decisions import Cause, Decision, with_arrays
from hpcbatch.scheduler.events import Action, JobRunnable, SetWaitReason
from hpcbatch.scheduler.gang import Reservation, hostlist, natural_key
from hpcbatch.scheduler.placement import place
from hpcbatch.scheduler.state import CeState, QueueState, SchedulerState

# AWS's statusReason vocabulary is "CODE - detail"; jobStateTimeLimitActions match the CODE.
REQUIREMENT = "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT"  # no node could ever hold the job
MAX_RESOURCE = "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE"  # every CE's maxvCpus is too small
CAPACITY = "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY"  # it would fit, but not now
TIME_LIMIT_CANCEL = "Canceled by JobStateTimeLimit action due to reason: {}"  # AWS's text

WAIT_RESOURCES = "Waiting for resources: no node in the queue's compute environments has room now"
WAIT_RESERVED = "Waiting for resources: the nodes with room are reserved for a waiting multi-node job"
WAIT_QUEUE_DISABLED = "Job queue is DISABLED"
WAIT_NO_CE = "No ENABLED compute environment with nodes in this job queue"
WAIT_MAX_VCPUS = "Compute environment at its maxvCpus limit"

FEATURE_TEXT = {"container": "a container runtime (the job names an image)"}


# ------------------------------------------------------------------------ the log
def decide(st: SchedulerState, text: str, jobs: tuple[str, ...], runnable: JobRunnable | None = None) -> None:
    """Log a decision about ``jobs`` (its subject first): caused by ``runnable``'s arrival (the
    job it is about) and by this pass's events that changed capacity, policy or time."""
    own = (Cause("JobRunnable", runnable.event_id, runnable.job_id),) if runnable is not None else ()
    st.decisions.record(Decision(st.cause, text, with_arrays(jobs), own + st.world))


def runnable_of(st: SchedulerState, job_id: str) -> JobRunnable | None:
    """The ``JobRunnable`` of a waiting job, if it still waits in a known queue."""
    queue = st.queues.get(st.queue_of.get(job_id, ""))
    return queue.jobs.get(job_id) if queue is not None else None


def gpu_note(gpus: tuple[str, ...]) -> str:
    return f" GPUs {','.join(gpus)}" if gpus else ""


# ------------------------------------------------------------------ wait reasons
def wait_all(st: SchedulerState, queue: QueueState, reason: str, actions: list[Action]) -> None:
    for job_id in queue.jobs:
        wait(st, job_id, reason, actions)


def wait(st: SchedulerState, job_id: str, reason: str, actions: list[Action]) -> None:
    """``job_id`` waits for ``reason`` (with its fair-share standing); emitted when it changes."""
    if st.fair_note:
        queue_name = st.queue_of.get(job_id)
        queue = st.queues.get(queue_name or "")
        if queue is not None and queue.fair_share is not None and not reason.startswith("Fair share"):
            job = queue.jobs.get(job_id)
            reason += st.fair_note.get((queue.name, (job.share or "") if job else ""), "")
    if st.wait_reason.get(job_id) != reason:
        st.wait_reason[job_id] = reason
        actions.append(SetWaitReason(job_id, reason))


def cached_why_not(
    st: SchedulerState, r: ResourceRequest, ces: list[CeState], reserved: dict[str, Reservation],
    cache: dict[ResourceRequest, str],
) -> str:
    """``why_not``, once per distinct request in a scan (``cache``)."""
    reason = cache.get(r)
    if reason is None:
        reason = cache[r] = why_not(st, r, ces, reserved)
    return reason


def why_not(st: SchedulerState, r: ResourceRequest, ces: list[CeState], reserved: dict[str, Reservation]) -> str:
    """Why ``r`` cannot start now on ``ces`` (a reason with its AWS code)."""
    boot = booting.note(st, r, ces)
    if not any(n.could_ever_fit(r) for ce in ces for n in ce.nodes.values()):
        away = ", ".join(p for p in (boot, away_note(*nodes_away(st, r, ces))) if p)
        if away:  # a node that would hold it is only down or powered down: it comes back
            return f"{CAPACITY} - Waiting for a node that can hold the job: {away}"
        return f"{REQUIREMENT} - {why_never(st, r, ces)}"
    able = [ce for ce in ces if any(n.could_ever_fit(r) for n in ce.nodes.values())]
    if all(ce.max_vcpus is not None and r.vcpus > ce.max_vcpus + 1e-9 for ce in able):
        return (
            f"{MAX_RESOURCE} - needs {r.vcpus:g} vCPUs; maxvCpus of compute environments "
            f"{', '.join(f'{ce.name}={ce.max_vcpus:g}' for ce in able)}"
        )
    if all(ce.caps(r.vcpus) for ce in ces):
        return WAIT_MAX_VCPUS
    if reserved and place(st, r, None, ces, {}) is not None:
        return WAIT_RESERVED
    have = room_note(r, ces)
    gpus = f" and {r.gpus} GPUs" if r.gpus else ""
    away = ", ".join(p for p in (boot, away_note(*nodes_away(st, r, ces))) if p)
    return (
        f"{CAPACITY} - {WAIT_RESOURCES} (needs {r.vcpus:g} vCPUs and {r.memory_mib} MiB{gpus}, {have})"
        + (f"; {away}" if away else "")
    )


def room_note(r: ResourceRequest, ces: list[CeState]) -> str:
    """What room there is: the largest free node; with none, the nodes that could hold ``r``
    but are held whole by a multi-node job (placement never puts a job beside a gang)."""
    largest = max((f for ce in ces if (f := ce.index.largest_free()) is not None), default=None)
    if largest is not None:
        return f"the largest free node has {largest[0]:g} vCPUs and {largest[1]} MiB"
    return gang_held(r, ces) or "no node has free vCPUs"


def gang_held(r: ResourceRequest, ces: list[CeState]) -> str:
    """``node[1-2] are held whole by multi-node job G``: accepting nodes that could hold ``r``,
    by the gang holding them; "" when none."""
    by_gang: dict[str, list[str]] = {}
    for ce in ces:
        for n in ce.nodes.values():
            if n.gang is not None and n.accepting and n.could_ever_fit(r):
                by_gang.setdefault(n.gang, []).append(n.name)
    parts = []
    for gang in sorted(by_gang):
        names = sorted(by_gang[gang], key=natural_key)
        verb = "is" if len(names) == 1 else "are"
        parts.append(f"{hostlist(names)} {verb} held whole by multi-node job {gang}")
    return ", ".join(parts)


def why_never(st: SchedulerState, r: ResourceRequest, ces: list[CeState]) -> str:
    """Why no node of ``ces`` could ever hold ``r`` (the detail of a REQUIREMENT reason)."""
    names = ", ".join(ce.name for ce in ces)
    missing = r.requires - frozenset().union(*(n.features for ce in ces for n in ce.nodes.values()))
    if missing:
        return f"No node in compute environments {names} offers " + ", ".join(
            sorted(FEATURE_TEXT.get(f, f) for f in missing)
        )
    cpu_only = ResourceRequest(vcpus=r.vcpus, memory_mib=r.memory_mib, gpus=0, requires=r.requires)
    if r.gpus and any(n.could_ever_fit(cpu_only) for ce in ces for n in ce.nodes.values()):
        most = max(n.gpus - len(n.gpu_out) for ce in ces for n in ce.nodes.values())
        return (
            f"No node in compute environments {names} has {r.gpus} GPUs (the most is {most}): "
            f"vcpus={r.vcpus:g} memory={r.memory_mib}MiB gpus={r.gpus}"
        )
    return (
        f"No node in compute environments {names} can hold "
        f"vcpus={r.vcpus:g} memory={r.memory_mib}MiB gpus={r.gpus}"
    )


# ------------------------------------------- nodes away (drained, down): CAPACITY, named
def nodes_away(st: SchedulerState, r: ResourceRequest, ces: list[CeState]) -> tuple[list[str], list[str]]:
    """(not accepting work, down) nodes of ``ces`` that could hold ``r``: capacity that comes back."""
    drained: list[str] = []
    down: list[str] = []
    for ce in ces:
        away = st.away_cache.get(ce.name)
        if away is None:  # cached like the census: it changes only when nodes do
            away = st.away_cache[ce.name] = (
                [n for n in ce.nodes.values() if not n.accepting],
                [n for n in st.down.values() if n.ce == ce.name],
            )
        drained += (n.name for n in away[0] if n.could_ever_fit(r))
        down += (n.name for n in away[1] if n.could_ever_fit(r))
    return sorted(drained, key=natural_key), sorted(down, key=natural_key)


def gang_waits_for_nodes_away(st: SchedulerState, job: JobRunnable, ces: list[CeState]) -> str | None:
    """A CAPACITY reason naming the drained/down nodes when, with them back, one compute
    environment of ``ces`` would have the gang's nodes; None when even that is not enough."""
    n, r = job.num_nodes, job.request
    for ce in ces:
        if ce.max_vcpus is not None and n * r.vcpus > ce.max_vcpus + 1e-9:
            continue
        drained, down = nodes_away(st, r, [ce])
        if not drained and not down:
            continue
        active = sum(1 for nd in ce.nodes.values() if nd.accepting and nd.could_ever_fit(r))
        if active + len(drained) + len(down) >= n:
            return (
                f"{CAPACITY} - Waiting for {n} whole nodes in compute environment {ce.name}: "
                f"{active} can hold it now; {away_note(drained, down)}"
            )
    return None


def gang_why_never(st: SchedulerState, job: JobRunnable, ces: list[CeState]) -> tuple[str | None, str]:
    """(why the gang cannot run even on an empty cluster, or None; the first CE it could use)."""
    n, r = job.num_nodes, job.request
    group_ce = capped_ce = None
    for ce in ces:
        # Counted by node shape, not node by node: the shapes are few, the nodes many.
        census = ce.nodes.census  # kept as nodes come and go (``NodeCensus``)
        able_total = 0
        by_group: dict[str | None, int] = {}
        for (vcpus, memory_mib, gpus, group, features), count in census.items():
            if r.vcpus <= vcpus + 1e-9 and r.memory_mib <= memory_mib and r.gpus <= gpus and r.requires <= features:
                able_total += count
                by_group[group] = by_group.get(group, 0) + count
        for group, count in booting.count_by_group(ce, r).items() if ce.booting else ():  # they come up
            able_total += count
            by_group[group] = by_group.get(group, 0) + count
        fits_group = any(g is not None and c >= n for g, c in by_group.items())
        if ce.max_vcpus is not None and n * r.vcpus > ce.max_vcpus + 1e-9:
            capped_ce = capped_ce or ce.name
        elif fits_group or (not ce.require_placement_group and able_total >= n):
            return None, ce.name
        elif ce.require_placement_group and able_total >= n:
            group_ce = group_ce or ce.name
    away = gang_waits_for_nodes_away(st, job, ces)
    if away is not None:
        return away, ""
    if group_ce is not None:
        return f"{REQUIREMENT} - No placement group of compute environment {group_ce} can hold {n} nodes", ""
    if capped_ce is not None:
        return (
            f"{MAX_RESOURCE} - Compute environment {capped_ce} maxvCpus is below {n} nodes x "
            f"{r.vcpus:g} vCPUs", ""
        )
    return (
        f"{REQUIREMENT} - No compute environment in {', '.join(ce.name for ce in ces)} has {n} ACTIVE nodes "
        f"that can each hold vcpus={r.vcpus:g} memory={r.memory_mib}MiB gpus={r.gpus}"
        + "".join(f" and offer {FEATURE_TEXT.get(f, f)}" for f in sorted(r.requires)), ""
    )


def away_note(drained: list[str], down: list[str]) -> str:
    """``node3 is drained or draining, node4 is down (they come back)``; "" when none."""
    parts = []
    if drained:
        parts.append(f"{hostlist(drained)} {'is' if len(drained) == 1 else 'are'} drained or draining")
    if down:
        parts.append(f"{hostlist(down)} {'is' if len(down) == 1 else 'are'} down")
    return (", ".join(parts) + " (capacity that comes back)") if parts else ""


