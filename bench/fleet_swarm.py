"""The emulated side of bench/fleet: many of the project's own agents in one process, stand-ins for the machine.

``python -m bench.fleet_emulator swarm`` runs ``swarm_main``: ``--count`` ``EmulatedAgent``s
(``node_agent.main.Agent`` with a ``StubRunner``, no GPUs, no launch bridge, no disk) on one
asyncio loop and one ZeroMQ context, each with its own DEALER, key pair and handshake. What
the emulation keeps and drops, and how to run swarms: bench/fleet_emulator.py.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import resource
import secrets
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import zmq
import zmq.asyncio

from bench.fleet_keys import read_keys
from hpcbatch import __version__
from hpcbatch import protocol as p
from hpcbatch.curve import KeyPair, load_public_key
from node_agent.attempt_env import NodeSetting
from node_agent.config import AgentConfig
from node_agent.head_link import HeadLink
from node_agent.main import Agent
from node_agent.main import _now as agent_now
from node_agent.runner import AttemptResult, AttemptSpec
from node_agent.state import AgentIdentity, AgentState

PROFILE_ENV = "HPCBATCH_FLEET_PROFILE"  # a folder: each emulator's cProfile per phase goes there


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# --------------------------------------------------------------------------- stand-ins
class StubRunner:
    """The agent's ``Runner`` with nothing behind it: ``sleep S`` lasts S seconds, else exit 0."""

    def __init__(self, on_exit: Callable[[AttemptResult], None]) -> None:
        self._on_exit = on_exit
        self._running: dict[str, tuple[str, int, int, asyncio.TimerHandle]] = {}
        self._pids = itertools.count(1000)

    async def start(self, spec: AttemptSpec) -> int | AttemptResult:
        known = self._running.get(spec.attempt_id)
        if known is not None:
            return known[1]
        seconds = 0.0
        if len(spec.command) == 2 and spec.command[0] == "sleep":
            seconds = float(spec.command[1])
        pid = next(self._pids)
        # Later than the AttemptStarted the agent sends when this returns, as a real exit is.
        handle = asyncio.get_running_loop().call_later(seconds, self._end, spec.attempt_id, 0, None, False)
        self._running[spec.attempt_id] = (spec.job_id, pid, _now_ms(), handle)
        return pid

    def _end(self, attempt_id: str, code: int | None, reason: str | None, fenced: bool) -> None:
        rec = self._running.pop(attempt_id, None)
        if rec is None:
            return
        job_id, _pid, started, handle = rec
        handle.cancel()
        self._on_exit(AttemptResult(attempt_id, job_id, code, reason, reason, started, _now_ms(), fenced=fenced))

    def kill(self, attempt_id: str, reason: str, grace_s: float | None = None, *, fenced: bool = False,
             warning_signal: str | None = None) -> None:
        self._end(attempt_id, None, reason, fenced)

    def running(self) -> list[tuple[str, str, int, int]]:
        return [(a, j, pid, t) for a, (j, pid, t, _h) in self._running.items()]

    def forget(self, attempt_id: str) -> None:
        pass

    def is_pulling(self, attempt_id: str) -> bool:
        return False

    def job_dir(self, attempt_id: str, user: str | None) -> Path:
        return Path("/nonexistent/hpcbatch-fleet") / attempt_id

    def log_path(self, attempt_id: str) -> Path:
        return self.job_dir(attempt_id, None) / "output"

    def attempt_uid(self, attempt_id: str) -> int | None:
        return None

    def start_task(self, *args: object) -> str:
        return "launches are not emulated"

    def unacknowledged(self) -> list[AttemptResult]:
        return []

    def adopt_orphans(self, readopt: bool = False) -> list[AttemptResult]:
        return []

    async def shutdown(self, kill: bool) -> None:
        for attempt_id in list(self._running):
            self.kill(attempt_id, "emulator stopped")


