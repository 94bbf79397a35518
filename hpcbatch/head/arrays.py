"""Array jobs in the head: a parent (JOBID) and its children (JOBID:i), fed to the scheduler
as one range, in sequence (``SEQUENTIAL``), or each after its partner's (``N_TO_N``).

The parent keeps counts of its children by status and stays PENDING while they run; a child
gets its own record only once placed (or once it can never run), and the parent takes the
children's outcome when every one has ended (or can never run). Cancelling or terminating
the parent closes it: no child starts any more and waiting ones end.

Part of the engine (hpcbatch.head.engine): it acts on live jobs only through the engine's
moves (``ArrayHost``), so every change goes through the job transition table and the
engine's commit.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from hpcbatch.model.decisions import DEPENDENCY_FAILED_REASON
from hpcbatch.model.jobs import JobRecord
from hpcbatch.model.lifecycle import JobEvent, JobStatus, next_status
from hpcbatch.scheduler import Event, JobRunnable, JobWithdrawn
from hpcbatch.store import Store

ARRAY_FAILED_REASON = "One or more child jobs failed"
ARRAY_SUCCEEDED_REASON = "All child jobs succeeded"


class ArrayHost(Protocol):
    """What the array part needs of the engine."""

    jobs: dict[str, JobRecord]
    store: Store

    def move(self, job: JobRecord, event: JobEvent, reason: str | None) -> None: ...
    def touch(self, job: JobRecord) -> None: ...
    def born(self, job: JobRecord) -> None: ...
    def feed(self, event: Event) -> None: ...
    def event_id(self) -> str: ...
    def next_seq(self) -> int: ...
    def cancel(self, job: JobRecord, reason: str) -> None: ...
    def terminate(self, job: JobRecord, reason: str) -> None: ...


def sequential(job: JobRecord) -> bool:
    return any(d.get("type") == "SEQUENTIAL" for d in job.depends_on)


def n_to_n_partner(job: JobRecord) -> str | None:
    for dep in job.depends_on:
        if dep.get("type") == "N_TO_N" and dep.get("jobId"):
            return str(dep["jobId"])
    return None


class Arrays:
    """The array jobs of one engine; see the module docstring."""

    def __init__(self, host: ArrayHost) -> None:
        self._host = host
        self._n_to_n: dict[str, set[str]] = {}  # array -> arrays whose child i waits on its child i

    def child_moved(self, child: JobRecord, old: JobStatus) -> None:
        """An array child changed state: count it, and let what waited on it go on."""
        parent = self._host.jobs.get(child.array_parent or "")
        if parent is None:
            return
        counts = parent.array_counts
        counts[old.value] = max(0, counts.get(old.value, 0) - 1)
        counts[child.status.value] = counts.get(child.status.value, 0) + 1
        self._host.touch(parent)
        if not child.status.is_final:
            return
        index = child.array_index or 0
        ok = child.status is JobStatus.SUCCEEDED
        self._partners_go_on(parent, index, ok)
        if sequential(parent) and not parent.array_closed:
            if ok and index + 1 < (parent.array_size or 0):
                self._feed_task(parent, index + 1)
            elif not ok:
                parent.array_closed = True  # the rest of the sequence can never run
        self.maybe_finish(parent)

    def _partners_go_on(self, parent: JobRecord, index: int, ok: bool) -> None:
        """Child ``index`` of ``parent`` ended: its N_TO_N partners' child ``index`` runs (or never will)."""
        for dependent_id in sorted(self._n_to_n.get(parent.job_id, ())):
            dependent = self._host.jobs.get(dependent_id)
            if dependent is not None and dependent.status is JobStatus.PENDING and not dependent.array_closed:
                if ok:
                    self._feed_task(dependent, index)
                else:
                    self.materialize(dependent, index, failed=DEPENDENCY_FAILED_REASON)

    def start(self, parent: JobRecord) -> None:
        """The array may run: feed its children to the scheduler (all, in sequence, or N_TO_N)."""
        if parent.status is JobStatus.SUBMITTED:
            self._host.move(parent, JobEvent.ARRAY_STARTED, None)
        size = parent.array_size or 0
        partner = n_to_n_partner(parent)
        if partner is not None:
            self._start_n_to_n(parent, partner, size)
        elif sequential(parent):
            running = any(j.array_parent == parent.job_id for j in self._host.jobs.values())
            if not running and parent.array_next < size:
                self._feed_task(parent, parent.array_next)
        elif parent.array_next < size:
            self._host.feed(
                JobRunnable(
                    self._host.event_id(), parent.job_id, parent.job_queue, parent.resources, self._host.next_seq(),
                    time_limit_s=parent.timeout_s, array_count=size - parent.array_next,
                    first_index=parent.array_next, max_running=parent.max_running,
                    share=parent.share_identifier, priority=parent.scheduling_priority or 0,
                    owner=parent.owner, definition=parent.job_definition,
                )
            )
        self.maybe_finish(parent)

    def _start_n_to_n(self, parent: JobRecord, partner: str, size: int) -> None:
        """Child i runs once the partner's child i succeeded (and never, once it failed)."""
        self._n_to_n.setdefault(partner, set()).add(parent.job_id)
        store = self._host.store
        done = {j.array_index: j for j in store.get_jobs([f"{partner}:{i}" for i in range(size)])}
        mine = {j.array_index for j in store.get_jobs([f"{parent.job_id}:{i}" for i in range(size)])}
        for index in range(size):
            other = self._host.jobs.get(f"{partner}:{index}") or done.get(index)
            if index in mine or other is None or not other.status.is_final:
                continue
            if other.status is JobStatus.SUCCEEDED:
                self._feed_task(parent, index)
            else:
                self.materialize(parent, index, failed=DEPENDENCY_FAILED_REASON)

    def _feed_task(self, parent: JobRecord, index: int) -> None:
        """One child of an array, fed alone (SEQUENTIAL and N_TO_N children)."""
        self._host.feed(
            JobRunnable(
                self._host.event_id(), f"{parent.job_id}:{index}", parent.job_queue, parent.resources,
                self._host.next_seq(), time_limit_s=parent.timeout_s,
                share=parent.share_identifier, priority=parent.scheduling_priority or 0,
                owner=parent.owner, definition=parent.job_definition,
            )
        )

    def placed(self, job_id: str) -> JobRecord | None:
        """The scheduler placed child ``job_id`` (JOBID:i) of an open array: its record, made now."""
        parent_id, _, index = job_id.rpartition(":")
        parent = self._host.jobs.get(parent_id)
        if parent is None or parent.array_size is None or parent.array_closed or not index.isdigit():
            return None
        return self.materialize(parent, int(index))

    def detach(self, job_id: str) -> JobRecord | None:
        """Child ``job_id`` (JOBID:i), not placed yet, gets its record now so it can be cancelled or
        terminated alone; the scheduler's range skips it from now on. None where it cannot."""
        parent_id, sep, index = job_id.rpartition(":")
        if not sep or not index.isdigit() or job_id in self._host.jobs:
            return None
        parent = self._host.jobs.get(parent_id)
        if parent is None or parent.array_size is None or parent.array_closed:
            return None
        child = self.materialize(parent, int(index))
        if child is not None:
            parent.array_skipped.append(int(index))
        return child

    def materialize(self, parent: JobRecord, index: int, failed: str | None = None) -> JobRecord | None:
        """Give child ``index`` of an array its own record (when placed, or when it can never run)."""
        if index in parent.array_skipped or not 0 <= index < (parent.array_size or 0):
            return None
        env = dict(parent.environment)
        env["AWS_BATCH_JOB_ARRAY_INDEX"] = str(index)
        child = msgspec.structs.replace(
            parent,
            job_id=f"{parent.job_id}:{index}",
            # Born RUNNABLE, through the table like every other move (never PENDING: the parent waited).
            status=next_status(f"{parent.job_id}:{index}", JobStatus.SUBMITTED, JobEvent.READY),
            status_reason=None,
            environment=env,
            attempts=[],
            depends_on=[],
            array_size=None,
            array_next=0,
            array_counts={},
            array_skipped=[],
            array_closed=False,
            array_parent=parent.job_id,
            array_index=index,
            started_at=None,
            stopped_at=None,
        )
        parent.array_next = max(parent.array_next, index + 1)
        parent.array_counts["RUNNABLE"] = parent.array_counts.get("RUNNABLE", 0) + 1
        self._host.born(child)
        self._host.touch(parent)
        if failed is not None:
            parent.array_skipped.append(index)
            self._host.move(child, JobEvent.CANCEL, failed)
        return child

    def maybe_finish(self, parent: JobRecord) -> None:
        """When every child has ended (or can never run), the parent takes the outcome."""
        if parent.status is not JobStatus.PENDING or parent.array_size is None:
            return
        counts = parent.array_counts
        active = sum(n for status, n in counts.items() if not JobStatus(status).is_final)
        finished = counts.get("SUCCEEDED", 0) + counts.get("FAILED", 0)
        unplaced = parent.array_size - finished - active
        if active or (unplaced and not parent.array_closed):
            return
        self._host.feed(JobWithdrawn(self._host.event_id(), parent.job_id))
        if counts.get("FAILED", 0) or unplaced:
            self._host.move(parent, JobEvent.ARRAY_FAILED, parent.stop_reason or ARRAY_FAILED_REASON)
        else:
            self._host.move(parent, JobEvent.ARRAY_SUCCEEDED, ARRAY_SUCCEEDED_REASON)

    def close(self, parent: JobRecord, reason: str, terminate: bool) -> None:
        """Cancel (or terminate) an array: no child starts any more; waiting ones end."""
        parent.array_closed = True
        parent.stop_reason = reason
        self._host.feed(JobWithdrawn(self._host.event_id(), parent.job_id))
        for child in [j for j in self._host.jobs.values() if j.array_parent == parent.job_id]:
            if terminate:
                self._host.terminate(child, reason)
            else:
                self._host.cancel(child, reason)
        self.maybe_finish(parent)
