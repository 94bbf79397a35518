"""The agent's spawn path with and without the attempt shim, in one run, as ``name=value`` lines.

Each attempt now runs under a small sh supervisor (``node_agent.runner._SHIM``) that records
its exit status, so a restarted agent re-adopts it. This measures what that costs: ``N``
``true`` attempts started back to back through a ``Runner`` and waited for, alternating
rounds with the shim (``supervise=True``, the default) and without it (the job the agent's
own child, as before), for each memory mode this machine has (``rss``: before, a vfork
straight into the job; ``cgroup``: before, already an sh that joins the cgroup).

* ``spawn_<mode>_<shim|noshim>_per_s``: attempts started and ended per second (median round).
* ``spawn_<mode>_<shim|noshim>_agent_cpu_ms``: the agent process's CPU per attempt (its
  own cost; the shim's runs in the child).
* ``spawn_<mode>_shim_throughput_ratio``: shim / noshim throughput.

Run: ``python -m bench.agent_spawn_bench [N] [ROUNDS]`` (default 300 attempts, 3 rounds).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from node_agent.runner import AttemptResult, AttemptSpec, CgroupUnavailable, Runner

ENV = {"PATH": "/usr/bin:/bin"}


async def _round(state: Path, mode: str, supervise: bool, n: int) -> tuple[float, float]:
    """(attempts per second, agent CPU ms per attempt) for ``n`` ``true`` attempts."""
    done = asyncio.Event()
    ended = 0

    def on_exit(_result: AttemptResult) -> None:
        nonlocal ended
        ended += 1
        if ended == n:
            done.set()

    runner = Runner(state, on_exit=on_exit, memory_enforcement=mode, supervise=supervise)
    try:
        cpu0, t0 = time.process_time(), time.perf_counter()
        for i in range(n):
            outcome = await runner.start(AttemptSpec(f"a{i}", "j", 1, ["true"], ENV, 1, 64))
            assert isinstance(outcome, int), outcome
        async with asyncio.timeout(120):
            await done.wait()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        await runner.shutdown(kill=True)
    return n / wall, cpu * 1000 / n


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    modes = ["rss"]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            asyncio.run(Runner(Path(tmp), on_exit=lambda r: None, memory_enforcement="cgroup").shutdown(kill=True))
            modes.append("cgroup")
        except CgroupUnavailable as exc:
            print(f"# cgroup mode unavailable: {exc}", file=sys.stderr)
    print(f"spawn_attempts={n}")
    print(f"spawn_rounds={rounds}")
    print(f"spawn_cpus={os.cpu_count()}")
    for mode in modes:
        figures: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for _ in range(rounds):
            for supervise in (False, True):  # alternating: load changes hit both alike
                with tempfile.TemporaryDirectory() as tmp:
                    figures[supervise].append(asyncio.run(_round(Path(tmp), mode, supervise, n)))
        rate = {s: statistics.median(r for r, _ in f) for s, f in figures.items()}
        for supervise, name in ((False, "noshim"), (True, "shim")):
            print(f"spawn_{mode}_{name}_per_s={rate[supervise]:.0f}")
            print(f"spawn_{mode}_{name}_agent_cpu_ms={statistics.median(c for _, c in figures[supervise]):.3f}")
        print(f"spawn_{mode}_shim_throughput_ratio={rate[True] / rate[False]:.2f}")


if __name__ == "__main__":
    main()
