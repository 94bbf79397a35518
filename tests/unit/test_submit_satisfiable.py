"""SubmitJob's "no node set can ever hold this job" check keeps its node shapes between submits
(hpcbatch.head.service.satisfiable); a remembered answer must never outlive what it was
drawn from. The real service and engine over a real SQLite store, fed the Register messages
an agent sends; the engine is never started.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcbatch import protocol as p
from hpcbatch.auth.policy import Caller
from hpcbatch.errors import ClientError
from hpcbatch.head.powerdrivers.config import PoolConfig
from hpcbatch.head.service import BatchService
from tests.unit.service_bed import batch_service

ROOT = Caller(user="root", role="admin", via="socket")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[BatchService]:
    yield from batch_service(tmp_path)


def register(service: BatchService, name: str, vcpus: int, labels: dict[str, str] | None = None,
             ce: str = "ce") -> None:
    facts = p.NodeFacts(name=name, hostname=name, addresses=[], vcpus=vcpus, memory_mib=8192,
                        compute_environment=ce, labels=labels or {})
    service.engine.on_register(name, p.Register(instance_id=f"{name}-{vcpus}", node=facts))


def submit(service: BatchService, vcpus: int, nodes: int = 1) -> dict[str, Any]:
    overrides = {"command": ["true"], "resourceRequirements": [{"type": "VCPU", "value": str(vcpus)}]}
    body: dict[str, Any] = {"jobName": "j", "jobQueue": "q", "jobDefinition": "hpcbatch-default",
                            "containerOverrides": overrides}
    if nodes > 1:
        body = {"jobName": "j", "jobQueue": "q", "jobDefinition": "hpcbatch-default-mnp", "nodeOverrides": {
            "numNodes": nodes, "nodePropertyOverrides": [{"targetNodes": "0:", "containerOverrides": overrides}]}}
    return service.SubmitJob(body, ROOT)


def refused(service: BatchService, vcpus: int, nodes: int = 1) -> str:
    with pytest.raises(ClientError) as error:
        submit(service, vcpus, nodes)
    assert "no node set can ever hold this job" in str(error.value)
    return str(error.value)


def run(service: BatchService, check: Any) -> None:
    """``check`` inside a running event loop (the engine's steps need one), queue q over CE ce."""
    async def inside() -> None:
        service.ensure_default_job_definition()
        service.ensure_default_multinode_definition()
        service.CreateComputeEnvironment({"computeEnvironmentName": "ce", "type": "UNMANAGED"}, ROOT)
        service.CreateJobQueue({"jobQueueName": "q", "priority": 1, "computeEnvironmentOrder": [
            {"order": 1, "computeEnvironment": "ce"}]}, ROOT)
        check()

    asyncio.run(inside())


def test_a_node_that_registers_bigger_or_smaller_changes_the_answer(service: BatchService) -> None:
    def check() -> None:
        register(service, "n1", 2)
        assert "vcpus" in refused(service, 4).lower()
        assert refused(service, 4) == refused(service, 4)  # the same answer, remembered
        register(service, "n2", 8)  # a bigger node joins: the same request now fits
        assert submit(service, 4)["jobId"]
        register(service, "n2", 2)  # it comes back smaller (new facts): refused again
        refused(service, 4)

    run(service, check)


def test_a_new_max_vcpus_or_selector_changes_the_answer(service: BatchService) -> None:
    def check() -> None:
        register(service, "n1", 8)
        register(service, "n2", 8)
        assert submit(service, 8, nodes=2)["jobId"]
        service.UpdateComputeEnvironment({"computeEnvironment": "ce", "computeResources": {"maxvCpus": 8}}, ROOT)
        assert "maxvCpus" in refused(service, 8, nodes=2)
        # A node that names no compute environment joins one by label once the CE's selector says so.
        service.CreateComputeEnvironment({"computeEnvironmentName": "labelled", "type": "UNMANAGED"}, ROOT)
        service.CreateJobQueue({"jobQueueName": "lq", "priority": 1, "computeEnvironmentOrder": [
            {"order": 1, "computeEnvironment": "labelled"}]}, ROOT)
        register(service, "small", 2, ce="labelled")
        register(service, "big", 16, labels={"size": "big"}, ce="")
        body = {"jobName": "j", "jobQueue": "lq", "jobDefinition": "hpcbatch-default",
                "containerOverrides": {"command": ["true"], "resourceRequirements": [{"type": "VCPU", "value": "16"}]}}
        with pytest.raises(ClientError, match="largest node of compute environments labelled has 2 vCPUs"):
            service.SubmitJob(body, ROOT)
        service.TagResource({"resourceArn": service.arn("compute-environment", "labelled"),
                             "tags": {"hpcbatch:nodeSelector": "size=big"}}, ROOT)
        # TagResource reaches the running head at once (it did not: only a restart applied the tag).
        assert service.engine.compute_environment_of("big") == "labelled"
        assert service.SubmitJob(body, ROOT)["jobId"]
        service.UntagResource({"resourceArn": service.arn("compute-environment", "labelled"),
                               "tagKeys": ["hpcbatch:nodeSelector"]}, ROOT)
        assert service.engine.compute_environment_of("big") == ""
        with pytest.raises(ClientError, match="has 2 vCPUs"):
            service.SubmitJob(body, ROOT)

    run(service, check)


def test_a_new_power_pool_changes_the_answer(service: BatchService) -> None:
    def check() -> None:
        register(service, "n1", 2)
        refused(service, 32)
        service.power_pools = {"ce": PoolConfig(nodes="cloud[1-4]", vcpus_per_node=32)}
        assert submit(service, 32)["jobId"]  # a powered-down node of the pool can hold it

    run(service, check)
