"""What the runner is asked to run and what it answers: an attempt's spec, its result, the reasons.

The types every part of the runner shares (``node_agent.runner`` re-exports them, so
``from node_agent.runner import AttemptSpec`` keeps working), and the small helpers that
name a failure as a person reads it. Imports nothing of the agent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hpcbatch.protocol import ContainerOptions

OOM_REASON = "OutOfMemoryError: Container killed due to memory usage"
OOM_EXIT_CODE = 137  # what AWS Batch reports for a container the OOM killer ended
TIMEOUT_REASON = "Job attempt duration exceeded timeout"
LOST_REASON = "Agent restarted while the attempt ran; attempt lost"
SHUTDOWN_REASON = "Agent shut down while the attempt ran"
CANNOT_START = "CannotStartContainerError"
STATUS_FILE = "exit_status"  # in the attempt's directory: where its shim writes the job's exit status
WORK_DIR = "work"  # the owner's private directory inside the attempt's
MAX_SIGNAL = 64  # SIGRTMAX: sh's 129..192 are deaths by signal


@dataclass(frozen=True)
class AttemptSpec:
    """What to run for one attempt; ``environment`` is complete (the caller builds it)."""

    attempt_id: str
    job_id: str
    attempt_number: int
    command: list[str]
    environment: dict[str, str]
    vcpus: float
    memory_mib: int
    gpus: int = 0
    timeout_s: int | None = None
    image: str | None = None
    container: ContainerOptions | None = None  # with image: how to run it (node_agent.containers)
    script: bytes | None = None
    cwd: str | None = None  # default: the attempt's own directory
    user: str | None = None  # the owner: a Unix user on this node (None: the agent's own)
    # Multi-node: run no command, hold the node (RUNNING) for launched tasks until killed.
    hold: bool = False
    # (name, data, mode) written into the job's directory (``Runner.job_dir``) before start.
    files: tuple[tuple[str, bytes, int], ...] = ()
    cpus: tuple[int, ...] = ()  # bind to these CPUs (a GPU job: its GPUs' NUMA node); () none
    # A node of a multi-node job: its launched tasks need the agent's bridge, so a restarted
    # agent does not re-adopt it (it is killed and reported lost, as before).
    multinode: bool = False
    # Slurm's --signal (hpcbatch:signal): this signal (no SIG prefix) ``warning_s`` seconds
    # before the timeout (node_agent.state.warning_delay), and before a preemption's SIGTERM.
    warning_signal: str | None = None
    warning_s: int = 0


@dataclass(frozen=True)
class AttemptResult:
    """How an attempt ended, in AWS Batch's terms."""

    attempt_id: str
    job_id: str
    exit_code: int | None  # None when killed by a signal
    reason: str | None  # AWS container.reason
    status_reason: str | None  # AWS job statusReason
    started_at: int  # epoch ms
    stopped_at: int  # epoch ms
    # How it ended, as facts (the reasons are for people): the head decides on these.
    timed_out: bool = False  # attemptDurationSeconds ran out
    fenced: bool = False  # killed by the agent's fence (no head heard the node)
    lost: bool = False  # no agent knows how it ended (its exit status was not recorded)


def refusal(spec: AttemptSpec, reason: str | None, status_reason: str | None = None) -> AttemptResult:
    """The result of an attempt that never ran: started and stopped now."""
    now = now_ms()
    return AttemptResult(spec.attempt_id, spec.job_id, None, reason, status_reason, now, now)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def safe_name(attempt_id: str) -> bool:
    """Whether an attempt id can name a directory and a file of the state dir."""
    return (
        bool(attempt_id)
        and "/" not in attempt_id
        and "\0" not in attempt_id
        and not attempt_id.startswith(".")
    )


def os_error(exc: OSError) -> str:
    """An OSError as a person reads it: what failed, and on which file."""
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def describe_failure(exc: BaseException) -> str:
    """An unexpected failure, named by its type and message, for a status reason."""
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {os_error(exc)}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
