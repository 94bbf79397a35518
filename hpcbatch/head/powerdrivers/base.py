"""The power drivers' interface: what every driver offers, and its one error."""

from __future__ import annotations

from typing import Protocol

NODE_PLACEHOLDER = "{node}"
OUTPUT_SHOWN = 300  # characters of a failed command's (or answer's) output that go into the log

# ``state(nodes)`` answers in Redfish's PowerState words, whatever the driver speaks.
ON, OFF, POWERING_ON, POWERING_OFF, UNKNOWN = "On", "Off", "PoweringOn", "PoweringOff", "Unknown"


class PowerError(Exception):
    """A driver could not power a node off; the message says why."""


class PowerDriver(Protocol):
    """Powers nodes off; returns only once the node is off, raises PowerError otherwise."""

    async def power_off(self, node: str) -> None: ...


class PoolDriver(Protocol):
    """Powers a batch of nodes (a hostlist) on or off; returns once the driver is done."""

    # A driver whose ``state`` can only answer Unknown sets ``knows_state = False`` (a class
    # attribute): the head then never asks it (its nodes' agents tell, by registering).

    async def power_on(self, nodes: list[str]) -> None: ...

    async def power_off(self, nodes: list[str]) -> None: ...

    async def state(self, nodes: list[str]) -> dict[str, str]:
        """Each node's power state: On, Off, PoweringOn, PoweringOff or Unknown."""
        ...
