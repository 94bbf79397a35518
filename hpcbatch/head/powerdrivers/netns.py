"""The ``netns`` driver: the test bed's nodes, whose "power" is their real agent process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from hpcbatch.head.powerdrivers.base import OFF, ON, PowerError


class NetnsDriver:
    """The test bed's driver: "powering up" starts a node's real agent (in its network
    namespace when a hpcbatch.netns layout is given), "powering down" stops it (SIGTERM, then
    SIGKILL after ``timeout_s``), as a shutdown would. The agent's pid is kept in
    ``<agent_config_dir>/<node>.power.pid`` so a restarted head can still power it off."""

    def __init__(self, config_dir: str, layout: str, timeout_s: float) -> None:
        self.dir = Path(config_dir)
        self.layout_path = layout
        self.timeout_s = timeout_s
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def _pid_file(self, node: str) -> Path:
        return self.dir / f"{node}.power.pid"

    def _running(self, node: str) -> int | None:
        proc = self._procs.get(node)
        if proc is not None and proc.poll() is None:
            return proc.pid
        try:
            pid = int(self._pid_file(node).read_text())
        except (OSError, ValueError):
            return None
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        return None if stat.rpartition(")")[2].split()[0] == "Z" else pid

    def _layout(self) -> Any:
        from hpcbatch.netns import NetnsLayout

        try:
            return NetnsLayout.from_dict(json.loads(Path(self.layout_path).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise PowerError(f"netns layout {self.layout_path}: {exc}") from None

    async def power_on(self, nodes: list[str]) -> None:
        prefix: dict[str, list[str]] = {}
        if self.layout_path:
            from hpcbatch.netns import NetnsError

            try:
                layout = self._layout()
                prefix = {n: layout.node(n).exec_prefix for n in nodes}
            except NetnsError as exc:
                raise PowerError(f"netns layout {self.layout_path}: {exc}") from None
        for node in nodes:
            if self._running(node) is not None:  # already on: powering it on again changes nothing
                continue
            config = self.dir / f"{node}.toml"
            if not config.is_file():
                raise PowerError(f"no agent config {config} for node {node}")
            tmp = self.dir / node / "tmp"
            tmp.mkdir(parents=True, exist_ok=True)
            with open(self.dir / f"{node}.log", "ab") as out:
                proc = subprocess.Popen(
                    [*prefix.get(node, []), sys.executable, "-m", "node_agent", "--config", str(config)],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                    env=dict(os.environ, TMPDIR=str(tmp), PYTHONUNBUFFERED="1"),
                )
            self._procs[node] = proc
            self._pid_file(node).write_text(f"{proc.pid}\n")

    async def power_off(self, nodes: list[str]) -> None:
        for node in nodes:
            pid = self._running(node)
            if pid is not None:
                await self._stop(node, pid)
            self._pid_file(node).unlink(missing_ok=True)
            if self.layout_path:  # off means off: whatever else runs on the node dies too (its jobs)
                await asyncio.to_thread(self._kill_the_rest, node)

    def _kill_the_rest(self, node: str) -> None:

        from hpcbatch.netns import NetnsError, kill_and_wait, netns_pids

        try:
            net = self._layout().node(node)
        except NetnsError as exc:
            raise PowerError(str(exc)) from None
        holder = int((net.holder or {}).get("pid", 0))
        alive = kill_and_wait([pid for pid in netns_pids(net.netns) if pid != holder], self.timeout_s)
        if alive:
            raise PowerError(f"node {node}: pids {alive} still run after SIGKILL")

    async def _stop(self, node: str, pid: int) -> None:
        for sig, wait_s in ((signal.SIGTERM, self.timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_s
            while loop.time() < deadline:
                proc = self._procs.get(node)
                if proc is not None:
                    proc.poll()  # reap our own child
                if self._running(node) is None:
                    self._procs.pop(node, None)
                    return
                await asyncio.sleep(0.05)
        raise PowerError(f"the agent of node {node} (pid {pid}) did not stop")

    async def state(self, nodes: list[str]) -> dict[str, str]:
        """On while the node's agent runs."""
        return {node: ON if self._running(node) is not None else OFF for node in nodes}
