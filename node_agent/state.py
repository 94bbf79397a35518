"""The agent's side of the head<->agent conversation, as a pure state machine.

Rules / theory of operation (the protocol itself is hpcbatch/protocol.py's docstring):

* ``AgentState.handle(stimulus, now) -> list[Effect]``. A stimulus is a head message
  (``p.HeadMessage``) or a local fact the I/O shell (node_agent/main.py) observed: the
  runner started, adopted or ended an attempt, a start raised, a heartbeat is due
  (``Tick``), a handshake succeeded (``Connected``). Effects are typed orders the shell
  performs in list order: send a message, start or signal an attempt, remember an epoch.
  Nothing here reads a clock (``now`` carries both clocks), touches a socket or a file.
* Each attempt this agent was ordered to run, or found at start, is in one phase:
  STARTING (ordered, the runner is on it), RUNNING (its pid is known) or EXITED (its
  ``AttemptExited`` is kept and resent until the head acknowledges it). An acknowledged
  attempt is forgotten, but its id is remembered (bounded) so a late duplicate order does
  not run it again.
* ``StartAttempt`` is idempotent by attempt id: a new one starts the job; a duplicate
  gets the answer the head may have lost (``AttemptStarted`` again, or the exit again),
  or nothing while the first start is still under way.
* An exit is reported once, then resent with every heartbeat and in every ``Register``
  until ``AckExits`` names it. The first report of an attempt's end wins.
* Head epochs (fencing of former heads, docs/ha.md): an older epoch's orders are dropped;
  a newer epoch is saved (``SaveEpoch``) before any order of it is obeyed.
* The fence (hpcbatch.fencing): a head's echo of our ``sent_at`` renews the lease; unheard
  for ``fence_after_s`` every attempt here is killed once, and new orders are refused
  (reported as exits that never started) until a head hears us again.
* Batches (hpcbatch/protocol.py): ``Orders`` is its starts taken one after another, as if
  each came alone. What one wake-up sends the head, the shell passes through ``coalesce``:
  starts and exits travel as one ``Reports`` where the head said (``Welcome.batches``) it
  takes them, else one by one. Resends are unchanged: an exit is kept until ``AckExits``.
* Launches (``StartTask``) for an attempt still STARTING (its image is being pulled)
  wait, and are handed on when it runs or ends.
"""

from __future__ import annotations

import enum
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from hpcbatch import protocol as p
from node_agent.attempts import CANNOT_START

REMEMBER_ACKED = 4096  # acknowledged attempt ids kept, to ignore late duplicate orders
LEASE_SAVE_EVERY_S = 1.0


REPORTED = (p.AttemptStarted, p.AttemptExited)  # what ``coalesce`` gathers into one ``Reports``


def coalesce(messages: list[p.Message], batches: bool) -> list[p.Message]:
    """What one wake-up sends the head, as it goes on the wire: with ``batches`` its starts and
    exits as one ``Reports`` where the last of them was (after the output it shipped before an
    exit), everything else as it was; without, unchanged."""
    reports = [m for m in messages if isinstance(m, REPORTED)]
    if not batches or len(reports) < 2:
        return messages
    last = max(i for i, m in enumerate(messages) if isinstance(m, REPORTED))
    out: list[p.Message] = [m for m in messages[:last] if not isinstance(m, REPORTED)]
    out.append(p.Reports(items=reports))  # type: ignore[arg-type]  # narrowed by REPORTED
    out.extend(messages[last + 1:])
    return out


def warning_delay(timeout_s: float | None, warning_s: int) -> float | None:
    """When to send an attempt's warning signal (Slurm's ``--signal SIG@warning_s``): seconds
    from now, given ``timeout_s`` left before its timeout; None where it has no timeout or asks
    for no warning. Asked for more than its timeout (a job definition's timeout, unknown at
    submission), it is warned at once rather than never."""
    if not timeout_s or timeout_s <= 0 or warning_s <= 0:
        return None
    return max(0.0, timeout_s - warning_s)


# ------------------------------------------------------------------ stimuli (local facts)
@dataclass(frozen=True)
class Now:
    """Both clocks, read once by the shell: monotonic seconds and wall-clock milliseconds."""

    monotonic: float
    wall_ms: int


