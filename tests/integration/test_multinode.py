"""Multi-node parallel jobs on a loopback cluster: gangs, node children, environment, endings."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import TestCluster, wait_for


@pytest.fixture(scope="module")
def quad(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    c = TestCluster(tmp_path_factory.mktemp("quad"), nodes=4)
    try:
        yield c.up()
    finally:
        c.close()


def submit_gang(c: TestCluster, nodes: int, main_command: list[str], others: list[str] | None = None, **extra: Any) -> str:
    ranges = [{"targetNodes": "0", "containerOverrides": {"command": main_command}}]
    if others is not None and nodes > 1:
        ranges.append({"targetNodes": "1:", "containerOverrides": {"command": others}})
    body = {
        "jobName": "gang", "jobQueue": "default", "jobDefinition": "hpcbatch-default-mnp",
        "nodeOverrides": {"numNodes": nodes, "nodePropertyOverrides": ranges}, **extra,
    }
    return str(c.client.submit_job(**body)["jobId"])


def test_gang_runs_on_whole_distinct_nodes_with_aws_environment(quad: TestCluster) -> None:
    env_dump = ["sh", "-c", "env | grep -E '^(AWS_BATCH_|HPCBATCH_HOSTFILE|MASTER_ADDR|NODE_RANK|NNODES)' | sort"]
    # The main node's exit ends the job and stops the others: let them print first.
    main = ["sh", "-c", env_dump[2] + "; sleep 1"]
    job_id = submit_gang(quad, 3, main, env_dump)
    job = quad.wait_status(job_id, "SUCCEEDED", timeout=30)
    assert job["nodeProperties"]["numNodes"] == 3
    children = quad.client.list_jobs(multiNodeJobId=job_id)["jobSummaryList"]
    assert sorted(c["jobId"] for c in children) == [f"{job_id}#{i}" for i in range(3)]
    details = quad.client.describe_jobs(jobs=[f"{job_id}#{i}" for i in range(3)])["jobs"]
    nodes = [d["nodeName"] for d in details]
    assert len(set(nodes)) == 3, nodes
    assert [d["nodeDetails"]["nodeIndex"] for d in details] == [0, 1, 2]
    assert details[0]["nodeDetails"]["isMainNode"] is True
    main_out = wait_for(lambda: quad.logs(f"{job_id}#0"), 10, what="main node output")
    assert "AWS_BATCH_JOB_NUM_NODES=3" in main_out and "AWS_BATCH_JOB_NODE_INDEX=0" in main_out
    assert "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS" not in main_out
    child_out = wait_for(lambda: quad.logs(f"{job_id}#2"), 10, what="node 2 output")
    assert "AWS_BATCH_JOB_NODE_INDEX=2" in child_out and "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS=" in child_out
    assert f"AWS_BATCH_JOB_ID={job_id}#2" in child_out
    # The parent's times and exit come from the main node.
    assert job["container"]["exitCode"] == 0


def test_main_node_exit_ends_the_job_and_stops_the_others(quad: TestCluster) -> None:
    job_id = submit_gang(quad, 2, ["sh", "-c", "sleep 1; exit 3"], ["sleep", "300"])
    job = quad.wait_status(job_id, "FAILED", timeout=30)
    assert job["container"]["exitCode"] == 3
    child = quad.job(f"{job_id}#1")
    assert child["status"] == "FAILED"
    assert child["attempts"][0]["statusReason"] == "Main node exited"
    # Nodes are free again: a 4-node job now fits.
    quad.wait_status(submit_gang(quad, 4, ["true"]), "SUCCEEDED", timeout=30)


def test_gangs_never_share_nodes_and_two_3_node_jobs_serialize(quad: TestCluster, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    hold = ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"]
    first = submit_gang(quad, 3, hold)
    second = submit_gang(quad, 3, ["true"])
    quad.wait_status(first, "RUNNING", timeout=30)
    single = quad.submit(["true"])
    wait_for(lambda: quad.job(second)["status"] == "RUNNABLE" and quad.job(second).get("statusReason"), 10,
             what="the second gang waiting")
    gate.touch()
    quad.wait_status(first, "SUCCEEDED", timeout=30)
    quad.wait_status(second, "SUCCEEDED", timeout=30)
    quad.wait_status(single, "SUCCEEDED", timeout=30)
    # Single tenancy: on every node, no two jobs' attempts overlap in time.
    runs: dict[str, list[tuple[int, int, str]]] = {}
    for job_id in [f"{first}#{i}" for i in range(3)] + [f"{second}#{i}" for i in range(3)] + [single]:
        job = quad.job(job_id)
        attempt = job["attempts"][-1]
        runs.setdefault(job["nodeName"], []).append((attempt["startedAt"], attempt["stoppedAt"], job_id))
    for spans in runs.values():
        spans.sort()
        for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:], strict=False):
            assert end_a <= start_b, f"{a} and {b} shared a node"
    # The two 3-node jobs ran one after the other (never deadlocked holding halves).
    assert quad.job(f"{first}#0")["attempts"][-1]["stoppedAt"] <= quad.job(f"{second}#0")["attempts"][-1]["startedAt"]


def test_terminate_stops_every_node(quad: TestCluster) -> None:
    job_id = submit_gang(quad, 2, ["sleep", "300"], ["sleep", "300"])
    quad.wait_status(job_id, "RUNNING", timeout=30)
    quad.client.terminate_job(jobId=f"{job_id}#1", reason="stop all")  # a node's id acts on the job
    job = quad.wait_status(job_id, "FAILED", timeout=30)
    assert job["statusReason"] == "stop all"
    assert all(quad.job(f"{job_id}#{i}")["status"] == "FAILED" for i in range(2))


def test_lost_node_fails_the_attempt_and_the_job_retries(tmp_path: Path) -> None:
    # A short fence: the head holds a lost node's retries until its agent has surely killed
    # them (hpcbatch.fencing; the default outage bound is 10 minutes).
    c = TestCluster(tmp_path, nodes=3, agent_extra="fence_after_s = 2\n", head_extra="fence_after_s = 2\n")
    try:
        c.up()
        job_id = submit_gang(c, 2, ["sleep", "300"], ["sleep", "300"], retryStrategy={"attempts": 2})
        c.wait_status(job_id, "RUNNING", timeout=30)
        victim = c.job(f"{job_id}#1")["nodeName"]
        c.kill(victim, signal.SIGKILL)
        job = wait_for(lambda: (j := c.job(job_id)) and len(j["attempts"]) == 1 and j, 20, what="first try failed")
        assert f"Node {victim} lost" in job["attempts"][0]["statusReason"]
        job = c.wait_status(job_id, "RUNNING", timeout=30)
        nodes = {c.job(f"{job_id}#{i}")["nodeName"] for i in range(2)}
        assert victim not in nodes
        c.client.terminate_job(jobId=job_id, reason="done")
        c.wait_status(job_id, "FAILED", timeout=30)
        c.start_agent(victim)
    finally:
        c.close()


def test_bad_node_ranges_are_refused_at_registration(quad: TestCluster) -> None:
    from hpcbatch.errors import ClientError

    with pytest.raises(ClientError, match="without properties"):
        quad.client.register_job_definition(
            jobDefinitionName="holes", type="multinode",
            nodeProperties={"numNodes": 3, "mainNode": 0, "nodeRangeProperties": [
                {"targetNodes": "0", "container": {"command": ["true"], "vcpus": 1, "memory": 64}}]},
        )
    with pytest.raises(ClientError, match="numNodes"):
        quad.client.submit_job(
            jobName="x", jobQueue="default", jobDefinition="hpcbatch-default-mnp",
            nodeOverrides={"numNodes": 0},
        )


def test_a_stream_of_small_jobs_does_not_starve_a_gang(quad: TestCluster) -> None:
    import threading

    stop = threading.Event()
    small: list[str] = []

    def stream() -> None:
        while not stop.is_set():
            small.append(quad.submit(["sleep", "0.3"]))
            time.sleep(0.05)

    import time

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        wait_for(lambda: sum(quad.job(j)["status"] == "RUNNING" for j in small[-8:]) >= 2, 20, what="small jobs flowing")
        gang = submit_gang(quad, 4, ["true"])
        quad.wait_status(gang, "SUCCEEDED", timeout=30)
    finally:
        stop.set()
        thread.join()
    for job_id in small:
        quad.wait_status(job_id, "SUCCEEDED", timeout=60)


def test_head_kill9_keeps_the_gang_and_its_single_tenancy(tmp_path: Path) -> None:
    c = TestCluster(tmp_path, nodes=3)
    try:
        c.up()
        gate = tmp_path / "go"
        job_id = submit_gang(c, 2, ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done; exit 5"], ["sleep", "300"])
        c.wait_status(job_id, "RUNNING", timeout=30)
        gang_nodes = {c.job(f"{job_id}#{i}")["nodeName"] for i in range(2)}
        c.kill("head", signal.SIGKILL)
        c.start_head()
        c.wait_active()
        singles = [c.submit(["true"]) for _ in range(4)]
        for s in singles:
            assert c.wait_status(s, "SUCCEEDED", timeout=30)["nodeName"] not in gang_nodes
        gate.touch()
        job = c.wait_status(job_id, "FAILED", timeout=30)
        assert job["container"]["exitCode"] == 5 and len(job["attempts"]) == 1
    finally:
        c.close()


def test_a_node_that_ends_shows_its_own_status_while_the_job_goes_on(tmp_path: Path) -> None:
    """AWS: each node, once it exits, is SUCCEEDED or FAILED by its exit code, and a child
    node's end does nothing to the others. Node 1 exits 3 and node 2 exits 0 while the main
    node runs on: they show so (in DescribeJobs, ListJobs' status filter and the event
    stream), across a head kill -9, and again in the retried try; the job's own end does not
    rewrite them."""
    c = TestCluster(tmp_path, nodes=3)
    try:
        c.up()
        gate = tmp_path / "gate"
        main = ["sh", "-c", f'while [ ! -e {gate}$AWS_BATCH_JOB_ATTEMPT ]; do sleep 0.05; done; exit $((2 - AWS_BATCH_JOB_ATTEMPT))']
        ranges = [
            {"targetNodes": "0", "containerOverrides": {"command": main}},
            {"targetNodes": "1", "containerOverrides": {"command": ["sh", "-c", "exit 3"]}},
            {"targetNodes": "2", "containerOverrides": {"command": ["true"]}},
        ]
        job_id = str(c.client.submit_job(
            jobName="nodes", jobQueue="default", jobDefinition="hpcbatch-default-mnp",
            nodeOverrides={"numNodes": 3, "nodePropertyOverrides": ranges}, retryStrategy={"attempts": 2},
        )["jobId"])
        nodes = [f"{job_id}#{i}" for i in range(3)]

        def shown(tries: int) -> None:
            wait_for(lambda: c.job(nodes[1])["status"] == "FAILED" and len(c.job(nodes[1])["attempts"]) == tries,
                     30, what=f"node 1 FAILED in try {tries}")
            wait_for(lambda: c.job(nodes[2])["status"] == "SUCCEEDED", 30, what="node 2 SUCCEEDED")
            main_node, failed, done = c.client.describe_jobs(jobs=nodes)["jobs"]
            assert main_node["status"] == "RUNNING" and c.job(job_id)["status"] == "RUNNING"
            assert failed["container"]["exitCode"] == 3 and done["container"]["exitCode"] == 0
            assert failed["statusReason"] == "Essential container in task exited"
            assert failed["stoppedAt"] == failed["attempts"][-1]["stoppedAt"]
            assert c.client.why_job(jobId=nodes[1])["status"] == "FAILED"  # hpcbatch why says the same
            by_status = {
                s: [j["jobId"] for j in c.client.list_jobs(multiNodeJobId=job_id, jobStatus=s)["jobSummaryList"]]
                for s in ("RUNNING", "FAILED", "SUCCEEDED")
            }
            assert by_status == {"RUNNING": [nodes[0]], "FAILED": [nodes[1]], "SUCCEEDED": [nodes[2]]}

        shown(1)
        c.kill("head", signal.SIGKILL)  # it is stored, not only the head's memory
        c.start_head()
        c.wait_active()
        shown(1)
        (tmp_path / "gate1").touch()  # the main node exits 1: the job's second try runs every node again
        shown(2)
        (tmp_path / "gate2").touch()  # ... and exits 0
        assert c.wait_status(job_id, "SUCCEEDED", timeout=30)["container"]["exitCode"] == 0
        final = c.client.describe_jobs(jobs=nodes)["jobs"]
        assert [j["status"] for j in final] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
        assert final[1]["statusReason"] == "Essential container in task exited"
        history = [(e["jobId"], e["status"]) for e in c.client.list_events(jobId=job_id)["events"] if e["jobId"] == nodes[1]]
        # Each try: placed, started, its own FAILED once (the job's end records nothing more).
        assert [s for _, s in history].count("FAILED") == 2, history
        assert history[-1] == (nodes[1], "FAILED")
    finally:
        c.close()
