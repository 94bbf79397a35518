"""Fencing a node cut off from the head: how long the agent waits before it kills its
attempts, and how long the head holds their retries (docs/chaos.md).

The two sides count from the same moment. The agent's fence lease runs from the send time
of the newest message of its own that a head has echoed back (``sent_at``/``echo`` in
hpcbatch.protocol), which is never later than the moment the head last heard the node; the
head holds retries until ``fence_after_s`` plus a margin after that moment. So whatever
the network loses or delays, the old attempt is dead before its retry starts elsewhere.
"""

from __future__ import annotations

# The fence, in node-lost timeouts (heartbeat interval x liveness): long enough that a
# head restart or a failover to a standby (seconds) never kills running work, short enough
# that a cut-off node's jobs are retried within a minute. Defaults: 1 s x 5 x 6 = 30 s; never
# under 15 s, however short the heartbeats (a head restart takes seconds, whatever they are).
FENCE_TIMEOUTS = 6
FENCE_MIN_S = 15.0
# What the head adds to the agent's fence before it retries: the agent checks its lease once
# per heartbeat interval, and killing a process group (or a container) takes a moment.
FENCE_MARGIN_S = 2.0
FENCE_MARGIN_HEARTBEATS = 2


def default_fence_after_s(heartbeat_interval_s: float, liveness: int) -> float:
    """The agent's ``fence_after_s`` when its config leaves it out."""
    return max(FENCE_MIN_S, heartbeat_interval_s * liveness * FENCE_TIMEOUTS)


def retry_hold_s(fence_after_s: float, heartbeat_interval_s: float) -> float:
    """How long after the head last heard a node it may start a retry of that node's attempts."""
    return fence_after_s + FENCE_MARGIN_S + FENCE_MARGIN_HEARTBEATS * heartbeat_interval_s


def next_hold_deadline(now: float, deadline: float, still_running: bool, hold_s: float) -> float | None:
    """A held retry at ``now``: None to release it, else the (possibly new) deadline.

    ``still_running``: the node came back reporting the attempt alive and was told to kill
    it; its exit report releases the retry, and if that never comes the retry waits one
    whole fence more (the node may be cut off again, and then it fences the attempt).
    """
    if now < deadline:
        return deadline
    if still_running:
        return now + hold_s
    return None
