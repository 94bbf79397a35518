"""Thousands of emulated nodes against one real head: the fleet's figures as ``name=value`` lines.

Each emulated node is the project's own ``node_agent.main.Agent`` (its register, heartbeat,
fence, receive, dispatch and monitor logic, unchanged) with a stub runner: ``sleep S`` lasts S
seconds, any other command exits 0 at once; no process, cgroup, work directory or output.
Many agents share one process, one asyncio loop and one ZeroMQ context; every agent has its
own DEALER socket, its own Curve key pair (enrolled in bulk: the public keys are pre-seeded
into the head's ``node_keys/accepted/``) and the real handshake. Processes hold at most
``--per-process`` agents (default 400), so an emulator never starves its own agents.

``bench/fleet`` (all on this machine, a fresh head per size)::

    bench/fleet --nodes 1000,5000            # figures per size
    bench/fleet --nodes 1000 --stall 10      # and a 10 s SIGSTOP of the head under running jobs

Figures, per size N (suffix ``_N``): ``join_s`` (all N ACTIVE), ``head_cpu_idle_pct`` and
``head_cpu_load_pct`` (% of one core: idle, then during the throughput run), ``head_rss_mib``,
``emulator_cpu_max_pct`` (the busiest emulator process: under 100 means it kept up),
``nodes_lost`` (the head's "lost" log lines over the whole run), ``listnodes_s`` (median of
3), ``single_submit_to_start_median_s``/``_p99_s`` (one job at a time), ``gang64_submit_to
_start_median_s``/``_p99_s`` (64-node gangs), ``jobs_per_s`` (``--jobs`` ``true`` jobs,
submit to all SUCCEEDED) and, with ``--stall``, ``stall_nodes_lost``/``stall_jobs_retried``.
The agents' own cost, which on one machine is taken from the head: ``agent_cpu_us_per_heartbeat``
(all emulators' CPU while idle, per node per heartbeat interval: the beat, the head's answer,
libzmq's I/O thread), ``emulator_cpu_load_pct`` (all emulators, % of one core, during the
throughput run) and ``agent_cpu_us_per_job`` (their CPU over that run less the idle rate, per
job). ``HPCBATCH_FLEET_PROFILE=DIR bench/fleet ...`` profiles every emulator (cProfile, CPU
time) into ``DIR/emulator-FIRST-PHASE.pstats``: phase 0 the join, 1 idle, 2 the jobs.

Measured here (2 shared cores, one sitting, each command once, A = issue 22's head, B = the
head before it, same emulators; 1-min load average when each size began: A 3.6/4.1, B 10.2/6.9):

    figure (1,000 | 5,000 nodes)        A              B
    head_cpu_idle_pct                   6.7 | 28.3     8.9 | 38.1
    join_s                              2.1 | 10.3     4.4 | 68.4
    listnodes_s (all, unpaged)          0.018 | 0.36   0.045 | 5.3
    single submit->start p99 s          0.018 | 0.25   0.068 | 2.6
    gang64 submit->start median s       0.0045 | 0.012  0.0057 | 0.021
    jobs_per_s                          1966 | 459     1801 | 255
    10 s SIGSTOP: nodes lost, jobs lost 0, 0 | 0, 0    1000, 200 | 4956, 200

The agents' cost (same sitting, 21:35-22:31, 2 cores shared with other work: 1-min load 2.4
to 10, so jobs/s swings twofold between runs; the CPU figures hold). O = the agent before the
pure core (1afb6e8), M = the agent after it and batching (b13f4ff), N = this one (the
socket read and written without pyzmq's futures, beats from a timer, a ZMTP PING every half
timeout, not every beat). 1,000 nodes, ``--idle 5 --singles 10 --gangs 2 --jobs 2000``,
medians of 3, this head::

    figure                          O       M       N
    agent_cpu_us_per_heartbeat      110     138     68
    emulator_cpu_load_pct           17.9    20.6    9.4
    head_cpu_idle_pct               7.6     7.6     6.4

5,000 nodes, ``--idle 3 --singles 10 --gangs 2 --jobs 2000``, each run listed (one or two)::

    with this head                  O           M            N
    agent_cpu_us_per_heartbeat      131         141, 190     77, 71
    emulator_cpu_load_pct           66          83, 99       41, 42
    head_cpu_idle_pct               32.0        30.3, 36.3   25.0, 22.7
    jobs_per_s                      4.6         8.2, 3.6     28.4, 19.2
    with the head of 1afb6e8 (--head-src)
    agent_cpu_us_per_heartbeat      112, 138    170          81, 91
    emulator_cpu_load_pct           64, 71      90           40, 44
    jobs_per_s                      43.2, 22.9  16.1         32.1, 11.9

Where M's emulators took a core under load the head's loop stalled for 4 s at a time. The
jobs/s of this head with O's agents (4.6) against O's own head (43.2, 22.9) is the head's
business, not the agents' (with N's agents the two heads are within the noise).
Profile of one idle phase (1,000 nodes, 10 s, cProfile of the three emulators, main thread):
O 5.6 s, M 6.3 s, N 3.0 s; M's extra was pyzmq's future machinery (a NOBLOCK receive that
fails after every message, a future and several EVENTS reads per send and receive).

10,000 nodes from other machines against a real head (this 2-core machine cannot host them)::

    # on the head's machine: N key pairs, the public ones enrolled in the head's key folder
    .venv/bin/python -m bench.fleet_emulator keys --nodes 10000 --out fleet-keys.txt \\
        --enroll /var/lib/hpcbatch/node_keys
    # copy fleet-keys.txt and the head's public key to each emulator machine; on machine i of
    # 4, nodes 2500*i .. 2500*i+2499, 400 agents a process (more starve their own loop):
    for first in $(seq $((2500*i)) 400 $((2500*i+2499))); do
        .venv/bin/python -m bench.fleet_emulator swarm --head tcp://HEAD:8472 --head-key head.key \
            --keys fleet-keys.txt --first $first --count $((first+400 > 2500*(i+1) ? 2500*(i+1)-first : 400)) &
    done

Run ``bench.fleet_emulator measure --endpoint URL --head-pid PID --nodes 10000`` on the head's
machine for the same figures against that head (it submits to the job queue ``default``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import wait
from pathlib import Path
from typing import Any

import psutil
import zmq
import zmq.asyncio

from hpcbatch import __version__
from hpcbatch import protocol as p
from hpcbatch.client import Client
from hpcbatch.curve import KeyPair, ensure_keypair, load_public_key
from hpcbatch.errors import HpcbatchError
from node_agent.attempt_env import NodeSetting
from node_agent.config import AgentConfig
from node_agent.head_link import HeadLink
from node_agent.main import Agent
from node_agent.main import _now as agent_now
from node_agent.runner import AttemptResult, AttemptSpec
from node_agent.state import AgentIdentity, AgentState

PER_PROCESS = 400
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


# ------------------------------------------------------------------------------- keys
def make_keys(count: int, prefix: str = "fnode") -> list[tuple[str, bytes, bytes]]:
    """``count`` (name, public, secret) Curve key pairs, Z85."""
    return [(f"{prefix}{i}", *zmq.curve_keypair()) for i in range(count)]


def write_keys(path: str, keys: list[tuple[str, bytes, bytes]]) -> None:
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="ascii") as f:
        for name, public, secret in keys:
            f.write(f"{name} {public.decode()} {secret.decode()}\n")


def read_keys(path: str) -> list[tuple[str, bytes, bytes]]:
    with open(path, encoding="ascii") as f:
        return [(n, pub.encode(), sec.encode()) for n, pub, sec in (line.split() for line in f if line.strip())]


def enroll(node_keys_dir: str, keys: list[tuple[str, bytes, bytes]]) -> None:
    """Pre-seed every public key as accepted (what Ansible does for real nodes)."""
    accepted = os.path.join(node_keys_dir, "accepted")
    os.makedirs(accepted, exist_ok=True)
    for name, public, _ in keys:
        with open(os.path.join(accepted, name), "wb") as f:
            f.write(public + b"\n")


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


def _swarm_main(args: argparse.Namespace) -> int:
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


# ----------------------------------------------------------------------------- measuring
class _CpuMeter:
    """% of one core a process used between ``start`` and ``stop``."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)

    def start(self) -> None:
        t = self.proc.cpu_times()
        self._cpu, self._wall = t.user + t.system, time.monotonic()

    def stop(self) -> float:
        return round(100 * self.cpu_s() / (time.monotonic() - self._wall), 1)

    def cpu_s(self) -> float:
        """CPU seconds since ``start``."""
        t = self.proc.cpu_times()
        return t.user + t.system - self._cpu


