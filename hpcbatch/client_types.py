"""The request bodies of AWS Batch's operations as TypedDicts, for type checkers and IDEs.

Written from botocore's ``batch`` service model (the members of each operation's input
shape; nested shapes are plain dicts). tests/unit/test_operations.py checks that the keys
match the model, so a model that gains a member fails there: add it here. Imported only
under ``TYPE_CHECKING``: the client never loads it at run time.
"""

from __future__ import annotations

from typing import Any, TypedDict


class ClientOptions(TypedDict, total=False):
    """``hpcbatch.client.Client``'s keyword-only options (written by hand, not generated)."""

    failover_wait_s: float  # with several endpoints: how long to go round them (a takeover)
    max_attempts: int  # attempts in all, the first included (else $AWS_MAX_ATTEMPTS, else 3)
    ca_bundle: str  # the CA an https:// head is verified with (else resolve_ca_bundle's)


class SubmitJobRequest(TypedDict, total=False):
    """The body of SubmitJob (POST /v1/submitjob)."""

    jobName: str
    jobQueue: str
    shareIdentifier: str
    schedulingPriorityOverride: int
    arrayProperties: dict[str, Any]
    dependsOn: list[dict[str, Any]]
    jobDefinition: str
    parameters: dict[str, str]
    containerOverrides: dict[str, Any]
    nodeOverrides: dict[str, Any]
    retryStrategy: dict[str, Any]
    propagateTags: bool
    timeout: dict[str, Any]
    tags: dict[str, str]
    eksPropertiesOverride: dict[str, Any]
    ecsPropertiesOverride: dict[str, Any]
    consumableResourcePropertiesOverride: dict[str, Any]


class DescribeJobsRequest(TypedDict, total=False):
    """The body of DescribeJobs (POST /v1/describejobs)."""

    jobs: list[str]


class ListJobsRequest(TypedDict, total=False):
    """The body of ListJobs (POST /v1/listjobs)."""

    jobQueue: str
    arrayJobId: str
    multiNodeJobId: str
    jobStatus: str
    maxResults: int
    nextToken: str
    filters: list[dict[str, Any]]


class CancelJobRequest(TypedDict, total=False):
    """The body of CancelJob (POST /v1/canceljob)."""

    jobId: str
    reason: str


class TerminateJobRequest(TypedDict, total=False):
    """The body of TerminateJob (POST /v1/terminatejob)."""

    jobId: str
    reason: str


class GetJobQueueSnapshotRequest(TypedDict, total=False):
    """The body of GetJobQueueSnapshot (POST /v1/getjobqueuesnapshot)."""

    jobQueue: str


class CreateComputeEnvironmentRequest(TypedDict, total=False):
    """The body of CreateComputeEnvironment (POST /v1/createcomputeenvironment)."""

    computeEnvironmentName: str
    type: str
    state: str
    unmanagedvCpus: int
    computeResources: dict[str, Any]
    serviceRole: str
    tags: dict[str, str]
    eksConfiguration: dict[str, Any]
    context: str
    ecsSettings: dict[str, Any]


class UpdateComputeEnvironmentRequest(TypedDict, total=False):
    """The body of UpdateComputeEnvironment (POST /v1/updatecomputeenvironment)."""

    computeEnvironment: str
    state: str
    unmanagedvCpus: int
    computeResources: dict[str, Any]
    serviceRole: str
    updatePolicy: dict[str, Any]
    context: str
    ecsSettings: dict[str, Any]
    eksConfiguration: dict[str, Any]


class DescribeComputeEnvironmentsRequest(TypedDict, total=False):
    """The body of DescribeComputeEnvironments (POST /v1/describecomputeenvironments)."""

    computeEnvironments: list[str]
    maxResults: int
    nextToken: str


class DeleteComputeEnvironmentRequest(TypedDict, total=False):
    """The body of DeleteComputeEnvironment (POST /v1/deletecomputeenvironment)."""

    computeEnvironment: str


