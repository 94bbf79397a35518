"""Gang scheduling of multi-node parallel jobs: atomic whole-node placement, placement
groups, reservations and backfill, driven event by event (no I/O, no clock)."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.scheduler import (
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
    StartGang,
    Tick,
)
from hpcbatch.scheduler.core import WAIT_RESERVED
from hpcbatch.scheduler.gang import UNKNOWN
from tests.unit.scheduler_events import ended, next_seq, queue, req
from tests.unit.scheduler_events import event_id as _eid


def node(
    name: str,
    ce: str = "ce",
    vcpus: float = 4,
    pg: str | None = None,
    accepting: bool = True,
    allocations: tuple[tuple[str, ResourceRequest], ...] = (),
    gang_jobs: tuple[str, ...] = (),
) -> NodeUp:
    return NodeUp(_eid(), name, ce, vcpus, 8192, 0, allocations, accepting, pg, gang_jobs)


def job(
    job_id: str,
    nodes: int = 1,
    request: ResourceRequest | None = None,
    limit: int | None = None,
    q: str = "q",
) -> JobRunnable:
    return JobRunnable(_eid(), job_id, q, request or req(), next_seq(), nodes, limit)


def tick(now_s: float) -> Tick:
    return Tick(_eid(), now_s)


def ce_changed(name: str = "ce", require_pg: bool = False) -> ComputeEnvironmentChanged:
    return ComputeEnvironmentChanged(_eid(), name, True, None, require_pg)


def gangs(actions: list[Action]) -> dict[str, tuple[str, ...]]:
    return {a.job_id: a.nodes for a in actions if isinstance(a, StartGang)}


def singles(actions: list[Action]) -> dict[str, str]:
    return {a.job_id: a.node for a in actions if isinstance(a, StartAttempt)}


def reasons(actions: list[Action]) -> dict[str, str]:
    """Wait reasons without AWS's ``CODE - `` prefix and the capacity numbers (tested apart)."""
    return {
        a.job_id: re.sub(r"\A[A-Z]+:[A-Z_]+ - ", "", a.reason).split(" (needs ")[0]
        for a in actions
        if isinstance(a, SetWaitReason)
    }


def cluster(*names: str, vcpus: float = 4, **kw: object) -> Scheduler:
    s = Scheduler()
    s.handle(queue(), *(node(n, vcpus=vcpus, **kw) for n in names))  # type: ignore[arg-type]
    return s


# ------------------------------------------------------------------ placement
def test_gang_starts_on_all_its_nodes_in_one_action() -> None:
    s = cluster("n1", "n2", "n3", "n4")
    actions = s.handle(job("g", nodes=3, request=req(2)))
    assert actions == [StartGang("g", ("n1", "n2", "n3"), "ce")]
    assert s.allocated_nodes("g") == ("n1", "n2", "n3")
    assert s.allocation("g") == ("n1", "ce")  # the main node (index 0)
    assert [s.node_usage(n) for n in ("n1", "n2", "n3", "n4")] == [(2, 1024, 0)] * 3 + [(0, 0, 0)]


def test_a_one_node_gang_takes_a_whole_node() -> None:
    # numNodes 1 (TorchX's single-replica app) is a multi-node parallel job all the same.
    s = cluster("n1", "n2")
    one = JobRunnable(_eid(), "g1", "q", req(1), next_seq(), 1, None, gang=True)
    assert s.handle(one) == [StartGang("g1", ("n1",), "ce")]
    assert singles(s.handle(job("small", request=req(1)))) == {"small": "n2"}  # not beside the gang
    assert singles(s.handle(job("small2", request=req(1)))) == {"small2": "n2"}
    assert s.node_usage("n1") == (1, 1024, 0)
    s.handle(ended("g1"))
    assert s.node_usage("n1") == (0, 0, 0)
    assert singles(s.handle(job("big", request=req(4)))) == {"big": "n1"}  # the whole node is free again


def test_gang_nodes_are_in_natural_index_order() -> None:
    s = cluster("n10", "n9", "n2")
    assert gangs(s.handle(job("g", nodes=3))) == {"g": ("n2", "n9", "n10")}


