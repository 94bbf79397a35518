"""The scheduler's node census and idle-node index (hpcbatch.scheduler.nodeindex) agree with
the rules they replace: a census rebuilt from scratch, and ``pick_nodes`` over every idle node."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from hpcbatch.scheduler.gang import Candidate, pick_nodes
from hpcbatch.scheduler.nodeindex import IdleNodes, NodeCensus, shape_of


@dataclass
class Node:
    name: str
    vcpus: float
    memory_mib: int
    gpus: int
    placement_group: str | None
    accepting: bool = True
    gpu_out: frozenset[int] = frozenset()
    features: frozenset[str] = frozenset()


nodes_st = st.lists(
    st.builds(
        Node,
        name=st.integers(0, 40).map(lambda i: f"n{i}"),
        vcpus=st.sampled_from([2.0, 4.0, 8.0]),
        memory_mib=st.sampled_from([1024, 4096]),
        gpus=st.sampled_from([0, 0, 2]),
        placement_group=st.sampled_from([None, "rack1", "rack2", "rack3"]),
        accepting=st.booleans(),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(nodes_st, st.lists(st.integers(0, 40), max_size=20))
def test_the_census_kept_as_nodes_come_and_go_equals_one_rebuilt(nodes: list[Node], gone: list[int]) -> None:
    census = NodeCensus()
    for node in nodes:
        census[node.name] = node  # a re-registration replaces the old value
    for i in gone:
        census.pop(f"n{i}", None)
    rebuilt: dict[tuple[float, int, int, str | None, frozenset[str]], int] = {}
    for node in census.values():
        if node.accepting:
            key = (node.vcpus, node.memory_mib, node.gpus - len(node.gpu_out), node.placement_group, node.features)
            rebuilt[key] = rebuilt.get(key, 0) + 1
    assert census.census == rebuilt


@settings(max_examples=300, deadline=None)
@given(nodes_st, st.integers(1, 12), st.booleans(), st.sampled_from([1.0, 4.0, 8.0]), st.sets(st.integers(0, 40)),
       st.lists(st.integers(0, 40), max_size=10))
def test_a_gang_takes_the_nodes_pick_nodes_would_choose(
    nodes: list[Node], n: int, require_group: bool, vcpus: float, unusable_ids: set[int], gone: list[int],
) -> None:
    idle = IdleNodes()
    for node in nodes:
        idle[node.name] = node
    for i in gone:
        idle.pop(f"n{i}", None)
    unusable = {f"n{i}" for i in unusable_ids}

    def fits(shape: tuple[float, int, int, int, frozenset[str]]) -> bool:
        return vcpus <= shape[0]

    got = idle.pick(n, fits, unusable, require_group)
    able = [nd for nd in idle.values() if fits(shape_of(nd)) and nd.name not in unusable]
    want = pick_nodes(
        [Candidate(nd.name, nd.placement_group, 0.0, (nd.vcpus, nd.memory_mib, nd.gpus)) for nd in able], n, require_group
    )
    if want is None:
        assert got is None
    else:
        assert got is not None and [nd.name for nd in got] == [c.name for c in want[1]]
