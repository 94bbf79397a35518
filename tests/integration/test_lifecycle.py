"""Jobs through a real head and real agents: lifecycle, environment, logs, cancel, terminate, retries."""

from __future__ import annotations

import sys

import pytest

from hpcbatch.errors import ClientError
from tests.harness import TestCluster, wait_for


def test_job_succeeds_and_records_every_transition(cluster: TestCluster) -> None:
    job_id = cluster.submit(["sh", "-c", "echo hello from $AWS_BATCH_JOB_ID"])
    job = cluster.wait_status(job_id, "SUCCEEDED")
    assert job["container"]["exitCode"] == 0
    assert job["createdAt"] <= job["startedAt"] <= job["stoppedAt"]
    assert len(job["attempts"]) == 1
    attempt = job["attempts"][0]
    assert attempt["container"]["logStreamName"].startswith("hpcbatch-default/default/")
    assert job["nodeName"] in cluster.node_names
    assert job["owner"]
    wait_for(lambda: f"hello from {job_id}" in cluster.logs(job_id), 10, what="log output")


def test_job_sees_aws_batch_environment(cluster: TestCluster) -> None:
    job_id = cluster.submit(
        ["sh", "-c", "env | grep -E '^(AWS_BATCH_|MY_VAR)' | sort"],
        containerOverrides={"environment": [{"name": "MY_VAR", "value": "42"}]},
    )
    cluster.wait_status(job_id, "SUCCEEDED")
    out = wait_for(lambda: (log := cluster.logs(job_id)) and "AWS_BATCH_JOB_ID" in log and log, 10, what="env output")
    assert f"AWS_BATCH_JOB_ID={job_id}" in out
    assert "AWS_BATCH_JOB_ATTEMPT=1" in out
    assert "AWS_BATCH_JQ_NAME=default" in out
    assert "AWS_BATCH_CE_NAME=default" in out
    assert "MY_VAR=42" in out


def test_job_sees_aws_execution_env_as_in_an_ecs_container(cluster: TestCluster) -> None:
    """ECS sets AWS_EXECUTION_ENV in AWS Batch containers; Metaflow's @batch steps fail without it."""
    job_id = cluster.submit(["sh", "-c", 'echo "exec_env=$AWS_EXECUTION_ENV"'])
    cluster.wait_status(job_id, "SUCCEEDED")
    out = wait_for(lambda: (log := cluster.logs(job_id)) and "exec_env=" in log and log, 10, what="env output")
    assert "exec_env=AWS_ECS_EC2" in out


def test_nonzero_exit_fails_with_exit_code(cluster: TestCluster) -> None:
    job_id = cluster.submit(["sh", "-c", "exit 7"])
    job = cluster.wait_status(job_id, "FAILED")
    assert job["container"]["exitCode"] == 7
    assert job["statusReason"] == "Essential container in task exited"


def test_retry_strategy_retries_until_attempts_used(cluster: TestCluster) -> None:
    job_id = cluster.submit(["sh", "-c", "echo attempt $AWS_BATCH_JOB_ATTEMPT; exit 3"], retryStrategy={"attempts": 3})
    job = cluster.wait_status(job_id, "FAILED")
    assert [a["container"]["exitCode"] for a in job["attempts"]] == [3, 3, 3]
    assert "attempt 3" in wait_for(lambda: cluster.logs(job_id, attempt=2), 10, what="attempt 3 log")


def test_evaluate_on_exit_exit_rule_stops_retries(cluster: TestCluster) -> None:
    job_id = cluster.submit(
        ["sh", "-c", "exit 5"],
        retryStrategy={"attempts": 5, "evaluateOnExit": [{"onExitCode": "5", "action": "EXIT"}, {"onExitCode": "*", "action": "RETRY"}]},
    )
    job = cluster.wait_status(job_id, "FAILED")
    assert len(job["attempts"]) == 1


def test_retry_then_success_uses_second_attempt(cluster: TestCluster, tmp_path) -> None:
    marker = tmp_path / "first-attempt-done"
    job_id = cluster.submit(
        ["sh", "-c", f"if [ -e {marker} ]; then exit 0; else touch {marker}; exit 1; fi"],
        retryStrategy={"attempts": 2},
    )
    job = cluster.wait_status(job_id, "SUCCEEDED")
    assert [a["container"]["exitCode"] for a in job["attempts"]] == [1, 0]