def test_gang_that_does_not_fit_places_no_node_at_all() -> None:
    s = cluster("n1", "n2", "n3")
    s.handle(job("small", request=req(1)))
    actions = s.handle(job("g", nodes=3))
    assert gangs(actions) == {}
    assert s.allocated_nodes("g") == ()
    assert sorted(s.node_usage(n)[0] for n in ("n1", "n2", "n3")) == [0, 0, 1]  # type: ignore[index]
    assert "g" in reasons(actions)


def test_gang_needs_every_node_to_fit_the_per_node_request() -> None:
    s = Scheduler()
    s.handle(queue(), node("big1", vcpus=8), node("big2", vcpus=8), node("small", vcpus=2))
    actions = s.handle(job("g", nodes=3, request=req(4)))
    assert gangs(actions) == {}
    assert reasons(actions)["g"].startswith("No compute environment in ce has 3 ACTIVE nodes")
    assert gangs(s.handle(node("big3", vcpus=8))) == {"g": ("big1", "big2", "big3")}


def test_gang_never_lands_on_a_node_that_runs_anything() -> None:
    s = cluster("n1", "n2", "n3", "n4")
    assert singles(s.handle(job("tiny", request=req(0.5)))) == {"tiny": "n1"}
    assert gangs(s.handle(job("g", nodes=3))) == {"g": ("n2", "n3", "n4")}


def test_nothing_else_lands_on_a_gang_node_even_with_room_left() -> None:
    s = cluster("n1", "n2", "n3", "n4")
    s.handle(job("g", nodes=3, request=req(1)))  # 3 vCPUs idle on each gang node
    actions = s.handle(*(job(f"s{i}", request=req(1)) for i in range(6)))
    assert set(singles(actions).values()) == {"n4"}
    assert len(singles(actions)) == 4
    assert gangs(s.handle(job("g2", nodes=2))) == {}  # n4 is in use, the rest is g's


def test_a_draining_node_takes_no_gang() -> None:
    s = Scheduler()
    s.handle(queue(), node("n1"), node("n2", accepting=False), node("n3"))
    actions = s.handle(job("g", nodes=3))
    assert gangs(actions) == {}
    # A drained node comes back: capacity, not a misconfiguration, and it is named (issue 18).
    reason = next(a.reason for a in actions if isinstance(a, SetWaitReason) and a.job_id == "g")
    assert reason.startswith("CAPACITY:") and "n2 is drained or draining" in reason, reason


# ------------------------------------------------------------ placement groups
def test_gang_prefers_the_tightest_placement_group_that_holds_it() -> None:
    s = Scheduler()
    s.handle(
        queue(),
        *(node(f"a{i}", pg="pg-a") for i in range(2)),
        *(node(f"b{i}", pg="pg-b") for i in range(3)),
        *(node(f"c{i}", pg="pg-c") for i in range(5)),
        *(node(f"x{i}") for i in range(3)),
    )
    assert gangs(s.handle(job("three", nodes=3))) == {"three": ("b0", "b1", "b2")}
    assert gangs(s.handle(job("two", nodes=2))) == {"two": ("a0", "a1")}
    assert gangs(s.handle(job("four", nodes=4))) == {"four": ("c0", "c1", "c2", "c3")}


def test_gang_spreads_over_groups_when_no_group_holds_it_and_none_is_required() -> None:
    s = Scheduler()
    s.handle(queue(), node("a0", pg="pg-a"), node("a1", pg="pg-a"), node("b0", pg="pg-b"))
    assert gangs(s.handle(job("g", nodes=3))) == {"g": ("a0", "a1", "b0")}


def test_required_placement_group_that_no_group_can_hold_says_so() -> None:
    s = Scheduler()
    s.handle(
        queue(),
        ce_changed(require_pg=True),
        node("a0", pg="pg-a"),
        node("a1", pg="pg-a"),
        node("b0", pg="pg-b"),
        node("loose"),
    )
    actions = s.handle(job("g", nodes=3))
    assert gangs(actions) == {}
    assert reasons(actions) == {"g": "No placement group of compute environment ce can hold 3 nodes"}
    assert gangs(s.handle(node("a2", pg="pg-a"))) == {"g": ("a0", "a1", "a2")}


