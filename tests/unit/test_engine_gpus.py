"""The head engine's GPU handling: health from registration and heartbeats, the count drain.

A real engine over a real SQLite store, fed the protocol messages an agent sends; the
scheduler it holds is then asked what it would do.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from hpcbatch import protocol as p
from hpcbatch.head.engine import Engine
from hpcbatch.head.logs import LogStore
from hpcbatch.model.jobs import ResourceRequest
from hpcbatch.scheduler import JobQueueChanged, JobRunnable, SetWaitReason, StartAttempt
from hpcbatch.store.sqlite import SqliteStore

GPUS = ["GPU-0", "GPU-1"]


def engine(tmp_path: Path) -> Engine:
    return Engine(SqliteStore(tmp_path / "db.sqlite"), LogStore(tmp_path / "logs"), send=lambda n, m: None,
                  clock_ms=lambda: 1_000)


def register(e: Engine, gpus: list[p.GpuFacts], declared: int = 0) -> None:
    facts = p.NodeFacts(name="g1", hostname="g1", addresses=[], vcpus=8, memory_mib=8192,
                        gpus=[g.uuid for g in gpus], gpu_facts=gpus, declared_gpus=declared)
    e.on_register("g1", p.Register(instance_id="i1", node=facts))
    e.step()


def ask(e: Engine, gpus: int) -> list[object]:
    """What the engine's scheduler does with a job of ``gpus`` GPUs now."""
    return e.scheduler.handle(
        JobQueueChanged("q", "q", True, 1, ("default",)),
        JobRunnable(f"j{gpus}", f"job-{gpus}", "q", ResourceRequest(vcpus=1, memory_mib=64, gpus=gpus), 1),
    )


def test_a_gpu_reported_bad_in_a_heartbeat_is_not_handed_out(tmp_path: Path) -> None:
    async def run() -> None:
        e = engine(tmp_path)
        register(e, [p.GpuFacts(uuid=g, index=i) for i, g in enumerate(GPUS)])
        assert e.node("g1").state == "ACTIVE" and e.node("g1").state_reason == ""
        e.on_heartbeat("g1", p.AgentHeartbeat(instance_id="i1", unhealthy_gpus={"GPU-0": "fatal XID 79"}))
        e.step()
        assert "GPU-0: fatal XID 79" in e.node("g1").state_reason
        assert e.node("g1").state == "ACTIVE"
        actions = ask(e, 2)
        assert [a for a in actions if isinstance(a, StartAttempt)] == []
        assert any(isinstance(a, SetWaitReason) and "the most is 1" in a.reason for a in actions)
        # A later heartbeat without it (an older agent, the monitor's) does not bring it back.
        e.on_heartbeat("g1", p.AgentHeartbeat(instance_id="i1"))
        started = [a for a in ask(e, 1) if isinstance(a, StartAttempt)]
        assert [a.gpus for a in started] == [("GPU-1",)]

    asyncio.run(run())


def test_registration_carries_health_and_the_declared_count(tmp_path: Path) -> None:
    async def run() -> None:
        e = engine(tmp_path)
        register(e, [p.GpuFacts(uuid="GPU-0"), p.GpuFacts(uuid="GPU-1", index=1, unhealthy="2 volatile uncorrectable ECC errors")], declared=3)
        node = e.node("g1")
        assert node.gpu_unhealthy == {"GPU-1": "2 volatile uncorrectable ECC errors"}
        assert node.state == "DRAINED" and "reports 2 GPUs" in node.state_reason and "declares 3" in node.state_reason

    asyncio.run(run())
