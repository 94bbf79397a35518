"""The head<->agent conversation, both peers real and wired in memory: no sockets, no processes.

As h11 tests two peers talking, a real head ``Engine`` (a real SQLite store in a temp dir,
the real scheduler) talks to one or more real ``AgentState`` peers through a ``Wire``: a list
of messages each way that the test delivers, drops, duplicates, reorders or holds. Time is
passed in (``Clock``); nothing sleeps.

Two small doubles stand at the foreign boundaries only:

* ``HeadShell`` does what hpcbatch/head/fleet.py does with a frame once the socket has it
  (Register -> ``on_register`` and a Welcome; an unregistered node is asked to Reregister;
  a heartbeat is answered with a HeadHeartbeat; the rest -> ``engine.handle``), then runs
  the engine's step, whose committed outbox is the engine's ``send`` (the wire).
* ``Runner`` turns the agent's ``StartJob`` / ``SignalJob`` effects into the facts a real
  runner reports (``AttemptRunning``, ``AttemptEnded``), and keeps the one ledger the
  invariants read: which attempts of which job run on which node, right now.

The scenarios walk the conversation's known hard cases; the property throws random drop,
duplicate, reorder and head-restart schedules at it and checks that every job ends in
exactly one terminal state, no job runs twice at once, and nothing is lost; with a fence,
the head also loses nodes it has not heard and retries their attempts once they are surely
fenced. A schedule that lost a node while its attempt was still starting found a double run
(reports.py's on_register freed the held retry): the scenario that reproduces it stays below.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcbatch import protocol as p
from hpcbatch.head.engine import Engine, EngineOptions
from hpcbatch.head.logs import LogStore
from hpcbatch.model.jobs import JobRecord, ResourceRequest
from hpcbatch.model.lifecycle import JobStatus
from hpcbatch.store.sqlite import SqliteStore
from node_agent import state as s

LOST_AFTER_S = 3.0  # the head's liveness deadline in the property (fleet.py's judge)
TERMINAL = {JobStatus.SUCCEEDED.value, JobStatus.FAILED.value}


class Clock:
    """The one clock of a test (seconds), moved by hand; both peers read it."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> s.Now:
        return s.Now(monotonic=self.t, wall_ms=self.ms())

    def ms(self) -> int:
        return int(1_700_000_000_000 + self.t * 1000)


@dataclass
class Wire:
    """Messages in flight: ``down[node]`` head -> agent, ``up[node]`` agent -> head, oldest first."""

    down: dict[str, list[p.Message]] = field(default_factory=dict)
    up: dict[str, list[p.Message]] = field(default_factory=dict)

    def to_agent(self, node: str, msg: p.Message) -> None:
        self.down.setdefault(node, []).append(msg)

    def to_head(self, node: str, msg: p.Message) -> None:
        self.up.setdefault(node, []).append(msg)

    @staticmethod
    def take(queue: dict[str, list[p.Message]], node: str, kind: type | None = None) -> list[p.Message]:
        """Remove (and return) ``node``'s messages of ``kind`` (all where None) from ``queue``."""
        msgs = queue.get(node, [])
        taken = [m for m in msgs if kind is None or isinstance(m, kind)]
        queue[node] = [m for m in msgs if m not in taken]
        return taken


@dataclass
class World:
    """What runs where, as the runners know it: the invariants' ledger."""

    running: dict[str, dict[str, str]] = field(default_factory=dict)  # job id -> attempt id -> node
    starts: list[tuple[str, str]] = field(default_factory=list)  # (job id, attempt id), every start
    overlaps: list[str] = field(default_factory=list)  # a job started while it ran elsewhere

    def started(self, node: str, job_id: str, attempt_id: str) -> None:
        if self.running.get(job_id):
            self.overlaps.append(f"{job_id}: {attempt_id} on {node} while {self.running[job_id]} runs")
        self.running.setdefault(job_id, {})[attempt_id] = node
        self.starts.append((job_id, attempt_id))