def test_required_placement_group_waits_for_its_group_rather_than_spreading() -> None:
    s = Scheduler()
    s.handle(
        queue(),
        ce_changed(require_pg=True),
        *(node(f"a{i}", pg="pg-a") for i in range(3)),
        *(node(f"b{i}", pg="pg-b") for i in range(2)),
    )
    s.handle(job("busy", request=req(1)))  # lands on a node of pg-a
    actions = s.handle(job("g", nodes=3))
    assert gangs(actions) == {}  # b0, b1 plus two free a-nodes would do, but not in one group
    res = s.reservation("g")
    assert res is not None and res.placement_group == "pg-a"
    assert gangs(s.handle(ended("busy"))) == {"g": ("a0", "a1", "a2")}


# ------------------------------------------------------------- compute environments
def test_gang_uses_one_compute_environment_only() -> None:
    s = Scheduler()
    s.handle(
        queue(ces=("ce-a", "ce-b")),
        node("a1", ce="ce-a"),
        node("a2", ce="ce-a"),
        node("b1", ce="ce-b"),
        node("b2", ce="ce-b"),
    )
    actions = s.handle(job("g3", nodes=3))
    assert gangs(actions) == {}
    assert reasons(actions)["g3"].startswith("No compute environment in ce-a, ce-b has 3 ACTIVE nodes")
    assert s.handle(job("g2", nodes=2)) == [StartGang("g2", ("a1", "a2"), "ce-a")]
    assert s.handle(job("g2b", nodes=2)) == [StartGang("g2b", ("b1", "b2"), "ce-b")]


def test_gang_counts_every_node_toward_max_vcpus() -> None:
    s = Scheduler()
    s.handle(
        queue(),
        ComputeEnvironmentChanged(_eid(), "ce", True, 6),
        *(node(f"n{i}") for i in range(4)),
    )
    actions = s.handle(job("g", nodes=4, request=req(2)))
    assert gangs(actions) == {}
    assert reasons(actions)["g"] == "Compute environment ce maxvCpus is below 4 nodes x 2 vCPUs"
    assert gangs(s.handle(job("g3", nodes=3, request=req(2)))) == {"g3": ("n0", "n1", "n2")}


# ---------------------------------------------------------------- holds coming back
def test_attempt_ended_frees_every_node_of_the_gang() -> None:
    s = cluster("n1", "n2", "n3")
    s.handle(job("g", nodes=3, request=req(4)))
    actions = s.handle(job("next", nodes=3, request=req(4)))
    assert gangs(actions) == {}
    assert gangs(s.handle(ended("g"))) == {"next": ("n1", "n2", "n3")}
    s.handle(ended("next"))
    assert [s.node_usage(n) for n in ("n1", "n2", "n3")] == [(0, 0, 0)] * 3
    assert s.allocated_nodes("next") == ()


def test_node_gone_drops_that_node_and_keeps_the_other_gang_nodes_until_the_attempt_ends() -> None:
    s = cluster("n1", "n2", "n3")
    s.handle(job("g", nodes=2))
    s.handle(NodeGone(_eid(), "n1"))
    assert s.allocated_nodes("g") == ("n2",)
    assert singles(s.handle(job("a", request=req(4)), job("b", request=req(4)))) == {"a": "n3"}
    assert singles(s.handle(ended("g"))) == {"b": "n2"}


