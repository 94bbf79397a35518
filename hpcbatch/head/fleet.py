"""The head's ZeroMQ endpoint for agents: one ROUTER, heartbeats both ways, liveness.

Each agent's DEALER uses its node name as routing id, so the head addresses nodes by
name. ``ROUTER_HANDOVER`` lets a restarted agent take its name back from the dead
connection. A message from a node the head has not seen register since it (re)started
gets ``Reregister``. Nodes silent for ``liveness`` heartbeat intervals are reported lost.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
import zmq
import zmq.asyncio

from hpcbatch import protocol as p
from hpcbatch.head.engine import Engine

log = logging.getLogger("hpcbatch.fleet")


class Fleet:
    """Socket I/O with the agents; decisions are the engine's."""

    def __init__(self, bind: str, engine: Engine, *, head_id: str, heartbeat_interval_s: float, liveness: int) -> None:
        self._ctx = zmq.asyncio.Context.instance()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 100_000)
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
        self._sock.bind(bind)
        self._engine = engine
        self._head_id = head_id
        self._interval = heartbeat_interval_s
        self._liveness = liveness
        self._registered: set[str] = set()  # nodes that registered with this head process
        self._last_seen: dict[str, float] = {}
        self._started = time.monotonic()

    def send(self, node: str, message: p.Message) -> None:
        """Queue ``message`` for ``node``; dropped silently if the node is not connected."""
        try:
            self._sock.send_multipart([node.encode(), p.encode(message)], flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("send queue to %s is full; dropped %s", node, type(message).__name__)

    async def serve(self) -> None:
        """Receive agent messages until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._receive_loop())
            tasks.create_task(self._heartbeat_loop())

    async def _receive_loop(self) -> None:
        engine = self._engine
        while True:
            frames = await self._sock.recv_multipart()
            if len(frames) != 2:
                log.warning("dropping a message with %d frames", len(frames))
                continue
            ident, data = frames
            node = ident.decode(errors="replace")
            try:
                msg = p.decode_from_agent(data)
            except msgspec.DecodeError as exc:
                log.warning("dropping an undecodable message from %s: %s", node, exc)
                continue
            self._last_seen[node] = time.monotonic()
            if isinstance(msg, p.Register):
                if msg.protocol_version != p.PROTOCOL_VERSION:
                    log.error("node %s speaks protocol %d, head speaks %d", node, msg.protocol_version, p.PROTOCOL_VERSION)
                    continue
                if msg.node.name != node:
                    log.error("agent registered as %s but connected as %s", msg.node.name, node)
                    continue
                self._registered.add(node)
                welcome = engine.on_register(node, msg)
                if welcome is not None:
                    welcome.head_id = self._head_id
                    welcome.heartbeat_interval_s = self._interval
                    welcome.liveness = self._liveness
                    self.send(node, welcome)
                log.info("node %s registered (%d running, %d exited)", node, len(msg.running), len(msg.exited))
                continue
            if node not in self._registered:
                self.send(node, p.Reregister())
                continue
            match msg:
                case p.AgentHeartbeat():
                    engine.on_heartbeat(node)
                case p.AttemptStarted():
                    engine.on_started(node, msg)
                case p.AttemptExited():
                    engine.on_exited(node, msg)
                case p.LogChunk():
                    engine.on_log(msg)

    async def _heartbeat_loop(self) -> None:
        beat = p.HeadHeartbeat(head_id=self._head_id)
        while True:
            await asyncio.sleep(self._interval)
            now = time.monotonic()
            deadline = self._interval * self._liveness
            for node in list(self._registered):
                self.send(node, beat)
            for name, info in list(self._engine.nodes.items()):
                if info.state == "DOWN" and not info.jobs:
                    continue
                seen = self._last_seen.get(name, self._started)
                if now - seen > deadline:
                    self._registered.discard(name)
                    self._engine.node_lost(name, now - seen)

    def close(self) -> None:
        self._sock.close(linger=0)
