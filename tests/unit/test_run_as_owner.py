"""Jobs run as their owner's Unix user: identity, privacy, refusals, limits, kills.

Real users and real processes. The users (``hpcb_alice`` in group ``hpcb_grp``,
``hpcb_bob``) are created when missing and left in place: other test sessions may use them
at the same moment, so none deletes them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import grp
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from node_agent.runner import OOM_REASON, TIMEOUT_REASON, AttemptResult, AttemptSpec
from tests import prereq
from tests.unit.test_runner import ENV, MODES, Harness, run, session_members, wait_for

pytestmark = prereq.skipif(
    os.geteuid() != 0, "users", "needs root to create users and switch to them"
)

# The venv's interpreter may live under /root (0700): owners need the system's.
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")
GROUP = "hpcb_grp"
ALICE = "hpcb_alice"
BOB = "hpcb_bob"


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    groups: frozenset[int]
    home: str


def _ensure(argv: list[str], done: Callable[[], bool]) -> None:
    """Run a user-database command until ``done()``: concurrent sessions race for its lock."""
    deadline = time.monotonic() + 30
    while not done():
        proc = subprocess.run(argv, capture_output=True, text=True)
        if done():
            return
        assert time.monotonic() < deadline, f"{argv}: {proc.stderr.strip()}"
        time.sleep(0.1)  # another session holds /etc/passwd's lock; not a sync wait


def _exists(lookup: Callable[[str], object], name: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            lookup(name)
        except KeyError:
            return False
        return True

    return check


def _user(name: str) -> User:
    pw = pwd.getpwnam(name)
    groups = frozenset(os.getgrouplist(name, pw.pw_gid))
    return User(name, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir)


@pytest.fixture(scope="module")
def users() -> dict[str, User]:
    if shutil.which("useradd") is None:
        prereq.skip("users", "useradd is not installed")
    _ensure(["groupadd", "-f", GROUP], _exists(grp.getgrnam, GROUP))
    _ensure(["useradd", "-M", "-s", "/bin/sh", "-G", GROUP, ALICE], _exists(pwd.getpwnam, ALICE))
    _ensure(["useradd", "-M", "-s", "/bin/sh", BOB], _exists(pwd.getpwnam, BOB))
    _ensure(
        ["usermod", "-a", "-G", GROUP, ALICE],
        lambda: ALICE in grp.getgrnam(GROUP).gr_mem,
    )
    return {"alice": _user(ALICE), "bob": _user(BOB)}


@pytest.fixture()
def state_dir() -> Iterator[Path]:
    """A state dir owners can pass through (pytest's tmp_path sits under a 0700 dir)."""
    path = Path(tempfile.mkdtemp(prefix="hpcb-owner-", dir="/tmp"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def status_ids(pid: int) -> dict[str, list[int]]:
    """Uid, Gid and Groups lines of /proc/PID/status."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            found[key] = [int(v) for v in value.split()]
    return found


def user_processes(uid: int, sid: int) -> list[int]:
    """Live processes of ``uid`` in session ``sid``."""
    found = []
    for proc in psutil.process_iter(["uids", "status"]):
        try:
            if proc.info["uids"].real == uid and os.getsid(proc.pid) == sid:
                if proc.info["status"] != psutil.STATUS_ZOMBIE:
                    found.append(proc.pid)
        except (psutil.Error, ProcessLookupError, TypeError, AttributeError):
            continue
    return found


async def refused(h: Harness, attempt_id: str, **kw: object) -> AttemptResult:
    spec = AttemptSpec(attempt_id, f"job-{attempt_id}", 1, ["id", "-u"], ENV, 1, 64)
    spec = dataclasses.replace(spec, **kw)
    result = await h.runner.start(spec)
    assert isinstance(result, AttemptResult), result
    assert result.exit_code is None and h.runner.running() == []
    return result


# ---------------------------------------------------------------------- identity
@pytest.mark.parametrize("mode", MODES)
def test_job_runs_as_its_owner_with_groups_home_and_private_cwd(
    state_dir: Path, users: dict[str, User], mode: str
) -> None:
    alice = users["alice"]
    cmd = (
        'id -u; id -G; echo "$HOME $USER $LOGNAME $TMPDIR"; pwd; stat -c "%u %a" .;'
        " echo ready; exec sleep 30"
    )

    async def body(h: Harness) -> None:
        pid = await h.start("who", ["sh", "-c", cmd], user=ALICE)
        await wait_for(lambda: "ready" in h.log("who"))
        (job,) = psutil.Process(pid).children()  # the attempt's pid is its shim (root): the job is its child
        ids = status_ids(job.pid)  # the job's own process, after every exec on the way
        assert ids["Uid"] == [alice.uid] * 4
        assert ids["Gid"] == [alice.gid] * 4
        assert set(ids["Groups"]) == alice.groups
        assert grp.getgrnam(GROUP).gr_gid in ids["Groups"]
        uid, groups, names, cwd, owner_mode, _ = h.log("who").splitlines()
        work = h.runner.log_path("who").parent / "work"
        assert int(uid) == alice.uid
        assert {int(g) for g in groups.split()} == alice.groups
        assert names == f"{alice.home} {ALICE} {ALICE} {work}"
        assert cwd == str(work)
        assert owner_mode == f"{alice.uid} 700"
        log_stat = h.runner.log_path("who").stat()
        assert (log_stat.st_uid, log_stat.st_mode & 0o777) == (0, 0o600)
        h.runner.kill("who", "done", grace_s=0)
        await h.result("who")

    run(state_dir, body, mode=mode)


@pytest.mark.parametrize("mode", MODES)
def test_job_environment_is_the_given_one_plus_the_owners_and_no_root_process_sees_it(
    state_dir: Path, users: dict[str, User], mode: str
) -> None:
    # ld.so warns once per exec that sees a missing LD_PRELOAD: only the job may see it.
    env = {**ENV, "LD_PRELOAD": "/nonexistent/hpcb.so", "WITH SPACE": "a b", "-dash": "x"}

    async def body(h: Harness) -> None:
        await h.start("env", ["env"], environment=env, user=ALICE)
        assert (await h.result("env")).exit_code == 0
        lines = h.log("env").splitlines()
        assert len([line for line in lines if "hpcb.so" in line and "ld.so" in line]) == 1
        work = h.runner.log_path("env").parent / "work"
        alice = users["alice"]
        expected = {
            **env,
            "HOME": alice.home,
            "USER": ALICE,
            "LOGNAME": ALICE,
            "TMPDIR": str(work),
        }
        assert sorted(line for line in lines if "ld.so" not in line) == sorted(
            f"{k}={v}" for k, v in expected.items()
        )

    run(state_dir, body, mode=mode)


@pytest.mark.parametrize("mode", MODES)
def test_slow_path_without_setpriv_switches_user_too(
    state_dir: Path, users: dict[str, User], mode: str
) -> None:
    env = {**ENV, "WITH SPACE": "a b"}  # a name sh cannot carry: the fork path anyway

    async def body(h: Harness) -> None:
        h.runner._starter.chain.setpriv = None  # a node without util-linux's setpriv
        pid = await h.start(
            "slow", ["sh", "-c", "id -u; exec sleep 30"], environment=env, user=ALICE
        )
        await wait_for(lambda: h.log("slow") != "")
        assert int(h.log("slow")) == users["alice"].uid
        assert status_ids(pid)["Uid"] == [users["alice"].uid] * 4
        assert set(status_ids(pid)["Groups"]) == users["alice"].groups
        h.runner.kill("slow", "done", grace_s=0)
        await h.result("slow")

    run(state_dir, body, mode=mode)


@pytest.mark.parametrize(
    "script", [b"#!/bin/sh\nid -un; echo $HPCBATCH_SCRIPT $1\n", b"id -un; echo $1\n"]
)
def test_script_is_private_to_its_owner_and_runs_as_the_owner(
    state_dir: Path, users: dict[str, User], script: bytes
) -> None:
    async def body(h: Harness) -> None:
        await h.start("sc", ["arg1"], script=script, user=ALICE)
        assert (await h.result("sc")).exit_code == 0
        path = h.runner.log_path("sc").parent / "work" / ".hpcbatch-script"
        lines = h.log("sc").splitlines()
        assert lines[0] == ALICE
        assert lines[1].split()[-1] == "arg1"
        if script.startswith(b"#!"):
            assert lines[1] == f"{path} arg1"
        st = path.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (users["alice"].uid, 0o700)

    run(state_dir, body)


# ---------------------------------------------------------------------- isolation
def test_another_user_cannot_read_or_signal_an_owners_job(
    state_dir: Path, users: dict[str, User]
) -> None:
    async def body(h: Harness) -> None:
        alice_pid = await h.start(
            "a", ["sh", "-c", "echo secret >mine; echo ready; exec sleep 30"], user=ALICE
        )
        await wait_for(lambda: "ready" in h.log("a"))
        work = h.runner.log_path("a").parent / "work"
        log = h.runner.log_path("a")
        probes = (
            f"cat {work}/mine && echo READ-FILE; ls {work} && echo LISTED;"
            f" cat {log} && echo READ-LOG; kill -0 {alice_pid} && echo SIGNALLED;"
            f" cat /proc/{alice_pid}/environ && echo READ-ENVIRON; echo probed"
        )
        await h.start("b", ["sh", "-c", probes], user=BOB)
        assert (await h.result("b")).exit_code == 0
        out = h.log("b")
        assert "probed" in out
        for leak in ("secret", "READ-FILE", "LISTED", "READ-LOG", "SIGNALLED", "READ-ENVIRON"):
            assert leak not in out
        assert h.runner.running()[0][0] == "a"  # bob's kill -0 did not reach it
        h.runner.kill("a", "done", grace_s=0)
        await h.result("a")

    run(state_dir, body)


# ---------------------------------------------------------------------- refusals
def test_unknown_user_is_refused_with_the_node_name(state_dir: Path) -> None:
    async def body(h: Harness) -> None:
        result = await refused(h, "ghost", user="hpcb_nosuchuser")
        assert result.reason == (
            "CannotStartContainerError: user hpcb_nosuchuser does not exist on node "
            f"{socket.gethostname()}"
        )
        assert result.reason in h.log("ghost")

    assert run(state_dir, body).exit_calls == []


def test_root_owned_jobs_are_refused_unless_allowed(state_dir: Path) -> None:
    async def body(h: Harness) -> None:
        result = await refused(h, "root", user="root")
        assert result.reason == (
            "CannotStartContainerError: jobs owned by root are not allowed on this node "
            "(allow_root_jobs is false)"
        )

    assert run(state_dir, body).exit_calls == []

    async def allowed(h: Harness) -> None:
        await h.start("root2", ["sh", "-c", "id -u; pwd"], user="root")
        assert (await h.result("root2")).exit_code == 0
        work = h.runner.log_path("root2").parent / "work"
        assert h.log("root2").splitlines() == ["0", str(work)]

    run(state_dir, allowed, allow_root_jobs=True)


def test_agent_that_is_not_root_runs_only_its_own_users_jobs(
    state_dir: Path, users: dict[str, User]
) -> None:
    async def body(h: Harness) -> None:
        # What a non-root agent sees; it runs as root here, so its own jobs stay root's.
        h.runner._owners.euid, h.runner._owners.me = users["bob"].uid, BOB
        result = await refused(h, "other", user=ALICE)
        assert result.reason == (
            f"CannotStartContainerError: agent runs as {BOB} and cannot start jobs as {ALICE}"
        )
        await h.start("own", ["sh", "-c", 'echo "$USER $HOME"; pwd'], user=BOB)
        assert (await h.result("own")).exit_code == 0
        work = h.runner.log_path("own").parent / "work"
        assert h.log("own").splitlines() == [f"{BOB} {users['bob'].home}", str(work)]

    run(state_dir, body)


def test_owner_jobs_are_refused_when_the_state_dir_is_closed_to_them(
    tmp_path: Path, users: dict[str, User]
) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)

    async def body(h: Harness) -> None:
        result = await refused(h, "far", user=ALICE)
        assert result.reason is not None
        assert "is not searchable by other users" in result.reason
        assert "chmod o+x" in result.reason

    run(closed / "state", body)


# ---------------------------------------------------------------------- limits and kills
@pytest.mark.parametrize("mode", MODES)
def test_memory_limit_holds_for_owner_jobs(
    state_dir: Path, users: dict[str, User], mode: str
) -> None:
    hog = "import time; b = b'x' * (200 << 20); print('allocated', flush=True); time.sleep(60)"
    # In cgroup mode even a child that leaves the session stays in the job's cgroup.
    escape = "setsid sleep 300 & echo $!; wait"

    if SYSTEM_PYTHON is None:
        prereq.skip("system-python", "no python3 in /usr/bin for the job user to run")

    async def body(h: Harness) -> None:
        await h.start("hog", [SYSTEM_PYTHON, "-c", hog], memory_mib=50, user=ALICE)
        result = await h.result("hog")
        assert (result.exit_code, result.reason) == (137, OOM_REASON)
        if mode == "cgroup":
            pid = await h.start("esc", ["sh", "-c", escape], user=ALICE)
            await wait_for(lambda: h.log("esc").strip().isdigit())
            child = int(h.log("esc"))
            await wait_for(lambda: psutil.Process(child).name() == "sleep")
            cgroups = Path(f"/proc/{child}/cgroup").read_text()
            # The job's cgroup (the OOM-killed job's, reused: node_agent.cgroups.CgroupPool).
            assert "/hpcbatch-" in cgroups and cgroups == Path(f"/proc/{pid}/cgroup").read_text()
            assert psutil.Process(child).uids().real == users["alice"].uid
            h.runner.kill("esc", "done", grace_s=0)
            await h.result("esc")
            await wait_for(lambda: not psutil.pid_exists(child) or _zombie(child))

    run(state_dir, body, mode=mode)


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("mode", MODES)
def test_kill_and_timeout_end_every_process_of_an_owner_job(
    state_dir: Path, users: dict[str, User], mode: str
) -> None:
    uid = users["alice"].uid
    cmd = "trap '' TERM; sleep 300 & sleep 300 & echo ready; wait"

    async def body(h: Harness) -> None:
        pid = await h.start("k", ["sh", "-c", cmd], user=ALICE)
        to = await h.start("to", ["sh", "-c", cmd], user=ALICE, timeout_s=1)
        await wait_for(lambda: len(user_processes(uid, pid)) == 3)
        await wait_for(lambda: len(user_processes(uid, to)) == 3)
        h.runner.kill("k", "Job terminated: by test", grace_s=0.3)
        killed = await h.result("k")
        assert killed.reason == "Killed by signal SIGKILL"
        assert (await h.result("to")).status_reason == TIMEOUT_REASON
        await wait_for(lambda: session_members(pid) == [] and session_members(to) == [])

    run(state_dir, body, mode=mode)


# ---------------------------------------------------------------------- the work dir
@pytest.mark.parametrize("keep", [False, True], ids=["removed", "kept"])
def test_forget_removes_the_work_dir_unless_keep_workdir(
    state_dir: Path, users: dict[str, User], keep: bool
) -> None:
    async def body(h: Harness) -> None:
        await h.start("w", ["sh", "-c", "mkdir -p d && chmod 000 d && echo x >f"], user=ALICE)
        assert (await h.result("w")).exit_code == 0
        adir = h.runner.log_path("w").parent
        h.runner.forget("w")  # removal runs on a helper thread: wait for it, with a deadline
        deadline = time.monotonic() + 10
        def removing() -> bool:  # the log goes first, then (unless kept) the work dir
            return (adir / "output.log").exists() or (not keep and (adir / "work").exists())

        while removing() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not (adir / "output.log").exists()
        assert (adir / "work" / "f").exists() == keep
        assert h.runner.unacknowledged() == []

    run(state_dir, body, keep_workdir=keep)


def test_many_owner_jobs_in_a_row_all_run(state_dir: Path, users: dict[str, User]) -> None:
    """50 owner spawns back to back (their cost is measured in bench/, not asserted here)."""

    async def body(h: Harness) -> None:
        for i in range(50):
            await h.start(f"t{i}", ["true"], user=ALICE)
        for i in range(50):
            assert (await h.result(f"t{i}")).exit_code == 0

    run(state_dir, body)
