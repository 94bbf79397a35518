"""AWS's shapes, limits and errors as boto3 sees them, against a real head and agent.

Tagging on every taggable ARN (TagResource, UntagResource, ListTagsForResource at AWS's REST
paths), who may tag what, an unknown route's error shape, a ``numNodes: 1`` multinode job
(TorchX's single-replica shape), ``ecsProperties`` definitions, ``eksProperties`` and the
overrides refused, the 24 KiB definition quota and INACTIVE revisions. One cluster for the
module; every test names its own resources.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import TestCluster, wait_for
from tests.users import ensure_users

ALICE = "hpcb_alice"
ENV_DUMP = "env | grep -E '^(AWS_BATCH_JOB_NODE_INDEX|AWS_BATCH_JOB_NUM_NODES|AWS_BATCH_JOB_MAIN_NODE_INDEX|ECS_SAYS)=' | sort"


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    c = TestCluster(tmp_path_factory.mktemp("aws"), nodes=1)
    try:
        yield c.up()
    finally:
        c.close()


def _boto3(c: TestCluster, user: str, role: str) -> Any:
    import boto3

    key = c.client.call("/hpcbatch/v1/createaccesskey", {"user": user, "role": role})
    return boto3.client("batch", endpoint_url=c.endpoint, region_name="local",
                        aws_access_key_id=key["accessKeyId"], aws_secret_access_key=key["secretAccessKey"])


@pytest.fixture(scope="module")
def batch(aws: TestCluster) -> Any:
    """boto3, signed with an admin's access key."""
    return _boto3(aws, "root", "admin")


def _refused(call: Any, code: str = "ClientException") -> str:
    """Run ``call``; it must fail with AWS error ``code``; return its message."""
    import botocore.exceptions

    with pytest.raises(botocore.exceptions.ClientError) as info:
        call()
    assert info.value.response["Error"]["Code"] == code, info.value.response
    return str(info.value.response["Error"]["Message"])


def _tags(batch: Any, arn: str) -> dict[str, str]:
    return dict(batch.list_tags_for_resource(resourceArn=arn)["tags"])


def test_tag_untag_list_on_every_resource_kind(aws: TestCluster, batch: Any) -> None:
    ce = batch.create_compute_environment(computeEnvironmentName="tagce", type="UNMANAGED",
                                          tags={"made": "create"})["computeEnvironmentArn"]
    queue = batch.create_job_queue(jobQueueName="tagq", priority=1, state="DISABLED",
                                   computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "tagce"}])["jobQueueArn"]
    jobdef = batch.register_job_definition(jobDefinitionName="tagdef", type="container",
                                           containerProperties={"command": ["true"]})["jobDefinitionArn"]
    policy = batch.create_scheduling_policy(name="tagpolicy", fairsharePolicy={})["arn"]
    job = batch.submit_job(jobName="tagjob", jobQueue="default", jobDefinition="hpcbatch-default",
                           containerOverrides={"command": ["true"]})["jobArn"]
    assert _tags(batch, ce) == {"made": "create"}  # tags given at creation are the same tags
    for arn in (ce, queue, jobdef, policy, job):
        batch.tag_resource(resourceArn=arn, tags={"team": "ml", "cost center": "a/b+c=d@e.f_g:h-i"})
        assert _tags(batch, arn) | {"made": "create"} == {"made": "create", "team": "ml",
                                                          "cost center": "a/b+c=d@e.f_g:h-i"}, arn
        batch.untag_resource(resourceArn=arn, tagKeys=["team", "not-there"])  # an absent key is no error
        assert "team" not in _tags(batch, arn) and "cost center" in _tags(batch, arn), arn
    # Where each kind shows its tags, the new ones show (stored, not only answered).
    assert batch.describe_job_queues(jobQueues=["tagq"])["jobQueues"][0]["tags"] == {"cost center": "a/b+c=d@e.f_g:h-i"}
    aws.wait_status(job.rsplit("/", 1)[1], "SUCCEEDED")
    assert aws.job(job.rsplit("/", 1)[1])["tags"] == {"cost center": "a/b+c=d@e.f_g:h-i"}  # a live job's tags survive its end
    batch.tag_resource(resourceArn=job, tags={"after": "end"})  # a finished job is taggable too
    assert aws.job(job.rsplit("/", 1)[1])["tags"]["after"] == "end"
    # The hpcbatch client reaches the same operations by POST.
    aws.client.tag_resource(resourceArn=queue, tags={"via": "client"})
    assert aws.client.list_tags_for_resource(resourceArn=queue)["tags"]["via"] == "client"


