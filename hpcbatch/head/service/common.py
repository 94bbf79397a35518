"""What the service's parts share: the head's settings, look-ups by name, ids and pages.

``ServiceContext`` is the one object the parts (``resources``, ``jobs``, ``admin``) hold: the
store, the engine (read and asked through its methods only, never its dictionaries), the
head's settings that the daemon sets after start, and the look-ups every part needs (a
queue, a compute environment, a job definition, a job, a job id as a caller may see it).
"""

from __future__ import annotations

import base64
import bisect
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from hpcbatch.auth.policy import Caller
from hpcbatch.errors import ClientError, NotFoundError
from hpcbatch.head.engine import Engine
from hpcbatch.model.jobs import JobRecord
from hpcbatch.model.lifecycle import JobStatus
from hpcbatch.model.multinode import split_child_id
from hpcbatch.store import Store
from hpcbatch.validation import ContainerLimits, ecs_container

_JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(?:[#:][0-9]+)?")
PRIVATE_JOB = "(private)"  # another user's job id, as a user sees it in ListNodes under private_data
FINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED)
UNFINISHED = tuple(s for s in JobStatus if s not in FINAL)
MAX_NODES_PAGE = 1000
DEFAULT_NODES_PAGE = 1000  # ListNodes without maxResults


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class JobIdGenerator:
    """UUIDv7-style job ids (RFC 9562): 48-bit ms time, a 12-bit counter, random bits.

    They look like AWS's UUID job ids, and sort in submission order, so "newest first"
    with the id as tie-breaker is exact even for jobs created in the same millisecond.
    """

    def __init__(self) -> None:
        self._last_ms = 0
        self._counter = 0

    def __call__(self, now_ms: int) -> str:
        if now_ms <= self._last_ms:
            now_ms = self._last_ms
            self._counter += 1
            if self._counter > 0xFFF:  # 4096 ids in one ms: borrow the next ms
                now_ms, self._counter = now_ms + 1, 0
        else:
            self._counter = 0
        self._last_ms = now_ms
        rand = int.from_bytes(os.urandom(8), "big") & 0x3FFF_FFFF_FFFF_FFFF | 0x8000_0000_0000_0000
        value = (now_ms << 80) | (0x7 << 76) | (self._counter << 64) | rand
        return str(uuid.UUID(int=value))


def name_of(ref: str) -> str:
    """A name from a name or an ARN (``arn:aws:batch:r:a:job-queue/NAME``)."""
    return ref.rsplit("/", 1)[-1] if ref.startswith("arn:") else ref


def container_of(jobdef: dict[str, Any]) -> dict[str, Any]:
    """A container definition's containerProperties, or its ecsProperties mapped onto them."""
    if "ecsProperties" in jobdef:
        return ecs_container(jobdef["ecsProperties"])
    return jobdef.get("containerProperties", {})


def ecs_nodes(node_properties: dict[str, Any]) -> dict[str, Any]:
    """nodeProperties with each range's ecsProperties mapped onto its ``container``."""
    ranges = node_properties.get("nodeRangeProperties") or []
    if not any("ecsProperties" in r for r in ranges):
        return node_properties
    mapped = [{**r, "container": ecs_container(r["ecsProperties"], f"nodeProperties.nodeRangeProperties[{i}].ecsProperties")}
              if "ecsProperties" in r else r for i, r in enumerate(ranges)]
    return {**node_properties, "nodeRangeProperties": mapped}


def page(items: list[Any], max_results: int | None, token: str | None) -> tuple[list[Any], str | None]:
    """One page of a Describe/List answer: ``maxResults`` items from where ``nextToken`` points."""
    start = 0
    if token:
        try:
            start = int(base64.urlsafe_b64decode(token.encode()).decode())
        except ValueError:
            raise ClientError("nextToken is not a token this API returned") from None
    limit = max_results or 100
    end = start + limit
    nxt = base64.urlsafe_b64encode(str(end).encode()).decode() if end < len(items) else None
    return items[start:end], nxt


def paged(key: str, items: list[Any], body: dict[str, Any]) -> dict[str, Any]:
    """``{key: one page of items}`` and its ``nextToken`` when another page follows."""
    items, token = page(items, body.get("maxResults"), body.get("nextToken"))
    out: dict[str, Any] = {key: items}
    if token:
        out["nextToken"] = token
    return out


def node_page(names: list[str], body: dict[str, Any]) -> tuple[list[str], str | None]:
    """ListNodes' page of ``names`` (sorted): ``maxResults`` of them, ``DEFAULT_NODES_PAGE``
    when not given (as AWS Batch's List calls: one unpaged call at 10,000 nodes held the
    head's event loop for over half a second, and any user may call it); the token is the
    last name given, so a page is exact even when nodes join between calls."""
    limit, token = body.get("maxResults"), body.get("nextToken")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_NODES_PAGE):
        raise ClientError(f"maxResults must be an integer between 1 and {MAX_NODES_PAGE}")
    start = 0
    if token is not None:
        try:
            kind, _, after = base64.urlsafe_b64decode(str(token).encode()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise ClientError("nextToken is not a token this API returned") from None
        if kind != "node":
            raise ClientError("nextToken is not a token this API returned")
        start = bisect.bisect_right(names, after)
    end = start + (limit or DEFAULT_NODES_PAGE)
    names_page = names[start:end]
    nxt = base64.urlsafe_b64encode(f"node:{names_page[-1]}".encode()).decode() if names_page and end < len(names) else None
    return names_page, nxt



@dataclass
class ServiceContext:
    """The store, the engine and the head's settings, with the look-ups the parts share."""

    store: Store
    engine: Engine
    region: str
    account: str
    private_data: bool = False  # Slurm's PrivateData: users see only their own jobs
    node_keys: Any = None  # the NodeKeyRegistry, set by the daemon
    allow_privileged_containers: bool = False  # containerProperties.privileged, from the head's config
    container_limits: ContainerLimits = field(default_factory=ContainerLimits)  # host paths, devices, shm...
    power_pools: dict[str, Any] = field(default_factory=dict)  # [power.pools.CE]: MANAGED CEs' nodes (head.power)
    # AWS's floor for jobStateTimeLimitActions.maxTimeSeconds; a test head may lower it.
    min_state_time_limit_s: int = 600

    def arn(self, kind: str, name: str) -> str:
        return f"arn:aws:batch:{self.region}:{self.account}:{kind}/{name}"

    def ce(self, ref: str) -> dict[str, Any]:
        doc = self.store.get_resource("ce", name_of(ref))
        if doc is None:
            raise NotFoundError(f"computeEnvironment {ref} does not exist")
        return doc

    def queue(self, ref: str) -> dict[str, Any]:
        doc = self.store.get_resource("queue", name_of(ref))
        if doc is None:
            raise NotFoundError(f"jobQueue {ref} does not exist")
        return doc

    def job_definition(self, ref: str, field: str = "jobDefinition") -> dict[str, Any]:
        """The ACTIVE definition ``ref`` names (NAME: its latest ACTIVE revision, NAME:REV that one)."""
        name, _, rev = name_of(ref).partition(":")
        if rev:
            if not rev.isdigit():
                raise ClientError(f"{field} {ref}: revision must be a number")
            doc = self.store.get_resource("jobdef", name, int(rev))
        else:
            active = [d for d in self.store.list_resources("jobdef", name) if d["status"] == "ACTIVE"]
            doc = active[-1] if active else None
        if doc is None:
            raise NotFoundError(f"{field} {ref} does not exist")
        if doc.get("status") == "INACTIVE":  # AWS: a deregistered revision runs no new jobs
            raise ClientError(f"{field} {doc['jobDefinitionName']}:{doc['revision']} is INACTIVE (deregistered) "
                              "and cannot be used for new jobs; register a new revision")
        return doc

    def find_job(self, job_id: str) -> JobRecord | None:
        """The engine's live record of ``job_id``, else the store's, else None."""
        return self.engine.job(job_id) or self.store.get_job(job_id)

    def job(self, job_id: str) -> JobRecord:
        job = self.find_job(job_id)
        if job is None:
            raise NotFoundError(f"jobId {job_id} does not exist")
        return job

    def shown_job_id(self, job_id: str, caller: Caller) -> str:
        """A job id as ``caller`` may see it in a node listing: under private_data another
        user's job is only ``PRIVATE_JOB`` (the GPU is held, by whom is not said)."""
        if not self.private_data or caller.is_admin:
            return job_id
        parent_id = split_child_id(job_id)[0].split(":")[0]
        job = self.engine.job(job_id) or self.engine.job(parent_id) or self.store.get_job(parent_id)
        return job_id if job is not None and job.owner == caller.user else PRIVATE_JOB

    def masked(self, text: str, caller: Caller) -> str:
        """A scheduler decision as ``caller`` may read it: other users' job ids hidden
        (a backfill note names the job whose reservation it ran before)."""
        if not self.private_data or caller.is_admin:
            return text
        return _JOB_ID.sub(lambda m: self.shown_job_id(m.group(0), caller), text)
