"""SubmitJob's planning (hpcbatch.model.submit) with plain values: no store, no head, no clock."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from hpcbatch.errors import ClientError
from hpcbatch.model.jobs import JobRecord, ResourceRequest
from hpcbatch.model.lifecycle import JobStatus
from hpcbatch.model.submit import SubmitFacts, plan_submit

QUEUE = {"jobQueueName": "q", "jobQueueArn": "arn:q", "state": "ENABLED"}
FAIR_QUEUE = {**QUEUE, "schedulingPolicyArn": "arn:sp"}
CONTAINER = {"command": ["echo", "Ref::word"], "resourceRequirements": [
    {"type": "VCPU", "value": "2"}, {"type": "MEMORY", "value": "256"}]}
JOBDEF = {"jobDefinitionName": "jd", "revision": 3, "jobDefinitionArn": "arn:jd:3", "type": "container",
          "containerProperties": CONTAINER, "parameters": {"word": "hi"}, "retryStrategy": {"attempts": 2},
          "timeout": {"attemptDurationSeconds": 600}, "schedulingPriority": 7, "tags": {"team": "a"}}
NODES = {"numNodes": 3, "mainNode": 0, "nodeRangeProperties": [
    {"targetNodes": "0", "container": {"command": ["mpirun", "app"], "resourceRequirements": [
        {"type": "VCPU", "value": "4"}, {"type": "MEMORY", "value": "128"}]}},
    {"targetNodes": "1:", "container": {"resourceRequirements": [
        {"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "512"}, {"type": "GPU", "value": "1"}]}},
]}
MNP = {"jobDefinitionName": "mnp", "revision": 1, "jobDefinitionArn": "arn:mnp:1", "type": "multinode",
       "nodeProperties": NODES}
BODY = {"jobName": "j", "jobQueue": "q", "jobDefinition": "jd"}


def facts(jobdef: dict[str, Any] = JOBDEF, queue: dict[str, Any] = QUEUE, **more: Any) -> SubmitFacts:
    jobdef = copy.deepcopy(jobdef)
    multinode = jobdef["type"] == "multinode"
    return SubmitFacts(
        queue=queue, job_definition=jobdef,
        container={} if multinode else jobdef["containerProperties"],
        node_properties=jobdef["nodeProperties"] if multinode else None,
        owner="alice", job_id="job-1", created_at=1_000, **more,
    )


def other_job(job_id: str, array_size: int | None = None) -> JobRecord:
    return JobRecord(job_id=job_id, job_name="o", job_queue="q", job_queue_arn="arn:q", job_definition="arn:jd:3",
                     owner="alice", status=JobStatus.RUNNABLE, created_at=1, command=["true"], environment={},
                     resources=ResourceRequest(vcpus=1, memory_mib=64), container={}, array_size=array_size)


def test_the_definition_gives_the_defaults_and_the_request_wins() -> None:
    plan = plan_submit({**BODY, "retryStrategy": {"attempts": 5}, "parameters": {"word": "yo"}}, facts())
    job = plan.job
    assert (job.job_id, job.owner, job.created_at, job.status) == ("job-1", "alice", 1_000, JobStatus.SUBMITTED)
    assert job.command == ["echo", "yo"] and job.parameters == {"word": "yo"}
    assert (job.retry_attempts, job.timeout_s, job.scheduling_priority) == (5, 600, 7)
    assert job.resources == ResourceRequest(vcpus=2, memory_mib=256)
    assert job.tags == {} and plan.children == [] and plan.scripts == []
    assert [(p.field, p.limits_field) for p in plan.containers] == [
        ("containerOverrides", "jobDefinition jd:3 containerProperties")]


def test_tags_propagate_from_the_definition_only_when_asked() -> None:
    assert plan_submit({**BODY, "tags": {"x": "1"}}, facts()).job.tags == {"x": "1"}
    assert plan_submit({**BODY, "tags": {"x": "1"}, "propagateTags": True}, facts()).job.tags == {"team": "a", "x": "1"}


def test_node_ranges_resolve_to_one_child_per_node_and_the_widest_request() -> None:
    body = {**BODY, "jobDefinition": "mnp", "nodeOverrides": {"numNodes": 4}}
    plan = plan_submit(body, facts(MNP))
    job = plan.job
    assert job.gang and (job.num_nodes, job.main_node) == (4, 0) and job.node_properties["numNodes"] == 4
    assert job.command == ["mpirun", "app"]
    assert job.resources == ResourceRequest(vcpus=4, memory_mib=512, gpus=1)
    assert [c.job_id for c in plan.children] == [f"job-1#{i}" for i in range(4)]
    assert [c.node_index for c in plan.children] == [0, 1, 2, 3]
    assert [p.limits_field for p in plan.containers][-1] == "jobDefinition mnp:1 node 3"


def test_a_script_is_for_the_shell_to_find() -> None:
    env = [{"name": "HPCBATCH_SCRIPT_ID", "value": "sha256:s"}]
    plan = plan_submit({**BODY, "containerOverrides": {"command": [], "environment": env}}, facts())
    assert plan.job.script_id == "sha256:s" and plan.job.environment == {}
    assert plan.scripts == [("containerOverrides", "sha256:s")]


def test_fair_share_queues_need_one_share_and_others_none() -> None:
    assert plan_submit({**BODY, "shareIdentifier": "blue"}, facts(queue=FAIR_QUEUE)).job.share_identifier == "blue"
    with pytest.raises(ClientError, match="shareIdentifier is required"):
        plan_submit(BODY, facts(queue=FAIR_QUEUE))
    with pytest.raises(ClientError, match=r"\* is for policies only"):
        plan_submit({**BODY, "shareIdentifier": "b*"}, facts(queue=FAIR_QUEUE))
    with pytest.raises(ClientError, match="has no scheduling policy"):
        plan_submit({**BODY, "shareIdentifier": "blue"}, facts())


def test_dependencies_must_exist_and_fit() -> None:
    found = {"a": other_job("a", array_size=4), "b": other_job("b")}
    plan = plan_submit({**BODY, "dependsOn": [{"jobId": "b"}]}, facts(dependencies=found))
    assert plan.job.depends_on == [{"jobId": "b"}]
    array = {**BODY, "arrayProperties": {"size": 4}}
    plan_submit({**array, "dependsOn": [{"jobId": "a", "type": "N_TO_N"}, {"type": "SEQUENTIAL"}]}, facts(dependencies=found))
    for deps, message in [
        ([{"jobId": "zzz"}], r"dependsOn\[0\].jobId zzz does not exist"),
        ([{"jobId": "b", "type": "N_TO_N"}], "N_TO_N needs an array job of the same size"),
        ([{"jobId": "a", "type": "SEQUENTIAL"}], "names no jobId"),
        ([{"type": "N_TO_N"}], r"dependsOn\[0\].jobId is required"),
    ]:
        with pytest.raises(ClientError, match=message):
            plan_submit({**array, "dependsOn": deps}, facts(dependencies=found))
    with pytest.raises(ClientError, match="applies to array jobs only"):
        plan_submit({**BODY, "dependsOn": [{"jobId": "b", "type": "N_TO_N"}]}, facts(dependencies=found))


@pytest.mark.parametrize(("body", "jobdef", "message"), [
    ({**BODY, "arrayProperties": {"size": 2}}, MNP, "cannot also be an array job"),
    ({**BODY, "nodeOverrides": {"numNodes": 2}}, JOBDEF, "nodeOverrides applies to multinode"),
    ({**BODY, "containerOverrides": {"command": ["x"]}}, MNP, "takes nodeOverrides"),
    ({**BODY, "containerOverrides": {"command": []}}, {**JOBDEF, "containerProperties": {}}, "no command to run"),
    ({**BODY, "tags": {"hpcbatch:maxRunning": "2"}}, JOBDEF, "on an array job"),
    ({**BODY, "arrayProperties": {"size": 3}, "tags": {"hpcbatch:maxRunning": "0"}}, JOBDEF, "positive number"),
])
def test_a_request_that_does_not_fit_its_definition_is_refused(
    body: dict[str, Any], jobdef: dict[str, Any], message: str
) -> None:
    with pytest.raises(ClientError, match=message):
        plan_submit(body, facts(jobdef))


def test_a_disabled_queue_takes_no_jobs() -> None:
    with pytest.raises(ClientError, match="DISABLED"):
        plan_submit(BODY, facts(queue={**QUEUE, "state": "DISABLED"}))


def test_an_array_caps_its_running_children() -> None:
    plan = plan_submit({**BODY, "arrayProperties": {"size": 3}, "tags": {"hpcbatch:maxRunning": "2"}}, facts())
    assert (plan.job.array_size, plan.job.max_running) == (3, 2)


def test_the_idempotency_token_is_kept_on_the_job() -> None:
    job = plan_submit(BODY, facts(client_token="t", request_digest="d")).job
    assert (job.client_token, job.request_digest) == ("t", "d")