def test_tag_limits_and_unknown_arns_answer_as_aws(aws: TestCluster, batch: Any) -> None:
    queue = batch.create_job_queue(jobQueueName="limitq", priority=1, state="DISABLED",
                                   computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "default"}])["jobQueueArn"]
    batch.tag_resource(resourceArn=queue, tags={f"k{i}": "v" for i in range(40)})
    message = _refused(lambda: batch.tag_resource(resourceArn=queue, tags={f"n{i}": "v" for i in range(11)}))
    assert "at most 50 tags" in message and "would have 51" in message
    assert len(_tags(batch, queue)) == 40  # nothing stored on refusal
    batch.tag_resource(resourceArn=queue, tags={"k0": "replaced"})  # replacing a key adds none
    assert "aws: are reserved" in _refused(lambda: batch.tag_resource(resourceArn=queue, tags={"AWS:x": "v"}))
    assert "aws: are reserved" in _refused(lambda: batch.untag_resource(resourceArn=queue, tagKeys=["aws:x"]))
    assert "at most 128 characters" in _refused(lambda: batch.tag_resource(resourceArn=queue, tags={"k" * 129: "v"}))
    assert "at most 256 characters" in _refused(lambda: batch.tag_resource(resourceArn=queue, tags={"k": "v" * 257}))
    assert "only letters" in _refused(lambda: batch.tag_resource(resourceArn=queue, tags={"semi;colon": "v"}))
    gone = queue.replace("limitq", "no-such-queue")
    assert f"resourceArn {gone} does not name a resource" in _refused(lambda: _tags(batch, gone))
    job = "arn:aws:batch:local:000000000000:job/00000000-0000-7000-8000-000000000000"
    assert "does not name a resource" in _refused(lambda: batch.tag_resource(resourceArn=job, tags={"a": "b"}))
    assert "not an AWS Batch ARN" in _refused(lambda: _tags(batch, "arn:aws:s3:::bucket"))
    assert "not a taggable resource" in _refused(lambda: _tags(batch, "arn:aws:batch:local:000000000000:node/n1"))


def test_users_tag_only_their_own_jobs(aws: TestCluster, batch: Any) -> None:
    ensure_users()
    alice = _boto3(aws, ALICE, "user")
    own = alice.submit_job(jobName="alices", jobQueue="default", jobDefinition="hpcbatch-default",
                           containerOverrides={"command": ["true"]})["jobArn"]
    alice.tag_resource(resourceArn=own, tags={"mine": "yes"})
    assert alice.list_tags_for_resource(resourceArn=own)["tags"] == {"mine": "yes"}
    roots = batch.submit_job(jobName="roots", jobQueue="default", jobDefinition="hpcbatch-default",
                             containerOverrides={"command": ["true"]})["jobArn"]
    message = _refused(lambda: alice.tag_resource(resourceArn=roots, tags={"x": "y"}), "AccessDeniedException")
    assert f"user {ALICE} may not tag job" in message
    queue = batch.describe_job_queues(jobQueues=["default"])["jobQueues"][0]["jobQueueArn"]
    message = _refused(lambda: alice.untag_resource(resourceArn=queue, tagKeys=["x"]), "AccessDeniedException")
    assert "needs role developer" in message
    assert isinstance(alice.list_tags_for_resource(resourceArn=queue)["tags"], dict)  # reading is everyone's
    assert _tags(batch, roots) == {}


def test_unknown_routes_answer_in_aws_error_shape(aws: TestCluster) -> None:
    for method, path in (("GET", "/v1/nosuchoperation"), ("POST", "/v2/submitjob"), ("PUT", "/v1/tags/x"),
                         ("GET", "/v1/submitjob")):
        request = urllib.request.Request(aws.endpoint + path, data=b"{}" if method != "GET" else None, method=method)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10)
        assert info.value.code == 404, (method, path)
        assert info.value.headers["x-amzn-ErrorType"] == "UnknownOperationException"
        doc = json.loads(info.value.read())
        assert doc["__type"] == "UnknownOperationException" and path in doc["message"], doc


