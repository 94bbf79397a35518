"""How a job's process is started: the small programs between the agent's vfork and the job.

Popen's user=, group= and extra_groups= (and any preexec_fn) make CPython 3.11 fork()
instead of vfork() (about 9 ms per spawn for a 200 MB agent, growing with its heap), so the
fast path stays vfork and the child does the rest itself: ``sh`` (joins the cgroup, as root;
stays as the job's parent, the shim) -> ``setpriv`` (util-linux: setgroups, setresgid,
setresuid) -> ``env -i`` (as the owner: sets the job's environment) -> the job. Both root
stages get an empty environment: the job's LD_PRELOAD, LOCPATH, GCONV_PATH... would
otherwise act in a root process. Without setpriv or env the slow path (a preexec_fn, so
fork) does the same in Python.

The shim (slurmstepd's and conmon's part, in sh) stays the job's parent, so the job's exit
status outlives the agent: it survives the TERM/INT/HUP the agent sends the group (a trap;
the job's own signals are reset to default by exec), runs the job in a subshell so sh's
"Killed" notices go to /dev/null instead of the job's log, writes $? (128+N for death by
signal N) to the status file and exits with it. A SIGKILL of the group ends it too: no
status then.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from node_agent.attempts import CANNOT_START
from node_agent.cgroups import write_text
from node_agent.identity import Owner, become

log = logging.getLogger(__name__)

# Run as `sh -c _JOIN_CGROUP <cgroup.procs> <command...>`: move into the cgroup, then exec.
_JOIN = 'echo $$ >"$0" || { echo "hpcbatch: cannot join $0" >&2; exit 125; }; '
_JOIN_CGROUP = _JOIN + 'exec "$@"'
# `sh -c SHIM <status file> <command...>` (module doc). It outlives the signals the job gets
# (a kill's SIGTERM, a warning signal of hpcbatch:signal); the job gets them by default.
SHIM = 'trap : TERM INT HUP USR1 USR2 QUIT ALRM; exec 3>&2 2>/dev/null; (exec "$@" 2>&3 3>&-); s=$?; echo $s >"$0"; exit $s'
# `sh -c _JOIN_SHIM <cgroup.procs> <status file> <command...>`: join the cgroup, then the shim.
_JOIN_SHIM = _JOIN + 'st=$1; shift; ' + SHIM.replace('"$0"', '"$st"')
_SH_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
TOOL_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"  # where setpriv and env are looked for

Preexec = Callable[[], object] | None
Launch = tuple[list[str], dict[str, str], Preexec]  # what Popen gets: argv, env, preexec_fn


class ExecChain:
    """Builds the command line that joins the cgroup, becomes the owner and runs the job."""

    def __init__(self, *, as_root: bool) -> None:
        self.env_tool = shutil.which("env", path=TOOL_PATH)
        self.setpriv = shutil.which("setpriv", path=TOOL_PATH) if as_root else None
        if as_root and (self.setpriv is None or self.env_tool is None):
            log.warning("setpriv or env missing: jobs switch user the slow way (fork)")

    def launch(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        cgroup: Path | None,
        drop: Owner | None,
        status_file: Path | None = None,
    ) -> Launch | str:
        """What to give Popen (argv, env, preexec_fn) to start the job, or why it cannot.

        The child joins its cgroup before it execs the job, so nothing the job starts
        escapes the limit, and joins while still root: the owner cannot write root's
        cgroup.procs. The slow path (a preexec_fn) stays for what the small programs cannot
        carry: variable names sh drops, a node without setpriv, a program name env would
        read as a variable. With ``status_file`` the sh stays as the job's parent (the
        shim, ``SHIM``) and writes its exit status there.
        """
        procs = str(cgroup / "cgroup.procs") if cgroup is not None else None
        sh_names = all(_SH_NAME.fullmatch(name) for name in env)
        if not self._fast(argv, procs, drop, status_file, sh_names):
            return argv, env, functools.partial(enter_and_become, procs, drop)
        if procs is None and drop is None and status_file is None:
            return argv, env, None  # vfork straight into the job
        missing = missing_program(argv[0], env, cwd)
        if missing:
            return missing
        via_sh = drop is None and sh_names  # sh hands the job its environment
        argv, env = self._switch(argv, env, drop, sh_names)
        # dash exports PWD, which the job's environment may not have had: unset it again then.
        unset = "unset PWD; " if via_sh and "PWD" not in env else ""
        return _wrap(argv, unset, procs, status_file), env, None

    def _fast(
        self, argv: list[str], procs: str | None, drop: Owner | None, status_file: Path | None, sh_names: bool
    ) -> bool:
        """Whether the small programs can carry this start (else fork with a preexec_fn)."""
        if drop is not None:
            return self.setpriv is not None and self.env_tool is not None and "=" not in argv[0]
        if procs is None and status_file is None:
            return True
        # sh passes the environment on, but drops names it cannot hold: env -i can
        return sh_names or (self.env_tool is not None and "=" not in argv[0])

    def _switch(
        self, argv: list[str], env: dict[str, str], drop: Owner | None, sh_names: bool
    ) -> tuple[list[str], dict[str, str]]:
        """setpriv (to become ``drop``) and env -i (the job's environment) in front of argv."""
        assignments = [f"{k}={v}" for k, v in env.items()]
        if drop is not None:
            assert self.setpriv is not None and self.env_tool is not None
            groups = ",".join(map(str, drop.groups))
            switch = [self.setpriv, f"--reuid={drop.uid}", f"--regid={drop.gid}", f"--groups={groups}", "--"]
            return [*switch, self.env_tool, "-i", "--", *assignments, *argv], {}  # env -i drops sh's exports
        if not sh_names:
            assert self.env_tool is not None
            return [self.env_tool, "-i", "--", *assignments, *argv], {}
        return argv, env


def _wrap(argv: list[str], unset: str, procs: str | None, status_file: Path | None) -> list[str]:
    """The sh in front: join the cgroup, be the shim, both, or neither."""
    if status_file is not None and procs is not None:
        return ["/bin/sh", "-c", unset + _JOIN_SHIM, procs, str(status_file), *argv]
    if status_file is not None:
        return ["/bin/sh", "-c", unset + SHIM, str(status_file), *argv]
    if procs is not None:
        return ["/bin/sh", "-c", unset + _JOIN_CGROUP, procs, *argv]
    return argv  # setpriv and env -i straight into the job


def under_shim(launch: Launch, status_file: Path) -> Launch:
    """``launch`` (podman run) as the shim's child, so its exit status outlives the agent."""
    argv, env, preexec = launch
    return ["/bin/sh", "-c", SHIM, str(status_file), *argv], env, preexec


def has_shim(launch: Launch, status_file: Path) -> bool:
    """Whether ``launch`` runs under the shim writing ``status_file`` (the slow path has none)."""
    argv, _, preexec = launch
    return preexec is None and str(status_file) in argv[3:5]


def spawn(launch: Launch, cwd: str, stdin: int, log_fd: int) -> subprocess.Popen[bytes]:
    """Start ``launch`` in its own session (a process group), stdout and stderr to ``log_fd``;
    OSError, or SubprocessError (the preexec_fn failed), when it cannot start."""
    argv, env, preexec = launch
    return subprocess.Popen(
        argv,
        stdin=stdin,
        stdout=log_fd,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env,
        start_new_session=True,
        close_fds=True,
        preexec_fn=preexec,
    )


def open_log(path: Path) -> int:
    """The job's output.log, root's and 0600, for appending."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)


def spawn_error(exc: OSError | subprocess.SubprocessError, program: str, cwd: str, drop: Owner | None) -> str:
    """Why Popen could not start ``program``, as the job's owner reads it."""
    if not isinstance(exc, OSError):  # the preexec_fn failed: the cgroup or setuid refused
        what = "enter the memory cgroup" if drop is None else f"become user {drop.name}"
        return f"{CANNOT_START}: could not {what} ({exc})"
    if exc.filename == cwd and exc.filename != program:
        return f"{CANNOT_START}: working directory {cwd}: {exc.strerror}"
    if isinstance(exc, FileNotFoundError):
        return f"{CANNOT_START}: {program}: command not found"
    return f"{CANNOT_START}: {program}: {exc.strerror or exc}"


def missing_program(program: str, env: dict[str, str], cwd: str) -> str | None:
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


def enter_and_become(procs: str | None, owner: Owner | None) -> None:
    """The slow path's preexec_fn, in the forked child: join the cgroup, then be the owner."""
    if procs is not None:
        write_text(procs, "0")  # "0": the writer
    if owner is not None:
        become(owner)


def write_file(path: Path, data: bytes, mode: int, ids: tuple[int, int] | None = None) -> None:
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
