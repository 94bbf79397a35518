"""The ``redfish`` driver: BMCs over Redfish (DMTF DSP0266), with aiohttp."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcbatch.head.powerdrivers.base import NODE_PLACEHOLDER, OUTPUT_SHOWN, UNKNOWN, PowerError
from hpcbatch.scheduler.power import hostlist

if TYPE_CHECKING:
    from hpcbatch.head.powerdrivers.config import PoolConfig


log = logging.getLogger("hpcbatch.power")


class RedfishDriver:
    """BMCs over Redfish (DMTF DSP0266): ``ComputerSystem.Reset`` with ``On`` / ``ForceOff``.

    A power-on returns once every BMC accepted it (the agent's registration is the real
    sign); a power-off returns once every system reports ``PowerState: Off`` (a fact, as
    STONITH needs), within ``timeout_s`` for the whole batch. The BMCs are asked at once, and
    one that refuses or does not answer fails its own node only (``PowerError.nodes``).
    """

    def __init__(self, config: PoolConfig) -> None:
        self.url, self.system = config.redfish_url.rstrip("/"), config.redfish_system
        self.timeout_s = config.timeout_s
        self.verify = config.redfish_verify_tls
        self.user = config.redfish_username
        self.password_file = config.redfish_password_file

    def _system(self, node: str) -> str:
        return f"{self.url.replace(NODE_PLACEHOLDER, node)}/redfish/v1/Systems/{self.system.replace(NODE_PLACEHOLDER, node)}"

    def _session(self) -> Any:
        import aiohttp

        auth = None
        if self.user:
            try:
                password = Path(self.password_file).read_text().strip() if self.password_file else ""
            except OSError as exc:
                raise PowerError(f"redfish_password_file {self.password_file}: {exc.strerror}") from None
            auth = aiohttp.BasicAuth(self.user, password)
        return aiohttp.ClientSession(auth=auth, connector=aiohttp.TCPConnector(ssl=None if self.verify else False),
                                     timeout=aiohttp.ClientTimeout(total=self.timeout_s))

    async def _reset(self, session: Any, node: str, reset: str) -> None:
        url = self._system(node) + "/Actions/ComputerSystem.Reset"
        async with session.post(url, json={"ResetType": reset}) as resp:
            if resp.status >= 300:
                text = " ".join((await resp.text()).split())[-OUTPUT_SHOWN:]
                raise PowerError(f"{node}: Redfish {reset} answered {resp.status}: {text}")

    async def _state_of(self, session: Any, node: str) -> str:
        async with session.get(self._system(node)) as resp:
            if resp.status >= 300:
                raise PowerError(f"{node}: Redfish system answered {resp.status}")
            return str((await resp.json(content_type=None)).get("PowerState", ""))

    async def _states(self, session: Any, nodes: list[str]) -> dict[str, str]:
        """Every node's PowerState, the BMCs asked at once (a pool of 128 is one round trip, not 128)."""
        return dict(zip(nodes, await asyncio.gather(*(self._state_of(session, n) for n in nodes)), strict=True))

    async def _do(self, nodes: list[str], reset: str, wait_off: bool) -> None:
        """``reset`` at every node's BMC at once; with ``wait_off``, until each accepted one says
        Off. PowerError names only the nodes that failed: the rest of the batch is done."""
        import aiohttp

        failed: dict[str, str] = {}
        left = list(nodes)
        try:
            async with asyncio.timeout(self.timeout_s), self._session() as session:
                answers = await asyncio.gather(*(self._reset(session, n, reset) for n in nodes), return_exceptions=True)
                for node, answer in zip(nodes, answers, strict=True):
                    if isinstance(answer, PowerError | aiohttp.ClientError):
                        failed[node] = str(answer).removeprefix(f"{node}: ") or type(answer).__name__
                    elif isinstance(answer, BaseException):
                        raise answer
                left = [n for n in nodes if n not in failed]
                while wait_off and left:
                    states = await asyncio.gather(*(self._state_of(session, n) for n in left), return_exceptions=True)
                    left = [n for n, state in zip(left, states, strict=True) if state != "Off"]
                    if left:
                        await asyncio.sleep(0.5)
                left = []
        except TimeoutError:
            failed.update({n: f"not done within {self.timeout_s:g} s" for n in left})
        except aiohttp.ClientError as exc:
            failed.update({n: str(exc) for n in left})
        if failed:
            raise PowerError.of_nodes(f"Redfish {reset}", failed)

    async def power_on(self, nodes: list[str]) -> None:
        await self._do(nodes, "On", wait_off=False)

    async def power_off(self, nodes: list[str]) -> None:
        await self._do(nodes, "ForceOff", wait_off=True)

    async def state(self, nodes: list[str]) -> dict[str, str]:
        """Each node's Redfish ``PowerState`` (On, Off, PoweringOn, PoweringOff); Unknown for a
        node whose BMC answers an error (one broken BMC does not blind the pool)."""
        import aiohttp

        try:
            async with asyncio.timeout(self.timeout_s), self._session() as session:
                answers = await asyncio.gather(*(self._state_of(session, n) for n in nodes), return_exceptions=True)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise PowerError(f"Redfish state of {hostlist(nodes)}: {exc or 'timed out'}") from None
        out = {}
        for node, answer in zip(nodes, answers, strict=True):
            if isinstance(answer, PowerError | aiohttp.ClientError):
                log.warning("Redfish state of %s unknown: %s", node, answer)
                answer = UNKNOWN
            elif isinstance(answer, BaseException):
                raise answer
            out[node] = answer
        return out