def test_one_node_multinode_job_runs_as_a_gang(aws: TestCluster, batch: Any) -> None:
    # TorchX registers one of these for every single-replica app.
    batch.register_job_definition(jobDefinitionName="mnp1", type="multinode", nodeProperties={
        "numNodes": 1, "mainNode": 0,
        "nodeRangeProperties": [{"targetNodes": "0", "container": {"command": ["sh", "-c", ENV_DUMP]}}]})
    job_id = batch.submit_job(jobName="mnp1", jobQueue="default", jobDefinition="mnp1")["jobId"]
    job = aws.wait_status(job_id, "SUCCEEDED", "FAILED")
    assert job["status"] == "SUCCEEDED" and job["nodeProperties"]["numNodes"] == 1
    children = batch.list_jobs(multiNodeJobId=job_id)["jobSummaryList"]
    assert [(c["jobId"], c["status"]) for c in children] == [(f"{job_id}#0", "SUCCEEDED")]
    node = batch.describe_jobs(jobs=[f"{job_id}#0"])["jobs"][0]
    assert node["nodeDetails"] == {"nodeIndex": 0, "isMainNode": True}
    out = wait_for(lambda: aws.logs(f"{job_id}#0"), 10, what="node 0 output")
    assert out.split() == ["AWS_BATCH_JOB_MAIN_NODE_INDEX=0", "AWS_BATCH_JOB_NODE_INDEX=0", "AWS_BATCH_JOB_NUM_NODES=1"]
    # Placed as a gang (a whole node that runs nothing else), as every multi-node job is.
    decisions = aws.client.call("/hpcbatch/v1/whyjob", {"jobId": job_id})["decisions"]
    assert any(d["decision"].startswith(f"start gang {job_id}") for d in decisions), decisions


