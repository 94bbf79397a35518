"""What one trivial job costs the node agent, in CPU, as ``name=value`` lines (issue 22).

Two measures, medians over ``ROUNDS`` rounds of ``N`` ``true`` jobs each:

* ``agent_runner_cpu_ms_per_job``: a ``Runner`` driven directly (as ``bench.agent_spawn_bench``
  does), started and waited for back to back, set up as the local cluster's agent runs a job:
  the agent's own user as owner (``allow_root_jobs`` when root), its memory cgroup when this
  machine has one, the shim, an environment of the size ``node_agent.main`` builds. The
  runner's share only: no messages. ``agent_runner_sys_ms_per_job``: of which in the kernel
  (file system and cgroup work; what a loaded machine inflates most).
  ``agent_runner_jobs_per_s``: the same rounds' pace. ``--window K`` keeps at most ``K``
  attempts live at once, as on a node of ``K`` vCPUs the scheduler fills with 1-vCPU jobs
  (then exits and starts interleave, and an ended job's cgroup can serve the next one);
  the default 0 starts all ``N`` back to back before any exit is seen.
* ``agent_cluster_cpu_ms_per_job``: a real one-node local cluster (head and agent processes,
  CurveZMQ), ``N`` jobs submitted at once; the agent process's CPU (psutil ``cpu_times``,
  user + system, the process's own, not its children's) over the burst / ``N``. The
  difference to the runner's figure is the agent's messages and dispatch
  (``node_agent.main``). ``head_cluster_cpu_ms_per_job``: the head's, for comparison.

``--profile DIR`` also writes cProfile's top entries (cumulative and tottime) to
``DIR/runner_profile.txt`` (one more runner round, under the profiler) and, with the cluster
measure, ``DIR/agent_profile.txt`` (the agent process of one more cluster round run under
cProfile, ``bench.profiled_agent``).

Session 8, a memory cgroup reused by its owner's next job (``node_agent.cgroups.CgroupPool``)
instead of mkdir and rmdir per job: a 4-node local cluster on tmpfs, 1,000 ``true`` jobs,
three alternated pairs before | after (agents' own CPU per job, psutil): 1.58 | 1.38 ms
(medians; 1.40-1.90 | 1.17-1.39), e2e 398.5 | 450.9 jobs/s (336.6-438.1 | 443.9-496.0).
``bench.cluster_bench --quick`` in the same sitting, three alternated pairs:
``array_1000_true_s`` 2.21 | 1.97 (medians), ``e2e_1000_true_jobs_per_s`` 375.5 | 375.7.
The cProfile of the agent shows the cgroup's mkdir and rmdir gone (mkdir 3 -> 2 per job,
rmdir 1 -> 0).

Run: ``python -m bench.agent_cost_bench [--jobs N] [--rounds R] [--window K] [--runner-only] [--profile DIR]``
(default 500 jobs, 3 rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import pwd
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from bench.cluster_bench import _submit_body, _wait_all_done
from hpcbatch.client import Client
from hpcbatch.localcluster import LocalCluster
from hpcbatch.localrecord import ClusterShape
from node_agent.runner import AttemptResult, AttemptSpec, CgroupUnavailable, Runner

# About what node_agent.main hands a bare job: the agent's base environment plus AWS's.
ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOSTNAME": "node1",
    "AWS_BATCH_JOB_ID": "00000000-0000-0000-0000-000000000000", "AWS_BATCH_JOB_ATTEMPT": "1",
    "AWS_BATCH_JQ_NAME": "default", "AWS_BATCH_CE_NAME": "default",
    "HPCBATCH_JOB_NAME": "bench", "HPCBATCH_NODE": "node1",
}
PROFILE_LINES = 35
REPO = Path(__file__).resolve().parents[1]


def _memory_mode() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            asyncio.run(Runner(Path(tmp), on_exit=lambda r: None, memory_enforcement="cgroup").shutdown(kill=True))
        except CgroupUnavailable as exc:
            print(f"# cgroup mode unavailable: {exc}", file=sys.stderr)
            return "rss"
    return "cgroup"


async def _runner_round(state: Path, mode: str, n: int, window: int = 0) -> tuple[float, float, float]:
    """(jobs per second, agent CPU ms per job, of which system) for ``n`` ``true`` attempts,
    at most ``window`` live at once (0: no bound)."""
    done = asyncio.Event()
    room = asyncio.Event()
    ended = 0
    user = pwd.getpwuid(os.geteuid()).pw_name

    def on_exit(_result: AttemptResult) -> None:
        nonlocal ended
        ended += 1
        room.set()
        if ended == n:
            done.set()

    runner = Runner(state, on_exit=on_exit, memory_enforcement=mode, allow_root_jobs=os.geteuid() == 0)
    try:
        times0, t0 = os.times(), time.perf_counter()
        for i in range(n):
            while window and i - ended >= window:
                room.clear()
                await room.wait()
            spec = AttemptSpec(f"a{i}", f"j{i}", 1, ["true"], dict(ENV), 1, 2048, timeout_s=3600, user=user)
            outcome = await runner.start(spec)
            assert isinstance(outcome, int), outcome
        async with asyncio.timeout(120):
            await done.wait()
        for i in range(n):  # the head acknowledges every result: the agent forgets it
            runner.forget(f"a{i}")
        wall, times1 = time.perf_counter() - t0, os.times()
    finally:
        await runner.shutdown(kill=True)
    user, system = times1.user - times0.user, times1.system - times0.system
    return n / wall, (user + system) * 1000 / n, system * 1000 / n


def runner_figures(n: int, rounds: int, profile: Path | None, window: int = 0) -> dict[str, str]:
    mode = _memory_mode()
    samples = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            samples.append(asyncio.run(_runner_round(Path(tmp), mode, n, window)))
    if profile is not None:
        prof = cProfile.Profile(time.process_time)  # CPU, not wall: the figure is CPU
        with tempfile.TemporaryDirectory() as tmp:
            prof.runcall(asyncio.run, _runner_round(Path(tmp), mode, n, window))
        (profile / "runner_profile.txt").write_text(_top(pstats.Stats(prof), f"runner, {mode}, {n} jobs"))
    return {
        "agent_memory_mode": mode,
        "agent_runner_jobs_per_s": f"{statistics.median(s[0] for s in samples):.0f}",
        "agent_runner_cpu_ms_per_job": f"{statistics.median(s[1] for s in samples):.3f}",
        "agent_runner_sys_ms_per_job": f"{statistics.median(s[2] for s in samples):.3f}",
    }


def _top(stats: pstats.Stats, title: str) -> str:
    out = io.StringIO()
    out.write(f"# cProfile: {title}\n")
    for order in ("cumulative", "tottime"):
        stats.stream = out  # type: ignore[attr-defined]
        stats.sort_stats(order).print_stats(PROFILE_LINES)
    return out.getvalue()


def _cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _cluster_round(n: int, profile_dir: Path | None) -> tuple[float, float, float]:
    """(agent CPU ms per job, head CPU ms per job, jobs per second) on a fresh 1-node cluster."""
    home = tempfile.mkdtemp(prefix="hpcbatch-agentcost-")
    cluster: LocalCluster = _ProfiledCluster(home) if profile_dir is not None else LocalCluster(home)
    saved_path = os.environ.get("PYTHONPATH")
    if profile_dir is not None:
        os.environ["HPCBATCH_BENCH_PROFILE"] = str(profile_dir.resolve() / "agent.pstats")
        os.environ["PYTHONPATH"] = str(REPO)  # the agent starts in the cluster's folder: find bench/
    try:
        cluster.up(ClusterShape(nodes=1))
        assert cluster.endpoint is not None
        procs = (cluster.record() or {})["processes"]
        agent = next(int(r["pid"]) for name, r in procs.items() if name.startswith("node"))
        head = int(procs["head"]["pid"])
        with Client(cluster.endpoint, timeout=30, max_workers=8) as client:
            _wait_all_done(client, [client.submit_job(**_submit_body(0, ["true"]))["jobId"]])  # warm
            time.sleep(0.5)
            a0, h0, t0 = _cpu(agent), _cpu(head), time.perf_counter()
            futures = [client.submit_job_async(**_submit_body(i, ["true"])) for i in range(n)]
            ids = [f.result()["jobId"] for f in futures]
            _wait_all_done(client, ids)
            wall = time.perf_counter() - t0
            a1, h1 = _cpu(agent), _cpu(head)
    finally:
        cluster.down()
        os.environ.pop("HPCBATCH_BENCH_PROFILE", None)
        if saved_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_path
        shutil.rmtree(home, ignore_errors=True)
    return (a1 - a0) * 1000 / n, (h1 - h0) * 1000 / n, n / wall


def cluster_figures(n: int, rounds: int, profile: Path | None) -> dict[str, str]:
    samples = [_cluster_round(n, None) for _ in range(rounds)]
    if profile is not None:
        _cluster_round(n, profile)
        stats = pstats.Stats(str(profile / "agent.pstats"))
        (profile / "agent_profile.txt").write_text(_top(stats, f"agent process, 1-node cluster, {n}+1 jobs"))
    med: Callable[[int], float] = lambda i: statistics.median(s[i] for s in samples)  # noqa: E731
    return {
        "agent_cluster_cpu_ms_per_job": f"{med(0):.3f}",
        "head_cluster_cpu_ms_per_job": f"{med(1):.3f}",
        "agent_cluster_jobs_per_s": f"{med(2):.0f}",
    }


class _ProfiledCluster(LocalCluster):
    """A LocalCluster whose agents run under cProfile (``bench.profiled_agent``)."""

    AGENT_MODULE = "bench.profiled_agent"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window", type=int, default=0, help="at most this many attempts live at once (0: all)")
    ap.add_argument("--runner-only", action="store_true")
    ap.add_argument("--profile", type=Path)
    args = ap.parse_args()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    figures = {"agent_cost_jobs": str(args.jobs), "agent_cost_rounds": str(args.rounds)}
    if args.window:
        figures["agent_cost_window"] = str(args.window)
    figures.update(runner_figures(args.jobs, args.rounds, args.profile, args.window))
    if not args.runner_only:
        figures.update(cluster_figures(args.jobs, args.rounds, args.profile))
    for name, value in figures.items():
        print(f"{name}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
