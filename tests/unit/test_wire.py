"""hpcbatch.wire over real ROUTER/DEALER pairs (loopback TCP): the agent's and the head's reader wake for
every queued message, including one whose descriptor edge a send took in while it slept."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import zmq
import zmq.asyncio

from hpcbatch.wire import FuturelessSocket


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[bytes], zmq.asyncio.Socket, zmq.asyncio.Context]]:
    """A ROUTER (the head's side, plain) and a DEALER (the agent's, asyncio as in main.py), connected."""
    sync_ctx = zmq.Context()
    ctx = zmq.asyncio.Context()
    router = sync_ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    try:
        yield router, dealer, ctx
    finally:
        dealer.close()
        router.close()
        ctx.term()
        sync_ctx.term()


def _peer(router: zmq.Socket[bytes], wire: FuturelessSocket) -> bytes:
    """The DEALER's routing id on the ROUTER, learnt from a first message."""
    wire.send(b"hello")
    assert router.poll(5000), "the ROUTER heard nothing"
    peer, body = router.recv_multipart()
    assert body == b"hello"
    return peer


def _until_queued_on_the_dealer() -> None:
    """Let libzmq's I/O thread move a sent message into the DEALER's queue (the loop is blocked)."""
    time.sleep(0.3)


async def _receive_within(wire: FuturelessSocket, seconds: float) -> list[bytes]:
    with wire.watching():
        return await asyncio.wait_for(wire.receive(), seconds)


def test_a_message_sent_while_the_reader_sleeps_wakes_it(pair) -> None:  # noqa: ANN001
    router, dealer, _ = pair

    async def run() -> list[bytes]:
        wire = FuturelessSocket(dealer, batch=16)
        peer = _peer(router, wire)
        with wire.watching():
            reader = asyncio.ensure_future(wire.receive())
            await asyncio.sleep(0.05)  # asleep on its future now
            assert not reader.done()
            router.send_multipart([peer, b"order"])
            return await asyncio.wait_for(reader, 5)

    assert asyncio.run(run()) == [b"order"]


def test_a_send_that_takes_in_a_messages_news_still_wakes_the_sleeping_reader(pair) -> None:  # noqa: ANN001
    """The case an edge-triggered descriptor loses: the message arrives, the agent sends before
    the loop has looked at the descriptor (the send reads EVENTS and the edge is gone)."""
    router, dealer, _ = pair

    async def run() -> list[bytes]:
        wire = FuturelessSocket(dealer, batch=16)
        peer = _peer(router, wire)
        with wire.watching():
            reader = asyncio.ensure_future(wire.receive())
            await asyncio.sleep(0.05)
            router.send_multipart([peer, b"order"])
            _until_queued_on_the_dealer()  # no loop turn: the descriptor's callback has not run
            wire.send(b"report")  # takes the news in
            return await asyncio.wait_for(reader, 5)

    assert asyncio.run(run()) == [b"order"]
    assert router.poll(5000) and router.recv_multipart()[1] == b"report"


def test_messages_queued_before_the_reader_starts_are_read_at_once_in_batches(pair) -> None:  # noqa: ANN001
    router, dealer, _ = pair

    async def run() -> list[list[bytes]]:
        wire = FuturelessSocket(dealer, batch=3)
        peer = _peer(router, wire)
        for i in range(5):
            router.send_multipart([peer, b"m%d" % i])
        _until_queued_on_the_dealer()
        wire.send(b"report")  # the news taken in before anyone reads: no edge left for the callback
        return [await _receive_within(wire, 5), await _receive_within(wire, 5)]

    assert asyncio.run(run()) == [[b"m0", b"m1", b"m2"], [b"m3", b"m4"]]


def test_a_send_with_no_peer_raises_again_and_the_reader_keeps_working(pair) -> None:  # noqa: ANN001
    _, dealer, ctx = pair
    lonely = ctx.socket(zmq.DEALER)
    lonely.setsockopt(zmq.LINGER, 0)
    lonely.setsockopt(zmq.IMMEDIATE, 1)  # as the agent's: nothing queued for a peer not connected
    lonely.connect("tcp://127.0.0.1:9")  # nothing listens there
    try:
        wire = FuturelessSocket(lonely, batch=4)

        async def run() -> None:
            with wire.watching():
                reader = asyncio.ensure_future(wire.receive())
                await asyncio.sleep(0.05)
                with pytest.raises(zmq.Again):
                    wire.send(b"lost")
                assert not reader.done()  # nothing queued: it sleeps on
                reader.cancel()

        asyncio.run(run())
    finally:
        lonely.close()


def test_the_routers_side_reads_frames_and_a_reply_takes_in_the_next_messages_news(pair) -> None:  # noqa: ANN001
    """The head's ROUTER (hpcbatch.head.fleet): messages come as frames (the routing id first),
    and a reply sent while the reader sleeps must not lose the next message's edge."""
    router, dealer, ctx = pair
    head = ctx.socket(zmq.ROUTER)  # an asyncio ROUTER, as the head's; the pair's plain DEALER talks to it
    head.setsockopt(zmq.LINGER, 0)
    head.setsockopt(zmq.ROUTER_MANDATORY, 1)
    port = head.bind_to_random_port("tcp://127.0.0.1")
    agent = zmq.Context.instance().socket(zmq.DEALER)
    agent.setsockopt(zmq.LINGER, 0)
    agent.connect(f"tcp://127.0.0.1:{port}")

    async def run() -> tuple[list[bytes], list[bytes]]:
        wire = FuturelessSocket(head, batch=8, frames=True)
        agent.send(b"register")
        (first,) = await _receive_within(wire, 5)
        route, body = first[0].bytes, first[1].bytes
        with wire.watching():
            reader = asyncio.ensure_future(wire.receive())
            await asyncio.sleep(0.05)
            agent.send(b"heartbeat")
            time.sleep(0.3)  # queued on the head's side; no loop turn yet
            wire.send_multipart([route, b"welcome"])  # takes the news in
            (second,) = await asyncio.wait_for(reader, 5)
        with pytest.raises(zmq.ZMQError) as gone:  # ROUTER_MANDATORY: a route nobody has
            wire.send_multipart([b"\0nobody", b"x"])
        assert gone.value.errno == zmq.EHOSTUNREACH
        return [body, second[1].bytes], [agent.recv() if agent.poll(5000) else b""]

    try:
        assert asyncio.run(run()) == ([b"register", b"heartbeat"], [b"welcome"])
    finally:
        agent.close()
        head.close()
