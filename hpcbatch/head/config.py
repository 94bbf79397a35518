"""The head's configuration file (TOML), validated once into a typed value."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec

from hpcbatch.errors import ClientError


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
    retention_days: float = 7.0  # finished jobs stay describable this long (AWS: >= 7 days)
    prune_interval_s: float = 3600.0
    durability: str = "normal"  # "full": fsync every commit (power-loss safe)
    log_level: str = "INFO"

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

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
    return config
