"""Compute environments and job queues through the real API: AWS semantics and clean refusals."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hpcbatch.errors import ClientError
from tests.harness import TestCluster, wait_for


def test_disabled_compute_environment_places_nothing_new_but_running_jobs_finish(own_cluster: TestCluster, tmp_path: Path) -> None:
    c = own_cluster.up()
    gate = tmp_path / "go"
    running = c.submit(["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"])
    c.wait_status(running, "RUNNING")
    c.client.update_compute_environment(computeEnvironment="default", state="DISABLED")
    waiting = c.submit(["true"])
    job = c.wait_status(waiting, "RUNNABLE")
    wait_for(lambda: "No ENABLED compute environment" in c.job(waiting).get("statusReason", ""), 10, what="wait reason")
    gate.touch()
    c.wait_status(running, "SUCCEEDED")
    assert c.job(waiting)["status"] == "RUNNABLE"
    c.client.update_compute_environment(computeEnvironment="default", state="ENABLED")
    job = c.wait_status(waiting, "SUCCEEDED")
    assert job["attempts"]


def test_max_vcpus_caps_what_a_compute_environment_runs_at_once(own_cluster: TestCluster, tmp_path: Path) -> None:
    c = own_cluster
    c.up(queue=False)
    c.client.create_compute_environment(computeEnvironmentName="default", type="UNMANAGED", computeResources={"maxvCpus": 1})
    c.client.create_job_queue(jobQueueName="default", priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "default"}])
    gate = tmp_path / "go"
    first = c.submit(["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"])
    second = c.submit(["true"])
    c.wait_status(first, "RUNNING")
    wait_for(lambda: "maxvCpus" in c.job(second).get("statusReason", ""), 10, what="maxvCpus wait reason")
    gate.touch()
    c.wait_status(second, "SUCCEEDED")


def test_higher_priority_queue_goes_first(own_cluster: TestCluster, tmp_path: Path) -> None:
    c = own_cluster
    c.node_names = ["node1"]
    c.up()
    c.client.create_job_queue(jobQueueName="urgent", priority=10, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "default"}])
    gate = tmp_path / "go"
    order = tmp_path / "order"
    # Fill node1's 2 vCPUs... node vCPU count depends on the machine, so hold every vCPU with one job.
    vcpus = c.nodes()["node1"]["vcpus"]
    blocker = c.submit(["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"],
                       containerOverrides={"command": ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"],
                                           "resourceRequirements": [{"type": "VCPU", "value": str(vcpus)}]})
    c.wait_status(blocker, "RUNNING")
    low = c.submit(["sh", "-c", f"echo low >> {order}"], containerOverrides={
        "command": ["sh", "-c", f"echo low >> {order}"], "resourceRequirements": [{"type": "VCPU", "value": str(vcpus)}]})
    high = c.submit(["sh", "-c", f"echo high >> {order}"], jobQueue="urgent", containerOverrides={
        "command": ["sh", "-c", f"echo high >> {order}"], "resourceRequirements": [{"type": "VCPU", "value": str(vcpus)}]})
    c.wait_status(low, "RUNNABLE")
    c.wait_status(high, "RUNNABLE")
    gate.touch()
    c.wait_status(low, "SUCCEEDED")
    c.wait_status(high, "SUCCEEDED")
    assert order.read_text().split() == ["high", "low"]


def test_resource_operations_refuse_bad_requests_and_store_nothing(cluster: TestCluster) -> None:
    client = cluster.client
    ces = client.describe_compute_environments()["computeEnvironments"]
    queues = client.describe_job_queues()["jobQueues"]
    cases = [
        (client.create_compute_environment, {"computeEnvironmentName": "default", "type": "UNMANAGED"}, "already exists"),
        (client.create_compute_environment, {"computeEnvironmentName": "x y", "type": "UNMANAGED"}, "computeEnvironmentName"),
        (client.create_compute_environment, {"computeEnvironmentName": "z", "type": "SPOT"}, "type"),
        (client.create_job_queue, {"jobQueueName": "q", "priority": 1, "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": "missing"}]}, "computeEnvironmentOrder[0].computeEnvironment missing does not exist"),
        (client.create_job_queue, {"jobQueueName": "q", "priority": 1, "computeEnvironmentOrder": [{"order": i, "computeEnvironment": "default"} for i in range(4)]}, "computeEnvironmentOrder"),
        (client.create_job_queue, {"jobQueueName": "q", "priority": 5000, "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": "default"}]}, "priority"),
        (client.delete_compute_environment, {"computeEnvironment": "default"}, "must be DISABLED"),
        (client.delete_job_queue, {"jobQueue": "default"}, "must be DISABLED"),
        (client.update_job_queue, {"jobQueue": "nope", "priority": 2}, "jobQueue nope does not exist"),
        (client.register_job_definition, {"jobDefinitionName": "jd", "type": "container"}, "containerProperties"),
        (client.register_job_definition, {"jobDefinitionName": "jd", "type": "container", "containerProperties": {"command": ["x"]}, "retryStrategy": {"attempts": 0}}, "retryStrategy.attempts"),
        (client.deregister_job_definition, {"jobDefinition": "never-registered"}, "does not exist"),
        (client.cancel_job, {"jobId": "no-such-job", "reason": "x"}, "does not exist"),
    ]
    for call, body, needle in cases:
        with pytest.raises(ClientError) as err:
            call(**body)
        assert needle in str(err.value), (body, str(err.value))
        assert "\n" not in str(err.value)
    assert client.describe_compute_environments()["computeEnvironments"] == ces
    assert client.describe_job_queues()["jobQueues"] == queues
    assert client.describe_job_definitions(jobDefinitionName="jd")["jobDefinitions"] == []


def test_delete_queue_and_compute_environment_in_aws_order(cluster: TestCluster) -> None:
    client = cluster.client
    client.create_compute_environment(computeEnvironmentName="temp-ce", type="UNMANAGED")
    client.create_job_queue(jobQueueName="temp-q", priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "temp-ce"}])
    client.update_compute_environment(computeEnvironment="temp-ce", state="DISABLED")
    with pytest.raises(ClientError, match="still used by job queue"):
        client.delete_compute_environment(computeEnvironment="temp-ce")
    client.update_job_queue(jobQueue="temp-q", state="DISABLED")
    with pytest.raises(ClientError, match="DISABLED"):
        cluster.submit(["true"], jobQueue="temp-q")
    client.delete_job_queue(jobQueue="temp-q")
    client.delete_compute_environment(computeEnvironment="temp-ce")
    assert client.describe_job_queues(jobQueues=["temp-q"])["jobQueues"] == []
    assert client.describe_compute_environments(computeEnvironments=["temp-ce"])["computeEnvironments"] == []


def test_job_definition_revisions_and_deregister(cluster: TestCluster) -> None:
    client = cluster.client
    props = {"command": ["true"], "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "64"}]}
    r1 = client.register_job_definition(jobDefinitionName="revs", type="container", containerProperties=props)
    r2 = client.register_job_definition(jobDefinitionName="revs", type="container", containerProperties=props)
    assert (r1["revision"], r2["revision"]) == (1, 2)
    client.deregister_job_definition(jobDefinition="revs:2")
    defs = {d["revision"]: d["status"] for d in client.describe_job_definitions(jobDefinitionName="revs")["jobDefinitions"]}
    assert defs == {1: "ACTIVE", 2: "INACTIVE"}
    job_id = cluster.submit([], jobDefinition="revs", containerOverrides={})
    assert cluster.job(job_id)["jobDefinition"].endswith("revs:1")


def test_finished_jobs_are_pruned_after_the_retention_with_their_logs(tmp_path: Path) -> None:
    # A retention of ~1 s stands in for AWS's 7 days (the default here too).
    c = TestCluster(tmp_path, nodes=1, head_extra="retention_days = 0.00001\nprune_interval_s = 0.3")
    try:
        c.up()
        job_id = c.submit(["echo", "short-lived"])
        job = c.wait_status(job_id, "SUCCEEDED")
        attempt_log = tmp_path / "head" / "logs" / f"{job['attempts'][0]['container']['logStreamName'].rsplit('/', 1)[-1]}.log"
        wait_for(lambda: c.client.describe_jobs(jobs=[job_id])["jobs"] == [], 10, what="the job to be pruned")
        assert not attempt_log.exists()
        # The node's own events (its join) go after the same retention: the head says so.
        wait_for(lambda: not [e for e in c.client.call("/hpcbatch/v1/listevents", {"afterEventId": 0})["events"]
                              if e["type"] == "node"], 10, what="the node's events to be pruned")
        assert re.search(r"pruned \d+ jobs finished and [1-9]\d* node events", (tmp_path / "head.log").read_text())
    finally:
        c.close()


def test_admin_drains_a_node_running_jobs_finish_and_nothing_new_lands(own_cluster: TestCluster, tmp_path: Path) -> None:
    c = own_cluster.up()
    gate = tmp_path / "go"
    hold = ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"]
    running = c.submit(hold)
    node = c.wait_status(running, "RUNNING")["nodeName"]
    c.client.call("/hpcbatch/v1/drainnode", {"name": node, "reason": "disk swap"})
    assert c.nodes()[node]["state"] == "DRAINING" and c.nodes()[node]["stateReason"] == "disk swap"
    later = [c.submit(["true"]) for _ in range(6)]
    for job_id in later:
        assert c.wait_status(job_id, "SUCCEEDED")["nodeName"] != node
    gate.touch()
    c.wait_status(running, "SUCCEEDED")
    wait_for(lambda: c.nodes()[node]["state"] == "DRAINED", 10, what="DRAINED")
    # The drain survives a head restart, and resume brings the node back.
    c.kill("head")
    c.start_head()
    wait_for(lambda: c.nodes().get(node, {}).get("state") == "DRAINED", 15, what="DRAINED after restart")
    c.client.call("/hpcbatch/v1/resumenode", {"name": node})
    assert c.nodes()[node]["state"] == "ACTIVE"


def test_agents_join_a_compute_environment_by_label(tmp_path: Path) -> None:
    c = TestCluster(tmp_path, nodes=2, agent_extra='compute_environment = ""\nlabels = {partition = "gpu"}')
    try:
        c.up(queue=False)
        assert {n["computeEnvironment"] for n in c.nodes().values()} == {None}
        c.client.create_compute_environment(
            computeEnvironmentName="gpu-pool", type="UNMANAGED", tags={"hpcbatch:nodeSelector": "partition=gpu"}
        )
        c.client.create_job_queue(jobQueueName="default", priority=1,
                                  computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "gpu-pool"}])
        wait_for(lambda: {n["computeEnvironment"] for n in c.nodes().values()} == {"gpu-pool"}, 10, what="nodes in gpu-pool")
        job = c.wait_status(c.submit(["true"]), "SUCCEEDED")
        assert job["container"]["exitCode"] == 0
    finally:
        c.close()


def test_why_and_the_queue_snapshot_explain_a_waiting_job(cluster: TestCluster) -> None:
    big = {"command": ["true"], "resourceRequirements": [{"type": "VCPU", "value": "64"}]}
    job_id = cluster.submit(["true"], containerOverrides=big, tags={"hpcbatch:allowUnsatisfiable": "true"})
    cluster.wait_status(job_id, "RUNNABLE")
    why = wait_for(lambda: (w := cluster.client.call("/hpcbatch/v1/whyjob", {"jobId": job_id})) and w.get("statusReason") and w, 10, what="a reason")
    assert "can hold" in why["statusReason"] and why["queuePosition"] >= 1
    snapshot = cluster.client.call("/v1/getjobqueuesnapshot", {"jobQueue": "default"})
    assert any(j["jobArn"].endswith(job_id) for j in snapshot["frontOfQueue"]["jobs"])
    from click.testing import CliRunner

    from hpcbatch.cli.main import cli

    result = CliRunner().invoke(cli, ["--endpoint", cluster.socket_endpoint, "why", job_id])
    assert result.exit_code == 0 and "reason:" in result.output and "position in its queue" in result.output
    cluster.client.cancel_job(jobId=job_id, reason="done")


def test_why_names_the_events_that_caused_the_last_decision(cluster: TestCluster) -> None:
    from click.testing import CliRunner

    from hpcbatch.cli.main import cli

    job_id = cluster.submit(["true"])
    cluster.wait_status(job_id, "SUCCEEDED")
    why = cluster.client.call("/hpcbatch/v1/whyjob", {"jobId": job_id})
    last = why["decisions"][-1]
    assert last["decision"].startswith(f"start {job_id} on "), why
    runnable = [c for c in last["causes"] if c["type"] == "JobRunnable"]
    assert runnable and runnable[0]["jobId"] == job_id and runnable[0]["eventId"], last
    result = CliRunner().invoke(cli, ["--endpoint", cluster.socket_endpoint, "why", job_id])
    assert result.exit_code == 0, result.output
    assert f"caused by: JobRunnable {job_id} (event {runnable[0]['eventId']})" in result.output, result.output
