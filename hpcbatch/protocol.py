"""Head <-> agent messages: typed, versioned, one tag per type, msgpack on the wire.

Rules of the conversation (the ZeroMQ guide's Paranoid Pirate, adapted):

* An agent opens one DEALER socket to the head's ROUTER and starts with ``Register``.
  It lists the attempts it still runs and the exits the head has not acknowledged, so a
  restarted head can reconcile instead of guessing.
* The head answers ``Welcome`` with the log offsets it holds for each running attempt;
  the agent rewinds its log shipping to those offsets (writes are idempotent by offset).
* Both sides send a heartbeat every ``heartbeat_interval_s``; either side that hears
  nothing for ``liveness`` intervals treats the peer as gone. An agent that hears a
  message from a head it has not registered with (``Reregister``) registers again.
* ``StartAttempt`` is idempotent by ``attempt_id``: an agent never runs one attempt twice.
* An ``AttemptExited`` is resent (with the next heartbeat) until the head's ``AckExits``.
  Its ``timed_out``/``fenced``/``lost`` flags are what the head decides on; the reasons
  are for people. A report the head cannot process is retried with those resends and, after
  a few failures, acknowledged and set aside (quarantined), its attempt failed.
* Anti-entropy: every heartbeat lists the attempts the agent runs. The head kills any it
  has ended, and asks about (resends the ``StartAttempt`` of) any it thinks runs but the
  agent has not listed for a few heartbeats; the agent answers with the attempt's exit (or
  starts it, if the order never arrived). Still unlisted after as many more, it is lost.
* Batches (negotiated; an older peer gets single messages): an agent whose ``Register`` says
  ``batches`` takes ``Orders`` (the ``StartAttempt``s one head step made for it, in order);
  a head whose ``Welcome`` says ``batches`` takes ``Reports`` (the ``AttemptStarted`` and
  ``AttemptExited`` an agent made in one wake-up, in order). Each item is served as if it
  came alone: an exit in a batch is resent until acknowledged, like any other.
* Every head message carries the sending head's ``epoch`` (its lease's fencing token when
  heads share PostgreSQL, hpcbatch.head.lease; 0 otherwise). An agent drops head messages
  older than the newest epoch it has seen, so a paused or cut-off former head cannot start
  or kill anything after a standby took over.
* Fencing (docs/chaos.md): an agent's ``Register`` and heartbeats carry ``sent_at`` (its
  monotonic clock); the head echoes the newest in ``Welcome``/``HeadHeartbeat``. An agent
  that got no echo newer than ``fence_after_s`` ago kills its attempts; the head retries a
  lost node's attempts only ``fence_after_s`` (plus a margin) after it last heard the node.
"""

from __future__ import annotations

import msgspec

PROTOCOL_VERSION = 1


class Message(msgspec.Struct, tag_field="t", kw_only=True):
    """Base of every head<->agent message; ``t`` on the wire names the type."""

    epoch: int = 0  # head -> agent: the sender's fencing token (see the module docstring)


# ---------------------------------------------------------------- agent -> head
class GpuFacts(msgspec.Struct, kw_only=True):
    """One GPU as its node sees it (NVML, or the agent config's declaration)."""

    uuid: str
    index: int = 0
    name: str = ""
    memory_mib: int = 0
    mig: bool = False  # MIG mode on: the device is split (hpcbatch hands out whole GPUs only)
    nvlink_domain: str | None = None  # GPUs with one domain reach each other over NVLink
    pcie_switch: str | None = None  # GPUs with one switch share a PCIe switch
    numa_node: int | None = None
    cpus: list[int] = []  # the CPUs local to the GPU (its NUMA node's)
    unhealthy: str | None = None  # why it is out of service (uncorrectable ECC, fatal XID)


class GpuUsage(msgspec.Struct, kw_only=True):
    """One sample of a GPU an attempt holds (NVML utilization and memory)."""

    attempt_id: str
    uuid: str
    utilization_pct: int
    memory_used_mib: int


class NodeFacts(msgspec.Struct, kw_only=True):
    """What an agent knows about its machine and its place in the cluster."""

    name: str
    hostname: str
    addresses: list[str]
    vcpus: int
    memory_mib: int
    gpus: list[str] = []
    compute_environment: str = "default"
    labels: dict[str, str] = {}
    placement_group: str | None = None
    fabric_interface: str | None = None
    fabric_address: str | None = None  # IPv4 of the fabric interface (MPI/NCCL traffic)
    fabric_kind: str | None = None  # "efa" | "infiniband" | "tcp"
    fabric_devices: list[str] = []  # e.g. ["mlx5_0"] or ["rdmap0s6"]
    container_runtime: str | None = None
    fence_after_s: float = 0.0  # the agent kills its attempts after this long unheard by any head (0: never)
    agent_version: str = ""
    gpu_facts: list[GpuFacts] = []  # per GPU in ``gpus`` (topology, NUMA, health) where known
    declared_gpus: int = 0  # the GPUs its config says it has; fewer found: the head drains it


