"""The node state machine (hpcbatch.model.nodes): one table, everything else illegal."""

from __future__ import annotations

import itertools

import pytest

from hpcbatch.model.nodes import (
    TRANSITIONS,
    IllegalNodeTransition,
    NodeEvent,
    NodeState,
    can_apply_node,
    next_node_state,
    settled_state,
)

N, V = NodeState, NodeEvent


def test_a_node_joins_active_or_drained_and_leaves_down() -> None:
    assert next_node_state("n1", N.DOWN, V.REGISTERED, draining=False, busy=False) is N.ACTIVE
    assert next_node_state("n1", N.DOWN, V.REGISTERED, draining=True, busy=False) is N.DRAINED
    assert next_node_state("n1", N.DOWN, V.REGISTERED, draining=True, busy=True) is N.DRAINING
    for state in NodeState:
        assert next_node_state("n1", state, V.LOST, draining=True, busy=True) is N.DOWN


def test_drain_then_the_last_job_ends_then_resume() -> None:
    state = next_node_state("n1", N.ACTIVE, V.DRAIN, draining=True, busy=True)
    assert state is N.DRAINING
    state = next_node_state("n1", state, V.LAST_JOB_ENDED, draining=True, busy=False)
    assert state is N.DRAINED
    assert next_node_state("n1", state, V.RESUME, draining=False, busy=False) is N.ACTIVE


def test_a_gpu_out_keeps_an_active_node_active() -> None:
    assert next_node_state("n1", N.ACTIVE, V.GPU_OUT, draining=False, busy=True) is N.ACTIVE
    with pytest.raises(IllegalNodeTransition):
        next_node_state("n1", N.ACTIVE, V.GPU_OUT, draining=True, busy=True)


@pytest.mark.parametrize(("state", "event"), [
    (N.DOWN, V.DRAIN), (N.DOWN, V.RESUME), (N.DOWN, V.GPU_OUT), (N.DOWN, V.LAST_JOB_ENDED),
    (N.ACTIVE, V.LAST_JOB_ENDED), (N.DRAINED, V.LAST_JOB_ENDED),
])
def test_illegal_moves_raise_naming_node_state_and_event(state: NodeState, event: NodeEvent) -> None:
    assert not can_apply_node(state, event)
    with pytest.raises(IllegalNodeTransition) as caught:
        next_node_state("n7", state, event, draining=False, busy=False)
    assert "n7" in str(caught.value) and state.value in str(caught.value) and event.value in str(caught.value)


def test_a_drain_that_does_not_drain_is_illegal() -> None:
    with pytest.raises(IllegalNodeTransition, match="to ACTIVE"):
        next_node_state("n1", N.ACTIVE, V.DRAIN, draining=False, busy=False)


def test_every_legal_entry_is_reachable_by_some_facts() -> None:
    for (state, event), targets in TRANSITIONS.items():
        reached = {settled_state(event, draining=d, busy=b) for d, b in itertools.product((False, True), repeat=2)}
        assert targets <= reached, (state, event)
