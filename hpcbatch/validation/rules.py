"""AWS Batch's limits for the operations on jobs and on the resources that run them.

Rules / theory of operation:

- SubmitJob and the job operations (DescribeJobs, ListJobs, CancelJob, TerminateJob): names,
  dependency and priority limits, retry strategies and their exit globs, timeouts, array sizes,
  the warning-signal tag (``hpcbatch.model.interrupts``); ECS/EKS overrides are refused, not
  ignored.
- Compute environments, job queues and scheduling policies: on bare metal a CE only sizes
  itself (vCPU bounds, no Spot strategies); a queue orders at most three CEs; fair-share
  limits are AWS's; a queue's preemption tags are true or false.
- Tagging (TagResource, UntagResource) checks what a tag means for the resource it lands on.
- ``SHAPE_HOOKS`` (by botocore shape name) and ``OPERATION_HOOKS`` (by operation, on the whole
  body after the walk) are merged with the other modules' in ``hpcbatch.validation``.
  Container shapes and RegisterJobDefinition live in ``hpcbatch.validation.jobdefs``.
"""

from __future__ import annotations

import re
from typing import Any

from hpcbatch.model import interrupts
from hpcbatch.validation.common import (
    _NOT_SUPPORTED,
    MAX_TAGS,
    Hook,
    _Bad,
    _count,
    _Key,
    _length,
    _name,
    _nonempty,
    _range,
    _show,
)

# EvaluateOnExit globs (AWS API reference): onExitCode "can contain only numbers, and can end
# with an asterisk"; onReason/onStatusReason "letters, numbers, periods (.), colons (:), and
# white space", optionally ending with an asterisk.
_EXIT_CODE_GLOB = re.compile(r"\A(?:[0-9]+\*?|\*)\Z")
_REASON_GLOB = re.compile(r"\A[A-Za-z0-9.:\s]*\*?\Z", re.ASCII)


# --- jobs ----------------------------------------------------------------------------------


def _retry_strategy(v: dict[str, Any]) -> None:
    if "attempts" in v:
        _range(v["attempts"], 1, 10, "attempts")
    if "evaluateOnExit" in v:
        _count(v["evaluateOnExit"], None, 5, "evaluateOnExit")


def _evaluate_on_exit(v: dict[str, Any]) -> None:
    v["action"] = v["action"].upper()  # AWS accepts any case; store the canonical spelling
    code = v.get("onExitCode")
    if code is not None:
        _length(code, 1, 512, "onExitCode")
        if not _EXIT_CODE_GLOB.match(code):
            raise _Bad(f" must be digits with an optional trailing * (got {_show(code)})",
                       "onExitCode")
    for field in ("onReason", "onStatusReason"):
        glob = v.get(field)
        if glob is not None:
            _length(glob, 1, 512, field)
            if not _REASON_GLOB.match(glob):
                raise _Bad(" may contain only letters, digits, periods, colons and white "
                           f"space, with an optional trailing * (got {_show(glob)})", field)


def _job_timeout(v: dict[str, Any]) -> None:
    if "attemptDurationSeconds" in v:  # AWS: "The minimum value for the timeout is 60 seconds"
        _range(v["attemptDurationSeconds"], 60, None, "attemptDurationSeconds")


def _array_properties(v: dict[str, Any]) -> None:
    if "size" in v:
        _range(v["size"], 2, 10_000, "size")


def _submit_job(v: dict[str, Any]) -> None:
    _name(v, "jobName")
    _submit_overrides(v)
    _nonempty(v, "jobQueue", "jobDefinition")
    if "dependsOn" in v:
        _count(v["dependsOn"], None, 20, "dependsOn")  # AWS: up to 20 job dependencies
    if "schedulingPriorityOverride" in v:
        _range(v["schedulingPriorityOverride"], 0, 9999, "schedulingPriorityOverride")
    _job_signal(v.get("tags") or {}, (v.get("timeout") or {}).get("attemptDurationSeconds"))