class RunningAttempt(msgspec.Struct, kw_only=True):
    attempt_id: str
    job_id: str
    pid: int
    started_at: int


class AttemptExited(Message, tag="exited", kw_only=True):
    """An attempt ended on the agent. ``exit_code`` is None when killed by a signal."""

    attempt_id: str
    job_id: str
    exit_code: int | None
    reason: str | None = None  # AWS container.reason, e.g. OutOfMemoryError: ...
    status_reason: str | None = None  # job-level statusReason, for people (e.g. the timeout's wording)
    started_at: int | None = None
    stopped_at: int
    # How it ended, as facts the head decides on (never parsed out of the reasons):
    timed_out: bool = False  # attemptDurationSeconds ran out: never retried
    fenced: bool = False  # killed by the agent's fence (no head heard it): the command did not finish
    lost: bool = False  # the agent does not know how it ended (not watched, result gone)


class Register(Message, tag="register", kw_only=True):
    protocol_version: int = PROTOCOL_VERSION
    instance_id: str  # new per agent process: tells a restart from a reconnect
    node: NodeFacts
    running: list[RunningAttempt] = []
    exited: list[AttemptExited] = []
    sent_at: float = 0.0  # the agent's monotonic clock: echoed back, it renews the fence lease
    batches: bool = False  # the agent takes ``Orders`` (an older agent: single StartAttempts)


class ImagesCached(Message, tag="images", kw_only=True):
    """Agent -> head: the container images in the node's cache (after registering, after a pull)."""

    images: list[str] = []


class AgentHeartbeat(Message, tag="agent_hb", kw_only=True):
    instance_id: str
    running: list[str] = []  # attempt ids
    unhealthy_gpus: dict[str, str] = {}  # GPU uuid -> why it is out of service (all of them, each time)
    gpu_usage: list[GpuUsage] = []  # samples of running attempts' GPUs (NVML nodes only)
    gpu_utilization: dict[str, float] = {}  # GPU uuid -> busy fraction 0..1 (NVML); {} without
    sent_at: float = 0.0  # the agent's monotonic clock: echoed back, it renews the fence lease


class AttemptStarted(Message, tag="started", kw_only=True):
    attempt_id: str
    job_id: str
    pid: int
    started_at: int


class LogChunk(Message, tag="log", kw_only=True):
    attempt_id: str
    job_id: str
    stream: str  # "stdout" | "stderr"
    offset: int
    data: bytes
    # When the agent read ``data`` (epoch ms): every line's CloudWatch timestamp. 0 from an
    # older agent: the head stamps the chunk when it arrives.
    read_at_ms: int = 0


class Reports(Message, tag="reports", kw_only=True):
    """Agent -> head (a head whose Welcome said ``batches``): starts and exits of one wake-up, in order."""

    items: list[AttemptStarted | AttemptExited] = []


# ---------------------------------------------------------------- head -> agent
class ContainerMount(msgspec.Struct, kw_only=True):
    """A host path in the container (AWS volumes[].host + mountPoints[])."""

    source: str
    target: str
    read_only: bool = False


class ContainerDevice(msgspec.Struct, kw_only=True):
    host_path: str
    container_path: str = ""  # default: host_path
    permissions: str = ""  # "rwm" letters; default all


class ContainerTmpfs(msgspec.Struct, kw_only=True):
    path: str
    size_mib: int
    options: list[str] = []


class ContainerUlimit(msgspec.Struct, kw_only=True):
    name: str
    soft: int
    hard: int


class ContainerOptions(msgspec.Struct, kw_only=True):
    """How a job with an ``image`` runs: AWS containerProperties the agent honours, resolved."""

    mounts: list[ContainerMount] = []
    read_only_root: bool = False
    devices: list[ContainerDevice] = []
    shm_size_mib: int | None = None
    tmpfs: list[ContainerTmpfs] = []
    init: bool = False
    ulimits: list[ContainerUlimit] = []
    privileged: bool = False  # only when the head's config allows it
    capabilities: list[str] = []  # added back after --cap-drop all: the head's container_capabilities


class Welcome(Message, tag="welcome", kw_only=True):
    head_id: str
    heartbeat_interval_s: float
    liveness: int
    log_offsets: dict[str, dict[str, int]] = {}  # attempt_id -> stream -> bytes held
    echo: float = 0.0  # the Register's sent_at: the head heard the agent then (fencing)
    batches: bool = False  # the head takes ``Reports`` (an older head: single messages)