def test_ecs_properties_definition_runs(aws: TestCluster, batch: Any) -> None:
    # image "" is a bare command here (no container runtime needed), as containerProperties' is.
    ecs = {"taskProperties": [{"containers": [{
        "image": "", "essential": True, "command": ["sh", "-c", ENV_DUMP],
        "environment": [{"name": "ECS_SAYS", "value": "hello"}],
        "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "64"}]}]}]}
    registered = batch.register_job_definition(jobDefinitionName="ecsdef", type="container", ecsProperties=ecs)
    assert registered["revision"] == 1
    stored = batch.describe_job_definitions(jobDefinitionName="ecsdef")["jobDefinitions"][0]
    assert stored["ecsProperties"] == ecs and "containerProperties" not in stored  # shown as registered
    job_id = batch.submit_job(jobName="ecs", jobQueue="default", jobDefinition="ecsdef")["jobId"]
    job = aws.wait_status(job_id, "SUCCEEDED", "FAILED")
    assert job["status"] == "SUCCEEDED", (job, aws.logs(job_id))
    assert "ECS_SAYS=hello" in wait_for(lambda: aws.logs(job_id), 10, what="ecs job output")
    # What a node cannot honour is refused, naming the field; nothing is stored.
    ecs["taskProperties"][0]["containers"].append({"image": "sidecar", "essential": True})
    message = _refused(lambda: batch.register_job_definition(jobDefinitionName="ecsdef", type="container",
                                                             ecsProperties=ecs))
    assert "ecsProperties.taskProperties[0].containers must hold exactly one essential container" in message
    assert len(batch.describe_job_definitions(jobDefinitionName="ecsdef")["jobDefinitions"]) == 1
    # The head's container limits apply to the mapped container (no host path allowed here).
    ecs = {"taskProperties": [{"containers": [{"image": "busybox", "mountPoints": [
        {"sourceVolume": "root", "containerPath": "/host"}]}], "volumes": [{"name": "root", "host": {"sourcePath": "/etc"}}]}]}
    message = _refused(lambda: batch.register_job_definition(jobDefinitionName="ecsdef", type="container",
                                                             ecsProperties=ecs))
    assert "ecsProperties.volumes[0].host.sourcePath /etc is not a host path this cluster allows" in message


def test_eks_properties_and_overrides_are_refused(aws: TestCluster, batch: Any) -> None:
    message = _refused(lambda: batch.register_job_definition(
        jobDefinitionName="eksdef", type="container",
        eksProperties={"podProperties": {"containers": [{"image": "busybox"}]}}))
    assert message == "eksProperties: hpcbatch runs jobs on its own nodes; eksProperties is not supported"
    assert batch.describe_job_definitions(jobDefinitionName="eksdef")["jobDefinitions"] == []
    for field, value in (("eksPropertiesOverride", {"podProperties": {"containers": [{"command": ["x"]}]}}),
                         ("ecsPropertiesOverride", {"taskProperties": [{"containers": [{"command": ["x"]}]}]})):
        message = _refused(lambda f=field, v=value: batch.submit_job(
            jobName="ovr", jobQueue="default", jobDefinition="hpcbatch-default", **{f: v}))
        assert message.startswith(f"{field}: hpcbatch runs jobs on its own nodes; {field} is not supported")


def test_job_definition_over_24_kib_is_refused(aws: TestCluster, batch: Any) -> None:
    message = _refused(lambda: batch.register_job_definition(
        jobDefinitionName="huge", type="container", containerProperties={"command": ["true"]},
        parameters={"p": "x" * (25 * 1024)}))
    assert "a job definition is at most 24 KiB" in message
    assert batch.describe_job_definitions(jobDefinitionName="huge")["jobDefinitions"] == []


def test_inactive_revision_runs_no_new_jobs(aws: TestCluster, batch: Any) -> None:
    batch.register_job_definition(jobDefinitionName="retired", type="container", containerProperties={"command": ["true"]})
    batch.deregister_job_definition(jobDefinition="retired:1")
    message = _refused(lambda: batch.submit_job(jobName="old", jobQueue="default", jobDefinition="retired:1"))
    assert message == ("jobDefinition retired:1 is INACTIVE (deregistered) and cannot be used for new jobs; "
                       "register a new revision")
    arn = batch.describe_job_definitions(jobDefinitionName="retired")["jobDefinitions"][0]["jobDefinitionArn"]
    assert "is INACTIVE" in _refused(lambda: batch.submit_job(jobName="old", jobQueue="default", jobDefinition=arn))
    assert "does not exist" in _refused(lambda: batch.submit_job(jobName="old", jobQueue="default",
                                                                 jobDefinition="retired"))


def test_container_image_empty_string_is_a_bare_command(aws: TestCluster, batch: Any) -> None:
    # validation reads image "" as no image; the head used to hand "" to podman to pull.
    batch.register_job_definition(jobDefinitionName="noimage", type="container",
                                  containerProperties={"image": "", "command": ["echo", "bare"]})
    job_id = batch.submit_job(jobName="noimage", jobQueue="default", jobDefinition="noimage")["jobId"]
    job = aws.wait_status(job_id, "SUCCEEDED", "FAILED")
    assert job["status"] == "SUCCEEDED", job["statusReason"]
    assert wait_for(lambda: aws.logs(job_id), 10, what="output").strip() == "bare"


def test_ecs_properties_per_node_range_run(aws: TestCluster, batch: Any) -> None:
    ecs = {"taskProperties": [{"containers": [{"image": "", "command": ["sh", "-c", ENV_DUMP],
                                               "environment": [{"name": "ECS_SAYS", "value": "node"}]}]}]}
    batch.register_job_definition(jobDefinitionName="mnpecs", type="multinode", nodeProperties={
        "numNodes": 1, "mainNode": 0, "nodeRangeProperties": [{"targetNodes": "0:", "ecsProperties": ecs}]})
    job_id = batch.submit_job(jobName="mnpecs", jobQueue="default", jobDefinition="mnpecs")["jobId"]
    job = aws.wait_status(job_id, "SUCCEEDED", "FAILED")
    assert job["status"] == "SUCCEEDED", job["statusReason"]
    out = wait_for(lambda: aws.logs(f"{job_id}#0"), 10, what="node 0 output")
    assert "ECS_SAYS=node" in out and "AWS_BATCH_JOB_NUM_NODES=1" in out


def test_one_node_gang_survives_a_head_kill9(aws: TestCluster, batch: Any, tmp_path: Any) -> None:
    """Runs late: it restarts the module's head. The gang's node record carries the try."""
    import signal

    gate = tmp_path / "go"
    batch.register_job_definition(jobDefinitionName="mnp1wait", type="multinode", nodeProperties={
        "numNodes": 1, "mainNode": 0, "nodeRangeProperties": [{"targetNodes": "0", "container": {
            "command": ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.1; done; exit 3"]}}]})
    job_id = batch.submit_job(jobName="mnp1wait", jobQueue="default", jobDefinition="mnp1wait")["jobId"]
    aws.wait_status(f"{job_id}#0", "RUNNING")
    aws.kill("head", signal.SIGKILL)
    aws.start_head()
    gate.touch()
    job = aws.wait_status(job_id, "SUCCEEDED", "FAILED")
    assert job["status"] == "FAILED" and job["container"]["exitCode"] == 3 and len(job["attempts"]) == 1, job
    node = aws.job(f"{job_id}#0")
    assert node["status"] == "FAILED" and node["container"]["exitCode"] == 3, node


def test_fifty_job_queues_at_most(aws: TestCluster, batch: Any) -> None:
    """AWS Batch's quota (it cannot be raised there); runs last: it fills the cluster's queues."""
    have = len(batch.describe_job_queues()["jobQueues"])
    for i in range(50 - have):
        batch.create_job_queue(jobQueueName=f"many{i}", priority=1, state="DISABLED",
                               computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "default"}])
    message = _refused(lambda: batch.create_job_queue(
        jobQueueName="one-too-many", priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "default"}]))
    assert message == "jobQueueName one-too-many: this cluster has 50 job queues, AWS Batch's limit; delete one first"
