"""Properties of the agent's conversation under random interleavings (hypothesis).

A scripted head and a scripted runner talk to one ``AgentState`` over a wire that may lose
what the agent sends; orders are delivered any number of times, in any order, with kills,
acknowledgements, heartbeats and head restarts between them. Whatever happens:

* a job order delivered twice (or ten times, or after its exit was acknowledged) starts
  the job once;
* every exit is reported until it is acknowledged: each heartbeat and each Register carry
  it, and once a beat gets through the head has it; after the ack it is never sent again;
* what the agent lists as running is exactly what the runner runs.

Orders come alone or in batches (``Orders``); what one stimulus makes the agent send goes
through ``coalesce`` as the shell sends it (one ``Reports`` where the head takes them), and a
lost batch loses all its reports at once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from hpcbatch import protocol as p
from node_agent import state as s
from tests.unit.test_agent_state import exited, order

ATTEMPTS = ["a1", "a2", "a3"]


@dataclass
class World:
    """The two peers around the agent: what the runner runs and what the head has heard."""

    agent: s.AgentState
    t: float = 1000.0
    epoch: int = 0
    ordered: Counter[str] = field(default_factory=Counter)  # StartJob effects per attempt
    runs: set[str] = field(default_factory=set)  # the runner's live attempts
    ended: set[str] = field(default_factory=set)  # attempts the runner reported ended
    head_exits: set[str] = field(default_factory=set)  # exits the head received
    acked: set[str] = field(default_factory=set)
    sent_after_ack: list[str] = field(default_factory=list)

    def now(self) -> s.Now:
        return s.Now(monotonic=self.t, wall_ms=int(self.t * 1000))

    def feed(self, stimulus: s.Stimulus, lose: bool = False) -> list[s.Effect]:
        effects = self.agent.handle(stimulus, self.now())
        wake_up: list[p.Message] = []
        for effect in effects:
            if isinstance(effect, s.StartJob):
                self.ordered[effect.order.attempt_id] += 1
            elif isinstance(effect, s.SendToHead):
                wake_up.append(effect.message)
        if not lose:
            for message in s.coalesce(wake_up, self.agent.head_batches):
                self._head_receives(message)
        return effects

    def _head_receives(self, message: p.Message) -> None:
        if isinstance(message, p.Reports):
            for item in message.items:
                self._head_receives(item)
            return
        exits = [message] if isinstance(message, p.AttemptExited) else getattr(message, "exited", [])
        for report in exits:
            self.head_exits.add(report.attempt_id)
            if report.attempt_id in self.acked:
                self.sent_after_ack.append(report.attempt_id)


# (what happens, to which attempt, whether what the agent sends in reply is lost on the wire);
# for "restart" the flag says whether the new head has a new epoch instead.
STEP = st.tuples(st.sampled_from(["order", "orders", "run", "end", "kill", "ack", "beat", "restart"]), st.sampled_from(ATTEMPTS),
                 st.booleans())


def _order(world: World, attempt_id: str, lose: bool) -> None:
    world.feed(order(attempt_id, epoch=world.epoch), lose)


def _orders(world: World, attempt_id: str, lose: bool) -> None:
    """A batch of two orders, starting with ``attempt_id``."""
    first = ATTEMPTS.index(attempt_id)
    batch = [order(a) for a in (ATTEMPTS * 2)[first:first + 2]]
    world.feed(p.Orders(items=batch, epoch=world.epoch), lose)


def _run(world: World, attempt_id: str, lose: bool) -> None:
    if world.ordered[attempt_id] and attempt_id not in world.runs and attempt_id not in world.ended:
        world.runs.add(attempt_id)
        world.feed(s.AttemptRunning(attempt_id, "job-" + attempt_id, 100, 5), lose)


def _end(world: World, attempt_id: str, lose: bool) -> None:
    if world.ordered[attempt_id] and attempt_id not in world.ended:  # ran and exited, or was refused
        world.runs.discard(attempt_id)
        world.ended.add(attempt_id)
        world.feed(s.AttemptEnded(exited(attempt_id, 0)), lose)


def _kill(world: World, attempt_id: str, lose: bool) -> None:
    world.feed(p.KillAttempt(attempt_id=attempt_id, reason="Terminated", epoch=world.epoch), lose)


def _ack(world: World, attempt_id: str, lose: bool) -> None:
    if attempt_id in world.head_exits and not lose:  # the head acknowledges what it has; lost: never arrives
        world.acked.add(attempt_id)
        world.feed(p.AckExits(attempt_ids=[attempt_id], epoch=world.epoch))


def _beat(world: World, attempt_id: str, lose: bool) -> None:
    world.t += 1.0
    world.feed(p.HeadHeartbeat(head_id=world.agent.head_id or "h0", echo=world.t, epoch=world.epoch))
    world.feed(s.Tick(), lose=lose)


def _restart(world: World, attempt_id: str, new_epoch: bool) -> None:
    world.epoch += new_epoch
    head_id = f"h{world.t}"
    world.feed(p.HeadHeartbeat(head_id=head_id, echo=world.t, epoch=world.epoch))
    world.feed(p.Welcome(head_id=head_id, heartbeat_interval_s=1.0, liveness=3, epoch=world.epoch, echo=world.t,
                         batches=int(world.t) % 2 == 0))  # an older head, or one that takes Reports


STEPS = {"order": _order, "orders": _orders, "run": _run, "end": _end, "kill": _kill, "ack": _ack, "beat": _beat, "restart": _restart}


def _step(world: World, kind: str, attempt_id: str, flag: bool) -> None:
    STEPS[kind](world, attempt_id, flag)


def _new_world() -> World:
    facts = p.NodeFacts(name="n1", hostname="n1", addresses=[], vcpus=4, memory_mib=4096, fence_after_s=60.0)
    now = s.Now(monotonic=1000.0, wall_ms=1_000_000)
    world = World(s.AgentState(s.AgentIdentity("i", facts), epoch=0, heartbeat_interval_s=1.0, liveness=3, now=now))
    world.feed(p.Welcome(head_id="h0", heartbeat_interval_s=1.0, liveness=3, echo=1000.0, batches=True))
    return world


@settings(max_examples=300, deadline=None)
@given(st.lists(STEP, max_size=60))
def test_an_order_delivered_any_number_of_times_starts_its_job_once(steps: list) -> None:
    world = _new_world()
    for step in steps:
        _step(world, *step)
        assert all(count == 1 for count in world.ordered.values()), world.ordered


@settings(max_examples=300, deadline=None)
@given(st.lists(STEP, max_size=60))
def test_every_exit_is_reported_until_acknowledged_and_never_after(steps: list) -> None:
    world = _new_world()
    for step in steps:
        _step(world, *step)
        owed = world.ended - world.acked
        assert {e.attempt_id for e in world.agent.unacked()} == owed
        assert {e.attempt_id for e in world.agent.register_message(world.now()).exited} == owed
        assert world.sent_after_ack == []
    world.feed(s.Tick())  # one beat that gets through: the head has every exit
    assert world.ended - world.acked <= world.head_exits


@settings(max_examples=200, deadline=None)
@given(st.lists(STEP, max_size=60))
def test_what_the_agent_lists_as_running_is_what_the_runner_runs(steps: list) -> None:
    world = _new_world()
    for step in steps:
        _step(world, *step)
        assert {a for a, _r in world.agent.running()} == world.runs
        assert {r.attempt_id for r in world.agent.register_message(world.now()).running} == world.runs
