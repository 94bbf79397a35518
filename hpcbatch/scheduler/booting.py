"""Pool nodes powered down or booting: planned with from the time they are expected up.

Rules (issue 20, "the boot time is part of the reservation so backfill stays honest"):

* A MANAGED pool's node that is not registered reaches the core as ``NodePowerChanged``:
  POWERING_UP since ``since_s`` is expected up at ``since_s + boot_s`` (an overdue one: now);
  POWERED_DOWN is expected ``boot_s`` after now (its power-up has not begun). Any other
  power state takes it out; ``NodeUp`` (it registered) replaces it. Nothing ever starts on
  such a node: it only counts for *when* a job can start.
* Reservations (``reserve``) take such a node as free at that time, like a node whose running
  jobs end then: a gang reserved on two idle nodes and two booting ones starts when the
  booting ones are up, and the two idle ones take only jobs planned to end by then
  (backfill, ``Reservation.admits``): a short job runs during the boot, a long one waits.
  A single-node job whose soonest room is a booting node is reserved there.
* Why a job waits (``reasons``) counts them as capacity that comes: a job only they can
  hold waits with a ``CAPACITY`` reason naming them (never a ``MISCONFIGURATION`` one), and
  a compute environment with only powered-down nodes still serves its queues.
* Forecasts (``planning``) see them as nodes that free up whole at that time.

Pure: the time is the core's (``Tick``) and the head's (``since_s``); no clock here.
"""

from __future__ import annotations

import heapq

from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.scheduler.events import NodePowerChanged
from hpcbatch.scheduler.gang import PowerFacts, Reservation, natural_key, power_note
from hpcbatch.scheduler.holds import ce_of
from hpcbatch.scheduler.state import BootFit, BootingNode, CeState, SchedulerState

PLANNED_STATES = ("POWERED_DOWN", "POWERING_UP")
UNKNOWN_MEMORY_MIB = 1 << 40  # NodePowerChanged.memory_mib 0 (the pool's is not known): any job's fits


def node_power_changed(st: SchedulerState, event: NodePowerChanged) -> None:
    """Plan with (or stop planning with) a pool node that is not registered."""
    forget(st, event.node)
    if event.state not in PLANNED_STATES or event.node in st.nodes:
        return  # a registered node is what it reports (NodeUp), not what the planner thinks
    st.down.pop(event.node, None)  # powered down on purpose: not "down", it comes on demand
    up = event.since_s + event.boot_s if event.state == "POWERING_UP" else None
    memory = event.memory_mib or UNKNOWN_MEMORY_MIB  # a pool's memory not known: not checked
    ce = ce_of(st, event.compute_environment)
    ce.booting[event.node] = BootingNode(
        event.node, event.compute_environment, event.vcpus, memory, event.gpus, event.boot_s, up,
        event.placement_group, event.features, event.resume_timeout_s,
    )
    ce.boot_fit.clear()


def forget(st: SchedulerState, name: str) -> None:
    """``name`` registered (or left planning): no longer a node to plan a boot with."""
    for ce in st.ces.values():
        if ce.booting and ce.booting.pop(name, None) is not None:
            ce.boot_fit.clear()


def fit(ce: CeState, r: ResourceRequest) -> BootFit:
    """``ce``'s booting nodes that could hold ``r`` (kept until they change: a pass asks often)."""
    found = ce.boot_fit.get(r)
    if found is None:
        able_ = [b for b in ce.booting.values() if b.could_ever_fit(r)]
        up = sorted((b for b in able_ if b.up_s is not None), key=lambda b: (b.up_s, natural_key(b.name)))
        down = sorted((b for b in able_ if b.up_s is None), key=lambda b: (b.boot_s, natural_key(b.name)))
        found = ce.boot_fit[r] = BootFit(up, down)
    return found


def able(
    st: SchedulerState, ce: CeState, r: ResourceRequest, reserved: dict[str, Reservation],
) -> list[tuple[float, BootingNode]]:
    """(expected up time, node) of ``ce``'s booting nodes that could hold ``r``, soonest first."""
    f, now = fit(ce, r), st.now
    ups = ((max(now, b.up_s or 0.0), b) for b in f.up if b.name not in reserved)
    downs = ((now + b.boot_s, b) for b in f.down if b.name not in reserved)
    return list(heapq.merge(ups, downs, key=lambda it: it[0]))


def soonest(
    st: SchedulerState, ce: CeState, r: ResourceRequest, reserved: dict[str, Reservation],
) -> tuple[BootingNode, float] | None:
    """The booting node of ``ce`` up soonest that could hold ``r`` (a single-node job), with its time."""
    if not ce.booting:
        return None
    f, now = fit(ce, r), st.now
    up = next(((b, max(now, b.up_s or 0.0)) for b in f.up if b.name not in reserved), None)
    down = next(((b, now + b.boot_s) for b in f.down if b.name not in reserved), None)
    if up is None or (down is not None and down[1] < up[1]):
        return down
    return up


def reservation(
    st: SchedulerState, job_id: str, ce: CeState, names: tuple[str, ...], start_s: float, group: str | None = None,
) -> Reservation:
    """A reservation on ``names`` of ``ce``, naming those that are powered down or booting."""
    if not ce.booting:
        return Reservation(job_id, ce.name, names, start_s, group)
    mine = [ce.booting[n] for n in names if n in ce.booting]
    down = tuple(b.name for b in mine if b.up_s is None)
    up = tuple(b.name for b in mine if b.up_s is not None)
    boot = max((b.boot_s for b in mine if b.up_s is None), default=0.0)
    up_by = max((b.up_s or 0.0 for b in mine if b.up_s is not None), default=0.0)
    timeout = max((b.resume_timeout_s for b in mine), default=0.0)
    return Reservation(job_id, ce.name, names, start_s, group, powering_up=up, powered_down=down, boot_s=boot,
                       up_by_s=up_by, resume_timeout_s=timeout, rate_until_s=ce.power_rate_until_s if down else 0.0)


def note(st: SchedulerState, r: ResourceRequest, ces: list[CeState]) -> str:
    """The pool nodes of ``ces`` that could hold ``r`` and are not up, in the one wording of a
    wait on power (``gang.power_note``: ``powering up node[5-8], expected up by t=190``); ""
    when none. Nodes powering up are what the job waits for: powered-down ones are named only
    while none is."""
    return ", ".join(n for ce in ces if ce.booting and (n := power_note(st.now, facts(fit(ce, r), ce.power_rate_until_s))))


def facts(f: BootFit, rate_until_s: float = 0.0) -> PowerFacts:
    """What a wait reason says of booting nodes (``f.up``) or else of powered-down ones (``f.down``,
    and till when the pool's resume_rate holds their power-up back, ``rate_until_s``)."""
    up, down = f.up, [] if f.up else f.down
    return PowerFacts(
        tuple(sorted((b.name for b in up), key=natural_key)), max((b.up_s or 0.0 for b in up), default=0.0),
        tuple(sorted((b.name for b in down), key=natural_key)), max((b.boot_s for b in down), default=0.0),
        max((b.resume_timeout_s for b in (*up, *down)), default=0.0), rate_until_s if f.down else 0.0,
    )


def count_by_group(ce: CeState, r: ResourceRequest) -> dict[str | None, int]:
    """How many of ``ce``'s booting nodes could hold ``r``, by placement group (gangs)."""
    out: dict[str | None, int] = {}
    f = fit(ce, r)
    for b in (*f.up, *f.down):
        out[b.placement_group] = out.get(b.placement_group, 0) + 1
    return out
