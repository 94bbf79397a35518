"""Gang placement helpers: choosing whole nodes for a multi-node job, and its reservation.

The rules these serve are in ``hpcbatch.scheduler.core``'s docstring. This module holds
the parts that need no scheduler state: given candidate nodes (each with the time it is
expected to be free), pick ``n`` of them, inside one placement group when one can hold
them all; describe a reservation; decide whether a job may backfill onto reserved nodes.
Pure: values in, values out, no clock.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ClusterShell.NodeSet import NodeSet, NodeSetException

UNKNOWN = math.inf  # expected free time of a node running a job with no time limit


@dataclass(frozen=True)
class Candidate:
    """A node a gang might use: when it is expected to be whole and free, and where it sits."""

    name: str
    placement_group: str | None
    free_at: float  # the current time when idle now; ``UNKNOWN`` when no end time is known
    size: tuple[float, int, int]  # (vCPUs, MiB, GPUs): smaller first, so big nodes stay free


@dataclass(frozen=True)
class Reservation:
    """Nodes held for a waiting gang from ``start_s`` (``UNKNOWN``: as they free up)."""

    job_id: str
    compute_environment: str
    nodes: tuple[str, ...]
    start_s: float
    placement_group: str | None = None
    # Pool nodes among ``nodes`` that are not up yet (``booting``): the start counts their boot.
    powering_up: tuple[str, ...] = ()
    powered_down: tuple[str, ...] = ()
    boot_s: float = 0.0  # the powered-down ones' expected boot time
    up_by_s: float = 0.0  # when the powering-up ones are expected up (past: overdue)
    resume_timeout_s: float = 0.0  # their pool's (an overdue boot's reason says it)
    rate_until_s: float = 0.0  # their pool's resume_rate is reached until then (PowerRateReached)

    def admits(self, now_s: float, time_limit_s: float | None) -> bool:
        """True when a job of ``time_limit_s`` started now ends before the reservation (backfill).

        With unknown end times the start is unknown too, so nothing is admitted: the gang
        keeps the nodes it holds (that, not a guess, is what keeps it from starving).
        """
        return (
            time_limit_s is not None
            and self.start_s != UNKNOWN
            and now_s + time_limit_s <= self.start_s
        )

    def describe(self, now_s: float) -> str:
        """The wait reason a reserved gang shows (``hpcbatch why``, statusReason)."""
        where = f"{hostlist(self.nodes)} in compute environment {self.compute_environment}"
        if self.start_s == UNKNOWN:
            return f"Reserved nodes {where}, held as they free up (running jobs have no time limit)"
        power = power_note(now_s, PowerFacts(
            self.powering_up, self.up_by_s, self.powered_down, self.boot_s, self.resume_timeout_s, self.rate_until_s))
        if self.powered_down:  # its start moves with the power-up: said without a time
            later = self.start_s > now_s + self.boot_s + 1e-6
            return (f"Reserved nodes {where}; {power}"
                    + (f"; the others free from t={fmt_time(self.start_s)}" if later else ""))
        if self.start_s <= now_s:
            head = f"Reserved nodes {where}, expected free now"
        elif self.powering_up and self.start_s <= self.up_by_s + 1e-6:  # the boot says when
            head = f"Reserved nodes {where}"
        else:
            head = f"Reserved nodes {where} from t={fmt_time(self.start_s)}"
        return f"{head}; {power}" if power else head


@dataclass(frozen=True)
class PowerFacts:
    """Pool nodes a waiting job needs that are not up: those powering up (expected up by
    ``up_by_s``) and those powered down (up ``boot_s`` after their power-up)."""

    powering_up: tuple[str, ...] = ()
    up_by_s: float = 0.0
    powered_down: tuple[str, ...] = ()
    boot_s: float = 0.0
    resume_timeout_s: float = 0.0  # 0: not known
    # The pool's resume_rate holds back a power-up of a node that could serve: the next from then.
    rate_until_s: float = 0.0


def power_note(now_s: float, f: PowerFacts) -> str:
    """The one wording of a wait on power, for single-node jobs and gangs alike (``why``):
    ``powering up node[2-3], expected up by t=190``; once overdue ``powering up node[2-3],
    expected up by now (overdue since t=190; resume_timeout_s is 300 s)``; ``node[4-5] are
    powered down, up ~90 s after a power-up``. Absolute times (the CLI shows them as local
    times and how far off), so the reason does not change from pass to pass; "" when none."""
    parts = []
    if f.powering_up:
        up = f"powering up {hostlist(f.powering_up)}, expected up by "
        if f.up_by_s > now_s + 1e-6:
            parts.append(f"{up}t={fmt_time(f.up_by_s)}")
        else:
            limit = f"; resume_timeout_s is {f.resume_timeout_s:g} s" if f.resume_timeout_s > 0 else ""
            parts.append(f"{up}now (overdue since t={fmt_time(f.up_by_s)}{limit})")
    if f.powered_down:
        verb = "is" if len(f.powered_down) == 1 else "are"
        parts.append(f"{hostlist(f.powered_down)} {verb} powered down, up ~{f.boot_s:.0f} s after a power-up")
    said = ", ".join(parts)
    if said and f.rate_until_s > now_s + 1e-6:  # why no more power up now, and till when
        said += f"; the pool's resume_rate is reached: the next power-up from t={fmt_time(f.rate_until_s)}"
    return said


def pick_nodes(
    candidates: Sequence[Candidate], n: int, require_group: bool
) -> tuple[str | None, list[Candidate]] | None:
    """The ``n`` candidates that are free soonest, as (placement group, nodes) or None.

    Among equally early choices, one placement group beats nodes spread over several, and
    the group with the fewest candidates (the tightest fit) beats a roomier one, so a large
    group stays whole for a larger gang. With ``require_group`` only a single group may be
    used. The nodes come back in index order (natural name order): index 0 is the main node.
    """
    if n <= 0 or len(candidates) < n:
        return None
    groups: dict[str, list[Candidate]] = {}
    for c in candidates:
        if c.placement_group is not None:
            groups.setdefault(c.placement_group, []).append(c)
    options: list[tuple[tuple[float, int, int, str], str | None, list[Candidate]]] = []
    for group, members in groups.items():
        if len(members) >= n:
            chosen = sorted(members, key=_soonest)[:n]
            options.append(((chosen[-1].free_at, 0, len(members), group), group, chosen))
    if not require_group:
        chosen = sorted(candidates, key=_soonest)[:n]
        options.append(((chosen[-1].free_at, 1, len(candidates), ""), None, chosen))
    if not options:
        return None
    _, group, chosen = min(options, key=lambda o: o[0])
    return group, sorted(chosen, key=lambda c: natural_key(c.name))


def _soonest(c: Candidate) -> tuple[float, tuple[float, int, int], tuple[object, ...]]:
    return (c.free_at, c.size, natural_key(c.name))


@functools.lru_cache(maxsize=1 << 16)
def natural_key(name: str) -> tuple[object, ...]:
    """Sort key that puts ``n2`` before ``n10``, as hostlists do."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def hostlist(names: Iterable[str]) -> str:
    """Fold node names into range notation (``n[1-3]``), the sysadmin's form."""
    return _hostlist(tuple(names))


