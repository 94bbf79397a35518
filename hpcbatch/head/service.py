"""The AWS Batch operations: validated requests in, AWS output shapes out.

Validation of shapes and limits happens once at the edge (``hpcbatch.validation``); this
module checks what needs the store (does the queue exist, is the name free), writes inside
one transaction, and tells the engine. A rejected call raises before anything is written.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from hpcbatch.auth.policy import AccessDenied, Caller, check_job_access, may_see_job
from hpcbatch.errors import ClientError, NotFoundError
from hpcbatch.head.containers import check_container, refuse_privileged
from hpcbatch.head.engine import Engine
from hpcbatch.head.policies import SchedulingPolicies
from hpcbatch.head.power import describe_capacity, list_power, managed_status, pool_node_shapes
from hpcbatch.model.jobs import (
    JobRecord,
    ResourceRequest,
)
from hpcbatch.model.lifecycle import JobStatus
from hpcbatch.model.multinode import resolve_nodes, split_child_id
from hpcbatch.model.submit import SCRIPT_ENV, SubmitFacts, SubmitPlan, plan_submit
from hpcbatch.store import Store
from hpcbatch.validation import (
    MAX_TAGS,
    ContainerLimits,
    check_container_limits,
    check_image_name,
    ecs_container,
)

DEFAULT_JOB_DEFINITION = "hpcbatch-default"
DEFAULT_MULTINODE_DEFINITION = "hpcbatch-default-mnp"  # `hpcbatch submit --nodes N -- CMD`
_JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(?:[#:][0-9]+)?")
PRIVATE_JOB = "(private)"  # another user's job id, as a user sees it in ListNodes under private_data
# hpcbatch extension (AWS's clientToken, where boto3 can send it): a SubmitJob that carries
# this tag again, from the same owner, answers the job the first one made.
CLIENT_TOKEN_TAG = "hpcbatch:client-token"
FINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED)
# AWS Batch's service quotas (they cannot be raised there): compute environments, job queues.
MAX_COMPUTE_ENVIRONMENTS = 50
MAX_JOB_QUEUES = 50
UNFINISHED = tuple(s for s in JobStatus if s not in FINAL)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class JobIdGenerator:
    """UUIDv7-style job ids (RFC 9562): 48-bit ms time, a 12-bit counter, random bits.

    They look like AWS's UUID job ids, and sort in submission order, so "newest first"
    with the id as tie-breaker is exact even for jobs created in the same millisecond.
    """

    def __init__(self) -> None:
        self._last_ms = 0
        self._counter = 0

    def __call__(self, now_ms: int) -> str:
        if now_ms <= self._last_ms:
            now_ms = self._last_ms
            self._counter += 1
            if self._counter > 0xFFF:  # 4096 ids in one ms: borrow the next ms
                now_ms, self._counter = now_ms + 1, 0
        else:
            self._counter = 0
        self._last_ms = now_ms
        rand = int.from_bytes(os.urandom(8), "big") & 0x3FFF_FFFF_FFFF_FFFF | 0x8000_0000_0000_0000
        value = (now_ms << 80) | (0x7 << 76) | (self._counter << 64) | rand
        return str(uuid.UUID(int=value))


def _name_of(ref: str) -> str:
    """A name from a name or an ARN (``arn:aws:batch:r:a:job-queue/NAME``)."""
    return ref.rsplit("/", 1)[-1] if ref.startswith("arn:") else ref


def _container_of(jobdef: dict[str, Any]) -> dict[str, Any]:
    """A container definition's containerProperties, or its ecsProperties mapped onto them."""
    if "ecsProperties" in jobdef:
        return ecs_container(jobdef["ecsProperties"])
    return jobdef.get("containerProperties", {})


def _ecs_nodes(node_properties: dict[str, Any]) -> dict[str, Any]:
    """nodeProperties with each range's ecsProperties mapped onto its ``container``."""
    ranges = node_properties.get("nodeRangeProperties") or []
    if not any("ecsProperties" in r for r in ranges):
        return node_properties
    mapped = [{**r, "container": ecs_container(r["ecsProperties"], f"nodeProperties.nodeRangeProperties[{i}].ecsProperties")}
              if "ecsProperties" in r else r for i, r in enumerate(ranges)]
    return {**node_properties, "nodeRangeProperties": mapped}


def _request_digest(body: dict[str, Any]) -> str:
    """SHA-256 of a SubmitJob body as sent, less its client token (what a retry repeats)."""
    tags = {k: v for k, v in (body.get("tags") or {}).items() if k != CLIENT_TOKEN_TAG}
    rest = {k: v for k, v in body.items() if k != "tags"}
    if tags:
        rest["tags"] = tags
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _page(items: list[Any], max_results: int | None, token: str | None) -> tuple[list[Any], str | None]:
    start = 0
    if token:
        try:
            start = int(base64.urlsafe_b64decode(token.encode()).decode())
        except ValueError:
            raise ClientError("nextToken is not a token this API returned") from None
    limit = max_results or 100
    end = start + limit
    nxt = base64.urlsafe_b64encode(str(end).encode()).decode() if end < len(items) else None
    return items[start:end], nxt


MAX_NODES_PAGE = 1000


