"""SubmitJob's check "could any node set of the queue ever hold this job?", O(1) per submit.

The rule is the pure ``hpcbatch.scheduler.satisfy``; this module hands it the queue's compute
environments as shapes. Building those shapes walks every node the head knows. Done on every
submit, that walk was 69 % of the head's CPU under a submit load at 5,000 nodes (py-spy,
``bench/fleet --nodes 5000``: 31.7 jobs/s, the head at 96 % of a core). The shapes change only
when a node becomes known or registers (its facts), a label selector changes (the engine's
``node_shapes_version`` counts these), a compute environment's ``maxvCpus`` or placement group
changes, or its power pool does. So each compute environment's shape is rebuilt only then,
and a verdict for one request against the same shapes is remembered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpcbatch.errors import ClientError
from hpcbatch.head.containers import CONTAINER_FEATURE
from hpcbatch.head.powerviews import pool_node_shapes
from hpcbatch.head.service.common import ServiceContext, name_of
from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.scheduler.satisfy import (
    ALLOW_UNSATISFIABLE_TAG,
    EnvironmentShape,
    NodeShape,
    allows_unsatisfiable,
    why_unsatisfiable,
)

# Verdicts remembered at most (one per distinct request shape and queue); then forgotten at once.
MAX_VERDICTS = 4096


@dataclass(frozen=True)
class _Built:
    """One compute environment's shape and what it was built from."""

    nodes_version: int
    max_vcpus: float | None
    placement_group: bool
    pool: Any  # the power pool's config object (compared by identity: a reload makes a new one)
    shape: EnvironmentShape


class SatisfiabilityCheck:
    """Refuses, at submit, a job no node set of its queue can ever hold (issue 18)."""

    def __init__(self, cx: ServiceContext) -> None:
        self._cx = cx
        self._nodes_version = -1
        self._nodes_by_ce: dict[str, tuple[NodeShape, ...]] = {}
        self._built: dict[str, _Built] = {}
        self._verdicts: dict[tuple[Any, ...], str | None] = {}

    def check(self, queue: dict[str, Any], num_nodes: int, resources: ResourceRequest, tags: dict[str, str]) -> None:
        """Raise a ClientError naming what falls short, unless the tags accept an unsatisfiable job."""
        if allows_unsatisfiable(tags):
            return
        shapes = self._queue_shapes(queue)
        # Resources only: a feature such as a container runtime can be installed; the wait reason tells.
        plain = ResourceRequest(vcpus=resources.vcpus, memory_mib=resources.memory_mib, gpus=resources.gpus)
        key = (tuple(id(s) for s in shapes), num_nodes, plain.vcpus, plain.memory_mib, plain.gpus)
        if key in self._verdicts:
            reason = self._verdicts[key]
        else:
            reason = why_unsatisfiable(num_nodes, plain, shapes)
            if len(self._verdicts) >= MAX_VERDICTS:
                self._verdicts.clear()
            self._verdicts[key] = reason
        if reason is not None:
            raise ClientError(
                f"{reason} (job queue {queue['jobQueueName']}); no node set can ever hold this job. "
                f"To queue it anyway (nodes to come), tag it {ALLOW_UNSATISFIABLE_TAG}=true "
                "(hpcbatch submit --allow-unsatisfiable)"
            )

    def _queue_shapes(self, queue: dict[str, Any]) -> list[EnvironmentShape]:
        """The queue's compute environments, in order, as shapes (rebuilt only when changed)."""
        shapes = []
        for entry in sorted(queue.get("computeEnvironmentOrder") or [], key=lambda e: e.get("order", 0)):
            doc = self._cx.store.get_resource("ce", name_of(entry["computeEnvironment"]))
            if doc is not None:
                shapes.append(self._environment(doc))
        return shapes

    def _environment(self, doc: dict[str, Any]) -> EnvironmentShape:
        name, compute = doc["computeEnvironmentName"], doc.get("computeResources") or {}
        max_vcpus = None if compute.get("maxvCpus") is None else float(compute["maxvCpus"])
        placement_group = bool(compute.get("placementGroup"))
        pool = self._cx.power_pools.get(name)
        version = self._refresh_nodes()
        built = self._built.get(name)
        if (built is None or built.nodes_version != version or built.max_vcpus != max_vcpus
                or built.placement_group != placement_group or built.pool is not pool):
            # A MANAGED CE's powered-down nodes never seen yet count too: they can be powered up.
            powered_down = tuple(NodeShape(n, v, m) for n, v, m in pool_node_shapes(
                name, self._cx.power_pools, set(self._cx.engine.node_names())))
            shape = EnvironmentShape(name, max_vcpus, placement_group, self._nodes_by_ce.get(name, ()) + powered_down)
            built = self._built[name] = _Built(version, max_vcpus, placement_group, pool, shape)
            self._verdicts.clear()  # they are keyed by the shapes' identities, and one shape is new
        return built.shape

    def _refresh_nodes(self) -> int:
        """Every known node with facts, as a shape, grouped by compute environment (one walk per change)."""
        version = self._cx.engine.node_shapes_version()
        if version == self._nodes_version:
            return version
        engine = self._cx.engine
        by_ce: dict[str, list[NodeShape]] = {}
        for node, info in engine.nodes_snapshot().items():
            facts = info.facts
            if facts is None:
                continue
            by_ce.setdefault(engine.compute_environment_of(node), []).append(NodeShape(
                node, facts.vcpus, facts.memory_mib, max(len(facts.gpus), facts.declared_gpus),  # unhealthy ones heal
                facts.placement_group, frozenset((CONTAINER_FEATURE,)) if facts.container_runtime else frozenset(),
            ))
        self._nodes_by_ce = {ce: tuple(shapes) for ce, shapes in by_ce.items()}
        self._nodes_version = version
        return version
