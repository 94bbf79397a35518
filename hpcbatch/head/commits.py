"""Group commit: what the engine changed in one loop iteration, stored in one transaction, then sent.

The engine (hpcbatch.head.engine) never writes the store or a socket itself: it marks jobs
dirty, records job and node events, queues audit entries and messages for agents here. One
step later ``flush`` commits the jobs, events and audit entries in one transaction, resolves
the API's ``durable`` futures, tells the commit observers (event feed, metrics), and only then
sends the outbox: a message that starts an attempt leaves only after the attempt is stored,
and an agent's exit report is acknowledged only after its outcome is, so a ``kill -9`` of the
head at any point loses nothing and runs nothing twice.

A commit the store refuses (disk full, I/O error) stores nothing of the batch: it stays
pending (newer changes to a job win) and is tried again ``COMMIT_RETRY_S`` later; the outbox
waits with it.

Batches (issue 22): the starts one step makes for a node that takes ``Orders``
(``batches_for``, told by the fleet from its Register) leave as one message, where the first
of them was; acknowledgements to a node always travel together.

This is the only part of the engine that knows asyncio: the step it runs soon
(``request_step``), the retry timer, the ``durable`` futures, and the wake-ups the engine asks
for (``wake_later``, e.g. when a held retry's fence time comes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from hpcbatch import protocol as p
from hpcbatch.model.jobs import JobRecord
from hpcbatch.store import Store

log = logging.getLogger("hpcbatch.engine")

COMMIT_RETRY_S = 1.0  # after the store refused a commit (disk full), try again this soon

JobEventRow = tuple[str, int, str, str | None]  # (job id or node stream, at ms, status, reason)
CommitObserver = Callable[[list[JobEventRow]], None]


class CommitBatcher:
    """Pending changes of one engine step, committed together; see the module docstring."""

    def __init__(self, store: Store, send: Callable[[str, p.Message], None], step: Callable[[], None]) -> None:
        self.store = store
        self._send = send
        self._step = step  # the engine's step: schedule, then ``flush``
        self._dirty: dict[str, JobRecord] = {}
        self._job_events: list[JobEventRow] = []
        self._audit: list[dict[str, Any]] = []
        self._outbox: list[tuple[str, p.Message]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._step_handle: asyncio.Handle | None = None
        self._retry_handle: asyncio.TimerHandle | None = None
        # Told after each commit which job and node events it stored.
        self.observers: list[CommitObserver] = []
        # Whether a node takes ``Orders`` (the fleet knows from its Register); by default none does.
        self.batches_for: Callable[[str], bool] = lambda node: False

    # ------------------------------------------------------------ what changed
    def request_step(self) -> None:
        """Run one engine step soon; many requests in one loop iteration give one step."""
        if self._step_handle is None:
            self._step_handle = asyncio.get_running_loop().call_soon(self._step)

    def step_began(self) -> None:
        """The engine's step runs now: a later request schedules another."""
        self._step_handle = None

    def mark(self, job: JobRecord) -> None:
        """``job`` changed: store it with this step's batch (no step of its own)."""
        self._dirty[job.job_id] = job

    def touch(self, job: JobRecord) -> None:
        """``job`` changed: store it, in a step soon."""
        self._dirty[job.job_id] = job
        self.request_step()

    def record(self, stream: str, at_ms: int, status: str, reason: str | None) -> None:
        """A job (or node, ``NODE_EVENT_PREFIX``) event for the event stream, committed with the batch."""
        self._job_events.append((stream, at_ms, status, reason))

    def send(self, node: str, message: p.Message) -> None:
        """Send ``message`` to ``node`` once this step's batch is committed."""
        self._outbox.append((node, message))

    def audit(self, entry: dict[str, Any]) -> None:
        """Record a mutating call in the audit log, committed with the step's batch."""
        self._audit.append(entry)
        self.request_step()

    def audit_pending(self) -> list[dict[str, Any]]:
        """The audit entries not yet committed (a copy)."""
        return list(self._audit)

    @property
    def pending(self) -> bool:
        """Something waits to be committed."""
        return bool(self._dirty or self._job_events or self._audit)

    def durable(self) -> asyncio.Future[None]:
        """A future that resolves once every change made so far is committed.

        The API awaits it before replying, so an acknowledged write survives ``kill -9``;
        concurrent requests share one commit (group commit).
        """
        future = asyncio.get_running_loop().create_future()
        if self.pending:
            self._waiters.append(future)
            self.request_step()
        else:
            future.set_result(None)
        return future

    def wake_later(self, delay_s: float, callback: Callable[[], None]) -> asyncio.TimerHandle | None:
        """Call ``callback`` in ``delay_s`` (a wake-up only); None where no loop runs (tests drive by hand)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return loop.call_later(delay_s, callback)

    # ------------------------------------------------------------------ commit
    def flush(self) -> None:
        """Commit every pending change in one transaction, then send what waited on it."""
        waiters, self._waiters = self._waiters, []
        events: list[JobEventRow] = []
        if self.pending:
            events, self._job_events = self._job_events, []
            if not self._commit(events, waiters):
                return
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        if events:
            self._notify(events)
        self._deliver()

    def _commit(self, events: list[JobEventRow], waiters: list[asyncio.Future[None]]) -> bool:
        """Store the batch in one transaction; on refusal keep it pending, fail the waiters, retry later."""
        dirty, self._dirty = list(self._dirty.values()), {}
        audit, self._audit = self._audit, []
        try:
            with self.store.transaction():
                self.store.put_jobs(dirty)
                self.store.add_job_events(events)
                if audit:
                    self.store.add_audit(audit)
        except Exception as exc:
            # The store refused (disk full, I/O error): nothing of this batch is stored.
            # Keep it pending (newer changes to a job win) and retry shortly; the outbox
            # waits too, so no start or acknowledgement leaves before its commit.
            self._dirty = {**{j.job_id: j for j in dirty}, **self._dirty}
            self._job_events[:0] = events
            self._audit[:0] = audit
            log.error("store commit failed, retrying in %gs: %s", COMMIT_RETRY_S, exc)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            if self._retry_handle is None:
                self._retry_handle = asyncio.get_running_loop().call_later(COMMIT_RETRY_S, self._retry_commit)
            return False
        return True

    def _retry_commit(self) -> None:
        self._retry_handle = None
        self.request_step()

    def _notify(self, events: list[JobEventRow]) -> None:
        for observer in self.observers:
            try:
                observer(events)
            except Exception:  # a watcher's bug must not keep messages from the agents
                log.exception("commit observer %r failed", observer)

    def _deliver(self) -> None:
        """Send the outbox; acknowledgements to one node travel together (one message per node per step),
        and so do its starts where it takes ``Orders``."""
        outbox, self._outbox = self._outbox, []
        acks: dict[str, list[str]] = {}
        for node, message in self._batched(outbox):
            if isinstance(message, p.AckExits):
                acks.setdefault(node, []).extend(message.attempt_ids)
            else:
                self._send(node, message)
        for node, attempt_ids in acks.items():
            self._send(node, p.AckExits(attempt_ids=attempt_ids))

    def _batched(self, outbox: list[tuple[str, p.Message]]) -> list[tuple[str, p.Message]]:
        """The outbox with each batching node's starts as one ``Orders``, where its first start was."""
        orders: dict[str, p.Orders] = {}
        out: list[tuple[str, p.Message]] = []
        for node, message in outbox:
            if not (isinstance(message, p.StartAttempt) and self.batches_for(node)):
                out.append((node, message))
            elif node in orders:
                orders[node].items.append(message)
            else:
                orders[node] = p.Orders(items=[message])
                out.append((node, orders[node]))
        # One start alone goes as it is (the same bytes an older agent would get).
        return [(n, m.items[0] if isinstance(m, p.Orders) and len(m.items) == 1 else m) for n, m in out]
