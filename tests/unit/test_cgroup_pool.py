"""Reused attempt cgroups (node_agent.cgroups.CgroupPool), against real processes and the
real cgroup hierarchy (v2, or v1's memory controller): a reused cgroup reports OOM kills per
job, a cgroup something escaped into is never reused, the previous job's limits never
reach the next, and a restarted agent reads a reused cgroup's OOM count from its baseline."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from node_agent.runner import OOM_REASON
from tests import prereq
from tests.unit.test_run_as_owner import ALICE, BOB, User, state_dir, users  # noqa: F401 (fixtures)
from tests.unit.test_runner import _NO_CGROUP, REPO, Harness, alive, run, wait_for, wait_for_sync

pytestmark = prereq.skipif(_NO_CGROUP is not None, "cgroup", f"cgroup mode unavailable here: {_NO_CGROUP}")

HOG = f"{sys.executable} -c \"import time; b = b'x' * (200 << 20); time.sleep(60)\""
WHERE = "cat /proc/self/cgroup"  # the job says which cgroup it ran in


def cgroup_of(log: str) -> str:
    """The memory cgroup a job's ``cat /proc/self/cgroup`` names (v2's line, or v1's memory one)."""
    lines = [line.split(":", 2) for line in log.splitlines() if line.count(":") >= 2]
    for _, controllers, path in lines:
        if "memory" in controllers.split(","):
            return path
    return next(path for num, controllers, path in lines if num == "0" and controllers == "")


def cgroup_dir(h: Harness, log: str) -> Path:
    cgroups = h.runner._cgroups
    assert cgroups is not None
    return cgroups.root / cgroup_of(log).lstrip("/")


async def ended_in(h: Harness, attempt_id: str, command: str, **kw: object) -> str:
    """Run ``command`` (which prints its cgroup) to its end; its cgroup's path."""
    await h.start(attempt_id, ["sh", "-c", command], **kw)
    result = await h.result(attempt_id, timeout=20)
    assert result.exit_code == 0, (result, h.log(attempt_id))
    return cgroup_of(h.log(attempt_id))


def test_a_reused_cgroup_reports_each_jobs_own_oom_kills(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.start("hog", ["sh", "-c", f"{WHERE}; exec {HOG}"], memory_mib=50)
        hog = await h.result("hog", timeout=20)
        assert (hog.exit_code, hog.reason) == (137, OOM_REASON)
        # The next job gets the OOM-killed job's cgroup (its counters still say 1 kill) ...
        after = await ended_in(h, "after", WHERE, memory_mib=100)
        assert after == cgroup_of(h.log("hog"))
        assert (h.results["after"].exit_code, h.results["after"].reason) == (0, None)
        # ... and a second OOM kill in it is still that job's.
        await h.start("hog2", ["sh", "-c", f"{WHERE}; exec {HOG}"], memory_mib=50)
        hog2 = await h.result("hog2", timeout=20)
        assert (hog2.exit_code, hog2.reason) == (137, OOM_REASON)
        assert cgroup_of(h.log("hog2")) == after

    run(tmp_path, body, mode="cgroup", cgroup_pool=1)


def test_a_cgroup_a_process_escaped_into_is_never_reused(tmp_path: Path) -> None:
    pidfile = tmp_path / "escaped.pid"
    # A double fork into a new session: out of the job's process group, still in its cgroup.
    escape = f"{WHERE}; (setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' &); " \
             f"while [ ! -s {pidfile} ]; do sleep 0.01; done"

    async def body(h: Harness) -> None:
        first = await ended_in(h, "first", WHERE)
        escaper = await ended_in(h, "escaper", escape)
        assert escaper == first  # the kept cgroup served it
        escaped = int(pidfile.read_text())
        path = cgroup_dir(h, h.log("escaper"))
        assert len(h.runner._pool or ()) == 0, "a cgroup with a live process was kept"
        nxt = await ended_in(h, "next", WHERE)
        assert nxt != escaper
        await wait_for(lambda: not alive(escaped))  # the end's kill reached what escaped
        await wait_for(lambda: not path.exists())  # and the cgroup went once it was empty
        again = await ended_in(h, "again", WHERE)
        assert again == nxt  # the clean one is reused

    try:
        run(tmp_path, body, mode="cgroup", cgroup_pool=1)
    finally:
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)


