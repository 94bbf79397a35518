"""Workloads for the simulator: the Standard Workload Format (SWF) and a seeded synthetic one.

SWF is the Parallel Workloads Archive's format (Feitelson et al.): one job per line, 18
whitespace-separated fields, ``;`` comments, -1 for unknown. Used here: 1 job number,
2 submit time, 4 run time, 5 allocated processors, 8 requested processors, 9 requested
time, 12 user id. Jobs with no run time or no processors (cancelled before they ran) are
skipped, as the archive's cleaning guidelines suggest.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SimJob:
    """One job of a workload: when it arrives, how long it really runs, what it asks for."""

    job_id: str
    submit_s: float
    run_s: float
    procs: int
    requested_s: float | None  # the user's wall-time estimate (attemptDurationSeconds)
    user: str = "u0"


def parse_swf(lines: Iterable[str]) -> Iterator[SimJob]:
    """The jobs of an SWF file, in file order; a malformed line raises naming its number."""
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        fields = line.split()
        if len(fields) < 18:
            raise ValueError(f"SWF line {n}: {len(fields)} fields, the format has 18")
        try:
            number, submit, run = int(fields[0]), float(fields[1]), float(fields[3])
            procs = int(fields[4]) if int(fields[4]) > 0 else int(fields[7])
            requested = float(fields[8])
        except ValueError:
            raise ValueError(f"SWF line {n}: a field is not a number") from None
        if run <= 0 or procs <= 0:
            continue
        yield SimJob(f"swf{number}", submit, run, procs, requested if requested > 0 else None, f"u{fields[11]}")


def load_swf(path: str | Path) -> list[SimJob]:
    with open(path, encoding="utf-8") as f:
        return list(parse_swf(f))


def synthetic(count: int, cores_per_node: int, nodes: int, seed: int = 1, load: float = 0.9) -> list[SimJob]:
    """A mixed workload: mostly small jobs, some whole-node and multi-node ones, at ``load``.

    Run times are log-normal; requested times over-estimate them by 1-5x, as users do.
    """
    rng = random.Random(seed)
    sizes = [1, 1, 1, 2, 2, 4, cores_per_node, cores_per_node * 2, cores_per_node * 4]
    jobs = [(rng.choice(sizes), min(rng.lognormvariate(6.0, 1.2), 86_400.0)) for _ in range(count)]
    work = sum(p * r for p, r in jobs)
    span = work / (nodes * cores_per_node * load)
    t = 0.0
    out = []
    for i, (procs, run) in enumerate(jobs):
        t += rng.expovariate(count / span)
        out.append(SimJob(f"syn{i}", round(t, 1), round(run, 1), procs,
                          round(run * rng.uniform(1.0, 5.0), 1), f"u{rng.randrange(4)}"))
    return out
