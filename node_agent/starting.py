"""Starting an attempt, as a sequence of small steps with one cleanup path.

``Starter.prepare`` runs the steps in order: pull the image, resolve the owner, make the
owner's work dir, choose the start directory, write the job's files and script, build its
command, make its memory cgroup (and the container's), build the exec chain. Each step
either fills in the ``Preparation`` or raises ``StartRefused`` with the reason the attempt
fails with; what a step sets up that must not outlive a failed start (a cgroup, a
descriptor) is registered on the caller's ``ExitStack``, which undoes it in reverse order
whatever fails, a refusal or a bug. ``spawn`` is the last step; once it returns the attempt
runs and the runner owns what was set up (it pops the stack).

The attempt's directory (with its ``result.json`` and ``output.log`` saying why it did not
start) and the owner's work dir inside it stay until the head acknowledges the result
(``Runner.forget``), as for an attempt that ran.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from node_agent.attempts import CANNOT_START, STATUS_FILE, WORK_DIR, AttemptSpec, now_ms, os_error
from node_agent.cgroups import CgroupPool, MemoryCgroups
from node_agent.container_cgroup import ContainerCgroup
from node_agent.cpu_binding import bind_argv
from node_agent.identity import Owner, OwnerResolver, owner_environment, start_dir
from node_agent.spawning import (
    TOOL_PATH,
    ExecChain,
    Launch,
    has_shim,
    open_log,
    spawn,
    spawn_error,
    under_shim,
    write_file,
)

if TYPE_CHECKING:
    from node_agent.containers import Podman

_SCRIPT_NAME = ".hpcbatch-script"  # an owner's script, in its work dir


class StartRefused(Exception):
    """The attempt cannot start; ``reason`` is its AWS container reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(eq=False)
class Preparation:
    """An attempt being started: what the steps have made of it so far."""

    spec: AttemptSpec
    adir: Path
    argv: list[str]
    env: dict[str, str]
    cwd: str
    owner: Owner | None = None
    ids: tuple[int, int] | None = None  # who owns the files made for the job
    script_dir: Path = field(default_factory=Path)
    script_name: str = "script"
    script_mode: int = 0o755
    notice: str | None = None  # the job log's first line: why it starts elsewhere than asked
    started_at: int = 0
    cgroup: Path | None = None
    oom_base: int = 0  # its cgroup's OOM-kill count at start (a reused cgroup's: cgroups.Lease)
    container_cgroup: ContainerCgroup | None = None
    status_file: Path | None = None  # where its shim writes the exit status (None: no shim)
    job_env: dict[str, str] = field(default_factory=dict)  # what launched tasks inherit
    launch: Launch | None = None

    @property
    def drop(self) -> Owner | None:
        """The identity the child switches to (None: it stays the agent's)."""
        return self.owner if self.owner is not None and self.owner.switch else None