def _settings(path: Path) -> dict[str, str]:
    """The cgroup's memory settings this agent writes, as the job could read them."""
    names = ("memory.max", "memory.swap.max", "memory.oom.group",  # v2
             "memory.limit_in_bytes", "memory.memsw.limit_in_bytes")  # v1
    found = {}
    for name in names:
        with contextlib.suppress(OSError):
            found[name] = (path / name).read_text().strip()
    return found


def test_the_previous_jobs_limits_never_reach_the_next(tmp_path: Path) -> None:
    grow = f"{sys.executable} -c \"b = b'x' * (80 << 20); print('ok')\""
    gate = tmp_path / "gate"
    wait = f"{WHERE}; while [ ! -e {gate} ]; do sleep 0.02; done"

    async def body(h: Harness) -> None:
        # The settings a fresh cgroup gets, with a limit and without one (both live at once:
        # the pool is empty, so both are new).
        fresh = {"fresh_unlimited": 0, "fresh_limited": 40}
        for name, mib in fresh.items():
            await h.start(name, ["sh", "-c", wait], memory_mib=mib)
        await wait_for(lambda: all("hpcbatch" in h.log(name) for name in fresh))
        unlimited = _settings(cgroup_dir(h, h.log("fresh_unlimited")))
        limited = _settings(cgroup_dir(h, h.log("fresh_limited")))
        assert unlimited != limited
        gate.touch()
        for name in fresh:
            assert (await h.result(name)).exit_code == 0
        # Pool of 1: each of these takes the cgroup the one before it left.
        small = await ended_in(h, "small", WHERE, memory_mib=40)
        path = cgroup_dir(h, h.log("small"))
        assert _settings(path) == limited
        big = await ended_in(h, "big", f"{WHERE}; {grow}", memory_mib=0)  # 80 MiB, over the last limit
        assert big == small and "ok" in h.log("big")
        assert _settings(path) == unlimited
        again = await ended_in(h, "again", WHERE, memory_mib=40)
        assert again == big and _settings(path) == limited
        raised = await ended_in(h, "raised", f"{WHERE}; {grow}", memory_mib=200)  # a limit above the last
        assert raised == big and "ok" in h.log("raised")
        assert _settings(path)["memory.max" if "memory.max" in limited else "memory.limit_in_bytes"] == str(200 << 20)

    run(tmp_path, body, mode="cgroup", cgroup_pool=1)


