"""The head's configuration file (TOML), validated once into a typed value."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from pathlib import Path

import msgspec

from hpcbatch.auth.policy import ROLES
from hpcbatch.errors import ClientError
from hpcbatch.head.containers import check_capabilities
from hpcbatch.head.nodekeys import valid_name
from hpcbatch.head.powerconfig import check_power_config
from hpcbatch.head.powerdrivers.config import PowerConfig
from hpcbatch.head.ratelimit import CLASSES as RATE_CLASSES
from hpcbatch.head.ratelimit import DEFAULT_RATES, Rate
from hpcbatch.validation import DEFAULT_ULIMIT_CAPS, ULIMIT_NAMES, ContainerLimits

MAX_UNIX_PATH = 107  # sun_path holds 108 bytes with the terminating NUL


class RateLimitConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One operation class's limit per caller (hpcbatch.head.ratelimit)."""

    per_second: float  # 0 turns the limit off for this class
    burst: float | None = None  # default: two seconds' worth


class HeadConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything the head daemon needs; Ansible templates this file."""

    state_dir: str
    http_listen: str = "127.0.0.1:8471"
    fleet_bind: str = "tcp://127.0.0.1:8472"
    region: str = "local"
    account_id: str = "000000000000"
    heartbeat_interval_s: float = 1.0
    liveness: int = 5  # missed heartbeats before a node is DOWN
    # The control-plane outage bound (hpcbatch.fencing, docs/ha.md): how long a cut-off agent
    # runs on before it kills its attempts, for nodes that have not told this head theirs;
    # retries of a lost node wait for it (unless its power driver fences it first). Set it
    # as the agents' fence_after_s. Default: 600 s (more with very slow heartbeats).
    fence_after_s: float | None = None
    # STONITH (hpcbatch.head.power, docs/ha.md): power drivers that fence a lost node at once,
    # by compute environment ([power.compute_environments.NAME]) or node ([power.nodes.NAME]).
    power: PowerConfig = msgspec.field(default_factory=PowerConfig)
    kill_grace_s: float = 10.0  # SIGTERM -> SIGKILL on terminate and timeout
    preempt_grace_s: float = 30.0  # SIGTERM -> SIGKILL of a preempted attempt (AWS Spot's 2 minutes, shortened)
    audit_retention_days: float = 365.0  # the audit log outlives the jobs it mentions
    retention_days: float = 7.0  # finished jobs stay describable this long (AWS: >= 7 days)
    prune_interval_s: float = 3600.0
    scheduler_tick_s: float = 5.0  # a pass with no other event: share decay, jobStateTimeLimitActions
    min_state_time_limit_s: int = 600  # AWS's floor for jobStateTimeLimitActions.maxTimeSeconds (tests lower it)
    durability: str = "normal"  # "full": fsync every commit (power-loss safe)
    # The store: "" is SQLite at <state_dir>/hpcbatch.db; a postgresql:// URL is a shared
    # PostgreSQL, which also makes this head one of an active/standby set (docs/ha.md).
    store: str = ""
    advertise_url: str = ""  # how clients reach this head (standbys name the active one); default http://<http_listen>
    lease_ttl_s: float = 3.0  # PostgreSQL only: a standby takes over this long after the active head stops renewing
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
    allow_privileged_containers: bool = False  # containerProperties.privileged is refused unless true
    # What a container may ask of its node (docs/security.md "Host paths, devices and limits");
    # a definition asking for more is refused at RegisterJobDefinition (and SubmitJob).
    container_host_paths: list[str] = []  # host paths (and what is below them) volumes may mount
    container_host_paths_read_only: list[str] = []  # the same, mounted readOnly only
    container_devices: list[str] = []  # linuxParameters.devices hostPath allowed (globs: "/dev/infiniband/*")
    container_max_shared_memory_mib: int = 0  # linuxParameters.sharedMemorySize cap; 0: the container's memory
    container_max_tmpfs_mib: int = 0  # all linuxParameters.tmpfs sizes together; 0: the container's memory
    container_ulimits: dict[str, int] = msgspec.field(default_factory=lambda: dict(DEFAULT_ULIMIT_CAPS))  # name -> max hardLimit (-1: any)
    container_capabilities: list[str] = []  # given back to every container job after --cap-drop all (docs/containers.md)
    # Per-caller throttling (HTTP 429 TooManyRequestsException): class -> limit, over the
    # defaults in hpcbatch.head.ratelimit (submit 50/s as AWS, read 100/s, write 20/s).
    rate_limits: dict[str, RateLimitConfig] = {}
    rate_limit_exempt: list[str] = msgspec.field(default_factory=lambda: ["role:admin"])  # users, access key ids, "role:NAME"
    # Mutating calls are refused (ServerException naming the cause) when the state
    # directory's file system has less free space than this, before anything is changed.
    state_min_free_mib: float = 8.0
    # State at rest (docs/security.md): the state directory is 0700 and its files 0600, or
    # 0750/0640 readable by this group; access keys' secrets are sealed with the key in
    # secrets_key_file (default <state_dir>/secrets.key, made on first start; every head
    # sharing a PostgreSQL store needs the same file).
    state_group: str = ""
    secrets_key_file: str = ""
    # HTTPS for the TCP API: a PEM certificate (chain) and its key; both or neither.
    tls_cert: str = ""
    tls_key: str = ""

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
    def secrets_key_path(self) -> Path:
        return Path(self.secrets_key_file) if self.secrets_key_file else self.state_path / "secrets.key"

    @property
    def store_target(self) -> str:
        return self.store or str(self.state_path / "hpcbatch.db")

    @property
    def advertised_url(self) -> str:
        host, port = self.http_host_port
        return self.advertise_url or f"{self.http_scheme}://{host}:{port}"

    @property
    def http_scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    @property
    def public_http_url(self) -> str:
        """The TCP API as others reach it (console links): a wildcard address becomes this host's name."""
        host, port = self.http_host_port
        if host in ("0.0.0.0", "::", ""):
            import socket

            host = socket.getfqdn()
        return f"{self.http_scheme}://[{host}]:{port}" if ":" in host else f"{self.http_scheme}://{host}:{port}"

    @property
    def rates(self) -> dict[str, Rate]:
        """The per-class rate limits: the defaults, overridden by ``rate_limits``."""
        rates = dict(DEFAULT_RATES)
        for kind, limit in self.rate_limits.items():
            burst = limit.burst if limit.burst is not None else max(1.0, 2 * limit.per_second)
            rates[kind] = Rate(per_second=limit.per_second, burst=burst)
        return rates

    @property
    def container_limits(self) -> ContainerLimits:
        """The container_* keys as the validation edge takes them."""
        return ContainerLimits(
            host_paths=tuple(self.container_host_paths), host_paths_read_only=tuple(self.container_host_paths_read_only),
            devices=tuple(self.container_devices), max_shared_memory_mib=self.container_max_shared_memory_mib,
            max_tmpfs_mib=self.container_max_tmpfs_mib, ulimits=dict(self.container_ulimits),
        )

    @property
    def http_host_port(self) -> tuple[str, int]:
        host, _, port = self.http_listen.rpartition(":")
        return host or "127.0.0.1", int(port)


