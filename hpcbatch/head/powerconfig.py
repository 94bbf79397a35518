"""Checks of the head config's ``[power]`` table: None when usable, else one line naming the field."""

from __future__ import annotations

from hpcbatch.head.powerdrivers.config import PoolConfig, PowerConfig

__all__ = ["check_power_config"]


def _check_pool(name: str, pool: PoolConfig) -> str | None:
    from ClusterShell.NodeSet import NodeSet, NodeSetException

    where = f"power.pools.{name}"
    try:
        if not NodeSet(pool.nodes):
            return f"{where}.nodes must name at least one node (a hostlist such as node[5-8])"
        for hosts in pool.placement_groups.values():
            NodeSet(hosts)
    except NodeSetException as exc:
        return f"{where}: not a hostlist: {exc}"
    problem = _check_numbers(where, pool)
    if problem is not None:
        return problem
    if pool.driver == "command" and (not pool.resume_program or not pool.suspend_program
                                     or not all(pool.resume_program + pool.suspend_program)):
        return f"{where}: the command driver needs resume_program and suspend_program (argv lists)"
    if pool.driver == "netns" and not pool.agent_config_dir:
        return f"{where}.agent_config_dir is required by the netns driver"
    if pool.driver == "redfish" and not pool.redfish_url.startswith(("http://", "https://")):
        return f"{where}.redfish_url must be an http(s):// URL (\"{{node}}\" is replaced by the node's name)"
    return _check_driver(where, pool)


def _check_numbers(where: str, pool: PoolConfig) -> str | None:
    """The pool's sizes, times and rates."""
    if pool.vcpus_per_node <= 0:
        return f"{where}.vcpus_per_node must be > 0"
    if pool.memory_mib_per_node < 0 or pool.gpus_per_node < 0:
        return f"{where}.memory_mib_per_node and gpus_per_node must be >= 0"
    for key in ("timeout_s", "resume_timeout_s", "boot_time_s"):
        if getattr(pool, key) <= 0:
            return f"{where}.{key} must be > 0 seconds"
    if pool.suspend_after_s < 0 or pool.resume_rate < 0:
        return f"{where}.suspend_after_s and resume_rate must be >= 0"
    if pool.state_poll_s < 0:
        return f"{where}.state_poll_s must be >= 0 seconds (0: never ask the driver)"
    return None


def _check_driver(where: str, pool: PoolConfig) -> str | None:
    """The keys of the drivers whose modules check their own (ipmi, cloud)."""
    from hpcbatch.head.powerdrivers import cloud, ipmi

    checks = {"cloud": cloud.check_config, "ipmi": ipmi.check_config}
    return checks[pool.driver](where, pool) if pool.driver in checks else None


def check_power_config(config: PowerConfig) -> str | None:
    """None if ``config`` is usable, else one line naming the field."""
    from ClusterShell.NodeSet import NodeSet

    owner: dict[str, str] = {}
    for name, pool in config.pools.items():
        problem = _check_pool(name, pool)
        if problem is not None:
            return problem
        for node in NodeSet(pool.nodes):
            if node in owner:
                return f"power.pools.{name}.nodes: {node} is already in power.pools.{owner[node]} (a node has one pool)"
            owner[node] = name
    for kind, table in (("compute_environments", config.compute_environments), ("nodes", config.nodes)):
        for name, driver in table.items():
            if not driver.power_off or not all(driver.power_off):
                return f"power.{kind}.{name}.power_off must be a command: a non-empty list of non-empty strings"
            if driver.timeout_s <= 0:
                return f"power.{kind}.{name}.timeout_s must be > 0 seconds"
    return None
