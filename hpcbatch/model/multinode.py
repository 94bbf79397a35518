"""Multi-node parallel jobs (AWS Batch MNP): node ranges, overrides, and each node's container.

Rules, as AWS Batch documents them:

* ``nodeProperties.numNodes`` nodes, indexed 0..numNodes-1; ``mainNode`` is the index
  whose exit decides the job. One node is a gang too (TorchX makes one for every
  single-replica app): a ``JOBID#0`` record, the ``AWS_BATCH_JOB_NODE_*`` variables, the
  same states and endings as any size (``JobRecord.is_gang``).
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
    ranges = _node_ranges(node_properties)
    overrides = node_overrides or {}
    num_nodes = _node_count(num_nodes, ranges, overrides)
    if not 0 <= main < num_nodes:
        raise ClientError(f"nodeProperties.mainNode {main} is not a node of a {num_nodes}-node job")
    _check_ranges_fit(ranges, num_nodes, open_may_be_empty="numNodes" in overrides)
    resolved = _containers_by_index(ranges, num_nodes)
    _apply_node_overrides(resolved, overrides.get("nodePropertyOverrides") or [], num_nodes)
    return num_nodes, main, resolved


_Ranges = list[tuple[NodeRange, dict[str, Any]]]


def _node_ranges(node_properties: dict[str, Any]) -> _Ranges:
    """The definition's node ranges, each with its container; at least one."""
    ranges = []
    for i, entry in enumerate(node_properties.get("nodeRangeProperties") or []):
        field = f"nodeProperties.nodeRangeProperties[{i}].targetNodes"
        ranges.append((parse_target_nodes(entry.get("targetNodes", ""), field), entry.get("container") or {}))
    if not ranges:
        raise ClientError("nodeProperties.nodeRangeProperties must describe the nodes")
    return ranges


def _node_count(num_nodes: int, ranges: _Ranges, overrides: dict[str, Any]) -> int:
    """The job's node count: the definition's, or nodeOverrides.numNodes where an open range allows it."""
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
    return num_nodes


def _check_ranges_fit(ranges: _Ranges, num_nodes: int, *, open_may_be_empty: bool) -> None:
    """Every range names nodes of the job only."""
    for r, _ in ranges:
        if r.end is None and r.start >= num_nodes and open_may_be_empty:
            continue  # an open range ("1:") that nodeOverrides.numNodes left empty (a 1-node job)
        if r.start >= num_nodes or (r.end is not None and r.end >= num_nodes):
            raise ClientError(f"targetNodes {r.text!r} names nodes beyond the job's {num_nodes} nodes")


def _containers_by_index(ranges: _Ranges, num_nodes: int) -> list[dict[str, Any]]:
    """Each node's container: the narrowest range that covers it wins (ties: the later one)."""
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
    return [dict(c or {}) for c in containers]


def _apply_node_overrides(resolved: list[dict[str, Any]], entries: list[dict[str, Any]], num_nodes: int) -> None:
    """nodeOverrides.nodePropertyOverrides merged into the containers of the nodes they target."""
    for i, entry in enumerate(entries):
        field = f"nodeOverrides.nodePropertyOverrides[{i}].targetNodes"
        r = parse_target_nodes(entry.get("targetNodes", ""), field)
        if r.start >= num_nodes or (r.end is not None and r.end >= num_nodes):
            raise ClientError(f"{field} {r.text!r} names nodes beyond the job's {num_nodes} nodes")
        for index in r.resolve(num_nodes):
            resolved[index] = merge_container(resolved[index], entry.get("containerOverrides"))


def child_job_id(parent_id: str, index: int) -> str:
    """AWS names a multi-node job's node ``JOBID#index``."""
    return f"{parent_id}#{index}"


def split_child_id(job_id: str) -> tuple[str, int | None]:
    """(parent id, node index) of ``JOBID#i``; (job_id, None) for anything else."""
    parent, sep, index = job_id.rpartition("#")
    if sep and index.isdigit():
        return parent, int(index)
    return job_id, None


@dataclass(frozen=True)
class NodeEnd:
    """How one node of a multi-node job's try ended: what a failed gang's reason is made of."""

    index: int
    host: str  # the node it ran on
    exit_code: int | None
    reason: str | None  # container.reason: "OutOfMemoryError: ...", "Killed by signal SIGSEGV"
    stopped_at: int | None


OOM_PREFIX = "OutOfMemoryError"


def gang_failure_reason(main_node: int, ends: list[NodeEnd], status_reason: str | None) -> str:
    """The statusReason of a failed try of a gang, naming the node that failed and how.

    The root cause wins over the main node's plain exit: a node the OOM killer hit (the
    earliest), else a non-main node that failed on its own before the main node ended (the
    earliest), else the main node. Examples: ``OutOfMemoryError on node 2 (node3): Container
    killed due to memory usage``, ``Killed by signal SIGSEGV on node 1 (node2)``,
    ``Essential container in task exited: exit code 3 on node 0 (node1)``.

    >>> gang_failure_reason(0, [NodeEnd(0, "n1", 1, None, 9), NodeEnd(2, "n3", 137, "OutOfMemoryError: x", 5)], "E")
    'OutOfMemoryError on node 2 (n3): x'
    """
    def where(e: NodeEnd) -> str:
        return f"node {e.index} ({e.host})"

    def when(e: NodeEnd) -> float:
        return e.stopped_at if e.stopped_at is not None else float("inf")

    ooms = sorted((e for e in ends if (e.reason or "").startswith(OOM_PREFIX)), key=when)
    if ooms:
        e = ooms[0]
        rest = (e.reason or "")[len(OOM_PREFIX):].lstrip(": ")
        return f"{OOM_PREFIX} on {where(e)}" + (f": {rest}" if rest else "")
    main = next((e for e in ends if e.index == main_node), None)
    main_end = when(main) if main is not None else float("inf")
    early = sorted(
        (e for e in ends if e.index != main_node and when(e) <= main_end and (e.exit_code or e.reason)), key=when
    )
    culprit = early[0] if early else main
    if culprit is None:
        return status_reason or "Failed"
    if culprit.reason:
        return f"{culprit.reason} on {where(culprit)}"
    if culprit is main:
        return f"{status_reason or 'Essential container in task exited'}: exit code {culprit.exit_code} on {where(culprit)}"
    return f"Exit code {culprit.exit_code} on {where(culprit)}"


def names_resource(container: dict[str, Any], kind: str) -> bool:
    """True when a node's container names ``kind`` ("VCPU", "MEMORY") itself, in
    resourceRequirements or the legacy ``vcpus``/``memory`` keys."""
    legacy = {"VCPU": "vcpus", "MEMORY": "memory"}.get(kind)
    if legacy and container.get(legacy):
        return True
    return any(r.get("type") == kind for r in container.get("resourceRequirements") or ())


def whole_node(container: dict[str, Any], vcpus: float, memory_mib: int, node_vcpus: int, node_memory_mib: int) -> tuple[float, int]:
    """(vCPUs, MiB) one node of a multi-node job gets: the node is held whole, so what the job
    does not name is the whole node's (Slurm's ``--exclusive``); what it names it gets."""
    return (
        vcpus if names_resource(container, "VCPU") else float(node_vcpus),
        memory_mib if names_resource(container, "MEMORY") else node_memory_mib,
    )
