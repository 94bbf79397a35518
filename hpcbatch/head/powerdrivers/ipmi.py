"""The ``ipmi`` driver: chassis power on, off and status over IPMI 2.0 (RMCP+), with pyghmi.

Each node's BMC is ``ipmi_host`` with ``{node}`` replaced by the node's name, on
``ipmi_port`` (623), as ``ipmi_username`` with the password in ``ipmi_password_file``.
A power-on returns once every BMC accepted it (the agent's registration is the real sign);
a power-off (``Chassis Control: power down``, no clean shutdown: the node is idle or lost)
returns once every BMC reports the chassis off, within ``timeout_s`` for the whole batch, a
fact, as STONITH needs. A chassis already in the asked state is left alone (pyghmi checks
first), so a repeated call is harmless.

pyghmi is synchronous (it runs its own I/O thread): a batch's calls run one after another in
one thread that every ipmi driver shares (``_PYGHMI``), never two at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcbatch.head.powerdrivers.base import NODE_PLACEHOLDER, OFF, ON, UNKNOWN, PowerError
from hpcbatch.scheduler.power import hostlist

if TYPE_CHECKING:
    from hpcbatch.head.powerdrivers.config import PoolConfig

STATES = {"on": ON, "off": OFF}  # pyghmi's get_power() powerstate, in Redfish's words
POLL_S = 0.5
# pyghmi keeps its sessions in class-level state, shared by every thread, with no lock: two
# threads logging in at once lost a login here. So every pyghmi call, of every pool's driver,
# runs in this one thread, one at a time.
_PYGHMI = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pyghmi")


def check_config(where: str, pool: PoolConfig) -> str | None:
    """None if the pool's ipmi keys are usable, else one line naming the field."""
    if not pool.ipmi_host:
        return f"{where}.ipmi_host is required by the ipmi driver (e.g. \"{{node}}-bmc\": the node's BMC)"
    if not 0 < pool.ipmi_port < 65536:
        return f"{where}.ipmi_port must be a UDP port (1-65535)"
    if not pool.ipmi_username:
        return f"{where}.ipmi_username is required by the ipmi driver"
    return None


class IpmiDriver:
    """Chassis power through each node's BMC; see the module docstring."""

    def __init__(self, config: PoolConfig) -> None:
        self.host, self.port = config.ipmi_host, config.ipmi_port
        self.user, self.password_file = config.ipmi_username, config.ipmi_password_file
        self.timeout_s = config.timeout_s
        self._sessions: dict[str, Any] = {}  # node -> its pyghmi Command

    def _password(self) -> str:
        if not self.password_file:
            return ""
        try:
            return Path(self.password_file).read_text().strip()
        except OSError as exc:
            raise PowerError(f"ipmi_password_file {self.password_file}: {exc.strerror}") from None

    def _command(self, node: str) -> Any:
        """The node's BMC session, kept: a second pyghmi Command to a BMC whose session is alive
        waits forever (seen with pyghmi 1.6.19 against its own emulated BMC), and a kept session also spares a login per call."""
        if node in self._sessions:
            return self._sessions[node]
        try:
            from pyghmi.ipmi import command
        except ImportError:
            raise PowerError("the ipmi driver needs pyghmi on the head (pip install 'hpcbatch[head]')") from None
        cmd = command.Command(bmc=self.host.replace(NODE_PLACEHOLDER, node), userid=self.user,
                              password=self._password(), port=self.port)
        self._sessions[node] = cmd
        return cmd

    def _each(self, nodes: list[str], fn: Callable[[Any], Any]) -> dict[str, Any]:
        """``fn(session)`` for each node in turn; a failed node's session is dropped (a new login next time)."""
        from pyghmi.exceptions import IpmiException

        out = {}
        for node in nodes:
            try:
                out[node] = fn(self._command(node))
            except IpmiException:
                self._sessions.pop(node, None)
                raise
        return out

    def _set(self, nodes: list[str], state: str) -> None:
        self._each(nodes, lambda cmd: cmd.set_power(state, wait=False))

    def _get(self, nodes: list[str]) -> dict[str, str]:
        answers = self._each(nodes, lambda cmd: cmd.get_power())
        return {node: STATES.get(str(answer.get("powerstate", "")), UNKNOWN) for node, answer in answers.items()}

    async def _call(self, what: str, fn: Any, nodes: list[str], *args: str) -> Any:
        """``fn(nodes, *args)`` in a worker thread, within ``timeout_s``; IPMI errors as PowerError."""
        from pyghmi.exceptions import IpmiException

        try:
            async with asyncio.timeout(self.timeout_s):
                return await asyncio.get_running_loop().run_in_executor(_PYGHMI, fn, nodes, *args)
        except TimeoutError:
            raise PowerError(f"IPMI {what} of {hostlist(nodes)} did not finish within {self.timeout_s:g} s") from None
        except IpmiException as exc:
            raise PowerError(f"IPMI {what} of {hostlist(nodes)}: {exc}") from None

    async def power_on(self, nodes: list[str]) -> None:
        """Chassis power on at every node's BMC (accepted, not yet booted)."""
        await self._call("power on", self._set, nodes, "on")

    async def power_off(self, nodes: list[str]) -> None:
        """Chassis power off; returns once every BMC reports the chassis off."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        await self._call("power off", self._set, nodes, "off")
        left = [n for n, s in (await self._call("power status", self._get, nodes)).items() if s != OFF]
        while left:
            if loop.time() >= deadline:
                raise PowerError(f"IPMI: the chassis of {hostlist(left)} not off within {self.timeout_s:g} s")
            await asyncio.sleep(POLL_S)
            left = [n for n, s in (await self._call("power status", self._get, left)).items() if s != OFF]

    async def state(self, nodes: list[str]) -> dict[str, str]:
        """Each node's chassis power: On, Off (or Unknown)."""
        return dict(await self._call("power status", self._get, nodes))
