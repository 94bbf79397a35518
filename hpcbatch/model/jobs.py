"""The job as hpcbatch keeps it, its attempts, and the pure rules that shape it.

A ``JobRecord`` is what the store persists and the head works on; ``job_detail`` turns it
into AWS Batch's ``JobDetail`` JSON. Resource resolution (job definition + overrides),
``Ref::`` parameter substitution and the retry decision are pure functions here so the
head, the tests and the simulator all share one definition of them.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

import msgspec

from hpcbatch.model.lifecycle import JobStatus

DEFAULT_VCPUS = 1.0
DEFAULT_MEMORY_MIB = 512


class ResourceRequest(msgspec.Struct, frozen=True):
    """What one node of a job needs."""

    vcpus: float
    memory_mib: int
    gpus: int = 0
    requires: frozenset[str] = frozenset()  # node features it needs, e.g. "container" (a runtime)


class GpuUsageSummary(msgspec.Struct, kw_only=True):
    """What NVML showed of one GPU an attempt holds: the latest sample and the peaks."""

    uuid: str
    utilization_pct: int = 0
    memory_used_mib: int = 0
    peak_utilization_pct: int = 0
    peak_memory_used_mib: int = 0
    samples: int = 0


class Attempt(msgspec.Struct, kw_only=True):
    """One try at running a job on one node (AWS ``AttemptDetail``)."""

    attempt_id: str
    node: str
    compute_environment: str
    log_stream_name: str
    started_at: int | None = None
    stopped_at: int | None = None
    exit_code: int | None = None
    reason: str | None = None  # container.reason
    status_reason: str | None = None
    gpus: list[str] = []  # the node's GPU ids (UUIDs) this attempt holds, exclusively
    gpu_usage: list[GpuUsageSummary] = []  # NVML nodes only: latest and peak per GPU
    # How it ended, as facts (the reasons above are for people): recovery and retry read these.
    timed_out: bool = False  # attemptDurationSeconds ran out (never retried)
    lost: bool = False  # the head gave it up (node lost, not reported, quarantined): how it ended is unknown
    terminated: bool = False  # ended by TerminateJob
    # Stopped so this job (of a preempting queue) could start: retried, and not counted
    # against retryStrategy.attempts (hpcbatch.scheduler.preempt; Spot-interruption semantics).
    preempted_by: str | None = None
    # A node of a multi-node job whose process ended on its own while the job went on: AWS
    # then shows that node job SUCCEEDED or FAILED by its exit code (``JobRecord.shown``);
    # its record stays RUNNING inside (a retry of the job starts it again).
    alone: bool = False


class PreemptOrder(msgspec.Struct, kw_only=True):
    """The current attempt is being stopped for ``by`` (stored: a restarted head still knows)."""

    by: str
    reason: str


class FenceHold(msgspec.Struct, kw_only=True):
    """A retry held until the lost ``attempt_id`` on ``node`` is surely dead (hpcbatch.fencing).

    Stored on the job, so a restarted head holds the retry again; the deadline itself runs on
    the head's monotonic clock and is not stored (a restarted head waits a whole fence).
    """

    node: str
    attempt_id: str


class GangEnding(msgspec.Struct, kw_only=True):
    """How the current try of a multi-node job ends, once its main node ended (or a node was lost)."""

    exit_code: int | None = None
    reason: str | None = None
    status_reason: str | None = None
    stopped_at: int | None = None
    timed_out: bool = False
    lost: bool = False
    lost_attempt: FenceHold | None = None  # the part lost with its node: the retry waits for its fence


class JobRecord(msgspec.Struct, kw_only=True):
    """A job and everything the head needs to run, retry, describe and recover it."""

    job_id: str
    job_name: str
    job_queue: str  # queue name
    job_queue_arn: str
    job_definition: str  # the definition's ARN
    owner: str
    status: JobStatus
    status_reason: str | None = None
    created_at: int
    started_at: int | None = None
    stopped_at: int | None = None
    command: list[str]
    environment: dict[str, str]
    image: str | None = None
    resources: ResourceRequest
    container: dict[str, Any]  # the resolved containerProperties, as DescribeJobs shows them
    parameters: dict[str, str] = {}
    retry_attempts: int = 1
    evaluate_on_exit: list[dict[str, str]] = []
    timeout_s: int | None = None
    tags: dict[str, str] = {}
    depends_on: list[dict[str, str]] = []
    propagate_tags: bool = False
    # SubmitJob idempotency (the hpcbatch:client-token tag): the token and a digest of the
    # request it came with; the store keeps the token unique per owner (whole jobs only).
    client_token: str | None = None
    request_digest: str | None = None
    script_id: str | None = None
    attempts: list[Attempt] = []
    is_cancelled: bool = False
    is_terminated: bool = False
    stop_reason: str | None = None  # terminate's reason, applied when the killed attempt ends
    # Multi-node parallel jobs: the parent has ``gang`` and children JOBID#i (1 or more).
    num_nodes: int = 1
    main_node: int = 0
    node_properties: dict[str, Any] | None = None  # as DescribeJobs shows them (parent)
    # Parent of a multinode job of any size. Set at submission: a one-node job stored by an
    # older head ran as a plain job (no node records) and, recovered, must go on as one.
    gang: bool = False
    parent_id: str | None = None  # set on a child (one node of a multi-node job)
    node_index: int | None = None
    hosts: list[str] = []  # parent: the nodes of the current try, in index order
    launch_secret: str = ""  # parent: authorizes launcher-bridge requests of the current try
    ending: GangEnding | None = None  # parent: how the current try ends, once decided
    # Array jobs: the parent keeps counts; children JOBID:i get a record only once placed.
    array_size: int | None = None  # set on an array parent
    array_next: int = 0  # parent: indexes below this have (or had) a record
    array_counts: dict[str, int] = {}  # parent: status -> number of children with a record
    array_skipped: list[int] = []  # parent: indexes that will never run (cancelled, failed dependency)
    array_closed: bool = False  # parent: cancelled/terminated/failed-sequence: start no more
    max_running: int | None = None  # parent: hpcbatch extension, tasks at once
    array_parent: str | None = None  # set on an array child
    array_index: int | None = None
    # Fair share (a queue with a scheduling policy): the share it counts against, its order in it.
    share_identifier: str | None = None
    scheduling_priority: int | None = None  # job definition's, or schedulingPriorityOverride
    fence_hold: FenceHold | None = None  # RUNNABLE: its retry waits for a lost node to fence the last attempt
    preempting: PreemptOrder | None = None  # its current attempt is being stopped for another job

    @property
    def is_gang(self) -> bool:
        """A multi-node parallel job's parent, of any size: ``numNodes: 1`` is a one-node gang
        (node records, AWS_BATCH_JOB_NODE_* variables), as AWS runs it and TorchX expects."""
        return self.parent_id is None and (self.num_nodes > 1 or self.gang)

    @property
    def shown(self) -> tuple[JobStatus, str | None, int | None]:
        """(status, statusReason, stoppedAt) as AWS shows the job.

        A node of a multi-node job that ended on its own (``Attempt.alone``) is SUCCEEDED or
        FAILED by its exit code, stopped when it ended, while the job goes on ("each node,
        once it exits, moves to SUCCEEDED or FAILED by its exit code; a child node's death
        does nothing to the others"). Its record stays RUNNING until the job ends: a retry of
        the job starts every node again.
        """
        if self.ended_alone:
            last = self.attempts[-1]
            status = JobStatus.SUCCEEDED if last.exit_code == 0 else JobStatus.FAILED
            return status, last.status_reason, last.stopped_at
        return self.status, self.status_reason, self.stopped_at

    @property
    def ended_alone(self) -> bool:
        """A node of a multi-node job whose current try's process ended while the job goes on."""
        return (
            self.status in (JobStatus.STARTING, JobStatus.RUNNING) and bool(self.attempts) and self.attempts[-1].alone
        )

    @property
    def current_attempt(self) -> Attempt | None:
        """The attempt in flight (STARTING/RUNNING), else None."""
        if self.attempts and self.attempts[-1].stopped_at is None:
            return self.attempts[-1]
        return None


_REF = re.compile(r"Ref::([A-Za-z0-9_-]+)")


def substitute_parameters(command: list[str], parameters: dict[str, str]) -> list[str]:
    """Replace ``Ref::name`` placeholders as AWS Batch does; unknown names stay as written."""
    if not parameters:
        return list(command)

    def one(arg: str) -> str:
        return _REF.sub(lambda m: parameters.get(m.group(1), m.group(0)), arg)

    return [one(arg) for arg in command]


def resource_request(container: dict[str, Any]) -> ResourceRequest:
    """Read vCPU/memory/GPU needs from containerProperties; resourceRequirements win over legacy keys."""
    vcpus = float(container.get("vcpus") or DEFAULT_VCPUS)
    memory = int(container.get("memory") or DEFAULT_MEMORY_MIB)
    gpus = 0
    for req in container.get("resourceRequirements") or ():
        kind, value = req["type"], req["value"]
        if kind == "VCPU":
            vcpus = float(value)
        elif kind == "MEMORY":
            memory = int(value)
        elif kind == "GPU":
            gpus = int(value)
    # Jobs with an image run only where a container runtime is (model.containers.CONTAINER_FEATURE).
    requires = frozenset(("container",)) if container.get("image") else frozenset()
    return ResourceRequest(vcpus=vcpus, memory_mib=memory, gpus=gpus, requires=requires)


def merge_container(base: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Apply SubmitJob ``containerOverrides`` to a definition's containerProperties (AWS rules).

    command replaces; environment merges by name (override wins); resourceRequirements
    merge by type; legacy vcpus/memory replace.
    """
    merged = dict(base)
    if not overrides:
        return merged
    if "command" in overrides:
        merged["command"] = list(overrides["command"])
    for key in ("vcpus", "memory", "instanceType"):
        if key in overrides:
            merged[key] = overrides[key]
    if "environment" in overrides:
        env = {e["name"]: e.get("value", "") for e in base.get("environment") or ()}
        env.update({e["name"]: e.get("value", "") for e in overrides["environment"]})
        merged["environment"] = [{"name": k, "value": v} for k, v in env.items()]
    if "resourceRequirements" in overrides:
        reqs = {r["type"]: r["value"] for r in base.get("resourceRequirements") or ()}
        reqs.update({r["type"]: r["value"] for r in overrides["resourceRequirements"]})
        merged["resourceRequirements"] = [{"type": t, "value": v} for t, v in reqs.items()]
        # AWS: resourceRequirements supersede the legacy keys when both are present.
        if "VCPU" in reqs:
            merged.pop("vcpus", None)
        if "MEMORY" in reqs:
            merged.pop("memory", None)
    return merged


def _glob(pattern: str, value: str | None) -> bool:
    # AWS allows one trailing '*' wildcard; fnmatch gives that and is case-sensitive here.
    return fnmatch.fnmatchcase(value or "", pattern)


def should_retry(
    job: JobRecord, exit_code: int | None, reason: str | None, status_reason: str | None, *, timed_out: bool = False
) -> bool:
    """Decide RETRY or EXIT for an attempt that did not succeed (AWS evaluateOnExit rules).

    The first rule whose given conditions all match decides; when no rule matches the job
    is retried (AWS's documented default). Attempts are capped by retryStrategy.attempts.
    Cancelled, terminated and timed-out attempts are never retried; preempted attempts are
    not counted (``counted_attempts``).
    """
    if job.is_cancelled or job.is_terminated or timed_out:
        return False
    if counted_attempts(job) >= job.retry_attempts:
        return False
    code = "" if exit_code is None else str(exit_code)
    for rule in job.evaluate_on_exit:
        if "onExitCode" in rule and not _glob(rule["onExitCode"], code):
            continue
        if "onReason" in rule and not _glob(rule["onReason"], reason):
            continue
        if "onStatusReason" in rule and not _glob(rule["onStatusReason"], status_reason):
            continue
        return rule["action"].upper() == "RETRY"
    return True


def counted_attempts(job: JobRecord) -> int:
    """The attempts that count against retryStrategy.attempts: all but the preempted ones."""
    return sum(1 for a in job.attempts if a.preempted_by is None)


def attempt_succeeded(exit_code: int | None, reason: str | None, *, timed_out: bool, terminated: bool) -> bool:
    """An attempt succeeds when its command exited 0 on its own: not killed, not timed out, not terminated."""
    return exit_code == 0 and reason is None and not timed_out and not terminated


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def gpu_usage_detail(attempt: Attempt) -> list[dict[str, Any]] | None:
    """The attempt's GPU samples as JSON (latest and peak per GPU); None without any."""
    if not attempt.gpu_usage:
        return None
    return [
        {
            "gpuId": u.uuid,
            "utilizationPercent": u.utilization_pct,
            "memoryUsedMiB": u.memory_used_mib,
            "peakUtilizationPercent": u.peak_utilization_pct,
            "peakMemoryUsedMiB": u.peak_memory_used_mib,
            "samples": u.samples,
        }
        for u in attempt.gpu_usage
    ]


def attempt_detail(attempt: Attempt) -> dict[str, Any]:
    """AWS ``AttemptDetail`` JSON for one attempt."""
    container = _drop_none(
        {
            "exitCode": attempt.exit_code,
            "reason": attempt.reason,
            "logStreamName": attempt.log_stream_name,
            "containerInstanceArn": attempt.node,
            "gpuIds": attempt.gpus or None,  # hpcbatch extension: the GPUs it held
            "gpuUsage": gpu_usage_detail(attempt),  # hpcbatch extension: NVML samples
        }
    )
    return _drop_none(
        {
            "container": container,
            "startedAt": attempt.started_at,
            "stoppedAt": attempt.stopped_at,
            "statusReason": attempt.status_reason,
            "preemptedBy": attempt.preempted_by,  # hpcbatch extension: stopped for this job
        }
    )


def job_detail(job: JobRecord, region: str, account: str) -> dict[str, Any]:
    """AWS ``JobDetail`` JSON for DescribeJobs, plus hpcbatch's ``owner`` and ``nodeName``."""
    last = job.attempts[-1] if job.attempts else None
    container = _detail_container(job, last)
    detail: dict[str, Any] = {
        "jobArn": f"arn:aws:batch:{region}:{account}:job/{job.job_id}",
        "jobName": job.job_name,
        "jobId": job.job_id,
        "jobQueue": job.job_queue_arn,
        "status": job.shown[0].value,
        "attempts": [attempt_detail(a) for a in job.attempts if a.stopped_at is not None],
        "createdAt": job.created_at,
        "retryStrategy": _drop_none(
            {"attempts": job.retry_attempts, "evaluateOnExit": job.evaluate_on_exit or None}
        ),
        "dependsOn": job.depends_on,
        "jobDefinition": job.job_definition,
        "parameters": job.parameters,
        "container": container,
        "tags": job.tags,
        "propagateTags": job.propagate_tags,
        "platformCapabilities": ["EC2"],
        "isCancelled": job.is_cancelled,
        "isTerminated": job.is_terminated,
        "owner": job.owner,
    }
    detail.update(_detail_times(job))
    detail.update(_detail_placement(job, last))
    return detail


def _detail_container(job: JobRecord, last: Attempt | None) -> dict[str, Any]:
    """The job's container, with what its last attempt reported (exit, reason, stream, node, GPUs)."""
    container = dict(job.container)
    if last is not None:
        container.update(
            _drop_none(
                {
                    "exitCode": last.exit_code,
                    "reason": last.reason,
                    "logStreamName": last.log_stream_name,
                    "containerInstanceArn": last.node,
                    "gpuIds": last.gpus or None,  # hpcbatch extension: the GPUs it holds/held
                    "gpuUsage": gpu_usage_detail(last),  # hpcbatch extension: NVML samples
                }
            )
        )
    return container


def _detail_times(job: JobRecord) -> dict[str, Any]:
    """JobDetail's optional scheduling and timing fields, those the job has (AWS leaves the others out)."""
    detail: dict[str, Any] = {}
    _, status_reason, stopped_at = job.shown
    if job.share_identifier is not None:
        detail["shareIdentifier"] = job.share_identifier
    if job.scheduling_priority is not None:
        detail["schedulingPriority"] = job.scheduling_priority
    if status_reason:
        detail["statusReason"] = status_reason
    if job.started_at is not None:
        detail["startedAt"] = job.started_at
    if stopped_at is not None:
        detail["stoppedAt"] = stopped_at
    if job.timeout_s is not None:
        detail["timeout"] = {"attemptDurationSeconds": job.timeout_s}
    return detail


def _detail_placement(job: JobRecord, last: Attempt | None) -> dict[str, Any]:
    """Where the job ran (``nodeName``), its nodes (multi-node) and its array, those it has."""
    detail: dict[str, Any] = {}
    if last is not None:
        detail["nodeName"] = last.node
    if job.node_properties is not None:
        detail["nodeProperties"] = job.node_properties
        if job.hosts:
            detail["nodeDetails"] = {"nodeIndex": job.main_node, "isMainNode": True}
    if job.parent_id is not None and job.node_index is not None:
        detail["nodeDetails"] = {"nodeIndex": job.node_index, "isMainNode": job.node_index == job.main_node}
    if job.array_size is not None:
        detail["arrayProperties"] = {"size": job.array_size, "statusSummary": array_status_summary(job)}
    elif job.array_index is not None:
        detail["arrayProperties"] = {"index": job.array_index}
    return detail


def array_status_summary(parent: JobRecord) -> dict[str, int]:
    """AWS ``arrayProperties.statusSummary``: children per status, those without a record included."""
    counts = {s.value: 0 for s in JobStatus}
    for status, n in parent.array_counts.items():
        counts[status] = counts.get(status, 0) + n
    unplaced = (parent.array_size or 0) - sum(parent.array_counts.values())
    if parent.array_closed or parent.status.is_final:
        counts["FAILED"] += unplaced
    else:
        counts["RUNNABLE" if parent.status is not JobStatus.SUBMITTED else "SUBMITTED"] += unplaced
    return counts


def job_summary(job: JobRecord, region: str, account: str) -> dict[str, Any]:
    """AWS ``JobSummary`` JSON for ListJobs."""
    last = job.attempts[-1] if job.attempts else None
    status, status_reason, stopped_at = job.shown
    summary: dict[str, Any] = {
        "jobArn": f"arn:aws:batch:{region}:{account}:job/{job.job_id}",
        "jobId": job.job_id,
        "jobName": job.job_name,
        "createdAt": job.created_at,
        "status": status.value,
        "jobDefinition": job.job_definition,
        "isCancelled": job.is_cancelled,
        "isTerminated": job.is_terminated,
        "owner": job.owner,
        "jobQueue": job.job_queue_arn,  # hpcbatch extension: ListJobs may span queues
    }
    for key, value in (
        ("statusReason", status_reason),
        ("startedAt", job.started_at),
        ("stoppedAt", stopped_at),
    ):
        if value is not None:
            summary[key] = value
    if last is not None:
        summary["container"] = _drop_none({"exitCode": last.exit_code, "reason": last.reason})
        summary["nodeName"] = last.node
    if job.array_size is not None:
        summary["arrayProperties"] = {"size": job.array_size}
    elif job.array_index is not None:
        summary["arrayProperties"] = {"index": job.array_index}
    if job.is_gang:
        summary["nodeProperties"] = {"numNodes": job.num_nodes, "isMainNode": False}
    elif job.parent_id is not None:
        summary["nodeProperties"] = {"numNodes": job.num_nodes, "isMainNode": job.node_index == job.main_node}
    return summary