def _next_profile_phase(emulators: list[int]) -> None:
    """Profiled emulators (``$HPCBATCH_FLEET_PROFILE``) start their next phase's stats."""
    if os.environ.get(PROFILE_ENV):
        for pid in emulators:
            os.kill(pid, signal.SIGUSR1)


def _quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def _body(i: int, command: list[str]) -> dict[str, Any]:
    return {"jobName": f"fleet-{i}", "jobQueue": "default", "jobDefinition": "hpcbatch-default",
            "containerOverrides": {"command": command}}


def _gang_body(nodes: int) -> dict[str, Any]:
    return {"jobName": "fleet-gang", "jobQueue": "default", "jobDefinition": "hpcbatch-default-mnp",
            "nodeOverrides": {"numNodes": nodes, "nodePropertyOverrides": [
                {"targetNodes": f"0:{nodes - 1}", "containerOverrides": {"command": ["sleep", "0.2"]}}]}}


def _wait(what: str, check: Callable[[], bool], timeout: float, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"fleet bench: {what} not reached after {timeout:.0f} s")
        time.sleep(every)


def _describe(client: Client, ids: list[str]) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    for i in range(0, len(ids), 100):
        jobs.extend(client.describe_jobs(jobs=ids[i:i + 100])["jobs"])
    return jobs