def _submit_overrides(v: dict[str, Any]) -> None:
    """SubmitJob's ECS/EKS overrides: refused, not ignored (containerOverrides does the work here)."""
    for field in ("eksPropertiesOverride", "ecsPropertiesOverride", "consumableResourcePropertiesOverride"):
        if field in v:
            hint = "; use containerOverrides" if field == "ecsPropertiesOverride" else ""
            raise _Bad(_NOT_SUPPORTED.format(field) + hint, field)
    for i, entry in enumerate((v.get("nodeOverrides") or {}).get("nodePropertyOverrides") or ()):
        for field in ("eksPropertiesOverride", "ecsPropertiesOverride", "consumableResourcePropertiesOverride"):
            if field in entry:
                raise _Bad(_NOT_SUPPORTED.format(field) + ("; use containerOverrides" if field.startswith("ecs") else ""),
                           "nodeOverrides", "nodePropertyOverrides", i, field)


def _job_signal(tags: dict[str, str], timeout_s: int | None) -> None:
    """A job's warning signal (``hpcbatch:signal=USR1@60``, hpcbatch.model.interrupts)."""
    text = tags.get(interrupts.SIGNAL_TAG)
    if text is None:
        return
    problem = interrupts.signal_error(text, timeout_s)
    if problem is not None:
        raise _Bad(f" {problem}", "tags", _Key(interrupts.SIGNAL_TAG))


def _max_results(hi: int) -> Hook:
    def check(v: dict[str, Any]) -> None:
        if "maxResults" in v:
            _range(v["maxResults"], 1, hi, "maxResults")

    return check


def _describe_jobs(v: dict[str, Any]) -> None:
    _count(v["jobs"], 1, 100, "jobs")  # AWS: "A list of up to 100 job IDs"


# --- compute environments, queues, scheduling policies, tags ----------------------------------


def _compute_resources(v: dict[str, Any]) -> None:
    for field in ("minvCpus", "maxvCpus", "desiredvCpus"):
        if field in v:
            _range(v[field], 0, None, field)
    if "minvCpus" in v and "maxvCpus" in v and v["minvCpus"] > v["maxvCpus"]:
        raise _Bad(f" must not exceed maxvCpus ({v['maxvCpus']}) (got {v['minvCpus']})",
                   "minvCpus")
    if str(v.get("allocationStrategy", "")).startswith("SPOT_"):
        raise _Bad(" applies to EC2 Spot capacity; on your own nodes use BEST_FIT, "
                   "BEST_FIT_PROGRESSIVE or SPREAD", "allocationStrategy")


def _compute_environment_order(v: list[dict[str, Any]]) -> None:
    _count(v, 1, 3)  # AWS: "up to three compute environments" per queue
    seen: dict[int, int] = {}
    for i, entry in enumerate(v):
        order = entry["order"]
        _range(order, 0, None, i, "order")
        if order in seen:
            raise _Bad(f" must be unique ({order} is also used by entry {seen[order]})",
                       i, "order")
        seen[order] = i


def _job_queue(v: dict[str, Any]) -> None:
    _name(v, "jobQueueName")
    _nonempty(v, "jobQueue")
    if "priority" in v:
        _range(v["priority"], 0, 1000, "priority")
    _job_state_time_limit_actions(v)


def _queue_tags(tags: dict[str, str]) -> None:
    """A job queue's preemption settings (hpcbatch.model.interrupts): true or false."""
    bad = interrupts.queue_tag_error(tags)
    if bad is not None:
        raise _Bad(f" {bad[1]}", "tags", _Key(bad[0]))


def _create_job_queue(v: dict[str, Any]) -> None:
    _job_queue(v)
    _queue_tags(v.get("tags") or {})
    # The model made this optional for SageMaker service queues; a queue here needs CEs.
    if "computeEnvironmentOrder" not in v:
        raise _Bad("", "computeEnvironmentOrder", head="Missing required field ")


def _fairshare_policy(v: dict[str, Any]) -> None:
    """AWS's FairsharePolicy limits (API reference: FairsharePolicy, ShareAttributes)."""
    if "shareDecaySeconds" in v:
        _range(v["shareDecaySeconds"], 0, 604_800, "fairsharePolicy", "shareDecaySeconds")
    if "computeReservation" in v:
        _range(v["computeReservation"], 0, 99, "fairsharePolicy", "computeReservation")
    shares = v.get("shareDistribution", [])
    _count(shares, None, 500, "fairsharePolicy", "shareDistribution")
    seen: set[str] = set()
    for i, share in enumerate(shares):
        ident = share["shareIdentifier"]
        # AWS: up to 255 letters, numbers and underscores, optionally ending in one asterisk.
        if not re.fullmatch(r"[A-Za-z0-9_]{1,255}\*?|\*", ident):
            raise _Bad(
                " must be 1-255 letters, numbers and underscores, optionally ending with *",
                "fairsharePolicy", "shareDistribution", i, "shareIdentifier",
            )
        if ident in seen:
            raise _Bad(f" {ident} is listed twice", "fairsharePolicy", "shareDistribution", i, "shareIdentifier")
        seen.add(ident)
        if "weightFactor" in share and not 0.0001 <= share["weightFactor"] <= 999.9999:
            raise _Bad(
                " must be between 0.0001 and 999.9999", "fairsharePolicy", "shareDistribution", i, "weightFactor"
            )


