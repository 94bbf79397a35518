"""The agent's process runner: starts attempts, enforces their limits, reports their exits.

Theory of operation (Linux only; one asyncio event loop, no threads):

* ``start`` spawns the command with ``subprocess.Popen`` (vfork + exec, far cheaper than
  asyncio's subprocess transport) in a new session, so the attempt is a process group
  whose id is its pid. stdout and stderr share one file, ``output.log``, because AWS Batch
  (CloudWatch) shows them combined.
* Each exit is watched through a pidfd registered with ``loop.add_reader``; where pidfds
  are missing (Linux < 5.3) one 50 ms timer polls ``waitpid(WNOHANG)`` instead. Only this
  module reaps its children, so an exit status is never stolen.
* When the main process exits, whatever is left in its process group (and cgroup) gets
  SIGKILL: a job leaves nothing behind, as a container would not.
* Kill and timeout: SIGTERM to the group, SIGKILL after the grace (``docker stop``
  semantics, which AWS Batch uses). Timers are ``loop.call_later`` handles, not tasks.
* Memory: with a writable memory cgroup (v2 preferred, v1 accepted) each attempt runs in
  its own cgroup with the limit and swap off, joined in the child before exec so nothing
  escapes; an OOM kill is read from the cgroup's counters. Without one ("rss" mode) a single
  0.5 s timer sums the RSS of every attempt's session from /proc and kills the group that
  is over. Either way the result is AWS's: exitCode 137 and reason ``OOM_REASON``
  (``evaluateOnExit`` rules match on 137, so we keep it).
* The shim: each attempt runs under a small ``sh`` (``_SHIM``, slurmstepd's and conmon's
  part) that stays the job's parent, survives the agent, and writes the job's exit status
  to ``exit_status`` in the attempt's directory. The attempt's pid is the shim's; it leads
  the process group, so signals reach the job as before. An agent that stops (or dies)
  leaves its attempts running; the next one re-adopts them (``adopt_orphans(readopt=True)``:
  a pidfd works on a non-child; the status file says how the job ended), with their
  timeouts, kills and memory limits. sh reports death by signal N as 128+N, so a job that
  exits 129..192 itself reads as killed by that signal, as a shell would say.
* Durability: a journal entry per live attempt (``state_dir/running/<id>.json``) and a
  ``result.json`` per finished one, both written by rename. No fsync: the journal only has
  to outlive the agent process; a machine crash takes the jobs with it. An exit is
  reported before anything is written; a write that fails (a full disk) is retried every
  second, and the exit is not lost meanwhile. A failure while starting fails that attempt
  with a reason naming the cause (``CannotStartContainerError: ...``), never the agent.
* Owners: a root agent runs each attempt as its owner's Unix user (``spec.user``, resolved
  here with pwd/getgrouplist), never as root unless ``allow_root_jobs``. Popen's user=,
  group= and extra_groups= make CPython 3.11 fork() instead of vfork() (about 9 ms per spawn
  for a 200 MB agent, growing with its heap), so the fast path stays vfork and the child
  changes identity itself: ``sh`` (joins the cgroup, as root) -> ``setpriv`` (util-linux:
  setgroups, setresgid, setresuid) -> ``env -i`` (as the owner: sets the job's environment)
  -> the job. Both root stages get an empty environment: the job's LD_PRELOAD, LOCPATH,
  GCONV_PATH... would otherwise act in a root process. The chain costs the child about
  1.7 ms more than a root job on a 2-core box; the agent's own cost stays one vfork.
  Without setpriv or env the slow path (a preexec_fn, so fork) does the same in Python.
  The owner's job gets a private ``work/`` directory (0700, theirs) as TMPDIR and home of
  its script, and as cwd unless its submit (or ``--chdir``) directory is one its owner may
  enter on this node (``_start_dir``: Slurm's rule; a log line says when it falls back);
  ``output.log`` is root's, 0600, written through the inherited descriptor.

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

Past 800 lines (about 1,650) because three self-contained parts live here: the memory-cgroup
backend (``_MemoryCgroups``, ~150 lines), running as the owner (``_resolve_owner``,
``_launch`` and their helpers, ~150 lines) and the journal with re-adoption
(``_durable``, ``adopt_orphans``, ``_readopt``, ~250 lines); each can move to its own module
unchanged (left here while other work edits this file).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from node_agent import shm
from node_agent.container_cgroup import ContainerCgroup, siblings, sweep
from node_agent.cpu_binding import bind_argv

if TYPE_CHECKING:
    from hpcbatch.protocol import ContainerOptions
    from node_agent.containers import Podman

log = logging.getLogger(__name__)

OOM_REASON = "OutOfMemoryError: Container killed due to memory usage"
_SHM_CLEAN_DELAY_S = 1.0  # after the SIGKILLs of an attempt's end: its processes have let go of their maps
OOM_EXIT_CODE = 137  # what AWS Batch reports for a container the OOM killer ended
TIMEOUT_REASON = "Job attempt duration exceeded timeout"
LOST_REASON = "Agent restarted while the attempt ran; attempt lost"
SHUTDOWN_REASON = "Agent shut down while the attempt ran"
CANNOT_START = "CannotStartContainerError"
# Run as `sh -c _JOIN_CGROUP <cgroup.procs> <command...>`: move into the cgroup, then exec.
# dash exports PWD, which the job's environment may not have had: unset it again then.
_JOIN = 'echo $$ >"$0" || { echo "hpcbatch: cannot join $0" >&2; exit 125; }; '
_JOIN_CGROUP = _JOIN + 'exec "$@"'
# The attempt's shim (slurmstepd's and conmon's part, in sh): it stays the job's parent, so
# the job's exit status outlives the agent: `sh -c _SHIM <status file> <command...>`.
# It survives the TERM/INT/HUP the agent sends the group (a trap; the job's own signals are
# reset to default by exec), runs the job in a subshell so sh's "Killed" notices go to
# /dev/null instead of the job's log, writes $? (128+N for death by signal N) to the status
# file and exits with it. A SIGKILL of the group ends it too: no status then.
_SHIM = 'trap : TERM INT HUP; exec 3>&2 2>/dev/null; (exec "$@" 2>&3 3>&-); s=$?; echo $s >"$0"; exit $s'
# `sh -c _JOIN_SHIM <cgroup.procs> <status file> <command...>`: join the cgroup, then the shim.
_JOIN_SHIM = _JOIN + 'st=$1; shift; ' + _SHIM.replace('"$0"', '"$st"')
_STATUS_FILE = "exit_status"  # in the attempt's directory
_MAX_SIGNAL = 64  # SIGRTMAX: sh's 129..192 are deaths by signal
_SH_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOOL_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"  # where setpriv and env are looked for
_WORK_DIR = "work"  # the owner's private directory inside the attempt's
_SCRIPT_NAME = ".hpcbatch-script"  # an owner's script, in its work dir

_MIB = 1024 * 1024
_PAGE = os.sysconf("SC_PAGE_SIZE")
_RSS_INTERVAL_S = 0.5
_POLL_INTERVAL_S = 0.05
# pwd + getgrouplist cost 0.1-0.2 ms per start (NSS "files systemd"); a user's identity is
# reused this long. Unknown users are never cached.
_OWNER_TTL_S = 10.0
_KEEP_RESULTS = 10_000  # finished results answered from memory; older ones from result.json
_WRITE_RETRY_S = 1.0  # a journal write that failed (full disk) is retried this often


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


@dataclass(frozen=True, slots=True)
class _Owner:
    """The Unix identity an attempt runs as, resolved on this node."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, the primary one included
    home: str
    switch: bool  # False when the agent already is this identity (nothing to drop)


@dataclass(slots=True, eq=False)
class _Attempt:
    """A live attempt; mutable, owned by the Runner."""

    spec: AttemptSpec
    pid: int  # the attempt's process: its supervisor (shim) where it has one; its group's id
    started_at: int
    create_time: float
    cgroup: Path | None
    popen: subprocess.Popen[bytes] | None = None  # None: re-adopted from an earlier agent process
    pidfd: int | None = None
    status_reason: str | None = None
    oom: bool = False
    kill_handle: asyncio.TimerHandle | None = None
    timeout_handle: asyncio.TimerHandle | None = None
    # What launched tasks inherit: the job's final environment, directory and identity.
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    cwd: str = ""
    drop: _Owner | None = None
    uid: int = -1
    tasks: dict[str, _Task] = dataclasses.field(default_factory=dict)
    terminating: bool = False
    container: bool = False  # runs in a podman container named after the attempt
    container_cgroup: ContainerCgroup | None = None  # its cgroup's parent: how its OOM is seen
    status_file: Path | None = None  # where its shim writes the job's exit status (None: no shim)
    timed_out: bool = False
    fenced: bool = False

    def cancel_timers(self) -> None:
        for handle in (self.kill_handle, self.timeout_handle):
            if handle is not None:
                handle.cancel()