def _all_done(client: Client, ids: list[str]) -> bool:
    jobs = _describe(client, ids)
    failed = [j for j in jobs if j["status"] == "FAILED"]
    if failed:
        raise SystemExit(f"fleet bench: job {failed[0]['jobId']} FAILED: {failed[0].get('statusReason')}")
    return all(j["status"] == "SUCCEEDED" for j in jobs)


def _active(client: Client) -> int:
    return sum(n.get("state") == "ACTIVE" for n in client.list_nodes()["nodes"])


def _start_latencies(client: Client, submitted: dict[str, float]) -> list[float]:
    _wait("jobs started", lambda: all(j.get("startedAt") for j in _describe(client, list(submitted))), 120)
    return [(j["startedAt"] - submitted[j["jobId"]]) / 1000 for j in _describe(client, list(submitted))]


def measure(client: Client, head_pid: int, nodes: int, args: argparse.Namespace,
            emulators: list[int], head_log: str | None, stall: Callable[[], dict[str, Any]] | None) -> dict[str, Any]:
    """The figures of one size against a head with ``nodes`` nodes ACTIVE."""
    out: dict[str, Any] = {}
    head = _CpuMeter(head_pid)
    emus = [_CpuMeter(pid) for pid in emulators]
    _next_profile_phase(emulators)  # the join ends
    head.start()
    for e in emus:
        e.start()
    time.sleep(args.idle)
    out["head_cpu_idle_pct"] = head.stop()
    idle_cpu_per_s = 0.0  # the emulators' CPU seconds per second idle
    if emus:
        out["emulator_cpu_max_pct"] = max(e.stop() for e in emus)
        idle_cpu_per_s = sum(e.cpu_s() for e in emus) / args.idle
        beats_per_s = nodes / getattr(args, "heartbeat", 1.0)
        out["agent_cpu_us_per_heartbeat"] = round(1e6 * idle_cpu_per_s / beats_per_s, 1)
    _next_profile_phase(emulators)  # the idle figure ends
    listed = []
    for _ in range(3):
        t0 = time.perf_counter()
        client.list_nodes()
        listed.append(time.perf_counter() - t0)
    out["listnodes_s"] = round(statistics.median(listed), 4)
    submitted: dict[str, float] = {}
    for i in range(args.singles):
        t = time.time() * 1000
        submitted[client.submit_job(**_body(i, ["sleep", "0.5"]))["jobId"]] = t
        time.sleep(0.05)
    lat = _start_latencies(client, submitted)
    out["single_submit_to_start_median_s"] = round(statistics.median(lat), 4)
    out["single_submit_to_start_p99_s"] = round(_quantile(lat, 0.99), 4)
    _wait("single jobs done", lambda: _all_done(client, list(submitted)), 120)
    if nodes >= 64:
        gangs: list[float] = []
        for _ in range(args.gangs):
            t = time.time() * 1000
            job_id = client.submit_job(**_gang_body(64))["jobId"]
            _wait("a gang done", lambda job_id=job_id: _all_done(client, [job_id]), 120, every=0.05)
            main = client.describe_jobs(jobs=[f"{job_id}#0"])["jobs"][0]
            gangs.append((main["startedAt"] - t) / 1000)
        out["gang64_submit_to_start_median_s"] = round(statistics.median(gangs), 4)
        out["gang64_submit_to_start_p99_s"] = round(_quantile(gangs, 0.99), 4)
    out.update(_throughput(client, head, emus, args.jobs, idle_cpu_per_s))
    _next_profile_phase(emulators)  # the load ends
    if stall is not None:
        out.update(stall())
    out["head_rss_mib"] = round(psutil.Process(head_pid).memory_info().rss / (1 << 20), 1)
    out["nodes_active_at_end"] = _active(client)
    if head_log is not None:
        with open(head_log, encoding="utf-8", errors="replace") as f:
            out["nodes_lost"] = len(re.findall(r"Node \S+ lost: ", f.read()))
    return out