class Runner:
    """The agent's foreign boundary (processes): effects in, the facts a real runner reports out."""

    def __init__(self, node: str, world: World, clock: Clock) -> None:
        self.node, self.world, self.clock = node, world, clock
        self.procs: dict[str, str] = {}  # attempt id -> job id, running
        self.pulling: dict[str, str] = {}  # attempt id -> job id, ordered but not started (``slow``)
        self.slow = False  # starts wait (an image pull) until ``pulled``
        self.signals: list[str] = []  # attempt ids signalled while they ran (or were being started)
        self._pid = 100

    def perform(self, effect: s.Effect) -> list[s.Stimulus]:
        if isinstance(effect, s.StartJob):
            if self.slow:
                self.pulling[effect.order.attempt_id] = effect.order.job_id
                return []
            return [self.start(effect.order.attempt_id, effect.order.job_id)]
        if isinstance(effect, s.SignalJob) and effect.attempt_id in self.procs:
            self.signals.append(effect.attempt_id)
            return [self.exit(effect.attempt_id, None, reason=effect.reason, fenced=effect.fenced)]
        if isinstance(effect, s.SignalJob) and effect.attempt_id in self.pulling:  # killed before it ran
            self.signals.append(effect.attempt_id)
            job_id = self.pulling.pop(effect.attempt_id)
            return [s.AttemptEnded(p.AttemptExited(attempt_id=effect.attempt_id, job_id=job_id, exit_code=None,
                                                   reason=effect.reason, stopped_at=self.clock.ms(),
                                                   fenced=effect.fenced))]
        return []

    def start(self, attempt_id: str, job_id: str) -> s.AttemptRunning:
        """The command of ``attempt_id`` starts now."""
        self._pid += 1
        self.procs[attempt_id] = job_id
        self.world.started(self.node, job_id, attempt_id)
        return s.AttemptRunning(attempt_id, job_id, self._pid, self.clock.ms())

    def pulled(self) -> list[s.AttemptRunning]:
        """The pull is done: every attempt waiting on it starts."""
        self.slow = False
        pulling, self.pulling = self.pulling, {}
        return [self.start(attempt_id, job_id) for attempt_id, job_id in pulling.items()]

    def exit(self, attempt_id: str, code: int | None, reason: str | None = None, fenced: bool = False) -> s.AttemptEnded:
        """The process of ``attempt_id`` ended with ``code``: the fact the runner reports."""
        job_id = self.procs.pop(attempt_id)
        self.world.running.get(job_id, {}).pop(attempt_id, None)
        return s.AttemptEnded(p.AttemptExited(attempt_id=attempt_id, job_id=job_id, exit_code=code, reason=reason,
                                              started_at=self.clock.ms(), stopped_at=self.clock.ms(), fenced=fenced))


class Peer:
    """One node: a real AgentState, its runner double, and its end of the wire."""

    def __init__(self, name: str, wire: Wire, world: World, clock: Clock, fence_after_s: float = 0.0) -> None:
        self.name, self.wire, self.clock = name, wire, clock
        facts = p.NodeFacts(name=name, hostname=name, addresses=[], vcpus=2, memory_mib=1024,
                            fence_after_s=fence_after_s)
        self.state = s.AgentState(s.AgentIdentity(f"{name}-1", facts), epoch=0, heartbeat_interval_s=1.0,
                                  liveness=3, now=clock.now())
        self.runner = Runner(name, world, clock)
        self.effects: list[s.Effect] = []  # every effect, for the scenarios to read

    def feed(self, stimulus: s.Stimulus) -> None:
        effects = self.state.handle(stimulus, self.clock.now())
        self.effects += effects
        facts: list[s.Stimulus] = []
        for effect in effects:
            if isinstance(effect, s.SendToHead):
                self.wire.to_head(self.name, effect.message)
            else:
                facts += self.runner.perform(effect)
        for fact in facts:
            self.feed(fact)

    def pulled(self) -> None:
        """The runner's image pull is done: the attempts waiting on it start, and the state hears so."""
        for fact in self.runner.pulled():
            self.feed(fact)

    def exit(self, attempt_id: str, code: int = 0) -> None:
        self.feed(self.runner.exit(attempt_id, code))

    def deliver(self, kind: type | None = None) -> int:
        """Hand the agent every waiting head message (of ``kind``); how many."""
        msgs = Wire.take(self.wire.down, self.name, kind)
        for msg in msgs:
            self.feed(msg)
        return len(msgs)

    def of_kind(self, kind: type) -> list[Any]:
        return [e for e in self.effects if isinstance(e, kind)]


