"""Fencing a node cut off from the head: how long the agent waits before it kills its
attempts, and how long the head holds their retries (docs/chaos.md).

The two sides count from the same moment. The agent's fence lease runs from the send time
of the newest message of its own that a head has echoed back (``sent_at``/``echo`` in
hpcbatch.protocol), which is never later than the moment the head last heard the node; the
head holds retries until ``fence_after_s`` plus a margin after that moment. So whatever
the network loses or delays, the old attempt is dead before its retry starts elsewhere.
"""

from __future__ import annotations

# The control-plane outage bound: how long an agent that hears no head runs its attempts on
# before it kills them, and so how long the head holds the retries of a node it lost (unless
# a power driver fences the node first: hpcbatch.head.power). Ten minutes by default, like
# Slurm's controller timeouts: a head stopped for maintenance, a failover, or a restart of
# the state database all fit inside it and cost no running job (docs/ha.md). Configured as
# ``fence_after_s`` on both sides (agent and head config); with very slow heartbeats the
# default grows to FENCE_TIMEOUTS node-lost timeouts (heartbeat interval x liveness).
OUTAGE_BOUND_S = 600.0
FENCE_TIMEOUTS = 6
FENCE_MIN_S = OUTAGE_BOUND_S  # the default never goes below the outage bound, however short the heartbeats
# What the head adds to the agent's fence before it retries: the agent checks its lease once
# per heartbeat interval, and killing a process group (or a container) takes a moment.
FENCE_MARGIN_S = 2.0
FENCE_MARGIN_HEARTBEATS = 2


def default_fence_after_s(heartbeat_interval_s: float, liveness: int) -> float:
    """``fence_after_s`` (agent and head) when the config leaves it out: the outage bound."""
    return max(OUTAGE_BOUND_S, heartbeat_interval_s * liveness * FENCE_TIMEOUTS)


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
