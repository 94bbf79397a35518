"""MANAGED compute environments on the namespace cluster: nodes powered up on demand and down when idle.

Four namespace nodes of 1 vCPU form the pool ``node[1-4]`` of the MANAGED compute environment
``managed`` (minvCpus 1, maxvCpus 4), powered by the ``netns`` driver: a power-up starts the
node's real agent in its namespace, a power-down stops it. node1's agent is pointed at a port
where no head listens, so it never registers. One cluster, one story, in order:
minvCpus powers a node; the first job waits for it, it never registers (resume_timeout_s), it
is marked down and the job runs on another node; a 3-node gang powers up exactly the two nodes
it lacks and runs; once idle for suspend_after_s they power down, minvCpus keeps one warm; a
node whose power is pulled by hand is noticed by the driver's state poll (``state_poll_s``),
well before its heartbeats would be missed, and its job is retried at once.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.netns import require_root
from tests import prereq
from tests.harness import TestCluster, free_port, wait_for
from tests.managed_pool import managed_pool, power_of

RESUME_TIMEOUT_S = 12  # an agent's start under load stays well inside it
SUSPEND_AFTER_S = 3
LIVENESS = 15  # heartbeats of 0.3 s: a node is lost after 4.5 s unheard, the state poll sees it first


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    if os.geteuid() != 0:
        prereq.skip("netns", "network namespaces need root (CI runs as root)")
    require_root()
    root = tmp_path_factory.mktemp("managed")
    options = (f"suspend_after_s = {SUSPEND_AFTER_S}\nresume_timeout_s = {RESUME_TIMEOUT_S}\nboot_time_s = 5\n"
               "timeout_s = 3\nstate_poll_s = 0.5\n")

    def node1_never_reaches_the_head(c: TestCluster) -> None:  # it "boots", but its head address is wrong
        assert c.netns is not None
        config = root / "node1.toml"
        config.write_text(config.read_text().replace(c.fleet, f"tcp://{c.netns.host_mgmt_ip}:{free_port()}"))

    with managed_pool(root, 4, options, liveness=LIVENESS, before_head=node1_never_reaches_the_head) as c:
        yield c


def _ce(c: TestCluster, name: str) -> dict[str, Any]:
    return c.client.describe_compute_environments(computeEnvironments=[name])["computeEnvironments"][0]


def _power_ons(c: TestCluster) -> list[str]:
    return [e["target"] for e in reversed(c.client.call("/hpcbatch/v1/listaudit", {"maxResults": 1000})["events"])
            if e["operation"] == "PowerOn"]


def test_ec2_only_fields_are_named_as_ignored_and_a_managed_ce_without_a_pool_is_invalid(pool: TestCluster) -> None:
    c = pool
    c.client.create_compute_environment(
        computeEnvironmentName="managed", type="MANAGED",
        computeResources={"type": "EC2", "minvCpus": 1, "maxvCpus": 4, "desiredvCpus": 1,
                          "instanceTypes": ["optimal"], "subnets": ["subnet-0abc"],
                          "securityGroupIds": ["sg-0abc"], "instanceRole": "ecsInstanceRole"},
    )
    ce = _ce(c, "managed")
    assert ce["status"] == "VALID", ce
    assert "node pool node[1-4] (netns driver)" in ce["statusReason"]
    assert "ignored (EC2 only, no meaning on this cluster): subnets, securityGroupIds, instanceRole, instanceTypes" \
        in ce["statusReason"]
    c.client.create_compute_environment(computeEnvironmentName="cloud", type="MANAGED",
                                        computeResources={"type": "FARGATE", "maxvCpus": 16})
    cloud = _ce(c, "cloud")
    assert cloud["status"] == "INVALID" and "has no node pool" in cloud["statusReason"], cloud
    assert "[power.pools.cloud]" in cloud["statusReason"]
    c.client.create_job_queue(jobQueueName="default", priority=1,
                              computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "managed"}])


def test_a_node_that_never_registers_is_marked_down_and_the_job_runs_elsewhere(pool: TestCluster) -> None:
    c = pool
    # The pool's nodes were never seen: a job that fits one of them is accepted.
    job_id = c.submit(["true"])
    # minvCpus 1 powers node1 up (the first by name); the job waits for it.
    reason = wait_for(lambda: "powering up node1" in (r := c.job(job_id)["statusReason"] or "") and r, 10,
                      what="the job to wait for node1's power-up")
    # The scheduler's words (the only writer of a waiting job's reason), from the power facts.
    assert reason.startswith("CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - ") and "powering up node1, expected up by " in reason, \
        reason
    assert power_of(c)["node1"]["powerState"] == "POWERING_UP"
    job = c.wait_status(job_id, "SUCCEEDED", timeout=RESUME_TIMEOUT_S + 30)
    assert job["nodeName"] == "node2", job
    node1 = power_of(c)["node1"]
    assert node1["state"] == "DOWN" and node1["powerState"] == "POWERED_DOWN", node1
    assert f"did not register within resume_timeout_s {RESUME_TIMEOUT_S} s" in node1["stateReason"]
    assert _power_ons(c) == ["node1", "node2"]  # one power-up each, batched as hostlists


def test_a_gang_powers_up_exactly_the_nodes_it_lacks_and_they_power_down_when_idle(pool: TestCluster) -> None:
    c = pool
    wait_for(lambda: power_of(c)["node2"]["powerState"] == "ACTIVE", 5, what="node2 ACTIVE (minvCpus 1 keeps it)")
    job_id = str(c.client.submit_job(
        jobName="gang", jobQueue="default", jobDefinition="hpcbatch-default-mnp",
        nodeOverrides={"numNodes": 3, "nodePropertyOverrides": [
            {"targetNodes": "0:", "containerOverrides": {"command": ["sleep", "1"]}}]},
    )["jobId"])
    job = c.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=60)
    assert job["status"] == "SUCCEEDED", job
    assert _power_ons(c)[2:] == ["node[3-4]"]  # node2 was warm: exactly two more
    nodes = sorted(d["nodeName"] for d in c.client.describe_jobs(jobs=[f"{job_id}#{i}" for i in range(3)])["jobs"])
    assert nodes == ["node2", "node3", "node4"]
    # Idle for suspend_after_s: node3 and node4 power down; minvCpus 1 keeps node2 on.
    wait_for(lambda: [power_of(c)[n]["powerState"] for n in ("node2", "node3", "node4")]
             == ["ACTIVE", "POWERED_DOWN", "POWERED_DOWN"], 30, what="node[3-4] powered down, node2 warm")
    listed = power_of(c)
    assert listed["node3"]["state"] == "POWERED_DOWN" and "idle" in listed["node3"]["powerStateReason"]
    assert _ce(c, "managed")["computeResources"]["desiredvCpus"] == 1
    listing = subprocess.run([sys.executable, "-m", "hpcbatch.cli.main", "--endpoint", c.socket_endpoint, "nodes",
                              "list", "--state", "POWERED_DOWN"], capture_output=True, text=True, timeout=30, check=True)
    rows = [line.split()[:2] for line in listing.stdout.splitlines()[1:]]
    assert rows == [["node3", "POWERED_DOWN"], ["node4", "POWERED_DOWN"]], listing.stdout
    metrics = urllib.request.urlopen(c.endpoint + "/metrics", timeout=10).read().decode()
    assert 'hpcbatch_pool_nodes{compute_environment="managed",power_state="POWERED_DOWN"} 3.0' in metrics
    saved = next(line for line in metrics.splitlines() if line.startswith('hpcbatch_pool_node_hours_total{kind="saved"}'))
    assert float(saved.split()[-1]) > 0
    offs = [e["target"] for e in c.client.call("/hpcbatch/v1/listaudit", {"maxResults": 1000})["events"]
            if e["operation"] == "PowerOff" and e["outcome"] == "ok"]
    assert "node[3-4]" in offs


def test_a_lost_pool_node_is_fenced_by_its_pools_driver_and_its_job_retried_at_once(pool: TestCluster) -> None:
    c = pool
    marks = c.root / "marks"
    marks.mkdir()
    job_id = c.submit(["sh", "-c", f'echo $$ > {marks}/"$AWS_BATCH_JOB_ATTEMPT"; '
                                   '[ "$AWS_BATCH_JOB_ATTEMPT" = 1 ] && exec sleep 300; exit 0'],
                      retryStrategy={"attempts": 2})
    victim = c.wait_status(job_id, "RUNNING", timeout=30)["nodeName"]
    wait_for(lambda: (marks / "1").exists(), 10, what="the first attempt's pid")
    # The node goes silent (a hung kernel): its agent neither heartbeats nor fences (600 s by default).
    os.kill(int((c.root / f"{victim}.power.pid").read_text()), signal.SIGSTOP)
    job = c.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=60)
    assert job["status"] == "SUCCEEDED" and len(job["attempts"]) == 2, job
    assert f"Node {victim} lost" in job["attempts"][0]["statusReason"]
    first = int((marks / "1").read_text())
    assert not Path(f"/proc/{first}").exists() or "Z" in Path(f"/proc/{first}/stat").read_text().rpartition(")")[2][:3]
    assert f"node {victim} is powered off" in (c.root / "head.log").read_text()


def test_a_node_powered_off_by_hand_is_seen_by_the_driver_and_its_job_retried_at_once(pool: TestCluster) -> None:
    from hpcbatch.head.powerdrivers.netns import NetnsDriver

    c = pool
    wait_for(lambda: any(n["state"] == "ACTIVE" for n in power_of(c).values()), 30, what="a warm node (minvCpus 1)")
    marks = c.root / "marks-by-hand"
    marks.mkdir()
    job_id = c.submit(["sh", "-c", f'echo $$ > {marks}/"$AWS_BATCH_JOB_ATTEMPT"; '
                                   '[ "$AWS_BATCH_JOB_ATTEMPT" = 1 ] && exec sleep 300; exit 0'],
                      retryStrategy={"attempts": 2})
    victim = c.wait_status(job_id, "RUNNING", timeout=30)["nodeName"]
    wait_for(lambda: (marks / "1").exists(), 10, what="the first attempt's pid")
    # The power is pulled outside hpcbatch: the agent and everything on the node die at once.
    pulled_ms = time.time() * 1000
    os.killpg(int((c.root / f"{victim}.power.pid").read_text()), signal.SIGKILL)
    asyncio.run(NetnsDriver(str(c.root), str(c.root / "layout.json"), 3).power_off([victim]))
    # Seen within a pass or two (state_poll_s 0.5), before its heartbeats are missed (4.5 s); the
    # node is POWERED_DOWN for a moment only: minvCpus and the retry power it up again at once.
    job = c.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=60)
    assert job["status"] == "SUCCEEDED" and len(job["attempts"]) == 2, job
    assert job["attempts"][0]["statusReason"].startswith(f"Node {victim} lost: powered off outside hpcbatch, seen by "
                                                         "netns at "), job["attempts"][0]
    seen = [e for e in c.client.call("/hpcbatch/v1/listaudit", {"maxResults": 1000})["events"]
            if e["operation"] == "PowerOffSeen" and e["at"] >= pulled_ms]
    assert [e["target"] for e in seen] == [victim], seen
    assert seen[0]["outcome"].startswith("powered off outside hpcbatch, seen by netns at "), seen


def test_the_command_driver_gets_a_hostlist_and_a_head_restart_mid_power_up_powers_nothing_twice(
        tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    # Slurm's ResumeProgram/SuspendProgram: the hostlist is the last argument. These "machines" never boot.
    head_extra = (
        "[power.pools.burst]\n"
        'nodes = "cn[1-2]"\nvcpus_per_node = 2\n'
        f'resume_program = ["sh", "-c", "echo resume $1 >> {calls}", "resume"]\n'
        f'suspend_program = ["sh", "-c", "echo suspend $1 >> {calls}", "suspend"]\n'
        "resume_timeout_s = 8\nsuspend_after_s = 60\n"
    )
    c = TestCluster(tmp_path, nodes=0, head_extra=head_extra)
    try:
        c.start_head()
        # docs/managed.md's command, as written.
        doc = (Path(__file__).resolve().parents[2] / "docs" / "managed.md").read_text()
        line = next(x for x in doc.splitlines() if x.startswith("$ hpcbatch ce create burst"))
        subprocess.run([sys.executable, "-m", "hpcbatch.cli.main", *shlex.split(line)[2:]], check=True, timeout=30,
                       env=dict(os.environ, HPCBATCH_ENDPOINT=c.socket_endpoint), capture_output=True)
        ce = _ce(c, "burst")
        assert ce["status"] == "VALID" and ce["computeResources"]["maxvCpus"] == 4, ce
        c.client.create_job_queue(jobQueueName="burst", priority=1,
                                  computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "burst"}])
        job_id = str(c.client.submit_job(
            jobName="gang", jobQueue="burst", jobDefinition="hpcbatch-default-mnp",
            nodeOverrides={"numNodes": 2, "nodePropertyOverrides": [
                {"targetNodes": "0:", "containerOverrides": {"command": ["true"]}}]},
        )["jobId"])
        wait_for(lambda: calls.exists() and calls.read_text(), 10, what="the resume program")
        assert calls.read_text() == "resume cn[1-2]\n"
        c.kill("head")  # mid power-up
        c.start_head()
        wait_for(lambda: "powering up cn[1-2]" in (c.job(job_id)["statusReason"] or ""), 10,
                 what="the job to wait for the power-up begun before the restart")
        assert {n["name"]: n["powerState"] for n in c.client.list_nodes()["nodes"]} == \
            {"cn1": "POWERING_UP", "cn2": "POWERING_UP"}
        # `hpcbatch why` says what it waits for, and for how long (boot_time_s 60 from the power-up).
        why = subprocess.run([sys.executable, "-m", "hpcbatch.cli.main", "--endpoint", c.socket_endpoint, "why", job_id],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        assert re.search(r"reason: Reserved nodes cn\[1-2\] in compute environment burst; powering up cn\[1-2\], "
                         r"expected up by .+? local time \(in (\d+ s|1 min)\)", why), why
        # They never register: resume_timeout_s (counted from the first power-up) fails them, once.
        wait_for(lambda: "suspend" in calls.read_text(), 20, what="the failed nodes powered off")
        assert calls.read_text() == "resume cn[1-2]\nsuspend cn[1-2]\n"
        nodes = {n["name"]: n for n in c.client.list_nodes()["nodes"]}
        assert nodes["cn1"]["state"] == "DOWN" and "resume_timeout_s 8 s" in nodes["cn1"]["stateReason"]
        assert c.job(job_id)["status"] == "RUNNABLE"  # nothing else can hold it; it waits
    finally:
        c.close()
