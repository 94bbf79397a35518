"""The agent's link to the head: one CurveZMQ DEALER, the handshakes it watches, the head it dials.

The socket is a CurveZMQ client with this node's key pair that pins the head's public key (a
head without the matching secret key cannot complete the handshake). Sends never block: with
``IMMEDIATE`` set, a message for a head that is not connected is dropped (the agent keeps and
resends what must not be lost). A head that refuses the key outright (rejected, revoked) fails
the handshake; libzmq then stops reconnecting, so ``watch`` reconnects, backing off. Several
head endpoints (HA) are dialled one at a time (``next_head``). The agent that holds the link,
and what it sends over it, is node_agent/main.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from hpcbatch.curve import KeyPair
from hpcbatch.wire import FuturelessSocket
from node_agent.config import AgentConfig

log = logging.getLogger("hpcbatch.agent")

REFUSED_RETRY_S = (1.0, 30.0)  # reconnect after the head refused our key: first, longest wait
RECV_BATCH = 256  # head messages read per wake-up
HANDSHAKE_FAILURES_BEFORE_LOG = 3  # a head restarting mid-handshake fails one or two
_MONITORED = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)

SayOnce = Callable[..., None]  # (what, level, message, *args): logs a condition once until it is unsaid


class HeadLink:
    """The DEALER to the active head: CurveZMQ, never blocking, ZMTP heartbeats; one endpoint at a time.

    ``wire`` is how messages are sent and read (hpcbatch.wire); ``head`` the endpoint dialled now.
    The context is the caller's: ``close`` closes the sockets, not the context.
    """

    def __init__(self, ctx: zmq.asyncio.Context, keys: KeyPair, head_key: bytes, config: AgentConfig) -> None:
        self._config = config
        self.keys = keys
        self.sock = sock = ctx.socket(zmq.DEALER)
        # No routing id of our own: the head knows us by our key, and numbers connections itself.
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
        sock.setsockopt(zmq.CURVE_SERVERKEY, head_key)
        self.monitor = sock.get_monitor_socket(_MONITORED)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        # ZMTP heartbeats: a connection whose peer went silent (a cut link leaves TCP waiting
        # on retransmits for minutes) is dropped and redialled, so the node is back as soon
        # as the network is: within a PING interval plus the timeout of the last traffic.
        # libzmq PINGs every interval whatever else flows, and the head answers each: a PING
        # every heartbeat was a quarter of the agent's idle CPU (bench/fleet, its I/O thread)
        # and as many PONGs for the head, so one goes every half timeout (a cut is found
        # within 1.5 timeouts of the last traffic, not 1.2).
        timeout_ms = max(1000, int(config.heartbeat_interval_s * config.liveness * 1000))
        sock.setsockopt(zmq.HEARTBEAT_IVL, max(100, int(config.heartbeat_interval_s * 1000), timeout_ms // 2))
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout_ms)
        self.heads = config.head_endpoints
        self.head = self.heads[0]  # the one endpoint the socket is connected to
        sock.connect(self.head)
        self.wire = FuturelessSocket(sock, RECV_BATCH)

    def send(self, data: bytes) -> None:
        """Send now or not at all: a head that is not connected does not get it."""
        try:
            self.wire.send(data)
        except zmq.Again:
            pass  # not connected; what matters is resent on (re)registration
        except zmq.ZMQError as exc:
            log.warning("cannot send to the head: %s", exc)

    async def watch(self, on_connected: Callable[[], None], say_once: SayOnce) -> None:
        """Watch the CurveZMQ handshakes: log what an admin must fix, reconnect after a refusal."""
        retry = REFUSED_RETRY_S[0]
        failures = 0
        while True:
            frames = await self.monitor.recv_multipart()
            try:
                event = parse_monitor_message(frames)
            except Exception:  # an event we cannot read: the next one may be fine
                log.exception("unreadable socket monitor event")
                continue
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                retry, failures = REFUSED_RETRY_S[0], 0
                on_connected()
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                say_once(
                    "refused", logging.ERROR,
                    "the head at %s refused this node's key %s (status %s): it is rejected or revoked; "
                    "`hpcbatch nodes keys list` on the head shows it; retrying",
                    self.head, self.keys.public.decode(), event["value"],
                )
                # libzmq does not reconnect after an authentication failure: we do, backing off.
                await asyncio.sleep(retry)
                retry = min(retry * 2, REFUSED_RETRY_S[1])
                self.reconnect()
            else:
                failures += 1
                if failures >= HANDSHAKE_FAILURES_BEFORE_LOG:
                    say_once(
                        "handshake", logging.ERROR,
                        "the CurveZMQ handshake with the head at %s keeps failing: is head_public_key (%s) "
                        "the head's public key?",
                        self.head, self._config.head_public_key,
                    )

    def reconnect(self, endpoint: str | None = None) -> None:
        """Drop the connection and dial ``endpoint`` (by default the same head) afresh."""
        try:
            self.sock.disconnect(self.head)
        except zmq.ZMQError:
            pass  # libzmq already dropped the endpoint
        self.head = endpoint or self.head
        self.sock.connect(self.head)

    def next_head(self) -> None:
        """Move to the next head endpoint: one connection at a time, so no message of ours
        goes to a standby or to a paused former head (a DEALER would spread them over all)."""
        self.reconnect(self.heads[(self.heads.index(self.head) + 1) % len(self.heads)])

    def close(self) -> None:
        """Close the monitor and the socket (not the context, which may be shared)."""
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)

