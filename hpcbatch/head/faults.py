"""Fault containment: what the head does when its handling of one agent message raises.

Rules / theory of operation (facts in, decisions out; the engine applies them):

* A failure belongs to the message, not the process: it is logged with the message's type
  and ids, counted per (node, type, attempt or job id), and decided here.
* An exit report (``exited``) is tried again: the agent resends it with every heartbeat
  until it is acknowledged. After ``quarantine_after`` failures it is acknowledged and set
  aside (quarantined) and its attempt FAILS with the cause, never retried: its command may
  have run to its end, and running it again is not the head's to decide.
* A start report (``started``) fails its attempt at once, and the attempt is killed.
* A launch request, or a launched task's exit, is answered as refused (the launcher sees
  an error, as it would from ssh).
* Anything else (heartbeats, log chunks, registrations) is dropped; after
  ``quarantine_after`` failures of the same one it is also listed as quarantined, so an
  operator sees it (``hpcbatch nodes list``, ``/metrics``).
* A message served after it failed before starts afresh (its count is forgotten).

The test-only hook: ``HPCBATCH_TEST_RAISE_ON=KIND:NAME-GLOB`` in the head's environment
(read by the daemon; never set in production) makes the engine raise on every ``KIND``
message (a wire tag: ``exited``, ``started``, ...) about a job whose name matches, and on
the placing of such a job for ``start`` — the chaos suite's way to feed the head a message
it fails on.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from enum import StrEnum

RAISE_ON_ENV = "HPCBATCH_TEST_RAISE_ON"
QUARANTINE_AFTER = 3
QUARANTINE_KEPT = 100  # per node: the newest quarantined messages listed (the metrics count all)


class InjectedFault(RuntimeError):
    """Raised by the test-only hook (``RAISE_ON_ENV``): a handler failing on one chosen message."""


class Outcome(StrEnum):
    """What to do about one failed message."""

    WAIT_FOR_RESEND = "wait_for_resend"  # the agent sends it again
    QUARANTINE_AND_FAIL = "quarantine_and_fail"  # acknowledge, set aside, fail its attempt (no retry)
    FAIL_AND_KILL = "fail_and_kill"  # fail its attempt now and kill it
    REFUSE = "refuse"  # answer the launch as refused
    DROP = "drop"
    QUARANTINE = "quarantine"  # drop it, and list it: it keeps failing


@dataclass
class Quarantined:
    """A message from a node that failed ``tries`` times and was set aside."""

    kind: str  # the message's wire tag, e.g. "exited"
    job_id: str
    attempt_id: str
    tries: int
    error: str
    at: int  # epoch ms


def outcome(kind: str, tries: int, quarantine_after: int) -> Outcome:
    """The decision for a ``kind`` message that has now failed ``tries`` times (see the rules)."""
    if kind == "exited":
        return Outcome.QUARANTINE_AND_FAIL if tries >= quarantine_after else Outcome.WAIT_FOR_RESEND
    if kind == "started":
        return Outcome.FAIL_AND_KILL
    if kind in ("launch_req", "task_exited"):
        return Outcome.REFUSE
    return Outcome.QUARANTINE if tries >= quarantine_after else Outcome.DROP


@dataclass
class MessageFaults:
    """The counts behind the rules: failed tries per message, and totals for ``/metrics``."""

    quarantine_after: int = QUARANTINE_AFTER
    tries: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (node, kind, attempt or job id)
    failed: dict[str, int] = field(default_factory=dict)  # kind -> failures (each try counts)
    quarantined: dict[str, int] = field(default_factory=dict)  # kind -> messages set aside

    def failure(self, node: str, kind: str, key: str) -> Outcome:
        """Count one failure of a message; what to do about it."""
        self.failed[kind] = self.failed.get(kind, 0) + 1
        tries = self.tries[(node, kind, key)] = self.tries.get((node, kind, key), 0) + 1
        return outcome(kind, tries, self.quarantine_after)

    def served(self, node: str, kind: str, key: str) -> None:
        """The message was handled: a later failure of it counts from one again."""
        if self.tries:
            self.tries.pop((node, kind, key), None)

    def set_aside(self, listed: list[Quarantined], entry: Quarantined) -> bool:
        """Add ``entry`` to a node's ``listed`` quarantine (once per message); False if it was there."""
        if any((q.kind, q.job_id, q.attempt_id) == (entry.kind, entry.job_id, entry.attempt_id) for q in listed):
            return False
        listed.append(entry)
        del listed[:-QUARANTINE_KEPT]
        self.quarantined[entry.kind] = self.quarantined.get(entry.kind, 0) + 1
        return True


@dataclass(frozen=True)
class FaultInjection:
    """The test-only hook: raise on ``kind`` messages (or decisions) about jobs named like ``pattern``."""

    kind: str
    pattern: str

    @classmethod
    def parse(cls, spec: str | None) -> FaultInjection | None:
        """``KIND:NAME-GLOB`` (or ``KIND``: every job); None for an empty or missing spec."""
        if not spec:
            return None
        kind, _, pattern = spec.partition(":")
        return cls(kind, pattern or "*")

    def check(self, kind: str, job_id: str, job_name: str | None) -> None:
        """Raise ``InjectedFault`` when ``kind`` about the job named ``job_name`` is the chosen one."""
        if kind == self.kind and job_name is not None and fnmatch.fnmatchcase(job_name, self.pattern):
            raise InjectedFault(f"injected fault ({RAISE_ON_ENV}) on a {kind!r} of job {job_id}")
