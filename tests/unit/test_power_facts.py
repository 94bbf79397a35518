"""The PowerManager tells the scheduler of pool nodes powered down or booting (``NodePowerChanged``),
over a real engine and store: on change only, once for every node after a (re)start, never
for a registered node, ``since_s`` on the scheduler's clock; a waiting job's forecast counts the boot."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from hpcbatch.head.power import PowerManager
from hpcbatch.head.powerdrivers.config import PoolConfig
from hpcbatch.scheduler.events import Event, NodeGone, NodePowerChanged
from hpcbatch.scheduler.power import PowerOff
from tests.unit.test_fencing import Cluster
from tests.unit.test_power_manager import POOL, _docs

BOOTING = msgspec.structs.replace(POOL, boot_time_s=90, memory_mib_per_node=2048, gpus_per_node=1,
                                  placement_groups={"rack1": "cn[1-2]"}, container_runtime=True)


class Fed:
    """What the power manager feeds the (real) engine, kept in order; the engine still gets all."""

    def __init__(self, c: Cluster) -> None:
        self.events: list[Event] = []
        feed = c.engine.feed

        def keep(event: Event) -> None:
            self.events.append(event)
            feed(event)

        c.engine.feed = keep  # type: ignore[method-assign]

    def take(self) -> list[Event]:
        out, self.events = self.events, []
        return out


def _told(c: Cluster) -> None:
    """The store's CE ``burst`` and queue ``q`` (default, then burst), told to the engine too."""
    _docs(c)
    c.engine.compute_environment_changed(c.engine.store.get_resource("ce", "burst"))
    c.engine.job_queue_changed(c.engine.store.get_resource("queue", "q"))
    c.engine.step()


def _facts(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.node, e.state) for e in events if isinstance(e, NodePowerChanged)]


def test_facts_are_sent_once_per_node_at_start_then_only_on_change_and_never_for_a_registered_node(
        tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)  # the engine's clock: 1 s (Tick); the manager's: 5000 s (time.time's)
        _told(c)
        clock = [5000.0]
        manager = PowerManager({"burst": BOOTING}, c.engine, clock_s=lambda: clock[0])
        c.engine.power = manager
        fed = Fed(c)
        assert manager.pass_once() == []
        first = fed.take()
        assert _facts(first) == [("cn1", "POWERED_DOWN"), ("cn2", "POWERED_DOWN")]
        cn1 = first[0]
        assert isinstance(cn1, NodePowerChanged)
        assert (cn1.compute_environment, cn1.boot_s, cn1.vcpus, cn1.memory_mib, cn1.gpus, cn1.placement_group,
                cn1.features) == ("burst", 90, 1, 2048, 1, "rack1", frozenset({"container"}))
        clock[0] += 1
        manager.pass_once()
        assert _facts(fed.take()) == []  # nothing changed: nothing told (each event clears the scheduler's caches)
        for job in ("j1", "j2", "j3"):
            c.submit(job)  # n1, n2 full: j3 needs a pool node
        fed.take()
        clock[0] += 10
        assert [a.nodes for _, a in manager.pass_once()] == [("cn1",)]
        (up,) = [e for e in fed.take() if isinstance(e, NodePowerChanged)]
        assert isinstance(up, NodePowerChanged) and (up.node, up.state) == ("cn1", "POWERING_UP")
        assert up.since_s == pytest.approx(1.0)  # began now, on the engine's clock, not the manager's
        c.engine.step()
        assert c.engine.expected_start("j3") == pytest.approx(1.0 + 90)  # the boot counts
        clock[0] += 5
        manager.pass_once()
        assert _facts(fed.take()) == []
        fact = manager.fact("cn1")
        assert fact is not None and fact.since_s == pytest.approx(1.0 - 5)  # 5 s ago on the engine's clock
        c.register("cn1")  # its agent registered: NodeUp tells the scheduler, the power record follows
        fed.take()
        manager.pass_once()
        assert _facts(fed.take()) == [] and manager.fact("cn1") is None
        # A restarted head tells every unregistered pool node once (cn1 registered: its NodeUp tells).
        again = PowerManager({"burst": BOOTING}, c.engine, clock_s=lambda: clock[0])
        again.pass_once()
        assert _facts(fed.take()) == [("cn2", "POWERED_DOWN")]
        again.pass_once()
        assert _facts(fed.take()) == []

    asyncio.run(run())


