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

Cutting a node off at once (``revoke``): a ROUTER cannot close one peer, so the fleet keeps
the TCP descriptor each node's connection last spoke on (libzmq's ``SRCFD`` of a message)
and shuts that one connection down: the agent reconnects and ZAP refuses its key; every
other connection stays as it is (no rebind: the fleet does not reconnect 10,000 nodes).

Containment: every message is handed to the engine guarded (``Engine.handle``): a handler
that raises fails that message's attempt or request, is logged with the message's type and
ids, and a report that keeps failing is quarantined; the loop goes on with the next message.

Delivery: ``ROUTER_MANDATORY`` tells a send to a gone connection from a sent message.
A message for a node with no live connection is held (bounded) and sent when the node
next speaks, so a ``StartAttempt`` survives a reconnect; held messages are dropped when
the node is lost. A message from a node the head has not seen register since it
(re)started gets ``Reregister``. Nodes silent for ``liveness`` heartbeat intervals are
reported lost by the rules of ``hpcbatch.head.liveness``: "last heard" is when a message
*arrived* (stamped once per batch read), never when it was handled, and a head that stalled
(SIGSTOP, swap, a blocked loop) or sees too many nodes silent at once re-checks rather than
failing the fleet.

Batches (issue 22): a node whose Register says ``batches`` gets a step's starts as one
``Orders`` (the engine's outbox groups them, asking ``batches``); any other node gets them one
by one. Every ``Welcome`` says the head takes ``Reports``.

Scale (bench/fleet): messages are read in batches of up to ``RECV_BATCH`` per wake-up, and
read and written without pyzmq's per-message futures (``hpcbatch.wire``); an
agent's heartbeat is answered on receipt, so the head's heartbeats are spread as the agents'
are, instead of one burst to every node each interval.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec
import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85

from hpcbatch import protocol as p
from hpcbatch.curve import KeyPair
from hpcbatch.errors import HpcbatchError
from hpcbatch.head.engine import Engine
from hpcbatch.head.liveness import LivenessJudge
from hpcbatch.head.nodekeys import NodeKeyRegistry, ZapCredentials
from hpcbatch.wire import FuturelessSocket

log = logging.getLogger("hpcbatch.fleet")

# libzmq asks the ZAP handler only on sockets that have a ZAP domain (checked with libzmq
# 4.3.5: without one, any client key completes the handshake), so the ROUTER sets one,
# and ZAP_ENFORCE_DOMAIN makes a missing ZAP handler refuse everyone rather than no one.
ZAP_DOMAIN = "hpcbatch-fleet"
HELD_PER_NODE = 10_000
RECV_BATCH = 1024  # messages read per wake-up before the loop lets other work run
LISTEN_BACKLOG = 16_384
# Echoed while the lease is unconfirmed to a node this head has no echo for: older than any
# send, it renews no agent's fence (0 would mean "now", hpcbatch.protocol).
STALE_ECHO = 1e-9


@dataclass(frozen=True)
class FleetSettings:
    """Who this head is to the agents and how often they must be heard."""

    head_id: str
    heartbeat_interval_s: float
    liveness: int  # missed heartbeats before a node is lost
    epoch: int = 0  # the lease's fencing token
    startup_grace_s: float = 0.0  # after a (re)start, how long nodes not yet heard may take


class _Incoming(NamedTuple):
    """A message that passed the fleet's checks, with the node it comes from."""

    node: str
    route: bytes  # the ROUTER's id of the connection it came in on
    frame: Any  # its zmq.Frame (User-Id, SRCFD)
    msg: p.Message


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
        settings: FleetSettings,
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
        self._wire = FuturelessSocket(self._sock, RECV_BATCH, frames=True)  # every send and receive (hpcbatch.wire)
        self._engine = engine
        self._head_id = settings.head_id
        self._epoch = settings.epoch  # fencing token: stamped on every message (hpcbatch.head.lease)
        self._interval = settings.heartbeat_interval_s
        self._liveness = settings.liveness
        # After a (re)start, nodes not yet heard get this long to come back: their agents run
        # on until they fence, so failing their jobs sooner would only lose work.
        self._startup_grace_s = settings.startup_grace_s
        self._registered: set[str] = set()  # nodes that registered with this head process
        self._batching: set[str] = set()  # nodes whose agent takes ``Orders`` (their Register said so)
        engine.commits.batches_for = self._batching.__contains__
        self._last_seen: dict[str, float] = {}
        self._echo: dict[str, float] = {}  # node -> newest sent_at it told us (echoed: fencing)
        self._routes: dict[str, bytes] = {}  # node -> routing id of its live connection
        self._held: dict[str, deque[bytes]] = {}  # node -> messages waiting for a connection
        self._conns: dict[str, tuple[int, Any]] = {}  # node -> (fd, peer address) of its live connection
        self._started = time.monotonic()
        deadline = self._interval * self._liveness
        self._judge = LivenessJudge(
            deadline_s=deadline, stall_s=self._interval + deadline / 2, give_up_s=max(10.0, 3 * deadline),
            listening_since=self._started,
        )
        keys.on_cut_off = self.cut_off
        keys.on_handshake = self._heard_handshake
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
        # After a head stall or restart every agent reconnects at once: libzmq's default listen
        # backlog (100) drops the rest's SYNs, and TCP retries them 1, 3, 7 s later, past the
        # liveness window (bench/fleet --stall). The kernel caps it at net.core.somaxconn.
        sock.setsockopt(zmq.BACKLOG, LISTEN_BACKLOG)
        return sock

    # ------------------------------------------------------------------ sending
    def send(self, node: str, message: p.Message) -> None:
        """Send ``message`` to ``node``, or hold it until the node's next connection. An ``Orders``
        for a node that does not take them goes as its starts, one by one."""
        if isinstance(message, p.Orders) and node not in self._batching:
            for order in message.items:
                self.send(node, order)
            return
        message.epoch = self._epoch
        data = p.encode(message)
        route = self._routes.get(node)
        if route is None or not self._send_to(node, route, data):
            self._hold(node, message, data)

    def _send_to(self, node: str, route: bytes, data: bytes) -> bool:
        """False if the connection is gone (the caller holds the message)."""
        try:
            self._wire.send_multipart([route, data])
        except zmq.Again:
            log.warning("send queue to %s is full; dropped a message", node)
        except zmq.ZMQError as exc:
            if exc.errno not in (zmq.EHOSTUNREACH, zmq.ENOTSOCK):
                log.warning("cannot send to %s: %s", node, exc)
                return True
            if self._routes.get(node) == route:
                del self._routes[node]
            return False
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

    def _learn_route(self, node: str, route: bytes, frame: Any = None) -> None:
        if self._routes.get(node) == route:
            return
        self._routes[node] = route
        conn = _connection_of(frame) if frame is not None else None
        if conn is None:
            self._conns.pop(node, None)
        else:
            self._conns[node] = conn
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
        with self._wire.watching():
            while True:
                batch = await self._wire.receive()
                # Everything queued is read now, stamped with one arrival time: a node's "last
                # heard" is when its message arrived, not when the head got round to it.
                arrived = time.monotonic()
                for frames in batch:
                    try:
                        self._handle(frames, arrived)
                    except Exception:  # the engine contains its handlers; this is the fleet's own last guard
                        log.exception("dropping a message the fleet could not handle")
                await asyncio.sleep(0)  # let the API and the scheduler run between batches

    def _handle(self, frames: list[Any], arrived: float) -> None:
        incoming = self._identify(frames)
        if incoming is None:
            return
        node, route, frame, msg = incoming
        self._learn_route(node, route, frame)
        self._last_seen[node] = max(arrived, self._last_seen.get(node, arrived))
        confirmed = self.lease_confirmed()
        if confirmed and isinstance(msg, p.Register | p.AgentHeartbeat) and msg.sent_at > self._echo.get(node, 0.0):
            self._echo[node] = msg.sent_at
        if isinstance(msg, p.Register):
            self._on_register(node, msg, confirmed)
            return
        if node not in self._registered:
            self.send(node, p.Reregister())
            return
        if isinstance(msg, p.AgentHeartbeat):  # answered on receipt: the head's beats spread as the agents' do
            self.send(node, p.HeadHeartbeat(head_id=self._head_id, echo=self._echo.get(node, 0.0 if confirmed else STALE_ECHO)))
        try:
            self._engine.handle(node, msg)  # guarded per message: a failing handler fails that message's attempt
        except HpcbatchError as exc:  # the store is away (docs/ha.md): this message is lost, not the head
            log.error("node %s: %s not handled: %s", node, type(msg).__name__, exc.message)

    def _on_register(self, node: str, msg: p.Register, confirmed: bool) -> None:
        """A node (re)registers: the engine reconciles it; it is welcomed with the head's terms."""
        engine = self._engine
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
        if msg.batches:
            self._batching.add(node)
        else:
            self._batching.discard(node)
        if welcome is not None:
            welcome.batches = True
            welcome.head_id = self._head_id
            welcome.heartbeat_interval_s = self._interval
            welcome.liveness = self._liveness
            welcome.echo = msg.sent_at if confirmed else self._echo.get(node, STALE_ECHO)
            self.send(node, welcome)
        log.info("node %s registered (%d running, %d exited)", node, len(msg.running), len(msg.exited))

    def _identify(self, frames: list[Any]) -> _Incoming | None:
        """The message and the node its connection's key belongs to; None if it is dropped."""
        if len(frames) != 2:
            log.warning("dropping a message with %d frames", len(frames))
            return None
        route, frame = frames[0].bytes, frames[1]
        try:
            key = frame.get("User-Id")  # set by ZAP: the connection's public key
        except zmq.ZMQError:
            log.error("dropping a message without a ZAP user id (is the ZAP handler running?)")
            return None
        try:
            msg = p.decode_from_agent(frame.bytes)
        except msgspec.DecodeError as exc:
            log.warning("dropping an undecodable message from key %s: %s", key, exc)
            return None
        node = self._node_of(key, msg)
        return None if node is None else _Incoming(node, route, frame, msg)

    def _node_of(self, key: str, msg: p.Message) -> str | None:
        """The node whose accepted key this is; an unknown key's Register is filed as pending."""
        node = self._keys.node_for_key(key)
        if node is None:
            self._keys.refresh(hot=True)  # pre-seeded, or accepted by hand, since last read
            node = self._keys.node_for_key(key)
        if node is None:
            # Quarantine: only a Register's name is read, to file the key as pending.
            if not (isinstance(msg, p.Register) and self._keys.note_unenrolled(msg.node.name, key)):
                return None
            node = msg.node.name
        return node

    def _heard_handshake(self, node: str) -> None:
        """An accepted node's agent is completing a handshake (ZAP asked): it is alive."""
        if node in self._last_seen:
            self._last_seen[node] = time.monotonic()

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self._keys.refresh()  # a key removed from accepted/ by hand is cut off here
            self.check_liveness(time.monotonic())

    def check_liveness(self, now: float) -> None:
        """Report the nodes silent too long as lost (hpcbatch.head.liveness decides which)."""
        grace = max(self._judge.deadline_s, self._startup_grace_s)
        watched = [
            name for name, info in self._engine.nodes_snapshot().items()
            if not (info.state == "DOWN" and not info.jobs)
            # not heard since this head started: their agents run on until they fence
            and not (name not in self._last_seen and now - self._started <= grace)
        ]
        verdict = self._judge.check(now, self._last_seen, watched)
        if verdict.stalled_s:
            log.warning("the fleet loop stalled for %.1f s: no node is judged on that time", verdict.stalled_s)
        if verdict.deferred:
            log.warning("%d of %d nodes silent at once: more likely this head's trouble than theirs; re-checking "
                        "before failing them", verdict.deferred, len(watched))
        for name, silent in verdict.lost:
            self._forget(name)
            try:
                self._engine.node_lost(name, silent)
            except Exception:  # one node's bookkeeping must not stop the heartbeats of all
                log.exception("failing the attempts of lost node %s failed", name)

    def _forget(self, name: str) -> None:
        self._registered.discard(name)
        self._echo.pop(name, None)
        self._routes.pop(name, None)
        self._held.pop(name, None)
        self._conns.pop(name, None)

    # ------------------------------------------------------------------ cut off
    def cut_off(self, name: str) -> None:
        """Stop talking to ``name`` now, mark it lost, and drop its one connection."""
        conn = self._conns.get(name)
        self._forget(name)
        info = self._engine.node(name)
        if info is not None and not (info.state == "DOWN" and not info.jobs):
            silent = time.monotonic() - self._last_seen.get(name, self._started)
            log.warning("node %s cut off: its key is no longer accepted", name)
            self._engine.node_lost(name, silent, "its key was revoked")
        if conn is not None and _shut(*conn):
            log.info("node %s: its connection was dropped; its key cannot complete a handshake again", name)

    def close(self) -> None:
        self._sock.close(linger=0)
        self._auth.stop()


def _connection_of(frame: Any) -> tuple[int, Any] | None:
    """The TCP descriptor a message came in on and its peer's address, or None (not TCP)."""
    try:
        fd = frame.get(zmq.SRCFD)
        with socket.socket(fileno=os.dup(fd)) as sock:
            return fd, sock.getpeername()
    except (zmq.ZMQError, OSError, ValueError, TypeError):
        return None


def _shut(fd: int, peer: Any) -> bool:
    """Shut down the connection on ``fd`` if it is still the one to ``peer`` (libzmq drops it)."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            if sock.getpeername() != peer:
                return False  # that connection closed already, and the number was reused
            sock.shutdown(socket.SHUT_RDWR)
            return True
    except OSError:
        return False
