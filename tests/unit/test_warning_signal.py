"""The warning signal (``hpcbatch:signal=USR1@60``, Slurm's ``--signal``): from the job's tag
into the start order, the agent's timing (pure), and a real runner sending it to a real
process group before the timeout and before a preemption's SIGTERM, and again after an
agent restart re-adopts the attempt (its journal entry carries the signal), never twice."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from hpcbatch import protocol as p
from hpcbatch.head.starts import GangStart, start_message
from node_agent import state as s
from node_agent.state import warning_delay
from tests.unit.test_agent_state import Agent
from tests.unit.test_runner import REPO, Harness, kill_groups, run, wait_for, wait_for_sync
from tests.unit.test_starts import attempt, record

# Waits in small steps so a trap runs at once (sh runs a trap between commands).
TRAPS = ("trap 'echo warned-USR1' USR1; trap 'echo got-TERM; exit 0' TERM; "
         "i=0; while [ $i -lt 300 ]; do sleep 0.05; i=$((i+1)); done")


@pytest.mark.parametrize("timeout_s, warning_s, expected", [
    (60, 10, 50.0), (60, 60, 0.0), (30, 90, 0.0), (None, 10, None), (60, 0, None), (0, 5, None),
])
def test_the_warning_is_due_seconds_before_the_timeout(timeout_s: int | None, warning_s: int,
                                                      expected: float | None) -> None:
    assert warning_delay(timeout_s, warning_s) == expected


def test_the_start_order_carries_the_jobs_signal_and_a_gang_node_its_parents() -> None:
    order = start_message(record(tags={"hpcbatch:signal": "USR1@60"}, timeout_s=120), attempt(), script=None,
                          capabilities=[])
    assert (order.warning_signal, order.warning_s, order.timeout_s) == ("USR1", 60, 120)
    plain = start_message(record(), attempt(), script=None, capabilities=[])
    assert plain.warning_signal is None and plain.warning_s == 0
    parent = record("g", tags={"hpcbatch:signal": "SIGUSR2@5"}, num_nodes=2)
    child = record("g#1", parent_id="g", node_index=1)
    node = start_message(child, attempt(), script=None, capabilities=[], gang=GangStart(parent, {}, None))
    assert (node.warning_signal, node.warning_s) == ("USR2", 5)


class _OldKill(msgspec.Struct, tag_field="t", tag="kill", kw_only=True):
    """KillAttempt as an older head or agent knows it: no warning signal."""

    epoch: int = 0
    attempt_id: str
    reason: str
    grace_s: float = 10.0


def test_old_and_new_heads_and_agents_read_each_others_kills() -> None:
    new = p.encode(p.KillAttempt(attempt_id="a", reason="r", grace_s=1, warning_signal="USR1"))
    read = p.decode_from_head(new)
    assert isinstance(read, p.KillAttempt) and read.warning_signal == "USR1"
    assert msgspec.msgpack.decode(new, type=_OldKill).grace_s == 1  # an old agent ignores the new field
    old = p.decode_from_head(msgspec.msgpack.encode(_OldKill(attempt_id="a", reason="r")))
    assert isinstance(old, p.KillAttempt) and old.warning_signal is None


def test_a_preemptions_kill_carries_the_warning_signal_to_the_runner() -> None:
    agent = Agent()
    agent.start()
    agent.running()
    effects = agent.feed(p.KillAttempt(attempt_id="a1", reason="Preempted", grace_s=3, warning_signal="USR1"))
    assert effects == [s.SignalJob("a1", "Preempted", 3, warning_signal="USR1")]


def test_the_runner_warns_before_the_timeout(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.start("w", ["sh", "-c", TRAPS], timeout_s=3, warning_signal="USR1", warning_s=2)
        await wait_for(lambda: "warned-USR1" in h.log("w"), timeout=6)
        assert "got-TERM" not in h.log("w")  # warned a while before the timeout's SIGTERM
        result = await h.result("w")
        assert result.timed_out and h.log("w").index("warned-USR1") < h.log("w").index("got-TERM")

    run(tmp_path, body)


def test_a_kill_with_a_warning_signal_sends_it_before_the_sigterm(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.start("k", ["sh", "-c", TRAPS], warning_signal="USR1", warning_s=60)
        await asyncio.sleep(0.2)  # let sh install its traps (nothing to await: it says nothing)
        h.runner.kill("k", "Preempted for hi-1", 5.0, warning_signal="USR1")
        result = await h.result("k")
        log = h.log("k")
        assert "warned-USR1" in log and "got-TERM" in log and log.index("warned-USR1") < log.index("got-TERM")
        assert result.status_reason == "Preempted for hi-1"

    run(tmp_path, body)


# ------------------------------------------- an agent restart: the re-adopted attempt's timer
WARNED_ORPHAN = """
import asyncio, sys
from pathlib import Path
from node_agent.runner import AttemptSpec, Runner