class HeadShell:
    """A real Engine over a real store, behind the part of fleet.py that reads a frame."""

    def __init__(self, path: Path, wire: Wire, clock: Clock, fence_after_s: float = 0.0) -> None:
        self.wire, self.clock = wire, clock
        self.head_id = uuid.uuid4().hex
        self.registered: set[str] = set()
        self.heard: dict[str, float] = {}  # node -> when the head last heard it (its clock)
        self.engine = Engine(SqliteStore(path / "db.sqlite"), LogStore(path / "logs"), send=wire.to_agent,
                             clock_ms=clock.ms, monotonic=lambda: clock.t,
                             options=EngineOptions(fence_after_s=fence_after_s, heartbeat_interval_s=1.0))
        self.engine.compute_environment_changed(
            {"computeEnvironmentName": "default", "state": "ENABLED", "computeResources": {}})
        self.engine.job_queue_changed({"jobQueueName": "q", "state": "ENABLED", "priority": 1,
                                       "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": "default"}]})
        self.engine.recover()
        self.engine.step()

    def receive(self, node: str, msg: p.Message) -> None:
        """What fleet.py does with one frame from ``node``, then the engine's step (commit, send)."""
        self.heard[node] = self.clock.t
        if isinstance(msg, p.Register):
            welcome = self.engine.on_register(node, msg)
            self.registered.add(node)
            if welcome is not None:
                welcome.head_id, welcome.heartbeat_interval_s, welcome.liveness = self.head_id, 1.0, 3
                welcome.echo = msg.sent_at
                self.wire.to_agent(node, welcome)
        elif node not in self.registered:
            self.wire.to_agent(node, p.Reregister())
        else:
            if isinstance(msg, p.AgentHeartbeat):
                self.wire.to_agent(node, p.HeadHeartbeat(head_id=self.head_id, echo=msg.sent_at))
            self.engine.handle(node, msg)  # type: ignore[arg-type]
        self.engine.step()

    def check_liveness(self, deadline_s: float) -> None:
        """What fleet.py's heartbeat loop does each beat: nodes silent past ``deadline_s`` are lost
        (and must register again); held retries whose fence time has come are released."""
        for node in sorted(self.registered):
            silent = self.clock.t - self.heard.get(node, self.clock.t)
            if silent > deadline_s:
                self.registered.discard(node)
                self.engine.node_lost(node, silent)
        self.engine.expire_fences()
        self.engine.step()

    def deliver(self, node: str, kind: type | None = None) -> int:
        """Hand the head every waiting message from ``node`` (of ``kind``); how many."""
        msgs = Wire.take(self.wire.up, node, kind)
        for msg in msgs:
            self.receive(node, msg)
        return len(msgs)

    def submit(self, job_id: str, retry_attempts: int = 1) -> None:
        job = JobRecord(job_id=job_id, job_name=job_id, job_queue="q", job_queue_arn="arn:q", job_definition="arn:d",
                        owner="alice", status=JobStatus.SUBMITTED, created_at=self.clock.ms(), command=["true"],
                        environment={}, resources=ResourceRequest(vcpus=1, memory_mib=64), container={},
                        retry_attempts=retry_attempts)
        self.engine.submit(job)
        self.engine.step()

    def status(self, job_id: str) -> JobStatus:
        live = self.engine.job(job_id)
        return live.status if live is not None else self.engine.store.get_jobs([job_id])[0].status

    def statuses(self, job_id: str) -> list[str]:
        """The job's status events, as stored."""
        return [status for _at, status, _reason in self.engine.store.job_events(job_id)]


