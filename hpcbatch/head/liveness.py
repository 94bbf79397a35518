"""Which silent nodes the head declares lost: pure rules, time passed in, no I/O.

Rules (the fleet calls ``LivenessJudge.check`` once a heartbeat interval):

* A node is silent when nothing of it *arrived* for ``deadline_s`` while the head was
  listening. The head's own blindness does not count against a node: when the head's
  check comes late (the process was stopped, swapped, or its loop blocked) by more than
  ``stall_s``, the head was not listening, so every node's silence restarts from the
  moment the head resumed (``listening_since``), plus up to one more deadline (at most
  the stall's length): a stall longer than the agents' own timeout makes every agent
  reconnect at once, and thousands of handshakes take a while. A head that restarts does
  the same with its start time (the fleet's startup grace).
* Silent nodes are failed when they are few: at most ``max(min_batch, max_fraction x
  nodes)`` at once. More than that at once is more likely the head's trouble (its own
  network, a backlog, a reconnect storm) than theirs: the head fails none of them and
  re-checks on the next tick, and goes on re-checking while the silent nodes keep coming
  back (their number falls). What is left once it stops falling is failed if few; a
  silence that stops falling for ``give_up_s`` is believed whole (a rack that really
  lost power). A falling number restarts that clock: 5,000 agents reconnecting to a
  resumed head on two busy cores came back at ~200 a second (bench/fleet --stall). The nodes' own fence (``fence_after_s``) still guards their jobs meanwhile.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Verdict:
    """One check's outcome: the nodes to fail now (with how long each was silent)."""

    lost: list[tuple[str, float]] = field(default_factory=list)
    deferred: int = 0  # silent nodes not failed this time (too many at once: re-checked)
    stalled_s: float = 0.0  # how late this check came: the head's own blind time


@dataclass
class LivenessJudge:
    """See the module docstring."""

    deadline_s: float
    stall_s: float  # a check later than this after the previous one means the head stalled
    max_fraction: float = 0.1
    min_batch: int = 3
    give_up_s: float = 30.0
    listening_since: float = -math.inf
    _last_check: float | None = None
    _mass_since: float | None = None
    _mass_left: int = 0  # silent nodes at the previous check of a mass silence

    def limit(self, nodes: int) -> int:
        """How many silent nodes may be failed at once among ``nodes``."""
        return max(self.min_batch, math.floor(self.max_fraction * nodes))

    def check(self, now: float, last_heard: Mapping[str, float], watched: Iterable[str]) -> Verdict:
        """The nodes of ``watched`` to fail now; ``last_heard``: when each was last heard (missing: never)."""
        stalled = 0.0
        if self._last_check is not None and now - self._last_check > self.stall_s:
            stalled = now - self._last_check
            # What arrived while stopped is read from now on; the reconnect storm gets time.
            self.listening_since = now + min(stalled, self.deadline_s)
        self._last_check = now
        names = list(watched)
        silent = []
        for name in names:
            heard = max(last_heard.get(name, -math.inf), self.listening_since)
            if now - heard > self.deadline_s:
                silent.append((name, now - last_heard.get(name, self.listening_since)))
        recovering = self._mass_since is not None and 0 < len(silent) < self._mass_left
        if len(silent) <= self.limit(len(names)) and not recovering:
            self._mass_since = None
            return Verdict(silent, 0, stalled)
        if self._mass_since is None or recovering:
            self._mass_since = now  # the give-up clock runs only while nobody comes back
        self._mass_left = len(silent)
        if now - self._mass_since >= self.give_up_s:
            self._mass_since = None
            return Verdict(silent, 0, stalled)
        return Verdict([], len(silent), stalled)
