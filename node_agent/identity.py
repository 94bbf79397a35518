"""Whom an attempt runs as: its owner resolved on this node, and where that owner may start.

A root agent runs each attempt as its owner's Unix user (``spec.user``, resolved here with
pwd/getgrouplist: uids need not match the head's), never as root unless the node allows
root jobs. The switch itself happens in the child (``node_agent.spawning``: setpriv, or
``become`` in a preexec_fn on the slow path). A job starts in its submit (or ``--chdir``)
directory when its owner may enter it on this node (Slurm's rule, ``start_dir``), judged
for the owner's uid and groups, never root's; else in its private work dir.
"""

from __future__ import annotations

import os
import pwd
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from node_agent.attempts import CANNOT_START, os_error

# pwd + getgrouplist cost 0.1-0.2 ms per start (NSS "files systemd"); a user's identity is
# reused this long. Unknown users are never cached.
_OWNER_TTL_S = 10.0
_MAX_CACHED = 1000
_MAX_LINKS = 40  # the kernel's limit on symbolic links in one lookup

# hpcbatch extensions in a job's environment (hpcbatch.cli.submit, checked absolute by
# hpcbatch.validation): --chdir's directory, else the directory the job was submitted from.
CHDIR_VARIABLE = "HPCBATCH_CHDIR"
SUBMIT_DIR_VARIABLE = "HPCBATCH_SUBMIT_DIR"


@dataclass(frozen=True, slots=True)
class Owner:
    """The Unix identity an attempt runs as, resolved on this node."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, the primary one included
    home: str
    switch: bool  # False when the agent already is this identity (nothing to drop)


class OwnerResolver:
    """Resolves a job's owner name to an ``Owner`` (or why it cannot run here), with a short cache."""

    def __init__(self, hostname: str, *, allow_root_jobs: bool) -> None:
        self.hostname = hostname
        self.allow_root_jobs = allow_root_jobs
        self.euid = os.geteuid()
        self.me = user_name(self.euid)
        self._cache: dict[str, tuple[float, Owner]] = {}  # name -> (expiry, identity)

    def resolve(self, user: str | None) -> Owner | str | None:
        """Whom the attempt runs as (None: the agent itself), or why it cannot start."""
        if user is None:
            return None
        if not user:
            return f"{CANNOT_START}: the job has no owner"
        if self.euid != 0 and user != self.me:
            return f"{CANNOT_START}: agent runs as {self.me} and cannot start jobs as {user}"
        now = time.monotonic()
        cached = self._cache.get(user)
        if cached is not None and cached[0] > now:
            return cached[1]
        owner = self._look_up(user)
        if isinstance(owner, Owner):
            if len(self._cache) > _MAX_CACHED:
                self._cache.clear()
            self._cache[user] = (now + _OWNER_TTL_S, owner)  # only users found: a new one works
        return owner

    def _look_up(self, user: str) -> Owner | str:
        try:
            pw = pwd.getpwnam(user)  # on this node: uids need not match the head's
        except (KeyError, ValueError):
            return f"{CANNOT_START}: user {user} does not exist on node {self.hostname}"
        if pw.pw_uid == 0 and not self.allow_root_jobs:
            return (
                f"{CANNOT_START}: jobs owned by root are not allowed on this node "
                "(allow_root_jobs is false)"
            )
        groups = tuple(sorted(set(os.getgrouplist(pw.pw_name, pw.pw_gid))))
        # Only a different user is a switch: root's own jobs (allow_root_jobs) run straight,
        # whatever supplementary groups the agent process happens to hold.
        switch = self.euid == 0 and pw.pw_uid != self.euid
        return Owner(pw.pw_name, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir, switch)


def owner_environment(env: dict[str, str], owner: Owner, work: Path) -> dict[str, str]:
    """The job's environment as its owner's login would set it, TMPDIR its work dir."""
    return {**env, "HOME": owner.home, "USER": owner.name, "LOGNAME": owner.name, "TMPDIR": str(work)}


