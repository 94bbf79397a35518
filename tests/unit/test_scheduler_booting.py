"""The scheduler core plans with pool nodes powered down or booting (issue 20): the boot time is
part of the reservation, so backfill stays honest; forecasts include it. Pure: events in."""

from __future__ import annotations

import heapq
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.scheduler import (
    AttemptEnded,
    ComputeEnvironmentChanged,
    JobQueueChanged,
    JobRunnable,
    NodePowerChanged,
    NodeUp,
    PowerRateReached,
    Scheduler,
    SetWaitReason,
    StartAttempt,
    StartGang,
    Tick,
)
from hpcbatch.scheduler.reasons import CAPACITY

_ids = itertools.count(1)
BOOT = 90.0


def _e() -> str:
    return f"e{next(_ids)}"


def up(name: str, group: str | None = None) -> NodeUp:
    return NodeUp(_e(), name, "ce", 4, 8192, 0, placement_group=group)


def booting(name: str, since: float, group: str | None = None) -> NodePowerChanged:
    return NodePowerChanged(_e(), name, "ce", "POWERING_UP", BOOT, 4, 8192, since_s=since, placement_group=group)


def down(name: str, group: str | None = None) -> NodePowerChanged:
    return NodePowerChanged(_e(), name, "ce", "POWERED_DOWN", BOOT, 4, 8192, placement_group=group)


def gang(job_id: str, n: int, seq: int, limit: int | None = 1000) -> JobRunnable:
    return JobRunnable(_e(), job_id, "q", ResourceRequest(4, 1024), seq, num_nodes=n, time_limit_s=limit)


def single(job_id: str, seq: int, limit: int | None, vcpus: float = 1) -> JobRunnable:
    return JobRunnable(_e(), job_id, "q", ResourceRequest(vcpus, 1024), seq, time_limit_s=limit)


def cluster(now: float = 10.0) -> Scheduler:
    s = Scheduler()
    s.handle(Tick(_e(), now), ComputeEnvironmentChanged(_e(), "ce", True, None),
             JobQueueChanged(_e(), "q", True, 1, ("ce",)))
    return s


def started(actions: list) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for a in actions:
        if isinstance(a, StartAttempt):
            out[a.job_id] = (a.node,)
        elif isinstance(a, StartGang):
            out[a.job_id] = a.nodes
    return out


def reasons(actions: list) -> dict[str, str]:
    return {a.job_id: a.reason for a in actions if isinstance(a, SetWaitReason)}


def test_a_gang_waiting_for_a_boot_is_reserved_from_when_the_nodes_are_up() -> None:
    s = cluster(now=10.0)
    acts = s.handle(up("n1"), up("n2"), booting("n3", since=0.0), booting("n4", since=5.0), gang("g", 4, 1))
    assert started(acts) == {}
    res = s.reservation("g")
    assert res is not None and res.nodes == ("n1", "n2", "n3", "n4")
    assert res.start_s == 5.0 + BOOT  # the last boot to end
    assert res.powering_up == ("n3", "n4")
    assert reasons(acts)["g"] == ("Reserved nodes n[1-4] in compute environment ce; "
                                  "powering up n[3-4], expected up by t=95")


def test_a_short_job_backfills_during_the_boot_and_a_long_one_does_not() -> None:
    s = cluster(now=10.0)
    s.handle(up("n1"), up("n2"), booting("n3", since=0.0), booting("n4", since=0.0), gang("g", 4, 1))
    acts = s.handle(Tick(_e(), 20.0), single("short", 2, limit=70), single("long", 3, limit=71))
    assert started(acts) == {"short": ("n1",)}  # 20 + 70 <= 90: done before the boot is
    assert "long" in reasons(acts)
    # The nodes come up at 90 and the short job ends then: the gang starts on time.
    acts = s.handle(Tick(_e(), 90.0), AttemptEnded(_e(), "short"), up("n3"), up("n4"))
    assert started(acts) == {"g": ("n1", "n2", "n3", "n4")}


def test_without_the_boot_in_the_reservation_idle_nodes_are_taken_by_long_jobs() -> None:
    """The same cluster without the power facts: the core does not know the gang can start at 90,
    so it reserves nothing and a long job takes an idle node (what issue 20 fixes)."""
    s = cluster(now=10.0)
    s.handle(up("n1"), up("n2"), gang("g", 4, 1))
    assert s.reservation("g") is None
    acts = s.handle(Tick(_e(), 20.0), single("long", 2, limit=1000))
    assert started(acts) == {"long": ("n1",)}


