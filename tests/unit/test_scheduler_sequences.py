"""Random event sequences against a model of the scheduler: never over-allocate, never start twice."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.scheduler.core import (
    Action,
    AttemptEnded,
    ComputeEnvironmentChanged,
    Event,
    JobQueueChanged,
    JobRunnable,
    JobWithdrawn,
    NodeGone,
    NodeUp,
    Scheduler,
    SetWaitReason,
    StartAttempt,
)
from hpcbatch.scheduler.gpus import placement_key
from tests.unit.scheduler_events import (
    _eid,
    req,
)

# ---------------------------------------------------------------- properties
CES = ("ce-a", "ce-b")
NODE_NAMES = ("n0", "n1", "n2", "n3")
JOB_IDS = tuple(f"j{i}" for i in range(8))
QUEUES = {  # name -> (priority, computeEnvironmentOrder)
    "q-hi": (10, ("ce-a", "ce-b")),
    "q-lo": (1, ("ce-b",)),
    "q-late": (5, ("ce-b", "ce-a")),  # created only by an event, so jobs may arrive first
}
NODE_SIZES = [(1, 1024, 0), (2, 4096, 0), (4, 8192, 1), (8, 16384, 2)]
REQUESTS = [
    req(v, m, g)
    for v, m, g in [
        (0.5, 256, 0),
        (1, 1024, 0),
        (2, 1024, 0),
        (3, 4096, 0),
        (4, 8192, 0),
        (1, 1024, 1),
        (2, 2048, 2),
        (16, 1024, 0),
    ]
]

_pick = st.integers(0, 63)  # which of the eligible jobs an op acts on (modulo their number)
_mostly = st.sampled_from([True, True, True, False])
_op = st.one_of(
    st.tuples(
        st.just("node_up"),
        st.sampled_from(NODE_NAMES),
        st.sampled_from(CES),
        st.sampled_from(NODE_SIZES),
        _mostly,
    ),
    st.tuples(st.just("node_gone"), st.sampled_from(NODE_NAMES)),
    st.tuples(
        st.just("runnable"), _pick, st.sampled_from(sorted(QUEUES)), st.sampled_from(REQUESTS)
    ),
    st.tuples(
        st.just("runnable"), _pick, st.sampled_from(sorted(QUEUES)), st.sampled_from(REQUESTS)
    ),
    st.tuples(st.just("withdraw"), _pick),
    st.tuples(st.just("end"), _pick),
    st.tuples(st.just("end"), _pick),
    st.tuples(st.just("ce"), st.sampled_from(CES), _mostly, st.sampled_from([None, 2, 4, 8])),
    st.tuples(st.just("queue"), st.sampled_from(sorted(QUEUES)), _mostly),
)


@dataclass
class _Model:
    """What the head knows, kept independently of the core to check its actions."""

    reregister: bool
    nodes: dict[str, tuple[str, tuple[float, int, int], bool]] = field(default_factory=dict)
    ces: dict[str, tuple[bool, float | None]] = field(default_factory=dict)
    queues: dict[str, bool] = field(default_factory=dict)  # existing queue -> enabled
    state: dict[str, str] = field(default_factory=lambda: dict.fromkeys(JOB_IDS, "idle"))
    queue_of: dict[str, str] = field(default_factory=dict)
    request: dict[str, ResourceRequest] = field(default_factory=dict)
    live: dict[str, str] = field(default_factory=dict)  # started job -> node holding it
    reason: dict[str, str] = field(default_factory=dict)
    seq: int = 0

    def event_for(self, op: tuple) -> Event | None:  # type: ignore[type-arg]
        """Turn a generated op into an event the head could send now, and note its effect."""
        kind = op[0]
        if kind == "node_up":
            _, name, ce, size, accepting = op
            if name in self.nodes:
                if not self.reregister:
                    return None
                ce, size, _ = self.nodes[name]  # same machine, maybe now draining
                allocations = tuple((j, self.request[j]) for j, n in self.live.items() if n == name)
            else:
                allocations = ()
            self.nodes[name] = (ce, size, accepting)
            self.ces.setdefault(ce, (True, None))
            return NodeUp(_eid(), name, ce, *size, allocations, accepting)
        if kind == "node_gone":
            self.nodes.pop(op[1], None)
            for j in [j for j, n in self.live.items() if n == op[1]]:
                del self.live[j]
                self.state[j] = "lost"  # the head still has to end the attempt
            return NodeGone(_eid(), op[1])
        if kind == "runnable":
            _, k, q, r = op
            j = self._eligible(k, "idle")
            if j is None:
                return None
            self.state[j], self.queue_of[j], self.request[j] = "runnable", q, r
            self.reason.pop(j, None)
            self.seq += 1
            return JobRunnable(_eid(), j, q, r, self.seq)
        if kind == "withdraw":
            j = self._eligible(op[1], "runnable")
            if j is None:
                return None
            self.state[j] = "idle"
            return JobWithdrawn(_eid(), j)
        if kind == "end":
            j = self._eligible(op[1], "started", "lost")
            if j is None:
                return None
            self.state[j] = "idle"
            self.live.pop(j, None)
            return AttemptEnded(_eid(), j)
        if kind == "ce":
            _, name, enabled, max_vcpus = op
            self.ces[name] = (enabled, max_vcpus)
            return ComputeEnvironmentChanged(_eid(), name, enabled, max_vcpus)
        _, name, enabled = op
        self.queues[name] = enabled
        priority, ces = QUEUES[name]
        return JobQueueChanged(_eid(), name, enabled, priority, ces)

    def _eligible(self, k: int, *states: str) -> str | None:
        """The ``k``-th job (modulo) in one of ``states``, so every generated op is usable."""
        jobs = [j for j in JOB_IDS if self.state[j] in states]
        return jobs[k % len(jobs)] if jobs else None

    def usage(self, node_name: str) -> tuple[float, int, int]:
        held = [self.request[j] for j, n in self.live.items() if n == node_name]
        return (
            sum(r.vcpus for r in held),
            sum(r.memory_mib for r in held),
            sum(r.gpus for r in held),
        )

    def ce_vcpus(self, ce: str) -> float:
        return sum(self.request[j].vcpus for j, n in self.live.items() if self.nodes[n][0] == ce)

    def room_in(self, j: str, ce: str) -> list[tuple[Any, ...]]:
        """(*placement key, node) of every node of ``ce`` the runnable ``j`` fits now."""
        enabled, max_vcpus = self.ces.get(ce, (True, None))
        r = self.request[j]
        if not enabled or (max_vcpus is not None and self.ce_vcpus(ce) + r.vcpus > max_vcpus):
            return []
        out = []
        for name, (node_ce, (v, m, g), accepting) in self.nodes.items():
            uv, um, ug = self.usage(name)
            if (
                node_ce == ce
                and accepting
                and uv + r.vcpus <= v
                and um + r.memory_mib <= m
                and ug + r.gpus <= g
            ):
                out.append((*placement_key(r.gpus, g, g - ug, v - uv, m - um), name))
        return out

    def fits_somewhere(self, j: str) -> str | None:
        """A node the runnable job ``j`` could start on right now, by the documented rules."""
        q = self.queue_of[j]
        if not self.queues.get(q, False):
            return None
        for ce in QUEUES[q][1]:
            room = self.room_in(j, ce)
            if room:
                return room[0][-1]
        return None


def _check_actions(model: _Model, s: Scheduler, actions: list[Action]) -> None:
    started_in: set[str] = set()
    for a in actions:
        if isinstance(a, StartAttempt):
            assert model.state[a.job_id] == "runnable", (
                f"{a.job_id} started while {model.state[a.job_id]}"
            )
            assert a.node in model.nodes, f"{a.job_id} started on absent node {a.node}"
            ce, _, accepting = model.nodes[a.node]
            assert accepting and ce == a.compute_environment
            assert model.ces.get(ce, (True, None))[0], f"{a.job_id} placed in disabled {ce}"
            q = model.queue_of[a.job_id]
            assert model.queues.get(q) is True, f"{a.job_id} started from missing/disabled {q}"
            order = QUEUES[q][1]
            assert ce in order
            for earlier in order[: order.index(ce)]:
                assert not model.room_in(a.job_id, earlier), f"{a.job_id}: {earlier} comes first"
            room = model.room_in(a.job_id, ce)
            chosen = next((r for r in room if r[-1] == a.node), None)
            assert chosen is not None, f"{a.job_id} does not fit on {a.node}"
            assert chosen[:-1] == min(r[:-1] for r in room), (
                f"{a.job_id}: {a.node} is not the best fit"
            )
            model.state[a.job_id] = "started"
            model.live[a.job_id] = a.node
            model.reason.pop(a.job_id, None)
            started_in.add(ce)
        else:
            assert isinstance(a, SetWaitReason)
            assert model.state[a.job_id] == "runnable", (
                f"wait reason for {a.job_id} while {model.state[a.job_id]}"
            )
            assert model.reason.get(a.job_id) != a.reason, (
                f"{a.job_id}: unchanged reason re-emitted"
            )
            model.reason[a.job_id] = a.reason
    for name, (_, cap, _) in model.nodes.items():
        used = model.usage(name)
        assert all(u <= c + 1e-9 for u, c in zip(used, cap, strict=True)), (
            f"{name} over-allocated: {used} > {cap}"
        )
        assert s.node_usage(name) == pytest.approx(used), (
            f"{name}: core usage {s.node_usage(name)} != {used}"
        )
    for ce in started_in:
        max_vcpus = model.ces.get(ce, (True, None))[1]
        assert max_vcpus is None or model.ce_vcpus(ce) <= max_vcpus + 1e-9, f"{ce} past maxvCpus"
    for j, st_ in model.state.items():
        if st_ != "runnable":
            continue
        room = model.fits_somewhere(j)
        assert room is None, f"{j} left waiting although {room} has room for it"
        if model.queue_of[j] in model.queues:
            assert j in model.reason, f"runnable {j} has no wait reason"


def _run(reregister: bool, batches: list[list[tuple]]) -> None:  # type: ignore[type-arg]
    s = Scheduler()
    model = _Model(reregister=reregister)
    # q-hi and q-lo and a node in each CE exist from the start; q-late only once an op
    # creates it, so jobs submitted to it first wait for it.
    for op in (
        ("queue", "q-hi", True),
        ("queue", "q-lo", True),
        ("node_up", "n0", "ce-a", (4, 8192, 1), True),
        ("node_up", "n1", "ce-b", (8, 16384, 2), True),
    ):
        _check_actions(model, s, s.handle(model.event_for(op)))  # type: ignore[arg-type]
    for batch in batches:
        events = [e for e in (model.event_for(op) for op in batch) if e is not None]
        _check_actions(model, s, s.handle(*events))


_batches = st.lists(st.lists(_op, min_size=1, max_size=3), max_size=40)


@settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(batches=_batches)
def test_random_event_sequences_never_over_allocate_or_double_start(
    batches: list[list[tuple]],
) -> None:  # type: ignore[type-arg]
    """Nodes come and go (a returning node starts empty), jobs become runnable, are
    withdrawn, start and end: no node or CE is over-committed, no job starts twice or
    unrunnable, placement follows CE order and best fit, and no job is left waiting
    while a node it fits on has room."""
    _run(False, batches)


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    phases=[Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
@given(batches=_batches)
def test_random_event_sequences_with_live_reregistration_never_over_allocate(
    batches: list[list[tuple]],  # type: ignore[type-arg]
) -> None:
    """The same, with nodes re-registering while up and reporting what they run."""
    _run(True, batches)
