"""The agent's configuration file (TOML), validated once into a typed value."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec


class ConfigError(Exception):
    """The agent's config file is missing or wrong; the message names the field."""


class AgentConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything one node agent needs; Ansible templates this file."""

    name: str
    head: str  # the head's fleet endpoint, e.g. tcp://head:8472
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
    gpus: list[str] = []  # declared GPUs where NVML is absent
    container_runtime: str | None = None  # default: podman if on PATH
    container_storage: str = ""  # podman's image cache (root+runroot under it); default: the system's
    container_insecure_registries: list[str] = []  # host:port pulled over plain HTTP (a local registry)
    keep_workdir: bool = False  # debugging: leave each job's private work dir after it ends
    allow_root_jobs: bool = False  # jobs owned by root run as root only when this is true
    kill_grace_s: float = 10.0
    memory_enforcement: str = "auto"  # auto | cgroup | rss
    heartbeat_interval_s: float = 1.0  # until the head's Welcome says otherwise
    liveness: int = 5
    log_level: str = "INFO"

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
    if config.memory_enforcement not in ("auto", "cgroup", "rss"):
        raise ConfigError(f"agent config {path}: memory_enforcement must be auto, cgroup or rss")
    if config.fabric_kind not in (None, "efa", "infiniband", "tcp"):
        raise ConfigError(f"agent config {path}: fabric_kind must be efa, infiniband or tcp")
    if not Path(config.head_public_key).is_file():
        raise ConfigError(
            f"agent config {path}: head_public_key {config.head_public_key} does not exist: "
            "copy the head's public key there (on the head: <state_dir>/curve/head.key)"
        )
    return config