def _scheduling_policy(v: dict[str, Any]) -> None:
    if "name" in v:
        _name(v, "name")
    _nonempty(v, "arn")
    if "quotaSharePolicy" in v:
        raise _Bad(" is not supported: hpcbatch implements fair share (fairsharePolicy)", "quotaSharePolicy")
    if "fairsharePolicy" in v:
        _fairshare_policy(v["fairsharePolicy"])


def _job_state_time_limit_actions(v: dict[str, Any]) -> None:
    actions = v.get("jobStateTimeLimitActions", [])
    for i, action in enumerate(actions):
        # The minimum (600 s on AWS) is the head's to decide (a test head may allow less).
        _range(action["maxTimeSeconds"], 1, 86_400, "jobStateTimeLimitActions", i, "maxTimeSeconds")
        _nonempty(action, "reason")


def _tag_resource(v: dict[str, Any]) -> None:
    _nonempty(v, "resourceArn")
    _count(v["tags"], 1, MAX_TAGS, "tags")  # the model's min 1: a TagResource tags something
    if ":job-queue/" in v["resourceArn"]:
        _queue_tags(v["tags"])
    elif ":job/" in v["resourceArn"] and interrupts.SIGNAL_TAG in v["tags"]:
        _job_signal(v["tags"], None)


def _untag_resource(v: dict[str, Any]) -> None:
    _nonempty(v, "resourceArn")
    for i, key in enumerate(v["tagKeys"]):
        if key.lower().startswith("aws:"):  # AWS: "You can't edit or delete tag keys ... with this prefix"
            raise _Bad(f": tag keys starting with aws: are reserved for AWS (got {_show(key)})", "tagKeys", i)


SHAPE_HOOKS: dict[str, Hook] = {
    "RetryStrategy": _retry_strategy,
    "EvaluateOnExit": _evaluate_on_exit,
    "JobTimeout": _job_timeout,
    "ArrayProperties": _array_properties,
    "ComputeResource": _compute_resources,
    "ComputeResourceUpdate": _compute_resources,
    "ComputeEnvironmentOrders": _compute_environment_order,
}


OPERATION_HOOKS: dict[str, Hook] = {
    "SubmitJob": _submit_job,
    "CreateJobQueue": _create_job_queue,
    "UpdateJobQueue": _job_queue,
    "CreateComputeEnvironment": lambda v: _name(v, "computeEnvironmentName"),
    "UpdateComputeEnvironment": lambda v: _nonempty(v, "computeEnvironment"),
    "DeleteComputeEnvironment": lambda v: _nonempty(v, "computeEnvironment"),
    "DeleteJobQueue": lambda v: _nonempty(v, "jobQueue"),
    "DeregisterJobDefinition": lambda v: _nonempty(v, "jobDefinition"),
    "CancelJob": lambda v: _nonempty(v, "jobId", "reason"),
    "TerminateJob": lambda v: _nonempty(v, "jobId", "reason"),
    "DescribeJobs": _describe_jobs,
    "ListJobs": _max_results(1000),
    "DescribeComputeEnvironments": _max_results(100),
    "DescribeJobQueues": _max_results(100),
    "DescribeJobDefinitions": _max_results(100),
    "CreateSchedulingPolicy": _scheduling_policy,
    "UpdateSchedulingPolicy": _scheduling_policy,
    "DeleteSchedulingPolicy": lambda v: _nonempty(v, "arn"),
    "ListSchedulingPolicies": _max_results(1000),
    "TagResource": _tag_resource,
    "UntagResource": _untag_resource,
    "ListTagsForResource": lambda v: _nonempty(v, "resourceArn"),
}
