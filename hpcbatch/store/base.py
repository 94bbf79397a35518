"""The store interface: what the head persists and how it asks for it back.

Contract every backend keeps: a write inside ``transaction()`` is durable (survives
``kill -9`` of the head) once the ``with`` block exits without error, and the head replies
to a caller only after that. Model values go in and come out; no backend type leaks.
Resources (compute environments, queues, job definitions) are stored as their AWS JSON
documents; jobs as ``JobRecord`` values with a few indexed columns beside them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from hpcbatch.model.jobs import JobRecord
from hpcbatch.model.lifecycle import JobStatus


@dataclass(frozen=True)
class JobQuery:
    """ListJobs' selection; ``after`` is the opaque position of the previous page."""

    queue: str | None = None
    statuses: tuple[JobStatus, ...] = ()
    name_like: str | None = None  # AWS JOB_NAME filter: exact, or prefix with trailing '*'
    # AWS JOB_DEFINITION filter, as NAME (any revision), NAME:REVISION (that one), or a
    # prefix of NAME with a trailing '*'; case-sensitive, as AWS matches it.
    job_definition: str | None = None
    owner: str | None = None
    created_after: int | None = None
    created_before: int | None = None
    limit: int = 100
    after: tuple[int, str] | None = None  # (created_at, job_id) of the last item returned (newest-first lists)
    include_children: bool = False  # multi-node nodes (JOBID#i) are listed only on request
    # One job's children instead of whole jobs, in index order (ListJobs' arrayJobId and
    # multiNodeJobId): an array's children JOBID:i, or a multi-node job's nodes JOBID#i.
    array_job: str | None = None
    multi_node_job: str | None = None

    @property
    def children_of(self) -> tuple[str, str] | None:
        """(parent job id, the separator of its children's ids), when listing children."""
        if self.array_job is not None:
            return self.array_job, ":"
        if self.multi_node_job is not None:
            return self.multi_node_job, "#"
        return None


def jobdef_column(job: JobRecord) -> str:
    """The ``jobdef`` column: NAME:REVISION, the end of the job definition's ARN."""
    return job.job_definition.rsplit("/", 1)[-1]


def jobdef_condition(value: str, mark: str) -> tuple[str, list[Any]]:
    """ListJobs' JOB_DEFINITION filter as SQL on the ``jobdef`` column (NAME:REVISION), with
    ``mark`` the dialect's placeholder. AWS: NAME is every revision, NAME:REVISION that one,
    a trailing '*' a prefix of the name; case-sensitive."""
    if value.endswith("*"):
        return f"substr(jobdef, 1, {mark}) = {mark}", [len(value) - 1, value[:-1]]
    if ":" in value:
        return f"jobdef = {mark}", [value]
    return f"substr(jobdef, 1, {mark}) = {mark}", [len(value) + 1, value + ":"]


def client_token_of(job: JobRecord) -> str | None:
    """The ``client_token`` column: set on whole jobs only (children copy their parent's)."""
    if job.parent_id is not None or job.array_parent is not None:
        return None
    return job.client_token


class SecretSealer(Protocol):
    """Encrypts access-key secrets for the store (hpcbatch.auth.keys.SecretBox)."""

    def seal(self, key_id: str, secret: str) -> str: ...
    def open(self, key_id: str, sealed: str) -> str: ...


# An access key's document keeps its secret under SEALED_FIELD, encrypted, never under
# SECRET_FIELD (what callers see): a dump of the table holds no usable key. Documents
# written before sealing are sealed when a head becomes active (``seal_access_keys``).
SECRET_FIELD = "secret_access_key"
SEALED_FIELD = "secret_sealed"
SECRETS_CHECK = ("secrets_key_check", "hpcbatch")  # meta row: proves the key file is the store's


