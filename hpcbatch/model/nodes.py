"""The node state machine: every legal move of a node, in one table.

Rules / theory of operation (what the head shows in ``ListNodes`` and the node event stream):

* A node is DOWN until its agent registers, and again once the head gives it up as lost
  (no heartbeat for too long, cut off, or powered off).
* A registered node is ACTIVE while it takes new work. An admin's drain (or a GPU shortfall
  found at registration) stops new work: the node is DRAINING while attempts still run on
  it and DRAINED once the last one ended. Resuming makes it ACTIVE again.
* Where a node goes on an event follows from two facts, not from the event alone: whether
  a drain reason is set and whether attempts still run there (``settled_state``). The table
  says, per (state, event), which of those outcomes are legal moves; anything else raises
  ``IllegalNodeTransition`` naming the node, its state and the event.

As with hpcbatch.model.lifecycle for jobs: no I/O, no clock; the head's node registry
(hpcbatch.head.nodes) makes every state change through ``next_node_state``.
"""

from __future__ import annotations

from enum import StrEnum


class NodeState(StrEnum):
    """A node's state, stored and shown as plain text."""

    ACTIVE = "ACTIVE"
    DRAINING = "DRAINING"
    DRAINED = "DRAINED"
    DOWN = "DOWN"


class NodeEvent(StrEnum):
    """What can happen to a node; the table below says where each may lead."""

    REGISTERED = "registered"  # its agent (re)joined
    DRAIN = "drain"  # an admin set (or changed) a drain reason
    RESUME = "resume"  # an admin cleared the drain reason
    GPU_OUT = "gpu_out"  # a heartbeat took a GPU out of service (the reason changes; a drain settles)
    LAST_JOB_ENDED = "last_job_ended"  # a DRAINING node's last attempt ended
    LOST = "lost"  # unheard too long, cut off, or powered off


N, V = NodeState, NodeEvent
_UP = frozenset({N.ACTIVE, N.DRAINING, N.DRAINED})

# (state, event) -> the states it may lead to (which one: ``settled_state``).
TRANSITIONS: dict[tuple[NodeState, NodeEvent], frozenset[NodeState]] = {
    **{(state, V.REGISTERED): _UP for state in NodeState},
    **{(state, V.LOST): frozenset({N.DOWN}) for state in NodeState},  # DOWN too: a recovered node's jobs
    **{(state, V.DRAIN): frozenset({N.DRAINING, N.DRAINED}) for state in _UP},
    **{(state, V.RESUME): frozenset({N.ACTIVE}) for state in _UP},
    (N.ACTIVE, V.GPU_OUT): frozenset({N.ACTIVE}),
    **{(state, V.GPU_OUT): frozenset({N.DRAINING, N.DRAINED}) for state in (N.DRAINING, N.DRAINED)},
    (N.DRAINING, V.LAST_JOB_ENDED): frozenset({N.DRAINED}),
}


class IllegalNodeTransition(Exception):
    """A node move the state machine does not allow; always a bug or a race to report."""

    def __init__(self, node: str, state: NodeState, event: NodeEvent, target: NodeState | None = None) -> None:
        to = f" (to {target.value})" if target is not None else ""
        super().__init__(f"node {node}: cannot apply {event.value!r} in state {state.value}{to}")
        self.node, self.state, self.event, self.target = node, state, event, target


def settled_state(event: NodeEvent, *, draining: bool, busy: bool) -> NodeState:
    """Where a node lands: DOWN when lost; else ACTIVE, or DRAINING while busy, then DRAINED."""
    if event is NodeEvent.LOST:
        return NodeState.DOWN
    if not draining:
        return NodeState.ACTIVE
    return NodeState.DRAINING if busy else NodeState.DRAINED


def next_node_state(node: str, state: NodeState, event: NodeEvent, *, draining: bool, busy: bool) -> NodeState:
    """The state ``event`` leads ``node`` to from ``state``, or raise IllegalNodeTransition."""
    allowed = TRANSITIONS.get((state, event))
    if allowed is None:
        raise IllegalNodeTransition(node, state, event)
    target = settled_state(event, draining=draining, busy=busy)
    if target not in allowed:
        raise IllegalNodeTransition(node, state, event, target)
    return target


def can_apply_node(state: NodeState, event: NodeEvent) -> bool:
    """True when ``event`` is legal in ``state`` (for some outcome)."""
    return (state, event) in TRANSITIONS
