"""ListJobs' request as a store query, and the store's answer as the page AWS returns.

Pure (no store, no engine): ``BatchService.ListJobs`` (hpcbatch.head.service.jobs) finds the
parent job and checks who may see it, then asks the store with the ``JobQuery`` built here,
and takes each job's live record from the engine (``engine.job``). The store selects and pages
(hpcbatch.store.sql): a queue's jobs newest first, a multi-node job's nodes, an array's
placed children. What is left in Python is what has no row to select: an array's children
not placed yet (compact arrays give them a record only when they start), which are
summarised from their parent here.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from hpcbatch.auth.policy import Caller
from hpcbatch.errors import ClientError
from hpcbatch.model.jobs import JobRecord
from hpcbatch.model.lifecycle import JobStatus
from hpcbatch.store import JobQuery

DEFAULT_MAX_RESULTS = 100
FILTER_NAMES = "JOB_NAME, JOB_DEFINITION, BEFORE_CREATED_AT, AFTER_CREATED_AT, OWNER"


def children_query(body: dict[str, Any], parent: JobRecord) -> JobQuery | None:
    """The query for ``parent``'s children; None when it has none of the kind asked for.

    Both are all fetched and their status matched here: an array's with the unplaced ones
    (``array_summaries``), a multi-node job's as each node shows (``node_summaries``: a node
    that ended on its own shows SUCCEEDED or FAILED while its record runs on).
    """
    if body.get("arrayJobId"):
        if parent.array_size is None:
            return None
        return JobQuery(array_job=parent.job_id, include_children=True, limit=parent.array_size)
    if not parent.is_gang:
        return None
    return JobQuery(multi_node_job=parent.job_id, include_children=True, limit=parent.num_nodes)


def node_summaries(summaries: list[dict[str, Any]], wanted: str | None) -> list[dict[str, Any]]:
    """A multi-node job's node summaries with status ``wanted`` (all without one)."""
    return [s for s in summaries if not wanted or s["status"] == wanted]


def queue_query(body: dict[str, Any], queue: str | None, caller: Caller, private_data: bool) -> JobQuery | None:
    """The query for ``queue``'s jobs (every queue's: None), one page and one more (to tell
    whether another page follows); None when the caller may see none of what was asked for."""
    fields = _filter_fields(body.get("filters") or [])
    if private_data and not caller.is_admin:
        if fields.get("owner", caller.user) != caller.user:
            return None  # other users' jobs are private here
        fields["owner"] = caller.user
    statuses: tuple[JobStatus, ...] = ()
    if not body.get("filters"):
        # AWS: jobStatus is ignored when filters are given; without either, RUNNING only.
        statuses = (JobStatus(body.get("jobStatus") or "RUNNING"),)
    return JobQuery(
        queue=queue,
        statuses=statuses,
        limit=(body.get("maxResults") or DEFAULT_MAX_RESULTS) + 1,
        after=_after(body.get("nextToken")),
        **fields,
    )


def _filter_fields(filters: list[dict[str, Any]]) -> dict[str, Any]:
    """ListJobs' ``filters`` as JobQuery fields; a bad one is a ClientError naming it."""
    fields: dict[str, Any] = {}
    for i, f in enumerate(filters):
        name, values = f.get("name"), f.get("values")  # both optional in the model
        if not name:
            raise ClientError(f"filters[{i}].name is required")
        if not values:
            raise ClientError(f"filters {name}: give one value")
        field, value = _filter_field(name, values[0])
        fields[field] = value
    return fields


def _filter_field(name: str, value: str) -> tuple[str, Any]:
    if name == "JOB_NAME":
        return "name_like", value
    if name in ("AFTER_CREATED_AT", "BEFORE_CREATED_AT"):
        if not value.isdigit():
            raise ClientError(f"filters {name}: value must be epoch milliseconds")
        return ("created_after" if name.startswith("AFTER") else "created_before"), int(value)
    if name == "OWNER":  # hpcbatch extension: list --user
        return "owner", value
    if name == "JOB_DEFINITION":
        return "job_definition", jobdef_filter(value)
    raise ClientError(f"filters name {name} is not one of {FILTER_NAMES}")


def jobdef_filter(value: str) -> str:
    """ListJobs' JOB_DEFINITION value as the store matches it: NAME, NAME:REVISION or PREFIX*.

    An ARN names one revision (AWS: "the results include jobs that used the specified
    revision"), and takes no '*'.
    """
    if value.startswith("arn:"):
        if "*" in value:
            raise ClientError(f"filters JOB_DEFINITION {value}: an asterisk (*) isn't supported when the ARN is used")
        return value.rsplit("/", 1)[-1]
    return value


def _after(token: str | None) -> tuple[int, str] | None:
    """The position a ``nextToken`` stands for: (createdAt, jobId) of the last job listed."""
    if not token:
        return None
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(created), str(job_id)
    except (ValueError, TypeError):
        raise ClientError("nextToken is not a token this API returned") from None


def next_token(last: JobRecord) -> str:
    return base64.urlsafe_b64encode(json.dumps([last.created_at, last.job_id]).encode()).decode()


def page(query: JobQuery, jobs: list[JobRecord], summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """A queue listing's answer: the page, and a ``nextToken`` when the store found one more."""
    size = query.limit - 1
    out: dict[str, Any] = {"jobSummaryList": summaries[:size]}
    if len(jobs) > size and size:
        out["nextToken"] = next_token(jobs[size - 1])
    return out


def array_summaries(
    parent: JobRecord, placed: dict[int, dict[str, Any]], wanted: str | None, arn: Callable[[str, str], str]
) -> list[dict[str, Any]]:
    """Every child of array job ``parent`` in index order (those with status ``wanted``, if
    given): ``placed`` by index, the others summarised from the parent (no record yet)."""
    # parent is the engine's live record, or the store's (final, or a standby's read)
    unplaced = "FAILED" if (parent.array_closed or parent.status.is_final) else "RUNNABLE"
    out = []
    for index in range(parent.array_size or 0):
        summary = placed.get(index)
        if summary is None:
            child_id = f"{parent.job_id}:{index}"
            summary = {
                "jobArn": arn("job", child_id), "jobId": child_id, "jobName": parent.job_name,
                "createdAt": parent.created_at, "status": unplaced, "arrayProperties": {"index": index},
                "jobDefinition": parent.job_definition,
            }
        if not wanted or summary["status"] == wanted:
            out.append(summary)
    return out
