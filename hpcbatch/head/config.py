"""The head's configuration file (TOML), validated once into a typed value."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import msgspec

from hpcbatch.auth.policy import ROLES
from hpcbatch.errors import ClientError
from hpcbatch.head.nodekeys import valid_name

MAX_UNIX_PATH = 107  # sun_path holds 108 bytes with the terminating NUL


class HeadConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything the head daemon needs; Ansible templates this file."""

    state_dir: str
    http_listen: str = "127.0.0.1:8471"
    fleet_bind: str = "tcp://127.0.0.1:8472"
    region: str = "local"
    account_id: str = "000000000000"
    heartbeat_interval_s: float = 1.0
    liveness: int = 5  # missed heartbeats before a node is DOWN
    kill_grace_s: float = 10.0  # SIGTERM -> SIGKILL on terminate and timeout
    audit_retention_days: float = 365.0  # the audit log outlives the jobs it mentions
    retention_days: float = 7.0  # finished jobs stay describable this long (AWS: >= 7 days)
    prune_interval_s: float = 3600.0
    scheduler_tick_s: float = 5.0  # a pass with no other event: share decay, jobStateTimeLimitActions
    min_state_time_limit_s: int = 600  # AWS's floor for jobStateTimeLimitActions.maxTimeSeconds (tests lower it)
    durability: str = "normal"  # "full": fsync every commit (power-loss safe)
    log_level: str = "INFO"
    # The local API: the same operations on a Unix socket, callers named by the kernel.
    api_socket: str = ""  # default <state_dir>/api.sock
    roles: dict[str, str] = {}  # "alice" or "@group" -> user | developer | admin
    private_data: bool = False  # Slurm's PrivateData: users see only their own jobs
    # The control plane (CurveZMQ): the head's key pair, generated on first start.
    curve_secret_key: str = ""  # default <state_dir>/curve/head.key_secret
    curve_public_key: str = ""  # default <state_dir>/curve/head.key: copy it to every node
    node_keys_dir: str = ""  # default <state_dir>/node_keys: {pending,accepted,rejected}/<NAME>
    auto_accept_nodes: list[str] = []  # names whose key is accepted on first sight

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def api_socket_path(self) -> Path:
        return Path(self.api_socket) if self.api_socket else self.state_path / "api.sock"

    @property
    def curve_secret_key_path(self) -> Path:
        return Path(self.curve_secret_key) if self.curve_secret_key else self.state_path / "curve" / "head.key_secret"

    @property
    def curve_public_key_path(self) -> Path:
        return Path(self.curve_public_key) if self.curve_public_key else self.state_path / "curve" / "head.key"

    @property
    def node_keys_path(self) -> Path:
        return Path(self.node_keys_dir) if self.node_keys_dir else self.state_path / "node_keys"

    @property
    def http_host_port(self) -> tuple[str, int]:
        host, _, port = self.http_listen.rpartition(":")
        return host or "127.0.0.1", int(port)


def load_head_config(path: str | Path) -> HeadConfig:
    """Read and validate the head config; a bad file gets one line naming the field."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ClientError(f"head config {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ClientError(f"head config {path}: {exc}") from None
    try:
        config = msgspec.convert(raw, HeadConfig)
    except msgspec.ValidationError as exc:
        raise ClientError(f"head config {path}: {exc}") from None
    if config.durability not in ("normal", "full"):
        raise ClientError(f"head config {path}: durability must be 'normal' or 'full'")
    bad_roles = sorted(r for r in config.roles.values() if r not in ROLES)
    if bad_roles:
        raise ClientError(f"head config {path}: roles: {bad_roles[0]!r} is not one of {', '.join(ROLES)}")
    for name in config.auto_accept_nodes:
        if not valid_name(name):
            raise ClientError(f"head config {path}: auto_accept_nodes: {name!r} is not a valid node name")
    socket_bytes = len(os.fsencode(config.api_socket_path))
    if socket_bytes > MAX_UNIX_PATH:
        raise ClientError(
            f"head config {path}: api_socket {config.api_socket_path} is {socket_bytes} bytes long; "
            f"Unix socket paths stop at {MAX_UNIX_PATH}: set api_socket to a shorter path"
        )
    return config