def become(owner: Owner) -> None:
    """Drop to ``owner`` (groups first, uid last): the slow path, in a forked child."""
    os.setgroups(list(owner.groups))
    os.setresgid(owner.gid, owner.gid, owner.gid)
    os.setresuid(owner.uid, owner.uid, owner.uid)


def start_dir(env: dict[str, str], fallback: str, owner: Owner | None, node: str) -> tuple[str, str | None]:
    """Where a job starts, and the log line that says why not where it asked (or None).

    As Slurm starts a batch job in its submit directory (or --chdir's) when the node has it
    and falls back with a message when not: the directory is used only when the job's
    owner may enter it, judged for the owner's uid and groups, never root's (a shared
    filesystem mounted everywhere is the case this serves); else the private work dir.
    """
    wanted = env.get(CHDIR_VARIABLE) or env.get(SUBMIT_DIR_VARIABLE)
    if not wanted:
        return fallback, None
    why = may_enter(wanted, owner)
    if why is None:
        return wanted, None
    which = "--chdir directory" if env.get(CHDIR_VARIABLE) else "submit directory"
    return fallback, f"hpcbatch: the {which} {wanted} {why} on node {node}; starting in the job's work directory {fallback}\n"


def may_enter(path: str, owner: Owner | None) -> str | None:
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
        return _may_enter_myself(path)
    try:
        return _PathWalk(owner, path).run()
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read ({os_error(exc)})"


def _may_enter_myself(path: str) -> str | None:
    if not os.path.isdir(path):
        return "does not exist" if not os.path.exists(path) else "is not a directory"
    return None if os.access(path, os.X_OK) else "cannot be entered"


class _PathWalk:
    """``path`` resolved one component at a time, each directory searched as ``owner``."""

    def __init__(self, owner: Owner, path: str) -> None:
        self.owner = owner
        self.groups = {owner.gid, *owner.groups}
        self.todo = [p for p in path.split("/") if p]
        self.current = "/"
        self.links = 0

    def run(self) -> str | None:
        st = os.stat("/")
        while True:
            why = self._closed(st)
            if why is not None or not self.todo:
                return why
            st, why = self._step(self.todo.pop(0), st)
            if why is not None:
                return why

    def _closed(self, st: os.stat_result) -> str | None:
        """Why the owner cannot search the directory ``st`` (at ``current``), or None."""
        if not stat.S_ISDIR(st.st_mode):
            return "is not a directory"
        if st.st_uid == self.owner.uid:
            bit = stat.S_IXUSR
        else:
            bit = stat.S_IXGRP if st.st_gid in self.groups else stat.S_IXOTH
        if not st.st_mode & bit:
            return f"cannot be entered by user {self.owner.name} ({self.current} is mode {stat.S_IMODE(st.st_mode):o})"
        return None

    def _step(self, part: str, st: os.stat_result) -> tuple[os.stat_result, str | None]:
        """Go into ``part``: the stat of where the walk now is, or why it cannot go on."""
        if part == ".":
            return st, None
        if part == "..":
            self.current = os.path.dirname(self.current)
            return os.stat(self.current), None
        step = os.path.join(self.current, part)
        st = os.lstat(step)
        if not stat.S_ISLNK(st.st_mode):
            self.current = step
            return st, None
        self.links += 1
        if self.links > _MAX_LINKS:
            return st, "has too many levels of symbolic links"
        target = os.readlink(step)
        self.todo = [p for p in target.split("/") if p] + self.todo
        if target.startswith("/"):
            self.current = "/"
        return os.stat(self.current), None


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def first_closed_dir(path: Path) -> str | None:
    """Why job owners cannot reach directories under ``path``, or None when they can."""
    resolved = path.resolve()
    for directory in (resolved, *resolved.parents):
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            return (
                f"{CANNOT_START}: {directory} is not searchable by other users, so job "
                f"owners cannot reach their work directories (chmod o+x {directory})"
            )
    return None
