"""The API's operations: validated requests in, AWS output shapes out.

Validation of shapes and limits happens once at the edge (``hpcbatch.validation``); the
service checks what needs the store (does the queue exist, is the name free), writes inside
one transaction, and tells the engine. A rejected call raises before anything is written.

``BatchService`` is the one facade the API routes (``hpcbatch.head.api``) and the console
call, with one attribute per operation of the operations table (``hpcbatch.operations``),
named as AWS names it. It holds three parts, each with one job, and a shared context:

- ``resources`` (``.resources``): compute environments, job queues, scheduling policies,
  job definitions, tags;
- ``jobs`` (``.jobs``): submit, describe, list, cancel, terminate, logs, tasks, scripts, why;
- ``admin`` (``.admin``): who am I, access keys, audit, node keys, nodes, drains, pre-pulls;
- ``common`` (``.common``): the store, the engine, the head's settings and shared look-ups.

Each operation below names the part that serves it; the parts read the engine through its
methods only (tests/unit/test_engine_boundary.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hpcbatch.auth.policy import Caller
from hpcbatch.head.engine import Engine
from hpcbatch.head.service.admin import Admin
from hpcbatch.head.service.common import PRIVATE_JOB, JobIdGenerator, ServiceContext
from hpcbatch.head.service.jobs import CLIENT_TOKEN_TAG, Jobs
from hpcbatch.head.service.resources import (
    DEFAULT_JOB_DEFINITION,
    DEFAULT_MULTINODE_DEFINITION,
    MAX_COMPUTE_ENVIRONMENTS,
    MAX_JOB_QUEUES,
    Resources,
)
from hpcbatch.store import Store

__all__ = [
    "CLIENT_TOKEN_TAG", "DEFAULT_JOB_DEFINITION", "DEFAULT_MULTINODE_DEFINITION", "MAX_COMPUTE_ENVIRONMENTS",
    "MAX_JOB_QUEUES", "PRIVATE_JOB", "BatchService", "JobIdGenerator", "Operation", "ServiceContext",
]


class _ServedBy:
    """A ``BatchService`` attribute that is its part's attribute of the same name."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, service: BatchService | None, owner: type | None = None) -> Any:
        if service is None:
            return self
        return getattr(getattr(service, self.part), self.name)


class _Setting:
    """A head setting the daemon sets on the service (``service.private_data = True``): kept
    on the shared context, where every part reads it."""

    def __init__(self) -> None:
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, service: BatchService | None, owner: type | None = None) -> Any:
        if service is None:
            return self
        return getattr(service.context, self.name)

    def __set__(self, service: BatchService, value: Any) -> None:
        setattr(service.context, self.name, value)


RESOURCES, JOBS, ADMIN = "resources", "jobs", "admin"


class BatchService:
    """One attribute per API operation, named as AWS names it, served by one of three parts."""

    store = _Setting()
    engine = _Setting()
    region = _Setting()
    account = _Setting()
    private_data = _Setting()  # Slurm's PrivateData: users see only their own jobs
    node_keys = _Setting()  # the NodeKeyRegistry, set by the daemon
    allow_privileged_containers = _Setting()  # containerProperties.privileged, from the head's config
    container_limits = _Setting()  # host paths, devices, shm, tmpfs, ulimits: the head's config
    power_pools = _Setting()  # [power.pools.CE]: MANAGED compute environments' nodes (head.power)
    min_state_time_limit_s = _Setting()  # AWS's floor for jobStateTimeLimitActions; a test head lowers it

    def __init__(self, store: Store, engine: Engine, *, region: str, account: str) -> None:
        self.context = ServiceContext(store, engine, region, account)
        self.resources = Resources(self.context)
        self.jobs = Jobs(self.context)
        self.admin = Admin(self.context)
        self.policies = self.resources.policies

    def arn(self, kind: str, name: str) -> str:
        return self.context.arn(kind, name)

    # compute environments, job queues, scheduling policies, job definitions, tags
    CreateComputeEnvironment = _ServedBy(RESOURCES)
    UpdateComputeEnvironment = _ServedBy(RESOURCES)
    DescribeComputeEnvironments = _ServedBy(RESOURCES)
    DeleteComputeEnvironment = _ServedBy(RESOURCES)
    CreateJobQueue = _ServedBy(RESOURCES)
    UpdateJobQueue = _ServedBy(RESOURCES)
    DescribeJobQueues = _ServedBy(RESOURCES)
    DeleteJobQueue = _ServedBy(RESOURCES)
    CreateSchedulingPolicy = _ServedBy(RESOURCES)
    UpdateSchedulingPolicy = _ServedBy(RESOURCES)
    DescribeSchedulingPolicies = _ServedBy(RESOURCES)
    DeleteSchedulingPolicy = _ServedBy(RESOURCES)
    ListSchedulingPolicies = _ServedBy(RESOURCES)
    RegisterJobDefinition = _ServedBy(RESOURCES)
    DescribeJobDefinitions = _ServedBy(RESOURCES)
    DeregisterJobDefinition = _ServedBy(RESOURCES)
    TagResource = _ServedBy(RESOURCES)
    UntagResource = _ServedBy(RESOURCES)
    ListTagsForResource = _ServedBy(RESOURCES)
    ensure_default_job_definition = _ServedBy(RESOURCES)
    ensure_default_multinode_definition = _ServedBy(RESOURCES)

    # jobs
    SubmitJob = _ServedBy(JOBS)
    DescribeJobs = _ServedBy(JOBS)
    ListJobs = _ServedBy(JOBS)
    CancelJob = _ServedBy(JOBS)
    TerminateJob = _ServedBy(JOBS)
    StartJobTask = _ServedBy(JOBS)
    PutScript = _ServedBy(JOBS)
    GetJobLogs = _ServedBy(JOBS)
    GetJobQueueSnapshot = _ServedBy(JOBS)
    WhyJob = _ServedBy(JOBS)

    # identity, keys, audit, nodes
    WhoAmI = _ServedBy(ADMIN)
    CreateAccessKey = _ServedBy(ADMIN)
    ListAccessKeys = _ServedBy(ADMIN)
    UpdateAccessKey = _ServedBy(ADMIN)
    DeleteAccessKey = _ServedBy(ADMIN)
    ListAudit = _ServedBy(ADMIN)
    ListNodeKeys = _ServedBy(ADMIN)
    AcceptNodeKey = _ServedBy(ADMIN)
    RejectNodeKey = _ServedBy(ADMIN)
    RevokeNodeKey = _ServedBy(ADMIN)
    DeleteNodeKey = _ServedBy(ADMIN)
    DrainNode = _ServedBy(ADMIN)
    ResumeNode = _ServedBy(ADMIN)
    PrepullImage = _ServedBy(ADMIN)
    ListNodes = _ServedBy(ADMIN)
    load_drains = _ServedBy(ADMIN)


Operation = Callable[[BatchService, dict[str, Any], Caller], dict[str, Any]]