def test_reregistered_gang_nodes_rejoin_the_gang_hold() -> None:
    s = Scheduler()  # a fresh core, as after a head restart
    s.handle(
        queue(),
        node("n1", allocations=(("g", req(1)),), gang_jobs=("g",)),
        node("n2", allocations=(("g", req(1)),), gang_jobs=("g",)),
        node("n3"),
    )
    assert s.allocated_nodes("g") == ("n1", "n2")
    assert singles(s.handle(job("a"), job("b"), job("c"), job("d"), job("e"))) == {
        x: "n3" for x in "abcd"
    }
    s.handle(node("n2", allocations=(("g", req(1)),), gang_jobs=("g",)))  # the agent reconnects
    assert s.allocated_nodes("g") == ("n1", "n2")
    assert s.node_usage("n2") == (1, 1024, 0)
    assert singles(s.handle(ended("g"))) == {"e": "n1"}


# ------------------------------------------------------------------- no deadlock
def test_two_three_node_gangs_on_four_nodes_run_one_after_the_other() -> None:
    s = cluster("n1", "n2", "n3", "n4")
    actions = s.handle(job("g1", nodes=3), job("g2", nodes=3))
    assert gangs(actions) == {"g1": ("n1", "n2", "n3")}
    assert "g2" in reasons(actions)
    assert s.allocated_nodes("g2") == ()
    actions = s.handle(ended("g1"))
    assert set(gangs(actions)) == {"g2"}
    assert s.allocated_nodes("g1") == ()


def test_many_gangs_competing_for_a_small_cluster_all_finish() -> None:
    s = cluster("n1", "n2", "n3", "n4")
    s.handle(*(job(f"g{i}", nodes=2 + i % 3) for i in range(9)))
    done: list[str] = []
    for _ in range(20):
        running = [j for j in (f"g{i}" for i in range(9)) if s.allocated_nodes(j)]
        if not running:
            break
        done.extend(running)
        s.handle(*(ended(j) for j in running))
    assert sorted(done) == sorted(f"g{i}" for i in range(9))


# ------------------------------------------------------------------ reservations
def _stream(s: Scheduler, gang_id: str, limit: int | None, rounds: int) -> int | None:
    """Each round: time moves on, the oldest small job ends and two new ones arrive.

    Returns the round in which the gang started, or None."""
    running = [f"pre{i}" for i in range(8)]
    counter = itertools.count()
    now = 0.0
    for rnd in range(rounds):
        now += 10
        events: list[Event] = [tick(now)]
        if running:
            events.append(ended(running.pop(0)))
        events += [job(f"s{next(counter)}", limit=limit) for _ in range(2)]
        actions = s.handle(*events)
        running += list(singles(actions))
        if gang_id in gangs(actions):
            return rnd
    return None


def _busy_cluster(reservation_depth: int, limit: int | None) -> Scheduler:
    s = Scheduler(reservation_depth=reservation_depth)
    s.handle(tick(0), queue(), *(node(f"n{i}", vcpus=2) for i in range(4)))
    s.handle(*(job(f"pre{i}", limit=limit) for i in range(8)))  # the cluster is full
    assert s.handle(job("big", nodes=4, request=req(2))) != []
    return s


def test_a_stream_of_small_jobs_starves_a_gang_without_reservations() -> None:
    """The control for the next test: the stream is a real threat."""
    assert _stream(_busy_cluster(0, None), "big", None, 60) is None


def test_a_gang_behind_a_stream_of_small_jobs_with_no_time_limits_is_not_starved() -> None:
    s = _busy_cluster(1, None)
    started = _stream(s, "big", None, 60)
    assert started is not None and started <= 8  # 8 small jobs held the nodes
    assert s.reservation("big") is None


def test_a_gang_behind_a_stream_of_timed_small_jobs_is_not_starved() -> None:
    s = _busy_cluster(1, 35)
    started = _stream(s, "big", 35, 60)
    assert started is not None and started <= 8


def test_reservation_is_the_earliest_set_of_whole_nodes_and_its_wait_reason_says_so() -> None:
    s = cluster("n1", "n2", "n3", "n4", vcpus=2)
    s.handle(tick(100))
    s.handle(job("short", limit=50), job("long", limit=900))  # end at 150 and 1000
    s.handle(job("short2", limit=50))  # best fit: joins short on n1
    actions = s.handle(job("g", nodes=4, request=req(2)))
    res = s.reservation("g")
    assert res is not None and res.start_s == 1000
    assert set(res.nodes) == {"n1", "n2", "n3", "n4"}
    assert reasons(actions) == {"g": "Reserved nodes n[1-4] in compute environment ce from t=1000"}
    assert any(d == f"reserve for g: {reasons(actions)['g']}" for _, d in s.decisions)