def _node_page(names: list[str], body: dict[str, Any]) -> tuple[list[str], str | None]:
    """ListNodes' page of ``names`` (sorted): all of them without ``maxResults``; the token
    is the last name given, so a page is exact even when nodes join between calls."""
    limit, token = body.get("maxResults"), body.get("nextToken")
    if limit is None and token is None:
        return names, None
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_NODES_PAGE):
        raise ClientError(f"maxResults must be an integer between 1 and {MAX_NODES_PAGE}")
    start = 0
    if token is not None:
        try:
            kind, _, after = base64.urlsafe_b64decode(str(token).encode()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise ClientError("nextToken is not a token this API returned") from None
        if kind != "node":
            raise ClientError("nextToken is not a token this API returned")
        start = bisect.bisect_right(names, after)
    end = start + (limit or 100)
    page = names[start:end]
    nxt = base64.urlsafe_b64encode(f"node:{page[-1]}".encode()).decode() if page and end < len(names) else None
    return page, nxt


class BatchService:
    """One method per AWS Batch operation, named as AWS names it."""

    def __init__(self, store: Store, engine: Engine, *, region: str, account: str) -> None:
        self.store = store
        self.engine = engine
        self.region = region
        self.account = account
        self._job_id = JobIdGenerator()
        self.private_data = False  # Slurm's PrivateData: users see only their own jobs
        self.node_keys: Any = None  # the NodeKeyRegistry, set by the daemon
        self.allow_privileged_containers = False  # containerProperties.privileged, from the head's config
        self.container_limits = ContainerLimits()  # host paths, devices, shm, tmpfs, ulimits: the head's config
        self.power_pools: dict[str, Any] = {}  # [power.pools.CE]: MANAGED compute environments' nodes (head.power)
        self.policies = SchedulingPolicies(store, self.arn, engine.scheduling_policy_changed)
        # AWS's floor for jobStateTimeLimitActions.maxTimeSeconds; a test head may lower it.
        self.min_state_time_limit_s = 600
        # (owner, client token) -> job, for submitted jobs not yet committed (then the store
        # answers): a retry that comes before the commit must find the job too.
        self._recent_tokens: dict[tuple[str, str], JobRecord] = {}
        self._token_of_job: dict[str, tuple[str, str]] = {}
        engine.commit_observers.append(self._tokens_committed)

    def arn(self, kind: str, name: str) -> str:
        return f"arn:aws:batch:{self.region}:{self.account}:{kind}/{name}"

    # ------------------------------------------------------- compute environments
    def _ce(self, ref: str) -> dict[str, Any]:
        doc = self.store.get_resource("ce", _name_of(ref))
        if doc is None:
            raise NotFoundError(f"computeEnvironment {ref} does not exist")
        return doc

    def CreateComputeEnvironment(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = body["computeEnvironmentName"]
        if self.store.get_resource("ce", name) is not None:
            raise ClientError(f"computeEnvironmentName {name} already exists")
        if len(self.store.list_resources("ce")) >= MAX_COMPUTE_ENVIRONMENTS:
            raise ClientError(f"computeEnvironmentName {name}: this cluster has {MAX_COMPUTE_ENVIRONMENTS} compute "
                              "environments, AWS Batch's limit; delete one first")
        doc = {
            "computeEnvironmentName": name,
            "computeEnvironmentArn": self.arn("compute-environment", name),
            "type": body["type"],
            "state": body.get("state", "ENABLED"),
            "status": "VALID",
            "statusReason": "ComputeEnvironment Healthy",
            "computeResources": body.get("computeResources", {}),
            "tags": body.get("tags", {}),
            "uuid": str(uuid.uuid4()),
            "containerOrchestrationType": "ECS",
        }
        if "unmanagedvCpus" in body:
            doc["unmanagedvCpus"] = body["unmanagedvCpus"]
        doc["status"], doc["statusReason"] = managed_status(name, doc["type"], doc["computeResources"], self.power_pools)
        with self.store.transaction():
            self.store.put_resource("ce", name, 1, doc["status"], doc)
        self.engine.compute_environment_changed(doc)
        return {"computeEnvironmentName": name, "computeEnvironmentArn": doc["computeEnvironmentArn"]}

    def UpdateComputeEnvironment(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        doc = self._ce(body["computeEnvironment"])
        if "state" in body:
            doc["state"] = body["state"]
        if "computeResources" in body:
            doc["computeResources"] = {**doc.get("computeResources", {}), **body["computeResources"]}
        if "unmanagedvCpus" in body:
            doc["unmanagedvCpus"] = body["unmanagedvCpus"]
        doc["status"], doc["statusReason"] = managed_status(
            doc["computeEnvironmentName"], doc["type"], doc["computeResources"], self.power_pools)
        with self.store.transaction():
            self.store.put_resource("ce", doc["computeEnvironmentName"], 1, doc["status"], doc)
        self.engine.compute_environment_changed(doc)
        return {"computeEnvironmentName": doc["computeEnvironmentName"], "computeEnvironmentArn": doc["computeEnvironmentArn"]}

    def DescribeComputeEnvironments(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        wanted = {_name_of(r) for r in body.get("computeEnvironments", [])}
        docs = [d for d in self.store.list_resources("ce") if not wanted or d["computeEnvironmentName"] in wanted]
        page, token = _page(docs, body.get("maxResults"), body.get("nextToken"))
        page = [describe_capacity(d, self.engine.power, self.power_pools) for d in page]  # desiredvCpus of MANAGED ones
        out: dict[str, Any] = {"computeEnvironments": page}
        if token:
            out["nextToken"] = token
        return out

    def DeleteComputeEnvironment(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        doc = self._ce(body["computeEnvironment"])
        name = doc["computeEnvironmentName"]
        if doc["state"] != "DISABLED":
            raise ClientError(f"computeEnvironment {name} must be DISABLED before it is deleted")
        users = [
            q["jobQueueName"]
            for q in self.store.list_resources("queue")
            if any(_name_of(e["computeEnvironment"]) == name for e in q["computeEnvironmentOrder"])
        ]
        if users:
            raise ClientError(f"computeEnvironment {name} is still used by job queue(s) {', '.join(users)}")
        with self.store.transaction():
            self.store.delete_resource("ce", name)
        self.engine.compute_environment_removed(name)
        return {}

    # ---------------------------------------------------------------- job queues
    def _queue(self, ref: str) -> dict[str, Any]:
        doc = self.store.get_resource("queue", _name_of(ref))
        if doc is None:
            raise NotFoundError(f"jobQueue {ref} does not exist")
        return doc

    def _ce_order(self, order: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for i, entry in enumerate(order):
            try:
                ce = self._ce(entry["computeEnvironment"])
            except NotFoundError:
                raise ClientError(
                    f"computeEnvironmentOrder[{i}].computeEnvironment {entry['computeEnvironment']} does not exist"
                ) from None
            out.append({"order": entry["order"], "computeEnvironment": ce["computeEnvironmentArn"]})
        return out

    def CreateJobQueue(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = body["jobQueueName"]
        if self.store.get_resource("queue", name) is not None:
            raise ClientError(f"jobQueueName {name} already exists")
        if len(self.store.list_resources("queue")) >= MAX_JOB_QUEUES:
            raise ClientError(f"jobQueueName {name}: this cluster has {MAX_JOB_QUEUES} job queues, AWS Batch's "
                              "limit; delete one first")
        if not body.get("computeEnvironmentOrder"):
            raise ClientError("computeEnvironmentOrder must name 1 to 3 compute environments")
        doc = {
            "jobQueueName": name,
            "jobQueueArn": self.arn("job-queue", name),
            "state": body.get("state", "ENABLED"),
            "status": "VALID",
            "statusReason": "JobQueue Healthy",
            "priority": body["priority"],
            "computeEnvironmentOrder": self._ce_order(body["computeEnvironmentOrder"]),
            "tags": body.get("tags", {}),
            "jobQueueType": "ECS",
        }
        policy = self.policies.check_queue(body, None)
        if policy is not None:
            doc["schedulingPolicyArn"] = policy
        if "jobStateTimeLimitActions" in body:
            doc["jobStateTimeLimitActions"] = self._time_limit_actions(body["jobStateTimeLimitActions"])
        with self.store.transaction():
            self.store.put_resource("queue", name, 1, doc["status"], doc)
        self.engine.job_queue_changed(doc)
        return {"jobQueueName": name, "jobQueueArn": doc["jobQueueArn"]}

    def UpdateJobQueue(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        doc = self._queue(body["jobQueue"])
        policy = self.policies.check_queue(body, doc)
        for key in ("state", "priority"):
            if key in body:
                doc[key] = body[key]
        if policy is not None:
            doc["schedulingPolicyArn"] = policy
        if "jobStateTimeLimitActions" in body:
            doc["jobStateTimeLimitActions"] = self._time_limit_actions(body["jobStateTimeLimitActions"])
        if "computeEnvironmentOrder" in body:
            doc["computeEnvironmentOrder"] = self._ce_order(body["computeEnvironmentOrder"])
        with self.store.transaction():
            self.store.put_resource("queue", doc["jobQueueName"], 1, doc["status"], doc)
        self.engine.job_queue_changed(doc)
        return {"jobQueueName": doc["jobQueueName"], "jobQueueArn": doc["jobQueueArn"]}

    def _time_limit_actions(self, actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, action in enumerate(actions):
            if action["maxTimeSeconds"] < self.min_state_time_limit_s:
                raise ClientError(
                    f"jobStateTimeLimitActions[{i}].maxTimeSeconds must be at least "
                    f"{self.min_state_time_limit_s} (got {action['maxTimeSeconds']})"
                )
        return actions

    # ------------------------------------------------------- scheduling policies
    def CreateSchedulingPolicy(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return self.policies.create(body)

    def UpdateSchedulingPolicy(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return self.policies.update(body)

    def DescribeSchedulingPolicies(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return self.policies.describe(body)

    def DeleteSchedulingPolicy(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return self.policies.delete(body)

    def ListSchedulingPolicies(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        page, token = _page(self.policies.list(body), body.get("maxResults"), body.get("nextToken"))
        out: dict[str, Any] = {"schedulingPolicies": page}
        if token:
            out["nextToken"] = token
        return out

    def DescribeJobQueues(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        wanted = {_name_of(r) for r in body.get("jobQueues", [])}
        docs = [d for d in self.store.list_resources("queue") if not wanted or d["jobQueueName"] in wanted]
        page, token = _page(docs, body.get("maxResults"), body.get("nextToken"))
        out: dict[str, Any] = {"jobQueues": page}
        if token:
            out["nextToken"] = token
        return out

    def DeleteJobQueue(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        doc = self._queue(body["jobQueue"])
        name = doc["jobQueueName"]
        if doc["state"] != "DISABLED":
            raise ClientError(f"jobQueue {name} must be DISABLED before it is deleted")
        # AWS terminates the queue's remaining jobs when the queue goes away.
        for job in self.engine.jobs_where(lambda j: j.job_queue == name):
            self.engine.terminate(job, f"Job queue {name} was deleted")
        with self.store.transaction():
            self.store.delete_resource("queue", name)
        self.engine.job_queue_removed(name)
        return {}

    # ----------------------------------------------------------- job definitions
    def RegisterJobDefinition(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = body["jobDefinitionName"]
        if body.get("type") == "multinode":
            resolve_nodes(_ecs_nodes(body["nodeProperties"]), None)  # ranges cover every node, main inside
        ranges = (_ecs_nodes(body["nodeProperties"]) if body.get("nodeProperties") else {}).get("nodeRangeProperties") or []
        top = ("ecsProperties", _container_of(body)) if "ecsProperties" in body else (
            "containerProperties", body.get("containerProperties") or {})
        for field, container in [top] + [
            (f"nodeProperties.nodeRangeProperties[{i}].{'ecsProperties' if 'ecsProperties' in r else 'container'}",
             r.get("container") or {}) for i, r in enumerate(ranges)
        ]:
            refuse_privileged(container, field, self.allow_privileged_containers)
            check_container_limits(container, field, self.container_limits)
        revision = self.store.latest_revision("jobdef", name) + 1
        arn = self.arn("job-definition", f"{name}:{revision}")
        doc = {k: v for k, v in body.items()}
        doc.update(jobDefinitionArn=arn, revision=revision, status="ACTIVE", containerOrchestrationType="ECS")
        doc.setdefault("parameters", {})
        doc.setdefault("tags", {})
        doc.setdefault("platformCapabilities", ["EC2"])
        with self.store.transaction():
            self.store.put_resource("jobdef", name, revision, "ACTIVE", doc)
        return {"jobDefinitionName": name, "jobDefinitionArn": arn, "revision": revision}

    def ensure_default_job_definition(self) -> None:
        """The quick ``hpcbatch submit -- CMD`` form runs on this definition."""
        if self.store.latest_revision("jobdef", DEFAULT_JOB_DEFINITION) == 0:
            self.RegisterJobDefinition(
                {
                    "jobDefinitionName": DEFAULT_JOB_DEFINITION,
                    "type": "container",
                    "containerProperties": {
                        "command": [],
                        "resourceRequirements": [
                            {"type": "VCPU", "value": "1"},
                            {"type": "MEMORY", "value": "512"},
                        ],
                    },
                },
                Caller(user="root", role="admin", via="internal"),
            )

    def ensure_default_multinode_definition(self) -> None:
        """The quick ``hpcbatch submit --nodes N -- CMD`` form: CMD on the main node, the rest held.

        It names no vCPUs or memory: its nodes are held whole, so each gets the whole node
        (``model.multinode.whole_node``) and the hostfile offers a slot per vCPU. (A head that
        registered the older form, 1 vCPU and 512 MiB, keeps it: an admin may have changed it.)
        """
        if self.store.latest_revision("jobdef", DEFAULT_MULTINODE_DEFINITION) == 0:
            resources: list[dict[str, str]] = []
            self.RegisterJobDefinition(
                {
                    "jobDefinitionName": DEFAULT_MULTINODE_DEFINITION,
                    "type": "multinode",
                    "nodeProperties": {
                        "numNodes": 2,
                        "mainNode": 0,
                        "nodeRangeProperties": [
                            {"targetNodes": "0", "container": {"command": [], "resourceRequirements": resources}},
                            {"targetNodes": "1:", "container": {"command": [], "resourceRequirements": resources}},
                        ],
                    },
                },
                Caller(user="root", role="admin", via="internal"),
            )

    def _job_definition(self, ref: str, field: str = "jobDefinition") -> dict[str, Any]:
        name_rev = _name_of(ref)
        name, _, rev = name_rev.partition(":")
        if rev:
            if not rev.isdigit():
                raise ClientError(f"{field} {ref}: revision must be a number")
            doc = self.store.get_resource("jobdef", name, int(rev))
        else:
            active = [d for d in self.store.list_resources("jobdef", name) if d["status"] == "ACTIVE"]
            doc = active[-1] if active else None
        if doc is None:
            raise NotFoundError(f"{field} {ref} does not exist")
        if doc.get("status") == "INACTIVE":  # AWS: a deregistered revision runs no new jobs
            raise ClientError(f"{field} {doc['jobDefinitionName']}:{doc['revision']} is INACTIVE (deregistered) "
                              "and cannot be used for new jobs; register a new revision")
        return doc

    def DescribeJobDefinitions(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        if body.get("jobDefinitions"):
            docs = []
            for ref in body["jobDefinitions"]:
                name, _, rev = _name_of(ref).partition(":")
                docs.extend(d for d in self.store.list_resources("jobdef", name) if not rev or str(d["revision"]) == rev)
        else:
            docs = self.store.list_resources("jobdef", body.get("jobDefinitionName"))
        if body.get("status"):
            docs = [d for d in docs if d["status"] == body["status"]]
        page, token = _page(docs, body.get("maxResults"), body.get("nextToken"))
        out: dict[str, Any] = {"jobDefinitions": page}
        if token:
            out["nextToken"] = token
        return out

    def DeregisterJobDefinition(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        ref = body["jobDefinition"]
        name, _, rev = _name_of(ref).partition(":")
        docs = self.store.list_resources("jobdef", name)
        if rev:
            docs = [d for d in docs if str(d["revision"]) == rev]
        if not docs:
            raise NotFoundError(f"jobDefinition {ref} does not exist")
        with self.store.transaction():
            for doc in docs:
                doc["status"] = "INACTIVE"
                self.store.put_resource("jobdef", name, doc["revision"], "INACTIVE", doc)
        return {}

    # ---------------------------------------------------------------------- tags
    # AWS: every compute environment, queue, job definition (revision), job and scheduling
    # policy is taggable; jobs are their owner's to tag, the rest a developer's. Pages of
    # the Tagging and TagResource API references; limits checked at the edge (validation).
    _TAGGABLE = {"compute-environment": "ce", "job-queue": "queue", "job-definition": "jobdef",
                 "scheduling-policy": "policy"}

    def _tagged(self, arn: str, caller: Caller, change: bool) -> tuple[dict[str, str], Callable[[dict[str, str]], None]]:
        """The tags of the resource ``arn`` names, and how to store new ones; ClientException if none."""
        missing = NotFoundError(f"resourceArn {arn} does not name a resource of this cluster")
        parts = arn.split(":", 5)
        if len(parts) != 6 or parts[0] != "arn" or parts[2] != "batch" or "/" not in parts[5]:
            raise ClientError(f"resourceArn {arn} is not an AWS Batch ARN "
                              "(arn:aws:batch:REGION:ACCOUNT:job-queue/NAME, job/ID, ...)")
        if parts[3] != self.region or parts[4] != self.account:
            raise missing
        kind, _, name = parts[5].partition("/")
        if kind == "job":
            return self._tagged_job(name, arn, caller, change, missing)
        store_kind = self._TAGGABLE.get(kind)
        if store_kind is None:
            raise ClientError(f"resourceArn {arn}: {kind} is not a taggable resource (compute-environment, "
                              "job-queue, job-definition, job, scheduling-policy)")
        revision = 0
        if store_kind == "jobdef":
            name, _, rev = name.partition(":")
            if not rev.isdigit():
                raise ClientError(f"resourceArn {arn}: a job definition's ARN ends with :REVISION")
            revision = int(rev)
        doc = self.store.get_resource(store_kind, name, revision) if name else None
        if doc is None:
            raise missing
        if change and not caller.is_admin and caller.role != "developer":
            raise AccessDenied(f"user {caller.user} (role {caller.role}) may not tag {kind} {name}: "
                               "it needs role developer")

        def put(tags: dict[str, str]) -> None:
            doc["tags"] = tags
            status = doc.get("status", "ACTIVE") if store_kind != "policy" else "ACTIVE"
            with self.store.transaction():  # tags never change scheduling: no engine call
                self.store.put_resource(store_kind, name, doc.get("revision", 1) if store_kind == "jobdef" else 1,
                                        status, doc)

        return dict(doc.get("tags") or {}), put

    def _tagged_job(
        self, job_id: str, arn: str, caller: Caller, change: bool, missing: ClientError,
    ) -> tuple[dict[str, str], Callable[[dict[str, str]], None]]:
        job = self.engine.job(job_id) or self.store.get_job(job_id)
        if job is None or not may_see_job(caller, job.owner, self.private_data):
            raise missing
        if change:
            check_job_access(caller, "tag", job_id, job.owner)

        def put(tags: dict[str, str]) -> None:
            job.tags = tags
            with self.store.transaction():  # a live job's record is the engine's: it writes it again as is
                self.store.put_jobs([job])

        return dict(job.tags), put

    def TagResource(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        tags, put = self._tagged(body["resourceArn"], caller, True)
        merged = {**tags, **body["tags"]}
        own = [k for k in merged if not k.startswith("hpcbatch:")]  # hpcbatch's control tags do not count
        if len(own) > MAX_TAGS:
            raise ClientError(f"tags: a resource has at most {MAX_TAGS} tags; {body['resourceArn']} would have "
                              f"{len(own)}")
        put(merged)
        return {}

    def UntagResource(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        tags, put = self._tagged(body["resourceArn"], caller, True)
        for key in body["tagKeys"]:  # AWS: a key the resource lacks is no error
            tags.pop(key, None)
        put(tags)
        return {}

    def ListTagsForResource(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        tags, _ = self._tagged(body["resourceArn"], caller, False)
        return {"tags": tags}

    # ---------------------------------------------------------------------- jobs
    def _check_planned(self, plan: SubmitPlan, caller: Caller) -> None:
        """The head's own rules on a planned job: what its containers may do here, its scripts stored."""
        for planned in plan.containers:
            check_container(planned.container, caller.user, planned.field, self.allow_privileged_containers)
        for field, script_id in plan.scripts:
            if self.store.get_script(script_id, caller.user) is None:
                raise ClientError(f"{field}.environment {SCRIPT_ENV}: {caller.user} has no stored script {script_id}")
        # Again at submission: the definition may predate the head's current limits.
        for planned in plan.containers:
            check_container_limits(planned.container, planned.limits_field, self.container_limits)

    def _submit_facts(self, body: dict[str, Any], caller: Caller, token: str | None, digest: str | None) -> SubmitFacts:
        """Load what a SubmitJob names: its queue, its definition (ECS mapped), the jobs it depends on."""
        queue = self._queue(body["jobQueue"])
        jobdef = self._job_definition(body["jobDefinition"])
        multinode = jobdef.get("type") == "multinode"
        found: dict[str, JobRecord] = {}
        for dep in body.get("dependsOn", []):
            dep_id = dep.get("jobId")
            other = (self.engine.jobs.get(dep_id) or self.store.get_job(dep_id)) if dep_id else None
            if other is not None and may_see_job(caller, other.owner, self.private_data):
                found[dep_id] = other
        created_at = _now_ms()
        return SubmitFacts(
            queue=queue, job_definition=jobdef,
            container={} if multinode else _container_of(jobdef),
            node_properties=_ecs_nodes(jobdef["nodeProperties"]) if multinode else None,
            dependencies=found, owner=caller.user, job_id=self._job_id(created_at), created_at=created_at,
            client_token=token, request_digest=digest,
        )

    def _tokens_committed(self, events: list[tuple[str, int, str, str | None]]) -> None:
        """A commit observer: jobs just committed are found by token in the store from now on."""
        if self._token_of_job:
            for job_id, *_ in events:
                key = self._token_of_job.pop(job_id, None)
                if key is not None:
                    self._recent_tokens.pop(key, None)

    def _submitted_before(self, body: dict[str, Any], caller: Caller) -> tuple[str | None, str | None, JobRecord | None]:
        """The client token of a SubmitJob, its request digest, and the job it made before."""
        token = (body.get("tags") or {}).get(CLIENT_TOKEN_TAG)
        if token is None:
            return None, None, None
        if not 1 <= len(token) <= 64 or not token.isascii() or not token.isprintable():
            raise ClientError(f"tags {CLIENT_TOKEN_TAG}: a client token is 1 to 64 printable ASCII characters")
        digest = _request_digest(body)
        earlier = self._recent_tokens.get((caller.user, token)) or self.store.job_by_client_token(caller.user, token)
        if earlier is not None and earlier.request_digest != digest:
            # As AWS answers a clientToken reused with other parameters (IdempotentParameterMismatch).
            raise ClientError(
                f"tags {CLIENT_TOKEN_TAG} {token}: this client token was already used for job "
                f"{earlier.job_id} with a different request; a new job needs a new token"
            )
        return token, digest, earlier

    def SubmitJob(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """Load what the request names, plan the job (hpcbatch.model.submit, pure), check it, store it."""
        token, digest, earlier = self._submitted_before(body, caller)
        if earlier is not None:  # a retry of a submit that was done: the same job, nothing new
            return {"jobArn": self.arn("job", earlier.job_id), "jobName": earlier.job_name, "jobId": earlier.job_id}
        if token is not None:  # a control field, not a tag of the job
            body = {**body, "tags": {k: v for k, v in body["tags"].items() if k != CLIENT_TOKEN_TAG}}
        facts = self._submit_facts(body, caller, token, digest)
        plan = plan_submit(body, facts)
        self._check_planned(plan, caller)
        job = plan.job
        self._check_satisfiable(facts.queue, job.num_nodes, job.resources, job.tags)
        self.engine.submit(job, plan.children)
        if token is not None:
            self._recent_tokens[(caller.user, token)] = job
            self._token_of_job[job.job_id] = (caller.user, token)
        return {"jobArn": self.arn("job", job.job_id), "jobName": job.job_name, "jobId": job.job_id}

    def _check_satisfiable(
        self, queue: dict[str, Any], num_nodes: int, resources: ResourceRequest, tags: dict[str, str]
    ) -> None:
        """Refuse a job no node set of the queue's compute environments can ever hold (issue 18),
        unless its tags accept that (``hpcbatch:allowUnsatisfiable``); the rule is in scheduler.satisfy."""
        from hpcbatch.head.containers import CONTAINER_FEATURE
        from hpcbatch.scheduler.satisfy import (
            ALLOW_UNSATISFIABLE_TAG,
            EnvironmentShape,
            NodeShape,
            allows_unsatisfiable,
            why_unsatisfiable,
        )

        if allows_unsatisfiable(tags):
            return
        shapes = []
        for entry in sorted(queue.get("computeEnvironmentOrder") or [], key=lambda e: e.get("order", 0)):
            doc = self.store.get_resource("ce", _name_of(entry["computeEnvironment"]))
            if doc is None:
                continue
            name, compute = doc["computeEnvironmentName"], doc.get("computeResources") or {}
            nodes = tuple(
                NodeShape(
                    node, info.facts.vcpus, info.facts.memory_mib, max(len(info.facts.gpus), info.facts.declared_gpus),  # unhealthy ones heal
                    info.facts.placement_group,
                    frozenset((CONTAINER_FEATURE,)) if info.facts.container_runtime else frozenset(),
                )
                for node, info in self.engine.nodes_snapshot().items()
                if info.facts is not None and self.engine.compute_environment_of(node) == name
            ) + tuple(  # a MANAGED CE's powered-down nodes never seen yet: they can be powered up
                NodeShape(n, v, m) for n, v, m in pool_node_shapes(name, self.power_pools, set(self.engine.node_names()))
            )
            max_vcpus = compute.get("maxvCpus")
            shapes.append(EnvironmentShape(
                name, None if max_vcpus is None else float(max_vcpus), bool(compute.get("placementGroup")), nodes,
            ))
        # Resources only: a feature such as a container runtime can be installed; the wait reason tells.
        plain = ResourceRequest(vcpus=resources.vcpus, memory_mib=resources.memory_mib, gpus=resources.gpus)
        reason = why_unsatisfiable(num_nodes, plain, shapes)
        if reason is not None:
            raise ClientError(
                f"{reason} (job queue {queue['jobQueueName']}); no node set can ever hold this job. "
                f"To queue it anyway (nodes to come), tag it {ALLOW_UNSATISFIABLE_TAG}=true "
                "(hpcbatch submit --allow-unsatisfiable)"
            )

    def _jobs(self, job_ids: list[str]) -> list[JobRecord]:
        live = [self.engine.job(i) for i in job_ids]
        missing = [i for i, j in zip(job_ids, live, strict=True) if j is None]
        stored = {j.job_id: j for j in self.store.get_jobs(missing)} if missing else {}
        out = []
        for job_id, job in zip(job_ids, live, strict=True):
            found = job or stored.get(job_id)
            if found is not None:
                out.append(found)
        return out

    def DescribeJobs(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        from hpcbatch.model.jobs import job_detail

        ids = [_name_of(i) for i in body["jobs"]]
        return {
            "jobs": [
                self._with_forecast(job_detail(j, self.region, self.account), j)
                for j in self._jobs(ids)
                if may_see_job(caller, j.owner, self.private_data)
            ]
        }

    def _with_forecast(self, doc: dict[str, Any], job: JobRecord) -> dict[str, Any]:
        """A RUNNABLE job's expected start from the scheduler's plan, as hpcbatch's own field
        ``hpcbatchExpectedStartAt`` (ms since the epoch, like AWS's times); absent when unknown."""
        if job.status is JobStatus.RUNNABLE:
            at = self.engine.expected_start(job.job_id)
            if at is not None:
                doc["hpcbatchExpectedStartAt"] = int(at * 1000)
        return doc

    def ListJobs(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """An array's children, a multi-node job's nodes, or a queue's jobs a page at a time:
        the store selects and pages (the request read by hpcbatch.head.joblist)."""
        from hpcbatch.head import joblist
        from hpcbatch.model.jobs import job_summary

        parent, query = None, None
        if body.get("arrayJobId") or body.get("multiNodeJobId"):
            parent = self._job(_name_of(body.get("arrayJobId") or body["multiNodeJobId"]))
            if may_see_job(caller, parent.owner, self.private_data):
                query = joblist.children_query(body, parent)
        else:
            queue = _name_of(body["jobQueue"]) if body.get("jobQueue") else None
            if queue is not None:
                self._queue(queue)
            query = joblist.queue_query(body, queue, caller, self.private_data)
        if query is None:
            return {"jobSummaryList": []}
        jobs = [self.engine.jobs.get(j.job_id, j) for j in self.store.list_jobs(query)]  # the live record
        summaries = [job_summary(j, self.region, self.account) for j in jobs]
        if parent is not None and body.get("arrayJobId"):
            placed = {j.array_index: s for j, s in zip(jobs, summaries, strict=True) if j.array_index is not None}
            return {"jobSummaryList": joblist.array_summaries(parent, placed, body.get("jobStatus"), self.arn)}
        if parent is not None:
            return {"jobSummaryList": summaries}
        return joblist.page(query, jobs, summaries)

    def _parent_job(self, job_id: str) -> JobRecord:
        """CancelJob/TerminateJob on a node JOBID#i act on the whole multi-node job.

        An array child JOBID:i not placed yet gets its record now, so it can be cancelled alone.
        """
        parent_id, index = split_child_id(job_id)
        if index is not None:
            return self._job(parent_id)
        if ":" in job_id and self.engine.job(job_id) is None and self.store.get_job(job_id) is None:
            child = self.engine.detach_array_child(job_id)  # the scheduler's range skips it from now on
            if child is not None:
                return child
        return self._job(job_id)

    def _job(self, job_id: str) -> JobRecord:
        job = self.engine.job(job_id) or self.store.get_job(job_id)
        if job is None:
            raise NotFoundError(f"jobId {job_id} does not exist")
        return job

    def CancelJob(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        job = self._parent_job(_name_of(body["jobId"]))
        check_job_access(caller, "cancel", job.job_id, job.owner)
        live = self.engine.job(job.job_id)
        if live is not None and not job.status.is_final:
            self.engine.cancel(live, body["reason"])
        return {}

    def TerminateJob(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        job = self._parent_job(_name_of(body["jobId"]))
        check_job_access(caller, "terminate", job.job_id, job.owner)
        live = self.engine.job(job.job_id)
        if live is not None and not job.status.is_final:
            self.engine.terminate(live, body["reason"])
        return {}

    # --------------------------------------------------------- hpcbatch's own
    def StartJobTask(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """``hpcbatch run --pty --jobid``: a command inside a running job, on one of its nodes."""
        job_id, command, index = body.get("jobId"), body.get("command"), body.get("nodeIndex", 0)
        if not isinstance(job_id, str) or not job_id:
            raise ClientError("jobId is required")
        if not isinstance(command, str) or not command:
            raise ClientError("command must be a non-empty string (a shell command line)")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ClientError("nodeIndex must be a whole number, 0 or more")
        job = self._parent_job(_name_of(job_id))
        check_job_access(caller, "run a command in", job.job_id, job.owner)
        started = self.engine.start_client_task(self.engine.job(job.job_id) or job, index, command)
        if isinstance(started, str):
            raise ClientError(started)
        return {"launchId": started[0], "nodeName": started[1]}

    def PutScript(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        script = body.get("script")
        if not isinstance(script, str) or not script:
            raise ClientError("script must be a non-empty string")
        data = script.encode()
        if len(data) > 1 << 20:
            raise ClientError("script is larger than 1 MiB")
        script_id = "sha256:" + hashlib.sha256(data).hexdigest()
        with self.store.transaction():
            self.store.put_script(script_id, data, caller.user)
        return {"scriptId": script_id}

    def GetJobLogs(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        job_id = body.get("jobId")
        if not isinstance(job_id, str):
            raise ClientError("jobId is required")
        job = self._job(_name_of(job_id))
        check_job_access(caller, "read the logs of", job.job_id, job.owner)
        if not job.attempts:
            return {"jobId": job.job_id, "data": "", "nextOffset": 0, "complete": job.status.is_final}
        index = body.get("attempt", len(job.attempts) - 1)
        if not isinstance(index, int) or not 0 <= index < len(job.attempts):
            raise ClientError(f"attempt must be between 0 and {len(job.attempts) - 1}")
        offset = body.get("startFromOffset", 0)
        if not isinstance(offset, int) or offset < 0:
            raise ClientError("startFromOffset must be a non-negative integer")
        attempt = job.attempts[index]
        data = self.engine.logs.read(attempt.attempt_id, offset)
        return {
            "jobId": job.job_id,
            "attempt": index,
            "logStreamName": attempt.log_stream_name,
            "data": data.decode(errors="replace"),
            "nextOffset": offset + len(data),
            "complete": attempt.stopped_at is not None and offset + len(data) >= self.engine.logs.size(attempt.attempt_id),
        }

    # -------------------------------------------------------------- why it waits
    def GetJobQueueSnapshot(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """AWS GetJobQueueSnapshot: the first 100 RUNNABLE jobs in the order they will be tried."""
        queue = self._queue(body["jobQueue"])
        jobs = []
        for job_id in self.engine.front_of_queue(queue["jobQueueName"]):
            parent_id = job_id.rpartition(":")[0] if ":" in job_id else job_id
            job = self.engine.job(job_id) or self.engine.job(parent_id)
            if self._shown_job_id(job_id, caller) != job_id:
                continue  # private_data: another user's job is not listed, not even by id
            jobs.append(
                {
                    "jobArn": self.arn("job", job_id),
                    "earliestTimeAtPosition": job.created_at if job is not None else _now_ms(),
                }
            )
        return {"frontOfQueue": {"jobs": jobs, "lastUpdatedAt": _now_ms()}}

    def WhyJob(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """hpcbatch's `why`: a job's state, the scheduler's current reason, its queue position
        and the recent decisions about it."""
        job_id = body.get("jobId")
        if not isinstance(job_id, str):
            raise ClientError("jobId is required")
        job = self._job(_name_of(job_id))
        if not may_see_job(caller, job.owner, self.private_data):
            raise NotFoundError(f"jobId {job_id} does not exist")
        front = self.engine.front_of_queue(job.job_queue, limit=100_000)
        position = front.index(job.job_id) + 1 if job.job_id in front else None
        dependencies = [d.get("jobId") or d.get("type") for d in job.depends_on]
        return {
            "jobId": job.job_id,
            "status": job.status.value,
            "statusReason": job.status_reason,
            "queuePosition": position,
            "queueLength": len(front),
            "dependsOn": dependencies,
            # hpcbatch extension: accepted although no node set could hold it (issue 18)
            "allowUnsatisfiable": (job.tags or {}).get("hpcbatch:allowUnsatisfiable", "").lower() in ("true", "1", "yes"),
            "expectedStartAt": self._with_forecast({}, job).get("hpcbatchExpectedStartAt"),
            "decisions": [{"cause": c, "decision": self._masked(d, caller)}
                          for c, d in self.engine.decisions_about(job.job_id)],
        }

    # ------------------------------------------------------- identity and keys
    def WhoAmI(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        from hpcbatch import __version__

        return {"user": caller.user, "role": caller.role, "via": caller.via, "accessKeyId": caller.access_key_id,
                "headVersion": __version__}

    def CreateAccessKey(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        from hpcbatch.auth.keys import credentials_profile, generate_access_key
        from hpcbatch.auth.policy import ROLES

        user, role = body.get("user"), body.get("role", "user")
        if not isinstance(user, str) or not user or not user.isprintable() or "/" in user:
            raise ClientError("user must name a Unix user")
        if role not in ROLES:
            raise ClientError(f"role must be one of {', '.join(ROLES)} (got {role!r})")
        profile = body.get("profile") or f"hpcbatch-{user}"
        if not isinstance(profile, str):  # checked before the key is stored: all or nothing
            raise ClientError("profile must be a string")
        key = generate_access_key(user, role, _now_ms())
        doc = msgspec.to_builtins(key)
        with self.store.transaction():
            self.store.put_access_key(key.access_key_id, doc)
        return {
            "accessKeyId": key.access_key_id,
            "secretAccessKey": key.secret_access_key,
            "user": user,
            "role": role,
            "credentialsProfile": credentials_profile(key, profile),
            "region": self.region,  # what signatures must be scoped to (hpcbatch admin keys create's profile)
        }

    def _access_key(self, body: dict[str, Any]) -> dict[str, Any]:
        key_id = body.get("accessKeyId")
        doc = self.store.get_access_key(key_id) if isinstance(key_id, str) else None
        if doc is None:
            raise NotFoundError(f"accessKeyId {key_id} does not exist")
        return doc

    def ListAccessKeys(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        keys = [{k: v for k, v in d.items() if k != "secret_access_key"} for d in self.store.list_access_keys()]
        return {"accessKeys": keys}

    def UpdateAccessKey(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        doc = self._access_key(body)
        status = body.get("status")
        if status not in ("Active", "Inactive"):
            raise ClientError("status must be Active or Inactive")
        doc["status"] = status
        with self.store.transaction():
            self.store.put_access_key(doc["access_key_id"], doc)
        return {}

    def DeleteAccessKey(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        doc = self._access_key(body)
        with self.store.transaction():
            self.store.delete_access_key(doc["access_key_id"])
        return {}

    def ListAudit(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        limit = body.get("maxResults", 100)
        if not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ClientError("maxResults must be between 1 and 10000")
        user, since = body.get("user"), body.get("since")
        if user is not None and not isinstance(user, str):
            raise ClientError("user must be a user name")
        if since is not None and (type(since) is not int or not 0 <= since < 2**63):
            raise ClientError("since must be epoch milliseconds")
        return {"events": self.store.list_audit(limit=limit, user=user, since=since)}

    def _registry(self) -> Any:
        if self.node_keys is None:
            raise ClientError("node key enrollment is not enabled on this head")
        return self.node_keys

    def ListNodeKeys(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return {"nodeKeys": self._registry().list()}

    def _node_key_name(self, body: dict[str, Any]) -> str:
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise ClientError("name must name a node")
        return name

    def AcceptNodeKey(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        self._registry().accept(self._node_key_name(body))
        return {}

    def RejectNodeKey(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        self._registry().reject(self._node_key_name(body))
        return {}

    def RevokeNodeKey(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        self._registry().revoke(self._node_key_name(body))
        return {}

    def DeleteNodeKey(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        self._registry().delete(self._node_key_name(body))
        return {}

    def _node(self, body: dict[str, Any]) -> str:
        name = body.get("name")
        if not isinstance(name, str) or not self.engine.has_node(name):
            raise NotFoundError(f"node {name} does not exist")
        return name

    def DrainNode(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """No new work on the node; running jobs finish (Slurm's scontrol drain)."""
        name = self._node(body)
        reason = body.get("reason") or f"Drained by {caller.user}"
        if not isinstance(reason, str):
            raise ClientError("reason must be a string")
        self.engine.drain(name, reason)
        self._save_drains()
        return {}

    def PrepullImage(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """Warm nodes' image caches before a big job; default: every ACTIVE node with a runtime."""
        image = check_image_name(body.get("image"))
        names = body.get("nodes")
        if names is None:
            names = [n for n, i in sorted(self.engine.nodes_snapshot().items())
                     if i.state == "ACTIVE" and i.facts is not None and i.facts.container_runtime]
        elif not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ClientError("nodes must be a list of node names")
        for name in names:
            info = self.engine.node(name)
            if info is None:
                raise NotFoundError(f"nodes: node {name} does not exist")
            if info.facts is None or not info.facts.container_runtime:
                raise ClientError(f"nodes: node {name} has no container runtime")
        self.engine.prepull(names, image)
        return {"image": image, "nodes": names}

    def ResumeNode(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = self._node(body)
        self.engine.drain(name, None)
        self._save_drains()
        return {}

    def _save_drains(self) -> None:
        drained = self.engine.drained_nodes()
        with self.store.transaction():
            self.store.put_resource("settings", "drained-nodes", 1, "VALID", drained)

    def load_drains(self) -> None:
        """Drains survive a head restart (an admin's decision, not a fact from the node)."""
        self.engine.restore_drains(self.store.get_resource("settings", "drained-nodes") or {})

    def ListNodes(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """Every node, or with ``maxResults`` one page of them (by name) and a ``nextToken``."""
        names, token = _node_page(self._node_names(), body)
        nodes = [self._node_doc(name, self.engine.node(name), caller) for name in names]
        # Power states (MANAGED compute environments); pool nodes the head never heard of
        # come after the last page's nodes.
        nodes = list_power(nodes, self.engine.power, known=self.engine.node_names(), add_unseen=token is None)
        out: dict[str, Any] = {"nodes": nodes}
        if token is not None:
            out["nextToken"] = token
        return out

    def _node_names(self) -> list[str]:
        """The node names in order (the registry re-sorts them only when the set of nodes changed)."""
        return self.engine.node_names()

    def _node_doc(self, name: str, info: Any, caller: Caller) -> dict[str, Any]:
        from hpcbatch.head import gpus as head_gpus

        facts = info.facts
        usage = self.engine.node_usage(name)
        holders = {gpu: self._shown_job_id(job_id, caller) for gpu, job_id in self.engine.gpu_holders(name).items()}
        return {
                "name": name,
                "hostname": facts.hostname if facts else None,
                "addresses": facts.addresses if facts else [],
                "state": info.state,
                "stateReason": info.state_reason,
                "computeEnvironment": self.engine.compute_environment_of(name) or None,
                "placementGroup": facts.placement_group if facts else None,
                "fabricInterface": facts.fabric_interface if facts else None,
                "fabricAddress": facts.fabric_address if facts else None,
                "fabricKind": facts.fabric_kind if facts else None,
                "fabricDevices": facts.fabric_devices if facts else [],
                "vcpus": facts.vcpus if facts else 0,
                "memoryMiB": facts.memory_mib if facts else 0,
                "gpus": facts.gpus if facts else [],
                "containerRuntime": facts.container_runtime if facts else None,
                "images": info.images,
                "allocatedVcpus": usage[0],
                "allocatedMemoryMiB": usage[1],
                "allocatedGpus": usage[2],
                "gpuHolders": holders,
                **head_gpus.node_gpu_listing(facts, holders, info.gpu_unhealthy),
                "runningJobs": sorted(j for j in info.jobs if self._shown_job_id(j, caller) == j),
                "lastHeartbeatAt": info.last_heartbeat_at,
                "agentVersion": facts.agent_version if facts else None,
                "quarantinedMessages": [  # hpcbatch.head.engine: reports the head set aside
                    {"type": q.kind, "jobId": q.job_id, "attemptId": q.attempt_id, "tries": q.tries,
                     "error": q.error, "at": q.at} for q in info.quarantined
                ],
        }

    def _shown_job_id(self, job_id: str, caller: Caller) -> str:
        """A job id as ``caller`` may see it in a node listing: under private_data another
        user's job is only ``PRIVATE_JOB`` (the GPU is held, by whom is not said)."""
        if not self.private_data or caller.is_admin:
            return job_id
        parent_id = split_child_id(job_id)[0].split(":")[0]
        job = self.engine.job(job_id) or self.engine.job(parent_id) or self.store.get_job(parent_id)
        return job_id if job is not None and job.owner == caller.user else PRIVATE_JOB

    def _masked(self, text: str, caller: Caller) -> str:
        """A scheduler decision as ``caller`` may read it: other users' job ids hidden
        (a backfill note names the job whose reservation it ran before)."""
        if not self.private_data or caller.is_admin:
            return text
        return _JOB_ID.sub(lambda m: self._shown_job_id(m.group(0), caller), text)


Operation = Callable[[BatchService, dict[str, Any], Caller], dict[str, Any]]