class Conversation:
    """A head and its agents over one wire; ``pump`` delivers until nothing is in flight."""

    def __init__(self, path: Path, nodes: tuple[str, ...] = ("n1",), fence_after_s: float = 0.0) -> None:
        self.path, self.wire, self.world, self.clock = path, Wire(), World(), Clock()
        self.fence_after_s = fence_after_s
        self.cut: set[str] = set()  # nodes whose every message, either way, is lost
        self.head = HeadShell(path, self.wire, self.clock, fence_after_s)
        self.peers = {name: Peer(name, self.wire, self.world, self.clock, fence_after_s) for name in nodes}
        for peer in self.peers.values():
            peer.feed(s.Connected())
        self.pump()

    def pump(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            for name in self.cut:
                Wire.take(self.wire.up, name)
                Wire.take(self.wire.down, name)
            moved = sum(self.head.deliver(name) for name in self.peers)
            moved += sum(peer.deliver() for peer in self.peers.values())
            if not moved:
                return

    def tick(self, seconds: float = 1.0) -> None:
        """Time passes: every agent beats."""
        self.clock.t += seconds
        for peer in self.peers.values():
            peer.feed(s.Tick())

    def restart_head(self) -> None:
        """The head dies (kill -9: what it had not committed is gone) and starts over the same store."""
        self.head.engine.store.close()
        self.head = HeadShell(self.path, self.wire, self.clock, self.fence_after_s)

    def only_attempt(self, peer: Peer) -> str:
        (attempt_id,) = peer.runner.procs
        return attempt_id


def conversation_test(body: Any) -> Any:
    """Run ``body(tmp_path)`` inside an event loop (the engine asks it for its steps; the test runs them)."""
    def run(tmp_path: Path) -> None:
        async def inside() -> None:
            body(tmp_path)
        asyncio.run(inside())
    run.__name__, run.__doc__ = body.__name__, body.__doc__
    return run


# ------------------------------------------------------------------------------ scenarios
@conversation_test
def test_submit_start_exit_ack_succeeds(tmp_path: Path) -> None:
    c = Conversation(tmp_path)
    n1 = c.peers["n1"]
    c.head.submit("j1")
    c.pump()
    assert c.head.status("j1") is JobStatus.RUNNING
    attempt_id = c.only_attempt(n1)
    n1.exit(attempt_id, 0)
    c.pump()
    assert c.head.status("j1") is JobStatus.SUCCEEDED
    assert [e.attempt_id for e in n1.of_kind(s.ForgetAttempt)] == [attempt_id]  # acknowledged: forgotten
    assert n1.state.attempts == {} and n1.state.unacked() == []
    assert c.head.statuses("j1") == ["SUBMITTED", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED"]
    assert c.world.starts == [("j1", attempt_id)]


@conversation_test
def test_a_lost_attempt_started_reply_is_made_good_by_the_heartbeat(tmp_path: Path) -> None:
    c = Conversation(tmp_path)
    n1 = c.peers["n1"]
    c.head.submit("j1")
    n1.deliver()
    assert Wire.take(c.wire.up, "n1", p.AttemptStarted)  # lost on the way
    c.pump()
    assert c.head.status("j1") is JobStatus.STARTING
    c.tick()
    c.pump()  # the heartbeat lists the attempt: the head knows it runs
    assert c.head.status("j1") is JobStatus.RUNNING
    n1.exit(c.only_attempt(n1), 0)
    c.pump()
    assert c.head.status("j1") is JobStatus.SUCCEEDED and len(c.world.starts) == 1


@conversation_test
def test_a_duplicated_start_runs_once_and_is_answered_again(tmp_path: Path) -> None:
    c = Conversation(tmp_path)
    n1 = c.peers["n1"]
    c.head.submit("j1")
    (start,) = c.wire.down["n1"]
    assert isinstance(start, p.StartAttempt)
    c.wire.down["n1"].append(start)  # the same order twice, while the first is still starting
    n1.runner.slow = True
    n1.deliver()
    assert len(n1.of_kind(s.StartJob)) == 1 and c.wire.up.get("n1") == []
    n1.pulled()
    n1.feed(start)  # a third copy, once it runs: the head may have lost the answer, it gets it again
    answers = Wire.take(c.wire.up, "n1", p.AttemptStarted)
    assert [m.attempt_id for m in answers] == [start.attempt_id] * 2
    for answer in answers:
        c.head.receive("n1", answer)
    assert c.head.status("j1") is JobStatus.RUNNING
    n1.exit(start.attempt_id, 0)
    c.pump()
    n1.feed(start)  # a late copy after the exit was acknowledged: nothing runs again
    assert c.head.status("j1") is JobStatus.SUCCEEDED
    assert c.world.starts == [("j1", start.attempt_id)] and c.wire.up.get("n1") == []


@conversation_test
def test_a_lost_exit_report_is_resent_with_the_heartbeat(tmp_path: Path) -> None:
    c = Conversation(tmp_path)
    n1 = c.peers["n1"]
    c.head.submit("j1")
    c.pump()
    attempt_id = c.only_attempt(n1)
    n1.exit(attempt_id, 0)
    assert Wire.take(c.wire.up, "n1", p.AttemptExited)  # lost on the way
    c.pump()
    assert c.head.status("j1") is JobStatus.RUNNING and n1.state.unacked()
    c.tick()
    c.pump()
    assert c.head.status("j1") is JobStatus.SUCCEEDED
    assert n1.state.unacked() == [] and c.head.statuses("j1").count("SUCCEEDED") == 1
    c.tick()
    c.pump()  # nothing is resent once acknowledged
    assert not [m for m in c.wire.up.get("n1", []) if isinstance(m, p.AttemptExited)]


@conversation_test
def test_a_restarted_head_adopts_the_running_attempt_and_takes_the_unacknowledged_exit(tmp_path: Path) -> None:
    c = Conversation(tmp_path)
    n1 = c.peers["n1"]
    c.head.submit("run")
    c.head.submit("done")
    c.pump()
    attempts = {job: a for a, job in n1.runner.procs.items()}
    n1.exit(attempts["done"], 0)
    assert Wire.take(c.wire.up, "n1", p.AttemptExited)  # the head dies before it hears the exit
    c.restart_head()
    assert c.head.status("done") is JobStatus.RUNNING and c.head.status("run") is JobStatus.RUNNING
    c.tick()
    c.pump()  # heartbeat -> Reregister -> Register (running: run; exited: done) -> Welcome, AckExits
    assert c.head.status("done") is JobStatus.SUCCEEDED
    assert c.head.status("run") is JobStatus.RUNNING
    assert n1.state.unacked() == [] and n1.runner.signals == []
    for _ in range(8):  # anti-entropy finds nothing amiss with the adopted attempt
        c.tick()
        c.pump()
    assert c.head.status("run") is JobStatus.RUNNING
    n1.exit(attempts["run"], 0)
    c.pump()
    assert c.head.status("run") is JobStatus.SUCCEEDED
    assert sorted(c.world.starts) == sorted(attempts.items())


@conversation_test
def test_a_terminate_that_crosses_the_exit_ends_the_job_once(tmp_path: Path) -> None:
    c = Conversation(tmp_path)
    n1 = c.peers["n1"]
    c.head.submit("j1", retry_attempts=3)
    c.pump()
    attempt_id = c.only_attempt(n1)
    n1.exit(attempt_id, 0)  # the exit is on its way up...
    job = c.head.engine.job("j1")
    assert job is not None
    c.head.engine.terminate(job, "stop it")  # ...as the head orders the kill down
    c.head.engine.step()
    assert n1.deliver(p.KillAttempt) == 1
    assert n1.runner.signals == [] and not n1.of_kind(s.SignalJob)  # it had ended: nothing to kill
    c.pump()
    assert c.head.status("j1") is JobStatus.FAILED  # terminated: not a success, and never retried
    assert c.head.statuses("j1").count("FAILED") == 1 and c.head.statuses("j1")[-1] == "FAILED"
    assert len(c.world.starts) == 1 and n1.state.unacked() == []


@conversation_test
def test_a_cancel_that_crosses_the_start_leaves_the_job_running(tmp_path: Path) -> None:
    """CancelJob ends only jobs not yet STARTING (as AWS): one whose start is on its way runs on."""
    c = Conversation(tmp_path)
    n1 = c.peers["n1"]
    c.head.submit("j1")
    job = c.head.engine.job("j1")
    assert job is not None and job.status is JobStatus.STARTING
    c.head.engine.cancel(job, "never mind")
    c.head.engine.step()
    c.pump()
    assert c.head.status("j1") is JobStatus.RUNNING
    n1.exit(c.only_attempt(n1), 0)
    c.pump()
    assert c.head.status("j1") is JobStatus.SUCCEEDED



@conversation_test
def test_a_cut_off_nodes_attempt_is_fenced_before_its_retry_runs_elsewhere(tmp_path: Path) -> None:
    fence_s = 10.0
    c = Conversation(tmp_path, nodes=("n1", "n2"), fence_after_s=fence_s)
    c.head.submit("j1", retry_attempts=2)
    c.pump()
    (node,) = [n for n, peer in c.peers.items() if peer.runner.procs]
    first = c.only_attempt(c.peers[node])
    c.cut.add(node)  # the link to it fails, both ways; it runs on, unheard
    for _ in range(int(fence_s) * 3):
        c.tick()
        c.pump()
        c.head.check_liveness(deadline_s=3.0)
        assert c.world.overlaps == []  # at no moment do two attempts of j1 run
    assert c.peers[node].runner.signals == [first]  # its agent fenced it...
    (other,) = [n for n in c.peers if n != node]
    assert c.peers[other].runner.procs  # ...and only then did the retry start elsewhere
    assert c.head.status("j1") is JobStatus.RUNNING
    c.cut.clear()  # the link heals: the fenced exit is reported, and changes nothing
    for _ in range(3):
        c.tick()
        c.pump()
    assert c.peers[node].state.unacked() == [] and c.head.status("j1") is JobStatus.RUNNING
    c.peers[other].exit(c.only_attempt(c.peers[other]), 0)
    c.pump()
    assert c.head.status("j1") is JobStatus.SUCCEEDED
    assert c.head.statuses("j1").count("SUCCEEDED") == 1 and len(c.world.starts) == 2



@conversation_test
def test_an_attempt_still_starting_when_its_node_was_lost_does_not_run_beside_its_retry(tmp_path: Path) -> None:
    """The node pulls the image (the attempt is STARTING, so no Register or heartbeat lists it)
    when the link fails for longer than the head's liveness deadline but shorter than the
    fence. It comes back, registers listing nothing: that must not prove the attempt over."""
    c = Conversation(tmp_path, nodes=("n1", "n2"), fence_after_s=10.0)
    c.head.submit("j1", retry_attempts=2)
    (node,) = [n for n, q in c.wire.down.items() if any(isinstance(m, p.StartAttempt) for m in q)]
    slow = c.peers[node]
    slow.runner.slow = True  # the image is being pulled
    c.pump()
    assert c.head.status("j1") is JobStatus.STARTING and slow.of_kind(s.StartJob)
    c.cut.add(node)
    for _ in range(5):  # lost by the head (3 s), not yet fenced by the agent (10 s)
        c.tick()
        c.pump()
        c.head.check_liveness(deadline_s=3.0)
    assert c.head.status("j1") is JobStatus.RUNNABLE and not slow.state.fenced
    c.cut.clear()
    c.tick()
    c.pump()  # heartbeat -> Reregister -> Register (running: nothing yet) -> Welcome
    slow.pulled()  # the pull is done: it runs, unless it was killed meanwhile
    for _ in range(12):
        c.tick()
        c.pump()
        c.head.check_liveness(deadline_s=3.0)
        assert c.world.overlaps == []
    for peer in c.peers.values():
        for attempt_id in sorted(peer.runner.procs):
            peer.exit(attempt_id, 0)
    c.pump()
    assert c.world.overlaps == [] and c.head.status("j1").is_final


# ---------------------------------------------------------------------- the property
OPS = st.sampled_from(["deliver_up", "deliver_down", "drop_up", "drop_down", "dup_up", "dup_down",
                       "reorder_up", "reorder_down", "tick", "exit0", "exit1", "restart"])


def _fault(c: Conversation, op: str, node: str, k: int) -> None:
    """One step of a schedule: move, lose, copy or swap message ``k`` of ``node``, or let time or a job pass."""
    queue = c.wire.up if op.endswith("_up") else c.wire.down
    msgs = queue.setdefault(node, [])
    i = k % len(msgs) if msgs else 0
    if op == "deliver_up" and msgs:
        c.head.receive(node, msgs.pop(i))
    elif op == "deliver_down" and msgs:
        c.peers[node].feed(msgs.pop(i))
    elif op.startswith("drop") and msgs:
        msgs.pop(i)
    elif op.startswith("dup") and msgs:
        msgs.insert(i, msgs[i])
    elif op.startswith("reorder") and len(msgs) > 1:
        msgs.insert(0, msgs.pop(i))
    elif op == "tick":
        _beat(c)
    elif op in ("exit0", "exit1") and c.peers[node].runner.procs:
        procs = sorted(c.peers[node].runner.procs)
        c.peers[node].exit(procs[k % len(procs)], 0 if op == "exit0" else 1)
    elif op == "restart":
        c.restart_head()


def _beat(c: Conversation) -> None:
    """A second passes: every agent beats; with a fence, the head judges who is lost (fleet.py's loop)."""
    c.tick()
    if c.fence_after_s:
        c.head.check_liveness(deadline_s=LOST_AFTER_S)


def _settle(c: Conversation, jobs: list[str]) -> None:
    """No more faults: time passes, messages arrive, every job's command exits 0, until all are final."""
    for _ in range(60):
        if all(c.head.status(j).is_final for j in jobs):
            break
        _beat(c)
        c.pump()
        for peer in c.peers.values():
            for attempt_id in sorted(peer.runner.procs):
                peer.exit(attempt_id, 0)
        c.pump()
    _beat(c)
    c.pump()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fence_after_s=st.sampled_from([0.0, 5.0]), jobs=st.integers(1, 4),
       schedule=st.lists(st.tuples(OPS, st.sampled_from(["n1", "n2"]), st.integers(0, 7)), max_size=60))
def test_any_schedule_of_losses_and_copies_ends_every_job_once_and_runs_none_twice_at_once(
    fence_after_s: float, jobs: int, schedule: list[tuple[str, str, int]],
) -> None:
    """With a fence (``fence_after_s``), the head also loses nodes it has not heard for
    ``LOST_AFTER_S`` and retries their attempts elsewhere once they are surely fenced."""
    async def run(path: Path) -> None:
        c = Conversation(path, nodes=("n1", "n2"), fence_after_s=fence_after_s)
        job_ids = [f"j{i}" for i in range(jobs)]
        for job_id in job_ids:
            c.head.submit(job_id, retry_attempts=3)
        for op, node, k in schedule:
            _fault(c, op, node, k)
            assert c.world.overlaps == []
        _settle(c, job_ids)
        assert c.world.overlaps == []
        for job_id in job_ids:  # nothing lost: each ended, exactly once
            assert c.head.status(job_id).is_final, (job_id, c.head.status(job_id))
            assert [st for st in c.head.statuses(job_id) if st in TERMINAL] == [c.head.status(job_id).value]
        for peer in c.peers.values():  # nothing left behind: no process, no unacknowledged exit
            assert peer.runner.procs == {} and peer.state.unacked() == []
        c.head.engine.store.close()

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(Path(tmp)))
