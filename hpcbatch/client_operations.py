"""The Python client's operation methods: one typed method per row of the operations table.

Each method names its keyword arguments (AWS's camelCase request members, as boto3 takes
them; the request TypedDicts in ``hpcbatch.client_types`` tell IDEs and type checkers what
each AWS operation accepts) and dispatches through ``_operation``, which finds the path in
the one table (``hpcbatch.operations``). ``hpcbatch.client.Client`` inherits these;
tests/unit/test_operations.py checks that every operation in the table has its method here
and that the AWS methods' arguments are botocore's.

A method for hpcbatch's own operations takes plain keyword arguments and leaves out those
not given, so the head applies its defaults.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpcbatch.errors import ClientError
from hpcbatch.operations import by_name

if TYPE_CHECKING:
    from typing import Unpack

    from hpcbatch.client_types import (
        CancelJobRequest,
        CreateComputeEnvironmentRequest,
        CreateJobQueueRequest,
        CreateSchedulingPolicyRequest,
        DeleteComputeEnvironmentRequest,
        DeleteJobQueueRequest,
        DeleteSchedulingPolicyRequest,
        DeregisterJobDefinitionRequest,
        DescribeComputeEnvironmentsRequest,
        DescribeJobDefinitionsRequest,
        DescribeJobQueuesRequest,
        DescribeJobsRequest,
        DescribeSchedulingPoliciesRequest,
        GetJobQueueSnapshotRequest,
        ListJobsRequest,
        ListSchedulingPoliciesRequest,
        ListTagsForResourceRequest,
        RegisterJobDefinitionRequest,
        SubmitJobRequest,
        TagResourceRequest,
        TerminateJobRequest,
        UntagResourceRequest,
        UpdateComputeEnvironmentRequest,
        UpdateJobQueueRequest,
        UpdateSchedulingPolicyRequest,
    )

__all__ = ["OperationMethods"]


def _given(**members: Any) -> dict[str, Any]:
    """The members that were given (None: leave it to the head)."""
    return {k: v for k, v in members.items() if v is not None}


class OperationMethods:
    """Every API operation as a method; the transport (``call``) is the subclass's."""

    timeout: float

    if TYPE_CHECKING:

        def call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]: ...

        def describe_head(self) -> dict[str, Any]: ...

    def _operation(self, name: str, body: Any) -> dict[str, Any]:
        """POST ``body`` to operation ``name``'s path in the table (the JSON-body form)."""
        return self.call(by_name(name).post, dict(body))

    # -- AWS Batch (generated from botocore's model: the request members) --------------------

    def submit_job(self, **body: Unpack[SubmitJobRequest]) -> dict[str, Any]:
        """SubmitJob: Submits an Batch job from a job definition.

        Required: jobName, jobQueue, jobDefinition.
        """
        return self._operation("SubmitJob", body)

    def describe_jobs(self, **body: Unpack[DescribeJobsRequest]) -> dict[str, Any]:
        """DescribeJobs: Describes a list of Batch jobs.

        Required: jobs.
        """
        return self._operation("DescribeJobs", body)

    def list_jobs(self, **body: Unpack[ListJobsRequest]) -> dict[str, Any]:
        """ListJobs: Returns a list of Batch jobs.
        """
        return self._operation("ListJobs", body)

    def cancel_job(self, **body: Unpack[CancelJobRequest]) -> dict[str, Any]:
        """CancelJob: Cancels a job in an Batch job queue.

        Required: jobId, reason.
        """
        return self._operation("CancelJob", body)

    def terminate_job(self, **body: Unpack[TerminateJobRequest]) -> dict[str, Any]:
        """TerminateJob: Terminates a job in a job queue.

        Required: jobId, reason.
        """
        return self._operation("TerminateJob", body)

    def get_job_queue_snapshot(self, **body: Unpack[GetJobQueueSnapshotRequest]) -> dict[str, Any]:
        """GetJobQueueSnapshot: Provides a snapshot of job queue state, including ordering of RUNNABLE
        jobs, as well as capacity utilization for already dispatched jobs.

        Required: jobQueue.
        """
        return self._operation("GetJobQueueSnapshot", body)

    def create_compute_environment(self, **body: Unpack[CreateComputeEnvironmentRequest]) -> dict[str, Any]:
        """CreateComputeEnvironment: Creates an Batch compute environment.

        Required: computeEnvironmentName, type.
        """
        return self._operation("CreateComputeEnvironment", body)

    def update_compute_environment(self, **body: Unpack[UpdateComputeEnvironmentRequest]) -> dict[str, Any]:
        """UpdateComputeEnvironment: Updates an Batch compute environment.

        Required: computeEnvironment.
        """
        return self._operation("UpdateComputeEnvironment", body)

    def describe_compute_environments(self, **body: Unpack[DescribeComputeEnvironmentsRequest]) -> dict[str, Any]:
        """DescribeComputeEnvironments: Describes one or more of your compute environments.
        """
        return self._operation("DescribeComputeEnvironments", body)

    def delete_compute_environment(self, **body: Unpack[DeleteComputeEnvironmentRequest]) -> dict[str, Any]:
        """DeleteComputeEnvironment: Deletes an Batch compute environment.

        Required: computeEnvironment.
        """
        return self._operation("DeleteComputeEnvironment", body)

    def create_job_queue(self, **body: Unpack[CreateJobQueueRequest]) -> dict[str, Any]:
        """CreateJobQueue: Creates an Batch job queue.

        Required: jobQueueName, priority.
        """
        return self._operation("CreateJobQueue", body)

    def update_job_queue(self, **body: Unpack[UpdateJobQueueRequest]) -> dict[str, Any]:
        """UpdateJobQueue: Updates a job queue.

        Required: jobQueue.
        """
        return self._operation("UpdateJobQueue", body)

    def describe_job_queues(self, **body: Unpack[DescribeJobQueuesRequest]) -> dict[str, Any]:
        """DescribeJobQueues: Describes one or more of your job queues.
        """
        return self._operation("DescribeJobQueues", body)

    def delete_job_queue(self, **body: Unpack[DeleteJobQueueRequest]) -> dict[str, Any]:
        """DeleteJobQueue: Deletes the specified job queue.

        Required: jobQueue.
        """
        return self._operation("DeleteJobQueue", body)

    def register_job_definition(self, **body: Unpack[RegisterJobDefinitionRequest]) -> dict[str, Any]:
        """RegisterJobDefinition: Registers an Batch job definition.

        Required: jobDefinitionName, type.
        """
        return self._operation("RegisterJobDefinition", body)

    def describe_job_definitions(self, **body: Unpack[DescribeJobDefinitionsRequest]) -> dict[str, Any]:
        """DescribeJobDefinitions: Describes a list of job definitions.
        """
        return self._operation("DescribeJobDefinitions", body)

    def deregister_job_definition(self, **body: Unpack[DeregisterJobDefinitionRequest]) -> dict[str, Any]:
        """DeregisterJobDefinition: Deregisters an Batch job definition.

        Required: jobDefinition.
        """
        return self._operation("DeregisterJobDefinition", body)

    def create_scheduling_policy(self, **body: Unpack[CreateSchedulingPolicyRequest]) -> dict[str, Any]:
        """CreateSchedulingPolicy: Creates an Batch scheduling policy.

        Required: name.
        """
        return self._operation("CreateSchedulingPolicy", body)

    def update_scheduling_policy(self, **body: Unpack[UpdateSchedulingPolicyRequest]) -> dict[str, Any]:
        """UpdateSchedulingPolicy: Updates a scheduling policy.

        Required: arn.
        """
        return self._operation("UpdateSchedulingPolicy", body)

    def describe_scheduling_policies(self, **body: Unpack[DescribeSchedulingPoliciesRequest]) -> dict[str, Any]:
        """DescribeSchedulingPolicies: Describes one or more of your scheduling policies.

        Required: arns.
        """
        return self._operation("DescribeSchedulingPolicies", body)

    def delete_scheduling_policy(self, **body: Unpack[DeleteSchedulingPolicyRequest]) -> dict[str, Any]:
        """DeleteSchedulingPolicy: Deletes the specified scheduling policy.

        Required: arn.
        """
        return self._operation("DeleteSchedulingPolicy", body)

    def list_scheduling_policies(self, **body: Unpack[ListSchedulingPoliciesRequest]) -> dict[str, Any]:
        """ListSchedulingPolicies: Returns a list of Batch scheduling policies.
        """
        return self._operation("ListSchedulingPolicies", body)

    def tag_resource(self, **body: Unpack[TagResourceRequest]) -> dict[str, Any]:
        """TagResource: Associates the specified tags to a resource with the specified resourceArn.

        Required: resourceArn, tags.
        """
        return self._operation("TagResource", body)

    def untag_resource(self, **body: Unpack[UntagResourceRequest]) -> dict[str, Any]:
        """UntagResource: Deletes specified tags from an Batch resource.

        Required: resourceArn, tagKeys.
        """
        return self._operation("UntagResource", body)

    def list_tags_for_resource(self, **body: Unpack[ListTagsForResourceRequest]) -> dict[str, Any]:
        """ListTagsForResource: Lists the tags for an Batch resource.

        Required: resourceArn.
        """
        return self._operation("ListTagsForResource", body)

    # -- hpcbatch: jobs ------------------------------------------------------------------------

    def get_job_logs(self, jobId: str, attempt: int | None = None, startFromOffset: int = 0) -> dict[str, Any]:
        """GetJobLogs: output of one attempt (0-based; latest when None) from byte ``startFromOffset``."""
        body: dict[str, Any] = {"jobId": jobId, "startFromOffset": startFromOffset}
        if attempt is not None:
            body["attempt"] = attempt
        return self._operation("GetJobLogs", body)

    def put_script(self, script: bytes | str) -> str:
        """PutScript: store a script on the head; return its ``sha256:`` id."""
        if isinstance(script, bytes):
            try:
                script = script.decode("utf-8")
            except UnicodeDecodeError:
                raise ClientError("script: must be UTF-8 text") from None
        return str(self._operation("PutScript", {"script": script})["scriptId"])

    def start_job_task(self, jobId: str, nodeIndex: int, command: str) -> dict[str, Any]:
        """StartJobTask: run shell command line ``command`` on node ``nodeIndex`` of the caller's running job."""
        return self._operation("StartJobTask", {"jobId": jobId, "nodeIndex": nodeIndex, "command": command})

    def why_job(self, jobId: str) -> dict[str, Any]:
        """WhyJob: why the job is where it is (the scheduler's decisions about it)."""
        return self._operation("WhyJob", {"jobId": jobId})

    def list_events(
        self,
        afterEventId: int = 0,
        maxResults: int | None = None,
        waitSeconds: float = 0,
        jobId: str | None = None,
        jobQueue: str | None = None,
    ) -> dict[str, Any]:
        """ListEvents: job and node state changes after event ``afterEventId`` (``hpcbatch events``).

        Answers ``{"events": [...], "lastEventId": n, "more": bool}``: pass ``lastEventId``
        as the next ``afterEventId`` to resume. ``waitSeconds`` makes it a long poll: the
        head answers as soon as an event comes, or empty after that many seconds. ``jobId``
        (with its array and node children) or ``jobQueue`` narrow it down.
        """
        if waitSeconds >= self.timeout:
            raise ClientError(
                f"waitSeconds: {waitSeconds:g} s must be below the client's timeout ({self.timeout:g} s)"
            )
        body = {"afterEventId": afterEventId, "waitSeconds": waitSeconds,
                **_given(maxResults=maxResults, jobId=jobId, jobQueue=jobQueue)}
        return self._operation("ListEvents", body)

    # -- hpcbatch: who am I, the console, the heads ---------------------------------------------

    def who_am_i(self) -> dict[str, Any]:
        """WhoAmI: the caller's user name and role, as the head sees them."""
        return self._operation("WhoAmI", {})

    def create_console_link(self) -> dict[str, Any]:
        """CreateConsoleLink: a one-time link that signs the caller in to the web console."""
        return self._operation("CreateConsoleLink", {})

    def describe_heads(self) -> dict[str, Any]:
        """DescribeHeads: this head's role (active or standby), its epoch, and the active head."""
        return self.describe_head()

    # -- hpcbatch: nodes -----------------------------------------------------------------------

    def list_nodes(self, maxResults: int | None = None, nextToken: str | None = None) -> dict[str, Any]:
        """ListNodes: the nodes the head knows, with state, capacity and running jobs (a page
        of ``maxResults`` by name, and a ``nextToken``, when asked for one)."""
        return self._operation("ListNodes", _given(maxResults=maxResults, nextToken=nextToken))

    def drain_node(self, name: str, reason: str | None = None) -> dict[str, Any]:
        """DrainNode: place no new work on node ``name``; running jobs finish. Admins only."""
        return self._operation("DrainNode", _given(name=name, reason=reason))

    def resume_node(self, name: str) -> dict[str, Any]:
        """ResumeNode: let node ``name`` take new work again. Admins only."""
        return self._operation("ResumeNode", {"name": name})

    def prepull_image(self, image: str, nodes: list[str] | None = None) -> dict[str, Any]:
        """PrepullImage: pull ``image`` into the nodes' caches now (every ACTIVE node with a
        runtime unless ``nodes`` names some). Admins only."""
        return self._operation("PrepullImage", _given(image=image, nodes=nodes))

    def list_node_keys(self) -> dict[str, Any]:
        """ListNodeKeys: the agents' CurveZMQ keys, accepted and pending. Admins only."""
        return self._operation("ListNodeKeys", {})

    def accept_node_key(self, name: str) -> dict[str, Any]:
        """AcceptNodeKey: let node ``name``'s pending key join. Admins only."""
        return self._operation("AcceptNodeKey", {"name": name})

    def reject_node_key(self, name: str) -> dict[str, Any]:
        """RejectNodeKey: refuse node ``name``'s pending key. Admins only."""
        return self._operation("RejectNodeKey", {"name": name})

    def revoke_node_key(self, name: str) -> dict[str, Any]:
        """RevokeNodeKey: withdraw node ``name``'s accepted key. Admins only."""
        return self._operation("RevokeNodeKey", {"name": name})

    def delete_node_key(self, name: str) -> dict[str, Any]:
        """DeleteNodeKey: forget node ``name``'s key altogether. Admins only."""
        return self._operation("DeleteNodeKey", {"name": name})

    # -- hpcbatch: access keys and the audit log -----------------------------------------------

    def create_access_key(self, user: str, role: str | None = None, profile: str | None = None) -> dict[str, Any]:
        """CreateAccessKey: a new access key for ``user`` (the secret is in the answer, once). Admins only."""
        return self._operation("CreateAccessKey", _given(user=user, role=role, profile=profile))

    def list_access_keys(self) -> dict[str, Any]:
        """ListAccessKeys: every access key, without secrets. Admins only."""
        return self._operation("ListAccessKeys", {})

    def update_access_key(self, accessKeyId: str, status: str) -> dict[str, Any]:
        """UpdateAccessKey: set a key's ``status`` to Active or Inactive. Admins only."""
        return self._operation("UpdateAccessKey", {"accessKeyId": accessKeyId, "status": status})

    def delete_access_key(self, accessKeyId: str) -> dict[str, Any]:
        """DeleteAccessKey: remove an access key. Admins only."""
        return self._operation("DeleteAccessKey", {"accessKeyId": accessKeyId})

    def list_audit(self, maxResults: int | None = None, user: str | None = None, since: int | None = None) -> dict[str, Any]:
        """ListAudit: the audit log of mutating calls, newest first. Admins only."""
        return self._operation("ListAudit", _given(maxResults=maxResults, user=user, since=since))