TaskExit = Callable[[str, int | None, str | None], None]  # (launch_id, exit_code, reason)


@dataclass(slots=True, eq=False)
class _Task:
    """A command launched into a live attempt (an MPI daemon): its own process group."""

    launch_id: str
    attempt: _Attempt
    popen: subprocess.Popen[bytes]
    on_exit: TaskExit
    pidfd: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid


class CgroupUnavailable(RuntimeError):
    """memory_enforcement="cgroup" was asked for but no writable memory cgroup exists."""


class Runner:
    """Runs attempts as process groups, enforces timeout and memory, reports each exit once."""

    def __init__(
        self,
        state_dir: Path,
        *,
        on_exit: Callable[[AttemptResult], None],
        kill_grace_s: float = 10.0,
        container_runtime: str | None = None,
        memory_enforcement: str = "auto",
        allow_root_jobs: bool = False,
        keep_workdir: bool = False,
        containers: Podman | None = None,
        supervise: bool = True,
    ) -> None:
        self._allow_root_jobs = allow_root_jobs
        self._keep_workdir = keep_workdir
        self._remover: concurrent.futures.ThreadPoolExecutor | None = None  # debugging: forget() leaves the owner's work dir
        if memory_enforcement not in ("auto", "cgroup", "rss"):
            raise ValueError(
                f"memory_enforcement must be auto, cgroup or rss, not {memory_enforcement!r}"
            )
        self._state_dir = Path(state_dir)
        # Each attempt under a shim that records its exit status (``_SHIM``): a restarted
        # agent re-adopts it with its real exit. False: the job is the agent's own child.
        self._supervise = supervise
        # Journal writes that failed (a full disk): path -> (data, journal entry to drop once
        # written). The exit was reported already; these are retried every second.
        self._pending_writes: dict[Path, tuple[dict[str, object], Path | None]] = {}
        self._write_timer: asyncio.TimerHandle | None = None
        self._attempts_dir = self._state_dir / "attempts"
        self._journal_dir = self._state_dir / "running"
        self._attempts_dir.mkdir(parents=True, exist_ok=True)
        self._journal_dir.mkdir(parents=True, exist_ok=True)
        self._hostname = socket.gethostname()
        self._euid = os.geteuid()
        self._me = _user_name(self._euid)
        self._setpriv = self._env_tool = None
        self._unreachable: str | None = None  # why owners cannot reach their work dirs
        self._owners: dict[str, tuple[float, _Owner]] = {}  # name -> (expiry, identity)
        self._env_tool = shutil.which("env", path=_TOOL_PATH)
        if self._euid == 0:
            self._setpriv = shutil.which("setpriv", path=_TOOL_PATH)
            # Owners pass through attempts/ to their work dir but may not list it.
            os.chmod(self._attempts_dir, 0o711)
            self._unreachable = _first_closed_dir(self._attempts_dir)
            if self._setpriv is None or self._env_tool is None:
                log.warning("setpriv or env missing: jobs switch user the slow way (fork)")
        self._on_exit = on_exit
        self._grace = kill_grace_s
        self._container_runtime = container_runtime
        self._containers = containers
        self._pulling: dict[str, str | None] = {}  # attempt id -> why it was killed while pulling
        self._running: dict[str, _Attempt] = {}
        self._tasks: dict[str, _Task] = {}  # launch_id -> live task, its attempt ended or not
        self._finished: dict[str, AttemptResult] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._drained: asyncio.Future[None] | None = None
        self._doomed: set[str] = set()  # shutdown: the attempts it waits to see end
        self._drain_tasks = False  # shutdown: and it waits for every launched task too
        self._rss_timer: asyncio.TimerHandle | None = None
        self._poll_timer: asyncio.TimerHandle | None = None
        self._use_pidfd = _pidfd_works()
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._cgroups: _MemoryCgroups | None = None
        self._busy_cgroups: set[Path] = set()  # emptied cgroups whose rmdir must wait
        if memory_enforcement != "rss":
            tag = hashlib.sha1(str(self._state_dir.resolve()).encode()).hexdigest()[:10]
            try:
                self._cgroups = _MemoryCgroups.setup(tag)
            except OSError as exc:
                if memory_enforcement == "cgroup":
                    raise CgroupUnavailable(f"no writable memory cgroup: {exc}") from exc
                log.info("memory limits by RSS polling: no writable memory cgroup (%s)", exc)
        # The effective mode, for logs and tests: "cgroup" or "rss".
        self.memory_enforcement = "cgroup" if self._cgroups else "rss"

    # ------------------------------------------------------------------ public API
    async def start(self, spec: AttemptSpec) -> int | AttemptResult:
        """Spawn the attempt and return its pid, or a result saying why it cannot start.

        Whatever goes wrong while starting (a full disk, a chown refused, a bug) fails this
        attempt with a reason naming the cause; it never escapes to the agent's loop.
        """
        known = self._known(spec.attempt_id)
        if known is not None:
            return known
        if self._closed:
            return self._result(spec, None, f"{CANNOT_START}: agent is shutting down", None)
        if not _safe_name(spec.attempt_id):
            return self._result(
                spec, None, f"{CANNOT_START}: bad attempt id {spec.attempt_id!r}", None
            )
        self._loop = asyncio.get_running_loop()
        adir = self._attempts_dir / spec.attempt_id
        try:
            adir.mkdir(mode=0o711)  # owners pass through to work/; nobody lists it
        except FileExistsError:  # ran under an earlier agent process
            stored = _read_result(adir)
            return stored or dataclasses.replace(self._result(spec, None, None, LOST_REASON), lost=True)
        except OSError as exc:
            result = self._result(spec, None, f"{CANNOT_START}: cannot create the attempt's directory: {_os_error(exc)}", None)
            self._remember(result)
            return result
        try:
            return await self._start_in(spec, adir)
        except Exception as exc:  # a bug or an unforeseen failure: this attempt fails, nothing else
            log.exception("attempt %s of job %s could not start", spec.attempt_id, spec.job_id)
            if spec.attempt_id in self._running:  # it runs: only its bookkeeping failed
                return self._running[spec.attempt_id].pid
            if self._cgroups is not None:
                _MemoryCgroups.remove(self._cgroups.parent / spec.attempt_id)
            return self._refuse(spec, adir, f"{CANNOT_START}: {describe_failure(exc)}")

    async def _start_in(self, spec: AttemptSpec, adir: Path) -> int | AttemptResult:
        if spec.image is not None:
            if self._containers is None:
                why = f"node has no container runtime; image {spec.image} cannot run here"
                return self._refuse(spec, adir, f"{CANNOT_START}: {why}")
            # STARTING covers the pull, as on AWS; a kill meanwhile is kept for afterwards.
            self._pulling[spec.attempt_id] = None
            try:
                failure = await self._containers.pull(spec.image)
            finally:
                killed = self._pulling.pop(spec.attempt_id, None)
            if failure is not None:
                return self._refuse(spec, adir, failure)
            if killed is not None:
                return self._refuse(spec, adir, f"{CANNOT_START}: stopped while pulling the image: {killed}")
        owner = self._resolve_owner(spec.user)
        if isinstance(owner, str):
            return self._refuse(spec, adir, owner)
        argv, env = list(spec.command), spec.environment
        cwd = spec.cwd or str(adir)
        script_dir, script_name, script_mode = adir, "script", 0o755
        ids: tuple[int, int] | None = None  # who owns the files made for the job
        if owner is not None:
            if owner.switch:
                if self._unreachable is not None:
                    return self._refuse(spec, adir, self._unreachable)
                ids = (owner.uid, owner.gid)
            work = adir / _WORK_DIR
            try:
                work.mkdir(mode=0o700)
                if ids is not None:
                    os.chown(work, *ids)  # fresh, in root's own directory: no link to follow
            except OSError as exc:
                return self._refuse(
                    spec, adir, f"{CANNOT_START}: cannot make the work directory of user {owner.name}: {_os_error(exc)}"
                )
            # A spec.cwd is entered as root but searched as the owner: the kernel checks
            # every lookup from it, so it opens nothing the owner could not.
            cwd = spec.cwd or str(work)
            script_dir, script_name, script_mode = work, _SCRIPT_NAME, 0o700
            env = {
                **env,
                "HOME": owner.home,
                "USER": owner.name,
                "LOGNAME": owner.name,
                "TMPDIR": str(work),
            }
        start_notice = None
        if spec.cwd is None and spec.image is None:  # a container has its own filesystem
            cwd, start_notice = _start_dir(env, cwd, owner, self._hostname)
        for name, data, mode in spec.files:
            if "/" in name or name in ("", ".", ".."):
                return self._refuse(spec, adir, f"{CANNOT_START}: bad job file name {name!r}")
            try:
                _write_file(script_dir / name, data, mode, ids)
            except OSError as exc:
                return self._refuse(spec, adir, f"{CANNOT_START}: cannot write job file {name}: {_os_error(exc)}")
        if spec.hold:
            # Nothing of the job's own: a holder process keeps the attempt (and its cgroup,
            # identity, log) alive for the tasks launched into it, until it is killed.
            argv = [shutil.which("sleep", path=_TOOL_PATH) or "sleep", "infinity"]
            if spec.image is not None:
                argv = ["sleep", "infinity"]  # the image's own
        elif spec.script is not None:
            script = script_dir / script_name
            try:
                _write_file(script, spec.script, script_mode, ids)
            except OSError as exc:
                return self._refuse(spec, adir, f"{CANNOT_START}: cannot write the job's script: {_os_error(exc)}")
            argv = (
                [str(script), *argv]
                if spec.script.startswith(b"#!")
                else ["/bin/sh", str(script), *argv]
            )
            env = {**env, "HPCBATCH_SCRIPT": str(script)}
        if not argv:
            return self._refuse(spec, adir, f"{CANNOT_START}: the job has no command")
        if spec.image is None:  # a container's binding is podman's --cpuset-cpus (node_agent.containers)
            argv = bind_argv(argv, spec.cpus, env.get("PATH"))  # a GPU job: its GPUs' NUMA CPUs
        started_at = _now_ms()
        cgroup: Path | None = None
        if self._cgroups is not None:
            try:
                cgroup = self._cgroups.create(spec.attempt_id, spec.memory_mib)
            except OSError as exc:
                return self._refuse(spec, adir, f"{CANNOT_START}: memory cgroup: {exc}")
        drop = owner if owner is not None and owner.switch else None
        job_env = env
        container_cgroup: ContainerCgroup | None = None
        status_file = adir / _STATUS_FILE if self._supervise else None
        if spec.image is not None:
            from node_agent.containers import container_launch

            assert self._containers is not None
            if cgroup is not None:  # the container's cgroup goes under it (node_agent.container_cgroup)
                assert self._cgroups is not None
                try:
                    container_cgroup = ContainerCgroup.attach(cgroup, self._cgroups.version, self._cgroups.root)
                except OSError as exc:
                    _MemoryCgroups.remove(cgroup)
                    return self._refuse(spec, adir, f"{CANNOT_START}: memory cgroup: {exc}")
            launch = container_launch(
                self._containers, spec, argv, env, owner, str(adir / _WORK_DIR), cwd, container_cgroup
            )
            if status_file is not None and not isinstance(launch, str):  # podman run under the shim too
                launch = (["/bin/sh", "-c", _SHIM, str(status_file), *launch[0]], *launch[1:])
        else:
            launch = self._launch(argv, env, cwd, cgroup, drop, status_file)
        if isinstance(launch, str):
            if cgroup is not None:
                _MemoryCgroups.remove(cgroup)
            return self._refuse(spec, adir, launch)
        argv, env, preexec = launch
        if status_file is not None and (preexec is not None or str(status_file) not in argv[3:5]):
            status_file = None  # the slow path has no shim: a later agent cannot know its exit
        try:
            log_fd = os.open(
                adir / "output.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            if cgroup is not None:
                _MemoryCgroups.remove(cgroup)
            return self._refuse(spec, adir, f"{CANNOT_START}: cannot open the job's log: {_os_error(exc)}")
        if start_notice is not None:  # the job's first line says where it runs instead, and why
            with contextlib.suppress(OSError):
                os.write(log_fd, start_notice.encode(errors="replace"))
        try:
            popen = subprocess.Popen(
                argv,
                stdin=self._devnull,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
                close_fds=True,
                preexec_fn=preexec,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            if container_cgroup is not None:
                container_cgroup.close()
            if cgroup is not None:
                _MemoryCgroups.remove(cgroup)
            return self._refuse(spec, adir, _spawn_error(exc, argv[0], cwd, drop))
        finally:
            os.close(log_fd)
        # Running now: from here on nothing may fail the start (it would leave a job untracked).
        create_time = _create_time(popen.pid)
        rec = _Attempt(spec, popen.pid, started_at, create_time, cgroup, popen=popen)
        rec.env, rec.cwd, rec.drop = job_env, cwd, drop
        rec.uid = owner.uid if owner is not None else self._euid
        rec.container = spec.image is not None
        rec.container_cgroup = container_cgroup
        rec.status_file = status_file
        self._running[spec.attempt_id] = rec
        self._watch(rec)
        if spec.timeout_s is not None and spec.timeout_s > 0:
            rec.timeout_handle = self._loop.call_later(spec.timeout_s, self._on_timeout, rec)
        # A container's limit is podman's (--memory); its processes are not in our sessions.
        if cgroup is None and spec.memory_mib > 0 and self._rss_timer is None and not rec.container:
            self._rss_timer = self._loop.call_later(_RSS_INTERVAL_S, self._rss_tick)
        self._durable(self._journal_dir / f"{spec.attempt_id}.json", self._journal_entry(rec))
        return rec.pid

    def _journal_entry(self, rec: _Attempt) -> dict[str, object]:
        """What a later agent process needs to re-adopt the attempt (``adopt_orphans``)."""
        spec = rec.spec
        timeout_at = rec.started_at + spec.timeout_s * 1000 if spec.timeout_s else None
        return {
            "attempt_id": spec.attempt_id,
            "job_id": spec.job_id,
            "pid": rec.pid,
            "create_time": rec.create_time,
            "started_at": rec.started_at,
            "cgroup": str(rec.cgroup) if rec.cgroup else None,
            "container": rec.container,
            "status_file": str(rec.status_file) if rec.status_file else None,
            "timeout_at": timeout_at,
            "memory_mib": spec.memory_mib,
            "uid": rec.uid,
            "adoptable": not (spec.multinode or spec.hold),
        }

    def _resolve_owner(self, user: str | None) -> _Owner | str | None:
        """Whom the attempt runs as (None: the agent itself), or why it cannot start."""
        if user is None:
            return None
        if not user:
            return f"{CANNOT_START}: the job has no owner"
        if self._euid != 0 and user != self._me:
            return f"{CANNOT_START}: agent runs as {self._me} and cannot start jobs as {user}"
        now = time.monotonic()
        cached = self._owners.get(user)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            pw = pwd.getpwnam(user)  # on this node: uids need not match the head's
        except (KeyError, ValueError):
            return f"{CANNOT_START}: user {user} does not exist on node {self._hostname}"
        if pw.pw_uid == 0 and not self._allow_root_jobs:
            return (
                f"{CANNOT_START}: jobs owned by root are not allowed on this node "
                "(allow_root_jobs is false)"
            )
        groups = tuple(sorted(set(os.getgrouplist(pw.pw_name, pw.pw_gid))))
        # Only a different user is a switch: root's own jobs (allow_root_jobs) run straight,
        # whatever supplementary groups the agent process happens to hold.
        switch = self._euid == 0 and pw.pw_uid != self._euid
        owner = _Owner(pw.pw_name, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir, switch)
        if len(self._owners) > 1000:
            self._owners.clear()
        self._owners[user] = (now + _OWNER_TTL_S, owner)  # only users found: a new one works
        return owner

    def _launch(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        cgroup: Path | None,
        drop: _Owner | None,
        status_file: Path | None = None,
    ) -> tuple[list[str], dict[str, str], Callable[[], object] | None] | str:
        """What to give Popen (argv, env, preexec_fn) to start the job, or why it cannot.

        The child joins its cgroup before it execs the job, so nothing the job starts
        escapes the limit, and joins while still root: the owner cannot write root's
        cgroup.procs. A preexec_fn could do both, but it (like Popen's user=) makes Popen
        fork() instead of vfork(): 2-9 ms of the agent's time per spawn, growing with its
        heap, instead of 0.1-0.5 ms. So small programs do it in the child: sh joins the
        cgroup, setpriv becomes the owner, env -i sets the job's environment, which no
        root process may see (LD_PRELOAD, LOCPATH... would act as root). The slow path
        stays for what they cannot carry: variable names sh drops, a node without
        setpriv, a program name env would read as a variable.

        With ``status_file`` the sh stays as the job's parent (the shim, ``_SHIM``) and
        writes its exit status there, so an agent restarted meanwhile still learns it.
        """
        procs = str(cgroup / "cgroup.procs") if cgroup is not None else None
        setpriv, env_tool = self._setpriv, self._env_tool
        sh_names = all(_SH_NAME.fullmatch(name) for name in env)
        if drop is not None:
            fast = setpriv is not None and env_tool is not None and "=" not in argv[0]
        elif procs is None and status_file is None:
            fast = True
        else:  # sh passes the environment on, but drops names it cannot hold: env -i can
            fast = sh_names or (env_tool is not None and "=" not in argv[0])
        if not fast:
            return argv, env, functools.partial(_enter_and_become, procs, drop)
        if procs is None and drop is None and status_file is None:
            return argv, env, None  # vfork straight into the job
        missing = _missing_program(argv[0], env, cwd)
        if missing:
            return missing
        via_sh = drop is None and sh_names  # sh hands the job its environment
        if drop is not None:
            assert setpriv is not None and env_tool is not None
            groups = ",".join(map(str, drop.groups))
            argv = [
                *(setpriv, f"--reuid={drop.uid}", f"--regid={drop.gid}", f"--groups={groups}"),
                *("--", env_tool, "-i", "--", *(f"{k}={v}" for k, v in env.items()), *argv),
            ]
            env = {}  # env -i drops whatever sh exports
        elif not sh_names:
            assert env_tool is not None
            argv = [env_tool, "-i", "--", *(f"{k}={v}" for k, v in env.items()), *argv]
            env = {}
        # dash exports PWD, which the job's environment may not have had: unset it again then.
        unset = "unset PWD; " if via_sh and "PWD" not in env else ""
        if status_file is not None and procs is not None:
            return ["/bin/sh", "-c", unset + _JOIN_SHIM, procs, str(status_file), *argv], env, None
        if status_file is not None:
            return ["/bin/sh", "-c", unset + _SHIM, str(status_file), *argv], env, None
        if procs is not None:
            return ["/bin/sh", "-c", unset + _JOIN_CGROUP, procs, *argv], env, None
        return argv, env, None  # setpriv and env -i straight into the job

    # ------------------------------------------------------------------ launched tasks
    def job_dir(self, attempt_id: str, user: str | None) -> Path:
        """Where ``AttemptSpec.files`` go: the owner's private work dir (the attempt's without one)."""
        adir = self._attempts_dir / attempt_id
        return adir if user is None else adir / _WORK_DIR

    def is_pulling(self, attempt_id: str) -> bool:
        """True while the attempt's image is being pulled (it is starting, not yet running)."""
        return attempt_id in self._pulling

    def attempt_uid(self, attempt_id: str) -> int | None:
        """The uid a live attempt runs as, or None when it is not running here."""
        rec = self._running.get(attempt_id)
        return None if rec is None else rec.uid

    def start_task(
        self, attempt_id: str, launch_id: str, command: str, on_exit: TaskExit
    ) -> str | None:
        """Run ``/bin/sh -c command`` inside a live attempt; None, or why it cannot start.

        The task is the attempt's: same owner, environment, directory, cgroup and
        output.log; its own process group (its own session, as sshd would give it), which
        the runner signals with the attempt's on kill, timeout and exit. ``on_exit`` gets
        (launch_id, exit_code or None, reason or None) once.
        """
        rec = self._running.get(attempt_id)
        if rec is None:
            return f"attempt {attempt_id} is not running on node {self._hostname}"
        if rec.terminating:
            return f"attempt {attempt_id} is being stopped ({rec.status_reason})"
        if rec.popen is None:  # its environment and the bridge's grant went with the old agent
            return f"attempt {attempt_id} was re-adopted after an agent restart and cannot launch tasks"
        if launch_id in self._tasks:
            return f"launch {launch_id} is already running"
        assert self._loop is not None
        if rec.container:
            from node_agent.containers import exec_launch

            assert self._containers is not None
            launch = exec_launch(self._containers, attempt_id, command, rec.env, rec.drop, rec.cwd)
        else:
            launch = self._launch(["/bin/sh", "-c", command], rec.env, rec.cwd, rec.cgroup, rec.drop)
        if isinstance(launch, str):
            return launch
        argv, env, preexec = launch
        log_fd = os.open(
            self.log_path(attempt_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        try:
            popen = subprocess.Popen(
                argv,
                stdin=self._devnull,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                cwd=rec.cwd,
                env=env,
                start_new_session=True,
                close_fds=True,
                preexec_fn=preexec,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return _spawn_error(exc, argv[0], rec.cwd, rec.drop)
        except ValueError as exc:  # exec cannot carry it (a NUL byte in the command)
            return f"{CANNOT_START}: {describe_failure(exc)}"
        finally:
            os.close(log_fd)
        task = _Task(launch_id, rec, popen, on_exit)
        rec.tasks[launch_id] = task
        self._tasks[launch_id] = task
        self._watch(task)
        return None

    def _finish_task(self, task: _Task, status: int | None) -> None:
        rec = task.attempt
        rec.tasks.pop(task.launch_id, None)
        self._tasks.pop(task.launch_id, None)
        _signal_group(task.pid, signal.SIGKILL)  # what the task left in its group
        code = None if status is None else os.waitstatus_to_exitcode(status)
        task.popen.returncode = code if code is not None else -1
        reason: str | None = None
        if code is None:
            exit_code, reason = None, "Exit status lost (reaped elsewhere)"
        elif code < 0:
            exit_code, reason = None, f"Killed by signal {_signal_name(-code)}"
        else:
            exit_code = code
        if rec.terminating and rec.status_reason and exit_code != 0:
            reason = f"{reason}: {rec.status_reason}" if reason else rec.status_reason
        if rec.terminating and rec.spec.hold and not rec.tasks and rec.spec.attempt_id in self._running:
            _signal_group(rec.pid, signal.SIGTERM)  # its tasks are gone: release the node
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

    @staticmethod
    def _adoptable(rec: _Attempt) -> bool:
        """Whether a later agent process can re-adopt it: it has a shim and needs no bridge."""
        return rec.status_file is not None and not rec.spec.multinode and not rec.spec.hold

    def kill(self, attempt_id: str, reason: str, grace_s: float | None = None, *, fenced: bool = False) -> None:
        """SIGTERM the attempt's process group now and SIGKILL it after the grace.

        ``fenced``: the agent's fence kills it (no head heard the node), a fact its result carries.
        """
        rec = self._running.get(attempt_id)
        if rec is None:
            if attempt_id in self._pulling and self._pulling[attempt_id] is None:
                self._pulling[attempt_id] = reason  # it ends when the pull does
            return
        if rec.status_reason is None:  # the first cause is the one AWS reports
            rec.status_reason = reason
            rec.fenced = fenced
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
        if self._remover is not None:
            self._remover.shutdown(wait=True)
            self._remover = None
        doomed = [rec for rec in self._running.values() if kill or not self._adoptable(rec)]
        if (doomed or (kill and self._tasks)) and self._loop is not None:
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
        for rec in self._running.values():  # left running: the next agent adopts them
            self._unwatch(rec)
            rec.cancel_timers()
        for task in self._tasks.values():
            self._unwatch(task)
        for timer in (self._rss_timer, self._poll_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        self._rss_timer = self._poll_timer = self._write_timer = None
        if self._pending_writes:
            self._retry_writes()  # a last try; what still fails is lost with this process
            if self._pending_writes:
                log.warning("shutdown: %d journal files could not be written", len(self._pending_writes))
        for path in list(self._busy_cgroups):  # their processes were SIGKILLed: wait briefly
            if _remove_cgroup_soon(path, 1.0):
                self._busy_cgroups.discard(path)
        if self._cgroups is not None and not self._running and not self._busy_cgroups:
            self._cgroups.remove(self._cgroups.parent)
            if self._containers is not None:  # where podman made our parent's path (cgroup v1)
                sweep(siblings(self._cgroups.parent, self._cgroups.version, self._cgroups.root))
        if self._devnull >= 0:
            os.close(self._devnull)
            self._devnull = -1
        log.info("runner stopped (kill=%s, %d attempts left running)", kill, len(self._running))

    def adopt_orphans(self, readopt: bool = False) -> list[AttemptResult]:
        """What a previous agent process left: results for attempts that ended, and then

        with ``readopt`` (from a running event loop) every attempt still running is watched
        again, as slurmd does after a restart with its jobs under slurmstepd: its timeout,
        kill and memory limit hold, and its exit (written by its shim) is reported as it
        comes. Without ``readopt``, or for an attempt that cannot be re-adopted (a node of a
        multi-node job, or one started without a shim), it is killed and reported lost.
        """
        if readopt:
            self._loop = asyncio.get_running_loop()
        results = []
        removals: list[tuple[subprocess.Popen[bytes], Path]] = []  # containers' podman rm, their cgroup
        for entry in sorted(self._journal_dir.iterdir()):
            try:
                result = self._adopt_one(entry, readopt, removals)
            except Exception:  # one bad entry must not stop the agent from starting (a crash loop)
                log.exception("cannot adopt what %s describes; left in place", entry)
                continue
            if result is not None:
                results.append(result)
        for removal, path in removals:
            with contextlib.suppress(subprocess.TimeoutExpired):
                removal.wait(timeout=60)
            if not _remove_cgroup_soon(path):
                log.warning("orphan cgroup %s still busy; left in place", path)
            if self._cgroups is not None and path.is_relative_to(self._cgroups.root):
                sweep(siblings(path, self._cgroups.version, self._cgroups.root))
        return results

    def _adopt_one(
        self, entry: Path, readopt: bool, removals: list[tuple[subprocess.Popen[bytes], Path]]
    ) -> AttemptResult | None:
        """One journal entry of ``adopt_orphans``: its result, or None (re-adopted, or nothing)."""
        try:
            data = json.loads(entry.read_bytes())
            attempt_id, pid = data["attempt_id"], int(data["pid"])
            create_time, started_at = float(data["create_time"]), int(data["started_at"])
        except (OSError, ValueError, KeyError, TypeError):
            entry.unlink(missing_ok=True)  # a torn .tmp or garbage: nothing to adopt
            return None
        if attempt_id in self._running:
            return None
        adir = self._attempts_dir / attempt_id
        # A result on disk means it ended before the old agent died: report the truth.
        result = _read_result(adir)
        if result is None:
            alive = _alive(pid, create_time)
            status_file = Path(data["status_file"]) if data.get("status_file") else None
            if alive and readopt and data.get("adoptable") and status_file is not None:
                self._readopt(data, attempt_id, pid, create_time, started_at, status_file)
                return None
            job_id = str(data.get("job_id", ""))
            code = None
            if not alive and status_file is not None:  # it ended while no agent watched
                with contextlib.suppress(OSError, ValueError):
                    code = int(status_file.read_text())
            if code is not None:
                if 128 < code <= 128 + _MAX_SIGNAL and not data.get("container"):
                    exit_code, reason = None, f"Killed by signal {_signal_name(code - 128)}"
                else:
                    exit_code, reason = code, None
                result = AttemptResult(attempt_id, job_id, exit_code, reason, None, started_at, _now_ms())
            else:
                _kill_orphan_group(pid, create_time)
                result = AttemptResult(
                    attempt_id, job_id, None, None, LOST_REASON, started_at, _now_ms(), lost=True
                )
            if adir.is_dir():
                with contextlib.suppress(OSError):  # the exit goes out anyway; unacknowledged() needs it
                    _write_json(adir / "result.json", dataclasses.asdict(result))
        removal = None
        if data.get("container") and self._containers is not None:
            removal = self._containers.remove(attempt_id)
        if data.get("cgroup"):
            path = Path(data["cgroup"])
            _MemoryCgroups.kill(path)
            if removal is not None:  # the container's cgroup is in it until podman removed it
                removals.append((removal, path))
            elif not _remove_cgroup_soon(path):
                log.warning("orphan cgroup %s still busy; left in place", path)
        entry.unlink(missing_ok=True)
        self._remember(result)
        return result

    def _readopt(
        self, data: dict[str, object], attempt_id: str, pid: int, create_time: float, started_at: int,
        status_file: Path,
    ) -> None:
        """Watch a running attempt an earlier agent process started (see ``adopt_orphans``)."""
        assert self._loop is not None
        memory_mib = int(data.get("memory_mib") or 0)  # type: ignore[call-overload]
        timeout_at = data.get("timeout_at")
        spec = AttemptSpec(
            attempt_id=attempt_id, job_id=str(data.get("job_id", "")), attempt_number=0, command=[],
            environment={}, vcpus=0, memory_mib=memory_mib,
        )
        cgroup = Path(str(data["cgroup"])) if data.get("cgroup") else None
        rec = _Attempt(spec, pid, started_at, create_time, cgroup)
        rec.uid = int(data.get("uid", -1))  # type: ignore[call-overload]
        rec.container = bool(data.get("container"))
        rec.status_file = status_file
        self._running[attempt_id] = rec
        self._watch(rec)
        if isinstance(timeout_at, int):
            rec.timeout_handle = self._loop.call_later(max(0.0, (timeout_at - _now_ms()) / 1000), self._on_timeout, rec)
        if cgroup is None and memory_mib > 0 and self._rss_timer is None and not rec.container:
            self._rss_timer = self._loop.call_later(_RSS_INTERVAL_S, self._rss_tick)
        log.info("re-adopted attempt %s of job %s (pid %d)", attempt_id, spec.job_id, pid)

    # ------------------------------------------------------------------ exits
    def _watch(self, rec: _Attempt | _Task) -> None:
        assert self._loop is not None
        if self._use_pidfd:
            try:
                rec.pidfd = os.pidfd_open(rec.pid)
            except OSError:  # cannot happen for our unreaped child; fall back anyway
                rec.pidfd = None
        if rec.pidfd is not None:
            self._loop.add_reader(rec.pidfd, self._on_pidfd, rec)
        elif self._poll_timer is None:
            self._poll_timer = self._loop.call_later(_POLL_INTERVAL_S, self._poll_tick)

    def _unwatch(self, rec: _Attempt | _Task) -> None:
        if rec.pidfd is not None and self._loop is not None:
            self._loop.remove_reader(rec.pidfd)
            os.close(rec.pidfd)
            rec.pidfd = None

    def _on_pidfd(self, rec: _Attempt | _Task) -> None:
        self._unwatch(rec)
        status = self._reap(rec)
        if isinstance(rec, _Task):
            self._finish_task(rec, status)
        else:
            self._finish(rec, status)

    @staticmethod
    def _reap(rec: _Attempt | _Task) -> int | None:
        """The wait status of an ended child; None for a re-adopted attempt (not our child)."""
        if isinstance(rec, _Attempt) and rec.popen is None:
            return None
        try:
            _, status = os.waitpid(rec.pid, 0)  # readable pidfd: it has exited, no blocking
        except ChildProcessError:
            return None
        return status

    def _poll_tick(self) -> None:
        self._poll_timer = None
        watched: list[_Attempt | _Task] = [*self._running.values(), *self._tasks.values()]
        for rec in [r for r in watched if r.pidfd is None]:
            if isinstance(rec, _Attempt) and rec.popen is None:  # re-adopted: not ours to wait for
                if _alive(rec.pid, rec.create_time):
                    continue
                pid, status = rec.pid, None
            else:
                try:
                    pid, status = os.waitpid(rec.pid, os.WNOHANG)
                except ChildProcessError:
                    pid, status = rec.pid, None
            if pid:
                if isinstance(rec, _Task):
                    self._finish_task(rec, status)
                else:
                    self._finish(rec, status)
        watched = [*self._running.values(), *self._tasks.values()]
        if any(r.pidfd is None for r in watched):  # shutdown() cancels it
            assert self._loop is not None
            self._poll_timer = self._loop.call_later(_POLL_INTERVAL_S, self._poll_tick)

    def _exit_status(self, rec: _Attempt, status: int | None) -> int | None:
        """How the job ended, as os.waitstatus_to_exitcode gives it (-N: signal N); None: unknown.

        Under a shim, ``status`` is the shim's: it exits with sh's $? (128+N for signal N),
        or dies of the group's SIGKILL (then the status file, if the job ended first, tells).
        A re-adopted attempt (not our child) has only the status file.
        """
        code = None if status is None else os.waitstatus_to_exitcode(status)
        if rec.status_file is None:
            return code
        if code is None or code < 0:
            try:
                code = int(rec.status_file.read_text())
            except (OSError, ValueError):
                return code
        if 128 < code <= 128 + _MAX_SIGNAL and not rec.container:  # podman's codes are the container's
            return 128 - code  # as sh reports it: a job that exits 137 itself reads as SIGKILL
        return code

    def _finish(self, rec: _Attempt, status: int | None) -> None:
        """The attempt ended: report it first, then journal and clean up, each best-effort."""
        rec.cancel_timers()
        _signal_group(rec.pid, signal.SIGKILL)  # leftovers in the group die with the job
        spec = rec.spec
        lost = False
        try:
            code = self._exit_status(rec, status)
            oom = rec.oom
            if rec.cgroup is not None:
                oom = oom or _MemoryCgroups.oom_kills(rec.cgroup) > 0
                if rec.container_cgroup is not None:
                    oom = oom or rec.container_cgroup.oom_killed()
        except Exception:  # what ended is still reported, with what is known
            log.exception("attempt %s: reading how it ended failed", spec.attempt_id)
            code, oom = None, False
        if rec.popen is not None:
            rec.popen.returncode = code if code is not None else -1  # keeps Popen from reaping
        if oom:
            exit_code, reason = OOM_EXIT_CODE, OOM_REASON
        elif code is None and rec.terminating:  # we killed it, and SIGKILL took the shim too
            exit_code, reason = None, "Killed by signal SIGKILL"
        elif code is None:
            exit_code, reason, lost = None, "Exit status lost: no process recorded it", True
        elif code < 0:
            exit_code, reason = None, f"Killed by signal {_signal_name(-code)}"
        else:
            exit_code, reason = code, None
        result = AttemptResult(
            spec.attempt_id,
            spec.job_id,
            exit_code,
            reason,
            rec.status_reason,
            rec.started_at,
            _now_ms(),
            timed_out=rec.timed_out,
            fenced=rec.fenced,
            lost=lost,
        )
        del self._running[spec.attempt_id]
        self._remember(result)
        self._check_drained()
        # Reported before anything touches the disk: a full disk must not cost the exit.
        try:
            self._on_exit(result)
        except Exception:
            log.exception("on_exit failed for attempt %s", spec.attempt_id)
        journal = self._journal_dir / f"{spec.attempt_id}.json"
        self._pending_writes.pop(journal, None)  # a start entry not yet written: no longer needed
        self._durable(self._attempts_dir / spec.attempt_id / "result.json", dataclasses.asdict(result), journal)
        for task in rec.tasks.values():  # a job's launched tasks die with it
            _signal_group(task.pid, signal.SIGKILL)
        try:
            self._release(rec, code)
        except Exception:
            log.exception("attempt %s: cleanup after its exit failed", spec.attempt_id)

    def _release(self, rec: _Attempt, code: int | None) -> None:
        """Free what an ended attempt held: its cgroup, its container."""
        if rec.container_cgroup is not None:
            rec.container_cgroup.close()
        if rec.cgroup is not None:
            _MemoryCgroups.kill(rec.cgroup)
            if not _MemoryCgroups.remove(rec.cgroup):  # a container's: until podman removed its own
                self._remove_cgroup_later(rec.cgroup, 1200 if rec.container else 100)
            if rec.container_cgroup is not None:
                sweep(rec.container_cgroup.siblings())
        if rec.container and (rec.terminating or code is None or code < 0) and self._containers:
            self._containers.remove(rec.spec.attempt_id)  # podman died before its container did
        self._clean_shm_later(rec)

    def _clean_shm_later(self, rec: _Attempt) -> None:
        """Remove what the job left in /dev/shm (node_agent.shm), once its killed processes
        are surely gone, in the remover's thread (it reads /proc)."""
        if rec.uid < 0 or self._loop is None or self._loop.is_closed():
            return
        alone = not any(other.uid == rec.uid for other in self._running.values())
        self._loop.call_later(_SHM_CLEAN_DELAY_S, self._clean_shm, rec.uid, rec.started_at / 1000, alone)

    def _clean_shm(self, uid: int, since_s: float, alone: bool) -> None:
        if self._closed:
            return
        if self._remover is None:
            self._remover = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hpcbatch-forget")
        self._remover.submit(shm.clean, uid, since_s, alone)

    # ------------------------------------------------------------------ journal
    def _durable(self, path: Path, data: dict[str, object], then_unlink: Path | None = None) -> None:
        """Write ``path`` by rename, then drop ``then_unlink``; on failure retry every second."""
        try:
            _write_json(path, data)
            if then_unlink is not None:
                then_unlink.unlink(missing_ok=True)
        except OSError as exc:
            if path not in self._pending_writes:
                log.warning("cannot write %s (%s): retrying every %g s", path, _os_error(exc), _WRITE_RETRY_S)
            self._pending_writes[path] = (data, then_unlink)
            if self._write_timer is None and self._loop is not None and not self._closed:
                self._write_timer = self._loop.call_later(_WRITE_RETRY_S, self._retry_writes)
            return
        self._pending_writes.pop(path, None)

    def _retry_writes(self) -> None:
        self._write_timer = None
        for path, (data, then_unlink) in list(self._pending_writes.items()):
            if not path.parent.is_dir():  # forgotten meanwhile: the head has it all
                del self._pending_writes[path]
                continue
            try:
                _write_json(path, data)
                if then_unlink is not None:
                    then_unlink.unlink(missing_ok=True)
            except OSError:
                break  # still full: the rest waits too
            del self._pending_writes[path]
            log.info("wrote %s after all", path)
        if self._pending_writes and self._loop is not None and not self._closed:
            self._write_timer = self._loop.call_later(_WRITE_RETRY_S, self._retry_writes)

    def pending_writes(self) -> int:
        """Journal files not yet written (the disk was full): for logs and tests."""
        return len(self._pending_writes)

    # ------------------------------------------------------------------ kill, timeout, memory
    def _terminate(self, rec: _Attempt, grace_s: float) -> None:
        assert self._loop is not None
        rec.terminating = True
        if grace_s <= 0:
            self._sigkill(rec)
            return
        for task in rec.tasks.values():
            _signal_group(task.pid, signal.SIGTERM)
        if not (rec.spec.hold and rec.tasks):  # a holder outlives its tasks' grace
            _signal_group(rec.pid, signal.SIGTERM)
        deadline = self._loop.time() + grace_s
        if rec.kill_handle is not None:
            if rec.kill_handle.when() <= deadline:
                return  # an earlier SIGKILL is already due
            rec.kill_handle.cancel()
        rec.kill_handle = self._loop.call_at(deadline, self._sigkill, rec)

    def _sigkill(self, rec: _Attempt) -> None:
        for task in rec.tasks.values():
            _signal_group(task.pid, signal.SIGKILL)
        _signal_group(rec.pid, signal.SIGKILL)
        if rec.cgroup is not None:
            _MemoryCgroups.kill(rec.cgroup)  # also what left the group with setsid
        if rec.container and self._containers is not None:
            self._containers.remove(rec.spec.attempt_id)  # what runs inside, and the container

    def _on_timeout(self, rec: _Attempt) -> None:
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
        owners = dict(watched)  # session id -> attempt; a task's session counts for its attempt
        for rec in watched.values():
            owners.update(dict.fromkeys((t.pid for t in rec.tasks.values()), rec))
        totals: dict[int, int] = {}
        for sid, rss in _session_rss(set(owners)).items():
            totals[owners[sid].pid] = totals.get(owners[sid].pid, 0) + rss
        for pid, rss in totals.items():
            rec = watched[pid]
            if rss > rec.spec.memory_mib * _MIB:
                log.info(
                    "attempt %s over memory: %d MiB > %d MiB",
                    rec.spec.attempt_id,
                    rss // _MIB,
                    rec.spec.memory_mib,
                )
                rec.oom = True  # like the OOM killer: no grace
                self._sigkill(rec)
        if not self._closed:
            assert self._loop is not None
            self._rss_timer = self._loop.call_later(_RSS_INTERVAL_S, self._rss_tick)

    def _remove_cgroup_later(self, path: Path, tries: int) -> None:
        self._busy_cgroups.add(path)
        if _MemoryCgroups.remove(path):
            self._busy_cgroups.discard(path)
        elif tries <= 0:
            log.warning("cgroup %s still busy; left in place", path)
        elif self._loop is not None and not self._loop.is_closed():
            self._loop.call_later(0.05, self._remove_cgroup_later, path, tries - 1)

    # ------------------------------------------------------------------ results
    def _known(self, attempt_id: str) -> int | AttemptResult | None:
        rec = self._running.get(attempt_id)
        if rec is not None:
            return rec.pid
        return self._finished.get(attempt_id)

    def forget(self, attempt_id: str) -> None:
        """The head has the attempt's result and output: delete its directory for good.

        The deletion runs on a helper thread: directory removal can wait on the file
        system's journal, and the event loop has exits and starts to serve meanwhile.
        """
        if attempt_id in self._running or not _safe_name(attempt_id):
            return
        self._finished.pop(attempt_id, None)
        # Journal writes still owed for it (a full disk) are moot now; its entry goes too.
        journal = self._journal_dir / f"{attempt_id}.json"
        self._pending_writes.pop(journal, None)
        self._pending_writes.pop(self._attempts_dir / attempt_id / "result.json", None)
        with contextlib.suppress(OSError):
            journal.unlink(missing_ok=True)
        if self._remover is None:
            self._remover = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hpcbatch-forget")
        self._remover.submit(self._remove_attempt_dir, attempt_id)

    def _remove_attempt_dir(self, attempt_id: str) -> None:
        adir = self._attempts_dir / attempt_id
        if self._keep_workdir and (adir / _WORK_DIR).is_dir():
            for entry in adir.iterdir():
                if entry.name == _WORK_DIR:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
            log.info("keep_workdir: left %s", adir / _WORK_DIR)
            return
        # Most attempts leave only what we made: remove those by name (a few syscalls);
        # rmtree (dozens) only when the job left files behind.
        for name in ("output.log", "result.json", "script", _STATUS_FILE):
            with contextlib.suppress(OSError):
                os.unlink(adir / name)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(adir / _WORK_DIR)
            os.rmdir(adir)
        except OSError:
            shutil.rmtree(adir, ignore_errors=True)

    def unacknowledged(self) -> list[AttemptResult]:
        """Results of finished attempts still on disk (not yet ``forget``-ten), oldest first.

        After an agent restart these are the exits the head may not have recorded yet.
        """
        found = []
        for adir in self._attempts_dir.iterdir():
            if adir.name in self._running:
                continue
            result = _read_result(adir)
            if result is not None:
                found.append(result)
        return sorted(found, key=lambda r: r.stopped_at)

    def _remember(self, result: AttemptResult) -> None:
        self._finished[result.attempt_id] = result
        if len(self._finished) > _KEEP_RESULTS:
            del self._finished[next(iter(self._finished))]

    def _result(
        self,
        spec: AttemptSpec,
        exit_code: int | None,
        reason: str | None,
        status_reason: str | None,
    ) -> AttemptResult:
        now = _now_ms()
        return AttemptResult(
            spec.attempt_id, spec.job_id, exit_code, reason, status_reason, now, now
        )

    def _refuse(self, spec: AttemptSpec, adir: Path, reason: str) -> AttemptResult:
        """An attempt that never started: say why in its log and remember the answer."""
        result = self._result(spec, None, reason, None)
        self._remember(result)
        # The reason goes back with the result whatever the disk says; the log and the
        # journal are best-effort (a full disk is often why it could not start).
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = os.open(adir / "output.log", flags, 0o600)
            try:
                os.write(fd, reason.encode() + b"\n")
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("attempt %s: cannot log why it did not start (%s): %s", spec.attempt_id, _os_error(exc), reason)
        self._durable(adir / "result.json", dataclasses.asdict(result))
        return result


class _MemoryCgroups:
    """One memory cgroup per attempt, under a parent this agent owns (v2, or v1's memory)."""

    def __init__(self, parent: Path, version: int, root: Path) -> None:
        self.parent = parent
        self.version = version
        self.root = root  # the hierarchy's mount point

    @classmethod
    def setup(cls, tag: str) -> _MemoryCgroups:
        """Find a writable memory hierarchy and make our parent in it; OSError if none."""
        v2_root, v1_root = _cgroup_mounts()
        errors = []
        if v2_root is not None:
            try:
                controllers = (v2_root / "cgroup.controllers").read_text().split()
                if "memory" not in controllers:
                    raise OSError(f"{v2_root} has no memory controller")
                if "memory" not in (v2_root / "cgroup.subtree_control").read_text().split():
                    _write_text(v2_root / "cgroup.subtree_control", "+memory")
                # A sibling of the agent's own cgroup: v2 forbids processes in a cgroup
                # that hands controllers to children, and the agent's has the agent.
                return cls(v2_root / f"hpcbatch-{tag}", 2, v2_root)._make_parent()._probe()
            except OSError as exc:
                errors.append(f"cgroup v2: {exc}")
        if v1_root is not None:
            try:
                # v1 allows children next to processes: nest under our own cgroup so a
                # limit put on the agent's service also bounds its jobs.
                parent = v1_root / _own_cgroup("memory").lstrip("/") / f"hpcbatch-{tag}"
                return cls(parent, 1, v1_root)._make_parent()._probe()
            except OSError as exc:
                errors.append(f"cgroup v1: {exc}")
        raise OSError("; ".join(errors) or "no memory cgroup mounted")

    def _make_parent(self) -> _MemoryCgroups:
        self.parent.mkdir(exist_ok=True)
        if self.version == 2:
            _write_text(self.parent / "cgroup.subtree_control", "+memory")
        return self

    def _probe(self) -> _MemoryCgroups:
        path = self.create(f"probe-{os.getpid()}", 64)
        self.remove(path)
        return self

    def create(self, name: str, memory_mib: int) -> Path:
        """Make the attempt's cgroup with its limit; swap off so the limit is real."""
        path = self.parent / name
        try:
            path.mkdir(exist_ok=True)
        except FileNotFoundError:  # the parent was removed under us (a cleanup by hand)
            self._make_parent()
            path.mkdir(exist_ok=True)
        if memory_mib > 0:
            limit = str(memory_mib * _MIB)
            if self.version == 2:
                _write_text(path / "memory.max", limit)
                with contextlib.suppress(OSError):  # absent without swap accounting
                    _write_text(path / "memory.swap.max", "0")
                with contextlib.suppress(OSError):  # the whole "container" dies, as on k8s
                    _write_text(path / "memory.oom.group", "1")
            else:
                _write_text(path / "memory.limit_in_bytes", limit)
                with contextlib.suppress(OSError):
                    _write_text(path / "memory.memsw.limit_in_bytes", limit)
        return path

    @staticmethod
    def oom_kills(path: Path) -> int:
        """How many processes the kernel's OOM killer ended in this cgroup."""
        for name in ("memory.events", "memory.oom_control"):  # v2, v1
            try:
                text = (path / name).read_text()
            except OSError:
                continue
            for line in text.splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    @staticmethod
    def kill(path: Path) -> None:
        """SIGKILL everything in the cgroup."""
        try:
            _write_text(path / "cgroup.kill", "1")  # v2, Linux >= 5.14
            return
        except OSError:
            pass
        pids = []
        for procs in (path / "cgroup.procs", *path.glob("*/cgroup.procs")):  # a container's: a child
            with contextlib.suppress(OSError):
                pids += procs.read_text().split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)

    @staticmethod
    def remove(path: Path) -> bool:
        """rmdir the cgroup; False while processes are still leaving it."""
        try:
            path.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True


# ---------------------------------------------------------------------- helpers
def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _safe_name(attempt_id: str) -> bool:
    return (
        bool(attempt_id)
        and "/" not in attempt_id
        and "\0" not in attempt_id
        and not attempt_id.startswith(".")
    )


# hpcbatch extensions in a job's environment (hpcbatch.cli.submit, checked absolute by
# hpcbatch.validation): --chdir's directory, else the directory the job was submitted from.
CHDIR_VARIABLE = "HPCBATCH_CHDIR"
SUBMIT_DIR_VARIABLE = "HPCBATCH_SUBMIT_DIR"


def _start_dir(env: dict[str, str], fallback: str, owner: _Owner | None, node: str) -> tuple[str, str | None]:
    """Where a job starts, and the log line that says why not where it asked (or None).

    As Slurm starts a batch job in its submit directory (or --chdir's) when the node has it
    and falls back with a message when not: the directory is used only when the job's
    owner may enter it, judged for the owner's uid and groups, never root's (a shared
    filesystem mounted everywhere is the case this serves); else the private work dir.
    """
    wanted = env.get(CHDIR_VARIABLE) or env.get(SUBMIT_DIR_VARIABLE)
    if not wanted:
        return fallback, None
    why = _may_enter(wanted, owner)
    if why is None:
        return wanted, None
    which = "--chdir directory" if env.get(CHDIR_VARIABLE) else "submit directory"
    return fallback, f"hpcbatch: the {which} {wanted} {why} on node {node}; starting in the job's work directory {fallback}\n"


def _may_enter(path: str, owner: _Owner | None) -> str | None:
    """None when ``owner`` may make ``path`` its working directory; else why not.

    For another user the path is resolved as the kernel would resolve it for that user,
    one component at a time (symbolic links followed, at most 40): a directory is looked
    into only after its search (x) bit was found open to the owner's uid or groups, so
    the answer (and its reason) tells the owner nothing they could not find out
    themselves. ACLs are not read: a directory only an ACL opens counts as closed, and the
    job then starts in its work dir, never somewhere its owner could not have gone.
    """
    if not os.path.isabs(path):
        return "is not an absolute path"
    if owner is None or not owner.switch:  # the agent's own identity: ask the kernel
        if not os.path.isdir(path):
            return "does not exist" if not os.path.exists(path) else "is not a directory"
        return None if os.access(path, os.X_OK) else "cannot be entered"
    groups = {owner.gid, *owner.groups}
    todo = [p for p in path.split("/") if p]
    current, links = "/", 0
    try:
        st = os.stat("/")
        while True:
            if not stat.S_ISDIR(st.st_mode):
                return "is not a directory"
            bit = stat.S_IXUSR if st.st_uid == owner.uid else stat.S_IXGRP if st.st_gid in groups else stat.S_IXOTH
            if not st.st_mode & bit:
                return f"cannot be entered by user {owner.name} ({current} is mode {stat.S_IMODE(st.st_mode):o})"
            if not todo:
                return None
            part = todo.pop(0)
            if part == ".":
                continue
            if part == "..":
                current = os.path.dirname(current)
                st = os.stat(current)
                continue
            step = os.path.join(current, part)
            st = os.lstat(step)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > 40:
                    return "has too many levels of symbolic links"
                target = os.readlink(step)
                todo = [p for p in target.split("/") if p] + todo
                if target.startswith("/"):
                    current = "/"
                st = os.stat(current)
                continue
            current = step
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read ({_os_error(exc)})"


def _os_error(exc: OSError) -> str:
    """An OSError as a person reads it: what failed, and on which file."""
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def describe_failure(exc: BaseException) -> str:
    """An unexpected failure, named by its type and message, for a status reason."""
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {_os_error(exc)}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _alive(pid: int, create_time: float) -> bool:
    """True while ``pid`` is the process that started at ``create_time`` (not a zombie)."""
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - create_time) < 0.005 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def _signal_group(pgid: int, signum: int) -> None:
    # Safe after the leader is reaped: Linux never reuses a pid still naming a live group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _spawn_error(
    exc: OSError | subprocess.SubprocessError, program: str, cwd: str, drop: _Owner | None
) -> str:
    if not isinstance(exc, OSError):  # the preexec_fn failed: the cgroup or setuid refused
        what = "enter the memory cgroup" if drop is None else f"become user {drop.name}"
        return f"{CANNOT_START}: could not {what} ({exc})"
    if exc.filename == cwd and exc.filename != program:
        return f"{CANNOT_START}: working directory {cwd}: {exc.strerror}"
    if isinstance(exc, FileNotFoundError):
        return f"{CANNOT_START}: {program}: command not found"
    return f"{CANNOT_START}: {program}: {exc.strerror or exc}"


def _missing_program(program: str, env: dict[str, str], cwd: str) -> str | None:
    """Why ``program`` cannot be executed, as Popen would have said; None when it can."""
    if not os.path.isdir(cwd):
        return None  # Popen names the missing working directory itself
    if "/" in program:
        path: str | None = os.path.join(cwd, program)
        if not os.path.isfile(path) or not os.access(path, os.X_OK):
            path = None
    else:
        path = shutil.which(program, path=env.get("PATH", os.defpath))
    return None if path else f"{CANNOT_START}: {program}: command not found"


def _pidfd_works() -> bool:
    try:
        fd = os.pidfd_open(os.getpid())
    except (AttributeError, OSError):
        return False
    os.close(fd)
    return True


def _write_text(path: str | Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _write_file(path: Path, data: bytes, mode: int, ids: tuple[int, int] | None = None) -> None:
    """Create ``path`` (never through a link) with ``mode``, owned by ``ids`` (uid, gid)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, mode)
    try:
        with open(fd, "wb", closefd=False) as f:
            f.write(data)
        if ids is not None:
            os.fchown(fd, *ids)
        os.fchmod(fd, mode)  # the umask must not take the x bits away
    finally:
        os.close(fd)


def _enter_and_become(procs: str | None, owner: _Owner | None) -> None:
    """The slow path's preexec_fn, in the forked child: join the cgroup, then be the owner."""
    if procs is not None:
        _write_text(procs, "0")  # "0": the writer
    if owner is not None:
        os.setgroups(list(owner.groups))
        os.setresgid(owner.gid, owner.gid, owner.gid)
        os.setresuid(owner.uid, owner.uid, owner.uid)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _first_closed_dir(path: Path) -> str | None:
    """Why job owners cannot reach directories under ``path``, or None when they can."""
    resolved = path.resolve()
    for directory in (resolved, *resolved.parents):
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            return (
                f"{CANNOT_START}: {directory} is not searchable by other users, so job "
                f"owners cannot reach their work directories (chmod o+x {directory})"
            )
    return None


def _write_json(path: Path, data: dict[str, object]) -> None:
    """Write by rename, so a crash leaves the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(json.dumps(data).encode())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # a full disk must not keep the half it took
        raise


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_BOOT_TIME: float | None = None


def _create_time(pid: int) -> float:
    """psutil's create_time for ``pid`` (same formula), without building a Process; 0.0 if gone.

    On the spawn hot path, psutil.Process() costs several /proc reads; one read of
    /proc/PID/stat gives the start tick.
    """
    global _BOOT_TIME
    if _BOOT_TIME is None:
        _BOOT_TIME = psutil.boot_time()
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[19]) / _CLOCK_TICKS + _BOOT_TIME


def _read_result(adir: Path) -> AttemptResult | None:
    try:
        return AttemptResult(**json.loads((adir / "result.json").read_bytes()))
    except (OSError, ValueError, TypeError):
        return None


def _session_rss(sessions: set[int]) -> dict[int, int]:
    """Bytes resident per session id, summed over /proc in one pass.

    Reading /proc/<pid>/stat directly gives session and RSS in one read; psutil has no
    session id and would need two. Shared pages count once per process (an overestimate,
    as ``ps`` makes); processes that left the session with setsid are not seen.
    """
    totals = dict.fromkeys(sessions, 0)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        sid = int(fields[3])
        if sid in totals:
            totals[sid] += int(fields[21]) * _PAGE
    return totals


def _kill_orphan_group(pid: int, create_time: float) -> None:
    """SIGKILL a dead agent's attempt, checking identity so a reused pid is never hit."""
    try:
        leader = psutil.Process(pid)
        if abs(leader.create_time() - create_time) < 0.005:  # start times tick in 10 ms
            _signal_group(pid, signal.SIGKILL)
        return  # alive but someone else: the pid was reused, our group is long gone
    except psutil.NoSuchProcess:
        pass
    # The leader is gone but its group may live on; the kernel keeps the number reserved
    # while the group exists, so members of group `pid` started after our leader are ours.
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pid and proc.create_time() >= create_time:
                proc.kill()
        except (psutil.Error, ProcessLookupError):
            continue


def _remove_cgroup_soon(path: Path, deadline_s: float = 2.0) -> bool:
    """rmdir a cgroup whose processes were just killed, waiting briefly for them to go."""
    end = time.monotonic() + deadline_s
    while not _MemoryCgroups.remove(path):
        if time.monotonic() > end:
            return False
        time.sleep(0.02)  # sync start-up path, before the event loop runs attempts
    return True


def _cgroup_mounts() -> tuple[Path | None, Path | None]:
    """(cgroup v2 mount, cgroup v1 memory mount) from /proc/self/mounts."""
    v2 = v1 = None
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 4:
                continue
            if parts[2] == "cgroup2" and v2 is None:
                v2 = Path(parts[1])
            elif parts[2] == "cgroup" and "memory" in parts[3].split(",") and v1 is None:
                v1 = Path(parts[1])
    return v2, v1


def _own_cgroup(controller: str) -> str:
    """This process's cgroup path in the v1 hierarchy of ``controller``."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                return path
    raise OSError(f"not in a {controller} cgroup")
