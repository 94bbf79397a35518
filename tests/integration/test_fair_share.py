"""Fair share, shareIdentifier rules and jobStateTimeLimitActions on a real head and agent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcbatch.errors import ClientError
from tests.harness import TestCluster, wait_for

ONE_VCPU = [{"type": "VCPU", "value": "1"}]


@pytest.fixture(scope="module")
def fair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    """One 2-vCPU node; the head allows 1-second time limits and ticks twice a second."""
    c = TestCluster(
        tmp_path_factory.mktemp("fair"), nodes=1, node_vcpus=2,
        head_extra="min_state_time_limit_s = 1\nscheduler_tick_s = 0.5\n",
    )
    try:
        c.up()
        arn = c.client.create_scheduling_policy(
            name="teams", fairsharePolicy={"shareDistribution": [{"shareIdentifier": "A"}, {"shareIdentifier": "B"}]}
        )["arn"]
        c.client.create_job_queue(
            jobQueueName="fair", priority=1, schedulingPolicyArn=arn,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "default"}],
        )
        yield c
    finally:
        c.close()


def test_two_shares_are_served_in_turn_not_in_submission_order(fair: TestCluster, tmp_path: Path) -> None:
    gate, order = tmp_path / "go", tmp_path / "order"
    blocker = fair.submit([], jobQueue="fair", shareIdentifier="A", containerOverrides={
        "command": ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"],
        "resourceRequirements": [{"type": "VCPU", "value": "2"}]})
    fair.wait_status(blocker, "RUNNING")
    jobs = [
        fair.submit([], jobQueue="fair", shareIdentifier=share, containerOverrides={
            "command": ["sh", "-c", f"echo {share} >> {order}"], "resourceRequirements": ONE_VCPU})
        for share in "AAAABBBB"
    ]
    gate.touch()
    done = [fair.wait_status(job_id, "SUCCEEDED", timeout=60) for job_id in jobs]
    # The order the head started them in (the order their echoes land in the file depends on
    # how the node's processes are scheduled, not on the head).
    started = sorted(done, key=lambda j: (j["startedAt"], jobs.index(j["jobId"])))
    first_four = [j["shareIdentifier"] for j in started[:4]]
    assert sorted(first_four) == ["A", "A", "B", "B"], first_four  # FIFO would have run A four times
    assert sorted(order.read_text().split()) == sorted("AAAABBBB")


def test_share_identifier_is_required_on_a_fair_share_queue_and_refused_elsewhere(fair: TestCluster) -> None:
    with pytest.raises(ClientError, match="shareIdentifier is required"):
        fair.submit(["true"], jobQueue="fair")
    with pytest.raises(ClientError, match="has no scheduling policy"):
        fair.submit(["true"], shareIdentifier="A")
    job = fair.wait_status(fair.submit(["true"], jobQueue="fair", shareIdentifier="B",
                                       schedulingPriorityOverride=5), "SUCCEEDED")
    assert job["shareIdentifier"] == "B" and job["schedulingPriority"] == 5


def test_fifo_queue_cannot_get_a_scheduling_policy_later(fair: TestCluster) -> None:
    [entry] = fair.client.list_scheduling_policies()["schedulingPolicies"]
    with pytest.raises(ClientError, match="cannot get one"):
        fair.client.update_job_queue(jobQueue="default", schedulingPolicyArn=entry["arn"])


def test_pending_job_names_the_dependencies_it_waits_for(fair: TestCluster, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    first = fair.submit(["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"])
    second = fair.submit(["true"], dependsOn=[{"jobId": first}])
    job = fair.wait_status(second, "PENDING")
    assert job["statusReason"] == f"Waiting for dependencies: {first}"
    gate.touch()
    fair.wait_status(second, "SUCCEEDED")


def test_policy_in_use_cannot_be_deleted(fair: TestCluster) -> None:
    [entry] = fair.client.list_scheduling_policies()["schedulingPolicies"]
    with pytest.raises(ClientError, match="still used by job queue"):
        fair.client.delete_scheduling_policy(arn=entry["arn"])
    [doc] = fair.client.describe_scheduling_policies(arns=[entry["arn"]])["schedulingPolicies"]
    assert doc["name"] == "teams" and len(doc["fairsharePolicy"]["shareDistribution"]) == 2


def test_job_state_time_limit_action_cancels_a_job_no_node_can_hold(fair: TestCluster) -> None:
    reason = "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT"
    fair.client.create_job_queue(
        jobQueueName="limited", priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "default"}],
        jobStateTimeLimitActions=[{"reason": reason, "state": "RUNNABLE", "maxTimeSeconds": 1, "action": "CANCEL"}],
    )
    huge = fair.submit([], jobQueue="limited", tags={"hpcbatch:allowUnsatisfiable": "true"}, containerOverrides={
        "command": ["true"], "resourceRequirements": [{"type": "VCPU", "value": "64"}]})
    wait_for(lambda: fair.job(huge).get("statusReason", "").startswith(reason), 10, what="requirement reason")
    job = fair.wait_status(huge, "FAILED", timeout=20)
    assert job["statusReason"] == f"Canceled by JobStateTimeLimit action due to reason: {reason}"
