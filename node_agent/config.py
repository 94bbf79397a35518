"""The agent's configuration file (TOML), validated once into a typed value."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec

from hpcbatch.fencing import default_fence_after_s


class ConfigError(Exception):
    """The agent's config file is missing or wrong; the message names the field."""


class DeclaredGpu(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A GPU written in the config (nodes without NVML): the facts NVML would give."""

    uuid: str
    name: str = ""
    memory_mib: int = 0
    nvlink_domain: str | None = None  # any name: GPUs with the same one are NVLink peers
    pcie_switch: str | None = None  # any name: GPUs with the same one share a PCIe switch
    numa_node: int | None = None  # its CPUs come from /sys/devices/system/node/node<N>
    cpus: list[int] = []  # or name them
    unhealthy: str | None = None  # an admin takes it out of service, with the reason


class AgentConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything one node agent needs; Ansible templates this file."""

    name: str
    # The head's fleet endpoint, e.g. tcp://head:8472; or every head's, active and
    # standbys (docs/ha.md): the agent talks to one at a time and moves on when it is silent.
    head: str | list[str]
    state_dir: str
    # CurveZMQ: the head's public key, pinned (copied from the head's curve_public_key),
    # and this node's key pair, generated on first start; its public key is what the
    # head's admin accepts (`hpcbatch nodes keys accept NAME`).
    head_public_key: str
    curve_secret_key: str = ""  # default <state_dir>/curve/agent.key_secret
    curve_public_key: str = ""  # default <state_dir>/curve/agent.key
    compute_environment: str = "default"
    labels: dict[str, str] = {}
    placement_group: str | None = None
    fabric_interface: str | None = None  # the fast network's netdev (TCP fabric, or EFA's)
    fabric_kind: str | None = None  # efa | infiniband | tcp; default: what discovery finds
    vcpus: int | None = None  # default: the CPUs this process may use
    memory_mib: int | None = None  # default: physical memory less reserved_memory_mib
    reserved_memory_mib: int = 0
    gpus: list[str | DeclaredGpu] = []  # declared GPUs (uuids or tables) where NVML is absent
    gpu_count: int | None = None  # GPUs this node must have (default: how many are declared)
    container_runtime: str | None = None  # default: podman if on PATH
    container_storage: str = ""  # podman's image cache (root+runroot under it); default: the system's
    container_insecure_registries: list[str] = []  # host:port pulled over plain HTTP (a local registry)
    # podman's auth.json (`podman login --authfile`) for registries that need credentials:
    # AWS's repositoryCredentials name a Secrets Manager secret, which a cluster has not.
    container_auth_file: str = ""
    # Container ids of owners without an /etc/subuid range land at this base + 65536 x (uid mod 32767)
    # on the host (node_agent.containers.subordinate_ids): a range no real user or file has.
    container_subid_base: int = 1 << 31
    keep_workdir: bool = False  # debugging: leave each job's private work dir after it ends
    # Stop (SIGTERM) leaves running attempts in their cgroups under their shims, and the
    # next agent process re-adopts them with their real exits, as slurmd leaves jobs under
    # slurmstepd; the systemd unit needs KillMode=process for that. false: a stop kills them.
    leave_attempts_on_stop: bool = True
    allow_root_jobs: bool = False  # jobs owned by root run as root only when this is true
    kill_grace_s: float = 10.0
    memory_enforcement: str = "auto"  # auto | cgroup | rss
    heartbeat_interval_s: float = 1.0  # until the head's Welcome says otherwise
    liveness: int = 5
    # The control-plane outage bound: kill every attempt after this long without word from any
    # head (a cut-off node must not run on while the head retries its jobs elsewhere;
    # docs/chaos.md, docs/ha.md). 0: never. Default: 600 s (hpcbatch.fencing.OUTAGE_BOUND_S),
    # longer than a head's maintenance stop, a failover or a database restart. Set the heads' alike.
    fence_after_s: float | None = None
    log_level: str = "INFO"

    @property
    def fence_s(self) -> float:
        """``fence_after_s``, or its default from the heartbeat settings (hpcbatch.fencing)."""
        if self.fence_after_s is not None:
            return self.fence_after_s
        return default_fence_after_s(self.heartbeat_interval_s, self.liveness)

    @property
    def head_endpoints(self) -> list[str]:
        return [self.head] if isinstance(self.head, str) else list(self.head)

    @property
    def curve_secret_key_path(self) -> Path:
        return Path(self.curve_secret_key) if self.curve_secret_key else Path(self.state_dir) / "curve" / "agent.key_secret"

    @property
    def curve_public_key_path(self) -> Path:
        return Path(self.curve_public_key) if self.curve_public_key else Path(self.state_dir) / "curve" / "agent.key"


def load_agent_config(path: str | Path) -> AgentConfig:
    """Read and validate the agent config; a bad file gets one line naming the field."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"agent config {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"agent config {path}: {exc}") from None
    try:
        config = msgspec.convert(raw, AgentConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"agent config {path}: {exc}") from None
    problem = config_problem(config)
    if problem is not None:
        raise ConfigError(f"agent config {path}: {problem}")
    return config


def config_problem(config: AgentConfig) -> str | None:
    """What is wrong with a config that has the right shape, naming the field; None if nothing."""
    for check in (_value_problem, _file_problem):
        problem = check(config)
        if problem is not None:
            return problem
    return None


def _value_problem(config: AgentConfig) -> str | None:
    """Fields whose values are out of range."""
    uuids = [g if isinstance(g, str) else g.uuid for g in config.gpus]
    problems = (
        (not config.head_endpoints, "head must name at least one fleet endpoint"),
        (config.memory_enforcement not in ("auto", "cgroup", "rss"), "memory_enforcement must be auto, cgroup or rss"),
        (config.fabric_kind not in (None, "efa", "infiniband", "tcp"), "fabric_kind must be efa, infiniband or tcp"),
        (len(set(uuids)) != len(uuids) or "" in uuids, "gpus must have distinct, non-empty uuids"),
        (config.fence_after_s is not None and config.fence_after_s < 0,
         "fence_after_s must be >= 0 seconds (0: never fence)"),
        (not 65536 <= config.container_subid_base <= (1 << 31),
         "container_subid_base must be between 65536 and 2147483648"),
        (config.gpu_count is not None and config.gpu_count < 0, "gpu_count must not be negative"),
    )
    return next((message for wrong, message in problems if wrong), None)


def _file_problem(config: AgentConfig) -> str | None:
    """Files the config names that are not there."""
    if config.container_auth_file and not Path(config.container_auth_file).is_file():
        return (f"container_auth_file {config.container_auth_file} does not exist "
                "(make it with: podman login --authfile FILE REGISTRY)")
    if not Path(config.head_public_key).is_file():
        return (f"head_public_key {config.head_public_key} does not exist: "
                "copy the head's public key there (on the head: <state_dir>/curve/head.key)")
    return None