def test_after_a_power_off_the_node_is_gone_then_powered_down_and_a_failed_one_leaves_planning(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        _docs(c)
        clock = [1000.0]
        manager = PowerManager({"burst": msgspec.structs.replace(POOL, suspend_after_s=1)}, c.engine,
                               clock_s=lambda: clock[0])
        c.register("cn1")
        manager.pass_once()
        clock[0] += 5  # idle past suspend_after_s: powered down
        ((kind, action),) = manager.pass_once()
        assert kind == "off" and isinstance(action, PowerOff) and action.nodes == ("cn1",)
        fed = Fed(c)
        await manager._call(kind, action)
        events = fed.take()
        gone = [i for i, e in enumerate(events) if isinstance(e, NodeGone) and e.node == "cn1"]
        told = [i for i, e in enumerate(events) if isinstance(e, NodePowerChanged)]
        assert gone and told and gone[-1] < told[0]
        assert _facts(events) == [("cn1", "POWERED_DOWN")]
        # A power-up that fails marks the node failed: told as FAILED, the scheduler stops planning with it.
        failing = PoolConfig(nodes="cn[1-2]", vcpus_per_node=1, resume_program=["false"], suspend_program=["true"])
        broken = PowerManager({"burst": failing}, c.engine, clock_s=lambda: 1001.0)
        broken.pass_once()
        fed.take()
        for job in ("j1", "j2", "j3"):
            c.submit(job)
        ((kind, action),) = broken.pass_once()
        fed.take()
        await broken._call(kind, action)
        assert _facts(fed.take()) == [(action.nodes[0], "FAILED")]

    asyncio.run(run())


def test_the_pools_allocation_strategy_follows_its_compute_environment(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        _docs(c)
        manager = PowerManager({"burst": POOL}, c.engine, clock_s=lambda: 1000.0)
        manager.pass_once()
        assert manager.planner.pools["burst"].allocation_strategy == "BEST_FIT"
        store = c.engine.store
        with store.transaction():
            store.put_resource("ce", "burst", 2, "VALID", {
                "computeEnvironmentName": "burst", "type": "MANAGED", "state": "ENABLED",
                "computeResources": {"maxvCpus": 2, "allocationStrategy": "SPREAD"}})
        manager.pass_once()
        assert manager.planner.pools["burst"].allocation_strategy == "SPREAD"

    asyncio.run(run())


def test_a_node_seen_powered_off_by_hand_is_gone_then_told_powered_down(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        _told(c)
        manager = PowerManager({"burst": POOL}, c.engine, clock_s=lambda: 1000.0)
        c.register("cn1")
        manager.pass_once()  # cn1 ACTIVE
        fed = Fed(c)
        seen = manager.apply_seen("burst", {"cn1": "Off"})
        assert [s.node for s in seen] == ["cn1"]
        events = fed.take()
        gone = [i for i, e in enumerate(events) if isinstance(e, NodeGone) and e.node == "cn1"]
        told = [i for i, e in enumerate(events) if isinstance(e, NodePowerChanged)]
        assert gone and told and gone[-1] < told[0]  # told once it is gone, not skipped as registered
        assert _facts(events) == [("cn1", "POWERED_DOWN")]

    asyncio.run(run())


def test_a_node_powered_on_by_hand_while_down_is_left_out_of_planning(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        _told(c)
        manager = PowerManager({"burst": POOL}, c.engine, clock_s=lambda: 1000.0)
        manager.pass_once()
        fed = Fed(c)
        manager.apply_seen("burst", {"cn2": "On"})  # never powered up by hpcbatch: not a node to plan a boot on
        assert _facts(fed.take()) == [("cn2", "LEFT_ALONE")]

    asyncio.run(run())
