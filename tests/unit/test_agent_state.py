"""The agent's side of the head<->agent conversation, driven with messages: no sockets, no processes.

As h11 tests its two peers, these feed ``AgentState`` what a head and the runner would say
and assert on the effects it answers with (node_agent/state.py holds the rules).
"""

from __future__ import annotations

import logging

from hpcbatch import protocol as p
from node_agent import state as s
from node_agent.runner import CANNOT_START

FENCE_S = 30.0


def _facts(fence_after_s: float = FENCE_S) -> p.NodeFacts:
    return p.NodeFacts(name="n1", hostname="n1", addresses=["127.0.0.1"], vcpus=4, memory_mib=4096,
                       fence_after_s=fence_after_s)


class Clock:
    """Both clocks of a test, moved by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> s.Now:
        return s.Now(monotonic=self.t, wall_ms=int(1_700_000_000_000 + self.t * 1000))

    def advance(self, seconds: float) -> s.Now:
        self.t += seconds
        return self.now()


class Agent:
    """An AgentState and its clock, with a few ways to speak to it."""

    def __init__(self, *, epoch: int = 0, heads: int = 1, fence_after_s: float = FENCE_S) -> None:
        self.clock = Clock()
        self.state = s.AgentState(s.AgentIdentity("inst-1", _facts(fence_after_s), head_count=heads), epoch=epoch,
                                  heartbeat_interval_s=1.0, liveness=3, now=self.clock.now())

    def feed(self, stimulus: s.Stimulus) -> list[s.Effect]:
        return self.state.handle(stimulus, self.clock.now())

    def welcome(self, head_id: str = "head-a", epoch: int = 0, **kw: object) -> list[s.Effect]:
        return self.feed(p.Welcome(head_id=head_id, heartbeat_interval_s=1.0, liveness=3, epoch=epoch,
                                   echo=self.clock.t, **kw))

    def start(self, attempt_id: str = "a1", epoch: int = 0, **kw: object) -> list[s.Effect]:
        return self.feed(order(attempt_id, epoch, **kw))

    def running(self, attempt_id: str = "a1", pid: int = 4242) -> list[s.Effect]:
        return self.feed(s.AttemptRunning(attempt_id, "job-" + attempt_id, pid, 1234))

    def ended(self, attempt_id: str = "a1", code: int | None = 0) -> list[s.Effect]:
        return self.feed(s.AttemptEnded(exited(attempt_id, code)))

    def tick(self, seconds: float = 1.0) -> list[s.Effect]:
        self.clock.advance(seconds)
        return self.feed(s.Tick())


def order(attempt_id: str = "a1", epoch: int = 0, **kw: object) -> p.StartAttempt:
    return p.StartAttempt(attempt_id=attempt_id, job_id="job-" + attempt_id, attempt_number=1, command=["true"],
                          environment={}, vcpus=1, memory_mib=64, owner="alice", epoch=epoch, **kw)


def exited(attempt_id: str, code: int | None = 0) -> p.AttemptExited:
    return p.AttemptExited(attempt_id=attempt_id, job_id="job-" + attempt_id, exit_code=code, started_at=1,
                           stopped_at=2)


def sent(effects: list[s.Effect]) -> list[p.Message]:
    return [e.message for e in effects if isinstance(e, s.SendToHead)]


def sent_of(effects: list[s.Effect], kind: type) -> list:
    return [m for m in sent(effects) if isinstance(m, kind)]


def of(effects: list[s.Effect], kind: type) -> list:
    return [e for e in effects if isinstance(e, kind)]


# ---------------------------------------------------------------------- registration
def test_a_new_agent_registers_on_connect_and_heartbeats_once_welcomed() -> None:
    agent = Agent()
    (register,) = sent(agent.feed(s.Connected()))
    assert isinstance(register, p.Register) and register.instance_id == "inst-1" and register.node.name == "n1"
    agent.welcome()
    (beat,) = sent(agent.feed(s.Connected()))  # a reconnect to the same head: no new Register
    assert isinstance(beat, p.AgentHeartbeat)
    (beat,) = sent(agent.tick())
    assert isinstance(beat, p.AgentHeartbeat) and beat.sent_at == agent.clock.t


def test_register_lists_what_runs_and_what_ended_unacknowledged() -> None:
    agent = Agent()
    for attempt_id in ("a1", "a2"):
        agent.start(attempt_id)
        agent.running(attempt_id, pid=10)
    agent.ended("a2", code=3)
    register = agent.state.register_message(agent.clock.now())
    assert [(r.attempt_id, r.pid, r.started_at) for r in register.running] == [("a1", 10, 1234)]
    assert [(e.attempt_id, e.exit_code) for e in register.exited] == [("a2", 3)]


def test_an_attempt_adopted_at_start_is_listed_and_ships_on_from_where_the_head_is() -> None:
    agent = Agent()
    assert agent.feed(s.AttemptAdopted("a1", "job-a1", 77, 5, output_offset=900)) == []
    assert [r.attempt_id for r in agent.state.register_message(agent.clock.now()).running] == ["a1"]
    agent.welcome(log_offsets={"a1": {"output": 300}})
    assert agent.state.output_position("a1") == ("job-a1", 300)


def test_reregister_and_a_heartbeat_of_an_unknown_head_get_a_register() -> None:
    agent = Agent()
    agent.welcome("head-a")
    assert sent_of(agent.feed(p.Reregister()), p.Register)
    assert not sent(agent.feed(p.HeadHeartbeat(head_id="head-a")))
    assert sent_of(agent.feed(p.HeadHeartbeat(head_id="head-b")), p.Register)  # a restarted head


def test_a_silent_head_is_offered_registrations_and_the_next_endpoint() -> None:
    agent = Agent(heads=2)
    agent.welcome()
    effects = agent.tick(5.0)  # past interval * liveness
    assert of(effects, s.SwitchHead) and sent_of(effects, p.Register)
    assert not of(Agent().tick(5.0), s.SwitchHead)  # one endpoint: nowhere to switch to


def test_connected_but_never_answered_says_once_that_the_key_awaits_enrollment() -> None:
    agent = Agent()
    agent.feed(s.Connected())
    assert of(agent.tick(5.0), s.WarnNotEnrolled)
    assert not of(agent.tick(5.0), s.WarnNotEnrolled)


# ---------------------------------------------------------------------- starts
def test_a_start_is_ordered_once_and_answered_when_it_runs() -> None:
    agent = Agent()
    (start,) = agent.start()
    assert isinstance(start, s.StartJob) and start.order.attempt_id == "a1"
    (started,) = sent(agent.running(pid=99))
    assert isinstance(started, p.AttemptStarted) and (started.pid, started.started_at) == (99, 1234)


def test_a_duplicate_start_while_starting_does_nothing_and_after_gets_the_lost_answer_again() -> None:
    agent = Agent()
    agent.start()
    assert agent.start() == []  # the first start answers when it is done
    agent.running(pid=99)
    (again,) = agent.start()  # the head lost our AttemptStarted
    assert again == s.SendToHead(p.AttemptStarted(attempt_id="a1", job_id="job-a1", pid=99, started_at=1234))
    agent.ended(code=7)
    (exit_again,) = sent(agent.start())
    assert isinstance(exit_again, p.AttemptExited) and exit_again.exit_code == 7


def test_a_start_refused_by_the_runner_is_reported_as_its_exit() -> None:
    agent = Agent()
    agent.start()
    effects = agent.feed(s.AttemptEnded(exited("a1", None)))
    assert [type(e) for e in effects] == [s.ShipFinalOutput, s.SendToHead]  # the output before the exit


def test_a_start_that_raised_fails_that_attempt_with_the_cause() -> None:
    agent = Agent()
    agent.start()
    (report,) = sent_of(agent.feed(s.StartFailed("a1", "job-a1", "OSError: disk full")), p.AttemptExited)
    assert report.reason == f"{CANNOT_START}: the agent on n1 failed while starting it: OSError: disk full"
    assert report.exit_code is None


def test_a_start_that_raised_after_the_attempt_runs_reports_nothing() -> None:
    agent = Agent()
    agent.start()
    agent.running()
    assert agent.feed(s.StartFailed("a1", "job-a1", "KeyError")) == []


def test_the_first_report_of_an_end_wins() -> None:
    agent = Agent()
    agent.start()
    agent.running()
    agent.ended(code=0)
    assert agent.ended(code=1) == []
    assert agent.running() == []  # a late "it runs" for an ended attempt: nothing
    assert [e.exit_code for e in agent.state.unacked()] == [0]


# ---------------------------------------------------------------------- kills and acks
def test_a_kill_signals_the_attempt_and_a_kill_after_its_end_does_nothing() -> None:
    agent = Agent()
    agent.start()
    agent.running()
    assert agent.feed(p.KillAttempt(attempt_id="a1", reason="Terminated by user", grace_s=5)) == [
        s.SignalJob("a1", "Terminated by user", 5)
    ]
    agent.ended(code=None)
    assert agent.feed(p.KillAttempt(attempt_id="a1", reason="again")) == []


def test_an_exit_is_resent_every_beat_until_acknowledged_then_forgotten() -> None:
    agent = Agent()
    agent.welcome()
    agent.start()
    agent.running()
    agent.ended()
    for _ in range(3):  # the head lost them: each beat says it again
        agent.welcome()
        assert [m.attempt_id for m in sent_of(agent.tick(), p.AttemptExited)] == ["a1"]
    assert agent.feed(p.AckExits(attempt_ids=["a1"])) == [s.ForgetAttempt("a1")]
    agent.welcome()
    assert not sent_of(agent.tick(), p.AttemptExited)
    assert agent.start() == []  # a late duplicate order: the head has its exit already


def test_an_ack_for_an_attempt_still_running_forgets_nothing() -> None:
    agent = Agent()
    agent.start()
    agent.running()
    assert agent.feed(p.AckExits(attempt_ids=["a1"])) == []
    assert [a for a, _r in agent.state.running()] == ["a1"]


# ---------------------------------------------------------------------- head epochs
def test_a_newer_head_epoch_is_saved_before_its_order_is_obeyed() -> None:
    agent = Agent(epoch=1)
    effects = agent.start(epoch=2)
    assert [type(e) for e in effects] == [s.SaveEpoch, s.StartJob] and effects[0] == s.SaveEpoch(2)
    assert agent.state.epoch == 2


def test_orders_of_an_older_head_are_refused_and_said_once() -> None:
    agent = Agent(epoch=3)
    (said,) = agent.start(epoch=2)
    assert isinstance(said, s.Log) and said.level == logging.WARNING and "epoch 2" in said.text
    assert agent.feed(p.KillAttempt(attempt_id="a1", reason="x", epoch=2)) == []
    assert agent.state.attempts == {}


def test_a_head_restarted_with_a_new_epoch_hears_what_runs_and_the_unacknowledged_exits() -> None:
    agent = Agent(epoch=1)
    agent.welcome("head-a", epoch=1)
    for attempt_id in ("a1", "a2"):
        agent.start(attempt_id, epoch=1)
        agent.running(attempt_id)
    agent.ended("a2")
    effects = agent.feed(p.HeadHeartbeat(head_id="head-b", epoch=2))
    assert effects[0] == s.SaveEpoch(2)
    (register,) = sent_of(effects, p.Register)
    assert [r.attempt_id for r in register.running] == ["a1"]
    assert [e.attempt_id for e in register.exited] == ["a2"]
    agent.welcome("head-b", epoch=2)
    (again,) = sent(agent.start("a1", epoch=2))  # the new head asks about a1: it runs
    assert isinstance(again, p.AttemptStarted)


# ---------------------------------------------------------------------- fencing
def test_unheard_past_the_fence_every_attempt_is_killed_once_and_new_orders_are_refused() -> None:
    agent = Agent()
    agent.welcome()
    for attempt_id in ("a1", "a2"):
        agent.start(attempt_id)
    agent.running("a1")  # a2 is still starting (its image being pulled)
    effects = agent.tick(FENCE_S + 1)
    kills = of(effects, s.SignalJob)
    assert sorted(k.attempt_id for k in kills) == ["a1", "a2"]
    assert all(k.fenced and k.grace_s == 0 for k in kills)
    assert not of(agent.tick(), s.SignalJob)  # each is killed once
    (refused,) = sent_of(agent.start("a3"), p.AttemptExited)
    assert refused.reason == CANNOT_START and "fenced" in (refused.status_reason or "")
    # a2 comes up after all: the fence stops it at once
    (late,) = of(agent.running("a2"), s.SignalJob)
    assert (late.attempt_id, late.grace_s, late.fenced) == ("a2", 0, True)


def test_a_head_echo_lifts_the_fence_and_keeps_the_lease_on_disk() -> None:
    agent = Agent()
    agent.tick(FENCE_S + 1)
    assert agent.state.fenced
    effects = agent.feed(p.HeadHeartbeat(head_id="head-a", echo=agent.clock.t))
    assert not agent.state.fenced
    (lease,) = of(effects, s.SaveLease)
    assert lease.heard_at == agent.clock.now().wall_ms / 1000
    assert of(agent.start("a4"), s.StartJob)


def test_the_lease_is_saved_at_most_once_a_second() -> None:
    agent = Agent()
    assert of(agent.feed(p.HeadHeartbeat(head_id="h", echo=agent.clock.t)), s.SaveLease)
    assert not of(agent.feed(p.HeadHeartbeat(head_id="h", echo=agent.clock.t)), s.SaveLease)
    agent.clock.advance(1.0)
    assert of(agent.feed(p.HeadHeartbeat(head_id="h", echo=agent.clock.t)), s.SaveLease)


def test_no_fence_when_fence_after_s_is_zero() -> None:
    agent = Agent(fence_after_s=0)
    agent.start()
    agent.running()
    assert not of(agent.tick(10_000), s.SignalJob)


# ---------------------------------------------------------------------- launches, images
def test_a_launch_for_a_starting_attempt_waits_until_it_runs() -> None:
    agent = Agent()
    agent.start(image="busybox")
    task = p.StartTask(launch_id="l1", job_id="job-a1", attempt_id="a1", command="hostname", origin="n0")
    assert agent.feed(task) == []
    assert s.LaunchTask(task) in agent.running()
    assert agent.feed(task) == [s.LaunchTask(task)]  # a running attempt: straight on to the runner


def test_a_launch_that_waited_for_an_attempt_that_never_ran_goes_on_to_be_refused() -> None:
    agent = Agent()
    agent.start(image="busybox")
    task = p.StartTask(launch_id="l1", job_id="job-a1", attempt_id="a1", command="hostname", origin="n0")
    agent.feed(task)
    assert s.LaunchTask(task) in agent.feed(s.StartFailed("a1", "job-a1", "pull failed"))


def test_image_and_launch_answers_pass_to_their_owners() -> None:
    agent = Agent()
    assert agent.feed(p.PullImage(image="busybox")) == [s.PullImage("busybox")]
    done = p.LaunchDone(launch_id="l1", exit_code=0)
    assert agent.feed(done) == [s.FinishLaunch(done)]
    assert s.ReportImages() in agent.welcome()