@dataclass(frozen=True)
class AttemptRunning:
    """The runner started an ordered attempt: it runs as ``pid`` since ``started_at`` (ms)."""

    attempt_id: str
    job_id: str
    pid: int
    started_at: int


@dataclass(frozen=True)
class AttemptAdopted:
    """At agent start: an attempt a previous agent process left running, watched again."""

    attempt_id: str
    job_id: str
    pid: int
    started_at: int
    output_offset: int = 0  # bytes of its output already shipped (the head's Welcome rewinds)


@dataclass(frozen=True)
class AttemptEnded:
    """The runner's result of an attempt: it exited, was refused, or was found ended."""

    exited: p.AttemptExited


@dataclass(frozen=True)
class StartFailed:
    """Starting an ordered attempt raised: ``cause`` names the failure."""

    attempt_id: str
    job_id: str
    cause: str


@dataclass(frozen=True)
class Tick:
    """A heartbeat is due; the shell's GPU readings go into it."""

    unhealthy_gpus: dict[str, str] = field(default_factory=dict)
    gpu_usage: tuple[p.GpuUsage, ...] = ()
    gpu_utilization: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Connected:
    """The CurveZMQ handshake with the head succeeded."""


LocalFact = AttemptRunning | AttemptAdopted | AttemptEnded | StartFailed | Tick | Connected
Stimulus = p.HeadMessage | LocalFact


# ------------------------------------------------------------------ effects
@dataclass(frozen=True)
class SendToHead:
    """Send ``message`` to the head (dropped if not connected: what matters is resent)."""

    message: p.Message


@dataclass(frozen=True)
class SaveEpoch:
    """Remember head epoch ``epoch`` durably, before obeying the orders that follow."""

    epoch: int


@dataclass(frozen=True)
class StartJob:
    """Start the attempt ``order`` names; answer with AttemptRunning, AttemptEnded or StartFailed."""

    order: p.StartAttempt


@dataclass(frozen=True)
class SignalJob:
    """Stop an attempt: SIGTERM its processes now, SIGKILL after ``grace_s`` (None: the default)."""

    attempt_id: str
    reason: str
    grace_s: float | None = None
    fenced: bool = False
    warning_signal: str | None = None  # a preemption: the job's warning signal just before the SIGTERM


@dataclass(frozen=True)
class LaunchTask:
    """Run a launched command (an MPI daemon) inside a running attempt; report its exit."""

    order: p.StartTask


@dataclass(frozen=True)
class FinishLaunch:
    """Hand the head's answer to a launch this node requested to the launcher bridge."""

    message: p.LaunchDone


@dataclass(frozen=True)
class PullImage:
    """Pull ``image`` ahead of the jobs that need it, then report the image cache."""

    image: str


@dataclass(frozen=True)
class ReportImages:
    """Tell the head which images this node holds (ImagesCached)."""


@dataclass(frozen=True)
class ShipFinalOutput:
    """An attempt ended: revoke its launch grant and ship the rest of its output."""

    attempt_id: str


@dataclass(frozen=True)
class ForgetAttempt:
    """The head has the attempt's exit and output: delete what the agent kept of it."""

    attempt_id: str


@dataclass(frozen=True)
class SaveLease:
    """Keep when a head last heard this node (wall-clock seconds), for a restarted agent."""

    heard_at: float


@dataclass(frozen=True)
class SwitchHead:
    """No head answers: connect to the next head endpoint (failover)."""


@dataclass(frozen=True)
class WarnNotEnrolled:
    """Connected, yet the head never answers: this node's key probably awaits enrollment."""


@dataclass(frozen=True)
class Log:
    """Say something in the agent's log."""

    level: int
    text: str


Effect = (
    SendToHead | SaveEpoch | StartJob | SignalJob | LaunchTask | FinishLaunch | PullImage | ReportImages
    | ShipFinalOutput | ForgetAttempt | SaveLease | SwitchHead | WarnNotEnrolled | Log
)


# ------------------------------------------------------------------ the state
class Phase(enum.StrEnum):
    """Where an attempt is, as far as this agent knows."""

    STARTING = "STARTING"
    RUNNING = "RUNNING"
    EXITED = "EXITED"


