"""Power changed by hand is noticed: the PowerManager asks its pools' drivers for their nodes' power.

A real engine and store (tests/unit/test_fencing.Cluster: nodes n1 and n2 in CE ``default``), a
MANAGED pool ``burst`` of cn[1-3] behind the same queue, and its drivers: the ``redfish`` one
against the sushy-tools emulator (tests/redfish_bmc.py: cn1 Off, cn2 On, cn3 Off, its own state
folder), the ``command`` one (Slurm's programs: it cannot tell). The clock is the test's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcbatch.head.power import POWER_RESOURCE, PoolFence, PowerManager, TrackedDriver
from hpcbatch.head.powerdrivers.command import ProgramDriver
from hpcbatch.head.powerdrivers.config import PoolConfig
from hpcbatch.head.powerdrivers.redfish import RedfishDriver
from hpcbatch.head.powerviews import list_power
from hpcbatch.model.lifecycle import JobStatus
from hpcbatch.scheduler.power import PowerState
from tests import prereq
from tests.redfish_bmc import redfish_emulator
from tests.unit.test_fencing import Cluster, run_on

T0 = 1_765_000_000.0  # 2025-12-06T05:46:40Z


@pytest.fixture(scope="module")
def bmc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    prereq.importorskip("sushy_tools", "sushy")
    with redfish_emulator(tmp_path_factory.mktemp("redfish-watch"), {"cn1": "Off", "cn2": "On", "cn3": "Off"}) as url:
        yield url


def _docs(c: Cluster) -> None:
    store = c.engine.store
    with store.transaction():
        store.put_resource("ce", "burst", 1, "VALID", {"computeEnvironmentName": "burst", "type": "MANAGED",
                                                       "state": "ENABLED", "computeResources": {"maxvCpus": 3}})
        store.put_resource("queue", "q", 1, "VALID", {"jobQueueName": "q", "state": "ENABLED", "priority": 1,
                                                      "computeEnvironmentOrder": [
                                                          {"order": 1, "computeEnvironment": "default"},
                                                          {"order": 2, "computeEnvironment": "burst"}]})


def test_a_node_powered_off_by_hand_loses_its_job_at_once_and_one_powered_on_by_hand_is_left_alone(
        tmp_path: Path, bmc: str) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        _docs(c)
        clock = [T0]
        pool = PoolConfig(nodes="cn[1-3]", vcpus_per_node=1, driver="redfish", redfish_url=bmc, timeout_s=10,
                          state_poll_s=30)
        manager = PowerManager({"burst": pool}, c.engine, clock_s=lambda: clock[0])
        c.engine.power = manager
        fenced: list[str] = []
        c.engine.fence_node = fenced.append  # STONITH: not asked for a node already off
        for name in ("j1", "j2"):
            run_on(c, c.submit(name))  # n1 and n2 are full
        j3 = c.submit("j3")
        assert [a.nodes for _, a in manager.pass_once()] == [("cn1",)]
        c.register("cn1")  # it booted: j3 runs on it
        assert run_on(c, j3) == "cn1"
        clock[0] += 1
        manager.pass_once()
        assert manager.record("cn1").state is PowerState.ACTIVE  # type: ignore[union-attr]

        # Someone pressed cn1's power button (its BMC says Off); cn2 was powered on by hand.
        assert manager.polls_due() == ["burst"]
        seen = await manager.poll_state("burst")
        assert [(s.node, s.power) for s in seen] == [("cn1", "Off"), ("cn2", "On")]
        cn1 = manager.record("cn1")
        assert cn1 is not None and cn1.state is PowerState.POWERED_DOWN
        assert cn1.reason == "Powered off outside hpcbatch, seen by redfish at 2025-12-06T05:46:41Z"
        # Its job: failed as a lost node's, the retry not held for a fence (the power-off is a fact).
        attempt = j3.attempts[0]
        assert attempt.lost and attempt.status_reason == (
            "Node cn1 lost: powered off outside hpcbatch, seen by redfish at 2025-12-06T05:46:41Z")
        assert j3.status is JobStatus.RUNNABLE and j3.fence_hold is None and fenced == []
        assert c.engine.node("cn1").state == "DOWN"
        audit = [(e["operation"], e["target"]) for e in c.engine.commits.audit_pending() if e["via"] == "power"]
        assert ("PowerOffSeen", "cn1") in audit and ("PowerOnSeen", "cn2") in audit
        assert c.engine.store.get_resource(POWER_RESOURCE, "cn1")["state"] == "POWERED_DOWN"
        # cn2 is shown as it is, and never powered on by hpcbatch: j3 and j4 get cn1 and cn3.
        rows = {r["name"]: r for r in list_power([], manager)}
        assert rows["cn2"]["state"] == "POWERED_DOWN"
        assert rows["cn2"]["stateReason"].startswith("On outside hpcbatch, seen by redfish at 2025-12-06T05:46:41Z")
        c.submit("j4")
        clock[0] += 1
        assert [a.nodes for _, a in manager.pass_once()] == [("cn1", "cn3")]
        # Asked again only after state_poll_s; a restarted head still leaves cn2 alone.
        assert manager.polls_due() == []
        clock[0] += 30
        assert manager.polls_due() == ["burst"]
        again = PowerManager({"burst": pool}, c.engine, clock_s=lambda: clock[0])
        assert again.record("cn2").left_alone  # type: ignore[union-attr]

    asyncio.run(run())


def test_a_driver_that_cannot_tell_is_never_asked_and_registration_tells(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        _docs(c)
        clock = [T0]
        pool = PoolConfig(nodes="cn[1-3]", vcpus_per_node=1, resume_program=["true"], suspend_program=["true"],
                          state_poll_s=5)
        manager = PowerManager({"burst": pool}, c.engine, clock_s=lambda: clock[0])
        manager.planner.records["cn1"].state = PowerState.ACTIVE
        assert manager.polls_due() == []  # Slurm's programs cannot tell: never asked
        assert await manager.poll_state("burst") == []  # asked all the same: Unknown changes nothing
        assert manager.record("cn1").state is PowerState.ACTIVE  # type: ignore[union-attr]

    asyncio.run(run())


def test_nodes_a_driver_call_of_ours_is_powering_are_not_judged(tmp_path: Path, bmc: str) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        _docs(c)
        pool = PoolConfig(nodes="cn[1-3]", vcpus_per_node=1, driver="redfish", redfish_url=bmc, timeout_s=10)
        manager = PowerManager({"burst": pool}, c.engine, clock_s=lambda: T0)
        manager.planner.records["cn1"].state = PowerState.ACTIVE
        manager.drivers["burst"].in_flight.update(["cn1", "cn2"])  # as while a power call of theirs runs
        assert await manager.poll_state("burst") == []

    asyncio.run(run())


def test_a_power_call_through_the_managers_driver_marks_its_nodes_in_flight_whoever_makes_it() -> None:

    async def run() -> None:
        driver = TrackedDriver(ProgramDriver(["true"], ["sh", "-c", "sleep 0.3", "suspend"], 5))
        fence = asyncio.create_task(PoolFence(driver).power_off("cn1"))  # STONITH through the pool's driver
        await asyncio.sleep(0.1)
        assert driver.in_flight == {"cn1": 1}
        await fence
        assert not driver.in_flight and driver.started == {"cn1": 1}  # a poll meanwhile sees it began

    asyncio.run(run())


def test_a_power_up_waits_for_a_fences_power_off_of_the_same_node_to_end(tmp_path: Path) -> None:

    async def run() -> None:
        log = tmp_path / "calls"
        driver = TrackedDriver(ProgramDriver(["sh", "-c", f"echo on $1 >> {log}", "resume"],
                                             ["sh", "-c", f"sleep 0.3; echo off $1 >> {log}", "suspend"], 5))
        fence = asyncio.create_task(PoolFence(driver).power_off("cn1"))
        await asyncio.sleep(0.05)
        await driver.power_on(["cn1", "cn2"])  # the manager's, meanwhile
        await fence
        assert log.read_text() == "off cn1\non cn[1-2]\n"

    asyncio.run(run())


def test_a_bmc_that_answers_an_error_is_unknown_and_hides_no_other_node(bmc: str) -> None:
    driver = RedfishDriver(PoolConfig(nodes="cn[1-9]", vcpus_per_node=1, driver="redfish", redfish_url=bmc,
                                      timeout_s=10))
    assert asyncio.run(driver.state(["cn2", "cn9"])) == {"cn2": "On", "cn9": "Unknown"}  # cn9: no such system