def test_reservation_leaves_nodes_it_does_not_need_to_other_jobs() -> None:
    s = cluster("n1", "n2", "n3", "n4", vcpus=2)
    s.handle(job("early", limit=100), job("late", limit=5000))
    assert s.allocation("early") == ("n1", "ce") and s.allocation("late") == ("n1", "ce")
    s.handle(job("other", limit=5000))  # n2, 1 vCPU left there
    assert s.allocation("other") == ("n2", "ce")
    s.handle(job("g", nodes=3, request=req(2)))
    res = s.reservation("g")
    # The gang starts at t=5000 whatever it takes; it takes the nodes that free up latest while
    # still in time (n1, n2, then n3), so idle n4 is an "extra node" (EASY) free for any job.
    assert res is not None and res.nodes == ("n1", "n2", "n3") and res.start_s == 5000
    assert singles(s.handle(job("free"), job("more"))) == {"free": "n4", "more": "n4"}
    assert reasons(s.handle(job("third")))["third"] == WAIT_RESERVED
    assert s.reservation("g") == res  # what ran on the extra node moved nothing


def test_short_job_backfills_onto_reserved_nodes_and_long_or_unlimited_ones_do_not() -> None:
    s = cluster("n1", "n2", "n3", "n4", vcpus=1)
    s.handle(tick(0), job("running", limit=1000))  # n1 until t=1000
    s.handle(job("g", nodes=4))
    res = s.reservation("g")
    assert res is not None and res.start_s == 1000
    actions = s.handle(
        tick(100),
        job("unlimited"),
        job("long", limit=5000),
        job("fits", limit=900),  # 100 + 900 <= 1000
        job("just-over", limit=901),
    )
    assert list(singles(actions)) == ["fits"]
    assert reasons(actions) == {
        "unlimited": WAIT_RESERVED,
        "long": WAIT_RESERVED,
        "just-over": WAIT_RESERVED,
    }
    assert any("backfilled before g's reservation at t=1000" in d for _, d in s.decisions)
    assert s.reservation("g") == res  # the backfilled job did not move it
    assert gangs(s.handle(tick(1000), ended("running"), ended("fits"))) == {
        "g": ("n1", "n2", "n3", "n4")
    }


def test_nothing_backfills_when_the_reservation_start_is_unknown() -> None:
    s = cluster("n1", "n2", "n3", vcpus=1)
    s.handle(job("forever"))  # no time limit: its end is unknown
    reason = reasons(s.handle(job("g", nodes=3)))["g"]
    assert reason == (
        "Reserved nodes n[1-3] in compute environment ce, held as they free up"
        " (running jobs have no time limit)"
    )
    res = s.reservation("g")
    assert res is not None and res.start_s == UNKNOWN
    assert reasons(s.handle(job("short", limit=1)))["short"] == WAIT_RESERVED
    assert gangs(s.handle(ended("forever"))) == {"g": ("n1", "n2", "n3")}
    assert singles(s.handle(ended("g"))) == {"short": "n1"}


def test_gang_end_time_comes_from_its_start_tick_and_time_limit() -> None:
    s = cluster("n1", "n2", "n3", "n4")
    s.handle(tick(10), job("g1", nodes=3, limit=100))
    s.handle(tick(20), job("g2", nodes=3))
    res = s.reservation("g2")
    assert res is not None and res.start_s == 110


def test_jobs_ahead_of_the_gang_in_priority_are_not_bound_by_its_reservation() -> None:
    s = Scheduler()
    s.handle(queue("lo", priority=1), queue("hi", priority=9), node("n1"), node("n2"))
    s.handle(job("busy", q="lo", request=req(4)))
    s.handle(job("g", nodes=2, q="lo"))
    assert s.reservation("g") is not None
    assert singles(s.handle(job("urgent", q="hi"))) == {"urgent": "n2"}
    assert singles(s.handle(job("later", q="lo"))) == {}


