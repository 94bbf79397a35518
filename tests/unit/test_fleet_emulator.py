"""The fleet emulator's stub runner (bench/fleet_swarm.py) ends a killed job as the agent expects.

A ``sleep S`` job killed ends at once (``on_exit`` runs inside ``kill``) with the killed
outcome: no exit code (a signal), the kill's reason as AWS's reason and statusReason. A
preemption's kill carries a warning signal, sent just before the SIGTERM: the stub has no
process to signal, so the job ends the same way. A gang's preemption once failed in the agent
because the stub's ``kill`` did not take ``warning_signal``; the last test drives that kill
through the emulated agent's own dispatch.
"""

from __future__ import annotations

import asyncio

import zmq
import zmq.asyncio

from bench.fleet_swarm import EmulatedAgent, StubRunner
from hpcbatch import protocol as p
from hpcbatch.curve import KeyPair
from node_agent.attempts import AttemptResult, AttemptSpec
from node_agent.config import AgentConfig

REASON = "Preempted by job j-high"


def _spec(attempt_id: str, command: list[str]) -> AttemptSpec:
    return AttemptSpec(attempt_id=attempt_id, job_id=f"job-{attempt_id}", attempt_number=1, command=command,
                       environment={}, vcpus=1, memory_mib=64)


def _kill_a_running_sleep(**kill_options: object) -> tuple[list[AttemptResult], StubRunner]:
    """Start ``sleep 30`` on a stub runner, kill it with ``kill_options``; what ``kill`` reported."""
    ended: list[AttemptResult] = []

    async def scenario() -> StubRunner:
        runner = StubRunner(ended.append)
        pid = await runner.start(_spec("a1", ["sleep", "30"]))
        assert isinstance(pid, int)
        assert [a for a, *_ in runner.running()] == ["a1"]
        runner.kill("a1", REASON, **kill_options)  # type: ignore[arg-type]
        return runner

    runner = asyncio.run(scenario())  # the loop closes: a timer left behind would be dropped, not fire
    return ended, runner


def _assert_killed(ended: list[AttemptResult], runner: StubRunner, *, fenced: bool = False) -> None:
    assert len(ended) == 1
    result = ended[0]
    assert (result.attempt_id, result.job_id) == ("a1", "job-a1")
    assert result.exit_code is None  # killed by a signal, not exited
    assert result.reason == result.status_reason == REASON
    assert (result.timed_out, result.fenced, result.lost) == (False, fenced, False)
    assert result.stopped_at >= result.started_at
    assert runner.running() == []


def test_a_killed_sleep_ends_at_once_with_the_killed_outcome() -> None:
    ended, runner = _kill_a_running_sleep()
    _assert_killed(ended, runner)


def test_a_kill_with_a_warning_signal_first_ends_the_job_killed_too() -> None:
    ended, runner = _kill_a_running_sleep(grace_s=5.0, warning_signal="USR1")
    _assert_killed(ended, runner)


def test_a_fence_kill_is_reported_fenced() -> None:
    ended, runner = _kill_a_running_sleep(grace_s=0, fenced=True)
    _assert_killed(ended, runner, fenced=True)


def test_a_killed_job_does_not_end_again_when_its_sleep_is_over() -> None:
    ended: list[AttemptResult] = []

    async def scenario() -> None:
        runner = StubRunner(ended.append)
        await runner.start(_spec("a1", ["sleep", "0"]))  # its end is due on the loop's next turn
        runner.kill("a1", REASON, warning_signal="USR1")
        for _ in range(3):  # turns of the loop: a timer still armed would fire now
            await asyncio.sleep(0)
        runner.kill("a1", "killed twice")  # an attempt that ended: nothing to do

    asyncio.run(scenario())
    assert [(r.attempt_id, r.exit_code, r.reason) for r in ended] == [("a1", None, REASON)]


def test_an_unkilled_sleep_ends_on_its_own_with_exit_code_0() -> None:
    ended: list[AttemptResult] = []

    async def scenario() -> None:
        runner = StubRunner(ended.append)
        await runner.start(_spec("a1", ["sleep", "0"]))
        while not ended:  # the loop's next turn
            await asyncio.sleep(0)

    asyncio.run(scenario())
    assert [(r.exit_code, r.reason) for r in ended] == [(0, None)]


def test_the_emulated_agent_obeys_a_preemption_kill_with_a_warning_signal() -> None:
    """A head's KillAttempt with a warning signal, through the agent's own dispatch, ends the
    attempt: its exit is what the agent reports (and keeps until the head acknowledges it)."""

    async def scenario() -> list[p.AttemptExited]:
        ctx = zmq.asyncio.Context()
        public, secret = zmq.curve_keypair()
        head_public, _ = zmq.curve_keypair()
        config = AgentConfig(name="fnode0", head="tcp://127.0.0.1:9", state_dir="/nonexistent",
                             head_public_key="head.key")  # no head listens: sends are dropped, not queued
        agent = EmulatedAgent(config, KeyPair(public=public, secret=secret), head_public, ctx, 2, 4096)
        try:
            await agent._obey(p.StartAttempt(attempt_id="a1", job_id="j1", attempt_number=1, command=["sleep", "30"],
                                             environment={}, vcpus=1, memory_mib=64))
            assert [a for a, _r in agent.core.running()] == ["a1"]
            await agent._obey(p.KillAttempt(attempt_id="a1", reason=REASON, grace_s=5.0, warning_signal="USR1"))
            assert agent.runner.running() == []
            return agent.core.unacked()
        finally:
            agent._link.close()
            ctx.term()

    exits = asyncio.run(scenario())
    assert [(e.attempt_id, e.job_id, e.exit_code, e.status_reason) for e in exits] == [("a1", "j1", None, REASON)]