@dataclass
class Starter:
    """The runner's parts the start steps use."""

    owners: OwnerResolver
    chain: ExecChain
    cgroups: MemoryCgroups | None
    containers: Podman | None
    supervise: bool  # each attempt under a shim that records its exit status
    unreachable: str | None = None  # why owners cannot reach their work dirs (None: they can)
    pulling: dict[str, str | None] = field(default_factory=dict)  # attempt id -> why killed meanwhile
    pool: CgroupPool | None = None  # bare jobs' cgroups, reused

    async def prepare(self, spec: AttemptSpec, adir: Path, undo: contextlib.ExitStack) -> Preparation:
        """Every step before the spawn; StartRefused when one cannot be done."""
        p = Preparation(spec, adir, list(spec.command), spec.environment, spec.cwd or str(adir), script_dir=adir)
        if spec.image is not None:
            await self._pull(spec, spec.image)
        self._identify(p)
        if p.owner is not None:
            self._make_work_dir(p, p.owner)
        if spec.cwd is None and spec.image is None:  # a container has its own filesystem
            p.cwd, p.notice = start_dir(p.env, p.cwd, p.owner, self.owners.hostname)
        self._write_files(p)
        self._build_command(p)
        p.started_at = now_ms()
        self._make_cgroup(p, undo)
        p.job_env = p.env
        p.status_file = adir / STATUS_FILE if self.supervise else None
        launch = self._container_launch(p, undo) if spec.image is not None else self._bare_launch(p)
        if p.status_file is not None and not has_shim(launch, p.status_file):
            p.status_file = None  # the slow path has no shim: a later agent cannot know its exit
        p.launch = launch
        return p

    async def _pull(self, spec: AttemptSpec, image: str) -> None:
        """STARTING covers the pull, as on AWS; a kill meanwhile ends the start after it."""
        if self.containers is None:
            raise StartRefused(f"{CANNOT_START}: node has no container runtime; image {image} cannot run here")
        self.pulling[spec.attempt_id] = None
        try:
            failure = await self.containers.pull(image)
        finally:
            killed = self.pulling.pop(spec.attempt_id, None)
        if failure is not None:
            raise StartRefused(failure)
        if killed is not None:
            raise StartRefused(f"{CANNOT_START}: stopped while pulling the image: {killed}")

    def _identify(self, p: Preparation) -> None:
        owner = self.owners.resolve(p.spec.user)
        if isinstance(owner, str):
            raise StartRefused(owner)
        p.owner = owner
        if owner is not None and owner.switch:
            if self.unreachable is not None:
                raise StartRefused(self.unreachable)
            p.ids = (owner.uid, owner.gid)

    @staticmethod
    def _make_work_dir(p: Preparation, owner: Owner) -> None:
        """The owner's private dir: TMPDIR, home of the script, the default cwd."""
        work = p.adir / WORK_DIR
        try:
            work.mkdir(mode=0o700)
            if p.ids is not None:
                os.chown(work, *p.ids)  # fresh, in root's own directory: no link to follow
        except OSError as exc:
            raise StartRefused(
                f"{CANNOT_START}: cannot make the work directory of user {owner.name}: {os_error(exc)}"
            ) from exc
        # A spec.cwd is entered as root but searched as the owner: the kernel checks
        # every lookup from it, so it opens nothing the owner could not.
        p.cwd = p.spec.cwd or str(work)
        p.script_dir, p.script_name, p.script_mode = work, _SCRIPT_NAME, 0o700
        p.env = owner_environment(p.env, owner, work)

    @staticmethod
    def _write_files(p: Preparation) -> None:
        for name, data, mode in p.spec.files:
            if "/" in name or name in ("", ".", ".."):
                raise StartRefused(f"{CANNOT_START}: bad job file name {name!r}")
            try:
                write_file(p.script_dir / name, data, mode, p.ids)
            except OSError as exc:
                raise StartRefused(f"{CANNOT_START}: cannot write job file {name}: {os_error(exc)}") from exc

    @staticmethod
    def _build_command(p: Preparation) -> None:
        """The job's argv: its holder, its script with the command as arguments, or the command."""
        spec = p.spec
        if spec.hold:
            # Nothing of the job's own: a holder process keeps the attempt (and its cgroup,
            # identity, log) alive for the tasks launched into it, until it is killed.
            p.argv = [shutil.which("sleep", path=TOOL_PATH) or "sleep", "infinity"]
            if spec.image is not None:
                p.argv = ["sleep", "infinity"]  # the image's own
        elif spec.script is not None:
            script = p.script_dir / p.script_name
            try:
                write_file(script, spec.script, p.script_mode, p.ids)
            except OSError as exc:
                raise StartRefused(f"{CANNOT_START}: cannot write the job's script: {os_error(exc)}") from exc
            runner = [str(script)] if spec.script.startswith(b"#!") else ["/bin/sh", str(script)]
            p.argv = [*runner, *p.argv]
            p.env = {**p.env, "HPCBATCH_SCRIPT": str(script)}
        if not p.argv:
            raise StartRefused(f"{CANNOT_START}: the job has no command")
        if spec.image is None:  # a container's binding is podman's --cpuset-cpus (node_agent.containers)
            p.argv = bind_argv(p.argv, spec.cpus, p.env.get("PATH"))  # a GPU job: its GPUs' NUMA CPUs

    def _make_cgroup(self, p: Preparation, undo: contextlib.ExitStack) -> None:
        if self.cgroups is None:
            return
        try:
            if self.pool is not None and p.spec.image is None:
                uid = p.owner.uid if p.owner is not None else self.owners.euid
                lease = self.pool.acquire(p.spec.attempt_id, p.spec.memory_mib, uid)
                p.cgroup, p.oom_base = lease.path, lease.oom_base
            else:
                p.cgroup = self.cgroups.create(p.spec.attempt_id, p.spec.memory_mib)
        except OSError as exc:
            raise StartRefused(f"{CANNOT_START}: memory cgroup: {exc}") from exc
        undo.callback(MemoryCgroups.remove, p.cgroup)

    def _container_launch(self, p: Preparation, undo: contextlib.ExitStack) -> Launch:
        from node_agent.containers import ContainerJob, container_launch

        assert self.containers is not None
        if p.cgroup is not None:  # the container's cgroup goes under it (node_agent.container_cgroup)
            assert self.cgroups is not None
            try:
                p.container_cgroup = ContainerCgroup.attach(p.cgroup, self.cgroups.version, self.cgroups.root)
            except OSError as exc:
                raise StartRefused(f"{CANNOT_START}: memory cgroup: {exc}") from exc
            undo.callback(p.container_cgroup.close)
        job = ContainerJob(p.argv, p.env, p.owner, str(p.adir / WORK_DIR), p.cwd)
        launch = container_launch(self.containers, p.spec, job, p.container_cgroup)
        if isinstance(launch, str):
            raise StartRefused(launch)
        if p.status_file is not None:  # podman run under the shim too
            return under_shim(launch, p.status_file)
        return launch

    def _bare_launch(self, p: Preparation) -> Launch:
        launch = self.chain.launch(p.argv, p.env, p.cwd, p.cgroup, p.drop, p.status_file)
        if isinstance(launch, str):
            raise StartRefused(launch)
        return launch


def spawn_prepared(p: Preparation, stdin: int) -> subprocess.Popen[bytes]:
    """The last step: start the prepared attempt, its output in its ``output.log``."""
    assert p.launch is not None
    try:
        log_fd = open_log(p.adir / "output.log")
    except OSError as exc:
        raise StartRefused(f"{CANNOT_START}: cannot open the job's log: {os_error(exc)}") from exc
    try:
        if p.notice is not None:  # the job's first line says where it runs instead, and why
            with contextlib.suppress(OSError):
                os.write(log_fd, p.notice.encode(errors="replace"))
        return spawn(p.launch, p.cwd, stdin, log_fd)
    except (OSError, subprocess.SubprocessError) as exc:
        raise StartRefused(spawn_error(exc, p.launch[0][0], p.cwd, p.drop)) from exc
    finally:
        os.close(log_fd)
