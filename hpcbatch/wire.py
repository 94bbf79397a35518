"""A ZeroMQ socket read and written on asyncio without pyzmq's futures: the agent's DEALER
(node_agent.main) and the head's ROUTER (hpcbatch.head.fleet).

pyzmq's asyncio socket costs a future, a timer check and several EVENTS reads per message:
on an idle node most of the agent's CPU (bench/fleet, ``agent_cpu_us_per_heartbeat``), and at
10,000 nodes 40 % of the head's (py-spy, ``bench/fleet --nodes 10000``). This reads and
writes the same socket through a plain shadow of it instead.

How the reader is woken: the socket's descriptor (ZMQ_FD) is edge-triggered. It becomes
readable when the socket has news, and reading the socket's EVENTS (which any send or
receive does too) takes the news in. So the reader reads EVENTS before it sleeps, the
descriptor's callback reads EVENTS, and so does every send while the reader sleeps: a
queued message always wakes it (and the descriptor, once read, is quiet again: asyncio
watches it level-triggered). tests/unit/test_wire.py holds each of these cases.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import zmq

_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)  # plain ints: no enum arithmetic


class FuturelessSocket:
    """A ZeroMQ socket's messages, ``batch`` at most per read, without futures per message.

    A message is one ``bytes`` (a DEALER's), or with ``frames`` its list of ``zmq.Frame``s (a
    ROUTER's: the routing id first; a frame carries its connection's User-Id and SRCFD).
    """

    def __init__(self, sock: zmq.Socket[Any], batch: int, *, frames: bool = False) -> None:
        self._raw: zmq.Socket[Any] = zmq.Socket.shadow(sock.underlying)
        self._batch = batch
        self._frames = frames
        self._waiting: asyncio.Future[None] | None = None  # the reader, asleep until a message is queued

    def send(self, data: bytes) -> None:
        """Send without blocking: ``zmq.Again`` when no peer takes it now (the caller decides)."""
        try:
            self._raw.send(data, _NOBLOCK)
        finally:
            if self._waiting is not None:  # the send may have taken in a message's news: its edge is gone
                self._wake_if_readable()

    def send_multipart(self, parts: list[bytes]) -> None:
        """``send`` of a message of several frames (a ROUTER's: the routing id first)."""
        try:
            self._raw.send_multipart(parts, _NOBLOCK)
        finally:
            if self._waiting is not None:
                self._wake_if_readable()

    def queued(self) -> list[Any]:
        """The messages queued now (at most ``batch``), without waiting."""
        batch: list[Any] = []
        raw = self._raw
        while len(batch) < self._batch and raw.get(_EVENTS) & _POLLIN:
            batch.append(raw.recv_multipart(_NOBLOCK, copy=False) if self._frames else raw.recv(_NOBLOCK))
        return batch

    async def receive(self) -> list[Any]:
        """The next messages (at most ``batch``), waiting until one is queued; only inside ``watching``."""
        while True:
            batch = self.queued()
            if batch:
                return batch
            self._waiting = asyncio.get_running_loop().create_future()
            try:
                await self._waiting
            finally:
                self._waiting = None

    @contextmanager
    def watching(self) -> Iterator[None]:
        """The descriptor watched by the running loop while inside (one reader at a time)."""
        loop = asyncio.get_running_loop()
        fd = self._raw.FD
        loop.add_reader(fd, self._wake_if_readable)
        try:
            yield
        finally:
            loop.remove_reader(fd)

    def _wake_if_readable(self) -> None:
        """Wake the reader if a message is queued (and take the descriptor's news in)."""
        waiting = self._waiting
        if self._raw.get(_EVENTS) & _POLLIN and waiting is not None and not waiting.done():
            waiting.set_result(None)
