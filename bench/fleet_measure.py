"""The measuring side of bench/fleet: a fresh local head per size with its emulators, or a running head; the figures.

``run_size`` starts a head and ``bench.fleet_emulator swarm`` processes on this machine and
hands the head to ``measure``; ``measure`` alone serves ``bench.fleet_emulator measure``
against a head elsewhere. The figures' names and meanings: bench/fleet_emulator.py.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import wait
from dataclasses import dataclass
from typing import Any

import psutil

from bench.fleet_keys import enroll, make_keys, write_keys
from bench.fleet_swarm import PROFILE_ENV
from hpcbatch.client import Client
from hpcbatch.curve import ensure_keypair
from hpcbatch.errors import HpcbatchError


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
    return sum(n.get("state") == "ACTIVE" for n in client.all_nodes())


def _start_latencies(client: Client, submitted: dict[str, float]) -> list[float]:
    _wait("jobs started", lambda: all(j.get("startedAt") for j in _describe(client, list(submitted))), 120)
    return [(j["startedAt"] - submitted[j["jobId"]]) / 1000 for j in _describe(client, list(submitted))]


@dataclass(frozen=True)
class HeadUnderTest:
    """The head measured: its API client, its process, and its log (where its lost nodes are counted)."""

    client: Client
    pid: int
    log: str | None = None


def measure(target: HeadUnderTest, nodes: int, args: argparse.Namespace, emulators: list[int],
            stall: Callable[[], dict[str, Any]] | None) -> dict[str, Any]:
    """The figures of one size against a head with ``nodes`` nodes ACTIVE."""
    client, head_pid, head_log = target.client, target.pid, target.log
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
    listed: dict[str, list[float]] = {"listnodes_s": [], "listnodes_all_s": []}
    for _ in range(3):
        for figure, call in (("listnodes_s", client.list_nodes), ("listnodes_all_s", client.all_nodes)):
            t0 = time.perf_counter()
            call()
            listed[figure].append(time.perf_counter() - t0)
    out.update({figure: round(statistics.median(seconds), 4) for figure, seconds in listed.items()})
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
        out.update(measure(HeadUnderTest(client, head.pid, head_log), nodes, args, [pr.pid for pr in procs[1:]], stall))
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
