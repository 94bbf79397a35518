"""The agent's process runner: starts attempts, enforces their limits, reports their exits.

Theory of operation (Linux only; one asyncio event loop, no threads):

* ``start`` spawns the command with ``subprocess.Popen`` (vfork + exec, far cheaper than
  asyncio's subprocess transport) in a new session, so the attempt is a process group
  whose id is its pid. stdout and stderr share one file, ``output.log``, because AWS Batch
  (CloudWatch) shows them combined. The steps before the spawn, and their one cleanup
  path, are ``node_agent.starting``; the exec chain (cgroup join, owner switch, shim) is
  ``node_agent.spawning``; the owner and its start directory ``node_agent.identity``.
* Exits are watched and reaped by ``node_agent.watching`` (pidfds, or a waitpid poll).
* When the main process exits, whatever is left in its process group (and cgroup) gets
  SIGKILL: a job leaves nothing behind, as a container would not.
* Kill and timeout: SIGTERM to the group, SIGKILL after the grace (``docker stop``
  semantics, which AWS Batch uses). Timers are ``loop.call_later`` handles, not tasks.
* Memory: with a writable memory cgroup (``node_agent.cgroups``) each attempt runs in its
  own cgroup with the limit and swap off; an OOM kill is read from the cgroup's counters.
  A bare job's cgroup that its end left provably empty is kept for a later attempt
  (``CgroupPool``, at most ``cgroup_pool``), its limit written again and its
  OOM-kill count taken as the next job's baseline.
  Without one ("rss" mode) a single 0.5 s timer sums the RSS of every attempt's session
  from /proc and kills the group that is over. Either way the result is AWS's: exitCode
  137 and reason ``OOM_REASON`` (``evaluateOnExit`` rules match on 137, so we keep it).
* The shim (``node_agent.spawning``) stays the job's parent, survives the agent, and writes
  the job's exit status to ``exit_status`` in the attempt's directory. An agent that stops
  (or dies) leaves its attempts running; the next one re-adopts them
  (``adopt_orphans(readopt=True)``: a pidfd works on a non-child; the status file says how
  the job ended), with their timeouts, kills and memory limits. sh reports death by signal
  N as 128+N, so a job that exits 129..192 itself reads as killed by that signal.
* Durability: ``node_agent.journal`` (an entry per live attempt, a result per finished
  one). A failure while starting fails that attempt with a reason naming the cause
  (``CannotStartContainerError: ...``), never the agent.
* Owners: a root agent runs each attempt as its owner's Unix user, never as root unless
  ``allow_root_jobs``. The owner's job gets a private ``work/`` directory (0700, theirs) as
  TMPDIR and home of its script, and as cwd unless its submit (or ``--chdir``) directory is
  one its owner may enter on this node; ``output.log`` is root's, 0600, written through
  the inherited descriptor.
* Multi-node: ``start_task`` runs a launched command (an MPI daemon, from the launcher
  bridge) inside a live attempt: same owner, environment, directory, cgroup, output.log;
  its own process group, signalled with the attempt's on kill and timeout and SIGKILLed
  when the attempt ends. A ``hold`` attempt runs only a holder (``sleep infinity``) that
  keeps the node for such tasks; on kill its tasks get the grace first, then the holder.
* Images: an attempt with ``spec.image`` first has the image pulled (it is STARTING; a kill
  meanwhile ends it after the pull), then its process is ``podman run`` (built by
  ``node_agent.containers``, run by root, the container as the owner). Kill and timeout
  signal podman as above and also remove the container (``podman rm --force``); launched
  tasks are ``podman exec`` in it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, Unpack

from node_agent import shm
from node_agent.attempts import (
    CANNOT_START,
    LOST_REASON,
    OOM_EXIT_CODE,
    OOM_REASON,
    SHUTDOWN_REASON,
    TIMEOUT_REASON,
    WORK_DIR,
    AttemptResult,
    AttemptSpec,
    describe_failure,
    now_ms,
    os_error,
    refusal,
    safe_name,
)
from node_agent.cgroups import BusyCgroups, CgroupPool, CgroupUnavailable, MemoryCgroups
from node_agent.container_cgroup import siblings, sweep
from node_agent.cpu_binding import bind_argv
from node_agent.identity import OwnerResolver, first_closed_dir
from node_agent.journal import Journal, JournalEntry, remove_attempt_dir, remove_attempt_dirs
from node_agent.live import (
    LiveAttempt,
    LiveTask,
    TaskExit,
    ending,
    exit_status,
    over_memory,
    task_ending,
)
from node_agent.orphans import OrphanAdoption
from node_agent.spawning import ExecChain, open_log, spawn, spawn_error
from node_agent.starting import Preparation, Starter, StartRefused, spawn_prepared
from node_agent.state import warning_delay
from node_agent.watching import (
    ProcessWatcher,
    Watched,
    create_time,
    signal_group,
)

if TYPE_CHECKING:
    from node_agent.containers import Podman

__all__ = [
    "CANNOT_START", "LOST_REASON", "OOM_EXIT_CODE", "OOM_REASON", "SHUTDOWN_REASON", "TIMEOUT_REASON",
    "AttemptResult", "AttemptSpec", "CgroupUnavailable", "Runner", "RunnerOptions", "TaskExit",
    "describe_failure",
]

log = logging.getLogger(__name__)

_SHM_CLEAN_DELAY_S = 1.0  # after the SIGKILLs of an attempt's end: its processes have let go of their maps
_SHM_BATCH_S = 0.25  # at most this often a scan of /dev/shm for a burst of ends
_MIB = 1024 * 1024
_RSS_INTERVAL_S = 0.5


class RunnerSettings(TypedDict, total=False):
    """``Runner``'s keyword settings (``RunnerOptions``' fields)."""

    kill_grace_s: float
    container_runtime: str | None
    memory_enforcement: str
    allow_root_jobs: bool
    keep_workdir: bool
    containers: Podman | None
    supervise: bool
    cgroup_pool: int | None


@dataclass(frozen=True, kw_only=True)
class RunnerOptions:
    """How a Runner runs its attempts (the agent's config)."""

    kill_grace_s: float = 10.0
    container_runtime: str | None = None
    memory_enforcement: str = "auto"  # auto, cgroup or rss
    allow_root_jobs: bool = False
    keep_workdir: bool = False  # debugging: forget() leaves the owner's work dir
    containers: Podman | None = None
    # Each attempt under a shim that records its exit status: a restarted agent re-adopts
    # it with its real exit. False: the job is the agent's own child.
    supervise: bool = True
    # Emptied cgroups kept for later attempts; None: as many as this agent's CPUs.
    cgroup_pool: int | None = None

    def __post_init__(self) -> None:
        if self.memory_enforcement not in ("auto", "cgroup", "rss"):
            raise ValueError(f"memory_enforcement must be auto, cgroup or rss, not {self.memory_enforcement!r}")


class Runner:
    """Runs attempts as process groups, enforces timeout and memory, reports each exit once."""

    def __init__(
        self, state_dir: Path, *, on_exit: Callable[[AttemptResult], None], **settings: Unpack[RunnerSettings]
    ) -> None:
        options = RunnerOptions(**settings)
        self._options = options
        self._state_dir = Path(state_dir)
        self._on_exit = on_exit
        self._grace = options.kill_grace_s
        self._container_runtime = options.container_runtime
        self._containers = options.containers
        self._journal = Journal(self._state_dir)
        self._attempts_dir = self._journal.attempts_dir
        self._hostname = socket.gethostname()
        self._owners = OwnerResolver(self._hostname, allow_root_jobs=options.allow_root_jobs)
        as_root = self._owners.euid == 0
        if as_root:  # owners pass through attempts/ to their work dir but may not list it
            os.chmod(self._attempts_dir, 0o711)
        self._cgroups = MemoryCgroups.open(self._state_dir, options.memory_enforcement)
        self._pool = _cgroup_pool(self._cgroups, options.cgroup_pool)
        self._starter = Starter(
            self._owners, ExecChain(as_root=as_root), self._cgroups, self._containers, options.supervise,
            unreachable=first_closed_dir(self._attempts_dir) if as_root else None, pool=self._pool,
        )
        self._running: dict[str, LiveAttempt] = {}
        self._tasks: dict[str, LiveTask] = {}  # launch_id -> live task, its attempt ended or not
        self._watcher = ProcessWatcher(self._on_end)
        self._busy_cgroups = BusyCgroups()  # emptied cgroups whose rmdir must wait
        self._remover: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._drained: asyncio.Future[None] | None = None
        self._doomed: set[str] = set()  # shutdown: the attempts it waits to see end
        self._drain_tasks = False  # shutdown: and it waits for every launched task too
        self._rss_timer: asyncio.TimerHandle | None = None
        # Attempts whose /dev/shm leftovers are due for removal: (when, uid, start s, alone).
        self._shm_due: collections.deque[tuple[float, int, float, bool]] = collections.deque()
        self._shm_timer: asyncio.TimerHandle | None = None
        self._forgotten: list[Path] = []  # attempt dirs to delete in the remover's next batch
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        # The effective mode, for logs and tests: "cgroup" or "rss".
        self.memory_enforcement = "cgroup" if self._cgroups else "rss"

    def _bind(self) -> asyncio.AbstractEventLoop:
        """The running event loop, handed to every part that sets timers."""
        loop = asyncio.get_running_loop()
        self._loop = self._watcher.loop = self._journal.loop = self._busy_cgroups.loop = loop
        return loop

    # ------------------------------------------------------------------ start
    async def start(self, spec: AttemptSpec) -> int | AttemptResult:
        """Spawn the attempt and return its pid, or a result saying why it cannot start.

        Whatever goes wrong while starting (a full disk, a chown refused, a bug) fails this
        attempt with a reason naming the cause, after undoing what the start had set up; it
        never escapes to the agent's loop.
        """
        answer = self._answer_before_start(spec)
        if answer is not None:
            return answer
        self._bind()
        adir = self._journal.attempt_dir(spec.attempt_id)
        answer = self._make_attempt_dir(spec, adir)
        if answer is not None:
            return answer
        with contextlib.ExitStack() as undo:  # the one cleanup path: reverse order, on any failure
            try:
                prepared = await self._starter.prepare(spec, adir, undo)
                if self._closed:  # shut down during the pull: nobody would watch it
                    raise StartRefused(f"{CANNOT_START}: agent is shutting down")
                popen = spawn_prepared(prepared, self._devnull)
            except StartRefused as refused:
                return self._refuse(spec, adir, refused.reason)
            except Exception as exc:  # a bug or an unforeseen failure: this attempt fails, nothing else
                log.exception("attempt %s of job %s could not start", spec.attempt_id, spec.job_id)
                return self._refuse(spec, adir, f"{CANNOT_START}: {describe_failure(exc)}")
            undo.pop_all()  # it runs: its cgroup and descriptors are its record's now
        return self._track(prepared, popen)

    def _answer_before_start(self, spec: AttemptSpec) -> int | AttemptResult | None:
        """Its pid or result when it is known already, or a refusal that needs no directory."""
        rec = self._running.get(spec.attempt_id)
        if rec is not None:
            return rec.pid
        known = self._journal.known(spec.attempt_id)
        if known is not None:
            return known
        if self._closed:
            return refusal(spec, f"{CANNOT_START}: agent is shutting down")
        if not safe_name(spec.attempt_id):
            return refusal(spec, f"{CANNOT_START}: bad attempt id {spec.attempt_id!r}")
        return None

    def _make_attempt_dir(self, spec: AttemptSpec, adir: Path) -> AttemptResult | None:
        try:
            adir.mkdir(mode=0o711)  # owners pass through to work/; nobody lists it
        except FileExistsError:  # ran under an earlier agent process
            stored = self._journal.stored_result(spec.attempt_id)
            return stored or dataclasses.replace(refusal(spec, None, LOST_REASON), lost=True)
        except OSError as exc:
            result = refusal(spec, f"{CANNOT_START}: cannot create the attempt's directory: {os_error(exc)}")
            self._journal.remember(result)
            return result
        return None

    def _track(self, p: Preparation, popen: subprocess.Popen[bytes]) -> int:
        """The attempt runs: from here on nothing may fail the start (it would leave a job untracked)."""
        spec = p.spec
        rec = LiveAttempt(spec, popen.pid, p.started_at, create_time(popen.pid), p.cgroup, popen=popen,
                          oom_base=p.oom_base)
        rec.env, rec.cwd, rec.drop = p.job_env, p.cwd, p.drop
        rec.uid = p.owner.uid if p.owner is not None else self._owners.euid
        rec.container = spec.image is not None
        rec.container_cgroup = p.container_cgroup
        rec.status_file = p.status_file
        self._running[spec.attempt_id] = rec
        try:
            self._watch_limits(rec, spec.timeout_s)
            self._journal.record_start(rec.journal_entry())
        except Exception:
            log.exception("attempt %s runs, but its bookkeeping failed", spec.attempt_id)
        return rec.pid

    def _watch_limits(self, rec: LiveAttempt, timeout_s: float | None) -> None:
        """Watch its exit, its timeout and (without a cgroup) its memory."""
        assert self._loop is not None
        self._watcher.watch(rec)
        if timeout_s is not None and timeout_s > 0:
            rec.timeout_handle = self._loop.call_later(timeout_s, self._on_timeout, rec)
        warn_in = warning_delay(timeout_s, rec.spec.warning_s) if rec.spec.warning_signal and not rec.warned else None
        if warn_in is not None:
            rec.warning_handle = self._loop.call_later(warn_in, self._warn_before_timeout, rec)
        # A container's limit is podman's (--memory); its processes are not in our sessions.
        if rec.cgroup is None and rec.spec.memory_mib > 0 and self._rss_timer is None and not rec.container:
            self._rss_timer = self._loop.call_later(_RSS_INTERVAL_S, self._rss_tick)

    def _warn_before_timeout(self, rec: LiveAttempt) -> None:
        """Its warning signal is due: send it, and journal that it was (a re-adopting agent
        sets the timer again from the journal, and must not send it a second time)."""
        rec.warn()
        if rec.warned and rec.adoptable():
            self._journal.record_warned(rec.journal_entry())

    def _refuse(self, spec: AttemptSpec, adir: Path, reason: str) -> AttemptResult:
        """An attempt that never started: say why in its log and remember the answer."""
        result = refusal(spec, reason)
        # The reason goes back with the result whatever the disk says; the log and the
        # journal are best-effort (a full disk is often why it could not start).
        try:
            fd = open_log(adir / "output.log")
            try:
                os.write(fd, reason.encode() + b"\n")
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("attempt %s: cannot log why it did not start (%s): %s", spec.attempt_id, os_error(exc), reason)
        self._journal.record_refusal(result)
        return result

    # ------------------------------------------------------------------ launched tasks
    def job_dir(self, attempt_id: str, user: str | None) -> Path:
        """Where ``AttemptSpec.files`` go: the owner's private work dir (the attempt's without one)."""
        adir = self._attempts_dir / attempt_id
        return adir if user is None else adir / WORK_DIR

    def is_pulling(self, attempt_id: str) -> bool:
        """True while the attempt's image is being pulled (it is starting, not yet running)."""
        return attempt_id in self._starter.pulling

    def attempt_uid(self, attempt_id: str) -> int | None:
        """The uid a live attempt runs as, or None when it is not running here."""
        rec = self._running.get(attempt_id)
        return None if rec is None else rec.uid

    def start_task(self, attempt_id: str, launch_id: str, command: str, on_exit: TaskExit) -> str | None:
        """Run ``/bin/sh -c command`` inside a live attempt; None, or why it cannot start.

        The task is the attempt's: same owner, environment, directory, cgroup and
        output.log; its own process group (its own session, as sshd would give it), which
        the runner signals with the attempt's on kill, timeout and exit. ``on_exit`` gets
        (launch_id, exit_code or None, reason or None) once.
        """
        rec = self._running.get(attempt_id)
        why = self._cannot_launch_into(rec, attempt_id, launch_id)
        if why is not None or rec is None:
            return why
        if rec.container:
            from node_agent.containers import exec_launch

            assert self._containers is not None
            launch = exec_launch(self._containers, attempt_id, command, rec.env, rec.drop, rec.cwd)
        else:  # on the attempt's CPUs too (a GPU job's NUMA node): an MPI daemon and its ranks
            argv = bind_argv(["/bin/sh", "-c", command], rec.spec.cpus, rec.env.get("PATH"))
            launch = self._starter.chain.launch(argv, rec.env, rec.cwd, rec.cgroup, rec.drop)
        if isinstance(launch, str):
            return launch
        log_fd = open_log(self.log_path(attempt_id))
        try:
            popen = spawn(launch, rec.cwd, self._devnull, log_fd)
        except (OSError, subprocess.SubprocessError) as exc:
            return spawn_error(exc, launch[0][0], rec.cwd, rec.drop)
        except ValueError as exc:  # exec cannot carry it (a NUL byte in the command)
            return f"{CANNOT_START}: {describe_failure(exc)}"
        finally:
            os.close(log_fd)
        task = LiveTask(launch_id, rec, popen, on_exit)
        rec.tasks[launch_id] = task
        self._tasks[launch_id] = task
        self._watcher.watch(task)
        return None

    def _cannot_launch_into(self, rec: LiveAttempt | None, attempt_id: str, launch_id: str) -> str | None:
        if rec is None:
            return f"attempt {attempt_id} is not running on node {self._hostname}"
        if rec.terminating:
            return f"attempt {attempt_id} is being stopped ({rec.status_reason})"
        if rec.popen is None:  # its environment and the bridge's grant went with the old agent
            return f"attempt {attempt_id} was re-adopted after an agent restart and cannot launch tasks"
        if launch_id in self._tasks:
            return f"launch {launch_id} is already running"
        return None

    def _finish_task(self, task: LiveTask, status: int | None) -> None:
        rec = task.attempt
        rec.tasks.pop(task.launch_id, None)
        self._tasks.pop(task.launch_id, None)
        signal_group(task.pid, signal.SIGKILL)  # what the task left in its group
        code = None if status is None else os.waitstatus_to_exitcode(status)
        task.popen.returncode = code if code is not None else -1
        exit_code, reason = task_ending(code)
        if rec.terminating and rec.status_reason and exit_code != 0:
            reason = f"{reason}: {rec.status_reason}" if reason else rec.status_reason
        if rec.terminating and rec.spec.hold and not rec.tasks and rec.spec.attempt_id in self._running:
            signal_group(rec.pid, signal.SIGTERM)  # its tasks are gone: release the node
        self._check_drained()
        try:
            task.on_exit(task.launch_id, exit_code, reason)
        except Exception:
            log.exception("task exit callback failed for launch %s", task.launch_id)

    def _check_drained(self) -> None:
        if self._drained is None or self._drained.done():
            return
        if self._doomed & self._running.keys() or (self._drain_tasks and self._tasks):
            return
        self._drained.set_result(None)

    # ------------------------------------------------------------------ kill, shutdown
    def kill(self, attempt_id: str, reason: str, grace_s: float | None = None, *, fenced: bool = False,
             warning_signal: str | None = None) -> None:
        """SIGTERM the attempt's process group now and SIGKILL it after the grace.

        ``fenced``: the agent's fence kills it (no head heard the node), a fact its result carries;
        ``warning_signal``: a preemption's, sent just before the SIGTERM (Slurm's ``--signal``).
        """
        rec = self._running.get(attempt_id)
        if rec is None:
            pulling = self._starter.pulling
            if attempt_id in pulling and pulling[attempt_id] is None:
                pulling[attempt_id] = reason  # it ends when the pull does
            return
        if rec.status_reason is None:  # the first cause is the one AWS reports
            rec.status_reason = reason
            rec.fenced = fenced
        if warning_signal:
            rec.warn(warning_signal)
        self._terminate(rec, self._grace if grace_s is None else grace_s)

    def running(self) -> list[tuple[str, str, int, int]]:
        """(attempt_id, job_id, pid, started_at_ms) of every live attempt."""
        return [(a, r.spec.job_id, r.pid, r.started_at) for a, r in self._running.items()]

    def log_path(self, attempt_id: str) -> Path:
        """The attempt's combined stdout+stderr file."""
        return self._attempts_dir / attempt_id / "output.log"

    async def shutdown(self, kill: bool) -> None:
        """Stop watching; with kill=True first end every attempt (their on_exit still runs).

        With kill=False the attempts a later agent can re-adopt (``adopt_orphans``) run on;
        the others (multi-node ones, those without a shim) are ended as with kill=True.
        """
        self._closed = True
        self._journal.closing()
        if self._forgotten:  # acknowledged just now: still deleted
            self._remover_pool().submit(remove_attempt_dirs, self._forgotten, self._options.keep_workdir)
            self._forgotten = []
        if self._remover is not None:
            self._remover.shutdown(wait=True)
            self._remover = None
        await self._end_for_shutdown(kill)
        for rec in self._running.values():  # left running: the next agent adopts them
            rec.cancel_timers()
        self._watcher.close()
        for timer in (self._rss_timer, self._shm_timer):
            if timer is not None:
                timer.cancel()
        self._rss_timer = self._shm_timer = None
        self._journal.close()
        self._remove_cgroups()
        if self._devnull >= 0:
            os.close(self._devnull)
            self._devnull = -1
        log.info("runner stopped (kill=%s, %d attempts left running)", kill, len(self._running))

    async def _end_for_shutdown(self, kill: bool) -> None:
        """End the attempts that must not outlive the agent, and wait for them (and tasks)."""
        doomed = [rec for rec in self._running.values() if kill or not rec.adoptable()]
        if not (doomed or (kill and self._tasks)) or self._loop is None:
            return
        self._drained = self._loop.create_future()
        self._doomed = {rec.spec.attempt_id for rec in doomed}
        self._drain_tasks = kill
        self._check_drained()  # only tasks of ended attempts left: already SIGKILLed
        for rec in doomed:
            if rec.status_reason is None:
                rec.status_reason = SHUTDOWN_REASON
            self._terminate(rec, self._grace)
        try:
            async with asyncio.timeout(self._grace + 5.0):
                await self._drained
        except TimeoutError:
            log.warning("shutdown: %d attempts did not exit after SIGKILL", len(self._running))

    def _remove_cgroups(self) -> None:
        """Shutdown: the emptied cgroups, and our parent when nothing is left in it."""
        if self._pool is not None:
            self._pool.drain()
        self._busy_cgroups.settle(1.0)  # their processes were SIGKILLed: wait briefly
        if self._cgroups is not None and not self._running and not self._busy_cgroups:
            self._cgroups.remove(self._cgroups.parent)
            if self._containers is not None:  # where podman made our parent's path (cgroup v1)
                sweep(siblings(self._cgroups.parent, self._cgroups.version, self._cgroups.root))

    # ------------------------------------------------------------------ orphans
    def adopt_orphans(self, readopt: bool = False) -> list[AttemptResult]:
        """What a previous agent process left: results for attempts that ended, and then

        with ``readopt`` (from a running event loop) every attempt still running is watched
        again, as slurmd does after a restart with its jobs under slurmstepd: its timeout,
        warning signal (unless already sent), kill and memory limit hold, and its exit
        (written by its shim) is reported as it comes. Without ``readopt``, or for an
        attempt that cannot be re-adopted (a node of a multi-node job, or one started
        without a shim), it is killed and reported lost.
        """
        if readopt:
            self._bind()
        adoption = OrphanAdoption(self._journal, self._cgroups, self._containers)
        return adoption.run(self._running, self._readopt if readopt else None)

    def _readopt(self, entry: JournalEntry) -> None:
        """Watch a running attempt an earlier agent process started (see ``adopt_orphans``)."""
        assert self._loop is not None
        spec = AttemptSpec(
            attempt_id=entry.attempt_id, job_id=entry.job_id, attempt_number=0, command=[],
            environment={}, vcpus=0, memory_mib=entry.memory_mib,
            warning_signal=entry.warning_signal, warning_s=entry.warning_s,
        )
        cgroup = Path(entry.cgroup) if entry.cgroup else None
        rec = LiveAttempt(spec, entry.pid, entry.started_at, entry.create_time, cgroup, oom_base=entry.oom_base)
        rec.uid, rec.warned = entry.uid, entry.warned
        rec.container = entry.container
        rec.status_file = Path(entry.status_file) if entry.status_file else None
        self._running[entry.attempt_id] = rec
        timeout_s = None
        if entry.timeout_at is not None:
            timeout_s = max(0.001, (entry.timeout_at - now_ms()) / 1000)
        self._watch_limits(rec, timeout_s)
        log.info("re-adopted attempt %s of job %s (pid %d)", entry.attempt_id, spec.job_id, entry.pid)

    # ------------------------------------------------------------------ exits
    def _on_end(self, proc: Watched, status: int | None) -> None:
        if isinstance(proc, LiveTask):
            self._finish_task(proc, status)
        elif isinstance(proc, LiveAttempt):
            self._finish(proc, status)

    def _how_it_ended(self, rec: LiveAttempt, status: int | None) -> tuple[int | None, bool]:
        """(exit code as ``_exit_status`` gives it, whether the OOM killer acted)."""
        try:
            code = exit_status(rec, status)
            oom = rec.oom
            if rec.cgroup is not None:
                rec.oom_kills = MemoryCgroups.oom_kills(rec.cgroup)
                oom = oom or rec.oom_kills > rec.oom_base  # its own: a reused cgroup's count goes on
                if rec.container_cgroup is not None:
                    oom = oom or rec.container_cgroup.oom_killed()
        except Exception:  # what ended is still reported, with what is known
            log.exception("attempt %s: reading how it ended failed", rec.spec.attempt_id)
            return None, False
        return code, oom

    def _finish(self, rec: LiveAttempt, status: int | None) -> None:
        """The attempt ended: report it first, then journal and clean up, each best-effort."""
        rec.cancel_timers()
        signal_group(rec.pid, signal.SIGKILL)  # leftovers in the group die with the job
        spec = rec.spec
        code, oom = self._how_it_ended(rec, status)
        if rec.popen is not None:
            rec.popen.returncode = code if code is not None else -1  # keeps Popen from reaping
        exit_code, reason, lost = ending(code, oom=oom, killed=rec.terminating)
        result = AttemptResult(
            spec.attempt_id, spec.job_id, exit_code, reason, rec.status_reason, rec.started_at, now_ms(),
            timed_out=rec.timed_out, fenced=rec.fenced, lost=lost,
        )
        del self._running[spec.attempt_id]
        self._journal.remember(result)
        self._check_drained()
        # Reported before anything touches the disk: a full disk must not cost the exit.
        try:
            self._on_exit(result)
        except Exception:
            log.exception("on_exit failed for attempt %s", spec.attempt_id)
        self._journal.record_end(result)
        rec.signal_tasks(signal.SIGKILL)  # a job's launched tasks die with it
        try:
            self._release(rec, code)
        except Exception:
            log.exception("attempt %s: cleanup after its exit failed", spec.attempt_id)

    def _release(self, rec: LiveAttempt, code: int | None) -> None:
        """Free what an ended attempt held: its cgroup, its container."""
        if rec.container_cgroup is not None:
            rec.container_cgroup.close()
        if rec.cgroup is not None and not self._keep_cgroup(rec):
            # rmdir first: it succeeds only on an empty cgroup (the usual end), where there
            # is nothing to kill; else kill what is left and remove it once it has gone.
            if not MemoryCgroups.remove(rec.cgroup):
                MemoryCgroups.kill(rec.cgroup)
                if not MemoryCgroups.remove(rec.cgroup):  # a container's: until podman removed its own
                    self._busy_cgroups.remove_later(rec.cgroup, 1200 if rec.container else 100)
            if rec.container_cgroup is not None:
                sweep(rec.container_cgroup.siblings())
        if rec.container and (rec.terminating or code is None or code < 0) and self._containers:
            self._containers.remove(rec.spec.attempt_id)  # podman died before its container did
        self._clean_shm_later(rec)

    def _keep_cgroup(self, rec: LiveAttempt) -> bool:
        """Keep its cgroup for a later attempt (``CgroupPool``'s rules); False: remove it.

        Never while a journal write is owed (a full disk): an entry left on disk names the
        cgroup, and a later agent's orphan pass would kill whatever then runs in it. Never
        with a launched task not yet seen to end: one spawned just now may still be joining.
        """
        if self._pool is None or rec.container or rec.container_cgroup is not None or rec.oom_kills is None:
            return False
        if rec.tasks:
            return False
        if self._journal.pending():
            return False
        assert rec.cgroup is not None
        return self._pool.keep(rec.cgroup, rec.oom_kills, rec.uid)

    def _clean_shm_later(self, rec: LiveAttempt) -> None:
        """Remove what the job left in /dev/shm (node_agent.shm), once its killed processes
        are surely gone, in the remover's thread (it reads /proc)."""
        if rec.uid < 0 or self._loop is None or self._loop.is_closed():
            return
        alone = not any(other.uid == rec.uid for other in self._running.values())
        self._shm_due.append((self._loop.time() + _SHM_CLEAN_DELAY_S, rec.uid, rec.started_at / 1000, alone))
        if self._shm_timer is None:
            self._shm_timer = self._loop.call_at(self._shm_due[0][0], self._clean_shm)

    def _clean_shm(self) -> None:
        """Clean for every attempt whose delay is over, one scan of /dev/shm per owner.

        Cleaning for (uid, alone) since several start times at once is cleaning since the
        earliest: the union of "the owner's files that appeared since t" over each t. A
        burst of ends costs one scan per ``_SHM_BATCH_S``, not one per attempt.
        """
        self._shm_timer = None
        if self._closed or self._loop is None:
            return
        now = self._loop.time()
        since: dict[tuple[int, bool], float] = {}
        while self._shm_due and self._shm_due[0][0] <= now:
            _, uid, started_s, alone = self._shm_due.popleft()
            since[uid, alone] = min(started_s, since.get((uid, alone), started_s))
        for (uid, alone), since_s in since.items():
            self._remover_pool().submit(shm.clean, uid, since_s, alone)
        if self._shm_due:
            self._shm_timer = self._loop.call_at(max(self._shm_due[0][0], now + _SHM_BATCH_S), self._clean_shm)

    def _remover_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._remover is None:
            self._remover = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hpcbatch-forget")
        return self._remover

    # ------------------------------------------------------------------ kill, timeout, memory
    def _terminate(self, rec: LiveAttempt, grace_s: float) -> None:
        assert self._loop is not None
        rec.terminate(self._loop, grace_s, self._containers)

    def _on_timeout(self, rec: LiveAttempt) -> None:
        rec.timeout_handle = None
        if rec.status_reason is None:
            rec.status_reason = TIMEOUT_REASON
            rec.timed_out = True
        self._terminate(rec, self._grace)

    def _rss_tick(self) -> None:
        self._rss_timer = None
        watched = {
            r.pid: r
            for r in self._running.values()
            if r.cgroup is None and r.spec.memory_mib > 0 and not r.oom and not r.container
        }
        if not watched:
            return
        for rec, rss in over_memory(watched):
            log.info("attempt %s over memory: %d MiB > %d MiB", rec.spec.attempt_id, rss // _MIB, rec.spec.memory_mib)
            rec.oom = True  # like the OOM killer: no grace
            rec.sigkill(self._containers)
        if not self._closed:
            assert self._loop is not None
            self._rss_timer = self._loop.call_later(_RSS_INTERVAL_S, self._rss_tick)

    # ------------------------------------------------------------------ results
    def forget(self, attempt_id: str) -> None:
        """The head has the attempt's result and output: delete its directory for good.

        The deletion runs on a helper thread: directory removal can wait on the file
        system's journal, and the event loop has exits and starts to serve meanwhile.
        """
        if attempt_id in self._running or not safe_name(attempt_id):
            return
        self._journal.forget(attempt_id)  # and the writes still owed for it (a full disk)
        if not self._forgotten:  # the first of a batch (an acknowledgement names many): one hand-off
            if self._loop is None or self._loop.is_closed():
                self._remover_pool().submit(remove_attempt_dir, self._journal.attempt_dir(attempt_id),
                                            self._options.keep_workdir)
                return
            self._loop.call_soon(self._remove_forgotten)
        self._forgotten.append(self._journal.attempt_dir(attempt_id))

    def _remove_forgotten(self) -> None:
        """Hand the batch of forgotten attempt directories to the remover's thread at once."""
        batch, self._forgotten = self._forgotten, []
        if batch and not self._closed:
            self._remover_pool().submit(remove_attempt_dirs, batch, self._options.keep_workdir)

    def unacknowledged(self) -> list[AttemptResult]:
        """Results of finished attempts still on disk (not yet ``forget``-ten), oldest first.

        After an agent restart these are the exits the head may not have recorded yet.
        """
        return self._journal.unacknowledged(self._running)

    def pending_writes(self) -> int:
        """Journal files not yet written (the disk was full): for logs and tests."""
        return self._journal.pending()


def _cgroup_pool(cgroups: MemoryCgroups | None, size: int | None) -> CgroupPool | None:
    """The pool of emptied cgroups; None: none kept."""
    if cgroups is None:
        return None
    size = len(os.sched_getaffinity(0)) if size is None else size
    return CgroupPool(cgroups, size) if size > 0 else None