def test_cancel_runnable_job_fails_it_without_running(cluster: TestCluster) -> None:
    # A job no node can hold stays RUNNABLE, so cancel always finds it there.
    job_id = cluster.submit(["true"], containerOverrides={"command": ["true"], "resourceRequirements": [{"type": "VCPU", "value": "64"}]},
                            tags={"hpcbatch:allowUnsatisfiable": "true"})  # else refused at submit (issue 18)
    job = cluster.wait_status(job_id, "RUNNABLE")
    assert "can hold" in job.get("statusReason", "")
    cluster.client.cancel_job(jobId=job_id, reason="changed my mind")
    job = cluster.wait_status(job_id, "FAILED")
    assert job["statusReason"] == "changed my mind"
    assert job["isCancelled"] is True
    assert job["attempts"] == []


def test_cancel_does_not_stop_a_running_job(cluster: TestCluster) -> None:
    job_id = cluster.submit(["sleep", "1.5"])
    cluster.wait_status(job_id, "RUNNING")
    cluster.client.cancel_job(jobId=job_id, reason="too late")
    job = cluster.wait_status(job_id, "SUCCEEDED")
    assert job["isCancelled"] is False


def test_terminate_kills_a_running_job_and_is_not_retried(cluster: TestCluster) -> None:
    job_id = cluster.submit(["sleep", "60"], retryStrategy={"attempts": 3})
    cluster.wait_status(job_id, "RUNNING")
    cluster.client.terminate_job(jobId=job_id, reason="operator stop")
    job = cluster.wait_status(job_id, "FAILED", timeout=15)
    assert job["statusReason"] == "operator stop"
    assert job["isTerminated"] is True
    assert len(job["attempts"]) == 1


def test_timeout_kills_attempt_with_aws_reason_and_is_not_retried(own_cluster: TestCluster) -> None:
    own_cluster.up()
    # attemptDurationSeconds has AWS's 60 s minimum; prove the path with a 60 s timeout
    # would be slow, so the agent-side timeout is exercised in the runner's unit tests and
    # here we check the API carries it through to the job.
    job_id = own_cluster.submit(["true"], timeout={"attemptDurationSeconds": 60})
    job = own_cluster.wait_status(job_id, "SUCCEEDED")
    assert job["timeout"] == {"attemptDurationSeconds": 60}


def test_memory_limit_kills_job_with_oom_reason(cluster: TestCluster) -> None:
    hog = "x = bytearray(300 * 1024 * 1024); import time; time.sleep(30)"
    job_id = cluster.submit(
        [sys.executable, "-c", hog],
        containerOverrides={"command": [sys.executable, "-c", hog], "resourceRequirements": [{"type": "MEMORY", "value": "64"}]},
    )
    job = cluster.wait_status(job_id, "FAILED", timeout=30)
    assert job["container"]["reason"] == "OutOfMemoryError: Container killed due to memory usage"


def test_image_job_gets_a_clear_reason_with_or_without_a_runtime(cluster: TestCluster) -> None:
    # Nodes find podman on their own (tests/integration/test_containers.py runs images).
    reg = cluster.client.register_job_definition(
        jobDefinitionName="with-image", type="container",
        containerProperties={"image": "127.0.0.1:1/no/such-image:1", "command": ["true"], "vcpus": 1, "memory": 64},
    )
    job_id = cluster.submit(["true"], jobDefinition=reg["jobDefinitionArn"], containerOverrides={})
    if any(n.get("containerRuntime") for n in cluster.nodes().values()):
        job = cluster.wait_status(job_id, "FAILED", timeout=60)
        assert job["statusReason"].startswith("CannotPullContainerError: "), job["statusReason"]
    else:  # no node may run it: it waits, saying why
        reason = wait_for(lambda: cluster.job(job_id).get("statusReason"), 10, what="a wait reason")
        assert "container runtime" in reason, reason
        cluster.client.cancel_job(jobId=job_id, reason="done")


def test_parameters_substitute_into_command(cluster: TestCluster) -> None:
    cluster.client.register_job_definition(
        jobDefinitionName="greeter", type="container", parameters={"who": "world"},
        containerProperties={"command": ["echo", "hello", "Ref::who"], "vcpus": 1, "memory": 64},
    )
    job_id = cluster.submit([], jobDefinition="greeter", parameters={"who": "researcher"}, containerOverrides={})
    job = cluster.wait_status(job_id, "SUCCEEDED")
    assert job["container"]["command"] == ["echo", "hello", "researcher"]
    assert "hello researcher" in wait_for(lambda: cluster.logs(job_id), 10, what="log")


