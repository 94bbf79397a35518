"""The head's PowerManager (hpcbatch.head.power) over a real engine and store: what it powers, what it stores."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from hpcbatch.head.power import PowerManager
from hpcbatch.head.powerdrivers.base import PowerError
from hpcbatch.head.powerdrivers.config import PoolConfig
from hpcbatch.scheduler.power import PowerOn, PowerState
from tests.unit.test_fencing import Cluster

POOL = PoolConfig(nodes="cn[1-2]", vcpus_per_node=1, resume_program=["true"], suspend_program=["true"])


def _docs(c: Cluster) -> None:
    store = c.engine.store
    with store.transaction():
        store.put_resource("ce", "burst", 1, "VALID", {"computeEnvironmentName": "burst", "type": "MANAGED",
                                                       "state": "ENABLED", "computeResources": {"maxvCpus": 2}})
        store.put_resource("queue", "q", 1, "VALID", {"jobQueueName": "q", "state": "ENABLED", "priority": 1,
                                                      "computeEnvironmentOrder": [
                                                          {"order": 1, "computeEnvironment": "default"},
                                                          {"order": 2, "computeEnvironment": "burst"}]})


def test_a_job_that_fits_an_unmanaged_node_powers_nothing_and_one_that_does_not_powers_one(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)  # n1, n2: 1 vCPU each, in CE default
        _docs(c)
        clock = [1000.0]
        manager = PowerManager({"burst": POOL}, c.engine, clock_s=lambda: clock[0])
        c.engine.power = manager
        c.submit("j1")
        assert manager.pass_once() == []  # n1 or n2 holds it
        c.submit("j2")
        c.submit("j3")  # n1 and n2 are full: j3 needs a pool node
        calls = manager.pass_once()
        assert [(k, a.nodes) for k, a in calls] == [("on", ("cn1",))] and isinstance(calls[0][1], PowerOn)
        clock[0] += 1
        assert manager.pass_once() == []  # asked again: not powered twice
        # A head restarted on the same store finds cn1 POWERING_UP and powers nothing.
        again = PowerManager({"burst": POOL}, c.engine, clock_s=lambda: clock[0])
        assert again.record("cn1").state is PowerState.POWERING_UP  # type: ignore[union-attr]
        assert again.pass_once() == []

    asyncio.run(run())


def test_a_power_down_begun_before_a_restart_is_done_again_and_its_node_takes_no_work(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        _docs(c)
        manager = PowerManager({"burst": POOL}, c.engine, clock_s=lambda: 1000.0)
        manager.planner.records["cn2"].state = PowerState.POWERING_DOWN
        manager._store(["cn2"])
        c.register("cn2")  # its agent is still up, and registers with the new head
        again = PowerManager({"burst": POOL}, c.engine, clock_s=lambda: 1001.0)
        calls = again.pass_once()
        assert [(k, a.nodes) for k, a in calls] == [("off", ("cn2",))]
        assert c.engine.node("cn2").state == "DRAINED"  # no job lands on it meanwhile
        assert again.pass_once() == []  # once

    asyncio.run(run())


def test_pool_nodes_never_seen_are_listed_powered_down_and_the_console_renders_them(tmp_path: Path) -> None:
    import jinja2

    from hpcbatch.head.powerviews import list_power

    async def run() -> None:
        c = Cluster(tmp_path)
        _docs(c)
        manager = PowerManager({"burst": POOL}, c.engine, clock_s=lambda: 1000.0)
        rows = list_power([], manager)
        assert [(r["name"], r["state"], r["powerState"]) for r in rows] == [
            ("cn1", "POWERED_DOWN", "POWERED_DOWN"), ("cn2", "POWERED_DOWN", "POWERED_DOWN")]
        env = jinja2.Environment(loader=jinja2.PackageLoader("hpcbatch.console", "templates"), autoescape=True)
        env.filters["time"] = str
        env.globals["duration"] = str
        html = env.get_template("nodes.html").render(me=None, csrf="", path="/console/nodes", event_id=0, nodes=rows)
        assert "cn2" in html and "POWERED_DOWN" in html

    asyncio.run(run())


def test_a_failed_power_up_marks_the_node_failed_with_the_drivers_words_and_the_next_pass_uses_another(
        tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        _docs(c)
        failing = PoolConfig(nodes="cn[1-2]", vcpus_per_node=1, resume_program=["sh", "-c", "echo BMC $0 down; exit 2"],
                             suspend_program=["true"])
        manager = PowerManager({"burst": failing}, c.engine, clock_s=lambda: 1000.0)
        for job in ("j1", "j2", "j3"):
            c.submit(job)  # n1, n2 full: j3 needs a pool node
        ((kind, action),) = manager.pass_once()
        assert action.nodes == ("cn1",)
        await manager._call(kind, action)
        rec = manager.record("cn1")
        assert rec is not None and rec.failed and rec.state is PowerState.POWERED_DOWN
        assert rec.reason == "Power-up failed: sh exited with 2: BMC cn1 down"
        assert [a.nodes for _, a in manager.pass_once()] == [("cn2",)]
        audit = [e for e in c.engine.commits.audit_pending() if e["operation"] == "PowerOn"]
        assert audit and audit[0]["outcome"].startswith("failed: sh exited with 2")

    asyncio.run(run())


class _OneDeadBmc:
    """A pool driver at the hardware boundary: cn2's BMC refuses, cn1's accepts (as the ipmi
    driver reports one dead BMC of a batch: PowerError naming only that node)."""

    def __init__(self) -> None:
        self.on: list[str] = []

    async def power_on(self, nodes: list[str]) -> None:
        self.on += [n for n in nodes if n != "cn2"]
        raise PowerError("IPMI power on of cn2: cn2: its BMC answered no request", nodes=["cn2"])

    async def power_off(self, nodes: list[str]) -> None:
        raise PowerError("IPMI power off of cn2: cn2: no answer", nodes=["cn2"])

    async def state(self, nodes: list[str]) -> dict[str, str]:
        return {}


def test_one_dead_bmc_fails_only_its_node_of_a_batch(tmp_path: Path) -> None:
    """A power-up of cn[1-2] where only cn2's BMC refuses: cn2 is failed with the driver's
    words, cn1 (whose power-on was accepted) is POWERING_UP, not failed with it."""
    async def run() -> None:
        c = Cluster(tmp_path)
        _docs(c)
        manager = PowerManager({"burst": POOL}, c.engine, clock_s=lambda: 1000.0)
        dead = _OneDeadBmc()
        manager.drivers["burst"].driver = dead  # type: ignore[assignment]
        for job in ("j1", "j2", "j3", "j4"):
            c.submit(job)  # n1, n2 full: j3 and j4 need both pool nodes
        ((kind, action),) = manager.pass_once()
        assert action.nodes == ("cn1", "cn2")
        await manager._call(kind, action)
        assert dead.on == ["cn1"]
        cn1, cn2 = manager.record("cn1"), manager.record("cn2")
        assert cn1 is not None and cn1.state is PowerState.POWERING_UP and not cn1.failed
        assert cn2 is not None and cn2.failed and cn2.reason == "Power-up failed: IPMI power on of cn2: cn2: its BMC answered no request"
        outcomes = {e["target"]: e["outcome"] for e in c.engine.commits.audit_pending() if e["operation"] == "PowerOn"}
        assert outcomes == {"cn2": "failed: IPMI power on of cn2: cn2: its BMC answered no request", "cn1": "ok"}

    asyncio.run(run())


def _engine_knows(c: Cluster) -> None:
    """The engine told of the docs (_docs writes only the store): queue q plans with pool burst."""
    for kind, tell in (("ce", c.engine.compute_environment_changed), ("queue", c.engine.job_queue_changed)):
        for doc in c.engine.store.list_resources(kind):
            tell(doc)


def test_a_job_waiting_on_a_power_up_is_told_by_the_scheduler_alone_when_the_boot_is_expected(tmp_path: Path) -> None:
    """One owner of a waiting job's statusReason: the scheduler words the wait from the power
    manager's facts (NodePowerChanged: the power-up's start, the boot time, resume_timeout_s);
    the manager's passes never write it, so neither overwrites the other."""
    async def run() -> None:
        c = Cluster(tmp_path)  # the engine's clock stands at t=1
        _docs(c)
        _engine_knows(c)
        clock = [1000.0]
        c.engine._now = lambda: int((clock[0] - 999.0) * 1000)  # the head's clock moves with the manager's
        pool = msgspec.structs.replace(POOL, boot_time_s=90, resume_timeout_s=300)
        manager = PowerManager({"burst": pool}, c.engine, clock_s=lambda: clock[0])
        c.engine.power = manager
        for job in ("j1", "j2", "j3"):
            c.submit(job)  # n1, n2 full: j3 needs a pool node
        c.engine.step()
        before = c.engine.job("j3").status_reason
        assert [a.nodes for _, a in manager.pass_once()] == [("cn1",)]
        assert c.engine.job("j3").status_reason == before  # the manager only supplies facts
        c.engine.step()
        said = c.engine.job("j3").status_reason
        assert said.startswith("CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - "), said
        assert said.endswith("; powering up cn1, expected up by t=91"), said  # from the power-up: t=1, plus 90 s
        clock[0] += 31
        manager.pass_once()
        c.engine.tick()
        c.engine.step()
        assert c.engine.job("j3").status_reason == said  # absolute: nothing to rewrite as time passes
        # A restarted head tells the same facts (counted from the stored power-up): the same words.
        again = PowerManager({"burst": pool}, c.engine, clock_s=lambda: clock[0])
        again.pass_once()
        c.engine.step()
        assert c.engine.job("j3").status_reason == said

    asyncio.run(run())