@functools.lru_cache(maxsize=1024)  # a reservation is described every pass: parse its nodes once
def _hostlist(names: tuple[str, ...]) -> str:
    simple = _one_prefix(names)
    if simple is not None:
        return simple
    try:
        return str(NodeSet.fromlist(names))
    except NodeSetException:  # a name NodeSet cannot parse: show them as they are
        return ",".join(names)


def fmt_time(t: float) -> str:
    """A time as the head sent it, without float noise (``120``, ``120.5``)."""
    return f"{t:.3f}".rstrip("0").rstrip(".")


_SIMPLE_NAME = re.compile(r"([^\d\[\],]+)(0|[1-9]\d*)")


def _one_prefix(names: tuple[str, ...]) -> str | None:
    """NodeSet's folding for the common case, without parsing: names that are all one prefix
    (no digits) and a number without leading zeros (``n[1-3,5]``); None otherwise."""
    prefix, numbers = None, set()
    for name in names:
        m = _SIMPLE_NAME.fullmatch(name)
        if m is None or (prefix is not None and m.group(1) != prefix):
            return None
        prefix = m.group(1)
        numbers.add(int(m.group(2)))
    if prefix is None:
        return None
    ordered = sorted(numbers)
    if len(ordered) == 1:
        return f"{prefix}{ordered[0]}"
    ranges, start = [], ordered[0]
    for prev, cur in zip(ordered, [*ordered[1:], None], strict=True):
        if cur is None or cur != prev + 1:
            ranges.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
    return f"{prefix}[{','.join(ranges)}]"
