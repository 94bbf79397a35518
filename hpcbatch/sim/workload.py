"""Workloads for the simulator: the Standard Workload Format (SWF) and a seeded synthetic one.

SWF is the Parallel Workloads Archive's format (Feitelson et al.): one job per line, 18
whitespace-separated fields, ``;`` comments, -1 for unknown. Used here: 1 job number,
2 submit time, 4 run time, 5 allocated processors, 8 requested processors, 9 requested
time, 12 user id, 14 executable (application) number, the job definition here. Jobs with no run time or no processors (cancelled before they ran) are
skipped, as the archive's cleaning guidelines suggest.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
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
    definition: str = ""  # the application (job definition): run-time predictions key on it


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
        app = fields[13] if len(fields) > 13 and fields[13] != "-1" else ""
        yield SimJob(f"swf{number}", submit, run, procs, requested if requested > 0 else None, f"u{fields[11]}",
                     f"app{app}" if app else "")


def load_swf(path: str | Path) -> list[SimJob]:
    with open(path, encoding="utf-8") as f:
        return list(parse_swf(f))


def synthetic(count: int, cores_per_node: int, nodes: int, seed: int = 1, load: float = 0.9) -> list[SimJob]:
    """A mixed workload: mostly small jobs, some whole-node and multi-node ones, at ``load``.

    As in real traces (Tsafrir et al.), users re-run the same few applications: 16 users (a
    few submit most), each with 1-4 applications of one size and a typical run time
    (log-normal across applications); a job runs its application's time within a log-normal
    spread (sigma 0.5, about +-50%). Requested times over-estimate run times by 1-5x, as
    users do.
    """
    rng = random.Random(seed)
    sizes = [1, 1, 1, 2, 2, 4, cores_per_node, cores_per_node * 2, cores_per_node * 4]
    apps = [
        [(rng.choice(sizes), rng.lognormvariate(6.0, 1.2)) for _ in range(rng.randint(1, 4))]
        for _ in range(16)
    ]
    weights = [1 / (u + 1) for u in range(len(apps))]
    picks = []
    for _ in range(count):
        user = rng.choices(range(len(apps)), weights)[0]
        app = rng.randrange(len(apps[user]))
        procs, typical = apps[user][app]
        picks.append((user, app, procs, min(typical * rng.lognormvariate(0.0, 0.5), 86_400.0)))
    work = sum(p * r for _, _, p, r in picks)
    span = work / (nodes * cores_per_node * load)
    t = 0.0
    out = []
    for i, (user, app, procs, run) in enumerate(picks):
        t += rng.expovariate(count / span)
        out.append(SimJob(f"syn{i}", round(t, 1), round(run, 1), procs,
                          round(run * rng.uniform(1.0, 5.0), 1), f"u{user}", f"app{user}-{app}"))
    return out


def scale_load(jobs: list[SimJob], factor: float) -> list[SimJob]:
    """The same jobs arriving ``factor`` times as fast (inter-arrival times divided by it)."""
    if factor <= 0:
        raise ValueError(f"load factor must be positive (got {factor})")
    if not jobs:
        return []
    first = min(j.submit_s for j in jobs)
    return [replace(j, submit_s=first + (j.submit_s - first) / factor) for j in jobs]


def without_estimates(jobs: list[SimJob]) -> list[SimJob]:
    """The same jobs with no requested time (AWS Batch jobs rarely carry a timeout)."""
    return [replace(j, requested_s=None) for j in jobs]
