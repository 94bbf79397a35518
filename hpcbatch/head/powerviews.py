"""What the API, the console and the metrics show of MANAGED compute environments and their
node pools, read from the PowerManager (``hpcbatch.head.power``) and the pool configs."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from hpcbatch.head.power import PowerManager
from hpcbatch.head.powerdrivers.config import PoolConfig
from hpcbatch.scheduler.power import PowerState

# computeResources members that only mean something on EC2/Fargate: accepted, ignored, said so.
EC2_ONLY_FIELDS = (
    "subnets", "securityGroupIds", "instanceRole", "instanceTypes", "imageId", "ec2KeyPair", "launchTemplate",
    "spotIamFleetRole", "bidPercentage", "ec2Configuration", "updateToLatestImageVersion",
)


def managed_status(name: str, ce_type: str, resources: dict[str, Any], pools: dict[str, PoolConfig]) -> tuple[str, str]:
    """(status, statusReason) of a compute environment: a MANAGED one is VALID only with a node pool."""
    if ce_type != "MANAGED":
        return "VALID", "ComputeEnvironment Healthy"
    pool = pools.get(name)
    if pool is None:
        return "INVALID", (
            f"MANAGED compute environment {name} has no node pool: hpcbatch manages capacity by powering nodes "
            f"it owns; add [power.pools.{name}] (nodes, driver) to the head's config (docs/managed.md), "
            "or create it UNMANAGED"
        )
    ignored = [k for k in EC2_ONLY_FIELDS if resources.get(k) not in (None, [], {}, "")]
    if str(resources.get("type", "")).startswith("FARGATE"):
        ignored.insert(0, f"type {resources['type']}")
    reason = f"ComputeEnvironment Healthy: node pool {pool.nodes} ({pool.driver} driver)"
    if ignored:
        reason += f"; ignored (EC2 only, no meaning on this cluster): {', '.join(ignored)}"
    return "VALID", reason


def describe_capacity(doc: dict[str, Any], manager: PowerManager | None,
                      pools: dict[str, PoolConfig] | None = None) -> dict[str, Any]:
    """A CE doc as DescribeComputeEnvironments shows it: a MANAGED one's status against the
    head's pools now (a pool added or removed since it was created counts), and its
    ``computeResources.desiredvCpus`` as the planner follows demand."""
    if doc.get("type") != "MANAGED":
        return doc
    name = doc.get("computeEnvironmentName", "")
    status, reason = managed_status(name, "MANAGED", doc.get("computeResources") or {}, pools or {})
    doc = {**doc, "status": status, "statusReason": reason}
    if manager is not None and name in manager.desired:
        doc["computeResources"] = {**(doc.get("computeResources") or {}), "desiredvCpus": int(manager.desired[name])}
    return doc


def list_power(
    nodes: list[dict[str, Any]], manager: PowerManager | None,
    known: Collection[str] | None = None, add_unseen: bool = True,
) -> list[dict[str, Any]]:
    """ListNodes rows with power states; with ``add_unseen``, pool nodes the head never heard
    of (not in ``known``, default the rows' names) are listed too (ListNodes' last page)."""
    if manager is None:
        return nodes
    seen = set(known) if known is not None else {n["name"] for n in nodes}
    for name in sorted(manager.planner.records, key=_natural) if add_unseen else ():
        if name not in seen:
            pool = manager.planner.pools[manager.planner.pool_of[name]]
            nodes.append({  # the shape of a ListNodes row (the console reads every key), nothing known yet
                "name": name, "hostname": None, "addresses": [], "state": "DOWN", "stateReason": "",
                "computeEnvironment": pool.compute_environment, "placementGroup": pool.placement_groups.get(name),
                "fabricInterface": None, "fabricAddress": None, "fabricKind": None, "fabricDevices": [],
                "vcpus": 0, "memoryMiB": 0, "gpus": [], "containerRuntime": None, "images": [],
                "allocatedVcpus": 0.0, "allocatedMemoryMiB": 0, "allocatedGpus": 0, "gpuHolders": {},
                "runningJobs": [], "lastHeartbeatAt": 0, "agentVersion": None, "quarantinedMessages": [],
            })
    for row in nodes:
        rec = manager.record(row["name"])
        if rec is None:
            continue
        row["powerState"], row["powerStateReason"], row["powerStateSince"] = rec.state.value, rec.reason, int(rec.since * 1000)
        if rec.failed:
            row["state"], row["stateReason"] = "DOWN", rec.reason
        elif row["state"] == "DOWN" or rec.state is PowerState.POWERING_DOWN:
            row["state"], row["stateReason"] = rec.state.value, rec.reason
    return nodes


def _natural(name: str) -> tuple[str, int]:
    head = name.rstrip("0123456789")
    return head, int(name[len(head):] or 0)


def pool_node_shapes(ce: str, pools: dict[str, PoolConfig], known: set[str]) -> list[tuple[str, float, int]]:
    """(node, vcpus, memory MiB) of a pool's nodes the head has no facts for: they can be powered up."""
    from ClusterShell.NodeSet import NodeSet

    pool = pools.get(ce)
    if pool is None:
        return []
    return [(n, pool.vcpus_per_node, pool.memory_mib_per_node or 1 << 40) for n in NodeSet(pool.nodes) if n not in known]


def power_metrics(manager: PowerManager | None) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """Prometheus families (head.metrics): pool nodes by power state, node-hours powered and saved."""
    if manager is None:
        return
    states = GaugeMetricFamily("hpcbatch_pool_nodes", "MANAGED pool nodes by power state",
                               labels=["compute_environment", "power_state"])
    counts: dict[tuple[str, str], int] = {(ce, s.value): 0 for ce in manager.planner.pools for s in PowerState}
    for name, rec in manager.planner.records.items():
        counts[(manager.planner.pool_of[name], rec.state.value)] += 1
    for (ce, state), n in sorted(counts.items()):
        states.add_metric([ce, state], n)
    yield states
    hours = CounterMetricFamily("hpcbatch_pool_node_hours", "Node-hours of MANAGED pool nodes: powered, and saved "
                                "(powered down)", labels=["kind"])
    hours.add_metric(["powered"], manager.planner.powered_s / 3600)
    hours.add_metric(["saved"], manager.planner.saved_s / 3600)
    yield hours