def _throughput(client: Client, head: _CpuMeter, emus: list[_CpuMeter], jobs: int,
                idle_cpu_per_s: float) -> dict[str, Any]:
    """``jobs`` ``true`` jobs, submitted at once: jobs/s, the head's CPU, and the agents' CPU
    per job (the emulators' CPU over the run less what they spend idle in as long)."""
    out: dict[str, Any] = {}
    head.start()
    for e in emus:
        e.start()
    t0 = time.perf_counter()
    futures = [client.submit_job_async(**_body(i, ["true"])) for i in range(jobs)]
    wait(futures)
    ids = [f.result()["jobId"] for f in futures]
    _wait("throughput jobs done", lambda: _all_done(client, ids[-100:]) and _all_done(client, ids), 600, every=0.5)
    took = time.perf_counter() - t0
    out["jobs_per_s"] = round(jobs / took, 1)
    out["head_cpu_load_pct"] = head.stop()
    if emus:
        load_cpu = sum(e.cpu_s() for e in emus)
        out["emulator_cpu_load_pct"] = round(100 * load_cpu / took, 1)
        out["agent_cpu_us_per_job"] = round(1e6 * max(0.0, load_cpu - idle_cpu_per_s * took) / jobs, 1)
    return out


def stall_check(client: Client, head_pid: int, nodes: int, seconds: float, head_log: str) -> dict[str, Any]:
    """SIGSTOP the head for ``seconds`` while jobs run on many nodes; count lost nodes and retries."""
    with open(head_log, encoding="utf-8", errors="replace") as f:
        lost_before = len(re.findall(r"Node \S+ lost: ", f.read()))
    running = min(nodes, 200)
    futures = [client.submit_job_async(**_body(i, ["sleep", str(seconds + 8)])) for i in range(running)]
    wait(futures)
    ids = [f.result()["jobId"] for f in futures]
    _wait("stall jobs running", lambda: all(j["status"] == "RUNNING" for j in _describe(client, ids)), 120)
    os.kill(head_pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(head_pid, signal.SIGCONT)
    _wait("stall jobs done", lambda: all(j["status"] in ("SUCCEEDED", "FAILED") for j in _describe(client, ids)), 180)
    jobs = _describe(client, ids)
    with open(head_log, encoding="utf-8", errors="replace") as f:
        lost = len(re.findall(r"Node \S+ lost: ", f.read())) - lost_before
    return {
        "stall_s": seconds,
        "stall_nodes_lost": lost,
        "stall_jobs_retried": sum(len(j.get("attempts") or []) > 1 for j in jobs),
        "stall_jobs_failed": sum(j["status"] == "FAILED" for j in jobs),
    }


# ------------------------------------------------------------------------ one size, local
def run_size(nodes: int, args: argparse.Namespace) -> dict[str, Any]:
    """A fresh head and ``nodes`` emulated nodes on this machine; their figures."""
    home = tempfile.mkdtemp(prefix="hpcbatch-fleet-")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        state = os.path.join(home, "head")
        os.makedirs(state, mode=0o700)
        head_key = ensure_keypair(os.path.join(state, "curve", "head.key_secret"), os.path.join(state, "curve", "head.key"))
        del head_key
        keys = make_keys(nodes)
        t0 = time.perf_counter()
        enroll(os.path.join(state, "node_keys"), keys)
        enroll_s = time.perf_counter() - t0
        keys_file = os.path.join(home, "keys.txt")
        write_keys(keys_file, keys)
        with _socket_port() as http_port, _socket_port() as fleet_port:
            pass
        config = os.path.join(home, "head.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(
                f'state_dir = "{state}"\nhttp_listen = "127.0.0.1:{http_port}"\n'
                f'api_socket = "{os.path.join(state, "api.sock")}"\nfleet_bind = "tcp://127.0.0.1:{fleet_port}"\n'
                f'heartbeat_interval_s = {args.heartbeat}\nliveness = {args.liveness}\nlog_level = "WARNING"\n'
            )
        head_log = os.path.join(home, "head.log")
        src = os.path.abspath(args.head_src) if args.head_src else None  # another checkout's head (before/after)
        env = dict(os.environ, PYTHONPATH=src) if src else None
        with open(head_log, "ab") as log:
            head = subprocess.Popen([sys.executable, "-m", "hpcbatch.head", "--config", config], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=src, env=env)
        procs.append(head)
        endpoint = f"unix:{os.path.join(state, 'api.sock')}"
        client = Client(endpoint, timeout=60, max_workers=8)
        _wait("the head answering", lambda: _answers(client), 60)
        client.create_compute_environment(computeEnvironmentName="default", type="UNMANAGED", state="ENABLED")
        client.create_job_queue(jobQueueName="default", priority=1, state="ENABLED",
                                computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "default"}])
        per = max(1, args.per_process)
        t0 = time.perf_counter()
        for first in range(0, nodes, per):
            emu_log = open(os.path.join(home, f"emulator-{first}.log"), "ab")  # noqa: SIM115 (closed by the child's exit)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "bench.fleet_emulator", "swarm", "--head", f"tcp://127.0.0.1:{fleet_port}",
                 "--head-key", os.path.join(state, "curve", "head.key"), "--keys", keys_file, "--first", str(first),
                 "--count", str(min(per, nodes - first)), "--heartbeat", str(args.heartbeat),
                 "--liveness", str(args.liveness)],
                stdin=subprocess.DEVNULL, stdout=emu_log, stderr=subprocess.STDOUT, start_new_session=True,
            ))
            emu_log.close()
        def joined() -> bool:
            dead = [pr.args for pr in procs if pr.poll() is not None]
            if dead:
                raise SystemExit(f"fleet bench: {dead[0]} exited; see {home} (--keep)")
            return _active(client) >= nodes

        _wait(f"{nodes} nodes ACTIVE", joined, 600, every=1.0)
        out: dict[str, Any] = {"enroll_s": round(enroll_s, 3), "join_s": round(time.perf_counter() - t0, 2)}
        stall = (lambda: stall_check(client, head.pid, nodes, args.stall, head_log)) if args.stall else None
        out.update(measure(client, head.pid, nodes, args, [pr.pid for pr in procs[1:]], head_log, stall))
        client.close()
        return out
    finally:
        for proc in reversed(procs):
            try:
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
            except ProcessLookupError:
                pass
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if args.keep:
            print(f"# kept {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)


def _answers(client: Client) -> bool:
    try:
        client.list_nodes()
        return True
    except (HpcbatchError, OSError):
        return False


class _socket_port:
    """A free TCP port on loopback (closed again before it is used)."""

    def __enter__(self) -> int:
        import socket

        self._s = socket.socket()
        self._s.bind(("127.0.0.1", 0))
        return int(self._s.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._s.close()


def _bench_main(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, lambda signum, frame: (_ for _ in ()).throw(SystemExit(f"stopped by signal {signum}")))
    for nodes in (int(n) for n in args.nodes.split(",")):
        load = os.getloadavg()[0]
        results = run_size(nodes, args)
        print(f"nodes={nodes}")
        print(f"loadavg_1m_before_{nodes}={load:.2f}")
        for name, value in results.items():
            print(f"{name}_{nodes}={value}")
        sys.stdout.flush()
    return 0


def _measure_main(args: argparse.Namespace) -> int:
    client = Client(args.endpoint, timeout=60, max_workers=8)
    for name, value in measure(client, args.head_pid, args.nodes_count, args, [], args.head_log, None).items():
        print(f"{name}={value}")
    return 0


def _keys_main(args: argparse.Namespace) -> int:
    keys = make_keys(args.nodes)
    write_keys(args.out, keys)
    if args.enroll:
        enroll(args.enroll, keys)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/fleet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--heartbeat", type=float, default=1.0)
    common.add_argument("--liveness", type=int, default=5)
    figures = argparse.ArgumentParser(add_help=False)
    figures.add_argument("--idle", type=float, default=15.0, help="seconds of idle head CPU measured")
    figures.add_argument("--singles", type=int, default=100, help="single jobs timed submit->start")
    figures.add_argument("--gangs", type=int, default=10, help="64-node gangs timed submit->start")
    figures.add_argument("--jobs", type=int, default=2000, help="true jobs for the throughput figure")
    bench = sub.add_parser("bench", parents=[common, figures], help="a fresh local head per size (default)")
    bench.add_argument("--nodes", default="1000")
    bench.add_argument("--per-process", type=int, default=PER_PROCESS)
    bench.add_argument("--stall", type=float, default=0.0, help="SIGSTOP the head this long under running jobs")
    bench.add_argument("--keep", action="store_true", help="keep the state folder (logs)")
    bench.add_argument("--head-src", default="", help="run the head from this source tree (a before/after comparison)")
    swarm = sub.add_parser("swarm", parents=[common], help="run emulated agents against a head")
    swarm.add_argument("--head", required=True)
    swarm.add_argument("--head-key", required=True)
    swarm.add_argument("--keys", required=True)
    swarm.add_argument("--first", type=int, default=0)
    swarm.add_argument("--count", type=int, default=PER_PROCESS)
    swarm.add_argument("--vcpus", type=int, default=2)
    swarm.add_argument("--memory", type=int, default=4096)
    swarm.add_argument("--group-size", type=int, default=128, help="nodes per placement group")
    swarm.add_argument("--fence", type=float, default=None)
    keys = sub.add_parser("keys", help="make key pairs (and enroll them in a head's key folder)")
    keys.add_argument("--nodes", type=int, required=True)
    keys.add_argument("--out", required=True)
    keys.add_argument("--enroll", default="", help="the head's node_keys_dir")
    meas = sub.add_parser("measure", parents=[figures], help="figures against a running head")
    meas.add_argument("--endpoint", required=True)
    meas.add_argument("--head-pid", type=int, required=True)
    meas.add_argument("--nodes", dest="nodes_count", type=int, required=True)
    meas.add_argument("--head-log", default=None)
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["bench", *argv]
    args = parser.parse_args(argv)
    if args.command == "swarm":
        return _swarm_main(args)
    if args.command == "keys":
        return _keys_main(args)
    if args.command == "measure":
        return _measure_main(args)
    return _bench_main(args)


if __name__ == "__main__":
    sys.exit(main())
