"""Anti-entropy: what the head does when an agent's heartbeat disagrees with its own view.

Rules / theory of operation (pure: the heartbeat's list and the head's view in, decisions out):

* Every heartbeat lists the attempts the agent runs. The head knows which attempts it
  expects on that node, and which of them are still STARTING (their start order may cross
  the heartbeat, or the agent may still be pulling an image: not listed yet is normal).
* An attempt listed that the head does not expect (it has ended it, or never made it) is
  killed.
* An expected attempt listed while the head thinks it STARTING is running: the
  ``AttemptStarted`` report was lost or is behind.
* An expected attempt not listed counts one miss per heartbeat; a listing resets the
  count, and so does its ``AttemptStarted`` (hpcbatch.head.reports): what it missed while
  STARTING never counts against it running. After ``ask_after`` misses in a row the head
  asks (resends the start order, which an agent runs at most once: it answers with the
  attempt's exit, or starts it if the order never arrived). A RUNNING attempt still unlisted ``ask_after`` heartbeats later is lost:
  it is failed with a reason. A STARTING one is asked again every ``ask_after`` misses and
  never failed by absence alone (its start may be a long image pull).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reconciliation:
    """What to do about one heartbeat; ``misses`` replaces the node's counts."""

    kill: list[str] = field(default_factory=list)  # attempt ids the agent runs and the head has ended
    started: list[str] = field(default_factory=list)  # STARTING attempts the agent runs
    ask: list[str] = field(default_factory=list)  # resend their start orders
    lost: list[str] = field(default_factory=list)  # fail them: the agent no longer has them
    misses: dict[str, int] = field(default_factory=dict)


def reconcile(
    expected: Mapping[str, bool], listed: list[str] | set[str], misses: Mapping[str, int], ask_after: int
) -> Reconciliation:
    """``expected``: attempt id -> still STARTING; ``listed``: the heartbeat's running attempts."""
    ask_after = max(1, ask_after)
    running = set(listed)
    out = Reconciliation()
    out.kill.extend(sorted(running - expected.keys()))
    for attempt_id, starting in sorted(expected.items()):
        if attempt_id in running:
            if starting:
                out.started.append(attempt_id)
            continue
        missed = misses.get(attempt_id, 0) + 1
        out.misses[attempt_id] = missed
        if not starting and missed >= 2 * ask_after:
            out.lost.append(attempt_id)
        elif missed % ask_after == 0:
            out.ask.append(attempt_id)
    return out
