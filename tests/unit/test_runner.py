"""The agent's process runner, against real processes: exits, kills, limits, crash recovery."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from node_agent.runner import (
    LOST_REASON,
    OOM_REASON,
    SHUTDOWN_REASON,
    TIMEOUT_REASON,
    AttemptResult,
    AttemptSpec,
    CgroupUnavailable,
    Runner,
)
from tests import prereq

REPO = Path(__file__).resolve().parents[2]
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}


def _cgroup_unavailable() -> str | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            runner = Runner(Path(tmp), on_exit=lambda r: None, memory_enforcement="cgroup")
        except CgroupUnavailable as exc:
            return str(exc)
        asyncio.run(runner.shutdown(kill=True))  # removes its cgroup parent
    return None


_NO_CGROUP = _cgroup_unavailable()
MODES = [
    "rss",
    pytest.param(
        "cgroup",
        marks=prereq.skipif(
            _NO_CGROUP is not None, "cgroup", f"cgroup mode unavailable here: {_NO_CGROUP}"
        ),
    ),
]


class Harness:
    """A Runner plus what its on_exit saw, with waits that have deadlines."""

    def __init__(
        self, state_dir: Path, mode: str = "rss", grace: float = 0.5, **runner_kw: Any
    ) -> None:
        self.results: dict[str, AttemptResult] = {}
        self.exit_calls: list[str] = []
        self._events: dict[str, asyncio.Event] = {}
        self.runner = Runner(
            state_dir,
            on_exit=self._on_exit,
            kill_grace_s=grace,
            memory_enforcement=mode,
            **runner_kw,
        )
        assert self.runner.memory_enforcement == mode

    def _on_exit(self, result: AttemptResult) -> None:
        self.exit_calls.append(result.attempt_id)
        self.results[result.attempt_id] = result
        self._event(result.attempt_id).set()

    def _event(self, attempt_id: str) -> asyncio.Event:
        return self._events.setdefault(attempt_id, asyncio.Event())

    async def start(self, attempt_id: str, command: list[str], **kw: object) -> int:
        spec = AttemptSpec(
            attempt_id=attempt_id,
            job_id=f"job-{attempt_id}",
            attempt_number=1,
            command=command,
            environment=kw.pop("environment", ENV),  # type: ignore[arg-type]
            vcpus=1,
            memory_mib=kw.pop("memory_mib", 512),  # type: ignore[arg-type]
            **kw,  # type: ignore[arg-type]
        )
        pid = await self.runner.start(spec)
        assert isinstance(pid, int), pid
        return pid

    async def result(self, attempt_id: str, timeout: float = 10.0) -> AttemptResult:
        async with asyncio.timeout(timeout):
            await self._event(attempt_id).wait()
        return self.results[attempt_id]

    def log(self, attempt_id: str) -> str:
        return self.runner.log_path(attempt_id).read_text()


def run(state_dir: Path, body: Callable[[Harness], Awaitable[None]], **kw: object) -> Harness:
    """Run ``body`` against a fresh Runner; kill whatever it left, whatever happens."""
    harness = Harness(state_dir, **kw)  # type: ignore[arg-type]

    async def main() -> None:
        try:
            await body(harness)
        finally:
            await harness.runner.shutdown(kill=True)

    asyncio.run(main())
    return harness


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def wait_for_sync(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def session_members(sid: int) -> list[int]:
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (psutil.Error, ProcessLookupError):
            continue
    return found


# ---------------------------------------------------------------------- exits
@pytest.mark.parametrize("mode", MODES)
def test_exit_codes_are_reported(tmp_path: Path, mode: str) -> None:
    async def body(h: Harness) -> None:
        for code in (0, 1, 42):
            await h.start(f"exit{code}", ["sh", "-c", f"exit {code}"])
        for code in (0, 1, 42):
            result = await h.result(f"exit{code}")
            assert (result.exit_code, result.reason, result.status_reason) == (code, None, None)
            assert result.job_id == f"job-exit{code}"
            assert 0 < result.started_at <= result.stopped_at

    h = run(tmp_path, body, mode=mode)
    assert sorted(h.exit_calls) == ["exit0", "exit1", "exit42"]


def test_death_by_signal_has_no_exit_code(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.start("sig", ["sh", "-c", "kill -KILL $$"])
        result = await h.result("sig")
        assert result.exit_code is None
        assert result.reason == "Killed by signal SIGKILL"

    run(tmp_path, body)


def test_exits_are_seen_without_pidfd(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.runner._watcher.use_pidfd = False  # the Linux < 5.3 path: waitpid polling
        await h.start("a", ["sh", "-c", "exit 3"])
        await h.start("b", ["sleep", "30"])
        assert (await h.result("a")).exit_code == 3
        h.runner.kill("b", "Job terminated: test", grace_s=0.5)
        assert (await h.result("b")).status_reason == "Job terminated: test"

    run(tmp_path, body)


def test_many_trivial_jobs_each_report_once(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        for i in range(100):
            await h.start(f"t{i}", ["true"])
        for i in range(100):
            assert (await h.result(f"t{i}")).exit_code == 0
        assert h.runner.running() == []

    h = run(tmp_path, body)
    assert sorted(h.exit_calls) == sorted(f"t{i}" for i in range(100))


def test_forgotten_attempts_are_removed_in_batches_and_at_shutdown(tmp_path: Path) -> None:
    """One acknowledgement forgets many attempts: all their directories go (one hand-off to
    the remover's thread); those forgotten just before shutdown go too."""
    attempts = tmp_path / "attempts"

    async def body(h: Harness) -> None:
        for i in range(20):
            await h.start(f"f{i}", ["true"])
        for i in range(20):
            assert (await h.result(f"f{i}")).exit_code == 0
        for i in range(10):
            h.runner.forget(f"f{i}")
        await wait_for(lambda: sorted(p.name for p in attempts.iterdir()) == sorted(f"f{i}" for i in range(10, 20)))
        for i in range(10, 20):
            h.runner.forget(f"f{i}")  # the shutdown right after still removes them

    run(tmp_path, body)
    assert list(attempts.iterdir()) == []


def test_shared_memory_left_by_ended_attempts_is_removed_after_they_end(tmp_path: Path) -> None:
    """Several attempts ending together leave transport files in /dev/shm: each goes once its
    attempt has ended (the cleanups of a burst are one scan per owner)."""
    tag = f"sm_segment.hpcbatch-test.{os.getpid()}.{time.monotonic_ns()}"
    made = [Path("/dev/shm") / f"{tag}.{i}" for i in range(3)]

    async def body(h: Harness) -> None:
        for i, path in enumerate(made):
            await h.start(f"s{i}", ["sh", "-c", f"echo x >{path}"])
        for i in range(3):
            assert (await h.result(f"s{i}")).exit_code == 0
        assert all(p.exists() for p in made)  # kept until the attempt's processes surely let go
        await wait_for(lambda: not any(p.exists() for p in made), timeout=10)

    try:
        run(tmp_path, body)
    finally:
        for path in made:
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------- kill and timeout
@pytest.mark.parametrize("mode", MODES)
def test_kill_ends_the_whole_process_group(tmp_path: Path, mode: str) -> None:
    async def body(h: Harness) -> None:
        # The shell notes SIGTERM and waits on; its sleeps ignore it: only the SIGKILL after
        # the grace ends them. "term" in the log: SIGTERM came first and the grace let it run.
        sleeper = "sh -c \"trap '' TERM; exec sleep 300\" &"
        cmd = f"trap 'echo term' TERM; {sleeper} {sleeper} echo ready; while :; do wait; done"
        pid = await h.start("k", ["sh", "-c", cmd])
        # The attempt's shim, the shell and its two sleeps.
        await wait_for(lambda: "ready" in h.log("k") and len(session_members(pid)) == 4)
        assert [r[:3] for r in h.runner.running()] == [("k", "job-k", pid)]
        h.runner.kill("k", "Job terminated: by test", grace_s=1.5)  # time to run the trap, even loaded
        result = await h.result("k")
        assert "term" in h.log("k").split()
        assert result.status_reason == "Job terminated: by test"
        assert result.exit_code is None and result.reason == "Killed by signal SIGKILL"
        await wait_for(lambda: session_members(pid) == [])

    run(tmp_path, body, mode=mode)


def test_processes_left_behind_by_the_main_process_are_killed(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.start("bg", ["sh", "-c", "sleep 300 & echo $!"])
        assert (await h.result("bg")).exit_code == 0
        leftover = int(h.log("bg").split()[0])
        await wait_for(lambda: not alive(leftover))

    run(tmp_path, body)


def test_timeout_ends_the_attempt_with_the_aws_reason(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.start("to", ["sleep", "30"], timeout_s=1)
        await h.start("stubborn", ["sh", "-c", "trap '' TERM; sleep 30"], timeout_s=1)
        result = await h.result("to")
        assert result.status_reason == TIMEOUT_REASON
        assert result.exit_code is None and result.reason == "Killed by signal SIGTERM"
        stubborn = await h.result("stubborn")  # ignores SIGTERM: SIGKILL after the grace
        assert stubborn.status_reason == TIMEOUT_REASON
        assert stubborn.reason == "Killed by signal SIGKILL"
        # Both timed out together; the one that heeds SIGTERM ended first, the other at the grace.
        assert h.exit_calls == ["to", "stubborn"]

    run(tmp_path, body, grace=2.0)  # wide enough that the order of the two exits is the grace's


def test_shutdown_with_kill_reports_every_attempt(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.start("s1", ["sleep", "30"])
        await h.start("s2", ["sleep", "30"])
        await h.runner.shutdown(kill=True)
        assert {h.results[a].status_reason for a in ("s1", "s2")} == {SHUTDOWN_REASON}
        result = await h.runner.start(AttemptSpec("s3", "j", 1, ["true"], ENV, 1, 64))
        assert isinstance(result, AttemptResult) and "shutting down" in (result.reason or "")

    run(tmp_path, body)


# ---------------------------------------------------------------------- memory
@pytest.mark.parametrize("mode", MODES)
def test_memory_limit_kills_with_the_aws_oom_result(tmp_path: Path, mode: str) -> None:
    hog = "import time; b = b'x' * (200 << 20); print('allocated', flush=True); time.sleep(60)"
    modest = "b = b'x' * (10 << 20); print('ok')"

    async def body(h: Harness) -> None:
        await h.start("hog", [sys.executable, "-c", hog], memory_mib=50)
        await h.start("modest", [sys.executable, "-c", modest], memory_mib=100)
        result = await h.result("hog")
        assert (result.exit_code, result.reason) == (137, OOM_REASON)
        assert (await h.result("modest")).exit_code == 0

    run(tmp_path, body, mode=mode)


# ---------------------------------------------------------------------- environment, output, script
@pytest.mark.parametrize("mode", MODES)
def test_environment_is_exactly_the_one_given(tmp_path: Path, mode: str) -> None:
    env = {**ENV, "AWS_BATCH_JOB_ID": "j-1", "WITH SPACE": "a b"}

    async def body(h: Harness) -> None:
        await h.start("env", ["env"], environment=env)
        assert (await h.result("env")).exit_code == 0
        assert sorted(h.log("env").splitlines()) == sorted(f"{k}={v}" for k, v in env.items())

    run(tmp_path, body, mode=mode)


def test_stdout_and_stderr_share_one_log_in_order(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.start("out", ["sh", "-c", "echo one; echo two >&2; echo three"])
        await h.result("out")
        assert h.log("out") == "one\ntwo\nthree\n"
        assert h.runner.log_path("out").parent.name == "out"

    run(tmp_path, body)


def test_default_cwd_is_the_attempt_directory(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.start("cwd", ["pwd"])
        await h.result("cwd")
        assert h.log("cwd").strip() == str(h.runner.log_path("cwd").parent)

    run(tmp_path, body)


@pytest.mark.parametrize(
    "script",
    [b"#!/bin/sh\necho shebang $1 $HPCBATCH_SCRIPT\n", b"echo plain $1 $HPCBATCH_SCRIPT\n"],
    ids=["shebang", "no-shebang"],
)
def test_script_runs_with_command_as_arguments(tmp_path: Path, script: bytes) -> None:
    async def body(h: Harness) -> None:
        await h.start("sc", ["arg1"], script=script)
        assert (await h.result("sc")).exit_code == 0
        path = h.runner.log_path("sc").parent / "script"
        word = "shebang" if script.startswith(b"#!") else "plain"
        assert h.log("sc") == f"{word} arg1 {path}\n"
        assert path.stat().st_mode & 0o777 == 0o755

    run(tmp_path, body)


# ---------------------------------------------------------------------- idempotence and refusals
def test_start_is_idempotent_by_attempt_id(tmp_path: Path) -> None:
    spec = AttemptSpec("once", "j", 1, ["sh", "-c", "echo ran; sleep 0.3"], ENV, 1, 64)

    async def body(h: Harness) -> None:
        pid = await h.runner.start(spec)
        assert await h.runner.start(spec) == pid
        result = await h.result("once")
        assert await h.runner.start(spec) == result

    h = run(tmp_path, body)
    assert h.exit_calls == ["once"]
    assert h.log("once") == "ran\n"

    async def after_restart(h2: Harness) -> None:  # a new agent process, same state dir
        assert await h2.runner.start(spec) == h.results["once"]

    assert run(tmp_path, after_restart).exit_calls == []


def test_image_without_container_runtime_is_refused(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        spec = AttemptSpec("img", "j", 1, ["true"], ENV, 1, 64, image="busybox:latest")
        result = await h.runner.start(spec)
        assert isinstance(result, AttemptResult)
        assert result.exit_code is None
        assert result.reason == (
            "CannotStartContainerError: node has no container runtime; "
            "image busybox:latest cannot run here"
        )
        assert h.runner.running() == []

    assert run(tmp_path, body).exit_calls == []


@pytest.mark.parametrize("mode", MODES)
def test_command_not_found_is_refused(tmp_path: Path, mode: str) -> None:
    async def body(h: Harness) -> None:
        spec = AttemptSpec("nf", "j", 1, ["no-such-command-xyz", "a"], ENV, 1, 64)
        result = await h.runner.start(spec)
        assert isinstance(result, AttemptResult)
        assert result.reason == "CannotStartContainerError: no-such-command-xyz: command not found"
        assert result.reason in h.log("nf")
        assert await h.runner.start(spec) == result

    assert run(tmp_path, body, mode=mode).exit_calls == []


def test_missing_working_directory_is_refused(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        spec = AttemptSpec("cwd", "j", 1, ["true"], ENV, 1, 64, cwd="/nonexistent/dir")
        result = await h.runner.start(spec)
        assert isinstance(result, AttemptResult)
        assert result.reason is not None and "/nonexistent/dir" in result.reason

    assert run(tmp_path, body).exit_calls == []


# ---------------------------------------------------------------------- agent crash
CRASHING_AGENT = """
import asyncio, sys
from pathlib import Path
from typing import Any
from node_agent.runner import AttemptSpec, Runner

async def main():
    runner = Runner(Path(sys.argv[1]), on_exit=lambda r: None, memory_enforcement=sys.argv[2])
    env = {"PATH": "/usr/bin:/bin"}
    for name, cmd in (("group", "sleep 300 & sleep 300 & echo ready; wait"),
                      ("dies", "echo ready; exec sleep 300"),
                      ("reused", "echo ready; exec sleep 300")):
        await runner.start(AttemptSpec(name, "job-" + name, 1, ["sh", "-c", cmd], env, 1, 256))
    print("started", flush=True)
    await asyncio.sleep(300)

asyncio.run(main())
"""


@pytest.mark.parametrize("mode", MODES)
def test_adopt_orphans_kills_what_a_dead_agent_left_and_nothing_else(
    tmp_path: Path, mode: str
) -> None:
    agent = subprocess.Popen(
        [sys.executable, "-c", CRASHING_AGENT, str(tmp_path), mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    bystander = None
    journal: dict[str, dict[str, Any]] = {}
    runners: list[Runner] = []
    try:
        assert agent.stdout is not None and agent.stdout.readline() == b"started\n"
        started_by = time.monotonic()  # every attempt of the crashed agent began before this
        journal = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "running").iterdir()}
        logs = {a: tmp_path / "attempts" / a / "output.log" for a in journal}
        wait_for_sync(lambda: all("ready" in p.read_text() for p in logs.values()))
        wait_for_sync(lambda: len(session_members(journal["group"]["pid"])) == 4)  # with its shim
        agent.kill()  # the agent crashes; its jobs run on
        agent.wait()
        # "dies" ended while no agent watched; "reused" has its pid taken by a stranger.
        os.kill(journal["dies"]["pid"], signal.SIGKILL)
        wait_for_sync(lambda: not alive(journal["dies"]["pid"]))
        os.kill(journal["reused"]["pid"], signal.SIGKILL)
        # Start times tick in 10 ms: a real reuse (after pid wrap-around) is far later.
        # (psutil's create_time is offset from time.time() by btime rounding, so measure
        # the gap on the monotonic clock.)
        wait_for_sync(lambda: time.monotonic() > started_by + 0.05)
        bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
        entry = tmp_path / "running" / "reused.json"
        entry.write_text(json.dumps({**journal["reused"], "pid": bystander.pid}))

        harness = Harness(tmp_path, mode=mode)
        runners.append(harness.runner)
        results = {r.attempt_id: r for r in harness.runner.adopt_orphans()}
        assert set(results) == {"group", "dies", "reused"}
        for attempt_id, result in results.items():
            assert (result.exit_code, result.status_reason) == (None, LOST_REASON)
            assert result.job_id == f"job-{attempt_id}"
        wait_for_sync(lambda: session_members(journal["group"]["pid"]) == [])
        assert alive(bystander.pid), "a reused pid must never be killed"
        assert list((tmp_path / "running").iterdir()) == []
        assert harness.runner.adopt_orphans() == []
    finally:
        for runner in runners:
            asyncio.run(runner.shutdown(kill=True))
        agent.kill()
        agent.wait()
        if bystander is not None:
            bystander.kill()
            bystander.wait()
        for pid in (j["pid"] for j in journal.values()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


# ---------------------------------------------------------------------- agent restarts (re-adoption)
ORPHANING_AGENT = """
import asyncio, json, sys
from pathlib import Path
from node_agent.runner import AttemptSpec, Runner

async def main():
    runner = Runner(Path(sys.argv[1]), on_exit=lambda r: None, memory_enforcement=sys.argv[2])
    env = {"PATH": "/usr/bin:/bin"}
    for name, cmd, timeout_s, memory_mib in json.loads(sys.argv[3]):
        spec = AttemptSpec(name, "job-" + name, 1, ["sh", "-c", cmd], env, 1, memory_mib, timeout_s=timeout_s)
        await runner.start(spec)
    print("started", flush=True)
    await asyncio.sleep(300)

asyncio.run(main())
"""


def orphan_attempts(state: Path, mode: str, attempts: list[tuple[str, str, int | None, int]]) -> dict[str, int]:
    """Start ``attempts`` (name, shell command, timeout_s, memory_mib) in an agent process,
    wait until each has printed "ready", and kill -9 that agent: the attempts run on, orphaned.
    Returns each attempt's pid (its shim)."""
    agent = subprocess.Popen(
        [sys.executable, "-c", ORPHANING_AGENT, str(state), mode, json.dumps(attempts)], cwd=REPO,
        stdout=subprocess.PIPE,
    )
    try:
        assert agent.stdout is not None and agent.stdout.readline() == b"started\n"
        logs = [state / "attempts" / name / "output.log" for name, *_ in attempts]
        wait_for_sync(lambda: all("ready" in p.read_text() for p in logs))
    finally:
        agent.kill()
        agent.wait()
    return {p.stem: json.loads(p.read_text())["pid"] for p in (state / "running").iterdir()}


def kill_groups(pids: dict[str, int]) -> None:
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


@pytest.mark.parametrize("mode", MODES)
def test_a_restarted_runner_readopts_running_attempts_with_their_real_exits(tmp_path: Path, mode: str) -> None:
    gate = tmp_path / "gate"
    pids = orphan_attempts(tmp_path, mode, [
        ("runs", f"echo ready; while [ ! -e {gate}2 ]; do sleep 0.05; done; exit 7", None, 256),
        ("ends", f"echo ready; while [ ! -e {gate} ]; do sleep 0.05; done; exit 3", None, 256),
        ("signalled", "echo ready; sleep 0.2; kill -SEGV $$", None, 256),
    ])
    try:
        gate.touch()  # "ends" finishes while no agent watches it ("signalled" too)
        wait_for_sync(lambda: not alive(pids["ends"]) and not alive(pids["signalled"]))

        async def body(h: Harness) -> None:
            ended = {r.attempt_id: r for r in h.runner.adopt_orphans(readopt=True)}
            assert set(ended) == {"ends", "signalled"}  # "runs" runs on, watched again
            assert (ended["ends"].exit_code, ended["ends"].reason, ended["ends"].lost) == (3, None, False)
            assert (ended["signalled"].exit_code, ended["signalled"].reason) == (None, "Killed by signal SIGSEGV")
            assert [r[0] for r in h.runner.running()] == ["runs"]
            Path(f"{gate}2").touch()
            runs = await h.result("runs")
            assert (runs.exit_code, runs.reason, runs.lost) == (7, None, False)
            assert h.runner.running() == []
            assert list((tmp_path / "running").iterdir()) == []
            assert {r.attempt_id for r in h.runner.unacknowledged()} == {"runs", "ends", "signalled"}

        run(tmp_path, body, mode=mode)
    finally:
        kill_groups(pids)


@pytest.mark.parametrize("mode", MODES)
def test_a_readopted_attempt_is_watched_killed_and_timed_out_as_before(tmp_path: Path, mode: str) -> None:
    gate = tmp_path / "gate"
    pids = orphan_attempts(tmp_path, mode, [
        ("waits", f"echo ready; while [ ! -e {gate} ]; do sleep 0.05; done; exit 5", None, 256),
        ("killed", "echo ready; exec sleep 300", None, 256),
        ("times_out", "echo ready; exec sleep 300", 3, 256),
        ("hog", f"echo ready; exec {sys.executable} -c \"import time; b = b'x' * (200 << 20); time.sleep(60)\"",
         None, 50),
    ])
    try:
        async def body(h: Harness) -> None:
            assert h.runner.adopt_orphans(readopt=True) == []
            assert {r[0]: r[2] for r in h.runner.running()} == pids  # pid: the shim, the group's id
            h.runner.kill("killed", "Job terminated: by test", grace_s=0.5)
            killed = await h.result("killed")
            assert (killed.status_reason, killed.exit_code, killed.reason) == (
                "Job terminated: by test", None, "Killed by signal SIGTERM")
            timed_out = await h.result("times_out")
            assert (timed_out.status_reason, timed_out.timed_out) == (TIMEOUT_REASON, True)
            hog = await h.result("hog", timeout=20)
            assert (hog.exit_code, hog.reason) == (137, OOM_REASON)
            gate.touch()
            waits = await h.result("waits")
            assert (waits.exit_code, waits.reason) == (5, None)
            await wait_for(lambda: all(session_members(pid) == [] for pid in pids.values()))

        run(tmp_path, body, mode=mode)
    finally:
        kill_groups(pids)


def test_shutdown_without_kill_leaves_attempts_for_the_next_runner(tmp_path: Path) -> None:
    gate = tmp_path / "gate"

    async def first(h: Harness) -> None:
        await h.start("left", ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done; exit 4"])
        await h.start("multinode", ["sleep", "300"], multinode=True)  # needs the bridge: not left
        await h.runner.shutdown(kill=False)
        assert h.results["multinode"].status_reason == SHUTDOWN_REASON
        assert "left" not in h.results

    first_run = Harness(tmp_path)
    asyncio.run(_then_shutdown(first_run, first))
    gate.touch()

    async def second(h: Harness) -> None:
        results = h.runner.adopt_orphans(readopt=True) or [await h.result("left")]
        assert [(r.attempt_id, r.exit_code) for r in results] == [("left", 4)]

    run(tmp_path, second)


async def _then_shutdown(h: Harness, body: Callable[[Harness], Awaitable[None]]) -> None:
    try:
        await body(h)
    finally:
        await h.runner.shutdown(kill=False)


def test_without_readopt_a_dead_agents_attempts_are_killed_and_reported_lost(tmp_path: Path) -> None:
    pids = orphan_attempts(tmp_path, "rss", [("old", "echo ready; exec sleep 300", None, 256)])
    try:
        harness = Harness(tmp_path)
        try:
            (result,) = harness.runner.adopt_orphans(readopt=False)
            assert (result.exit_code, result.status_reason, result.lost) == (None, LOST_REASON, True)
            wait_for_sync(lambda: session_members(pids["old"]) == [])
        finally:
            asyncio.run(harness.runner.shutdown(kill=True))
    finally:
        kill_groups(pids)


# ---------------------------------------------------------------------- faults stay small
def test_a_start_that_raises_fails_that_attempt_only(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.start("bystander", ["sleep", "30"])
        # A bad value deep in the start (job file data that is not bytes): a bug, not a crash.
        spec = AttemptSpec("bad", "job-bad", 1, ["true"], ENV, 1, 64, files=(("hostfile", "text", 0o644),))  # type: ignore[arg-type]
        result = await h.runner.start(spec)
        assert isinstance(result, AttemptResult)
        assert result.reason is not None and result.reason.startswith("CannotStartContainerError: TypeError")
        assert [r[0] for r in h.runner.running()] == ["bystander"]
        assert await h.runner.start(spec) == result  # asked again: the same answer
        await h.start("after", ["sh", "-c", "exit 2"])
        assert (await h.result("after")).exit_code == 2
        h.runner.kill("bystander", "done", grace_s=0)
        assert (await h.result("bystander")).status_reason == "done"

    run(tmp_path, body)


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)


def _fill(path: Path) -> None:
    """Write zeros into ``path`` until the file system is full."""
    with open(path, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)


@prereq.skipif(os.geteuid() != 0, "root", "mounts a small tmpfs (root only)")
def test_exits_are_reported_when_the_state_disk_is_full_and_journalled_once_it_has_room(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _mount_tmpfs(state, "1m")
    try:
        async def body(h: Harness) -> None:
            await h.start("before", ["sh", "-c", "sleep 0.3; exit 6"])
            _fill(state / "filler")
            result = await h.result("before")  # its shim cannot write its status, nor we the result
            assert (result.exit_code, result.reason) == (6, None)
            assert not (state / "attempts" / "before" / "result.json").exists()
            assert h.runner.pending_writes() == 1
            started = [await h.runner.start(AttemptSpec(f"full{i}", "j", 1, ["sh", "-c", "exit 9"], ENV, 1, 64))
                       for i in range(3)]
            for outcome in started:  # each is reported, run or refused with the reason
                if isinstance(outcome, AttemptResult):
                    assert outcome.reason is not None and "No space left on device" in outcome.reason
                else:
                    assert isinstance(outcome, int)
            ran = [f"full{i}" for i, o in enumerate(started) if isinstance(o, int)]
            for attempt_id in ran:
                assert (await h.result(attempt_id)).exit_code == 9
            (state / "filler").unlink()
            await wait_for(lambda: h.runner.pending_writes() == 0, timeout=5)
            assert _read(state / "attempts" / "before" / "result.json")["exit_code"] == 6
            assert list((state / "running").iterdir()) == []

        run(state, body)
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_a_launched_task_exec_cannot_carry_is_refused_and_its_attempt_lives(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.start("host", ["sleep", "30"], hold=False)
        error = h.runner.start_task("host", "l1", "echo a\0b", lambda *a: None)
        assert error is not None and error.startswith("CannotStartContainerError: ValueError: embedded null byte")
        assert [r[0] for r in h.runner.running()] == ["host"]
        h.runner.kill("host", "done", grace_s=0)
        assert (await h.result("host")).status_reason == "done"

    run(tmp_path, body)
