"""The ``command`` driver: an admin's programs, called as Slurm calls ResumeProgram/SuspendProgram."""

from __future__ import annotations

import asyncio

from hpcbatch.head.powerdrivers.base import NODE_PLACEHOLDER, OUTPUT_SHOWN, UNKNOWN, PowerError
from hpcbatch.scheduler.power import hostlist


class CommandDriver:
    """Runs a configured command; exit 0 within the timeout means the node is off."""

    def __init__(self, argv: list[str], timeout_s: float) -> None:
        self.argv = argv
        self.timeout_s = timeout_s

    async def power_off(self, node: str) -> None:
        await run_program([part.replace(NODE_PLACEHOLDER, node) for part in self.argv], self.timeout_s)


async def run_program(argv: list[str], timeout_s: float) -> None:
    """Run ``argv``; exit 0 within ``timeout_s`` is success, else PowerError saying why."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        raise PowerError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    try:
        async with asyncio.timeout(timeout_s):
            output, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise PowerError(f"{argv[0]} did not finish within {timeout_s:g} s") from None
    if proc.returncode != 0:
        text = " ".join(output.decode("utf-8", "replace").split())[-OUTPUT_SHOWN:]
        raise PowerError(f"{argv[0]} exited with {proc.returncode}" + (f": {text}" if text else ""))


class ProgramDriver:
    """Slurm's ResumeProgram/SuspendProgram: ``argv… node[5-8]``; exit 0 is success."""

    knows_state = False  # Slurm's power saving has no state program: not asked (hpcbatch.head.power)

    def __init__(self, resume: list[str], suspend: list[str], timeout_s: float) -> None:
        self.resume, self.suspend, self.timeout_s = resume, suspend, timeout_s

    async def power_on(self, nodes: list[str]) -> None:
        await run_program([*self.resume, hostlist(nodes)], self.timeout_s)

    async def power_off(self, nodes: list[str]) -> None:
        await run_program([*self.suspend, hostlist(nodes)], self.timeout_s)

    async def state(self, nodes: list[str]) -> dict[str, str]:
        """Slurm's power saving has no state program: the head only knows what it asked for."""
        return dict.fromkeys(nodes, UNKNOWN)