def test_the_pool_is_bounded_and_emptied_at_shutdown(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    wait = f"{WHERE}; while [ ! -e {gate} ]; do sleep 0.02; done"
    paths: list[Path] = []

    async def body(h: Harness) -> None:
        for name in ("a", "b", "c"):
            await h.start(name, ["sh", "-c", wait])
        gate.touch()
        for name in ("a", "b", "c"):
            assert (await h.result(name)).exit_code == 0
            paths.append(cgroup_dir(h, h.log(name)))
        assert len(set(paths)) == 3
        assert sorted(p.exists() for p in paths) == [False, True, True]  # two kept, one removed
        assert len(h.runner._pool or ()) == 2

    harness = run(tmp_path, body, mode="cgroup", cgroup_pool=2)
    assert not any(p.exists() for p in paths)
    cgroups = harness.runner._cgroups
    assert cgroups is not None and not cgroups.parent.exists()


def test_a_restarted_agent_removes_the_empty_cgroups_a_killed_one_kept(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cgroups = h.runner._cgroups
        assert cgroups is not None
        leftover = cgroups.parent / "kept-by-a-killed-agent"
        leftover.mkdir()
        restarted = Harness(tmp_path, mode="cgroup")
        try:
            assert not leftover.exists()
        finally:
            await restarted.runner.shutdown(kill=True)

    run(tmp_path, body, mode="cgroup")


def test_an_attempt_id_sent_again_never_shares_a_live_cgroup(tmp_path: Path) -> None:
    gate = tmp_path / "gate"

    async def body(h: Harness) -> None:
        once = await ended_in(h, "x1", WHERE)  # its cgroup, named x1, is kept
        await h.start("long", ["sh", "-c", f"{WHERE}; while [ ! -e {gate} ]; do sleep 0.02; done"])
        h.runner.forget("x1")
        await wait_for(lambda: not h.runner.log_path("x1").parent.exists())
        del h.results["x1"], h._events["x1"]
        twice = await ended_in(h, "x1", WHERE)  # while "long" runs in the cgroup named x1
        await wait_for(lambda: "hpcbatch" in h.log("long"))
        assert cgroup_of(h.log("long")) == once
        assert twice != once
        gate.touch()
        assert (await h.result("long")).exit_code == 0

    run(tmp_path, body, mode="cgroup", cgroup_pool=1)


# An agent that runs an OOM-killed job to its end, then the next in the same (kept) cgroup,
# and dies: the restarted agent must read that job's OOM count from its journalled baseline.
OOM_THEN_ORPHAN = """
import asyncio, sys
from pathlib import Path
from node_agent.runner import AttemptSpec, Runner

async def main():
    ended = asyncio.Event()
    runner = Runner(Path(sys.argv[1]), on_exit=lambda r: ended.set(), memory_enforcement="cgroup", cgroup_pool=1)
    env = {"PATH": "/usr/bin:/bin"}
    await runner.start(AttemptSpec("hog", "job-hog", 1, ["sh", "-c", sys.argv[2]], env, 1, 50))
    await asyncio.wait_for(ended.wait(), 30)
    cmd = "cat /proc/self/cgroup; echo ready; while [ ! -e " + sys.argv[3] + " ]; do sleep 0.02; done"
    await runner.start(AttemptSpec("waits", "job-waits", 1, ["sh", "-c", cmd], env, 1, 100))
    print("started", flush=True)
    await asyncio.sleep(300)

asyncio.run(main())
"""


def test_a_readopted_attempt_in_a_reused_cgroup_is_not_reported_oom(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    agent = subprocess.Popen(
        [sys.executable, "-c", OOM_THEN_ORPHAN, str(tmp_path), f"{WHERE}; exec {HOG}", str(gate)],
        cwd=REPO, stdout=subprocess.PIPE,
    )
    waits = tmp_path / "attempts" / "waits" / "output.log"
    pid = None
    try:
        assert agent.stdout is not None and agent.stdout.readline() == b"started\n"
        wait_for_sync(lambda: "ready" in waits.read_text())
        pid = json.loads((tmp_path / "running" / "waits.json").read_text())["pid"]
    finally:
        agent.kill()
        agent.wait()
    try:
        hog_log = (tmp_path / "attempts" / "hog" / "output.log").read_text()
        assert cgroup_of(waits.read_text()) == cgroup_of(hog_log)  # the OOM-killed job's cgroup

        async def body(h: Harness) -> None:
            assert h.runner.adopt_orphans(readopt=True) == []
            gate.touch()
            result = await h.result("waits")
            assert (result.exit_code, result.reason) == (0, None)

        run(tmp_path, body, mode="cgroup")
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


@pytest.mark.parametrize("jobs", [50])
def test_many_short_jobs_through_a_small_pool_each_report_once(tmp_path: Path, jobs: int) -> None:
    async def body(h: Harness) -> None:
        for i in range(jobs):
            await h.start(f"t{i}", ["true"], memory_mib=64 if i % 2 else 0)
            if i % 4 == 3:  # a few live at once, as on a small node
                await asyncio.gather(*(h.result(f"t{j}") for j in range(i - 3, i + 1)))
        results = await asyncio.gather(*(h.result(f"t{i}") for i in range(jobs)))
        assert [r.exit_code for r in results] == [0] * jobs
        assert sorted(h.exit_calls) == sorted(f"t{i}" for i in range(jobs))

    run(tmp_path, body, mode="cgroup", cgroup_pool=2)


def test_a_cgroup_a_root_job_made_a_child_in_is_not_reused(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        first = await ended_in(h, "first", WHERE)
        path = cgroup_dir(h, h.log("first"))
        nested = await ended_in(h, "nested", f"{WHERE}; mkdir {path}/child")  # the agent's own user: root here
        assert nested == first and len(h.runner._pool or ()) == 0
        (path / "child").rmdir()
        assert cgroup_of(h.log("nested")) != await ended_in(h, "after", WHERE)

    if os.geteuid() != 0:
        prereq.skip("root", "a job that makes a cgroup runs as root")
    run(tmp_path, body, mode="cgroup", cgroup_pool=1)


def test_a_cgroup_passes_only_to_its_owners_next_job_and_only_when_emptied(
    state_dir: Path, users: dict[str, User]  # noqa: F811 (the fixtures imported above)
) -> None:
    """Alice's cgroup never reaches Bob, emptied or not: its name (her attempt's) and the
    counters no write resets (the peak usage, the fail count) would tell his job about hers.
    Her own next job gets it, emptied, with its own limit; not while her escaped process is in it."""
    if os.geteuid() != 0:
        prereq.skip("users", "needs root to switch to users")
    left: list[int] = []

    async def body(h: Harness) -> None:
        escape = "(setsid sh -c 'echo $$ > escaped; exec sleep 300' &); while [ ! -s escaped ]; do sleep 0.01; done"
        await h.start("a1", ["sh", "-c", f"{WHERE}; {escape}; cat escaped"], user=ALICE)
        assert (await h.result("a1")).exit_code == 0
        escaped = int(h.log("a1").split()[-1])
        left.append(escaped)
        assert len(h.runner._pool or ()) == 0  # her process is still in it
        a2 = await ended_in(h, "a2", WHERE, user=ALICE, memory_mib=300)
        assert a2 != cgroup_of(h.log("a1"))
        assert len(h.runner._pool or ()) == 1  # a2's, emptied
        b1 = await ended_in(h, "b1", WHERE, user=BOB, memory_mib=100)
        assert b1 != a2  # hers is kept for her, never his
        b2 = await ended_in(h, "b2", f"{WHERE}; id -u", user=BOB, memory_mib=100)
        assert b2 == b1  # his own, reused
        assert h.log("b2").split()[-1] == str(users["bob"].uid)
        a3 = await ended_in(h, "a3", WHERE, user=ALICE, memory_mib=100)
        assert a3 == a2  # hers, reused, with this job's limit and not a2's
        limits = _settings(cgroup_dir(h, h.log("a3")))
        assert str(100 << 20) in limits.values() and str(300 << 20) not in limits.values()

    try:
        run(state_dir, body, mode="cgroup", cgroup_pool=2)
    finally:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_cgroup_its_job_left_memory_charged_to_is_not_reused(tmp_path: Path) -> None:
    """A file in /dev/shm stays charged to the cgroup of the job that wrote it: the next job
    would pay for it out of its own limit."""
    shm = Path("/dev/shm") / f"hpcb-pool-test-{os.getpid()}"

    async def body(h: Harness) -> None:
        first = await ended_in(h, "first", WHERE)
        charged = await ended_in(h, "charged", f"{WHERE}; head -c 16M /dev/zero > {shm}")
        assert charged == first and len(h.runner._pool or ()) == 0
        assert await ended_in(h, "next", WHERE) != charged

    try:
        run(tmp_path, body, mode="cgroup", cgroup_pool=1)
    finally:
        shm.unlink(missing_ok=True)
