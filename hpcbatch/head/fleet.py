"""The head's ZeroMQ endpoint for agents: one CurveZMQ ROUTER, heartbeats both ways, liveness.

Security (DESIGN.md, "The control plane"): the ROUTER is a CURVE server with the head's
secret key; every connection passes the ZAP handler, which asks the ``NodeKeyRegistry``.
ZAP answers with the client's public key as the connection's ``User-Id``, and *that key*,
never the routing id an agent might choose, says which node a message comes from: a
message is served only if the key is accepted for a node, and replies go to the
connection that node's accepted key last spoke on. So one enrolled node cannot pose as,
or take over the traffic of, another. (``ROUTER_HANDOVER`` is off for the same reason:
agents let the ROUTER number their connections, and nobody may claim another's number.)
Messages from keys not accepted go to the registry's quarantine, which learns only the
node name from a ``Register`` (see hpcbatch.head.nodekeys).

Cutting a node off at once (``revoke``): a ROUTER cannot close one peer, so the fleet
closes its socket and binds a new one on the same endpoint. Every connection drops; the
other agents reconnect within ~100 ms and pass ZAP again, the revoked key does not.

Containment: every message is handed to the engine guarded (``Engine.handle``): a handler
that raises fails that message's attempt or request, is logged with the message's type and
ids, and a report that keeps failing is quarantined; the loop goes on with the next message.

Delivery: ``ROUTER_MANDATORY`` tells a send to a gone connection from a sent message.
A message for a node with no live connection is held (bounded) and sent when the node
next speaks, so a ``StartAttempt`` survives a reconnect; held messages are dropped when
the node is lost. A message from a node the head has not seen register since it
(re)started gets ``Reregister``. Nodes silent for ``liveness`` heartbeat intervals are
reported lost.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec
import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85

from hpcbatch import protocol as p
from hpcbatch.curve import KeyPair
from hpcbatch.errors import HpcbatchError
from hpcbatch.head.engine import Engine
from hpcbatch.head.nodekeys import NodeKeyRegistry, ZapCredentials

log = logging.getLogger("hpcbatch.fleet")

# libzmq asks the ZAP handler only on sockets that have a ZAP domain (checked with libzmq
# 4.3.5: without one, any client key completes the handshake), so the ROUTER sets one,
# and ZAP_ENFORCE_DOMAIN makes a missing ZAP handler refuse everyone rather than no one.
ZAP_DOMAIN = "hpcbatch-fleet"
HELD_PER_NODE = 10_000
REBIND_TIMEOUT_S = 10.0
# Echoed while the lease is unconfirmed to a node this head has no echo for: older than any
# send, it renews no agent's fence (0 would mean "now", hpcbatch.protocol).
STALE_ECHO = 1e-9


class _FleetAuthenticator(AsyncioAuthenticator):
    """ZAP on the head's event loop; an allowed connection's User-Id is its Z85 public key."""

    def curve_user_id(self, client_public_key: bytes) -> str:
        return z85.encode(client_public_key).decode()


class Fleet:
    """Socket I/O with the agents; decisions are the engine's, trust is the registry's."""

    def __init__(
        self,
        bind: str,
        engine: Engine,
        *,
        keys: NodeKeyRegistry,
        curve: KeyPair,
        head_id: str,
        heartbeat_interval_s: float,
        liveness: int,
        epoch: int = 0,
        startup_grace_s: float = 0.0,
    ) -> None:
        self._ctx = zmq.asyncio.Context.instance()
        self._keys = keys
        self._curve = curve
        # The ZAP handler listens before the first socket binds: no unchecked handshake.
        self._auth = _FleetAuthenticator(self._ctx, log=logging.getLogger("hpcbatch.zap"))
        self._auth.start()
        self._auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=ZapCredentials(keys))
        self._sock = self._socket()
        self._sock.bind(bind)
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._engine = engine
        self._head_id = head_id
        self._epoch = epoch  # fencing token: stamped on every message (hpcbatch.head.lease)
        self._interval = heartbeat_interval_s
        self._liveness = liveness
        # After a (re)start, nodes not yet heard get this long to come back: their agents run
        # on until they fence, so failing their jobs sooner would only lose work.
        self._startup_grace_s = startup_grace_s
        self._registered: set[str] = set()  # nodes that registered with this head process
        self._last_seen: dict[str, float] = {}
        self._echo: dict[str, float] = {}  # node -> newest sent_at it told us (echoed: fencing)
        self._routes: dict[str, bytes] = {}  # node -> routing id of its live connection
        self._held: dict[str, deque[bytes]] = {}  # node -> messages waiting for a connection
        self._recv: asyncio.Future[Any] | None = None
        self._rebind_wanted = False
        self._started = time.monotonic()
        keys.on_cut_off = self.cut_off
        # Whether this head surely holds the lease (hpcbatch.head.lease): while it does not
        # (its database is away), heartbeats are answered but echo nothing new.
        self.lease_confirmed: Callable[[], bool] = lambda: True

    def _socket(self) -> zmq.asyncio.Socket:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self._curve.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self._curve.public)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        return sock

    # ------------------------------------------------------------------ sending
    def send(self, node: str, message: p.Message) -> None:
        """Send ``message`` to ``node``, or hold it until the node's next connection."""
        message.epoch = self._epoch
        data = p.encode(message)
        route = self._routes.get(node)
        if route is None or not self._send_to(node, route, data):
            self._hold(node, message, data)

    def _send_to(self, node: str, route: bytes, data: bytes) -> bool:
        """False if the connection is gone (the caller holds the message)."""
        # With NOBLOCK, pyzmq's asyncio send completes at once; errors sit in the future.
        fut = self._sock.send_multipart([route, data], flags=zmq.NOBLOCK)
        exc = fut.exception() if fut.done() else None
        if exc is None:
            return True
        if isinstance(exc, zmq.Again):
            log.warning("send queue to %s is full; dropped a message", node)
            return True
        if isinstance(exc, zmq.ZMQError) and exc.errno in (zmq.EHOSTUNREACH, zmq.ENOTSOCK):
            if self._routes.get(node) == route:
                del self._routes[node]
            return False
        log.warning("cannot send to %s: %s", node, exc)
        return True

    def _hold(self, node: str, message: p.Message, data: bytes) -> None:
        if isinstance(message, p.HeadHeartbeat):
            return  # stale the moment it is late
        held = self._held.get(node)
        if held is None:
            held = self._held[node] = deque(maxlen=HELD_PER_NODE)
        if len(held) == HELD_PER_NODE:
            log.warning("holding %d messages for %s; dropping the oldest", HELD_PER_NODE, node)
        held.append(data)

    def _learn_route(self, node: str, route: bytes) -> None:
        if self._routes.get(node) == route:
            return
        self._routes[node] = route
        held = self._held.pop(node, None)
        while held:
            if not self._send_to(node, route, held[0]):
                self._held[node] = held
                return
            held.popleft()

    # ---------------------------------------------------------------- receiving
    async def serve(self) -> None:
        """Receive agent messages until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._receive_loop())
            tasks.create_task(self._heartbeat_loop())

    async def _receive_loop(self) -> None:
        while True:
            if self._rebind_wanted:
                await self._rebind()
            self._recv = self._sock.recv_multipart(copy=False)
            try:
                frames = await self._recv
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._rebind_wanted and task is not None and not task.cancelling():
                    continue  # cut_off cancelled the receive to swap the socket
                raise
            finally:
                self._recv = None
            try:
                self._handle(frames)
            except Exception:  # the engine contains its handlers; this is the fleet's own last guard
                log.exception("dropping a message the fleet could not handle")

    def _handle(self, frames: list[Any]) -> None:
        if len(frames) != 2:
            log.warning("dropping a message with %d frames", len(frames))
            return
        route, frame = frames[0].bytes, frames[1]
        try:
            key = frame.get("User-Id")  # set by ZAP: the connection's public key
        except zmq.ZMQError:
            log.error("dropping a message without a ZAP user id (is the ZAP handler running?)")
            return
        try:
            msg = p.decode_from_agent(frame.bytes)
        except msgspec.DecodeError as exc:
            log.warning("dropping an undecodable message from key %s: %s", key, exc)
            return
        node = self._keys.node_for_key(key)
        if node is None:
            self._keys.refresh()  # pre-seeded, or accepted by hand, since last read
            node = self._keys.node_for_key(key)
        if node is None:
            # Quarantine: only a Register's name is read, to file the key as pending.
            if not (isinstance(msg, p.Register) and self._keys.note_unenrolled(msg.node.name, key)):
                return
            node = msg.node.name
        self._learn_route(node, route)
        self._last_seen[node] = time.monotonic()
        confirmed = self.lease_confirmed()
        if confirmed and isinstance(msg, p.Register | p.AgentHeartbeat) and msg.sent_at > self._echo.get(node, 0.0):
            self._echo[node] = msg.sent_at
        engine = self._engine
        if isinstance(msg, p.Register):
            if msg.protocol_version != p.PROTOCOL_VERSION:
                log.error("node %s speaks protocol %d, head speaks %d", node, msg.protocol_version, p.PROTOCOL_VERSION)
                return
            if msg.node.name != node:
                log.error("refused: the agent with the key of node %s registered as %s", node, msg.node.name)
                return
            try:
                welcome = engine.on_register(node, msg)
            except HpcbatchError as exc:  # the store is away: the node registers again later
                log.error("node %s: Register not handled: %s", node, exc.message)
                return
            except Exception as exc:  # contained: the node registers again, the head lives on
                engine.message_failed(node, msg, exc)
                return
            self._registered.add(node)
            if welcome is not None:
                welcome.head_id = self._head_id
                welcome.heartbeat_interval_s = self._interval
                welcome.liveness = self._liveness
                welcome.echo = msg.sent_at if confirmed else self._echo.get(node, STALE_ECHO)
                self.send(node, welcome)
            log.info("node %s registered (%d running, %d exited)", node, len(msg.running), len(msg.exited))
            return
        if node not in self._registered:
            self.send(node, p.Reregister())
            return
        try:
            self._engine.handle(node, msg)  # guarded per message: a failing handler fails that message's attempt
        except HpcbatchError as exc:  # the store is away (docs/ha.md): this message is lost, not the head
            log.error("node %s: %s not handled: %s", node, type(msg).__name__, exc.message)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self._keys.refresh()  # a key removed from accepted/ by hand is cut off here
            now = time.monotonic()
            deadline = self._interval * self._liveness
            no_echo = 0.0 if self.lease_confirmed() else STALE_ECHO
            for node in list(self._registered):
                self.send(node, p.HeadHeartbeat(head_id=self._head_id, echo=self._echo.get(node, no_echo)))
            for name, info in list(self._engine.nodes.items()):
                if info.state == "DOWN" and not info.jobs:
                    continue
                seen = self._last_seen.get(name)
                if seen is None:  # not heard since this head started
                    seen = self._started
                    if now - seen <= max(deadline, self._startup_grace_s):
                        continue
                if now - seen > deadline:
                    self._forget(name)
                    try:
                        self._engine.node_lost(name, now - seen)
                    except Exception:  # one node's bookkeeping must not stop the heartbeats of all
                        log.exception("failing the attempts of lost node %s failed", name)

    def _forget(self, name: str) -> None:
        self._registered.discard(name)
        self._echo.pop(name, None)
        self._routes.pop(name, None)
        self._held.pop(name, None)

    # ------------------------------------------------------------------ cut off
    def cut_off(self, name: str) -> None:
        """Stop talking to ``name`` now, mark it lost, and drop its connection (rebind)."""
        self._forget(name)
        info = self._engine.nodes.get(name)
        if info is not None and not (info.state == "DOWN" and not info.jobs):
            silent = time.monotonic() - self._last_seen.get(name, self._started)
            log.warning("node %s cut off: its key is no longer accepted", name)
            self._engine.node_lost(name, silent, "its key was revoked")
        self._rebind_wanted = True
        if self._recv is not None:
            self._recv.cancel()

    async def _rebind(self) -> None:
        self._rebind_wanted = False
        old, self._sock = self._sock, self._socket()
        old.close(linger=0)
        self._routes.clear()  # every connection is gone; each node's next message brings its new one
        deadline = time.monotonic() + REBIND_TIMEOUT_S
        while True:
            try:
                self._sock.bind(self.endpoint)
                break
            except zmq.ZMQError as exc:
                # The old listener closes in libzmq's I/O thread, a moment after close().
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.01)
        log.info("fleet socket rebound on %s: every agent reconnects through ZAP", self.endpoint)

    def close(self) -> None:
        self._sock.close(linger=0)
        self._auth.stop()