class CreateJobQueueRequest(TypedDict, total=False):
    """The body of CreateJobQueue (POST /v1/createjobqueue)."""

    jobQueueName: str
    state: str
    schedulingPolicyArn: str
    priority: int
    computeEnvironmentOrder: list[dict[str, Any]]
    serviceEnvironmentOrder: list[dict[str, Any]]
    jobQueueType: str
    tags: dict[str, str]
    jobStateTimeLimitActions: list[dict[str, Any]]


class UpdateJobQueueRequest(TypedDict, total=False):
    """The body of UpdateJobQueue (POST /v1/updatejobqueue)."""

    jobQueue: str
    state: str
    schedulingPolicyArn: str
    priority: int
    computeEnvironmentOrder: list[dict[str, Any]]
    serviceEnvironmentOrder: list[dict[str, Any]]
    jobStateTimeLimitActions: list[dict[str, Any]]


class DescribeJobQueuesRequest(TypedDict, total=False):
    """The body of DescribeJobQueues (POST /v1/describejobqueues)."""

    jobQueues: list[str]
    maxResults: int
    nextToken: str


class DeleteJobQueueRequest(TypedDict, total=False):
    """The body of DeleteJobQueue (POST /v1/deletejobqueue)."""

    jobQueue: str


class RegisterJobDefinitionRequest(TypedDict, total=False):
    """The body of RegisterJobDefinition (POST /v1/registerjobdefinition)."""

    jobDefinitionName: str
    type: str
    parameters: dict[str, str]
    schedulingPriority: int
    containerProperties: dict[str, Any]
    nodeProperties: dict[str, Any]
    retryStrategy: dict[str, Any]
    propagateTags: bool
    timeout: dict[str, Any]
    tags: dict[str, str]
    platformCapabilities: list[str]
    eksProperties: dict[str, Any]
    ecsProperties: dict[str, Any]
    consumableResourceProperties: dict[str, Any]


class DescribeJobDefinitionsRequest(TypedDict, total=False):
    """The body of DescribeJobDefinitions (POST /v1/describejobdefinitions)."""

    jobDefinitions: list[str]
    maxResults: int
    jobDefinitionName: str
    status: str
    nextToken: str


class DeregisterJobDefinitionRequest(TypedDict, total=False):
    """The body of DeregisterJobDefinition (POST /v1/deregisterjobdefinition)."""

    jobDefinition: str


class CreateSchedulingPolicyRequest(TypedDict, total=False):
    """The body of CreateSchedulingPolicy (POST /v1/createschedulingpolicy)."""

    name: str
    quotaSharePolicy: dict[str, Any]
    fairsharePolicy: dict[str, Any]
    tags: dict[str, str]


class UpdateSchedulingPolicyRequest(TypedDict, total=False):
    """The body of UpdateSchedulingPolicy (POST /v1/updateschedulingpolicy)."""

    arn: str
    quotaSharePolicy: dict[str, Any]
    fairsharePolicy: dict[str, Any]


class DescribeSchedulingPoliciesRequest(TypedDict, total=False):
    """The body of DescribeSchedulingPolicies (POST /v1/describeschedulingpolicies)."""

    arns: list[str]


class DeleteSchedulingPolicyRequest(TypedDict, total=False):
    """The body of DeleteSchedulingPolicy (POST /v1/deleteschedulingpolicy)."""

    arn: str


class ListSchedulingPoliciesRequest(TypedDict, total=False):
    """The body of ListSchedulingPolicies (POST /v1/listschedulingpolicies)."""

    maxResults: int
    nextToken: str


class TagResourceRequest(TypedDict, total=False):
    """The body of TagResource (POST /v1/tags/{resourceArn})."""

    resourceArn: str
    tags: dict[str, str]


class UntagResourceRequest(TypedDict, total=False):
    """The body of UntagResource (DELETE /v1/tags/{resourceArn})."""

    resourceArn: str
    tagKeys: list[str]


class ListTagsForResourceRequest(TypedDict, total=False):
    """The body of ListTagsForResource (GET /v1/tags/{resourceArn})."""

    resourceArn: str