def test_gangs_beyond_the_reservation_depth_wait_for_whole_nodes() -> None:
    s = cluster("n1", "n2", "n3")
    s.handle(job("busy"))
    actions = s.handle(job("g1", nodes=3), job("g2", nodes=3))
    assert s.reservation("g1") is not None and s.reservation("g2") is None
    assert reasons(actions)["g2"] == "Waiting for 3 whole nodes in compute environment ce"


def test_gang_wait_reason_is_emitted_only_when_it_changes() -> None:
    s = cluster("n1", "n2")
    s.handle(job("busy"))
    assert set(reasons(s.handle(job("g", nodes=2)))) == {"g"}
    assert s.handle() == []
    assert s.handle(tick(50)) == []
    logged = [d for _, d in s.decisions if d.startswith("reserve for g")]
    assert len(logged) == 1


def test_withdrawn_gang_gives_up_its_reservation() -> None:
    s = cluster("n1", "n2")
    s.handle(job("busy"))
    s.handle(job("g", nodes=2))
    s.handle(JobWithdrawn(_eid(), "g"))
    assert s.reservation("g") is None
    assert singles(s.handle(job("a"))) == {"a": "n1"}  # best fit next to busy, n2 free again
    assert singles(s.handle(job("b", request=req(4)))) == {"b": "n2"}


# ---------------------------------------------------------------- properties
CES = ("ce-a", "ce-b")
NODE_NAMES = tuple(f"n{i}" for i in range(6))
JOB_IDS = tuple(f"j{i}" for i in range(10))
QUEUES = {"q-hi": (10, ("ce-a", "ce-b")), "q-lo": (1, ("ce-b", "ce-a"))}
NODE_SIZES = [(2, 4096, 0), (4, 8192, 1)]
GROUPS = [None, "pg-1", "pg-2"]
REQUESTS = [req(1, 1024, 0), req(2, 2048, 0), req(4, 4096, 1), req(0.5, 512, 0)]

_pick = st.integers(0, 63)
_runnable = st.tuples(
    st.just("runnable"),
    _pick,
    st.sampled_from(sorted(QUEUES)),
    st.sampled_from(REQUESTS),
    st.sampled_from([1, 1, 1, 2, 2, 3, 4]),
    st.sampled_from([None, 10, 100]),
)
_op = st.one_of(
    _runnable,
    _runnable,
    _runnable,
    st.tuples(st.just("end"), _pick),
    st.tuples(st.just("end"), _pick),
    st.tuples(st.just("tick"), st.sampled_from([1, 10, 50])),
    st.tuples(st.just("withdraw"), _pick),
    st.tuples(
        st.just("node_up"),
        st.sampled_from(NODE_NAMES),
        st.sampled_from(CES),
        st.sampled_from(NODE_SIZES),
        st.sampled_from([True, True, True, False]),
        st.sampled_from(GROUPS),
    ),
    st.tuples(st.just("node_gone"), st.sampled_from(NODE_NAMES)),
    st.tuples(st.just("ce"), st.sampled_from(CES), st.booleans(), st.booleans()),
)


