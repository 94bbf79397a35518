"""Multi-node parallel jobs (AWS Batch MNP): node ranges, overrides, and each node's container.

Rules, as AWS Batch documents them:

* ``nodeProperties.numNodes`` nodes, indexed 0..numNodes-1; ``mainNode`` is the index
  whose exit decides the job.
* ``nodeRangeProperties[].targetNodes`` names indexes: ``"0"``, ``"0:3"``, ``":3"`` (from 0),
  ``"4:"`` (to the last node). Every node must be covered; where ranges overlap the
  narrower range wins (ties: the later entry).
* SubmitJob's ``nodeOverrides.numNodes`` may change the node count only when the last
  node is covered by an open-ended range (``"n:"``), so every new node has properties; the
  main node must stay inside. ``nodePropertyOverrides`` apply containerOverrides by range.

Pure: JSON in, resolved per-node containers out, or a ClientError naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpcbatch.errors import ClientError
from hpcbatch.model.jobs import merge_container

MAX_NODES = 1000


@dataclass(frozen=True)
class NodeRange:
    """A parsed ``targetNodes``: inclusive ``start``; ``end`` None means open-ended."""

    start: int
    end: int | None
    text: str

    def resolve(self, num_nodes: int) -> range:
        end = num_nodes - 1 if self.end is None else self.end
        return range(self.start, end + 1)


def parse_target_nodes(text: str, field: str) -> NodeRange:
    """``"0"``, ``"0:3"``, ``":3"``, ``"4:"`` -> NodeRange; ClientError naming ``field`` otherwise."""
    def number(part: str) -> int:
        if not part.isdigit():
            raise ClientError(f"{field} {text!r} must look like 0, 0:3, :3 or 4: (node indexes)")
        return int(part)

    if ":" not in text:
        n = number(text)
        return NodeRange(n, n, text)
    first, _, last = text.partition(":")
    start = number(first) if first else 0
    end = number(last) if last else None
    if end is not None and end < start:
        raise ClientError(f"{field} {text!r}: the range ends before it starts")
    return NodeRange(start, end, text)


def resolve_nodes(
    node_properties: dict[str, Any], node_overrides: dict[str, Any] | None
) -> tuple[int, int, list[dict[str, Any]]]:
    """(numNodes, mainNode, container per node index) for a job submitted on a multinode definition."""
    num_nodes = int(node_properties.get("numNodes", 0))
    main = int(node_properties.get("mainNode", 0))
    ranges = []
    for i, entry in enumerate(node_properties.get("nodeRangeProperties") or []):
        field = f"nodeProperties.nodeRangeProperties[{i}].targetNodes"
        ranges.append((parse_target_nodes(entry.get("targetNodes", ""), field), entry.get("container") or {}))
    if not ranges:
        raise ClientError("nodeProperties.nodeRangeProperties must describe the nodes")
    overrides = node_overrides or {}
    if "numNodes" in overrides:
        wanted = int(overrides["numNodes"])
        if wanted != num_nodes and not any(r.end is None for r, _ in ranges):
            raise ClientError(
                "nodeOverrides.numNodes can change the node count only when the job definition's "
                "last range is open-ended (targetNodes like \"1:\")"
            )
        num_nodes = wanted
    if not 1 <= num_nodes <= MAX_NODES:
        raise ClientError(f"numNodes must be between 1 and {MAX_NODES} (got {num_nodes})")
    if not 0 <= main < num_nodes:
        raise ClientError(f"nodeProperties.mainNode {main} is not a node of a {num_nodes}-node job")
    for r, _ in ranges:
        if r.end is None and r.start >= num_nodes and "numNodes" in overrides:
            continue  # an open range ("1:") that nodeOverrides.numNodes left empty (a 1-node job)
        if r.start >= num_nodes or (r.end is not None and r.end >= num_nodes):
            raise ClientError(f"targetNodes {r.text!r} names nodes beyond the job's {num_nodes} nodes")
    containers: list[dict[str, Any] | None] = [None] * num_nodes
    width: list[int] = [MAX_NODES + 1] * num_nodes
    for r, container in ranges:
        span = r.resolve(num_nodes)
        for index in span:
            if len(span) <= width[index]:  # the narrower range wins; ties go to the later one
                containers[index], width[index] = container, len(span)
    uncovered = [str(i) for i, c in enumerate(containers) if c is None]
    if uncovered:
        raise ClientError(f"nodeProperties.nodeRangeProperties leave node(s) {', '.join(uncovered)} without properties")
    resolved: list[dict[str, Any]] = [dict(c or {}) for c in containers]
    for i, entry in enumerate(overrides.get("nodePropertyOverrides") or []):
        field = f"nodeOverrides.nodePropertyOverrides[{i}].targetNodes"
        r = parse_target_nodes(entry.get("targetNodes", ""), field)
        if r.start >= num_nodes or (r.end is not None and r.end >= num_nodes):
            raise ClientError(f"{field} {r.text!r} names nodes beyond the job's {num_nodes} nodes")
        for index in r.resolve(num_nodes):
            resolved[index] = merge_container(resolved[index], entry.get("containerOverrides"))
    return num_nodes, main, resolved


def child_job_id(parent_id: str, index: int) -> str:
    """AWS names a multi-node job's node ``JOBID#index``."""
    return f"{parent_id}#{index}"


def split_child_id(job_id: str) -> tuple[str, int | None]:
    """(parent id, node index) of ``JOBID#i``; (job_id, None) for anything else."""
    parent, sep, index = job_id.rpartition("#")
    if sep and index.isdigit():
        return parent, int(index)
    return job_id, None
