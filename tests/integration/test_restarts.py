"""Restarts and failures: kill -9 of the head, lost agents, restarted agents. Nothing lost, nothing twice."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from hpcbatch.errors import HpcbatchError
from tests.harness import TestCluster, wait_for


def _count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_head_kill9_loses_no_acknowledged_job_and_runs_none_twice(own_cluster: TestCluster, tmp_path: Path) -> None:
    c = own_cluster.up()
    runs = tmp_path / "runs"
    runs.mkdir()
    # Long jobs that are running when the head dies, and a stream of submits around the kill.
    long_ids = [c.submit(["sh", "-c", f"echo $AWS_BATCH_JOB_ID >> {runs}/long; sleep 2; exit 4"]) for _ in range(2)]
    wait_for(lambda: all(c.job(j)["status"] == "RUNNING" for j in long_ids), 15, what="long jobs running")
    acked: list[str] = []
    stop = threading.Event()

    def submitter() -> None:
        while not stop.is_set():
            try:
                acked.append(c.submit(["sh", "-c", f"echo $AWS_BATCH_JOB_ID >> {runs}/short"]))
            except HpcbatchError:
                pass  # head down: unacknowledged, the client saw the error

    thread = threading.Thread(target=submitter)
    thread.start()
    wait_for(lambda: len(acked) >= 20, 15, what="some submits")
    c.kill("head", signal.SIGKILL)
    count_at_kill = len(acked)
    c.start_head()
    wait_for(lambda: len(acked) >= count_at_kill + 20, 15, what="submits after restart")
    stop.set()
    thread.join()

    for job_id in acked + long_ids:
        c.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=60)
    # The long jobs kept running through the restart and report their real exit code.
    for job_id in long_ids:
        job = c.job(job_id)
        assert job["status"] == "FAILED" and job["container"]["exitCode"] == 4, job
        assert len(job["attempts"]) == 1
    assert all(c.job(j)["status"] == "SUCCEEDED" for j in acked)
    # Every acknowledged job ran exactly once.
    short_runs = (runs / "short").read_text().split()
    assert sorted(set(short_runs)) == sorted(short_runs), "a job ran twice"
    assert set(acked) <= set(short_runs)
    assert sorted((runs / "long").read_text().split()) == sorted(long_ids)


def test_lost_agent_fails_attempt_with_reason_and_retries_elsewhere(own_cluster: TestCluster, tmp_path: Path) -> None:
    c = own_cluster.up()
    job_id = c.submit(["sleep", "30"], retryStrategy={"attempts": 2})
    job = c.wait_status(job_id, "RUNNING")
    victim = job["nodeName"]
    c.kill(victim, signal.SIGKILL)
    job = wait_for(lambda: (j := c.job(job_id)) and len(j["attempts"]) == 1 and j, 15, what="first attempt failed")
    assert f"Node {victim} lost" in job["attempts"][0]["statusReason"]
    # The first attempt may still run there (a dead agent cannot fence it): the retry is held
    # until the agent's fence time has passed, or until the node says the attempt is over.
    assert job["status"] == "RUNNABLE" and job["statusReason"] == f"Waiting for node {victim} to fence its attempts"
    assert c.nodes()[victim]["state"] == "DOWN"
    # The restarted agent re-adopts the orphan it left (its fence has not passed) and lists
    # it. A head that takes a lost attempt back lets it run on there (its first attempt
    # again: never a second run); one that does not has it killed, and the retry goes at
    # once, elsewhere (the victim comes back drained).
    c.client.call("/hpcbatch/v1/drainnode", {"name": victim})
    c.start_agent(victim)
    job = c.wait_status(job_id, "RUNNING", timeout=15)
    if job["nodeName"] == victim:
        assert job["attempts"] == [], job
    else:
        assert len(job["attempts"]) == 1, job
    c.client.terminate_job(jobId=job_id, reason="done")
    c.wait_status(job_id, "FAILED")
    c.client.call("/hpcbatch/v1/resumenode", {"name": victim})
    c.wait_active([victim])


def test_agent_restart_readopts_its_attempt_and_reregisters(own_cluster: TestCluster) -> None:
    c = own_cluster.up()
    job_id = c.submit(["sh", "-c", "sleep 2; exit 5"])
    job = c.wait_status(job_id, "RUNNING")
    node = job["nodeName"]
    c.kill(node, signal.SIGKILL)
    c.start_agent(node)  # back before the head's liveness deadline: its attempt is re-adopted
    job = c.wait_status(job_id, "FAILED", timeout=15)
    assert job["container"]["exitCode"] == 5 and len(job["attempts"]) == 1, job
    c.wait_active([node])
    after = c.submit(["true"])
    c.wait_status(after, "SUCCEEDED")


def test_agent_exit_during_head_outage_is_reported_after_restart(own_cluster: TestCluster) -> None:
    c = own_cluster.up()
    job_id = c.submit(["sh", "-c", "sleep 1; exit 9"])
    c.wait_status(job_id, "RUNNING")
    node = c.job(job_id)["nodeName"]
    c.kill("head", signal.SIGKILL)
    # The job ends while no head listens: the agent keeps the exit until a head acknowledges it.
    attempts = c.root / node / "attempts"
    wait_for(lambda: any(attempts.glob("*/result.json")), 15, what="the agent to hold the unacknowledged exit")
    c.start_head()
    job = c.wait_status(job_id, "FAILED", timeout=20)
    assert job["container"]["exitCode"] == 9
    assert len(job["attempts"]) == 1


def test_boto3_drives_the_api(cluster: TestCluster) -> None:
    import boto3

    key = cluster.client.call("/hpcbatch/v1/createaccesskey", {"user": "root", "role": "admin"})
    batch = boto3.client(
        "batch", endpoint_url=cluster.endpoint, region_name="local",
        aws_access_key_id=key["accessKeyId"], aws_secret_access_key=key["secretAccessKey"],
    )
    queues = batch.describe_job_queues()["jobQueues"]
    assert any(q["jobQueueName"] == "default" for q in queues)
    reg = batch.register_job_definition(
        jobDefinitionName="boto", type="container",
        containerProperties={"command": ["echo", "boto"], "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "128"}]},
        retryStrategy={"attempts": 2},
    )
    assert reg["revision"] >= 1
    job = batch.submit_job(jobName="boto-job", jobQueue="default", jobDefinition="boto")
    wait_for(lambda: batch.describe_jobs(jobs=[job["jobId"]])["jobs"][0]["status"] == "SUCCEEDED", 20, what="boto job")
    listed = batch.list_jobs(jobQueue="default", jobStatus="SUCCEEDED")["jobSummaryList"]
    assert job["jobId"] in {j["jobId"] for j in listed}
    try:
        batch.submit_job(jobName="x", jobQueue="missing", jobDefinition="boto")
    except batch.exceptions.ClientException as exc:
        assert "jobQueue missing does not exist" in str(exc)
    else:
        raise AssertionError("expected ClientException")
    batch.deregister_job_definition(jobDefinition=reg["jobDefinitionArn"])
    defs = batch.describe_job_definitions(jobDefinitionName="boto")["jobDefinitions"]
    assert defs[-1]["status"] == "INACTIVE"


def test_agent_keeps_attempt_files_only_until_the_head_has_them(cluster: TestCluster) -> None:
    ids = [cluster.submit(["echo", "bye"]) for _ in range(5)]
    for job_id in ids:
        cluster.wait_status(job_id, "SUCCEEDED")
    for job_id in ids:
        assert "bye" in cluster.logs(job_id)
    dirs = [cluster.root / n / "attempts" for n in cluster.node_names]
    wait_for(lambda: all(not any(d.iterdir()) for d in dirs), 10, what="attempt directories removed after ack")