def seal_key_doc(sealer: SecretSealer | None, key_id: str, doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` as stored: its secret sealed (as is when there is no sealer)."""
    if sealer is None or SECRET_FIELD not in doc:
        return doc
    stored = {k: v for k, v in doc.items() if k != SECRET_FIELD}
    stored[SEALED_FIELD] = sealer.seal(key_id, doc[SECRET_FIELD])
    return stored


def open_key_doc(sealer: SecretSealer | None, key_id: str, doc: dict[str, Any]) -> dict[str, Any]:
    """A stored ``doc`` with its secret opened (a sealed one stays sealed without a sealer)."""
    if sealer is None or SEALED_FIELD not in doc:
        return doc
    opened = {k: v for k, v in doc.items() if k != SEALED_FIELD}
    opened[SECRET_FIELD] = sealer.open(key_id, doc[SEALED_FIELD])
    return opened


NODE_EVENT_PREFIX = "node/"  # job ids never contain '/'


@dataclass(frozen=True)
class EventRow:
    """One entry of the event stream: a job's or a node's state change."""

    event_id: int
    job_id: str  # NODE_EVENT_PREFIX + name for a node
    at: int  # epoch ms
    status: str
    reason: str | None
    queue: str | None  # the job's queue (None for nodes, and for jobs since pruned)
    owner: str | None


class Store(Protocol):
    """Everything the head persists."""

    def transaction(self) -> AbstractContextManager[None]: ...

    # Resources: kind is "ce", "queue" or "jobdef"; jobdefs have revisions 1, 2, ...
    def put_resource(self, kind: str, name: str, revision: int, status: str, doc: dict[str, Any]) -> None: ...
    def get_resource(self, kind: str, name: str, revision: int = 0) -> dict[str, Any] | None: ...
    def list_resources(self, kind: str, name: str | None = None) -> list[dict[str, Any]]: ...
    def delete_resource(self, kind: str, name: str) -> None: ...
    def latest_revision(self, kind: str, name: str) -> int: ...

    # Jobs
    def put_jobs(self, jobs: list[JobRecord]) -> None: ...
    def add_job_events(self, events: list[tuple[str, int, str, str | None]]) -> None: ...
    def get_job(self, job_id: str) -> JobRecord | None: ...
    def get_jobs(self, job_ids: list[str]) -> list[JobRecord]: ...
    def list_jobs(self, query: JobQuery) -> list[JobRecord]: ...
    def job_by_client_token(self, owner: str, token: str) -> JobRecord | None: ...
    def unfinished_jobs(self) -> Iterator[tuple[int, JobRecord]]: ...
    def count_jobs(self, queue: str, statuses: tuple[JobStatus, ...]) -> int: ...
    def prune_jobs(self, stopped_before: int) -> list[JobRecord]: ...
    def job_seq(self, job_id: str) -> int: ...

    # Job transitions: the event stream the console and `hpcbatch why` follow. Rows whose
    # job_id starts with NODE_EVENT_PREFIX are node state changes, so job and node events
    # share one sequence (the row id) that readers resume from.
    def job_events(self, job_id: str) -> list[tuple[int, str, str | None]]: ...
    def events_after(
        self, after: int, limit: int, job_id: str | None = None, queue: str | None = None
    ) -> list[EventRow]: ...
    def last_event_id(self) -> int: ...
    # Node events (a job's go with the job) older than ``before`` (epoch ms); how many went.
    def prune_node_events(self, before: int) -> int: ...
    def count_jobs_by_queue_status(self) -> dict[tuple[str, str], int]: ...

    # Scripts (fetch-and-run)
    def put_script(self, script_id: str, data: bytes, owner: str) -> None: ...
    def get_script(self, script_id: str, owner: str) -> bytes | None: ...

    # Access keys (SigV4) and the audit log
    def put_access_key(self, access_key_id: str, doc: dict[str, Any]) -> None: ...
    def get_access_key(self, access_key_id: str) -> dict[str, Any] | None: ...
    def list_access_keys(self) -> list[dict[str, Any]]: ...
    def delete_access_key(self, access_key_id: str) -> bool: ...
    # Seal every secret still stored in the clear and check the sealer opens the others
    # (SecretsKeyError if not); returns how many it sealed. A no-op without a sealer.
    def seal_access_keys(self) -> int: ...
    def add_audit(self, entries: list[dict[str, Any]]) -> None: ...
    def prune_audit(self, before: int) -> int: ...
    def list_audit(self, limit: int = 100, user: str | None = None, since: int | None = None) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...