def test_powered_down_nodes_count_from_now_plus_the_boot_and_the_reason_does_not_churn() -> None:
    s = cluster(now=10.0)
    acts = s.handle(up("n1"), down("n2"), down("n3"), gang("g", 3, 1))
    res = s.reservation("g")
    assert res is not None and res.start_s == 10.0 + BOOT and res.powered_down == ("n2", "n3")
    first = reasons(acts)["g"]
    assert first == "Reserved nodes n[1-3] in compute environment ce; n[2-3] are powered down, up ~90 s after a power-up"
    acts = s.handle(Tick(_e(), 30.0))
    assert s.reservation("g").start_s == 30.0 + BOOT  # type: ignore[union-attr]
    assert "g" not in reasons(acts)  # same reason: nothing re-emitted
    # A job that ends within the boot may use n1 meanwhile; one that would not, may not.
    acts = s.handle(single("ok", 2, limit=BOOT), single("no", 3, limit=BOOT + 1))
    assert started(acts) == {"ok": ("n1",)}


def test_a_pool_held_back_by_its_resume_rate_says_so_and_till_when_then_stops_saying_it() -> None:
    """The power planner held a power-up back (resume_rate reached): the wait reasons of jobs
    that want the pool's powered-down nodes say so, with when the next power-up may begin."""
    s = cluster(now=10.0)
    acts = s.handle(up("n1"), down("n2"), down("n3"), gang("g", 3, 1), single("big", 2, limit=None, vcpus=8))
    assert "resume_rate" not in reasons(acts)["g"]
    acts = s.handle(PowerRateReached(_e(), "ce", 70.0))
    assert reasons(acts)["g"] == (
        "Reserved nodes n[1-3] in compute environment ce; n[2-3] are powered down, up ~90 s after a "
        "power-up; the pool's resume_rate is reached: the next power-up from t=70")
    acts = s.handle(Tick(_e(), 30.0))
    assert "g" not in reasons(acts)  # absolute times: the reason does not churn
    acts = s.handle(PowerRateReached(_e(), "ce", 0.0))  # no longer held back
    assert "resume_rate" not in reasons(acts)["g"]


def test_a_compute_environment_with_only_powered_down_nodes_serves_its_queue_with_a_capacity_reason() -> None:
    s = cluster(now=0.0)
    acts = s.handle(down("n1"), down("n2"), gang("g", 2, 1), single("big", 2, limit=None, vcpus=4))
    why = reasons(acts)
    assert why["g"].startswith("Reserved nodes n[1-2]"), why
    assert why["big"].startswith(CAPACITY) and "powered down" in why["big"], why


def test_a_gang_that_only_booting_nodes_complete_is_not_a_misconfiguration() -> None:
    s = cluster(now=0.0)
    acts = s.handle(up("n1"), booting("n2", since=0.0), gang("g", 2, 1, limit=None))
    assert not reasons(acts)["g"].startswith("MISCONFIGURATION")
    assert s.reservation("g") is not None


def test_a_single_job_that_only_a_booting_node_can_hold_is_reserved_there() -> None:
    s = Scheduler()
    s.handle(Tick(_e(), 0.0), ComputeEnvironmentChanged(_e(), "ce", True, None),
             JobQueueChanged(_e(), "q", True, 1, ("ce",)))
    acts = s.handle(NodeUp(_e(), "small", "ce", 2, 4096, 0),
                    NodePowerChanged(_e(), "big", "ce", "POWERING_UP", 60.0, 16, 65536, since_s=0.0),
                    single("j", 1, limit=None, vcpus=8))
    res = s.reservation("j")
    assert res is not None and res.nodes == ("big",) and res.start_s == 60.0
    assert reasons(acts)["j"].startswith(CAPACITY) and "powering up big, expected up by t=60" in reasons(acts)["j"]
    acts = s.handle(Tick(_e(), 60.0), NodeUp(_e(), "big", "ce", 16, 65536, 0))
    assert started(acts) == {"j": ("big",)}