@dataclass
class _GangModel:
    """What the head knows, kept apart from the core to check its actions."""

    now: float = 0.0
    nodes: dict[str, tuple[str, tuple[float, int, int], bool, str | None]] = field(
        default_factory=dict
    )
    ces: dict[str, tuple[bool, bool]] = field(default_factory=dict)  # enabled, require_pg
    state: dict[str, str] = field(default_factory=lambda: dict.fromkeys(JOB_IDS, "idle"))
    job: dict[str, JobRunnable] = field(default_factory=dict)
    live: dict[str, list[str]] = field(default_factory=dict)  # started job -> nodes it holds
    reason: dict[str, str] = field(default_factory=dict)
    seq: int = 0

    def event_for(self, op: tuple) -> Event | None:  # type: ignore[type-arg]
        kind = op[0]
        if kind == "node_up":
            _, name, ce, size, accepting, pg = op
            allocations: tuple[tuple[str, ResourceRequest], ...] = ()
            gang_jobs: tuple[str, ...] = ()
            if name in self.nodes:  # a live re-registration reports what it runs
                ce, size, _, pg = self.nodes[name]
                held = [j for j, ns in self.live.items() if name in ns]
                allocations = tuple((j, self.job[j].request) for j in held)
                gang_jobs = tuple(j for j in held if self.job[j].num_nodes > 1)
            self.nodes[name] = (ce, size, accepting, pg)
            self.ces.setdefault(ce, (True, False))
            return NodeUp(_eid(), name, ce, *size, allocations, accepting, pg, gang_jobs)
        if kind == "node_gone":
            self.nodes.pop(op[1], None)
            for j, ns in self.live.items():
                if op[1] in ns:
                    ns.remove(op[1])
                    self.state[j] = "lost"
            return NodeGone(_eid(), op[1])
        if kind == "runnable":
            _, k, q, r, n, limit = op
            j = self._eligible(k, "idle")
            if j is None:
                return None
            self.seq += 1
            self.state[j] = "runnable"
            self.reason.pop(j, None)
            self.job[j] = JobRunnable(_eid(), j, q, r, self.seq, n, limit)
            return self.job[j]
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
        if kind == "tick":
            self.now += op[1]
            return Tick(_eid(), self.now)
        _, name, enabled, require_pg = op
        self.ces[name] = (enabled, require_pg)
        return ComputeEnvironmentChanged(_eid(), name, enabled, None, require_pg)

    def _eligible(self, k: int, *states: str) -> str | None:
        jobs = [j for j in JOB_IDS if self.state[j] in states]
        return jobs[k % len(jobs)] if jobs else None

    def holders(self, name: str) -> list[str]:
        return [j for j, ns in self.live.items() if name in ns]

    def usage(self, name: str) -> tuple[float, int, int]:
        held = [self.job[j].request for j in self.holders(name)]
        return (
            sum(r.vcpus for r in held),
            sum(r.memory_mib for r in held),
            sum(r.gpus for r in held),
        )

    def could_ever_run(self, j: str) -> bool:
        """Whether ``j`` fits the cluster as it is, were every node empty."""
        jb = self.job[j]
        r = jb.request
        for ce in QUEUES[jb.queue][1]:
            enabled, require_pg = self.ces.get(ce, (True, False))
            able = [
                pg
                for c, (v, m, g), accepting, pg in self.nodes.values()
                if c == ce and accepting and r.vcpus <= v and r.memory_mib <= m and r.gpus <= g
            ]
            if not enabled:
                continue
            if jb.num_nodes == 1 and able:
                return True
            if jb.num_nodes > 1:
                if not require_pg and len(able) >= jb.num_nodes:
                    return True
                groups = [pg for pg in able if pg is not None]
                if any(groups.count(pg) >= jb.num_nodes for pg in set(groups)):
                    return True
        return False


