"""BatchService is one facade over three parts (hpcbatch.head.service): every operation the
operations table routes to the service is served by exactly one part, and the head's settings
the daemon sets on the facade reach every part. The real service over a real SQLite store;
the engine is built and never started."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import hpcbatch.head.service as service_package
from hpcbatch.auth.policy import Caller
from hpcbatch.head.service import BatchService
from hpcbatch.operations import OPERATIONS
from tests.unit.service_bed import batch_service

ALICE = Caller(user="alice", role="user", via="socket")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[BatchService]:
    yield from batch_service(tmp_path)


def test_every_service_operation_is_served_by_one_part(service: BatchService) -> None:
    parts = {"resources": service.resources, "jobs": service.jobs, "admin": service.admin}
    for op in OPERATIONS:
        if op.served_by != "service":
            continue
        method = getattr(service, op.name)
        owners = [name for name, part in parts.items() if method.__self__ is part]
        assert owners and [n for n, p in parts.items() if hasattr(p, op.name)] == owners, op.name


def test_settings_set_on_the_facade_reach_the_parts(service: BatchService) -> None:
    service.private_data = True
    service.power_pools = {"pool": object()}
    assert service.context.private_data is True and service.private_data is True
    assert service.context.power_pools is service.power_pools
    assert service.arn("job-queue", "q") == "arn:aws:batch:local:0:job-queue/q"
    service.ensure_default_job_definition()  # through the facade, into the store
    doc = service.DescribeJobDefinitions({"jobDefinitionName": "hpcbatch-default"}, ALICE)["jobDefinitions"]
    assert [d["revision"] for d in doc] == [1]


def test_each_part_is_a_module_of_at_most_600_lines() -> None:
    folder = Path(service_package.__file__).parent
    sizes = {p.name: len(p.read_text().splitlines()) for p in folder.glob("*.py")}
    assert {"resources.py", "jobs.py", "admin.py", "common.py"} <= set(sizes)
    assert max(sizes.values()) <= 600, sizes
