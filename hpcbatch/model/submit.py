"""SubmitJob's planning, pure: a validated request and the records it names in, the job out.

Rules / theory of operation:

- The shell (``BatchService.SubmitJob``) loads what the request names (the queue, the job
  definition with its ECS properties mapped onto containers, the dependencies the caller may
  see) and gives them here as :class:`SubmitFacts`, with the new job's id and time. Nothing
  here reads a store, a clock or the network, so every rule is tested with plain values
  (tests/unit/test_submit_plan.py).
- :func:`plan_submit` applies AWS Batch's SubmitJob rules in the order AWS reports them: the
  queue takes jobs; arrays, node overrides and container overrides fit the definition's type;
  dependencies exist and fit (``N_TO_N`` on an array of the same size, ``SEQUENTIAL`` on no
  job); the job's defaults come from the definition (parameters, retry strategy, timeout,
  scheduling priority, tags when ``propagateTags``); a fair-share queue needs one share and
  any other queue none; node ranges resolve to one container per node.
- What depends on the head's configuration or on stored scripts (privileged containers, host
  paths, the scripts an owner stored) and whether any node set can hold the job are the
  shell's to check, on the plan's :attr:`SubmitPlan.containers` and :attr:`SubmitPlan.scripts`.
- A bad request raises ClientError naming the field, as AWS does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hpcbatch.errors import ClientError
from hpcbatch.model.jobs import (
    JobRecord,
    ResourceRequest,
    merge_container,
    resource_request,
    substitute_parameters,
)
from hpcbatch.model.lifecycle import JobStatus
from hpcbatch.model.multinode import child_job_id, resolve_nodes

# hpcbatch extension (Slurm's --array=...%N): at most N children of an array run at once.
MAX_RUNNING_TAG = "hpcbatch:maxRunning"
SCRIPT_ENV = "HPCBATCH_SCRIPT_ID"  # an uploaded script the job runs (PutScript)


@dataclass(frozen=True, kw_only=True)
class SubmitFacts:
    """What the shell loaded for one SubmitJob: everything the plan reads, and the new job's identity."""

    queue: dict[str, Any]  # the JobQueue as stored
    job_definition: dict[str, Any]  # the JobDefinition revision as stored
    # The definition's containers with ecsProperties mapped onto them (hpcbatch.validation):
    container: dict[str, Any] = field(default_factory=dict)  # type container: its containerProperties
    node_properties: dict[str, Any] | None = None  # type multinode: nodeProperties, one container per range
    dependencies: Mapping[str, JobRecord] = field(default_factory=dict)  # those found and visible to the owner
    owner: str
    job_id: str
    created_at: int  # ms since the epoch
    client_token: str | None = None  # SubmitJob idempotency (hpcbatch.head.service): kept on the job
    request_digest: str | None = None


@dataclass(frozen=True)
class PlannedContainer:
    """One container the plan will run, for the shell's checks of the head's own rules."""

    container: dict[str, Any]
    field: str  # how the request names it ("containerOverrides", "nodeProperties node 1")
    limits_field: str  # how the definition names it ("jobDefinition jd:1 containerProperties")


@dataclass(frozen=True)
class SubmitPlan:
    """The job SubmitJob stores, its node children, and what the shell still checks."""

    job: JobRecord
    children: list[JobRecord]
    containers: list[PlannedContainer]
    scripts: list[tuple[str, str]]  # (field, script id): the owner must have stored each


def _check_types(body: dict[str, Any], multinode: bool, array_size: int | None) -> None:
    if array_size is not None and multinode:
        raise ClientError("arrayProperties: a multinode job cannot also be an array job (as in AWS Batch)")
    if body.get("nodeOverrides") and not multinode:
        raise ClientError("nodeOverrides applies to multinode job definitions only")
    if multinode and body.get("containerOverrides"):
        raise ClientError("containerOverrides: a multinode job takes nodeOverrides.nodePropertyOverrides instead")


