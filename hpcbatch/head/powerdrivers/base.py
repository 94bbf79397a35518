"""The power drivers' interface: what every driver offers, and its one error."""

from __future__ import annotations

from typing import Protocol

from hpcbatch.scheduler.power import hostlist

NODE_PLACEHOLDER = "{node}"
REASONS_SHOWN = 5  # failed nodes whose reasons a batch's PowerError spells out
OUTPUT_SHOWN = 300  # characters of a failed command's (or answer's) output that go into the log

# ``state(nodes)`` answers in Redfish's PowerState words, whatever the driver speaks.
ON, OFF, POWERING_ON, POWERING_OFF, UNKNOWN = "On", "Off", "PoweringOn", "PoweringOff", "Unknown"


class PowerError(Exception):
    """A driver could not power a node (or a batch) on or off; the message says why.

    ``nodes``: the nodes of the batch that failed, when the driver knows the rest succeeded
    (one dead BMC must not fail its batch-mates, whose power-on was accepted); None: all."""

    def __init__(self, message: str, nodes: list[str] | None = None) -> None:
        super().__init__(message)
        self.nodes = nodes

    @classmethod
    def of_nodes(cls, what: str, failed: dict[str, str]) -> PowerError:
        """``WHAT of HOSTLIST: node: why; ...`` (the first few reasons), naming ``failed``'s nodes."""
        nodes = sorted(failed)
        reasons = "; ".join(f"{n}: {failed[n]}" for n in nodes[:REASONS_SHOWN])
        more = f"; and {len(nodes) - REASONS_SHOWN} more" if len(nodes) > REASONS_SHOWN else ""
        return cls(f"{what} of {hostlist(nodes)}: {reasons}{more}", nodes=nodes)


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
