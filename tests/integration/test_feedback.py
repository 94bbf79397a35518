"""Feedback that never leaves a user guessing (issue 18), on a 4-node network-namespace cluster:
an impossible gang refused at submit with the numbers (or queued with --allow-unsatisfiable,
which ``why`` lists), a drained node named in a CAPACITY reason that ``wait`` prints, reservation
times in ``why`` as local times, and a failed gang's reason naming the node the OOM killer hit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from hpcbatch.errors import ClientError
from tests import prereq
from tests.harness import TestCluster, wait_for

if os.geteuid() != 0:
    prereq.skip("netns", "needs root for network namespaces (CI runs as root)", allow_module_level=True)


@pytest.fixture(scope="module")
def ns4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    c = TestCluster(tmp_path_factory.mktemp("feedback"), nodes=4, netns=True)
    try:
        yield c.up()
    finally:
        c.close()


def cli(c: TestCluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpcbatch.cli.main", "--endpoint", c.socket_endpoint, *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def gang(c: TestCluster, nodes: int, ranges: list[dict[str, Any]], **extra: Any) -> str:
    body = {"jobName": "fb", "jobQueue": "default", "jobDefinition": "hpcbatch-default-mnp",
            "nodeOverrides": {"numNodes": nodes, "nodePropertyOverrides": ranges}, **extra}
    return str(c.client.submit_job(**body)["jobId"])


def test_a_six_node_gang_on_four_nodes_is_refused_at_submit_with_the_numbers(ns4: TestCluster) -> None:
    before = len(ns4.client.list_jobs(jobQueue="default", jobStatus="RUNNABLE")["jobSummaryList"])
    refused = cli(ns4, "submit", "--nodes", "6", "--name", "too-big", "--", "true")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
    assert "numNodes 6: compute environment default has 4 nodes" in refused.stderr, refused.stderr
    assert "--allow-unsatisfiable" in refused.stderr
    with pytest.raises(ClientError, match=r"vcpus 512: the largest node of compute environments default has \d+ vCPUs"):
        ns4.submit(["true"], containerOverrides={"command": ["true"], "resourceRequirements": [{"type": "VCPU", "value": "512"}]})
    # Nothing was stored.
    assert len(ns4.client.list_jobs(jobQueue="default", jobStatus="RUNNABLE")["jobSummaryList"]) == before
    assert not ns4.client.list_jobs(jobQueue="default", filters=[{"name": "JOB_NAME", "values": ["too-big"]}])["jobSummaryList"]


def test_allow_unsatisfiable_queues_it_and_why_lists_it(ns4: TestCluster) -> None:
    out = cli(ns4, "submit", "--nodes", "6", "--allow-unsatisfiable", "--", "true")
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    try:
        wait_for(lambda: ns4.job(job_id).get("statusReason"), 20, what="a wait reason")
        why = cli(ns4, "why", job_id)
        assert why.returncode == 0, why.stderr
        assert "accepted with --allow-unsatisfiable" in why.stdout, why.stdout
        assert "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT" in why.stdout, why.stdout
    finally:
        ns4.client.cancel_job(jobId=job_id, reason="done")


def test_a_drained_node_is_a_capacity_reason_naming_it_and_wait_prints_it(ns4: TestCluster) -> None:
    assert cli(ns4, "nodes", "drain", "node4", "--reason", "maintenance").returncode == 0
    job_id = ""
    try:
        wait_for(lambda: ns4.nodes()["node4"]["state"] == "DRAINED", 20, what="node4 drained")
        # A drained node comes back: the gang is accepted, and waits for capacity, naming it.
        job_id = gang(ns4, 4, [{"targetNodes": "0", "containerOverrides": {"command": ["true"]}}])
        reason = wait_for(lambda: ns4.job(job_id).get("statusReason"), 20, what="a wait reason")
        assert reason.startswith("CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - "), reason
        assert "node4 is drained or draining" in reason and "3 can hold it now" in reason, reason
        waited = cli(ns4, "wait", "--timeout", "2", job_id)
        assert waited.returncode == 1
        assert f"{job_id}: RUNNABLE: CAPACITY:" in waited.stderr and "node4 is drained" in waited.stderr, waited.stderr
    finally:
        assert cli(ns4, "nodes", "resume", "node4").returncode == 0
    assert ns4.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=60)["status"] == "SUCCEEDED"


def test_why_shows_a_reservation_as_a_local_time(ns4: TestCluster) -> None:
    # A job with a time limit on one node: a 4-node gang reserves the nodes from its end.
    blocker = ns4.submit(["sleep", "300"], timeout={"attemptDurationSeconds": 300})
    job_id = ""
    try:
        ns4.wait_status(blocker, "RUNNING")
        job_id = gang(ns4, 4, [{"targetNodes": "0", "containerOverrides": {"command": ["true"]}}])
        wait_for(lambda: "Reserved nodes" in (ns4.job(job_id).get("statusReason") or ""), 20, what="a reservation")
        why = cli(ns4, "why", job_id)
        assert why.returncode == 0, why.stderr
        assert not re.search(r"t=\d{9,}", why.stdout), why.stdout
        # When the nodes free up depends on the run-time prediction (hpcbatch.scheduler.predict:
        # the timeout, or sooner when this owner's earlier jobs ran shorter): only the form is fixed.
        assert re.search(r"from \d\d:\d\d:\d\d local time \((now|in \d+ \w+)\)", why.stdout), why.stdout
    finally:
        ns4.client.terminate_job(jobId=blocker, reason="done")
        if job_id:
            ns4.client.terminate_job(jobId=job_id, reason="done")


def test_a_gang_whose_node_2_is_oom_killed_names_it(ns4: TestCluster) -> None:
    hog = [sys.executable, "-c", "x = bytearray(400 * 1024 * 1024); import time; time.sleep(60)"]
    job_id = gang(ns4, 4, [
        {"targetNodes": "0", "containerOverrides": {"command": ["sh", "-c", "sleep 5; exit 1"]}},
        {"targetNodes": "1:", "containerOverrides": {"command": ["sleep", "60"]}},
        {"targetNodes": "2", "containerOverrides": {
            "command": hog, "resourceRequirements": [{"type": "MEMORY", "value": "64"}]}},
    ])
    job = ns4.wait_status(job_id, "FAILED", timeout=60)
    host = ns4.job(f"{job_id}#2")["nodeName"]
    assert job["statusReason"].startswith(f"OutOfMemoryError on node 2 ({host})"), job["statusReason"]
    assert job["attempts"][-1]["statusReason"] == job["statusReason"]


def test_the_node_environment_names_fabric_and_management_addresses(ns4: TestCluster) -> None:
    dump = ["sh", "-c", "env | grep -E '^(AWS_BATCH_JOB_MAIN_NODE|HPCBATCH_MAIN_NODE)' | sort"]
    job_id = gang(ns4, 2, [{"targetNodes": "0", "containerOverrides": {"command": ["sleep", "2"]}},
                           {"targetNodes": "1", "containerOverrides": {"command": dump}}])
    ns4.wait_status(job_id, "SUCCEEDED", timeout=60)
    main = ns4.nodes()[ns4.job(f"{job_id}#0")["nodeName"]]
    out = wait_for(lambda: ns4.logs(f"{job_id}#1"), 10, what="node 1 output")
    assert f"AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS={main['fabricAddress']}\n" in out, (out, main)
    assert f"HPCBATCH_MAIN_NODE_MANAGEMENT_ADDRESS={main['addresses'][0]}\n" in out, (out, main)
    assert main["fabricAddress"] != main["addresses"][0]
