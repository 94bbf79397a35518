"""The AWS Batch resources: compute environments, job queues, scheduling policies, job
definitions, and the tags on all of them (and on jobs).

Each operation checks what needs the store (does the queue exist, is the name free), writes
inside one transaction, and tells the engine through its methods. A rejected call raises
before anything is written.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from hpcbatch.auth.policy import (
    AccessDenied,
    Caller,
    check_job_access,
    check_preempting_queue,
    may_see_job,
)
from hpcbatch.errors import ClientError, NotFoundError
from hpcbatch.head.containers import refuse_privileged
from hpcbatch.head.policies import SchedulingPolicies
from hpcbatch.head.powerviews import describe_capacity, managed_status
from hpcbatch.head.service.common import (
    ServiceContext,
    container_of,
    ecs_nodes,
    name_of,
    page,
    paged,
)
from hpcbatch.model.multinode import resolve_nodes
from hpcbatch.validation import MAX_TAGS, check_container_limits

DEFAULT_JOB_DEFINITION = "hpcbatch-default"
DEFAULT_MULTINODE_DEFINITION = "hpcbatch-default-mnp"  # `hpcbatch submit --nodes N -- CMD`
# AWS Batch's service quotas (they cannot be raised there): compute environments, job queues.
MAX_COMPUTE_ENVIRONMENTS = 50
MAX_JOB_QUEUES = 50
INTERNAL = Caller(user="root", role="admin", via="internal")


class Resources:
    """Compute environments, job queues, scheduling policies, job definitions and tags."""

    def __init__(self, cx: ServiceContext) -> None:
        self._cx = cx
        self.policies = SchedulingPolicies(cx.store, cx.arn, cx.engine.scheduling_policy_changed)

    # ------------------------------------------------------- compute environments

    def CreateComputeEnvironment(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = body["computeEnvironmentName"]
        if self._cx.store.get_resource("ce", name) is not None:
            raise ClientError(f"computeEnvironmentName {name} already exists")
        if len(self._cx.store.list_resources("ce")) >= MAX_COMPUTE_ENVIRONMENTS:
            raise ClientError(f"computeEnvironmentName {name}: this cluster has {MAX_COMPUTE_ENVIRONMENTS} compute "
                              "environments, AWS Batch's limit; delete one first")
        doc = {
            "computeEnvironmentName": name,
            "computeEnvironmentArn": self._cx.arn("compute-environment", name),
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
        doc["status"], doc["statusReason"] = managed_status(name, doc["type"], doc["computeResources"], self._cx.power_pools)
        with self._cx.store.transaction():
            self._cx.store.put_resource("ce", name, 1, doc["status"], doc)
        self._cx.engine.compute_environment_changed(doc)
        return {"computeEnvironmentName": name, "computeEnvironmentArn": doc["computeEnvironmentArn"]}

    def UpdateComputeEnvironment(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        doc = self._cx.ce(body["computeEnvironment"])
        if "state" in body:
            doc["state"] = body["state"]
        if "computeResources" in body:
            doc["computeResources"] = {**doc.get("computeResources", {}), **body["computeResources"]}
        if "unmanagedvCpus" in body:
            doc["unmanagedvCpus"] = body["unmanagedvCpus"]
        doc["status"], doc["statusReason"] = managed_status(
            doc["computeEnvironmentName"], doc["type"], doc["computeResources"], self._cx.power_pools)
        with self._cx.store.transaction():
            self._cx.store.put_resource("ce", doc["computeEnvironmentName"], 1, doc["status"], doc)
        self._cx.engine.compute_environment_changed(doc)
        return {"computeEnvironmentName": doc["computeEnvironmentName"], "computeEnvironmentArn": doc["computeEnvironmentArn"]}

    def DescribeComputeEnvironments(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        wanted = {name_of(r) for r in body.get("computeEnvironments", [])}
        docs = [d for d in self._cx.store.list_resources("ce") if not wanted or d["computeEnvironmentName"] in wanted]
        shown, token = page(docs, body.get("maxResults"), body.get("nextToken"))
        shown = [describe_capacity(d, self._cx.engine.power, self._cx.power_pools) for d in shown]  # desiredvCpus of MANAGED ones
        out: dict[str, Any] = {"computeEnvironments": shown}
        if token:
            out["nextToken"] = token
        return out

    def DeleteComputeEnvironment(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        doc = self._cx.ce(body["computeEnvironment"])
        name = doc["computeEnvironmentName"]
        if doc["state"] != "DISABLED":
            raise ClientError(f"computeEnvironment {name} must be DISABLED before it is deleted")
        users = [
            q["jobQueueName"]
            for q in self._cx.store.list_resources("queue")
            if any(name_of(e["computeEnvironment"]) == name for e in q["computeEnvironmentOrder"])
        ]
        if users:
            raise ClientError(f"computeEnvironment {name} is still used by job queue(s) {', '.join(users)}")
        with self._cx.store.transaction():
            self._cx.store.delete_resource("ce", name)
        self._cx.engine.compute_environment_removed(name)
        return {}

    # ---------------------------------------------------------------- job queues
    def _ce_order(self, order: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for i, entry in enumerate(order):
            try:
                ce = self._cx.ce(entry["computeEnvironment"])
            except NotFoundError:
                raise ClientError(
                    f"computeEnvironmentOrder[{i}].computeEnvironment {entry['computeEnvironment']} does not exist"
                ) from None
            out.append({"order": entry["order"], "computeEnvironment": ce["computeEnvironmentArn"]})
        return out

    def CreateJobQueue(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = body["jobQueueName"]
        if self._cx.store.get_resource("queue", name) is not None:
            raise ClientError(f"jobQueueName {name} already exists")
        if len(self._cx.store.list_resources("queue")) >= MAX_JOB_QUEUES:
            raise ClientError(f"jobQueueName {name}: this cluster has {MAX_JOB_QUEUES} job queues, AWS Batch's "
                              "limit; delete one first")
        if not body.get("computeEnvironmentOrder"):
            raise ClientError("computeEnvironmentOrder must name 1 to 3 compute environments")
        check_preempting_queue(caller, name, None, body.get("tags") or {})
        doc = {
            "jobQueueName": name,
            "jobQueueArn": self._cx.arn("job-queue", name),
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
        with self._cx.store.transaction():
            self._cx.store.put_resource("queue", name, 1, doc["status"], doc)
        self._cx.engine.job_queue_changed(doc)
        return {"jobQueueName": name, "jobQueueArn": doc["jobQueueArn"]}

    def UpdateJobQueue(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        doc = self._cx.queue(body["jobQueue"])
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
        with self._cx.store.transaction():
            self._cx.store.put_resource("queue", doc["jobQueueName"], 1, doc["status"], doc)
        self._cx.engine.job_queue_changed(doc)
        return {"jobQueueName": doc["jobQueueName"], "jobQueueArn": doc["jobQueueArn"]}

    def _time_limit_actions(self, actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, action in enumerate(actions):
            if action["maxTimeSeconds"] < self._cx.min_state_time_limit_s:
                raise ClientError(
                    f"jobStateTimeLimitActions[{i}].maxTimeSeconds must be at least "
                    f"{self._cx.min_state_time_limit_s} (got {action['maxTimeSeconds']})"
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
        return paged("schedulingPolicies", self.policies.list(body), body)

    def DescribeJobQueues(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        wanted = {name_of(r) for r in body.get("jobQueues", [])}
        docs = [d for d in self._cx.store.list_resources("queue") if not wanted or d["jobQueueName"] in wanted]
        return paged("jobQueues", docs, body)

    def DeleteJobQueue(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        doc = self._cx.queue(body["jobQueue"])
        name = doc["jobQueueName"]
        if doc["state"] != "DISABLED":
            raise ClientError(f"jobQueue {name} must be DISABLED before it is deleted")
        # AWS terminates the queue's remaining jobs when the queue goes away.
        for job in self._cx.engine.jobs_where(lambda j: j.job_queue == name):
            self._cx.engine.terminate(job, f"Job queue {name} was deleted")
        with self._cx.store.transaction():
            self._cx.store.delete_resource("queue", name)
        self._cx.engine.job_queue_removed(name)
        return {}

    # ----------------------------------------------------------- job definitions
    def RegisterJobDefinition(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = body["jobDefinitionName"]
        if body.get("type") == "multinode":
            resolve_nodes(ecs_nodes(body["nodeProperties"]), None)  # ranges cover every node, main inside
        ranges = (ecs_nodes(body["nodeProperties"]) if body.get("nodeProperties") else {}).get("nodeRangeProperties") or []
        top = ("ecsProperties", container_of(body)) if "ecsProperties" in body else (
            "containerProperties", body.get("containerProperties") or {})
        for field, container in [top] + [
            (f"nodeProperties.nodeRangeProperties[{i}].{'ecsProperties' if 'ecsProperties' in r else 'container'}",
             r.get("container") or {}) for i, r in enumerate(ranges)
        ]:
            refuse_privileged(container, field, self._cx.allow_privileged_containers)
            check_container_limits(container, field, self._cx.container_limits)
        revision = self._cx.store.latest_revision("jobdef", name) + 1
        arn = self._cx.arn("job-definition", f"{name}:{revision}")
        doc = {k: v for k, v in body.items()}
        doc.update(jobDefinitionArn=arn, revision=revision, status="ACTIVE", containerOrchestrationType="ECS")
        doc.setdefault("parameters", {})
        doc.setdefault("tags", {})
        doc.setdefault("platformCapabilities", ["EC2"])
        with self._cx.store.transaction():
            self._cx.store.put_resource("jobdef", name, revision, "ACTIVE", doc)
        return {"jobDefinitionName": name, "jobDefinitionArn": arn, "revision": revision}

    def ensure_default_job_definition(self) -> None:
        """The quick ``hpcbatch submit -- CMD`` form runs on this definition."""
        if self._cx.store.latest_revision("jobdef", DEFAULT_JOB_DEFINITION) == 0:
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
                INTERNAL,
            )

    def ensure_default_multinode_definition(self) -> None:
        """The quick ``hpcbatch submit --nodes N -- CMD`` form: CMD on the main node, the rest held.

        It names no vCPUs or memory: its nodes are held whole, so each gets the whole node
        (``model.multinode.whole_node``) and the hostfile offers a slot per vCPU. (A head that
        registered the older form, 1 vCPU and 512 MiB, keeps it: an admin may have changed it.)
        """
        if self._cx.store.latest_revision("jobdef", DEFAULT_MULTINODE_DEFINITION) == 0:
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
                INTERNAL,
            )

    def DescribeJobDefinitions(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        if body.get("jobDefinitions"):
            docs = []
            for ref in body["jobDefinitions"]:
                name, _, rev = name_of(ref).partition(":")
                docs.extend(d for d in self._cx.store.list_resources("jobdef", name) if not rev or str(d["revision"]) == rev)
        else:
            docs = self._cx.store.list_resources("jobdef", body.get("jobDefinitionName"))
        if body.get("status"):
            docs = [d for d in docs if d["status"] == body["status"]]
        return paged("jobDefinitions", docs, body)

    def DeregisterJobDefinition(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        ref = body["jobDefinition"]
        name, _, rev = name_of(ref).partition(":")
        docs = self._cx.store.list_resources("jobdef", name)
        if rev:
            docs = [d for d in docs if str(d["revision"]) == rev]
        if not docs:
            raise NotFoundError(f"jobDefinition {ref} does not exist")
        with self._cx.store.transaction():
            for doc in docs:
                doc["status"] = "INACTIVE"
                self._cx.store.put_resource("jobdef", name, doc["revision"], "INACTIVE", doc)
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
        if parts[3] != self._cx.region or parts[4] != self._cx.account:
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
        doc = self._cx.store.get_resource(store_kind, name, revision) if name else None
        if doc is None:
            raise missing
        if change and not caller.is_admin and caller.role != "developer":
            raise AccessDenied(f"user {caller.user} (role {caller.role}) may not tag {kind} {name}: "
                               "it needs role developer")

        return dict(doc.get("tags") or {}), lambda tags: self._put_tags(store_kind, name, doc, caller, tags)

    def _put_tags(self, store_kind: str, name: str, doc: dict[str, Any], caller: Caller, tags: dict[str, str]) -> None:
        """Store a resource's new tags; the ones that are scheduling settings reach the engine."""
        if store_kind == "queue":
            check_preempting_queue(caller, name, doc.get("tags"), tags)
        doc["tags"] = tags
        status = doc.get("status", "ACTIVE") if store_kind != "policy" else "ACTIVE"
        with self._cx.store.transaction():
            self._cx.store.put_resource(store_kind, name, doc.get("revision", 1) if store_kind == "jobdef" else 1,
                                        status, doc)
        if store_kind == "queue":  # a queue's hpcbatch:preempts/preemptible tags are scheduling settings
            self._cx.engine.job_queue_changed(doc)
        elif store_kind == "ce":  # a CE's hpcbatch:nodeSelector tag chooses the nodes that join it by label
            self._cx.engine.compute_environment_changed(doc)

    def _tagged_job(
        self, job_id: str, arn: str, caller: Caller, change: bool, missing: ClientError,
    ) -> tuple[dict[str, str], Callable[[dict[str, str]], None]]:
        job = self._cx.engine.job(job_id) or self._cx.store.get_job(job_id)
        if job is None or not may_see_job(caller, job.owner, self._cx.private_data):
            raise missing
        if change:
            check_job_access(caller, "tag", job_id, job.owner)

        def put(tags: dict[str, str]) -> None:
            job.tags = tags
            with self._cx.store.transaction():  # a live job's record is the engine's: it writes it again as is
                self._cx.store.put_jobs([job])

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