def test_dependency_waits_then_runs(cluster: TestCluster) -> None:
    first = cluster.submit(["sleep", "1"])
    second = cluster.submit(["true"], dependsOn=[{"jobId": first}])
    assert cluster.job(second)["status"] in ("PENDING", "SUBMITTED")
    cluster.wait_status(second, "SUCCEEDED")
    assert cluster.job(first)["stoppedAt"] <= cluster.job(second)["startedAt"]


def test_dependency_failure_fails_dependent(cluster: TestCluster) -> None:
    first = cluster.submit(["false"])
    second = cluster.submit(["true"], dependsOn=[{"jobId": first}])
    job = cluster.wait_status(second, "FAILED")
    assert job["statusReason"] == "Dependent Job failed"


def test_script_is_fetched_and_run_without_shared_storage(cluster: TestCluster) -> None:
    script_id = cluster.client.put_script("#!/bin/sh\necho script got \"$1\" and $AWS_BATCH_JOB_ATTEMPT\n")
    job_id = cluster.submit(
        ["arg-one"], containerOverrides={"command": ["arg-one"], "environment": [{"name": "HPCBATCH_SCRIPT_ID", "value": script_id}]}
    )
    cluster.wait_status(job_id, "SUCCEEDED")
    assert "script got arg-one and 1" in wait_for(lambda: cluster.logs(job_id), 10, what="log")


def test_list_jobs_newest_first_with_pagination(cluster: TestCluster) -> None:
    ids = [cluster.submit(["true"], jobName=f"page-{i}") for i in range(5)]
    seen = []
    token = None
    while True:
        body = {"jobQueue": "default", "filters": [{"name": "JOB_NAME", "values": ["page-*"]}], "maxResults": 2}
        if token:
            body["nextToken"] = token
        page = cluster.client.list_jobs(**body)
        seen.extend(j["jobId"] for j in page["jobSummaryList"])
        token = page.get("nextToken")
        if not token:
            break
    assert seen == list(reversed(ids))


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"jobName": "x", "jobQueue": "nope", "jobDefinition": "hpcbatch-default"}, "jobQueue nope does not exist"),
        ({"jobName": "x", "jobQueue": "default", "jobDefinition": "nope"}, "jobDefinition nope does not exist"),
        ({"jobName": "bad name", "jobQueue": "default", "jobDefinition": "hpcbatch-default"}, "jobName"),
        ({"jobName": "x", "jobQueue": "default", "jobDefinition": "hpcbatch-default", "retryStrategy": {"attempts": 11}}, "retryStrategy.attempts"),
        ({"jobName": "x", "jobQueue": "default", "jobDefinition": "hpcbatch-default", "timeout": {"attemptDurationSeconds": 5}}, "attemptDurationSeconds"),
        ({"jobName": "x", "jobQueue": "default", "jobDefinition": "hpcbatch-default", "containerOverrides": {"environment": [{"name": "AWS_BATCH_X", "value": "1"}]}}, "AWS_BATCH_"),
        ({"jobName": "x", "jobQueue": "default", "jobDefinition": "hpcbatch-default", "dependsOn": [{"jobId": "a"}] * 21}, "dependsOn"),
    ],
)
def test_bad_submit_is_refused_with_field_and_stores_nothing(cluster: TestCluster, body: dict, needle: str) -> None:
    before = len(cluster.client.list_jobs(jobQueue="default", maxResults=1000, filters=[{"name": "AFTER_CREATED_AT", "values": ["0"]}])["jobSummaryList"])
    with pytest.raises(ClientError) as err:
        cluster.client.submit_job(**body)
    assert needle in str(err.value)
    after = len(cluster.client.list_jobs(jobQueue="default", maxResults=1000, filters=[{"name": "AFTER_CREATED_AT", "values": ["0"]}])["jobSummaryList"])
    assert after == before


def test_oversized_submit_body_is_refused(cluster: TestCluster) -> None:
    big = "x" * (31 * 1024)
    with pytest.raises(ClientError, match="30 KiB"):
        cluster.submit(["echo", big])
