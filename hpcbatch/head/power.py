"""Power drivers, and fencing a lost node by powering it off (STONITH, as Pacemaker does).

A node the head has lost may still run its attempts: their retries wait until its agent has
surely fenced itself, the control-plane outage bound later (hpcbatch.fencing, 10 minutes by
default). Where the node has a power driver, the head need not wait: it powers the node off,
and once the driver says it is off (a power-off that succeeded is a fact, not a guess), the
attempts are dead and their retries start at once. A driver that fails or times out changes
nothing: the retries wait for the agent's fence, as without a driver.

Drivers are configured in the head's config, per compute environment or per node (the
node's wins), under ``[power.compute_environments.NAME]`` and ``[power.nodes.NAME]``
(docs/ha.md). The ``command`` driver runs an admin's command (``ipmitool``, ``ssh pdu``,
a cloud CLI) with ``{node}`` replaced by the node's name, within ``timeout_s``; exit 0 means
the node is off. Other kinds (Redfish, IPMI, cloud, netns; DESIGN.md "Capacity that
follows demand") are further classes with the same ``power_off``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Literal, Protocol

import msgspec

log = logging.getLogger("hpcbatch.power")

NODE_PLACEHOLDER = "{node}"
OUTPUT_SHOWN = 300  # characters of a failed command's output that go into the log


class PowerDriverConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How to power one node (or every node of a compute environment) off."""

    driver: Literal["command"] = "command"
    power_off: list[str]  # argv; "{node}" in any item becomes the node's name
    timeout_s: float = 60.0  # a power-off that takes longer has failed


class PowerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The head config's ``[power]`` table: drivers by compute environment and by node."""

    compute_environments: dict[str, PowerDriverConfig] = {}
    nodes: dict[str, PowerDriverConfig] = {}


def check_power_config(config: PowerConfig) -> str | None:
    """None if ``config`` is usable, else one line naming the field."""
    for kind, table in (("compute_environments", config.compute_environments), ("nodes", config.nodes)):
        for name, driver in table.items():
            if not driver.power_off or not all(driver.power_off):
                return f"power.{kind}.{name}.power_off must be a command: a non-empty list of non-empty strings"
            if driver.timeout_s <= 0:
                return f"power.{kind}.{name}.timeout_s must be > 0 seconds"
    return None


class PowerError(Exception):
    """A driver could not power a node off; the message says why."""


class PowerDriver(Protocol):
    """Powers nodes off; returns only once the node is off, raises PowerError otherwise."""

    async def power_off(self, node: str) -> None: ...


class CommandDriver:
    """Runs a configured command; exit 0 within the timeout means the node is off."""

    def __init__(self, argv: list[str], timeout_s: float) -> None:
        self.argv = argv
        self.timeout_s = timeout_s

    async def power_off(self, node: str) -> None:
        argv = [part.replace(NODE_PLACEHOLDER, node) for part in self.argv]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as exc:
            raise PowerError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        try:
            async with asyncio.timeout(self.timeout_s):
                output, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise PowerError(f"{argv[0]} did not finish within {self.timeout_s:g} s") from None
        if proc.returncode != 0:
            text = " ".join(output.decode("utf-8", "replace").split())[-OUTPUT_SHOWN:]
            raise PowerError(f"{argv[0]} exited with {proc.returncode}" + (f": {text}" if text else ""))


def make_driver(config: PowerDriverConfig) -> PowerDriver:
    """The driver ``config`` names (only ``command`` so far)."""
    return CommandDriver(config.power_off, config.timeout_s)


class Stonith:
    """Powers lost nodes off, one task per node, owned by ``serve``; see the module docstring.

    ``compute_environment_of``: a node's compute environment (for the per-CE drivers);
    ``on_fenced``: called with a node's name once its driver has powered it off.
    """

    def __init__(
        self, config: PowerConfig, compute_environment_of: Callable[[str], str], on_fenced: Callable[[str], None],
    ) -> None:
        self._by_ce = {name: make_driver(c) for name, c in config.compute_environments.items()}
        self._by_node = {name: make_driver(c) for name, c in config.nodes.items()}
        self._ce_of = compute_environment_of
        self._on_fenced = on_fenced
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._busy: set[str] = set()  # nodes whose power-off is under way

    def driver_for(self, node: str) -> PowerDriver | None:
        driver = self._by_node.get(node)
        if driver is None:
            try:
                driver = self._by_ce.get(self._ce_of(node))
            except KeyError:  # a node the head has never heard of: no compute environment
                driver = None
        return driver

    def request(self, node: str) -> bool:
        """Power ``node`` off soon, if it has a driver; whether it has one."""
        if self.driver_for(node) is None:
            return False
        if node not in self._busy:
            self._busy.add(node)
            self._queue.put_nowait(node)
        return True

    async def serve(self) -> None:
        """Run the requested power-offs until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            while True:
                node = await self._queue.get()
                tasks.create_task(self._power_off(node))

    async def _power_off(self, node: str) -> None:
        driver = self.driver_for(node)
        try:
            if driver is None:
                return
            log.warning("fencing lost node %s: powering it off (STONITH)", node)
            try:
                await driver.power_off(node)
            except PowerError as exc:
                log.error("could not power node %s off: %s; its retries wait for its agent's fence", node, exc)
                return
            log.warning("node %s is powered off: its attempts are dead, their retries may start", node)
            self._on_fenced(node)
        finally:
            self._busy.discard(node)
