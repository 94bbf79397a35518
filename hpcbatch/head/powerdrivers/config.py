"""The ``[power]`` table of the head config, as data: drivers by compute environment and node,
and MANAGED node pools (docs/managed.md). The drivers read their pool's keys from here; the checks
that name a bad field live in ``hpcbatch.head.powerconfig``."""

from __future__ import annotations

from typing import Literal

import msgspec


class PowerDriverConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How to power one node (or every node of a compute environment) off."""

    driver: Literal["command"] = "command"
    power_off: list[str]  # argv; "{node}" in any item becomes the node's name
    timeout_s: float = 60.0  # a power-off that takes longer has failed


class PoolConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[power.pools.CE]``: the nodes a MANAGED compute environment powers up and down (docs/managed.md)."""

    nodes: str  # a hostlist: node[5-8]
    vcpus_per_node: float  # what a powered-down node brings when it registers (planning, submit checks)
    memory_mib_per_node: int = 0  # 0: not checked at submit
    gpus_per_node: int = 0  # what a powered-down node brings (planning: a GPU job powers up only GPU nodes)
    driver: Literal["command", "netns", "redfish", "ipmi", "cloud"] = "command"
    # command: Slurm's ResumeProgram/SuspendProgram: argv, called with the hostlist as last argument.
    resume_program: list[str] = []
    suspend_program: list[str] = []
    # netns (the test bed): agent configs <agent_config_dir>/<node>.toml, started as processes,
    # inside the namespaces of a hpcbatch.netns layout (JSON file) when netns_layout is set.
    agent_config_dir: str = ""
    netns_layout: str = ""
    # redfish: each node's BMC, "{node}" replaced by the node's name; ComputerSystem.Reset on
    # <redfish_url>/redfish/v1/Systems/<redfish_system>; basic auth when a user is named.
    redfish_url: str = ""  # e.g. "https://{node}-bmc"
    redfish_system: str = "{node}"  # the system's id at that BMC (often "1" or "System.Embedded.1")
    redfish_username: str = ""
    redfish_password_file: str = ""
    redfish_verify_tls: bool = True
    # ipmi: each node's BMC over IPMI 2.0 (pyghmi), chassis power on/off/status; "{node}" replaced.
    ipmi_host: str = ""  # e.g. "{node}-bmc"
    ipmi_port: int = 623
    ipmi_username: str = ""
    ipmi_password_file: str = ""
    # cloud: one EC2 instance per node from a launch template (boto3; credentials from the usual
    # AWS chain), found by the tag cloud_tag=<node>; region and endpoint_url override the chain.
    cloud_launch_template: str = ""  # its name, or its id (lt-...)
    cloud_launch_template_version: str = "$Default"
    cloud_region: str = ""
    cloud_endpoint_url: str = ""  # a local emulator in tests, or a VPC endpoint
    cloud_tag: str = "hpcbatch-node"
    timeout_s: float = 60.0  # one driver call
    suspend_after_s: float = 300.0  # Slurm's SuspendTime
    resume_timeout_s: float = 300.0  # Slurm's ResumeTimeout
    boot_time_s: float = 60.0  # expected boot time, shown by `why`
    resume_rate: int = 0  # nodes powered up per minute (Slurm's ResumeRate); 0: no limit
    state_poll_s: float = 60.0  # how often the driver is asked its nodes' power (one batch); 0: never
    placement_groups: dict[str, str] = {}  # group -> hostlist (gangs prefer one group)
    # The pool's agents have a container runtime (podman): jobs with an image plan with its
    # powered-down nodes (the scheduler's "container" feature, as a registered node's runtime gives).
    container_runtime: bool = False


class PowerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The head config's ``[power]`` table: drivers by compute environment and by node, and node pools."""

    compute_environments: dict[str, PowerDriverConfig] = {}
    nodes: dict[str, PowerDriverConfig] = {}
    pools: dict[str, PoolConfig] = {}