def test_a_boot_overdue_is_said_so_with_the_resume_timeout(tmp_path: Path) -> None:
    async def run() -> None:
        c = Cluster(tmp_path)
        _docs(c)
        _engine_knows(c)
        pool = msgspec.structs.replace(POOL, boot_time_s=90, resume_timeout_s=300)
        manager = PowerManager({"burst": pool}, c.engine, clock_s=lambda: 1000.0)
        c.engine.power = manager
        for job in ("j1", "j2", "j3"):
            c.submit(job)
        manager.pass_once()
        c.engine.step()
        c.engine._now = lambda: 121_000  # the head's clock: 120 s after the power-up, 30 s overdue
        c.engine.tick()
        c.engine.step()
        said = c.engine.job("j3").status_reason
        assert said.endswith("; powering up cn1, expected up by now (overdue since t=91; resume_timeout_s is 300 s)"), said
        assert "~0 s" not in said

    asyncio.run(run())


def test_node_hours_powered_and_saved_are_counted_and_exported(tmp_path: Path) -> None:
    from hpcbatch.head.powerviews import power_metrics

    async def run() -> None:
        c = Cluster(tmp_path)
        _docs(c)
        clock = [1000.0]
        manager = PowerManager({"burst": POOL}, c.engine, clock_s=lambda: clock[0])
        for job in ("j1", "j2", "j3"):
            c.submit(job)
        manager.pass_once()  # cn1 POWERING_UP from now; cn2 stays down
        clock[0] += 1800
        manager.pass_once()
        c.register("cn1")
        clock[0] += 1800
        manager.pass_once()
        families = {f.name: {tuple(s.labels.values()): s.value for s in f.samples} for f in power_metrics(manager)}
        hours = families["hpcbatch_pool_node_hours"]
        assert hours[("powered",)] == pytest.approx(1.0)  # cn1: booting half an hour, ACTIVE half an hour
        assert hours[("saved",)] == pytest.approx(1.0)  # cn2: down the whole hour
        assert families["hpcbatch_pool_nodes"][("burst", "ACTIVE")] == 1
        assert families["hpcbatch_pool_nodes"][("burst", "POWERED_DOWN")] == 1

    asyncio.run(run())