def _check(model: _GangModel, s: Scheduler, actions: list[Action]) -> None:
    started: list[tuple[str, tuple[str, ...]]] = []
    for a in actions:
        if isinstance(a, SetWaitReason):
            assert model.state[a.job_id] == "runnable"
            assert model.reason.get(a.job_id) != a.reason, "unchanged reason re-emitted"
            model.reason[a.job_id] = a.reason
            continue
        assert isinstance(a, StartAttempt | StartGang)
        jb = model.job[a.job_id]
        assert model.state[a.job_id] == "runnable", f"{a.job_id} started twice"
        nodes = (a.node,) if isinstance(a, StartAttempt) else a.nodes
        assert (jb.num_nodes > 1) == isinstance(a, StartGang)
        assert len(nodes) == jb.num_nodes and len(set(nodes)) == len(nodes), "partial gang"
        enabled, require_pg = model.ces[a.compute_environment]
        assert enabled
        assert a.compute_environment in QUEUES[jb.queue][1]
        for name in nodes:
            ce, _, accepting, _ = model.nodes[name]
            assert ce == a.compute_environment, "a gang spans compute environments"
            assert accepting
            for other in model.holders(name):
                assert model.job[other].num_nodes == 1, f"{a.job_id} placed on gang {other}'s node"
                assert jb.num_nodes == 1, f"gang {a.job_id} placed on {name} running {other}"
        if isinstance(a, StartGang) and require_pg:
            groups = {model.nodes[n][3] for n in nodes}
            assert len(groups) == 1 and None not in groups
        model.state[a.job_id] = "started"
        model.live[a.job_id] = list(nodes)
        model.reason.pop(a.job_id, None)
        started.append((a.job_id, nodes))
    # A reservation with a known start is never delayed by what started in the same pass:
    # work placed before it was counted in its start, work placed after it is backfill.
    for g in JOB_IDS:
        res = s.reservation(g)
        if res is None or res.start_s == UNKNOWN:
            continue
        assert model.state[g] == "runnable"
        for j, nodes in started:
            if set(nodes) & set(res.nodes):
                limit = model.job[j].time_limit_s
                assert limit is not None and model.now + limit <= res.start_s, (
                    f"{j} delays {g}'s reservation {res}"
                )
    for name, (_, cap, _, _) in model.nodes.items():
        used = model.usage(name)
        assert all(u <= c + 1e-9 for u, c in zip(used, cap, strict=True)), f"{name} over-allocated"
        assert s.node_usage(name) == used, f"{name}: core {s.node_usage(name)} != {used}"
        holders = model.holders(name)
        if any(model.job[j].num_nodes > 1 for j in holders):
            assert len(holders) == 1, f"{name} shared with a gang: {holders}"
    for j, ns in model.live.items():
        assert set(s.allocated_nodes(j)) == set(ns), f"{j}: core holds {s.allocated_nodes(j)}"


def _run(batches: list[list[tuple]]) -> None:  # type: ignore[type-arg]
    s = Scheduler()
    model = _GangModel()
    setup = [("node_up", n, CES[i % 2], (4, 8192, 1), True, GROUPS[i % 3]) for i, n in
             enumerate(NODE_NAMES)]
    events = [JobQueueChanged(_eid(), q, True, p, c) for q, (p, c) in QUEUES.items()]
    events += [e for e in (model.event_for(op) for op in setup) if e is not None]
    _check(model, s, s.handle(*events))
    for batch in batches:
        events = [e for e in (model.event_for(op) for op in batch) if e is not None]
        _check(model, s, s.handle(*events))
    # Liveness: with every compute environment enabled and every attempt ending each
    # round, each job that could run on this cluster starts: no deadlock, no starvation.
    _check(model, s, s.handle(*(model.event_for(("ce", ce, True, rp)) for ce, (_, rp) in
                                 list(model.ces.items()))))  # type: ignore[misc]
    for _ in range(3 * len(JOB_IDS) + 3):
        ending = [j for j in JOB_IDS if model.state[j] in ("started", "lost")]
        events = []
        for j in ending:
            model.state[j] = "idle"
            model.live.pop(j, None)
            events.append(AttemptEnded(_eid(), j))
        _check(model, s, s.handle(*events))  # type: ignore[arg-type]
    stuck = [j for j in JOB_IDS if model.state[j] == "runnable" and model.could_ever_run(j)]
    assert not stuck, f"{stuck} never started: {[model.reason.get(j) for j in stuck]}"


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(_op, min_size=1, max_size=4), min_size=5, max_size=40))
def test_random_gangs_and_single_jobs_never_share_or_split_a_gang(
    batches: list[list[tuple]],  # type: ignore[type-arg]
) -> None:
    """Gangs and single jobs arrive, nodes come, go and re-register, time passes, attempts
    end: no gang is ever partly placed or spans compute environments, no job shares a
    gang's node, no node is over-allocated, the core's usage matches, and once attempts
    keep ending every job that could run does."""
    _run(batches)
