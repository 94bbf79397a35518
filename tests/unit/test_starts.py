"""The start message (hpcbatch.head.starts) and the scheduler events (hpcbatch.head.sched_events),
built pure from jobs and nodes."""

from __future__ import annotations

from typing import Any

from hpcbatch import protocol as p
from hpcbatch.head import sched_events
from hpcbatch.head.nodes import NodeInfo
from hpcbatch.head.starts import GangStart, start_message
from hpcbatch.model.jobs import Attempt, JobRecord, ResourceRequest
from hpcbatch.model.lifecycle import JobStatus


def record(job_id: str = "j1", **kw: Any) -> JobRecord:
    base: dict[str, Any] = {
        "job_id": job_id, "job_name": job_id, "job_queue": "q", "job_queue_arn": "arn:q", "job_definition": "arn:d",
        "owner": "alice", "status": JobStatus.STARTING, "created_at": 1, "command": ["true"], "environment": {"A": "1"},
        "resources": ResourceRequest(vcpus=2, memory_mib=64, gpus=1), "container": {},
    }
    base.update(kw)
    return JobRecord(**base)


def attempt(node: str = "n1", gpus: list[str] | None = None) -> Attempt:
    return Attempt(attempt_id="a1", node=node, compute_environment="ce", log_stream_name="d/default/a1",
                   gpus=gpus or [])


def test_a_single_job_starts_with_the_aws_batch_environment() -> None:
    job = record(attempts=[attempt(gpus=["GPU-0"])])
    msg = start_message(job, job.attempts[-1], script=None, capabilities=[])
    assert msg.environment["A"] == "1" and msg.environment["AWS_BATCH_JOB_ID"] == "j1"
    assert msg.environment["AWS_BATCH_JOB_ATTEMPT"] == "1" and msg.environment["AWS_BATCH_CE_NAME"] == "ce"
    assert msg.environment["AWS_EXECUTION_ENV"] == "AWS_ECS_EC2"
    assert (msg.vcpus, msg.memory_mib, msg.gpu_ids, msg.hosts) == (2, 64, ["GPU-0"], [])


def test_a_node_of_a_gang_holds_its_node_whole_and_counts_the_parents_attempts() -> None:
    parent = record("g", hosts=["n1", "n2"], launch_secret="s", attempts=[attempt(), attempt()])
    child = record("g#1", parent_id="g", node_index=1, attempts=[attempt("n2")])
    facts = p.NodeFacts(name="n2", hostname="n2", addresses=[], vcpus=16, memory_mib=4096)
    msg = start_message(child, child.attempts[-1], script=None, capabilities=[],
                        gang=GangStart(parent, {"NODE_RANK": "1"}, facts))
    assert (msg.vcpus, msg.memory_mib) == (16, 4096)  # it names neither: the whole node
    assert msg.environment["AWS_BATCH_JOB_ATTEMPT"] == "2" and msg.environment["NODE_RANK"] == "1"
    assert (msg.hosts, msg.node_index, msg.launch_secret, msg.hold) == (["n1", "n2"], 1, "s", False)


def test_node_up_charges_a_gang_node_to_its_parent_with_its_gpus() -> None:
    child = record("g#0", parent_id="g", node_index=0, share_identifier="blue", attempts=[attempt(gpus=["GPU-0"])])
    facts = p.NodeFacts(name="n1", hostname="n1", addresses=[], vcpus=4, memory_mib=1024, gpus=["GPU-0"])
    node = NodeInfo(facts=facts, allocations=(("g#0", child.resources),), drain_reason="repair")
    event = sched_events.node_up("e1", "n1", node, "ce", {"g#0": child})
    assert event.allocations == (("g", child.resources),) and event.gang_jobs == ("g",)
    assert event.gpu_holds == (("g", ("GPU-0",)),) and event.shares == (("g", "q", "blue"),)
    assert not event.accepting