def test_a_power_up_held_back_by_resume_rate_is_said_in_the_wait_reason_until_it_goes(tmp_path: Path) -> None:
    """resume_rate 1: cn1 powers up, cn2 (which j4 needs) may not yet: the waiting job's reason
    says the pool's resume_rate is reached and when the next power-up may begin; a minute
    later cn2 powers up and the note is gone."""
    async def run() -> None:
        c = Cluster(tmp_path)
        _docs(c)
        _engine_knows(c)
        clock = [1000.0]
        c.engine._now = lambda: int((clock[0] - 999.0) * 1000)  # the head's clock: t=1 at the first pass
        pool = msgspec.structs.replace(POOL, boot_time_s=90, resume_rate=1)
        manager = PowerManager({"burst": pool}, c.engine, clock_s=lambda: clock[0])
        c.engine.power = manager
        for job in ("j1", "j2", "j3", "j4"):
            c.submit(job)  # n1, n2 full: j3 and j4 need pool nodes
        c.engine.step()
        assert [a.nodes for _, a in manager.pass_once()] == [("cn1",)]  # one a minute
        c.engine.step()
        said = c.engine.job("j3").status_reason  # the queue's front: the one the scheduler words
        assert said.endswith("; powering up cn1, expected up by t=91; the pool's resume_rate is reached: "
                             "the next power-up from t=61"), said
        clock[0] += 61
        c.engine.tick()
        assert [a.nodes for _, a in manager.pass_once()] == [("cn2",)]
        c.engine.step()
        assert "resume_rate" not in c.engine.job("j3").status_reason

    asyncio.run(run())
