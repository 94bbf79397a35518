"""Fair share (AWS Batch scheduling policies): which share of a queue goes next, and how much to hold back.

Rules, as AWS Batch documents them, and the choices made where it is silent:

* A policy lists ``shareDistribution`` entries (``shareIdentifier``, ``weightFactor``). An
  identifier ending in ``*`` is a prefix: every share identifier that starts with it is its
  own share with that weight (the longest matching prefix wins; an exact entry beats any
  prefix). An identifier the policy does not list has weight 1.
* Lower weight = larger share: a share's standing is ``weight x usage``, and the share with
  the lowest standing goes next. Usage is in vCPUs: what the share runs now plus a decayed
  average of what it ran over the last ``shareDecaySeconds`` (an exponential moving average
  with that time constant; 0 = current usage only). Time comes in as an argument.
* Inside a share, jobs go by ``schedulingPriority`` (higher first), then submission order.
* ``computeReservation`` (0-99) keeps ``(computeReservation/100) ** active_shares`` of the
  queue's vCPUs free for share identifiers that have not run yet (AWS's formula: 50 keeps
  50% with one active share, 25% with two, 12.5% with three).

Pure: no clock, no I/O.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FairSharePolicy:
    """A scheduling policy's ``fairsharePolicy`` as the core uses it."""

    share_decay_s: int = 0
    compute_reservation: int = 0
    shares: tuple[tuple[str, float], ...] = ()  # (shareIdentifier, weightFactor), as listed

    def weight(self, share: str) -> float:
        """The weight factor of ``share``: its exact entry, else the longest matching prefix, else 1."""
        best: tuple[int, float] | None = None
        for ident, w in self.shares:
            if ident == share:
                return w
            if ident.endswith("*") and share.startswith(ident[:-1]):
                if best is None or len(ident) > best[0]:
                    best = (len(ident), w)
        return best[1] if best is not None else 1.0

    def reserved_fraction(self, active_shares: int) -> float:
        """The part of the queue's capacity held back for shares that are not active yet."""
        if self.compute_reservation <= 0:
            return 0.0
        return (self.compute_reservation / 100) ** max(1, active_shares)


@dataclass
class ShareUsage:
    """One share's usage in vCPUs: running now, and the decayed average of the past."""

    running: float = 0.0
    average: float = 0.0
    updated_s: float = 0.0

    def advance(self, now_s: float, decay_s: int) -> None:
        """Fold the time since the last update into the moving average."""
        dt = now_s - self.updated_s
        if dt > 0 and decay_s > 0:
            keep = math.exp(-dt / decay_s)
            self.average = self.average * keep + self.running * (1 - keep)
        self.updated_s = max(self.updated_s, now_s)

    @property
    def value(self) -> float:
        return self.running + self.average


@dataclass
class ShareLine:
    """The waiting jobs of one share, best first; ``standing`` orders the shares."""

    share: str
    weight: float
    usage: float
    jobs: list[tuple[int, int, str, float]] = field(default_factory=list)  # a heap of Entry, kept across passes

    @property
    def standing(self) -> float:
        return self.weight * self.usage


Entry = tuple[int, int, str, float]  # (-schedulingPriority, seq, job id, vCPUs): a share's heap order


def fair_order(
    lines: Iterable[ShareLine], valid: Callable[[Entry], bool], taken: list[tuple[ShareLine, Entry]]
) -> Iterator[str]:
    """Job ids in fair-share order, popped from the shares' heaps (``ShareLine.jobs``).

    Each pick charges the job's vCPUs to its share, as if it started, so shares interleave
    in proportion to their weights within one pass (weighted fair queuing). The heaps live
    across passes: entries that are no longer ``valid`` are dropped for good, and each
    popped valid entry goes to ``taken`` for the caller to push back if the job still waits
    (a pass that stops early pops only what it looked at).
    """
    heap: list[tuple[float, str, ShareLine]] = [(line.standing, line.share, line) for line in lines if line.jobs]
    heapq.heapify(heap)
    while heap:
        _, share, line = heapq.heappop(heap)
        entry = heapq.heappop(line.jobs)
        if valid(entry):
            taken.append((line, entry))
            line.usage += entry[3]
            yield entry[2]
        if line.jobs:
            heapq.heappush(heap, (line.standing, share, line))


def standing_ranks(lines: Iterable[ShareLine]) -> dict[str, int]:
    """Share -> its place in line (1 = served next) by standing, for wait reasons."""
    ordered = sorted(lines, key=lambda line: (line.standing, line.share))
    return {line.share: i + 1 for i, line in enumerate(ordered)}
