"""Run-time predictions from history, for planning only (Tsafrir, Etsion & Feitelson's EASY++).

Rules (the scheduler core holds one ``Predictor`` and feeds it; nothing here reads a clock):

* A job's run time is predicted from the last ``depth`` (2) run times of similar jobs that
  finished: the same owner and job definition, else the same owner, else the same job queue
  (the first that has history wins); the prediction is their mean. No history: no prediction.
* The user's ``attemptDurationSeconds`` stays the hard bound: the prediction never exceeds it,
  and a job without history but with a timeout is planned with its timeout.
* Predictions only plan (backfill, reservations, start-time forecasts); they never end a job.
  When a job outlives its prediction, the prediction doubles (capped by the timeout) until it
  lies past the time now (``grow``), and the plan is recomputed around it.
* A job definition is keyed by its name, not its revision or ARN prefix: a new revision of the
  same program usually runs as long as the last one.
* The history is small (``depth`` values per key, at most ``max_keys`` keys per level, oldest
  keys forgotten first) and is rebuilt after a head restart from the finished jobs in the store
  (``RunTimesLearned``).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from hpcbatch.model.jobs import Attempt, JobRecord

_MISSING = object()
MIN_PREDICTION_S = 1.0  # a plan of 0 s would let anything backfill in front of anything


@dataclass(frozen=True)
class RunKey:
    """What makes jobs similar: owner, job definition name, job queue (any may be empty)."""

    owner: str
    definition: str
    queue: str


def definition_name(definition: str) -> str:
    """``arn:...:job-definition/NAME:3`` and ``NAME:3`` -> ``NAME``: revisions share history."""
    tail = definition.rsplit("/", 1)[-1]
    name, sep, revision = tail.rpartition(":")
    return name if sep and revision.isdigit() else tail


class _History:
    """Last ``depth`` run times per key; the least recently updated keys go first past ``max_keys``."""

    def __init__(self, depth: int, max_keys: int) -> None:
        self._depth = depth
        self._max_keys = max_keys
        self._runs: OrderedDict[object, deque[float]] = OrderedDict()

    def add(self, key: object, run_s: float) -> None:
        runs = self._runs.get(key)
        if runs is None:
            runs = self._runs[key] = deque(maxlen=self._depth)
            if len(self._runs) > self._max_keys:
                self._runs.popitem(last=False)
        else:
            self._runs.move_to_end(key)
        runs.append(run_s)

    def mean(self, key: object) -> float | None:
        runs = self._runs.get(key)
        return sum(runs) / len(runs) if runs else None

    def __len__(self) -> int:
        return len(self._runs)


class Predictor:
    """Predicted run times from the history of finished jobs; see the module docstring."""

    def __init__(self, depth: int = 2, max_keys: int = 100_000) -> None:
        self._by_definition = _History(depth, max_keys)
        self._by_owner = _History(depth, max_keys)
        self._by_queue = _History(depth, max_keys)
        self.learned = 0  # run times learned in all
        self._memo: dict[tuple[str, str, str], float | None] = {}

    def learn(self, key: RunKey, run_s: float) -> None:
        """A job like ``key`` ran ``run_s`` seconds (an attempt that really ran and ended)."""
        if not math.isfinite(run_s) or run_s < 0:
            return
        self.learned += 1
        self._memo.clear()
        if key.owner:
            self._by_definition.add((key.owner, definition_name(key.definition)), run_s)
            self._by_owner.add(key.owner, run_s)
        if key.queue:
            self._by_queue.add(key.queue, run_s)

    def history(self, key: RunKey) -> float | None:
        """The mean of the latest run times of the most similar jobs, or None without history."""
        found = None
        if key.owner:
            found = self._by_definition.mean((key.owner, definition_name(key.definition)))
            if found is None:
                found = self._by_owner.mean(key.owner)
        if found is None and key.queue:
            found = self._by_queue.mean(key.queue)
        return found

    def predict(self, key: RunKey, timeout_s: float | None) -> float | None:
        """The run time to plan with: history capped by the timeout, else the timeout, else None."""
        return self.predict_for(key.owner, key.definition, key.queue, timeout_s)

    def predict_for(self, owner: str, definition: str, queue: str, timeout_s: float | None) -> float | None:
        """``predict`` without building a key (the scheduler's hot path; memoized until the next ``learn``)."""
        memo_key = (owner, definition, queue)
        found = self._memo.get(memo_key, _MISSING)
        if found is _MISSING:
            found = self._memo[memo_key] = self.history(RunKey(owner, definition, queue))
        if found is None:
            return None if timeout_s is None else float(timeout_s)
        found = max(MIN_PREDICTION_S, found)
        return found if timeout_s is None else min(found, float(timeout_s))


def grow(prediction_s: float, elapsed_s: float, timeout_s: float | None) -> float:
    """A prediction the job outlived (``elapsed_s`` > it): doubled until it lies past
    ``elapsed_s``, capped by the timeout (the job is killed there anyway)."""
    grown = max(MIN_PREDICTION_S, prediction_s)
    while grown <= elapsed_s:
        grown *= 2
    return grown if timeout_s is None else min(grown, float(timeout_s))


def attempt_run_s(attempt: Attempt | None) -> float | None:
    """How long an attempt really ran, for history: None when it never started, was lost
    (how it ended is unknown) or was terminated (cut short by a person, not its own length)."""
    if attempt is None or attempt.started_at is None or attempt.stopped_at is None:
        return None
    if attempt.lost or attempt.terminated:
        return None
    return max(0.0, (attempt.stopped_at - attempt.started_at) / 1000)


def learned_runs(jobs: Iterable[JobRecord]) -> tuple[tuple[str, str, str, float], ...]:
    """(owner, job definition, job queue, seconds) of finished jobs' last attempts (array
    tasks included, multi-node jobs once), oldest end first: what a restarted head teaches
    its predictor (``RunTimesLearned``)."""
    runs = []
    for job in jobs:
        if job.parent_id is not None:
            continue  # a node of a multi-node job: its parent's attempt is the job's run
        attempt = job.attempts[-1] if job.attempts else None
        run_s = attempt_run_s(attempt)
        if run_s is not None and attempt is not None:
            runs.append((attempt.stopped_at or 0, job.owner, job.job_definition, job.job_queue, run_s))
    runs.sort(key=lambda r: r[0])
    return tuple(r[1:] for r in runs)
