"""The pure power planner (hpcbatch.scheduler.power): facts and time in, power actions out."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hpcbatch.scheduler.power import (
    Demand,
    NodeFailed,
    NodePower,
    NodeView,
    Pool,
    PowerOff,
    PowerOn,
    PowerPlanner,
    PowerState,
)

NODES = tuple(f"node{i}" for i in range(1, 9))


def pool(**kw: object) -> Pool:
    args: dict = dict(compute_environment="managed", nodes=NODES, vcpus_per_node=2, min_vcpus=0, max_vcpus=16,
                      suspend_after_s=60, resume_timeout_s=30, boot_time_s=90)
    args.update(kw)
    return Pool(**args)


def ons(plan: object) -> list[PowerOn]:
    return [a for a in plan.actions if isinstance(a, PowerOn)]  # type: ignore[attr-defined]


def offs(plan: object) -> list[PowerOff]:
    return [a for a in plan.actions if isinstance(a, PowerOff)]  # type: ignore[attr-defined]


def up(names: list[str], busy: bool = False) -> dict[str, NodeView]:
    return {n: NodeView(n, 2, 2 if busy else 0, busy) for n in names}


def test_a_gang_powers_up_exactly_the_nodes_it_needs_once() -> None:
    planner = PowerPlanner([pool()], now=0)
    gang = Demand("job1", ("managed",), vcpus=1, num_nodes=4)
    plan = planner.plan(1, [gang], {})
    assert [a.nodes for a in ons(plan)] == [("node1", "node2", "node3", "node4")]
    assert plan.waiting["job1"] == "powering up node[1-4], expected in ~90 s"
    assert plan.desired_vcpus["managed"] == 8
    # Asked again while they boot: nothing more is powered.
    again = planner.plan(2, [gang], {})
    assert ons(again) == [] and "node[1-4]" in again.waiting["job1"]
    assert planner.records["node1"].state is PowerState.POWERING_UP


def test_a_single_job_powers_one_node_and_fills_powered_nodes_first() -> None:
    planner = PowerPlanner([pool()], now=0)
    plan = planner.plan(1, [Demand("a", ("managed",), 1), Demand("b", ("managed",), 1), Demand("c", ("managed",), 2)], {})
    # a and b share one 2-vCPU node (BEST_FIT: fewest nodes); c needs another.
    assert [a.nodes for a in ons(plan)] == [("node1", "node2")]
    # Registered nodes with room: no power-up.
    planner2 = PowerPlanner([pool()], now=0)
    planner2.restore("node3", NodePower(PowerState.ACTIVE, 0, "Registered"))
    assert ons(planner2.plan(1, [Demand("a", ("managed",), 2)], up(["node3"]))) == []


def test_a_gang_prefers_one_placement_group() -> None:
    groups = {n: ("rack1" if n in ("node1", "node2", "node3") else "rack2") for n in NODES}
    planner = PowerPlanner([pool(placement_groups=groups)], now=0)
    plan = planner.plan(1, [Demand("g", ("managed",), 1, num_nodes=4)], {})
    assert [a.nodes for a in ons(plan)] == [("node4", "node5", "node6", "node7")]


def test_max_vcpus_caps_power_ups_and_min_vcpus_keeps_nodes_warm() -> None:
    planner = PowerPlanner([pool(max_vcpus=4, min_vcpus=4)], now=0)
    plan = planner.plan(0, [], {})
    assert [a.nodes for a in ons(plan)] == [("node1", "node2")]  # minvCpus 4 = two 2-vCPU nodes
    plan = planner.plan(1, [Demand("big", ("managed",), 1, num_nodes=3)], {})
    assert ons(plan) == [] and "big" not in plan.waiting  # 6 vCPUs > maxvCpus 4: never powered
    # Registered and idle long past suspend_after_s: minvCpus keeps them on.
    planner.plan(2, [], up(["node1", "node2"]))
    assert offs(planner.plan(500, [], up(["node1", "node2"]))) == []
    assert planner.plan(501, [], up(["node1", "node2"])).desired_vcpus["managed"] == 4


def test_idle_nodes_power_down_after_suspend_after_but_not_busy_or_claimed_ones() -> None:
    planner = PowerPlanner([pool()], now=0)
    planner.plan(0, [Demand("g", ("managed",), 1, num_nodes=2)], {})
    planner.plan(5, [], up(["node1"], busy=True) | up(["node2"]))
    assert offs(planner.plan(64, [], up(["node1"], busy=True) | up(["node2"]))) == []  # idle 59 s
    plan = planner.plan(65, [], up(["node1"], busy=True) | up(["node2"]))
    assert [a.nodes for a in offs(plan)] == [("node2",)]
    assert planner.records["node2"].state is PowerState.POWERING_DOWN
    assert planner.powered_off(["node2"], 70) == ["node2"]
    assert planner.records["node2"].state is PowerState.POWERED_DOWN
    # A waiting job that needs the idle node keeps it on.
    planner.plan(66, [], up(["node1"]))
    assert offs(planner.plan(200, [Demand("x", ("managed",), 2)], up(["node1"]))) == []


def test_a_node_that_never_registers_is_failed_and_the_job_served_by_another() -> None:
    planner = PowerPlanner([pool()], now=0)
    job = Demand("j", ("managed",), 2)
    assert [a.nodes for a in ons(planner.plan(0, [job], {}))] == [("node1",)]
    assert ons(planner.plan(29, [job], {})) == []
    plan = planner.plan(30, [job], {})
    failed = [a for a in plan.actions if isinstance(a, NodeFailed)]
    assert failed and failed[0].node == "node1" and "resume_timeout_s 30 s" in failed[0].reason
    assert [a.nodes for a in ons(plan)] == [("node2",)]  # placed elsewhere, at once
    assert planner.records["node1"].failed and planner.records["node1"].state is PowerState.POWERED_DOWN
    # It registers by itself later: usable again.
    planner.plan(31, [], up(["node1"]))
    assert planner.records["node1"].state is PowerState.ACTIVE and not planner.records["node1"].failed


def test_restored_powering_up_records_are_not_powered_twice_after_a_restart() -> None:
    planner = PowerPlanner([pool()], now=100)
    for n in ("node1", "node2"):
        planner.restore(n, NodePower(PowerState.POWERING_UP, 95, "Powering up for job g"))
    plan = planner.plan(101, [Demand("g", ("managed",), 1, num_nodes=2)], {})
    assert ons(plan) == [] and plan.waiting["g"] == "powering up node[1-2], expected in ~85 s"


def test_resume_rate_limits_power_ups_per_minute() -> None:
    planner = PowerPlanner([pool(resume_rate=2)], now=0)
    plan = planner.plan(0, [Demand(f"j{i}", ("managed",), 2) for i in range(3)], {})
    assert [a.nodes for a in ons(plan)] == [("node1", "node2")]
    assert "resume_rate 2 nodes/min" in plan.waiting["j2"]
    assert plan.rate_reached == {"managed": 60.0}  # the next power-up when the first ages out
    held = planner.plan(30, [Demand("j2", ("managed",), 2)], {})
    assert ons(held) == [] and held.rate_reached == {"managed": 60.0}
    freed = planner.plan(61, [Demand("j2", ("managed",), 2)], {})
    assert [a.nodes for a in ons(freed)] == [("node3",)] and freed.rate_reached == {}


def test_a_node_lost_or_powered_off_by_hand_is_noticed_and_hours_are_counted() -> None:
    planner = PowerPlanner([pool(nodes=("node1", "node2"))], now=0)
    planner.restore("node1", NodePower(PowerState.ACTIVE, 0, "Registered"))
    planner.plan(10, [], up(["node1"]))
    plan = planner.plan(20, [], {})
    assert planner.records["node1"].state is PowerState.POWERED_DOWN and "node1" in plan.changed
    assert planner.powered_s == 20 and planner.saved_s == 20  # node1 on 20 s; node2 off 20 s


def test_a_gpu_job_powers_up_a_node_of_a_pool_with_gpus_and_none_of_a_pool_without() -> None:
    cpu = pool(compute_environment="cpu", nodes=("cpu1", "cpu2"))
    gpu = pool(compute_environment="gpu", nodes=("gpu1", "gpu2"), gpus_per_node=4, memory_mib_per_node=8192)
    planner = PowerPlanner([cpu, gpu], now=0)
    plan = planner.plan(1, [Demand("g", ("cpu", "gpu"), 1, gpus=2), Demand("c", ("cpu", "gpu"), 1)], {})
    assert [(a.compute_environment, a.nodes) for a in ons(plan)] == [("cpu", ("cpu1",)), ("gpu", ("gpu1",))]
    assert plan.waiting["g"].startswith("powering up gpu1")


def test_gpus_and_memory_count_on_powered_nodes_as_well_as_vcpus() -> None:
    gpu = pool(nodes=("gpu1", "gpu2"), vcpus_per_node=8, gpus_per_node=4, memory_mib_per_node=8192)
    planner = PowerPlanner([gpu], now=0)
    planner.restore("gpu1", NodePower(PowerState.ACTIVE, 0, "Registered"))
    views = {"gpu1": NodeView("gpu1", 8, 1, True, memory_mib=8192, used_memory_mib=1024, gpus=4, used_gpus=3)}
    # One GPU left on gpu1: a 1-GPU job fits there; a 2-GPU job powers gpu2 up.
    assert ons(planner.plan(1, [Demand("one", ("managed",), 1, gpus=1)], views)) == []
    assert [a.nodes for a in ons(planner.plan(2, [Demand("two", ("managed",), 1, gpus=2)], views))] == [("gpu2",)]
    # Memory: 7168 MiB left on gpu1, so a job asking for 8000 waits for gpu2 (already coming up), not gpu1.
    plan = planner.plan(3, [Demand("mem", ("managed",), 1, memory_mib=8000)], views)
    assert ons(plan) == [] and plan.waiting["mem"].startswith("powering up gpu2")
    # More than a node has: nothing is powered up for it.
    assert ons(PowerPlanner([gpu], now=0).plan(1, [Demand("big", ("managed",), 1, memory_mib=9000)], {})) == []


def test_a_gpu_gang_counts_whole_gpu_nodes() -> None:
    gpu = pool(nodes=tuple(f"gpu{i}" for i in range(1, 5)), gpus_per_node=8)
    planner = PowerPlanner([gpu], now=0)
    assert [a.nodes for a in ons(planner.plan(1, [Demand("gang", ("managed",), 2, num_nodes=3, gpus=8)], {}))] == [
        ("gpu1", "gpu2", "gpu3")]
    assert ons(PowerPlanner([gpu], now=0).plan(1, [Demand("x", ("managed",), 2, num_nodes=2, gpus=9)], {})) == []


# --------------------------------------------- power changed by hand (PowerPlanner.driver_says)
T0 = 1_765_000_000.0  # 2025-12-06T05:46:40Z


def test_a_node_seen_off_while_active_is_powered_down_with_driver_and_time_and_may_be_powered_up_again() -> None:
    planner = PowerPlanner([pool(nodes=("node1",))], now=T0)
    planner.restore("node1", NodePower(PowerState.ACTIVE, T0, "Registered"))
    seen = planner.driver_says({"node1": "Off"}, T0 + 5, "redfish")
    assert [(s.node, s.power, s.lost) for s in seen] == [("node1", "Off", True)]
    assert seen[0].reason == "powered off outside hpcbatch, seen by redfish at 2025-12-06T05:46:45Z"
    rec = planner.records["node1"]
    assert rec.state is PowerState.POWERED_DOWN and rec.since == T0 + 5 and not rec.failed
    assert rec.reason == "Powered off outside hpcbatch, seen by redfish at 2025-12-06T05:46:45Z"
    assert planner.driver_says({"node1": "Off"}, T0 + 6, "redfish") == []  # said once
    plan = planner.plan(T0 + 7, [Demand("j1", ("managed",), 2)], {})
    assert [a.nodes for a in ons(plan)] == [("node1",)]  # needed again: hpcbatch powers it up


def test_a_node_seen_on_while_powered_down_is_left_alone_until_it_registers_or_is_off_again() -> None:
    planner = PowerPlanner([pool(nodes=("node1", "node2"))], now=T0)
    seen = planner.driver_says({"node1": "On", "node2": "Off"}, T0 + 1, "ipmi")
    assert [(s.node, s.power, s.lost) for s in seen] == [("node1", "On", False)]
    rec = planner.records["node1"]
    assert rec.state is PowerState.POWERED_DOWN and rec.left_alone
    assert rec.reason.startswith("On outside hpcbatch, seen by ipmi at ") and "not powered on again" in rec.reason
    plan = planner.plan(T0 + 2, [Demand("j1", ("managed",), 2)], {})
    assert [a.nodes for a in ons(plan)] == [("node2",)]  # node1 is on already: never powered on by hpcbatch
    # Its agent registers: it is an ordinary ACTIVE node again.
    planner.plan(T0 + 3, [], up(["node1"]))
    assert planner.records["node1"].state is PowerState.ACTIVE and not planner.records["node1"].left_alone
    # Another seen On, then Off again: hpcbatch may power it up once more.
    planner.restore("node1", NodePower(PowerState.POWERED_DOWN, T0, "x"))
    planner.driver_says({"node1": "PoweringOn"}, T0 + 4, "ipmi")
    again = planner.driver_says({"node1": "Off"}, T0 + 5, "ipmi")
    assert [(s.node, s.power, s.lost) for s in again] == [("node1", "Off", False)]
    assert not planner.records["node1"].left_alone and "off again" in planner.records["node1"].reason.lower()


def test_a_booting_node_its_bmc_still_calls_off_is_judged_only_after_its_boot_time() -> None:
    planner = PowerPlanner([pool(nodes=("node1",), boot_time_s=90, resume_timeout_s=300)], now=T0)
    planner.restore("node1", NodePower(PowerState.POWERING_UP, T0, "Powering up for job j1"))
    assert planner.driver_says({"node1": "Off"}, T0 + 10, "redfish") == []  # BMCs take seconds to apply On
    assert planner.records["node1"].state is PowerState.POWERING_UP
    seen = planner.driver_says({"node1": "Off"}, T0 + 90, "redfish")
    assert [(s.node, s.lost) for s in seen] == [("node1", True)]
    assert planner.records["node1"].state is PowerState.POWERED_DOWN


def test_unknown_and_transitional_answers_change_nothing() -> None:
    planner = PowerPlanner([pool(nodes=("node1", "node2", "node3"))], now=T0)
    planner.restore("node1", NodePower(PowerState.ACTIVE, T0, "Registered"))
    planner.restore("node3", NodePower(PowerState.POWERING_DOWN, T0, "Powering down: idle"))
    answers = {"node1": "Unknown", "node2": "Unknown", "node3": "Off", "node9": "On"}
    assert planner.driver_says(answers, T0 + 1, "command") == []
    assert planner.driver_says({"node1": "PoweringOff"}, T0 + 1, "redfish") == []
    assert [r.state for r in planner.records.values()] == [
        PowerState.ACTIVE, PowerState.POWERED_DOWN, PowerState.POWERING_DOWN]

# ---------------------------------------------- power-ups by allocation strategy (issue 20)
def _core_places(strategy: str, views: dict[str, NodeView], jobs: list[Demand]) -> set[str]:
    """The jobs the real scheduler core starts on these registered nodes under ``strategy``."""
    from hpcbatch.model.jobs import ResourceRequest
    from hpcbatch.scheduler import (
        ComputeEnvironmentChanged,
        JobQueueChanged,
        JobRunnable,
        NodeUp,
        Scheduler,
        StartAttempt,
    )

    s = Scheduler()
    events: list = [ComputeEnvironmentChanged("c", "managed", True, None, allocation_strategy=strategy),
                    JobQueueChanged("q", "q", True, 1, ("managed",))]
    for v in views.values():
        alloc = (("busy-" + v.name, ResourceRequest(v.used_vcpus, 0)),) if v.used_vcpus else ()
        events.append(NodeUp("n" + v.name, v.name, "managed", v.vcpus, 4096, 0, alloc))
    events += [JobRunnable("j" + d.job_id, d.job_id, "q", ResourceRequest(d.vcpus, 0), i) for i, d in enumerate(jobs)]
    return {a.job_id for a in s.handle(*events) if isinstance(a, StartAttempt)}


def test_power_ups_follow_the_allocation_strategy_as_the_core_places() -> None:
    """node1 has 1 vCPU free, node2 2: BEST_FIT (and PROGRESSIVE) put a on node1 and b on node2,
    powering nothing; SPREAD puts a on node2, so b needs a node powered up. Each matches what
    the core itself does with the same nodes and strategy."""
    views = {"node1": NodeView("node1", 2, 1, True), "node2": NodeView("node2", 2, 0, False)}
    jobs = [Demand("a", ("managed",), 1), Demand("b", ("managed",), 2)]
    for strategy, powered in (("BEST_FIT", 0), ("BEST_FIT_PROGRESSIVE", 0), ("SPREAD", 1)):
        planner = PowerPlanner([pool(allocation_strategy=strategy)], now=0)
        for name in views:
            planner.restore(name, NodePower(PowerState.ACTIVE, 0, "Registered"))
        plan = planner.plan(1, jobs, views)
        assert sum(len(a.nodes) for a in ons(plan)) == powered, strategy
        assert len(jobs) - len(_core_places(strategy, views, jobs)) == powered, strategy


def test_no_strategy_gives_a_job_a_power_up_it_does_not_need() -> None:
    """Four 1-vCPU jobs on 2-vCPU nodes power two nodes up, whatever the strategy."""
    jobs = [Demand(f"j{i}", ("managed",), 1) for i in range(4)]
    for strategy in ("BEST_FIT", "BEST_FIT_PROGRESSIVE", "SPREAD"):
        plan = PowerPlanner([pool(allocation_strategy=strategy)], now=0).plan(1, jobs, {})
        assert [a.nodes for a in ons(plan)] == [("node1", "node2")], strategy


def test_a_gang_takes_the_tightest_placement_group_that_holds_it() -> None:
    groups = {n: ("rack1" if n in ("node1", "node2", "node3", "node4", "node5") else "rack2") for n in NODES}
    planner = PowerPlanner([pool(placement_groups=groups)], now=0)
    plan = planner.plan(1, [Demand("g", ("managed",), 1, num_nodes=3)], {})
    assert [a.nodes for a in ons(plan)] == [("node6", "node7", "node8")]  # rack2 holds exactly 3


def test_a_gang_on_idle_nodes_across_groups_powers_nothing() -> None:
    groups = {n: ("rack1" if n in ("node1", "node2", "node3", "node4") else "rack2") for n in NODES}
    planner = PowerPlanner([pool(placement_groups=groups)], now=0)
    for name in ("node1", "node5"):
        planner.restore(name, NodePower(PowerState.ACTIVE, 0, "Registered"))
    plan = planner.plan(1, [Demand("g", ("managed",), 1, num_nodes=2)], up(["node1", "node5"]))
    assert ons(plan) == []


def test_a_gang_whose_group_would_pass_max_vcpus_is_served_across_groups() -> None:
    groups = {n: ("rack1" if n in ("node1", "node2", "node3", "node4") else "rack2") for n in NODES}
    planner = PowerPlanner([pool(placement_groups=groups, max_vcpus=6)], now=0)
    for name in ("node1", "node5"):
        planner.restore(name, NodePower(PowerState.ACTIVE, 0, "Registered"))
    plan = planner.plan(1, [Demand("g", ("managed",), 1, num_nodes=3)], up(["node1", "node5"]))
    # Either group needs 2 more nodes (8 vCPUs > maxvCpus 6); across groups needs one.
    assert [a.nodes for a in ons(plan)] == [("node2",)]


STRATEGIES = ("BEST_FIT", "BEST_FIT_PROGRESSIVE", "SPREAD")


@settings(max_examples=80, deadline=None)
@given(strategy=st.sampled_from(STRATEGIES), idle=st.integers(0, 8), n=st.integers(2, 8))
def test_property_a_gang_powers_up_exactly_what_the_idle_nodes_lack(strategy: str, idle: int, n: int) -> None:
    names = list(NODES[:idle])
    planner = PowerPlanner([pool(allocation_strategy=strategy)], now=0)
    for name in names:
        planner.restore(name, NodePower(PowerState.ACTIVE, 0, "Registered"))
    plan = planner.plan(1, [Demand("g", ("managed",), 2, num_nodes=n)], up(names))
    powered = [x for a in ons(plan) for x in a.nodes]
    assert len(powered) == max(0, n - idle) and not set(powered) & set(names)


@settings(max_examples=80, deadline=None)
@given(strategy=st.sampled_from(STRATEGIES), k=st.integers(1, 16), vcpus=st.sampled_from([0.5, 1.0, 2.0]))
def test_property_equal_jobs_power_up_the_fewest_nodes_that_hold_them(strategy: str, k: int, vcpus: float) -> None:
    """k jobs of one size on empty 2-vCPU nodes: ceil(k / per node) power-ups (up to the pool), never more."""
    jobs = [Demand(f"j{i}", ("managed",), vcpus) for i in range(k)]
    plan = PowerPlanner([pool(allocation_strategy=strategy)], now=0).plan(1, jobs, {})
    per_node = int(2 // vcpus)
    assert sum(len(a.nodes) for a in ons(plan)) == min(len(NODES), -(-k // per_node))
