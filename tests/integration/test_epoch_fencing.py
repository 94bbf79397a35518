"""The agent's half of fencing: orders from a head older than the newest epoch it has seen
are refused. A real agent; on the other end of its CurveZMQ link, a scripted peer holding
the head's key pair that plays two heads in turn (the order of events a paused former head
produces at random, here made to happen on purpose)."""

from __future__ import annotations

import getpass
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from hpcbatch import protocol as p
from hpcbatch.curve import ensure_keypair
from tests.harness import TestCluster, free_port


@pytest.fixture
def agent_and_peer(tmp_path: Path) -> Iterator[tuple[TestCluster, zmq.Socket]]:
    c = TestCluster(tmp_path, nodes=0)
    keys = ensure_keypair(tmp_path / "head" / "curve" / "head.key_secret", c.head_public_key)
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.CURVE_SERVER, 1)
    router.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    router.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    router.setsockopt(zmq.LINGER, 0)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    router.bind(endpoint)
    c.add_agent("node1", head=endpoint)
    try:
        c.start_agent("node1")
        yield c, router
    finally:
        c.close()
        router.close(linger=0)
        ctx.term()


def _next(router: zmq.Socket, kind: type, timeout: float = 15) -> tuple[bytes, p.Message]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if router.poll(100):
            route, data = router.recv_multipart()
            msg = p.decode_from_agent(data)
            if isinstance(msg, kind):
                return route, msg
    raise AssertionError(f"no {kind.__name__} from the agent within {timeout:.0f}s")


def _start(attempt_id: str, marker: Path, epoch: int) -> p.StartAttempt:
    return p.StartAttempt(
        epoch=epoch, attempt_id=attempt_id, job_id=f"job-{attempt_id}", attempt_number=1,
        command=["sh", "-c", f"echo {attempt_id} >> {marker}"], environment={}, vcpus=1, memory_mib=64,
        owner=getpass.getuser(),
    )


def test_agent_refuses_orders_from_a_head_older_than_the_newest_it_has_seen(
    agent_and_peer: tuple[TestCluster, zmq.Socket], tmp_path: Path
) -> None:
    _, router = agent_and_peer
    marker = tmp_path / "started"
    marker.touch()
    marker.chmod(0o666)
    route, _ = _next(router, p.Register)
    # The new active head (epoch 5) welcomes the agent ...
    router.send_multipart([route, p.encode(p.Welcome(epoch=5, head_id="new", heartbeat_interval_s=0.3, liveness=50))])
    # ... then the former head (epoch 4), resumed, sends an order it decided before the takeover.
    router.send_multipart([route, p.encode(_start("stale", marker, epoch=4))])
    router.send_multipart([route, p.encode(_start("current", marker, epoch=5))])
    _, started = _next(router, p.AttemptStarted)
    assert started.attempt_id == "current"
    _, exited = _next(router, p.AttemptExited)
    assert exited.attempt_id == "current"
    assert marker.read_text().split() == ["current"]  # the stale order never ran
    log = (tmp_path / "node1.log").read_text()
    assert "refusing orders from a head of epoch 4" in log


def test_a_restarted_agent_still_refuses_a_head_older_than_the_newest_it_has_seen(
    agent_and_peer: tuple[TestCluster, zmq.Socket], tmp_path: Path
) -> None:
    cluster, router = agent_and_peer
    marker = tmp_path / "started"
    marker.touch()
    marker.chmod(0o666)
    route, _ = _next(router, p.Register)
    router.send_multipart([route, p.encode(p.Welcome(epoch=7, head_id="new", heartbeat_interval_s=0.3, liveness=50))])
    router.send_multipart([route, p.encode(_start("before", marker, epoch=7))])
    _next(router, p.AttemptExited)  # the agent has obeyed epoch 7, so it has remembered it
    assert '"epoch": 7' in (tmp_path / "node1" / "head-epoch.json").read_text()
    cluster.kill("node1")  # kill -9: nothing is flushed on the way out
    cluster.start_agent("node1")
    # The restarted agent registers; the first to answer is the former head (epoch 6).
    route, _ = _next(router, p.Register)
    router.send_multipart([route, p.encode(p.Welcome(epoch=6, head_id="old", heartbeat_interval_s=0.3, liveness=50))])
    router.send_multipart([route, p.encode(_start("stale", marker, epoch=6))])
    router.send_multipart([route, p.encode(_start("current", marker, epoch=7))])
    _, started = _next(router, p.AttemptStarted)
    assert started.attempt_id == "current"
    _next(router, p.AttemptExited)
    assert marker.read_text().split() == ["before", "current"]  # the stale order never ran
    assert "refusing orders from a head of epoch 6" in (tmp_path / "node1.log").read_text()