def load_head_config(path: str | Path, *, store: str | None = None) -> HeadConfig:
    """Read and validate the head config (``store``, if given, replaces the file's)."""
    raw = _read_toml(path)
    if store:
        raw["store"] = store
    try:
        config = msgspec.convert(raw, HeadConfig)
    except msgspec.ValidationError as exc:
        raise ClientError(f"head config {path}: {exc}") from None
    _raise_first_problem(path, config, (_check_basics, _check_roles, _check_rate_limits, _check_container_paths,
                                        _check_container_limits, _check_auto_accept))
    config.container_capabilities = check_capabilities(config.container_capabilities, f"head config {path}: container_capabilities")
    _raise_first_problem(path, config, (_check_socket_path,))
    return config


def _raise_first_problem(path: str | Path, config: HeadConfig, checks: tuple[Callable[[HeadConfig], str | None], ...]) -> None:
    """Run the checks in order; the first problem found is the user's error."""
    for check in checks:
        problem = check(config)
        if problem is not None:
            raise ClientError(f"head config {path}: {problem}")


def _read_toml(path: str | Path) -> dict:
    """The file's TOML as a dict; a missing or malformed file is a user mistake."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ClientError(f"head config {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ClientError(f"head config {path}: {exc}") from None


def _check_basics(config: HeadConfig) -> str | None:
    """Durability, the store URL, the lease, fencing, TLS and power: the first problem, if any."""
    if config.durability not in ("normal", "full"):
        return "durability must be 'normal' or 'full'"
    if config.store and "://" in config.store and not config.store.startswith(("postgresql://", "postgres://")):
        return "store must be a postgresql:// URL or a SQLite file path"
    if config.lease_ttl_s < 1:
        return "lease_ttl_s must be at least 1 second"
    if config.fence_after_s is not None and config.fence_after_s < 0:
        return "fence_after_s must be >= 0 seconds"
    if bool(config.tls_cert) != bool(config.tls_key):
        return "tls_cert and tls_key: give both (HTTPS) or neither (HTTP)"
    return check_power_config(config.power)


def _check_roles(config: HeadConfig) -> str | None:
    """Every role given is one the head knows."""
    bad_roles = sorted(r for r in config.roles.values() if r not in ROLES)
    if bad_roles:
        return f"roles: {bad_roles[0]!r} is not one of {', '.join(ROLES)}"
    return None


def _check_auto_accept(config: HeadConfig) -> str | None:
    """The node names accepted on first sight are valid node names."""
    for name in config.auto_accept_nodes:
        if not valid_name(name):
            return f"auto_accept_nodes: {name!r} is not a valid node name"
    return None


def _check_rate_limits(config: HeadConfig) -> str | None:
    """Each rate_limits entry names a known class and sensible numbers."""
    for kind, limit in config.rate_limits.items():
        if kind not in RATE_CLASSES:
            return f"rate_limits: {kind!r} is not one of {', '.join(RATE_CLASSES)}"
        if limit.per_second < 0 or (limit.burst is not None and limit.burst < 1):
            return f"rate_limits.{kind}: per_second must be >= 0 and burst >= 1"
    return None


def _check_container_paths(config: HeadConfig) -> str | None:
    """Host paths and devices a container may use are absolute, normal paths."""
    for key in ("container_host_paths", "container_host_paths_read_only", "container_devices"):
        for entry in getattr(config, key):
            if not entry.startswith("/") or "\x00" in entry or os.path.normpath(entry) != entry:
                return f"{key}: {entry!r} must be an absolute, normal path"
    return None


def _check_container_limits(config: HeadConfig) -> str | None:
    """Shared memory, tmpfs and ulimit caps."""
    for key in ("container_max_shared_memory_mib", "container_max_tmpfs_mib"):
        if getattr(config, key) < 0:
            return f"{key} must be >= 0 (0: the container's memory)"
    for name, cap in config.container_ulimits.items():
        if name not in ULIMIT_NAMES:
            return f"container_ulimits: {name!r} is not one of {', '.join(sorted(ULIMIT_NAMES))}"
        if cap < -1:
            return f"container_ulimits.{name} must be -1 (any) or a limit >= 0"
    return None


def _check_socket_path(config: HeadConfig) -> str | None:
    """The API socket's path fits in sun_path."""
    socket_bytes = len(os.fsencode(config.api_socket_path))
    if socket_bytes > MAX_UNIX_PATH:
        return (
            f"api_socket {config.api_socket_path} is {socket_bytes} bytes long; "
            f"Unix socket paths stop at {MAX_UNIX_PATH}: set api_socket to a shorter path"
        )
    return None