def test_registration_and_other_power_states_take_a_node_out_of_planning() -> None:
    s = cluster(now=0.0)
    s.handle(up("n1"), booting("n2", since=0.0), gang("g", 2, 1))
    assert s.reservation("g") is not None
    # n2 failed to come up (the planner shows it POWERED_DOWN and failed: it sends another state)
    s.handle(NodePowerChanged(_e(), "n2", "ce", "FAILED", BOOT, 4, 8192))
    assert s.reservation("g") is None


def test_forecast_of_a_job_waiting_for_a_boot_includes_the_boot() -> None:
    s = cluster(now=10.0)
    s.handle(up("n1"), booting("n2", since=0.0), down("n3"), gang("g2", 2, 1), gang("g3", 3, 2))
    assert s.expected_start("g2", max_age_s=0) == BOOT  # n2 is up at 0 + 90
    # n3 is up at 10 + 90, but g3 needs three nodes: after g2 (1000 s on n1, n2) ends.
    assert s.expected_start("g3", max_age_s=0) == BOOT + 1000
    s2 = cluster(now=10.0)
    s2.handle(up("n1"), down("n3"), gang("g", 2, 1))
    assert s2.expected_start("g", max_age_s=0) == 10.0 + BOOT


def test_nothing_changes_without_power_facts() -> None:
    """A head that sends no NodePowerChanged gets today's behaviour (the field is optional)."""
    s = cluster(now=0.0)
    acts = s.handle(up("n1"), gang("g", 2, 1))
    assert reasons(acts)["g"].startswith("MISCONFIGURATION")


# ------------------------------------------------------------------ property
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    idle=st.integers(1, 3),
    boots=st.lists(st.floats(0, 50, allow_nan=False), min_size=1, max_size=3),
    later=st.lists(st.integers(0, 60), max_size=2),
    arrivals=st.lists(st.tuples(st.integers(0, 200), st.integers(1, 300), st.integers(1, 4)), max_size=12),
)
def test_backfill_never_delays_a_reservation_that_waits_for_a_boot(
    idle: int, boots: list[float], later: list[int], arrivals: list[tuple[int, int, int]],
) -> None:
    """A gang reserved on idle nodes, booting ones and powered-down ones (powered up at
    ``later`` times) starts the moment the last boot ends, whatever short and long jobs
    arrive meanwhile: every backfill ends by then."""
    s = cluster(now=0.0)
    names = [f"b{i}" for i in range(len(boots))]
    downs = [f"d{i}" for i in range(len(later))]
    s.handle(*[up(f"n{i}") for i in range(idle)], *[booting(n, t) for n, t in zip(names, boots, strict=True)],
             *[down(n) for n in downs], gang("g", idle + len(boots) + len(downs), 1))
    due = max([t + BOOT for t in boots] + [t + BOOT for t in later])
    # The timeline: power-ups, registrations, arrivals, the ends of what started (at its limit).
    events: list[tuple[float, int, str]] = [(t + BOOT, 0, n) for n, t in zip(names + downs, boots + later, strict=True)]
    events += [(float(t), 3, n) for n, t in zip(downs, later, strict=True)]
    events += [(float(t), 1, f"j{i}") for i, (t, _limit, _vcpus) in enumerate(arrivals)]
    heapq.heapify(events)
    gang_start, seq = None, 2
    while events and gang_start is None:
        now = events[0][0]
        batch: list = [Tick(_e(), now)]
        while events and events[0][0] == now:
            _, kind, key = heapq.heappop(events)
            if kind == 0:
                batch.append(up(key))
            elif kind == 3:  # the power planner powers it up now: booting from now
                batch.append(booting(key, now))
            elif kind == 1:
                seq += 1
                _t, limit, vcpus = arrivals[int(key[1:])]
                batch.append(single(key, seq, limit, vcpus))
            else:
                batch.append(AttemptEnded(_e(), key))
        for job_id in started(s.handle(*batch)):
            if job_id == "g":
                gang_start = now
            else:  # it runs exactly its time limit (the worst case for the gang)
                heapq.heappush(events, (now + arrivals[int(job_id[1:])][1], 2, job_id))
    assert gang_start == due


def test_a_pool_node_of_unknown_memory_holds_any_memory() -> None:
    s = cluster(now=0.0)
    s.handle(NodePowerChanged(_e(), "n1", "ce", "POWERED_DOWN", BOOT, 4, 0),
             JobRunnable(_e(), "j", "q", ResourceRequest(2, 500_000), 1))
    assert s.reservation("j") is not None and s.reservation("j").nodes == ("n1",)  # type: ignore[union-attr]
