"""What must hold after every chaos round, read from the store itself and from the nodes.

The jobs are read straight from the store the heads share (SQLite's file or PostgreSQL's
database, whichever the cluster runs on), not through a head: what counts is what was
committed.

* every acknowledged job is present;
* no job ever had two live attempts at once and no attempt started twice (``StartLog``:
  every job appends "JOBID ATTEMPT" to one file as it starts; a line seen twice is a
  duplicate start);
* no command ran to completion twice (every job appends "JOBID ATTEMPT" to the start log's
  ``.done`` sibling as its last act; a job id seen twice there is a duplicate completion —
  chaos loads have no retry strategy, so any second completion is a run the head should
  not have started);
* no process of a chaos job is left on any node once its job is final (found by the
  ``CHAOS_TAG`` every chaos job carries in its environment: /proc/PID/environ);
* every finished job's exit code is the one its command exits with.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hpcbatch.model.jobs import JobRecord
from hpcbatch.store import open_store
from tests.harness import TestCluster, wait_for

FINAL = ("SUCCEEDED", "FAILED")


def done_log(starts: Path) -> Path:
    """Where jobs of the start log ``starts`` record that they ran to completion."""
    return starts.with_name(starts.name + ".done")


def job_script(starts: Path, exit_code: int, sleep_s: float = 0) -> list[str]:
    """A job that records its start, optionally sleeps, records its completion, and exits ``exit_code``."""
    nap = f"sleep {sleep_s}; " if sleep_s else ""
    mark = '"$AWS_BATCH_JOB_ID $AWS_BATCH_JOB_ATTEMPT"'
    return ["sh", "-c", f"echo {mark} >> {starts}; {nap}echo {mark} >> {done_log(starts)}; exit {exit_code}"]


def chaos_env(tag: str) -> list[dict[str, str]]:
    return [{"name": "CHAOS_TAG", "value": tag}]


def live_processes(tag: str) -> dict[str, list[int]]:
    """Job id -> pids of the live processes of chaos jobs tagged ``tag``, on every node."""
    found: dict[str, list[int]] = {}
    for (job, _attempt), pids in live_attempts(tag).items():
        found.setdefault(job, []).extend(pids)
    return found


def two_live_attempts(tag: str) -> list[str]:
    """Jobs with processes of more than one attempt alive right now."""
    attempts: dict[str, set[str]] = {}
    for job, attempt in live_attempts(tag):
        attempts.setdefault(job, set()).add(attempt)
    return sorted(job for job, seen in attempts.items() if len(seen) > 1)


def live_attempts(tag: str) -> dict[tuple[str, str], list[int]]:
    """(job id, attempt id) -> pids of the live processes of chaos jobs tagged ``tag``."""
    marker = f"CHAOS_TAG={tag}".encode()
    found: dict[tuple[str, str], list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker not in environ:
            continue
        env = dict(v.split(b"=", 1) for v in environ if b"=" in v)
        # HPCBATCH_ATTEMPT_ID would be exact; the attempt number tells attempts apart too.
        key = (env.get(b"AWS_BATCH_JOB_ID", b"?").decode(), env.get(b"AWS_BATCH_JOB_ATTEMPT", b"?").decode())
        found.setdefault(key, []).append(int(entry.name))
    return found


def duplicate_starts(starts: Path) -> list[str]:
    """Lines ("JOBID ATTEMPT") written more than once: an attempt started twice."""
    if not starts.exists():
        return []
    counts = Counter(line for line in starts.read_text().splitlines() if line.strip())
    return sorted(line for line, n in counts.items() if n > 1)


def duplicate_completions(starts: Path) -> list[str]:
    """Job ids whose command ran to completion more than once (see ``done_log``)."""
    done = done_log(starts)
    if not done.exists():
        return []
    counts = Counter(line.split()[0] for line in done.read_text().splitlines() if line.strip())
    return sorted(job for job, n in counts.items() if n > 1)


def describe_all(cluster: TestCluster, job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    ids = list(job_ids)
    out: dict[str, dict[str, Any]] = {}
    for i in range(0, len(ids), 100):
        for job in cluster.client.describe_jobs(jobs=ids[i:i + 100])["jobs"]:
            out[job["jobId"]] = job
    return out


def stored_jobs(cluster: TestCluster, job_ids: Iterable[str]) -> dict[str, JobRecord]:
    """The jobs as committed to the cluster's store (SQLite file or PostgreSQL database)."""
    store = open_store(cluster.store_url or str(cluster.root / "head" / "hpcbatch.db"))
    ids = list(job_ids)
    try:
        return {job.job_id: job for i in range(0, len(ids), 500) for job in store.get_jobs(ids[i:i + 500])}
    finally:
        store.close()


def wait_final(cluster: TestCluster, job_ids: Iterable[str], timeout: float) -> dict[str, dict[str, Any]]:
    ids = list(job_ids)

    def all_final() -> dict[str, dict[str, Any]] | None:
        jobs = describe_all(cluster, ids)
        return jobs if len(jobs) == len(ids) and all(j["status"] in FINAL for j in jobs.values()) else None

    return wait_for(all_final, timeout, interval=0.5, what=f"{len(ids)} jobs to finish")


def violations(cluster: TestCluster, acknowledged: dict[str, int], starts: Path, tag: str,
               lost_ok: bool = False) -> dict[str, list[str]]:
    """Every broken invariant, by kind (empty lists when all hold). Call once all are final.

    ``acknowledged``: job id -> the exit code its command exits with. ``lost_ok``: a round
    that killed agents or cut links may fail an attempt as lost (no exit code); it must
    never report a wrong one.
    """
    jobs = stored_jobs(cluster, acknowledged)
    lost = sorted(set(acknowledged) - set(jobs))
    wrong_exit = []
    for job_id, expected in acknowledged.items():
        job = jobs.get(job_id)
        if job is None:
            continue
        code = job.attempts[-1].exit_code if job.attempts else None
        if code is None and lost_ok and job.status == "FAILED":
            continue
        want = "SUCCEEDED" if expected == 0 else "FAILED"
        if code != expected or job.status != want:
            wrong_exit.append(f"{job_id}: {job.status} exit {code} ({job.status_reason}), expected {expected}")
    return {
        "jobs_lost": lost,
        "duplicate_starts": duplicate_starts(starts),
        "duplicate_completions": duplicate_completions(starts),
        "orphans": [f"{job}: pids {pids}" for job, pids in live_processes(tag).items()],
        "wrong_exit_codes": wrong_exit,
    }