def check_dependencies(
    depends_on: list[dict[str, Any]], array_size: int | None, found: Mapping[str, JobRecord]
) -> None:
    """AWS's dependsOn rules; ``found`` holds the jobs that exist and the caller may see."""
    for i, dep in enumerate(depends_on):
        kind, dep_id = dep.get("type"), dep.get("jobId")
        if kind and array_size is None:
            raise ClientError(f"dependsOn[{i}].type {kind} applies to array jobs only")
        if kind == "SEQUENTIAL":
            if dep_id:
                raise ClientError(f"dependsOn[{i}]: a SEQUENTIAL dependency names no jobId (it orders this array's own children)")
            continue
        if not dep_id:
            raise ClientError(f"dependsOn[{i}].jobId is required")
        other = found.get(dep_id)
        # Under private_data another user's job is refused exactly as a missing one is.
        if other is None:
            raise ClientError(f"dependsOn[{i}].jobId {dep_id} does not exist")
        if kind == "N_TO_N" and other.array_size != array_size:
            raise ClientError(
                f"dependsOn[{i}]: N_TO_N needs an array job of the same size ({dep_id} has {other.array_size})"
            )


def check_share(queue: dict[str, Any], share: str | None) -> None:
    """A fair-share queue needs one share (no ``*``); any other queue none (AWS's rule)."""
    if queue.get("schedulingPolicyArn"):
        if not share:
            raise ClientError(
                f"shareIdentifier is required: job queue {queue['jobQueueName']} has a fair share scheduling policy"
            )
        if share.endswith("*"):
            raise ClientError(f"shareIdentifier {share}: a job names one share; * is for policies only")
    elif share is not None:
        raise ClientError(
            f"shareIdentifier: job queue {queue['jobQueueName']} has no scheduling policy; "
            "don't specify a shareIdentifier for it"
        )


def node_spec(container: dict[str, Any], parameters: dict[str, str]) -> dict[str, Any]:
    """Command (``Ref::`` parameters substituted), environment, script, image and resources of one container."""
    command = substitute_parameters(container.get("command", []), parameters)
    container["command"] = command
    environment = {e["name"]: e.get("value", "") for e in container.get("environment", [])}
    script_id = environment.pop(SCRIPT_ENV, None)
    return {
        "command": command,
        "environment": environment,
        "script_id": script_id,
        "image": container.get("image") or None,  # "" names no image: a bare job (validation)
        "resources": resource_request(container),
        "container": container,
    }


@dataclass(frozen=True)
class _Nodes:
    """The containers a job runs: one (a plain job) or one per node (a multi-node job)."""

    spec: dict[str, Any]  # the job's own (the main node's, for a multi-node job)
    nodes: list[dict[str, Any]]  # per node; empty for a plain job
    num_nodes: int
    main_node: int
    resources: ResourceRequest  # what every node must fit


def _resolve_nodes(body: dict[str, Any], facts: SubmitFacts, parameters: dict[str, str]) -> _Nodes:
    if facts.node_properties is None:
        spec = node_spec(merge_container(facts.container, body.get("containerOverrides")), parameters)
        if not spec["command"] and spec["script_id"] is None:
            raise ClientError("containerOverrides.command: the job has no command to run")
        return _Nodes(spec, [], 1, 0, spec["resources"])
    num_nodes, main_node, containers = resolve_nodes(facts.node_properties, body.get("nodeOverrides"))
    nodes = [node_spec(c, parameters) for c in containers]
    spec = nodes[main_node]
    if not spec["command"] and spec["script_id"] is None:
        raise ClientError(f"the main node ({main_node}) has no command to run")
    # Every node must fit the per-node request the scheduler places by.
    resources = ResourceRequest(
        vcpus=max(n["resources"].vcpus for n in nodes),
        memory_mib=max(n["resources"].memory_mib for n in nodes),
        gpus=max(n["resources"].gpus for n in nodes),
        requires=frozenset().union(*(n["resources"].requires for n in nodes)),
    )
    return _Nodes(spec, nodes, num_nodes, main_node, resources)


def _planned_containers(jobdef: dict[str, Any], resolved: _Nodes) -> list[PlannedContainer]:
    where = f"jobDefinition {jobdef['jobDefinitionName']}:{jobdef['revision']}"
    if not resolved.nodes:
        return [PlannedContainer(resolved.spec["container"], "containerOverrides", f"{where} containerProperties")]
    return [
        PlannedContainer(n["container"], f"nodeProperties node {i}", f"{where} node {i}")
        for i, n in enumerate(resolved.nodes)
    ]