class Reregister(Message, tag="reregister", kw_only=True):
    """The head does not know this agent (it restarted): send Register again."""


class HeadHeartbeat(Message, tag="head_hb", kw_only=True):
    head_id: str
    echo: float = 0.0  # the newest sent_at the head has from this agent (fencing)


class StartAttempt(Message, tag="start", kw_only=True):
    attempt_id: str
    job_id: str
    attempt_number: int  # 1-based, as AWS_BATCH_JOB_ATTEMPT
    command: list[str]
    environment: dict[str, str]
    vcpus: float
    memory_mib: int
    gpus: int = 0
    gpu_ids: list[str] = []  # the node's GPUs (ids/UUIDs) the attempt holds, exclusively
    timeout_s: int | None = None
    image: str | None = None
    container: ContainerOptions | None = None  # with ``image``: how to run it
    script: bytes | None = None  # fetch-and-run: the head ships the stored script
    log_stream_name: str = ""
    owner: str = ""  # the Unix user the job runs as on the node
    launch_secret: str = ""  # multi-node: authorizes this attempt's launcher-bridge requests
    hosts: list[str] = []  # multi-node: the job's nodes in index order (main node included)
    node_index: int = 0
    hold: bool = False  # multi-node child with no command: hold the node for launched tasks
    # Slurm's --signal (tag hpcbatch:signal, hpcbatch.model.interrupts): send SIGNAL (no SIG
    # prefix) ``warning_s`` seconds before the timeout. Older agents ignore it.
    warning_signal: str | None = None
    warning_s: int = 0


class Orders(Message, tag="orders", kw_only=True):
    """Head -> agent (one whose Register said ``batches``): the starts of one head step, in order."""

    items: list[StartAttempt] = []


class KillAttempt(Message, tag="kill", kw_only=True):
    attempt_id: str
    reason: str
    grace_s: float = 10.0
    warning_signal: str | None = None  # a preemption: this signal (no SIG prefix) first, then SIGTERM


class AckExits(Message, tag="ack_exits", kw_only=True):
    attempt_ids: list[str]


class PullImage(Message, tag="pull_image", kw_only=True):
    """Head -> agent: put ``image`` in the node's cache now (pre-pull before a big job)."""

    image: str


# ------------------------------------------------ MPI launcher bridge (no SSH)
# mpirun on a job's main node calls the hpcbatch launcher instead of ssh; the launcher asks
# its local agent (Unix socket, per-job secret), which asks the head, which checks that the
# job holds the target node and tells that node's agent to start the command inside the
# job's attempt there. The exit travels back the same way.
class LaunchRequest(Message, tag="launch_req", kw_only=True):
    """Agent -> head: start ``command`` for ``job_id`` on ``target`` (a node the job holds)."""

    launch_id: str  # unique per launch, chosen by the requesting agent
    job_id: str  # the parent job id (multi-node: without the #index)
    attempt_id: str  # the requesting (main node) attempt
    target: str  # node name as written in the job's hostfile
    command: str  # a shell command line, as ssh would get it


class StartTask(Message, tag="start_task", kw_only=True):
    """Head -> agent: run ``command`` inside ``attempt_id`` (same owner, cgroup, log)."""

    launch_id: str
    job_id: str
    attempt_id: str  # this node's attempt of the job
    command: str
    origin: str  # the node that asked


class TaskExited(Message, tag="task_exited", kw_only=True):
    """Agent -> head: a launched task ended (or could not start)."""

    launch_id: str
    origin: str
    exit_code: int | None
    reason: str | None = None


class LaunchDone(Message, tag="launch_done", kw_only=True):
    """Head -> requesting agent: the launch ended, or was refused (``error``)."""

    launch_id: str
    exit_code: int | None
    error: str | None = None


AgentMessage = (
    AttemptExited | Register | AgentHeartbeat | AttemptStarted | LogChunk | LaunchRequest | TaskExited | ImagesCached
    | Reports
)
HeadMessage = (
    Welcome | Reregister | HeadHeartbeat | StartAttempt | KillAttempt | AckExits | StartTask | LaunchDone | PullImage
    | Orders
)

_encoder = msgspec.msgpack.Encoder()
_agent_decoder = msgspec.msgpack.Decoder(AgentMessage)
_head_decoder = msgspec.msgpack.Decoder(HeadMessage)


def encode(message: Message) -> bytes:
    """Serialize one message for the wire."""
    return _encoder.encode(message)


def decode_from_agent(data: bytes) -> AgentMessage:
    """Parse a message an agent sent; raises msgspec.DecodeError on garbage."""
    return _agent_decoder.decode(data)


def decode_from_head(data: bytes) -> HeadMessage:
    """Parse a message the head sent; raises msgspec.DecodeError on garbage."""
    return _head_decoder.decode(data)
