"""The boot time is part of the plan (docs/managed.md, "Planning with the boot time"), on the
namespace cluster with the ``netns`` driver.

Three namespace nodes of 1 vCPU form the pool ``node[1-3]`` of the MANAGED compute environment
``managed`` (minvCpus 1: node1 is kept warm), with ``boot_time_s = 120``. A 3-node gang powers
up node[2-3]; their "boot" is held by cutting their management links (their agents run but
cannot reach the head) until the test lets them register. Meanwhile the gang's forecast is the
power-up plus the boot time (``hpcbatch why``, ``hpcbatchExpectedStartAt``), a job whose time
limit ends before the boot does backfills on the warm node1, and a longer one does not: it
would delay the gang. Let through, the nodes register and the gang starts before the long job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcbatch.netns import require_root
from tests import prereq
from tests.harness import TestCluster, wait_for
from tests.managed_pool import managed_pool, power_of
from tests.users import USERS, call_as, ensure_users

ALICE = USERS[0]

BOOT_TIME_S = 120  # longer than the short job's limit (60 s, AWS's minimum): it fits in the boot
RESUME_TIMEOUT_S = 150  # the held "boot" stays well inside it


@pytest.fixture(scope="module")
def booting() -> Iterator[TestCluster]:
    if os.geteuid() != 0:
        prereq.skip("netns", "network namespaces need root (CI runs as root)")
    require_root()
    # Not under pytest's temp dir: another pytest session resets its top to 0700, and another
    # user's job (below) must reach the head's socket.
    with tempfile.TemporaryDirectory(prefix="hpcb-boot-") as tmp:
        options = (f"suspend_after_s = 600\nresume_timeout_s = {RESUME_TIMEOUT_S}\nboot_time_s = {BOOT_TIME_S}\n"
                   "timeout_s = 3\n")
        with managed_pool(Path(tmp), 3, options) as c:
            yield c


def _link(c: TestCluster, node: str, state: str) -> None:
    """Cut (``down``) or restore (``up``) a node's management link: its agent cannot reach the head."""
    assert c.netns is not None
    subprocess.run(["ip", "link", "set", "dev", c.netns.node(node).host_mgmt_link, state], check=True, timeout=10)


def test_a_gangs_forecast_counts_the_boot_and_only_a_job_that_ends_before_it_backfills(booting: TestCluster) -> None:
    c = booting
    c.client.create_compute_environment(computeEnvironmentName="managed", type="MANAGED",
                                        computeResources={"type": "EC2", "minvCpus": 1, "maxvCpus": 3})
    c.client.create_job_queue(jobQueueName="default", priority=1,
                              computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "managed"}])
    c.client.create_job_queue(jobQueueName="other", priority=0,
                              computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "managed"}])
    wait_for(lambda: power_of(c)["node1"]["state"] == "ACTIVE", 30, what="node1 warm (minvCpus 1)")
    held = ("node2", "node3")
    for node in held:
        _link(c, node, "down")
    try:
        gang = str(c.client.submit_job(
            jobName="gang", jobQueue="default", jobDefinition="hpcbatch-default-mnp",
            nodeOverrides={"numNodes": 3, "nodePropertyOverrides": [
                {"targetNodes": "0:", "containerOverrides": {"command": ["sleep", "1"]}}]},
        )["jobId"])
        wait_for(lambda: all(power_of(c)[n]["powerState"] == "POWERING_UP" for n in held), 15,
                 what="node[2-3] powering up")
        since_ms = max(power_of(c)[n]["powerStateSince"] for n in held)
        # The forecast is the power-up plus the boot time, not "now" and not "never".
        at = wait_for(lambda: c.client.describe_jobs(jobs=[gang])["jobs"][0].get("hpcbatchExpectedStartAt"), 15,
                      what="the gang's forecast")
        assert abs(at - (since_ms + BOOT_TIME_S * 1000)) < 2000, (at, since_ms)
        why = subprocess.run([sys.executable, "-m", "hpcbatch.cli.main", "--endpoint", c.socket_endpoint, "why", gang],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        assert "Reserved nodes node[1-3]" in why and "; powering up node[2-3], expected up by " in why, why
        assert "expected start:" in why, why
        listed = subprocess.run([sys.executable, "-m", "hpcbatch.cli.main", "--endpoint", c.socket_endpoint, "--output",
                                 "json", "list", "--start"], capture_output=True, text=True, timeout=30, check=True).stdout
        waiting = {j["jobId"]: j for j in json.loads(listed)["jobSummaryList"]}
        # squeue --start's view: the same power-up plus boot (within a re-plan's rounding)
        assert abs(waiting[gang]["hpcbatchExpectedStartAt"] - at) < 2000, (waiting[gang], at)
        # A long job (its limit ends after the boot) waits: it would delay the gang.
        long_job = c.submit(["sleep", "1"], timeout={"attemptDurationSeconds": 3600})
        wait_for(lambda: "reserved for a waiting multi-node job" in (c.job(long_job)["statusReason"] or ""), 15,
                 what="the long job to wait for the gang's reservation")
        # A short one backfills on node1 meanwhile. Another user's, in another queue: the scheduler
        # plans a job with the past run times of its owner, else of its queue (scheduler.predict);
        # the long job's have none, so it stays planned with its limit.
        ensure_users()
        reply = call_as(ALICE, c.socket_endpoint, "/v1/submitjob", {
            "jobName": "short", "jobQueue": "other", "jobDefinition": "hpcbatch-default",
            "containerOverrides": {"command": ["true"]}, "timeout": {"attemptDurationSeconds": 60}})
        assert "jobId" in reply, reply
        short = reply["jobId"]
        done = c.wait_status(short, "SUCCEEDED", "FAILED", timeout=60)
        assert done["status"] == "SUCCEEDED" and done["nodeName"] == "node1", (done["statusReason"], done["attempts"])
        decisions = [d["decision"] for d in c.client.why_job(jobId=short)["decisions"]]
        assert any(f"backfilled before {gang}'s reservation" in d for d in decisions), decisions
        assert c.job(long_job)["status"] == "RUNNABLE", c.job(long_job)
        assert c.job(gang)["status"] == "RUNNABLE"
    finally:
        for node in held:
            _link(c, node, "up")
    # The "boot" ends: the nodes register, the gang starts first, then the long job.
    ran = c.wait_status(gang, "SUCCEEDED", "FAILED", timeout=90)
    assert ran["status"] == "SUCCEEDED", ran
    after = c.wait_status(long_job, "SUCCEEDED", "FAILED", timeout=60)
    assert after["status"] == "SUCCEEDED" and after["startedAt"] >= ran["startedAt"], (after, ran)
    assert time.time() * 1000 < since_ms + BOOT_TIME_S * 1000  # all within the boot: registration, not the guess