def job_tags(body: dict[str, Any], jobdef: dict[str, Any], array_size: int | None) -> dict[str, str]:
    """The job's tags: the request's, with the definition's under them when ``propagateTags``."""
    propagate = body.get("propagateTags", jobdef.get("propagateTags"))
    tags = {**jobdef.get("tags", {}), **body.get("tags", {})} if propagate else body.get("tags", {})
    max_running = tags.get(MAX_RUNNING_TAG)
    if max_running is not None and (array_size is None or not max_running.isdigit() or int(max_running) < 1):
        raise ClientError(f"tags {MAX_RUNNING_TAG} must be a positive number, on an array job")
    return tags


def _common(body: dict[str, Any], facts: SubmitFacts, parameters: dict[str, str], tags: dict[str, str]) -> dict[str, Any]:
    """What the job and each of its node children share: the definition's defaults under the request."""
    jobdef, queue = facts.job_definition, facts.queue
    retry = body.get("retryStrategy") or jobdef.get("retryStrategy") or {}
    timeout = body.get("timeout") or jobdef.get("timeout") or {}
    return dict(
        job_name=body["jobName"],
        job_queue=queue["jobQueueName"],
        job_queue_arn=queue["jobQueueArn"],
        job_definition=jobdef["jobDefinitionArn"],
        owner=facts.owner,
        status=JobStatus.SUBMITTED,
        created_at=facts.created_at,
        parameters=parameters,
        retry_attempts=int(retry.get("attempts", 1)),
        evaluate_on_exit=retry.get("evaluateOnExit", []),
        timeout_s=timeout.get("attemptDurationSeconds"),
        tags=tags,
        propagate_tags=bool(body.get("propagateTags", False)),
        share_identifier=body.get("shareIdentifier"),
        scheduling_priority=body.get("schedulingPriorityOverride", jobdef.get("schedulingPriority")),
    )


def plan_submit(body: dict[str, Any], facts: SubmitFacts) -> SubmitPlan:
    """The job a validated SubmitJob ``body`` makes from ``facts``; ClientError names what is wrong."""
    queue, jobdef = facts.queue, facts.job_definition
    if queue["state"] != "ENABLED":
        raise ClientError(f"jobQueue {queue['jobQueueName']} is DISABLED and accepts no jobs")
    multinode = facts.node_properties is not None
    array_size = (body.get("arrayProperties") or {}).get("size")
    _check_types(body, multinode, array_size)
    depends_on = body.get("dependsOn", [])
    check_dependencies(depends_on, array_size, facts.dependencies)
    parameters = {**jobdef.get("parameters", {}), **body.get("parameters", {})}
    resolved = _resolve_nodes(body, facts, parameters)
    check_share(queue, body.get("shareIdentifier"))
    tags = job_tags(body, jobdef, array_size)
    common = _common(body, facts, parameters, tags)
    common.update(num_nodes=resolved.num_nodes, main_node=resolved.main_node)
    max_running = tags.get(MAX_RUNNING_TAG)
    job = JobRecord(
        job_id=facts.job_id, depends_on=depends_on, **common,
        **{**resolved.spec, "resources": resolved.resources},
        node_properties={**jobdef["nodeProperties"], "numNodes": resolved.num_nodes} if multinode else None,
        gang=multinode,
        array_size=array_size,
        max_running=int(max_running) if max_running is not None else None,
        client_token=facts.client_token,
        request_digest=facts.request_digest,
    )
    children = [
        JobRecord(job_id=child_job_id(facts.job_id, i), parent_id=facts.job_id, node_index=i, **common, **node)
        for i, node in enumerate(resolved.nodes)
    ]
    planned = _planned_containers(jobdef, resolved)
    scripts = [(p.field, spec["script_id"]) for p, spec in zip(planned, resolved.nodes or [resolved.spec], strict=True)
               if spec["script_id"] is not None]
    return SubmitPlan(job, children, planned, scripts)
