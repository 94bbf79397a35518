"""Preemption settings of job queues and a job's warning signal, read from tags (pure).

Rules / theory of operation:

* AWS Batch has no preemption and no warning signal, and boto3 and the AWS CLI refuse any
  request field their service model does not name, so hpcbatch carries both as tags, which
  every AWS client sends unchanged (CreateJobQueue/TagResource ``tags``, SubmitJob ``tags``):

  - ``hpcbatch:preempts=true`` on a job queue: the job at its head may stop running jobs of
    lower-priority preemptible queues sharing its compute environments
    (hpcbatch.scheduler.preemption);
  - ``hpcbatch:preemptible=true`` on a job queue: its running jobs may be stopped so;
  - ``hpcbatch:signal=USR1@60`` on a job (Slurm's ``--signal``): send SIGUSR1 60 seconds
    before the attempt's timeout, and at the start of a preemption's grace, to checkpoint.

* A value is checked once, at the edge (hpcbatch.validation); inside, the parsers here are
  total (a bad stored value reads as "not set").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hpcbatch.model.jobs import JobRecord

PREEMPTS_TAG = "hpcbatch:preempts"
PREEMPTIBLE_TAG = "hpcbatch:preemptible"
SIGNAL_TAG = "hpcbatch:signal"
QUEUE_TAGS = (PREEMPTS_TAG, PREEMPTIBLE_TAG)

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")

# Signals a job may ask for (without the SIG prefix): the ones a program can catch to
# checkpoint or wind down. KILL and STOP cannot be caught, so they are refused.
WARNING_SIGNALS = frozenset({"HUP", "INT", "QUIT", "USR1", "USR2", "ALRM", "TERM", "CONT", "URG", "WINCH"})
_SIGNAL_RE = re.compile(r"(?:SIG)?([A-Z0-9]+)@(\d+)")


def queue_tag_error(tags: Mapping[str, str]) -> tuple[str, str] | None:
    """(tag key, what is wrong) for a bad preemption setting among a queue's ``tags``, or None."""
    for key in QUEUE_TAGS:
        value = tags.get(key)
        if value is not None and value.strip().lower() not in _TRUE + _FALSE:
            return key, f"must be true or false (got {value!r})"
    return None


def queue_flag(tags: Mapping[str, str] | None, key: str) -> bool:
    """Whether the queue setting ``key`` (PREEMPTS_TAG, PREEMPTIBLE_TAG) is on in ``tags``."""
    return (tags or {}).get(key, "").strip().lower() in _TRUE


@dataclass(frozen=True)
class WarningSignal:
    """Send ``name`` (e.g. ``USR1``, no SIG prefix) ``seconds`` before the attempt's timeout."""

    name: str
    seconds: int

    def __str__(self) -> str:
        return f"{self.name}@{self.seconds}"


def parse_signal(text: str) -> WarningSignal:
    """``SIG@SECONDS`` (``USR1@60``, ``SIGUSR2@30``) as a WarningSignal; ValueError naming the problem."""
    m = _SIGNAL_RE.fullmatch(text.strip().upper())
    if m is None:
        raise ValueError(f"must be SIGNAL@SECONDS, e.g. USR1@60 (got {text!r})")
    name, seconds = m.group(1), int(m.group(2))
    if name not in WARNING_SIGNALS:
        raise ValueError(f"signal {name} is not one a job can catch; use one of {', '.join(sorted(WARNING_SIGNALS))}")
    if seconds < 1:
        raise ValueError(f"seconds must be at least 1 (got {seconds})")
    return WarningSignal(name, seconds)


def signal_error(text: str, timeout_s: int | None) -> str | None:
    """What is wrong with a job's ``hpcbatch:signal`` value given its timeout (None: it is fine)."""
    try:
        spec = parse_signal(text)
    except ValueError as exc:
        return str(exc)
    if timeout_s is not None and spec.seconds > timeout_s:
        return f"seconds ({spec.seconds}) must not exceed the job's timeout.attemptDurationSeconds ({timeout_s})"
    return None


def warning_signal(tags: Mapping[str, str] | None) -> WarningSignal | None:
    """The job's warning signal from its ``tags`` (None: none asked for, or unreadable)."""
    text = (tags or {}).get(SIGNAL_TAG)
    if not text:
        return None
    try:
        return parse_signal(text)
    except ValueError:
        return None


def preempted(job: JobRecord) -> tuple[str | None, str | None]:
    """(the job it was preempted for, the reason) of ``job``'s ending attempt, and forget the
    order: the next attempt starts clean. (None, None) when it was not being preempted."""
    order, job.preempting = job.preempting, None
    return (order.by, order.reason) if order is not None else (None, None)