class _NoGpus:
    available = False

    def health(self) -> dict[str, str]:
        return {}

    def usage(self, uuids: object) -> dict[str, tuple[float, int]]:
        return {}

    def utilization(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        pass


class _NoBridge:
    path = Path("/nonexistent/hpcbatch-fleet/launch.sock")

    def revoke(self, attempt_id: str, reason: str = "") -> None:
        pass

    def allow(self, grant: object) -> None:
        pass

    def launch_done(self, msg: object) -> None:
        pass


class _EpochInMemory:
    path = Path("/nonexistent/hpcbatch-fleet/head-epoch.json")

    def save(self, epoch: int) -> None:
        pass


class EmulatedAgent(Agent):
    """``Agent`` on a shared context with stand-ins for the machine (runner, GPUs, bridge, disk).

    Sets what ``Agent.__init__`` sets, minus discovery and files; the methods are Agent's own."""

    def __init__(self, config: AgentConfig, keys: KeyPair, head_key: bytes, ctx: zmq.asyncio.Context,
                 vcpus: int, memory_mib: int) -> None:  # noqa: D107 (Agent.__init__ is not called on purpose)
        self.config = config
        self.state = Path("/nonexistent/hpcbatch-fleet") / config.name
        self.instance_id = secrets.token_hex(16)
        self.nvml = _NoGpus()  # type: ignore[assignment]
        self.facts = p.NodeFacts(
            name=config.name, hostname=config.name, addresses=["127.0.0.1"], vcpus=vcpus, memory_mib=memory_mib,
            compute_environment=config.compute_environment, placement_group=config.placement_group,
            agent_version=__version__, fence_after_s=config.fence_s,
        )
        self.podman = None
        self.runner = StubRunner(self._on_exit)  # type: ignore[assignment]
        self.bridge = _NoBridge()  # type: ignore[assignment]
        self.keys = keys
        self._ctx = ctx
        self._link = HeadLink(ctx, keys, head_key, config)
        self._epoch_memory = _EpochInMemory()  # type: ignore[assignment]
        self.core = AgentState(
            AgentIdentity(self.instance_id, self.facts, head_count=len(self._link.heads)),
            epoch=0, heartbeat_interval_s=config.heartbeat_interval_s, liveness=config.liveness, now=agent_now(),
        )
        self._node = NodeSetting(base_env={"PATH": "/usr/bin:/bin"}, hostname=config.name, facts=self.facts,
                                 cpus=list(range(vcpus)), launch_socket=self.bridge.path)
        self._gpus_of = {}
        self._declared_unhealthy = {}
        self._starting = set()
        self._images_reported = -1
        self._performers = self._performers_table()
        self._reports = []
        self._reports_due = None
        self._obeying = 0
        self._beat_timer = None
        self._output_due = asyncio.Event()

    def _ship_output(self, attempt_id: str, final: bool = False) -> None:
        """The stub runner writes no output."""

    def _save_lease(self, heard_at: float) -> None:
        """No disk: the lease lives in memory only."""

    async def _report_images(self) -> None:
        """No container runtime."""

    async def serve(self, start_after_s: float) -> None:
        """Agent.run's loops, less the bridge, orphans and log shipping (there are none)."""
        await asyncio.sleep(start_after_s)  # real nodes do not beat in step
        self._send(self.core.register_message(agent_now()))
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._receive_loop())
                tasks.create_task(self._heartbeat_loop())
                tasks.create_task(self._monitor_loop())
        finally:
            for task in list(self._starting):
                task.cancel()
            if self._reports_due is not None:
                self._reports_due.cancel()
            self._link.close()


# ------------------------------------------------------------------------------ swarm
async def _swarm(args: argparse.Namespace) -> None:
    keys = read_keys(args.keys)[args.first:args.first + args.count]
    head_key = load_public_key(args.head_key)
    # Per agent: a DEALER, its monitor pair and a TCP connection, each with descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 8 * len(keys) + 256)) if hard != resource.RLIM_INFINITY else max(soft, 8 * len(keys) + 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    ctx = zmq.asyncio.Context(io_threads=1)
    ctx.set(zmq.MAX_SOCKETS, 4 * len(keys) + 64)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agents = []
    for i, (name, public, secret) in enumerate(keys):
        index = args.first + i
        config = AgentConfig(
            name=name, head=args.head, state_dir="/nonexistent", head_public_key=args.head_key,
            placement_group=f"pg{index // args.group_size}", heartbeat_interval_s=args.heartbeat, liveness=args.liveness,
            fence_after_s=args.fence,
        )
        agents.append(EmulatedAgent(config, KeyPair(public=public, secret=secret), head_key, ctx, args.vcpus, args.memory))
    try:
        async with asyncio.TaskGroup() as tasks:
            serving = [tasks.create_task(a.serve(args.heartbeat * i / max(1, len(agents)))) for a in agents]
            await stop.wait()
            for task in serving:
                task.cancel()
    finally:
        ctx.destroy(linger=0)


class _PhaseProfiler:
    """cProfile (CPU time) of one emulator process, one stats file per phase of the bench:
    ``$HPCBATCH_FLEET_PROFILE/emulator-FIRST-PHASE.pstats``; SIGUSR1 ends a phase (the bench
    sends it after the join, the idle figure and the load)."""

    def __init__(self, folder: str, first: int) -> None:
        import cProfile

        self._new = lambda: cProfile.Profile(time.process_time)
        self._folder, self._first, self._phase = folder, first, 0
        self._profile = self._new()
        self._profile.enable()

    def next_phase(self) -> None:
        self._profile.disable()
        self._profile.dump_stats(os.path.join(self._folder, f"emulator-{self._first}-{self._phase}.pstats"))
        self._phase += 1
        self._profile = self._new()
        self._profile.enable()

    def stop(self) -> None:
        self._profile.disable()
        self._profile.dump_stats(os.path.join(self._folder, f"emulator-{self._first}-{self._phase}.pstats"))


def swarm_main(args: argparse.Namespace) -> int:
    """``bench.fleet_emulator swarm``: serve ``--count`` emulated agents until SIGTERM or SIGINT."""
    import logging

    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    folder = os.environ.get(PROFILE_ENV)
    if not folder:
        asyncio.run(_swarm(args))
        return 0
    profiler = _PhaseProfiler(folder, args.first)
    signal.signal(signal.SIGUSR1, lambda signum, frame: profiler.next_phase())
    try:
        asyncio.run(_swarm(args))
    finally:
        profiler.stop()
    return 0
