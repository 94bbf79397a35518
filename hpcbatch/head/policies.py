"""Scheduling policies (AWS Batch fair share): the five operations and the queue-side rules.

Shapes and limits are checked at the edge (``hpcbatch.validation``); this module checks what
needs the store (the name is free, the policy exists, no queue still uses it), writes in one
transaction, and tells the engine, which re-feeds every queue that uses the policy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hpcbatch.errors import ClientError, NotFoundError
from hpcbatch.scheduler.fairshare import FairSharePolicy
from hpcbatch.store import Store

KIND = "policy"


def fair_share_of(doc: dict[str, Any] | None) -> FairSharePolicy | None:
    """The core's view of a stored policy document (None: no policy, a FIFO queue)."""
    if doc is None:
        return None
    fair = doc.get("fairsharePolicy") or {}
    return FairSharePolicy(
        share_decay_s=int(fair.get("shareDecaySeconds", 0)),
        compute_reservation=int(fair.get("computeReservation", 0)),
        shares=tuple(
            (s["shareIdentifier"], float(s.get("weightFactor", 1.0))) for s in fair.get("shareDistribution", [])
        ),
    )


def policy_name(arn: str) -> str:
    """``arn:aws:batch:REGION:ACCOUNT:scheduling-policy/NAME`` (or a bare name) -> NAME."""
    return arn.rsplit("/", 1)[-1] if arn.startswith("arn:") else arn


class SchedulingPolicies:
    """Create/Update/Describe/Delete/List SchedulingPolicy, as AWS names them."""

    def __init__(self, store: Store, arn: Callable[[str, str], str], changed: Callable[[str], None]) -> None:
        self.store = store
        self._arn = arn
        self._changed = changed  # policy name -> re-feed the queues that use it

    def get(self, arn: str, field: str = "arn") -> dict[str, Any]:
        doc = self.store.get_resource(KIND, policy_name(arn))
        if doc is None:
            raise NotFoundError(f"{field} {arn}: no such scheduling policy")
        return doc

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["name"]
        if self.store.get_resource(KIND, name) is not None:
            raise ClientError(f"name {name}: a scheduling policy of that name already exists")
        doc = {
            "name": name,
            "arn": self._arn("scheduling-policy", name),
            "fairsharePolicy": body.get("fairsharePolicy") or {},
            "tags": body.get("tags", {}),
        }
        with self.store.transaction():
            self.store.put_resource(KIND, name, 1, "ACTIVE", doc)
        return {"name": name, "arn": doc["arn"]}

    def update(self, body: dict[str, Any]) -> dict[str, Any]:
        doc = self.get(body["arn"])
        if "fairsharePolicy" in body:
            doc["fairsharePolicy"] = body["fairsharePolicy"] or {}
        with self.store.transaction():
            self.store.put_resource(KIND, doc["name"], 1, "ACTIVE", doc)
        self._changed(doc["name"])
        return {}

    def describe(self, body: dict[str, Any]) -> dict[str, Any]:
        arns = body.get("arns", [])
        if not 1 <= len(arns) <= 100:
            raise ClientError("arns must list 1 to 100 scheduling policy ARNs")
        docs = [d for d in (self.store.get_resource(KIND, policy_name(a)) for a in arns) if d is not None]
        return {"schedulingPolicies": docs}

    def delete(self, body: dict[str, Any]) -> dict[str, Any]:
        doc = self.get(body["arn"])
        users = [
            q["jobQueueName"]
            for q in self.store.list_resources("queue")
            if policy_name(q.get("schedulingPolicyArn", "")) == doc["name"]
        ]
        if users:
            raise ClientError(f"arn {doc['arn']} is still used by job queue(s) {', '.join(users)}")
        with self.store.transaction():
            self.store.delete_resource(KIND, doc["name"])
        return {}

    def list(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"arn": d["arn"]} for d in self.store.list_resources(KIND)]

    def check_queue(self, body: dict[str, Any], old: dict[str, Any] | None) -> str | None:
        """The queue's schedulingPolicyArn after this Create/UpdateJobQueue, checked as AWS does."""
        new = body.get("schedulingPolicyArn")
        if old is not None:
            before = old.get("schedulingPolicyArn")
            if new is None:
                return before
            if before is None:
                # AWS: a queue created without a policy stays FIFO; one with a policy keeps one.
                raise ClientError(
                    "schedulingPolicyArn: a job queue created without a scheduling policy (FIFO) "
                    "cannot get one; create a new job queue"
                )
        if new is None:
            return None
        return self.get(new, "schedulingPolicyArn")["arn"]