async def main():
    runner = Runner(Path(sys.argv[1]), on_exit=lambda r: None, memory_enforcement="rss")
    spec = AttemptSpec("w", "job-w", 1, ["sh", "-c", sys.argv[2]], {"PATH": "/usr/bin:/bin"}, 1, 256,
                       timeout_s=int(sys.argv[3]), warning_signal="USR1", warning_s=int(sys.argv[4]))
    await runner.start(spec)
    print("started", flush=True)
    await asyncio.sleep(300)

asyncio.run(main())
"""
READY_TRAPS = ("trap 'echo warned-USR1' USR1; trap 'echo got-TERM; exit 0' TERM; echo ready; "
               "i=0; while [ $i -lt 300 ]; do sleep 0.05; i=$((i+1)); done")


def orphan_warned(state: Path, timeout_s: int, warning_s: int, until: str) -> int:
    """Start attempt "w" (TRAPS) with a USR1 warning in an agent process, wait for ``until``
    in its log, and kill -9 that agent: the attempt runs on, orphaned. Returns its pid."""
    agent = subprocess.Popen([sys.executable, "-c", WARNED_ORPHAN, str(state), READY_TRAPS, str(timeout_s),
                              str(warning_s)], cwd=REPO, stdout=subprocess.PIPE)
    try:
        assert agent.stdout is not None and agent.stdout.readline() == b"started\n"
        wait_for_sync(lambda: until in (state / "attempts" / "w" / "output.log").read_text())
    finally:
        agent.kill()
        agent.wait()
    return int(json.loads((state / "running" / "w.json").read_text())["pid"])


def test_a_readopted_attempt_gets_its_warning_before_the_timeout(tmp_path: Path) -> None:
    pid = orphan_warned(tmp_path, timeout_s=4, warning_s=2, until="ready")  # warning due 2 s in: not yet sent
    try:
        async def body(h: Harness) -> None:
            assert h.runner.adopt_orphans(readopt=True) == []
            assert "warned-USR1" not in h.log("w")
            await wait_for(lambda: "warned-USR1" in h.log("w"), timeout=6)
            assert "got-TERM" not in h.log("w")  # warned before the timeout's SIGTERM
            result = await h.result("w")
            assert result.timed_out and h.log("w").index("warned-USR1") < h.log("w").index("got-TERM")

        run(tmp_path, body)
    finally:
        kill_groups({"w": pid})


def test_a_warning_the_old_agent_sent_is_not_sent_again(tmp_path: Path) -> None:
    pid = orphan_warned(tmp_path, timeout_s=4, warning_s=3, until="warned-USR1")  # sent 1 s in
    wait_for_sync(lambda: json.loads((tmp_path / "running" / "w.json").read_text())["warned"] is True)
    try:
        async def body(h: Harness) -> None:
            assert h.runner.adopt_orphans(readopt=True) == []
            result = await h.result("w")
            assert result.timed_out and h.log("w").count("warned-USR1") == 1

        run(tmp_path, body)
    finally:
        kill_groups({"w": pid})
