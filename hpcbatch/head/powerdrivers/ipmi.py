"""The ``ipmi`` driver: chassis power on, off and status over IPMI 2.0 (RMCP+), with pyghmi.

Each node's BMC is ``ipmi_host`` with ``{node}`` replaced by the node's name, on
``ipmi_port`` (623), as ``ipmi_username`` with the password in ``ipmi_password_file``.
A power-on returns once every BMC accepted it (the agent's registration is the real sign);
a power-off (``Chassis Control: power down``, no clean shutdown: the node is idle or lost)
returns once every BMC reports the chassis off, within ``timeout_s`` for the whole batch, a
fact, as STONITH needs. A chassis already in the asked state is left alone (pyghmi checks
first), so a repeated call is harmless. A BMC that does not answer fails its own node only:
PowerError names the nodes that failed (``nodes``), and the head treats the rest of the batch
as done; a status poll answers Unknown for it and the others' states.

pyghmi is synchronous (it runs its own I/O thread): a batch's calls run one after another in
one thread that every ipmi driver shares (``_PYGHMI``), never two at once. A dead BMC costs
that thread about 5 s (pyghmi's own retries), so nodes whose BMC failed last time are asked
last, and a batch stops asking once ``timeout_s`` is spent (the rest: failed, or Unknown).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcbatch.head.powerdrivers.base import NODE_PLACEHOLDER, OFF, ON, UNKNOWN, PowerError

if TYPE_CHECKING:
    from hpcbatch.head.powerdrivers.config import PoolConfig

log = logging.getLogger(__name__)

STATES = {"on": ON, "off": OFF}  # pyghmi's get_power() powerstate, in Redfish's words
POLL_S = 0.5
_HUNG_S = 10.0  # past timeout_s, a pyghmi call still running is left behind (it gives up on its own)
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
        self._failing: set[str] = set()  # nodes whose BMC failed last time (the pyghmi thread's)

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

    def _each(self, nodes: list[str], fn: Callable[[Any], Any], deadline: float, done: _Progress) -> None:
        """``fn(session)`` for each node in turn until ``deadline`` (monotonic), into ``done``;
        nodes whose BMC failed last time go last, so a dead BMC delays nobody behind it. A
        failed node's session is dropped (a new login next time)."""
        from pyghmi.exceptions import IpmiException

        for node in sorted(nodes, key=lambda n: n in self._failing):
            if time.monotonic() >= deadline:
                done.failed.setdefault(node, f"not asked within {self.timeout_s:g} s (BMCs before it were slow)")
                continue
            try:
                done.answers[node] = fn(self._command(node))
            except IpmiException as exc:
                self._sessions.pop(node, None)
                done.failed[node] = f"its BMC {self.host.replace(NODE_PLACEHOLDER, node)} answered no request ({exc})" \
                    if str(exc) in ("", "None") else str(exc)
                self._failing.add(node)
            else:
                self._failing.discard(node)

    async def _call(self, what: str, fn: Callable[[Any], Any], nodes: list[str]) -> _Progress:
        """``fn(session)`` for each node in the pyghmi thread, within ``timeout_s`` (counted
        from now, so a call queued behind a slow one does not run past its use): what each
        node answered, and why the others did not."""
        done = _Progress()
        deadline = time.monotonic() + self.timeout_s
        work = asyncio.get_running_loop().run_in_executor(_PYGHMI, self._each, nodes, fn, deadline, done)
        try:
            # pyghmi gives up on a silent BMC within seconds, so the thread ends soon after the
            # deadline; a call that hangs past that is left behind, its nodes failed.
            async with asyncio.timeout(self.timeout_s + _HUNG_S):
                await asyncio.shield(work)
        except TimeoutError:
            for node in nodes:
                if node not in done.answers:
                    done.failed.setdefault(node, f"IPMI {what} did not finish within {self.timeout_s:g} s")
        return done

    async def power_on(self, nodes: list[str]) -> None:
        """Chassis power on at every node's BMC (accepted, not yet booted); PowerError naming
        the nodes whose BMC did not accept it (the others are on their way)."""
        done = await self._call("power on", lambda cmd: cmd.set_power("on", wait=False), nodes)
        if done.failed:
            raise PowerError.of_nodes("IPMI power on", done.failed)

    async def power_off(self, nodes: list[str]) -> None:
        """Chassis power off; returns once every BMC reports the chassis off, else PowerError
        naming the nodes that are not surely off."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        done = await self._call("power off", lambda cmd: cmd.set_power("off", wait=False), nodes)
        failed = dict(done.failed)
        left = [n for n in nodes if n not in failed]
        while left:
            status = await self._call("power status", lambda cmd: cmd.get_power(), left)
            failed.update(status.failed)
            left = [n for n, answer in status.answers.items() if _state(answer) != OFF]
            if left and loop.time() >= deadline:
                failed.update({n: f"the chassis is not off within {self.timeout_s:g} s" for n in left})
                break
            if left:
                await asyncio.sleep(POLL_S)
        if failed:
            raise PowerError.of_nodes("IPMI power off", failed)

    async def state(self, nodes: list[str]) -> dict[str, str]:
        """Each node's chassis power: On, Off; Unknown for a node whose BMC did not answer (one
        dead or slow BMC does not blind its pool)."""
        done = await self._call("power status", lambda cmd: cmd.get_power(), nodes)
        for node, why in sorted(done.failed.items()):
            log.warning("IPMI power status of %s unknown: %s", node, why)
        return {node: _state(done.answers[node]) if node in done.answers else UNKNOWN for node in nodes}


@dataclass
class _Progress:
    """What a batch's nodes answered so far (filled by the pyghmi thread), and why the others did not."""

    answers: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def _state(answer: Any) -> str:
    return STATES.get(str(answer.get("powerstate", "")), UNKNOWN) if isinstance(answer, dict) else UNKNOWN
