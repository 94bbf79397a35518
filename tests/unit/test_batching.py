"""Start orders and exit reports in batches (issue 22), negotiated so older peers still work.

The agent's core takes an ``Orders`` as its starts one after another; ``coalesce`` gathers
what one wake-up sends into one ``Reports``. The head serves a ``Reports`` item by item (each
contained, acknowledged together), groups a step's starts for a batching node into one
``Orders``, and sends single messages to a node whose Register did not say ``batches``.
A real engine over a real store (tests/unit/test_fencing.py's Cluster); a real Fleet socket.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import zmq

from hpcbatch import protocol as p
from hpcbatch.curve import KeyPair
from hpcbatch.head.fleet import Fleet, FleetSettings
from hpcbatch.head.nodekeys import NodeKeyRegistry
from hpcbatch.model.lifecycle import JobStatus
from node_agent import state as s
from tests.unit.test_agent_state import Agent, exited, of, order, sent
from tests.unit.test_fencing import Cluster


# ------------------------------------------------------------------ the agent's core
def test_an_agent_says_it_takes_batches_and_learns_whether_the_head_does() -> None:
    agent = Agent()
    assert agent.state.register_message(agent.clock.now()).batches
    agent.welcome()  # an older head's Welcome: no ``batches``
    assert not agent.state.head_batches
    agent.welcome(batches=True)
    assert agent.state.head_batches
    agent.feed(p.Reregister())  # a head that does not know us: single messages until its Welcome
    assert not agent.state.head_batches


def test_orders_are_its_starts_in_order_each_once() -> None:
    agent = Agent()
    agent.welcome(batches=True)
    agent.start("a1")
    effects = agent.feed(p.Orders(items=[order("a1"), order("a2"), order("a3"), order("a2")], epoch=4))
    assert [e.epoch for e in of(effects, s.SaveEpoch)] == [4]  # saved once, before any start of it
    assert isinstance(effects[0], s.SaveEpoch)
    assert [e.order.attempt_id for e in of(effects, s.StartJob)] == ["a2", "a3"]  # a1 started already
    assert not of(agent.feed(p.Orders(items=[order("a9")], epoch=3)), s.StartJob)  # an older head's: refused


def test_a_wake_ups_starts_and_exits_leave_as_one_report_after_the_rest() -> None:
    started = p.AttemptStarted(attempt_id="a1", job_id="job-a1", pid=1, started_at=1)
    log = p.LogChunk(attempt_id="a2", job_id="job-a2", stream="output", offset=0, data=b"x")
    beat = p.AgentHeartbeat(instance_id="i")
    wake_up: list[p.Message] = [started, log, exited("a2"), beat]
    assert s.coalesce(wake_up, batches=False) == wake_up  # an older head: one by one
    assert s.coalesce([log, exited("a2")], batches=True) == [log, exited("a2")]  # one report: as it is
    assert s.coalesce(wake_up, batches=True) == [log, p.Reports(items=[started, exited("a2")]), beat]


def test_a_batched_exit_is_still_resent_until_acknowledged() -> None:
    agent = Agent()
    agent.welcome(batches=True)
    for a in ("a1", "a2"):
        agent.start(a)
        agent.running(a)
    wake_up = sent(agent.ended("a1")) + sent(agent.ended("a2"))
    (report,) = [m for m in s.coalesce(wake_up, batches=True) if isinstance(m, p.Reports)]
    assert [m.attempt_id for m in report.items] == ["a1", "a2"]
    beat = s.coalesce(sent(agent.tick()), batches=True)  # the report was lost: the next beat resends both
    assert [m.attempt_id for r in beat if isinstance(r, p.Reports) for m in r.items] == ["a1", "a2"]
    agent.feed(p.AckExits(attempt_ids=["a1", "a2"]))
    assert not [m for m in sent(agent.tick()) if isinstance(m, p.AttemptExited)]


# ------------------------------------------------------------------ the head
def _big_n1(c: Cluster) -> None:
    facts = p.NodeFacts(name="n1", hostname="n1", addresses=[], vcpus=4, memory_mib=4096)
    c.engine.on_register("n1", p.Register(instance_id="n1b", node=facts, batches=True))
    c.engine.step()


def test_a_steps_starts_for_a_batching_node_leave_as_one_orders(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        _big_n1(c)
        c.engine.commits.batches_for = {"n1"}.__contains__  # n2's agent is older: single starts
        step = c.engine.step
        c.engine.step = lambda: None  # type: ignore[method-assign]  # five submits, then one step
        jobs = [c.submit(f"job-{i}") for i in range(5)]
        c.engine.step = step  # type: ignore[method-assign]
        c.sent.clear()
        step()
        assert all(j.status is JobStatus.STARTING for j in jobs)
        to_n1 = [m for n, m in c.sent if n == "n1"]
        to_n2 = [m for n, m in c.sent if n == "n2"]
        (orders,) = to_n1  # n1's four starts: one message
        assert isinstance(orders, p.Orders) and len(orders.items) == 4
        assert [type(m) for m in to_n2] == [p.StartAttempt]  # n2 (an older agent): its start alone
        assert {m.attempt_id for m in [*orders.items, *to_n2]} == {j.attempts[0].attempt_id for j in jobs}

    asyncio.run(run())


def test_the_outbox_groups_starts_where_the_first_was(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        c.sent.clear()
        c.engine.commits.batches_for = {"n1"}.__contains__
        kill = p.KillAttempt(attempt_id="x", reason="r")
        for node, msg in [("n1", kill), ("n1", order("a1")), ("n2", order("b1")), ("n1", p.AckExits(attempt_ids=["z"])),
                          ("n1", order("a2")), ("n2", order("b2"))]:
            c.engine.commits.send(node, msg)
        c.engine.commits.flush()
        assert c.sent == [("n1", kill), ("n1", p.Orders(items=[order("a1"), order("a2")])), ("n2", order("b1")),
                          ("n2", order("b2")), ("n1", p.AckExits(attempt_ids=["z"]))]

    asyncio.run(run())


def test_a_reports_is_served_item_by_item_and_acknowledged_together(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path, raise_on="exited:poison*")
        _big_n1(c)
        c.sent.clear()
        jobs = [c.submit(name) for name in ("ok-1", "poison-1", "ok-2", "ok-3")]
        attempts = {j.job_id: j.attempts[0] for j in jobs}
        items: dict[str, list[p.AttemptStarted | p.AttemptExited]] = {}
        for j in jobs:  # each node's starts and exits, as one wake-up of its agent would send them
            a = attempts[j.job_id]
            items.setdefault(a.node, []).extend([
                p.AttemptStarted(attempt_id=a.attempt_id, job_id=j.job_id, pid=1, started_at=1),
                p.AttemptExited(attempt_id=a.attempt_id, job_id=j.job_id, exit_code=0, started_at=1, stopped_at=2)])
        assert max(len(batch) for batch in items.values()) >= 4  # some node reports two jobs at once
        c.sent.clear()
        for node, batch in items.items():
            c.engine.handle(node, p.Reports(items=batch))
        c.engine.step()
        assert [j.status for j in jobs] == [JobStatus.SUCCEEDED, JobStatus.RUNNING, JobStatus.SUCCEEDED,
                                            JobStatus.SUCCEEDED]
        acks = {n: m.attempt_ids for n, m in c.sent if isinstance(m, p.AckExits)}  # one message per node
        assert len([m for _n, m in c.sent if isinstance(m, p.AckExits)]) == len(acks)
        assert sorted(a for ids in acks.values() for a in ids) == sorted(
            attempts[j].attempt_id for j in ("ok-1", "ok-2", "ok-3"))
        assert c.engine.faults.failed == {"exited": 1}  # the poisoned one, counted alone; resent later

    asyncio.run(run())


def test_the_fleet_sends_single_starts_to_a_node_that_did_not_say_batches(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        public, secret = zmq.curve_keypair()
        fleet = Fleet("tcp://127.0.0.1:0", c.engine, keys=NodeKeyRegistry(tmp_path / "keys"),
                      curve=KeyPair(public, secret), settings=FleetSettings("h1", 1.0, 3))
        try:
            facts = {n: p.NodeFacts(name=n, hostname=n, addresses=[], vcpus=4, memory_mib=4096) for n in ("n1", "n2")}
            fleet._on_register("n1", p.Register(instance_id="1", node=facts["n1"], batches=True), True)
            fleet._on_register("n2", p.Register(instance_id="2", node=facts["n2"]), True)  # an older agent
            assert c.engine.commits.batches_for("n1") and not c.engine.commits.batches_for("n2")
            batch = p.Orders(items=[order("a1"), order("a2")])
            fleet.send("n1", batch)
            fleet.send("n2", p.Orders(items=[order("b1"), order("b2")]))
            held = {n: [p.decode_from_head(d) for d in fleet._held[n]] for n in ("n1", "n2")}  # no connection yet
            assert [type(m) for m in held["n1"]] == [p.Welcome, p.Orders]
            assert held["n1"][0].batches  # the head takes Reports
            assert [m.attempt_id for m in held["n2"] if isinstance(m, p.StartAttempt)] == ["b1", "b2"]
            assert not any(isinstance(m, p.Orders) for m in held["n2"])
        finally:
            fleet.close()

    asyncio.run(run())


# ------------------------------------------------------------------ older peers on the wire
class _OlderWelcome(msgspec.Struct, tag_field="t", tag="welcome", kw_only=True):
    """A Welcome as an agent from before the batches flag reads it."""

    epoch: int = 0
    head_id: str
    heartbeat_interval_s: float
    liveness: int


def test_the_flags_default_off_and_an_older_peer_reads_past_them() -> None:
    older_head = msgspec.msgpack.encode({"t": "welcome", "head_id": "h", "heartbeat_interval_s": 1.0, "liveness": 3})
    assert p.decode_from_head(older_head).batches is False  # an older head: the agent sends single reports
    facts = p.NodeFacts(name="n1", hostname="n1", addresses=[], vcpus=1, memory_mib=64)
    older_agent = msgspec.msgpack.encode({"t": "register", "instance_id": "i", "node": facts})
    assert p.decode_from_agent(older_agent).batches is False  # an older agent: the head sends single starts
    new = p.encode(p.Welcome(head_id="h", heartbeat_interval_s=1.0, liveness=3, batches=True))
    assert msgspec.msgpack.decode(new, type=_OlderWelcome).head_id == "h"  # unknown field: ignored
