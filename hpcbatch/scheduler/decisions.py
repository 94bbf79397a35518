"""The scheduler's decision log: what it decided, about which jobs, and which events led there.

Rules:

* Every start, reservation (new or changed), preemption, time-limit cancel and grown plan is
  one ``Decision``: its text (as ``hpcbatch why`` shows it), the jobs it is about (its subject
  first; a backfill also names the job whose reservation it ran before, a preemption its
  victim and the job it stops it for, an array task its array) and its causes.
* Causes: the event that made the job RUNNABLE (``JobRunnable``, of whichever pass) and every
  event of the pass that decided it which changes capacity, policy or time (all but other
  jobs' arrivals: a node joining or leaving, an attempt ending, a job withdrawn, a queue or
  compute environment changing, the ``Tick``). ``cause`` is the id of the pass's last event.
* The log is bounded (``maxlen`` decisions in all, oldest dropped first) and keyed by job id:
  ``about(job_id)`` is a dictionary look-up, never a search of the texts, so job ``a1`` never
  sees the decisions about ``a10``.
* Iterating the log yields ``(cause, text)`` pairs, oldest first, as the log always did.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import NamedTuple


# Named tuples of strings, not dataclasses: the cyclic garbage collector stops tracking such
# tuples, so a full log of 10,000 decisions adds nothing to its passes over a large state.
class Cause(NamedTuple):
    """One event that led to a decision: its type (``JobRunnable``, ``AttemptEnded``...) and id."""

    kind: str
    event_id: str
    job_id: str | None = None  # the job the event names, if any


class Decision(NamedTuple):
    """One logged decision; see the module docstring."""

    cause: str  # the id of the last event of the pass that made it
    text: str
    jobs: tuple[str, ...]  # the jobs it is about, its subject first: the log's keys
    causes: tuple[Cause, ...] = ()


class DecisionLog:
    """The bounded log of decisions, indexed by every job a decision is about."""

    def __init__(self, maxlen: int = 10_000, per_job: int = 100) -> None:
        self._log: deque[Decision] = deque()
        self._maxlen = maxlen
        self._per_job = per_job
        self._by_job: dict[str, tuple[Decision, ...]] = {}  # tuples: few per job, untracked by the GC

    def record(self, decision: Decision) -> None:
        """Log ``decision`` under each of its jobs; the oldest decision goes when full."""
        if self._maxlen <= 0:
            return
        if len(self._log) >= self._maxlen:
            self._forget(self._log.popleft())
        self._log.append(decision)
        jobs = decision.jobs
        by_job = self._by_job
        for job_id in jobs if len(jobs) == 1 else dict.fromkeys(jobs):
            mine = by_job.get(job_id)
            if mine is None:
                by_job[job_id] = (decision,)
            elif len(mine) < self._per_job:
                by_job[job_id] = (*mine, decision)
            else:
                by_job[job_id] = (*mine[1:], decision)

    def append(self, entry: tuple[str, str]) -> None:
        """Log a ``(cause, text)`` pair written in the core's own phrasing (``start X on ...``,
        ``reserve for X: ...``): its jobs are read from that phrasing. The core itself logs
        with ``record`` and names the jobs; this keeps the old way of adding one working."""
        cause, text = entry
        self.record(Decision(cause, text, jobs_named(text)))

    def about(self, job_id: str, limit: int = 20) -> list[Decision]:
        """The latest ``limit`` decisions about ``job_id``, oldest first."""
        mine = self._by_job.get(job_id)
        if not mine or limit <= 0:
            return []
        return list(mine[-limit:])

    def last(self, job_id: str) -> Decision | None:
        """The latest decision about ``job_id``, with the events that led to it."""
        mine = self._by_job.get(job_id)
        return mine[-1] if mine else None

    def _forget(self, old: Decision) -> None:
        """``old`` left the log: drop it from its jobs' entries (it is their oldest)."""
        for job_id in dict.fromkeys(old.jobs):
            mine = self._by_job.get(job_id)
            if mine and mine[0] is old:
                if len(mine) > 1:
                    self._by_job[job_id] = mine[1:]
                else:
                    del self._by_job[job_id]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((d.cause, d.text) for d in self._log)

    def __len__(self) -> int:
        return len(self._log)

    def __bool__(self) -> bool:
        return bool(self._log)


def jobs_named(text: str) -> tuple[str, ...]:
    """The jobs a decision text in the core's phrasing is about, its subject first.

    ``start X on ...`` / ``start gang X on ...`` (``, backfilled before R's reservation``),
    ``reserve for X: ...``, ``plan for X: ...``, ``cancel X: ...``, ``preempt V for P on ...``.
    An array task ``A:i`` is about its array ``A`` too.
    """
    words = text.split()
    jobs: list[str] = []
    if len(words) >= 2:
        if words[0] == "start":
            jobs.append(words[2] if words[1] == "gang" and len(words) > 2 else words[1])
        elif words[0] in ("reserve", "plan") and words[1] == "for" and len(words) > 2:
            jobs.append(words[2].rstrip(":"))
        elif words[0] == "cancel":
            jobs.append(words[1].rstrip(":"))
        elif words[0] == "preempt":
            jobs.append(words[1])
            if len(words) > 3 and words[2] == "for":
                jobs.append(words[3])
    if "before" in words:
        after = words[words.index("before") + 1:]
        if after and after[0].endswith("'s"):
            jobs.append(after[0][:-2])
    return with_arrays(jobs)


def with_arrays(jobs: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``jobs`` and, after an array task ``A:i``, its array ``A``."""
    if len(jobs) == 1 and ":" not in jobs[0]:  # the common case: one job, not an array task
        return (jobs[0],)
    out: list[str] = []
    for job_id in jobs:
        out.append(job_id)
        array_id, sep, index = job_id.rpartition(":")
        if sep and index.isdigit():
            out.append(array_id)
    return tuple(dict.fromkeys(out))
