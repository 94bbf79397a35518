"""The ``cloud`` driver: a node is an EC2 instance launched from a launch template (bursting).

Powering node ``cn7`` up is ``RunInstances`` with the pool's launch template (whose user
data starts the agent, docs/managed.md) and the tag ``<cloud_tag>=cn7`` (and ``Name=cn7``),
one instance per node; powering it down is ``TerminateInstances``, returning once EC2 says
``terminated`` (a fact, as STONITH needs). The node is found by its tag, never remembered:
a node with an instance pending or running is not launched again (after a head restart
too), and one powered off by hand is seen as Off.

Credentials and region come from the usual AWS chain (environment, ~/.aws, instance role);
``cloud_region`` and ``cloud_endpoint_url`` (a local emulator in tests, or a VPC endpoint)
override it. boto3 is synchronous: each call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from hpcbatch.head.powerdrivers.base import OFF, ON, POWERING_OFF, POWERING_ON, UNKNOWN, PowerError
from hpcbatch.scheduler.power import hostlist

if TYPE_CHECKING:
    from hpcbatch.head.powerdrivers.config import PoolConfig

# EC2 instance states (DescribeInstances InstanceState.Name) in Redfish's words.
STATES = {"pending": POWERING_ON, "running": ON, "stopping": POWERING_OFF, "shutting-down": POWERING_OFF,
          "stopped": OFF, "terminated": OFF}
LIVE = ("pending", "running", "stopping", "shutting-down", "stopped")  # an instance that still is the node
POLL_S = 0.5


def check_config(where: str, pool: PoolConfig) -> str | None:
    """None if the pool's cloud keys are usable, else one line naming the field."""
    if not pool.cloud_launch_template:
        return f"{where}.cloud_launch_template is required by the cloud driver (a launch template's name or lt- id)"
    if not pool.cloud_tag or pool.cloud_tag.startswith("aws:"):
        return f"{where}.cloud_tag must be a tag key (not aws:...) that names the node"
    if pool.cloud_endpoint_url and not pool.cloud_endpoint_url.startswith(("http://", "https://")):
        return f"{where}.cloud_endpoint_url must be an http(s):// URL"
    return None


class CloudDriver:
    """EC2 instances from a launch template, one per node, found by tag; see the module docstring."""

    def __init__(self, config: PoolConfig) -> None:
        self.template = config.cloud_launch_template
        self.version = config.cloud_launch_template_version
        self.tag = config.cloud_tag
        self.region = config.cloud_region or None
        self.endpoint = config.cloud_endpoint_url or None
        self.timeout_s = config.timeout_s
        self._client: Any = None

    def _ec2(self) -> Any:
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise PowerError("the cloud driver needs boto3 on the head (pip install boto3)") from None
            config = Config(connect_timeout=min(10.0, self.timeout_s), read_timeout=self.timeout_s,
                            retries={"max_attempts": 3, "mode": "standard"})
            self._client = boto3.session.Session().client(
                "ec2", region_name=self.region, endpoint_url=self.endpoint, config=config)
        return self._client

    def _template(self) -> dict[str, str]:
        key = "LaunchTemplateId" if self.template.startswith("lt-") else "LaunchTemplateName"
        return {key: self.template, "Version": self.version}

    def _instances(self, nodes: list[str]) -> dict[str, list[tuple[str, str]]]:
        """node -> [(instance id, state)] of its instances EC2 still lists (terminated ones too)."""
        out: dict[str, list[tuple[str, str]]] = {node: [] for node in nodes}
        pages = self._ec2().get_paginator("describe_instances").paginate(
            Filters=[{"Name": f"tag:{self.tag}", "Values": list(nodes)}])
        for page in pages:
            for reservation in page.get("Reservations", []):
                for inst in reservation.get("Instances", []):
                    node = next((t["Value"] for t in inst.get("Tags", []) if t["Key"] == self.tag), None)
                    if node in out:
                        out[node].append((inst["InstanceId"], inst["State"]["Name"]))
        return out

    def _launch(self, node: str) -> str:
        tags = [{"Key": self.tag, "Value": node}, {"Key": "Name", "Value": node}]
        answer = self._ec2().run_instances(
            LaunchTemplate=self._template(), MinCount=1, MaxCount=1,
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])
        return str(answer["Instances"][0]["InstanceId"])

    def _power_on(self, nodes: list[str]) -> dict[str, str]:
        """Launch the nodes that have no live instance; node -> why EC2 refused it (a capacity
        error for one launch must not fail the instances already launched for the others)."""
        from botocore.exceptions import BotoCoreError, ClientError

        have = self._instances(nodes)
        refused: dict[str, str] = {}
        for node in nodes:
            if any(state in ("pending", "running") for _, state in have[node]):
                continue  # already on: one instance per node, never two
            try:
                self._launch(node)
            except (BotoCoreError, ClientError) as exc:
                refused[node] = str(exc)
        return refused

    def _power_off(self, nodes: list[str]) -> list[str]:
        """Terminate the nodes' live instances; the nodes not yet off (to wait for)."""
        ids = [i for found in self._instances(nodes).values() for i, state in found if state in LIVE]
        if ids:
            self._ec2().terminate_instances(InstanceIds=ids)
        return [node for node, state in self._state(nodes).items() if state != OFF]

    def _state(self, nodes: list[str]) -> dict[str, str]:
        out = {}
        for node, found in self._instances(nodes).items():
            states = [STATES.get(state, UNKNOWN) for _, state in found]
            live = [s for s in states if s != OFF]
            out[node] = live[0] if live else OFF
        return out

    async def _call(self, what: str, nodes: list[str], fn: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            async with asyncio.timeout(self.timeout_s):
                return await asyncio.to_thread(fn, nodes)
        except TimeoutError:
            raise PowerError(f"EC2 {what} of {hostlist(nodes)} did not finish within {self.timeout_s:g} s") from None
        except (BotoCoreError, ClientError) as exc:
            raise PowerError(f"EC2 {what} of {hostlist(nodes)}: {exc}") from None

    async def power_on(self, nodes: list[str]) -> None:
        """Launch an instance for every node that has none pending or running; PowerError
        naming only the nodes EC2 refused (the others' instances are on their way)."""
        refused = await self._call("RunInstances", nodes, self._power_on)
        if refused:
            raise PowerError.of_nodes("EC2 RunInstances", refused)

    async def power_off(self, nodes: list[str]) -> None:
        """Terminate the nodes' instances; returns once EC2 reports them terminated."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        left = await self._call("TerminateInstances", nodes, self._power_off)
        while left:
            if loop.time() >= deadline:
                raise PowerError(f"EC2 instances of {hostlist(left)} not terminated within {self.timeout_s:g} s",
                                 nodes=left)
            await asyncio.sleep(POLL_S)
            left = [n for n, s in (await self._call("DescribeInstances", left, self._state)).items() if s != OFF]

    async def state(self, nodes: list[str]) -> dict[str, str]:
        """On (running), PoweringOn (pending), PoweringOff, or Off (no live instance)."""
        return await self._call("DescribeInstances", nodes, self._state)
