"""The head's node registry (hpcbatch.head.nodes): node states and fence holds, time passed in."""

from __future__ import annotations

import pytest

from hpcbatch import protocol as p
from hpcbatch.fencing import retry_hold_s
from hpcbatch.head.nodes import FencingConfig, NodeRegistry
from hpcbatch.model.jobs import FenceHold
from hpcbatch.model.nodes import IllegalNodeTransition, NodeState

HOLD_S = retry_hold_s(30.0, 1.0)


def joined(registry: NodeRegistry, name: str = "n1", **facts: object) -> None:
    node = p.NodeFacts(name=name, hostname=name, addresses=[], vcpus=1, memory_mib=1024, **facts)  # type: ignore[arg-type]
    registry.register(name, p.Register(instance_id=name, node=node), now_ms=5)


def test_a_node_registers_active_drains_and_is_lost() -> None:
    registry = NodeRegistry()
    assert registry.ensure("n1").state is NodeState.DOWN
    joined(registry)
    info = registry.get("n1")
    assert info is not None and info.state == NodeState.ACTIVE and info.last_heartbeat_at == 5
    assert registry.state_change("n1") == ("ACTIVE", None)
    assert registry.state_change("n1") is None  # once per change
    info.jobs.add("j1")
    assert registry.set_drain("n1", "repair") and info.state == NodeState.DRAINING
    assert registry.release("n1", "j1") and info.state == NodeState.DRAINED
    assert registry.drained() == {"n1": "repair"}
    info.jobs.add("j2")
    assert registry.lose("n1", "Node n1 lost") == ["j2"]
    assert info.state == NodeState.DOWN and info.jobs == set() and not registry.needs_losing("n1")
    assert not registry.set_drain("n1", None)  # a DOWN node keeps its state; the reason waits for it


def test_an_illegal_node_move_raises() -> None:
    registry = NodeRegistry()
    registry.ensure("n1")
    with pytest.raises(IllegalNodeTransition, match="n1"):
        registry.gpus_out("n1", {"GPU-1": "Xid 79"})


def test_the_compute_environment_is_named_or_chosen_by_label() -> None:
    registry = NodeRegistry()
    joined(registry, "a", compute_environment="ce-a")
    joined(registry, "b", compute_environment="", labels={"rack": "r1"})
    assert registry.compute_environment_of("b") == ""
    assert registry.set_selector("ce-r1", {"hpcbatch:nodeSelector": "rack=r1"})
    assert not registry.set_selector("ce-r1", {"hpcbatch:nodeSelector": "rack=r1"})
    assert registry.compute_environment_of("a") == "ce-a" and registry.compute_environment_of("b") == "ce-r1"
    assert registry.joined_by_label() == ["b"]


def test_a_held_retry_is_due_at_its_deadline_and_waits_a_fence_more_when_still_running() -> None:
    registry = NodeRegistry(FencingConfig(fence_after_s=30.0, heartbeat_interval_s=1.0))
    assert registry.fence_hold_s("n1") == HOLD_S
    registry.hold("j1", FenceHold(node="n1", attempt_id="a1"), HOLD_S, now=100.0)
    registry.hold("j2", FenceHold(node="n2", attempt_id="a2"), 5.0, now=100.0)
    assert registry.next_deadline() == 105.0
    assert registry.due(104.0) == []
    assert registry.due(105.0) == ["j2"]
    assert registry.drop_hold("j2") is not None
    hold = registry.held("j1")
    assert hold is not None and [j for j, _ in registry.holds_on("n1")] == ["j1"]
    hold.still_running = True  # n1 came back still running a1: killed, its exit awaited
    assert registry.due(100.0 + HOLD_S) == []
    assert registry.next_deadline() == pytest.approx(100.0 + 2 * HOLD_S)
    assert registry.due(100.0 + 2 * HOLD_S) == ["j1"]
