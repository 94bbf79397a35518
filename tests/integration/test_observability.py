"""The event stream (ListEvents, ``hpcbatch events``) and ``/metrics`` against a real cluster.

A known workload runs in a queue of its own; the metrics page, parsed with
prometheus-client's parser, must agree with what the API reports, and the event stream
must tell each job's story in order, resumable from any event id.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import TestCluster, wait_for

STORY = ["SUBMITTED", "RUNNABLE", "STARTING", "RUNNING"]


def make_queue(c: TestCluster, name: str) -> None:
    c.client.create_job_queue(jobQueueName=name, priority=1,
                              computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "default"}])


def events_cli(c: TestCluster, *args: str) -> list[dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "hpcbatch.cli.main", "--endpoint", c.socket_endpoint, "events", *args],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def scrape(c: TestCluster) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(c.endpoint + "/metrics", timeout=10).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


@pytest.fixture(scope="module")
def workload(cluster: TestCluster) -> dict[str, list[str]]:
    """Queue "obs": three jobs that succeed, one that fails."""
    make_queue(cluster, "obs")
    ok = [cluster.submit(["true"], jobQueue="obs") for _ in range(3)]
    bad = [cluster.submit(["sh", "-c", "exit 3"], jobQueue="obs")]
    for job_id in ok + bad:
        cluster.wait_status(job_id, "SUCCEEDED", "FAILED")
    return {"ok": ok, "bad": bad}


def test_metrics_agree_with_the_api_after_a_known_workload(cluster: TestCluster, workload: dict[str, list[str]]) -> None:
    m = scrape(cluster)
    for status in ("SUCCEEDED", "FAILED", "RUNNABLE", "RUNNING"):
        listed = cluster.client.list_jobs(jobQueue="obs", jobStatus=status)["jobSummaryList"]
        assert m[("hpcbatch_jobs", (("queue", "obs"), ("status", status)))] == len(listed), status
    assert m[("hpcbatch_jobs", (("queue", "obs"), ("status", "SUCCEEDED")))] == 3
    assert m[("hpcbatch_jobs", (("queue", "obs"), ("status", "FAILED")))] == 1
    assert m[("hpcbatch_job_submit_to_running_seconds_count", (("queue", "obs"),))] == 4
    assert m[("hpcbatch_job_queue_wait_seconds_count", (("queue", "obs"),))] == 4
    assert m[("hpcbatch_submit_seconds_count", ())] >= 4
    assert m[("hpcbatch_scheduler_pass_seconds_count", ())] >= 4
    nodes = cluster.client.list_nodes()["nodes"]
    active = [n for n in nodes if n["state"] == "ACTIVE"]
    assert m[("hpcbatch_nodes", (("state", "ACTIVE"),))] == len(active) == 2
    ce = (("compute_environment", "default"),)
    assert m[("hpcbatch_compute_environment_vcpus_allocated", ce)] == sum(n["allocatedVcpus"] for n in nodes) == 0
    assert m[("hpcbatch_compute_environment_vcpus_free", ce)] == sum(n["vcpus"] for n in active)
    assert m[("hpcbatch_compute_environment_memory_bytes_free", ce)] == sum(n["memoryMiB"] for n in active) * 2**20
    for n in nodes:
        assert 0 <= m[("hpcbatch_node_heartbeat_age_seconds", (("node", n["name"]),))] < 30
    full = m[("hpcbatch_head_gc_full_collections_total", ())]  # the head's collector policy is installed
    assert full >= 0 and m[("hpcbatch_head_gc_full_collection_seconds_total", ())] >= 0
    assert m[("hpcbatch_head_gc_full_collection_longest_seconds", ())] <= m[("hpcbatch_head_gc_full_collection_seconds_total", ())]


def test_metrics_show_capacity_held_by_a_running_job(cluster: TestCluster) -> None:
    job_id = cluster.submit(["sleep", "30"], containerOverrides={"command": ["sleep", "30"], "resourceRequirements": [
        {"type": "VCPU", "value": "2"}, {"type": "MEMORY", "value": "300"}]})
    try:
        cluster.wait_status(job_id, "RUNNING")
        m = scrape(cluster)
        ce = (("compute_environment", "default"),)
        assert m[("hpcbatch_compute_environment_vcpus_allocated", ce)] == 2
        assert m[("hpcbatch_compute_environment_memory_bytes_allocated", ce)] == 300 * 2**20
        assert m[("hpcbatch_jobs", (("queue", "default"), ("status", "RUNNING")))] == 1
    finally:
        cluster.client.terminate_job(jobId=job_id, reason="test over")
        cluster.wait_status(job_id, "FAILED")


def test_events_tell_each_jobs_story_and_resume_from_an_id(cluster: TestCluster, workload: dict[str, list[str]]) -> None:
    events = events_cli(cluster, "--queue", "obs")
    assert all(e["type"] == "job" and e["jobQueue"] == "obs" for e in events)
    ids = [e["eventId"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for job_id in workload["ok"]:
        assert [e["status"] for e in events if e["jobId"] == job_id] == [*STORY, "SUCCEEDED"]
    failed = [e for e in events if e["jobId"] == workload["bad"][0]]
    assert [e["status"] for e in failed] == [*STORY, "FAILED"]
    # Resuming after any id gives exactly the rest.
    middle = events[len(events) // 2]["eventId"]
    assert events_cli(cluster, "--queue", "obs", "--after", str(middle)) == [e for e in events if e["eventId"] > middle]
    one = events_cli(cluster, "--job", workload["ok"][0])
    assert [e["status"] for e in one] == [*STORY, "SUCCEEDED"]


def test_follow_prints_events_as_they_happen_and_node_changes_are_events(cluster: TestCluster) -> None:
    make_queue(cluster, "follow")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpcbatch.cli.main", "--endpoint", cluster.socket_endpoint, "events", "--follow", "--queue", "follow"],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    seen: list[dict[str, Any]] = []
    try:
        job_id = cluster.submit(["true"], jobQueue="follow")
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or ()], daemon=True)
        reader.start()
        deadline = time.monotonic() + 30
        while not any(e.get("status") == "SUCCEEDED" for e in seen) and time.monotonic() < deadline:
            try:
                seen.append(json.loads(lines.get(timeout=1)))
            except queue.Empty:
                pass
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert [e["status"] for e in seen if e["jobId"] == job_id] == [*STORY, "SUCCEEDED"]

    start = cluster.client.call("/hpcbatch/v1/listevents", {"maxResults": 1000})["lastEventId"]
    cluster.client.call("/hpcbatch/v1/drainnode", {"name": "node2", "reason": "watch me"})
    cluster.client.call("/hpcbatch/v1/resumenode", {"name": "node2"})

    def node_events() -> list[dict[str, Any]]:
        answer = cluster.client.list_events(afterEventId=start, waitSeconds=5)
        return [e for e in answer["events"] if e["type"] == "node"]

    changes = wait_for(lambda: len(node_events()) >= 2 and node_events(), 15, what="node events")
    assert [(e["node"], e["state"], e["stateReason"]) for e in changes[:2]] == [
        ("node2", "DRAINED", "watch me"), ("node2", "ACTIVE", None)]


def test_list_events_names_a_bad_field(cluster: TestCluster) -> None:
    from hpcbatch.errors import ClientError

    with pytest.raises(ClientError, match="waitSeconds"):
        cluster.client.call("/hpcbatch/v1/listevents", {"waitSeconds": 600})
    with pytest.raises(ClientError, match="afterEventId"):
        cluster.client.call("/hpcbatch/v1/listevents", {"afterEventId": "x"})


def test_list_events_over_tcp_with_an_access_key(cluster: TestCluster, workload: dict[str, list[str]]) -> None:
    from hpcbatch.client import Client

    key = cluster.client.call("/hpcbatch/v1/createaccesskey", {"user": "someone", "role": "user"})
    with Client(cluster.endpoint, credentials=(key["accessKeyId"], key["secretAccessKey"])) as signed:
        answer = signed.list_events(jobId=workload["ok"][0])
    assert [e["status"] for e in answer["events"]] == [*STORY, "SUCCEEDED"]
    with Client(cluster.endpoint, credentials=False) as unsigned, pytest.raises(Exception, match="(?i)sign|credential|auth"):
        unsigned.call("/hpcbatch/v1/listevents", {})
