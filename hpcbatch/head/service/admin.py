"""The admin's operations and the node listing: who am I, access keys, the audit log, node
keys (enrollment), drain and resume, image pre-pulls, and ListNodes.

Nodes are read through the engine's methods (``node``, ``node_names``, ``node_usage``,
``gpu_holders``...); drains are the admin's decisions and are kept in the store so they
survive a head restart.
"""

from __future__ import annotations

from typing import Any

import msgspec

from hpcbatch.auth.policy import Caller
from hpcbatch.errors import ClientError, NotFoundError
from hpcbatch.head.powerviews import list_power
from hpcbatch.head.service.common import ServiceContext, node_page, now_ms
from hpcbatch.validation import check_image_name


class Admin:
    """Identity, access keys, the audit log, node keys and the nodes themselves."""

    def __init__(self, cx: ServiceContext) -> None:
        self._cx = cx

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
        key = generate_access_key(user, role, now_ms())
        doc = msgspec.to_builtins(key)
        with self._cx.store.transaction():
            self._cx.store.put_access_key(key.access_key_id, doc)
        return {
            "accessKeyId": key.access_key_id,
            "secretAccessKey": key.secret_access_key,
            "user": user,
            "role": role,
            "credentialsProfile": credentials_profile(key, profile),
            "region": self._cx.region,  # what signatures must be scoped to (hpcbatch admin keys create's profile)
        }

    def _access_key(self, body: dict[str, Any]) -> dict[str, Any]:
        key_id = body.get("accessKeyId")
        doc = self._cx.store.get_access_key(key_id) if isinstance(key_id, str) else None
        if doc is None:
            raise NotFoundError(f"accessKeyId {key_id} does not exist")
        return doc

    def ListAccessKeys(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        keys = [{k: v for k, v in d.items() if k != "secret_access_key"} for d in self._cx.store.list_access_keys()]
        return {"accessKeys": keys}

    def UpdateAccessKey(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        doc = self._access_key(body)
        status = body.get("status")
        if status not in ("Active", "Inactive"):
            raise ClientError("status must be Active or Inactive")
        doc["status"] = status
        with self._cx.store.transaction():
            self._cx.store.put_access_key(doc["access_key_id"], doc)
        return {}

    def DeleteAccessKey(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        doc = self._access_key(body)
        with self._cx.store.transaction():
            self._cx.store.delete_access_key(doc["access_key_id"])
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
        return {"events": self._cx.store.list_audit(limit=limit, user=user, since=since)}

    def _registry(self) -> Any:
        if self._cx.node_keys is None:
            raise ClientError("node key enrollment is not enabled on this head")
        return self._cx.node_keys

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
        if not isinstance(name, str) or not self._cx.engine.has_node(name):
            raise NotFoundError(f"node {name} does not exist")
        return name

    def DrainNode(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """No new work on the node; running jobs finish (Slurm's scontrol drain)."""
        name = self._node(body)
        reason = body.get("reason") or f"Drained by {caller.user}"
        if not isinstance(reason, str):
            raise ClientError("reason must be a string")
        self._cx.engine.drain(name, reason)
        self._save_drains()
        return {}

    def PrepullImage(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """Warm nodes' image caches before a big job; default: every ACTIVE node with a runtime."""
        image = check_image_name(body.get("image"))
        names = body.get("nodes")
        if names is None:
            names = [n for n, i in sorted(self._cx.engine.nodes_snapshot().items())
                     if i.state == "ACTIVE" and i.facts is not None and i.facts.container_runtime]
        elif not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ClientError("nodes must be a list of node names")
        for name in names:
            info = self._cx.engine.node(name)
            if info is None:
                raise NotFoundError(f"nodes: node {name} does not exist")
            if info.facts is None or not info.facts.container_runtime:
                raise ClientError(f"nodes: node {name} has no container runtime")
        self._cx.engine.prepull(names, image)
        return {"image": image, "nodes": names}

    def ResumeNode(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = self._node(body)
        self._cx.engine.drain(name, None)
        self._save_drains()
        return {}

    def _save_drains(self) -> None:
        drained = self._cx.engine.drained_nodes()
        with self._cx.store.transaction():
            self._cx.store.put_resource("settings", "drained-nodes", 1, "VALID", drained)

    def load_drains(self) -> None:
        """Drains survive a head restart (an admin's decision, not a fact from the node)."""
        self._cx.engine.restore_drains(self._cx.store.get_resource("settings", "drained-nodes") or {})

    def ListNodes(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """Every node, or with ``maxResults`` one page of them (by name) and a ``nextToken``."""
        names, token = node_page(self._node_names(), body)
        nodes = [self._node_doc(name, self._cx.engine.node(name), caller) for name in names]
        # Power states (MANAGED compute environments); pool nodes the head never heard of
        # come after the last page's nodes.
        nodes = list_power(nodes, self._cx.engine.power, known=self._cx.engine.node_names(), add_unseen=token is None)
        out: dict[str, Any] = {"nodes": nodes}
        if token is not None:
            out["nextToken"] = token
        return out

    def _node_names(self) -> list[str]:
        """The node names in order (the registry re-sorts them only when the set of nodes changed)."""
        return self._cx.engine.node_names()

    def _node_doc(self, name: str, info: Any, caller: Caller) -> dict[str, Any]:
        from hpcbatch.head import gpus as head_gpus

        facts = info.facts
        usage = self._cx.engine.node_usage(name)
        holders = {gpu: self._cx.shown_job_id(job_id, caller) for gpu, job_id in self._cx.engine.gpu_holders(name).items()}
        return {
                "name": name,
                "hostname": facts.hostname if facts else None,
                "addresses": facts.addresses if facts else [],
                "state": info.state,
                "stateReason": info.state_reason,
                "computeEnvironment": self._cx.engine.compute_environment_of(name) or None,
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
                "runningJobs": sorted(j for j in info.jobs if self._cx.shown_job_id(j, caller) == j),
                "lastHeartbeatAt": info.last_heartbeat_at,
                "agentVersion": facts.agent_version if facts else None,
                "quarantinedMessages": [  # hpcbatch.head.engine: reports the head set aside
                    {"type": q.kind, "jobId": q.job_id, "attemptId": q.attempt_id, "tries": q.tries,
                     "error": q.error, "at": q.at} for q in info.quarantined
                ],
        }