@dataclass
class _Attempt:
    job_id: str
    phase: Phase
    pid: int = 0
    started_at: int = 0
    exited: p.AttemptExited | None = None
    shipped: int = 0  # bytes of output the head has been sent
    waiting: list[p.StartTask] = field(default_factory=list)  # launches held until it runs


@dataclass(frozen=True)
class AgentIdentity:
    """What the state says about this agent process in Register."""

    instance_id: str
    facts: p.NodeFacts
    head_count: int = 1  # configured head endpoints: more than one, failover is tried


class AgentState:
    """This agent's side of the conversation; see the module docstring."""

    def __init__(self, identity: AgentIdentity, *, epoch: int, heartbeat_interval_s: float, liveness: int,
                 now: Now) -> None:
        self.identity = identity
        self.name = identity.facts.name
        self.epoch = epoch
        self.interval = heartbeat_interval_s
        self.liveness = liveness
        self.fence_after_s = identity.facts.fence_after_s
        self.head_id: str | None = None
        self.welcomed = False
        self.head_batches = False  # the head we talk to takes ``Reports`` (its Welcome said so)
        self.attempts: dict[str, _Attempt] = {}
        self._acked: OrderedDict[str, None] = OrderedDict()
        self._head_seen = 0.0
        self._head_since = now.monotonic
        self._connected_at: float | None = None
        self._lease_from = now.monotonic
        self._lease_saved = -1e9
        self.fenced = False
        self._fence_killed: set[str] = set()
        self._said: set[str] = set()
        self._handlers = {
            p.StartAttempt: self._on_start, p.Orders: self._on_orders, p.KillAttempt: self._on_kill, p.AckExits: self._on_ack,
            p.StartTask: self._on_task, p.LaunchDone: self._on_launch_done, p.PullImage: self._on_pull,
            p.Welcome: self._on_welcome, p.Reregister: self._on_reregister, p.HeadHeartbeat: self._on_head_beat,
            AttemptRunning: self._on_running, AttemptAdopted: self._on_adopted, AttemptEnded: self._on_ended,
            StartFailed: self._on_start_failed, Tick: self._on_tick, Connected: self._on_connected,
        }

    # -------------------------------------------------------------- entry points
    def handle(self, stimulus: Stimulus, now: Now) -> list[Effect]:
        """Take one head message or local fact in; the effects to perform, in order."""
        effects: list[Effect] = []
        if isinstance(stimulus, p.Message):
            self._head_seen = now.monotonic
            if not self._accept_epoch(stimulus, effects):
                return effects
        self._handlers[type(stimulus)](stimulus, now, effects)
        return effects

    def heard(self, now: Now) -> None:
        """Something arrived from the head (even if it could not be read): it is alive."""
        self._head_seen = now.monotonic

    def say_once(self, key: str) -> bool:
        """True the first time ``key`` is said in an episode (log a condition once)."""
        if key in self._said:
            return False
        self._said.add(key)
        return True

    def unsay(self, *keys: str) -> None:
        """The conditions ``keys`` are over: say them again if they come back."""
        self._said.difference_update(keys)

    def running(self) -> list[tuple[str, _Attempt]]:
        """(attempt_id, record) of every attempt running here, as this state knows them."""
        return [(a, r) for a, r in self.attempts.items() if r.phase is Phase.RUNNING]

    def unacked(self) -> list[p.AttemptExited]:
        """Exits reported and not yet acknowledged by the head."""
        return [r.exited for r in self.attempts.values() if r.exited is not None]

    def output_position(self, attempt_id: str) -> tuple[str, int]:
        """(job id, bytes already shipped) of an attempt's output."""
        rec = self.attempts.get(attempt_id)
        return ("", 0) if rec is None else (rec.job_id, rec.shipped)

    def output_shipped(self, attempt_id: str, offset: int) -> None:
        """The shell shipped an attempt's output up to ``offset``."""
        rec = self.attempts.get(attempt_id)
        if rec is not None:
            rec.shipped = offset

    def register_message(self, now: Now) -> p.Register:
        """The Register this agent sends: what runs here and what ended unacknowledged."""
        running = [
            p.RunningAttempt(attempt_id=a, job_id=r.job_id, pid=r.pid, started_at=r.started_at)
            for a, r in self.running()
        ]
        return p.Register(instance_id=self.identity.instance_id, node=self.identity.facts, running=running,
                          exited=self.unacked(), sent_at=now.monotonic, batches=True)

    # -------------------------------------------------------------- epochs
    def _accept_epoch(self, msg: p.HeadMessage, effects: list[Effect]) -> bool:
        if msg.epoch < self.epoch:  # a former active head (paused, cut off) not yet told it was replaced
            if self.say_once(f"epoch-{msg.epoch}"):
                effects.append(Log(logging.WARNING, f"refusing orders from a head of epoch {msg.epoch} "
                                                    f"({type(msg).__name__} first): epoch {self.epoch} is active"))
            return False
        if msg.epoch > self.epoch:  # remembered before it is obeyed: a restart must not forget it
            effects.append(SaveEpoch(msg.epoch))
            self.epoch = msg.epoch
        return True

    # -------------------------------------------------------------- attempts
    def _on_start(self, msg: p.StartAttempt, now: Now, effects: list[Effect]) -> None:
        rec = self.attempts.get(msg.attempt_id)
        if rec is not None:
            self._answer_again(msg.attempt_id, rec, effects)
            return
        if msg.attempt_id in self._acked:
            return  # the head has its exit already: a late duplicate order
        if self.fenced:  # an order that reached a fenced node late: not run, reported as refused
            reason = f"Node {self.name} is fenced: no head has heard it lately"
            self._report(p.AttemptExited(attempt_id=msg.attempt_id, job_id=msg.job_id, exit_code=None,
                                         reason=CANNOT_START, status_reason=reason, started_at=now.wall_ms,
                                         stopped_at=now.wall_ms), effects)
            return
        self.attempts[msg.attempt_id] = _Attempt(job_id=msg.job_id, phase=Phase.STARTING)
        effects.append(StartJob(msg))

    def _on_orders(self, msg: p.Orders, now: Now, effects: list[Effect]) -> None:
        """A head step's starts for this node: each taken as if it came alone, in order."""
        for order in msg.items:
            self._on_start(order, now, effects)

    @staticmethod
    def _answer_again(attempt_id: str, rec: _Attempt, effects: list[Effect]) -> None:
        """A resent order: the head may have lost our answer, so it gets it again."""
        if rec.phase is Phase.RUNNING:
            effects.append(SendToHead(p.AttemptStarted(attempt_id=attempt_id, job_id=rec.job_id, pid=rec.pid,
                                                       started_at=rec.started_at)))
        elif rec.phase is Phase.EXITED and rec.exited is not None:
            effects.append(SendToHead(rec.exited))
        # STARTING: the first start answers when it is done.

    def _on_running(self, fact: AttemptRunning, now: Now, effects: list[Effect]) -> None:
        rec = self.attempts.get(fact.attempt_id)
        if rec is not None and rec.phase is Phase.EXITED:
            return  # it ended already (the runner's exit came first)
        rec = self._set_running(fact.attempt_id, fact.job_id, fact.pid, fact.started_at)
        effects.append(SendToHead(p.AttemptStarted(attempt_id=fact.attempt_id, job_id=fact.job_id, pid=fact.pid,
                                                   started_at=fact.started_at)))
        if self.fenced:  # came up after the fence fell (a kill while it was starting may have missed it)
            self._fence_killed.add(fact.attempt_id)
            effects.append(SignalJob(fact.attempt_id, self._fence_reason(now), grace_s=0, fenced=True))
        self._release_launches(rec, effects)

    def _on_adopted(self, fact: AttemptAdopted, now: Now, effects: list[Effect]) -> None:
        rec = self._set_running(fact.attempt_id, fact.job_id, fact.pid, fact.started_at)
        rec.shipped = fact.output_offset

    def _set_running(self, attempt_id: str, job_id: str, pid: int, started_at: int) -> _Attempt:
        rec = self.attempts.setdefault(attempt_id, _Attempt(job_id=job_id, phase=Phase.RUNNING))
        rec.phase, rec.pid, rec.started_at = Phase.RUNNING, pid, started_at
        return rec

    def _on_ended(self, fact: AttemptEnded, now: Now, effects: list[Effect]) -> None:
        exited = fact.exited
        rec = self.attempts.get(exited.attempt_id)
        if rec is not None and rec.phase is Phase.EXITED:
            return  # the first report of its end wins
        if rec is None and exited.attempt_id in self._acked:
            return  # the head has it already
        self._report(exited, effects)

    def _on_start_failed(self, fact: StartFailed, now: Now, effects: list[Effect]) -> None:
        rec = self.attempts.get(fact.attempt_id)
        if rec is not None and rec.phase is not Phase.STARTING:
            return  # it runs (only bookkeeping failed), or its end is reported already
        reason = f"{CANNOT_START}: the agent on {self.name} failed while starting it: {fact.cause}"
        self._report(p.AttemptExited(attempt_id=fact.attempt_id, job_id=fact.job_id, exit_code=None, reason=reason,
                                     started_at=now.wall_ms, stopped_at=now.wall_ms), effects)

    def _report(self, exited: p.AttemptExited, effects: list[Effect]) -> None:
        """Record an attempt's end and report it: its output first, so the head has it all."""
        rec = self.attempts.setdefault(exited.attempt_id, _Attempt(job_id=exited.job_id, phase=Phase.EXITED))
        rec.phase, rec.exited = Phase.EXITED, exited
        effects.append(ShipFinalOutput(exited.attempt_id))
        effects.append(SendToHead(exited))
        self._release_launches(rec, effects)

    def _on_kill(self, msg: p.KillAttempt, now: Now, effects: list[Effect]) -> None:
        rec = self.attempts.get(msg.attempt_id)
        if rec is not None and rec.phase is Phase.EXITED:
            return
        # Unknown here too: the runner may know it (and ignores it if not).
        effects.append(SignalJob(msg.attempt_id, msg.reason, msg.grace_s, warning_signal=msg.warning_signal))

    def _on_ack(self, msg: p.AckExits, now: Now, effects: list[Effect]) -> None:
        for attempt_id in msg.attempt_ids:
            rec = self.attempts.get(attempt_id)
            if rec is not None and rec.phase is not Phase.EXITED:
                continue  # still starting or running: nothing of it to forget yet
            self.attempts.pop(attempt_id, None)
            self._acked[attempt_id] = None
            if len(self._acked) > REMEMBER_ACKED:
                self._acked.popitem(last=False)
            effects.append(ForgetAttempt(attempt_id))

    # -------------------------------------------------------------- launches, images
    def _on_task(self, msg: p.StartTask, now: Now, effects: list[Effect]) -> None:
        rec = self.attempts.get(msg.attempt_id)
        if rec is not None and rec.phase is Phase.STARTING:
            rec.waiting.append(msg)  # this node's image is still coming: launch after
            return
        effects.append(LaunchTask(msg))

    @staticmethod
    def _release_launches(rec: _Attempt, effects: list[Effect]) -> None:
        """The attempt runs or ended: launches that waited for it go on (the runner refuses
        those for an attempt that does not run, with the reason)."""
        effects.extend(LaunchTask(task) for task in rec.waiting)
        rec.waiting.clear()

    def _on_launch_done(self, msg: p.LaunchDone, now: Now, effects: list[Effect]) -> None:
        effects.append(FinishLaunch(msg))

    def _on_pull(self, msg: p.PullImage, now: Now, effects: list[Effect]) -> None:
        effects.append(PullImage(msg.image))

    # -------------------------------------------------------------- heads and the lease
    def _on_welcome(self, msg: p.Welcome, now: Now, effects: list[Effect]) -> None:
        self._renew_lease(msg.echo, now, effects)
        if msg.head_id != self.head_id:
            effects.append(Log(logging.INFO, f"registered with head {msg.head_id[:8]}"))
        self.head_id = msg.head_id
        self.head_batches = msg.batches
        self.welcomed = True
        effects.append(ReportImages())
        self.unsay("enrollment")
        self.interval, self.liveness = msg.heartbeat_interval_s, msg.liveness
        for attempt_id, offsets in msg.log_offsets.items():  # the head holds this much: ship on from there
            rec = self.attempts.get(attempt_id)
            if rec is not None:
                rec.shipped = min(rec.shipped, offsets.get("output", 0))

    def _on_reregister(self, msg: p.Reregister, now: Now, effects: list[Effect]) -> None:
        self.head_batches = False  # a head that does not know us: single messages until its Welcome
        effects.append(SendToHead(self.register_message(now)))

    def _on_head_beat(self, msg: p.HeadHeartbeat, now: Now, effects: list[Effect]) -> None:
        self._renew_lease(msg.echo, now, effects)
        if msg.head_id != self.head_id:  # a head that does not know this process: introduce it
            self.head_batches = False
            effects.append(SendToHead(self.register_message(now)))

    def _on_connected(self, fact: Connected, now: Now, effects: list[Effect]) -> None:
        # Speak at once: the head learns this connection and sends what it held for us.
        self._connected_at = now.monotonic
        if self.head_id is None:
            effects.append(SendToHead(self.register_message(now)))
        else:
            running = [a for a, _r in self.running()]
            effects.append(SendToHead(p.AgentHeartbeat(instance_id=self.identity.instance_id, running=running,
                                                       sent_at=now.monotonic)))

    def _renew_lease(self, echo: float, now: Now, effects: list[Effect]) -> None:
        """A head heard us at ``echo`` (our clock; 0 from a head that does not echo: now)."""
        self._lease_from = max(self._lease_from, echo if echo > 0 else now.monotonic)
        if now.monotonic - self._lease_saved >= LEASE_SAVE_EVERY_S:  # the file's mtime: at most once a second
            self._lease_saved = now.monotonic
            effects.append(SaveLease(now.wall_ms / 1000 - (now.monotonic - self._lease_from)))
        if self.fenced and now.monotonic - self._lease_from <= self.fence_after_s:
            self.fenced = False
            effects.append(Log(logging.WARNING, "a head hears this node again: fence lifted, attempts may start"))

    # -------------------------------------------------------------- the heartbeat
    def _on_tick(self, tick: Tick, now: Now, effects: list[Effect]) -> None:
        """One beat: check the fence, find a head, say what runs, resend unacknowledged exits."""
        self._check_fence(now, effects)
        patience = self.interval * self.liveness
        if now.monotonic - max(self._head_seen, self._head_since) > patience:
            if self.identity.head_count > 1:  # the active head moved (failover): find it
                self._head_since = now.monotonic
                effects.append(SwitchHead())
            effects.append(SendToHead(self.register_message(now)))  # the head may be gone or restarted
            connected = self._connected_at
            if (not self.welcomed and connected is not None and now.monotonic - connected > patience
                    and self.say_once("enrollment")):
                effects.append(WarnNotEnrolled())
            return
        effects.append(SendToHead(p.AgentHeartbeat(
            instance_id=self.identity.instance_id, running=[a for a, _r in self.running()],
            unhealthy_gpus=tick.unhealthy_gpus, gpu_usage=list(tick.gpu_usage),
            gpu_utilization=tick.gpu_utilization, sent_at=now.monotonic,
        )))
        effects.extend(SendToHead(exited) for exited in self.unacked())

    def _fence_reason(self, now: Now) -> str:
        return f"Node {self.name} fenced: no head heard it for {now.monotonic - self._lease_from:.0f} s"

    def _check_fence(self, now: Now, effects: list[Effect]) -> None:
        """Unheard by any head for fence_after_s: kill every attempt (the head retries them elsewhere)."""
        silent = now.monotonic - self._lease_from
        if self.fence_after_s <= 0 or silent <= self.fence_after_s:
            return
        if not self.fenced:
            self._fence_killed.clear()
        live = [a for a, r in self.attempts.items() if r.phase is not Phase.EXITED and a not in self._fence_killed]
        if not self.fenced or live:
            effects.append(Log(logging.WARNING, f"no head has heard this node for {silent:.0f} s (fence_after_s = "
                                                f"{self.fence_after_s:g}): killing {len(live)} attempt(s), which the "
                                                "head retries elsewhere"))
        self.fenced = True
        reason = self._fence_reason(now)
        for attempt_id in live:  # each is killed once
            self._fence_killed.add(attempt_id)
            effects.append(SignalJob(attempt_id, reason, grace_s=0, fenced=True))
