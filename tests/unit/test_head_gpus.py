"""The head's GPU rules: health flags, the declared-count drain, topology, usage samples."""

from __future__ import annotations

from hpcbatch import protocol as p
from hpcbatch.head.gpus import (
    gpu_flag,
    gpu_places,
    gpu_shortfall,
    node_gpu_listing,
    record_usage,
    unhealthy_gpus,
)
from hpcbatch.model.jobs import Attempt, attempt_detail
from hpcbatch.scheduler.gpus import GpuPlace


def facts(gpus: list[p.GpuFacts], declared: int = 0) -> p.NodeFacts:
    return p.NodeFacts(
        name="g1", hostname="g1", addresses=[], vcpus=8, memory_mib=1024,
        gpus=[g.uuid for g in gpus], gpu_facts=gpus, declared_gpus=declared,
    )


def test_a_node_with_fewer_gpus_than_declared_gets_a_drain_reason() -> None:
    assert gpu_shortfall(facts([p.GpuFacts(uuid="a")], declared=1)) is None
    reason = gpu_shortfall(facts([p.GpuFacts(uuid="a")], declared=2))
    assert reason is not None and "reports 1 GPUs" in reason and "declares 2" in reason
    assert "hpcbatch nodes resume g1" in reason


def test_unhealthy_gpus_flag_the_node() -> None:
    f = facts([p.GpuFacts(uuid="a"), p.GpuFacts(uuid="b", unhealthy="fatal XID 79")])
    assert unhealthy_gpus(f) == {"b": "fatal XID 79"}
    assert gpu_flag({"b": "fatal XID 79"}) == "1 GPU(s) out of service (b: fatal XID 79)"
    assert gpu_flag({}) == ""


def test_topology_reaches_the_scheduler_only_when_known() -> None:
    assert gpu_places(facts([p.GpuFacts(uuid="a"), p.GpuFacts(uuid="b")])) == ()
    f = facts([p.GpuFacts(uuid="a", nvlink_domain="x", numa_node=0), p.GpuFacts(uuid="b")])
    assert gpu_places(f) == (GpuPlace("x", None, 0), GpuPlace())


def test_listing_counts_free_used_and_unhealthy() -> None:
    f = facts([p.GpuFacts(uuid=u) for u in "abcd"])
    listing = node_gpu_listing(f, {"a": "job1", "d": "job2"}, {"c": "ECC", "d": "XID 79"})
    assert listing["freeGpus"] == 1  # b; d is bad but still held by job2
    assert [d["heldBy"] for d in listing["gpuDetails"]] == ["job1", None, None, "job2"]
    assert listing["gpuDetails"][2]["unhealthy"] == "ECC"


def test_usage_keeps_latest_and_peak_of_held_gpus_only() -> None:
    attempt = Attempt(attempt_id="a1", node="g1", compute_environment="ce", log_stream_name="", gpus=["GPU-0"])
    record_usage(attempt, [p.GpuUsage(attempt_id="a1", uuid="GPU-0", utilization_pct=90, memory_used_mib=2000)])
    record_usage(attempt, [
        p.GpuUsage(attempt_id="a1", uuid="GPU-0", utilization_pct=40, memory_used_mib=3000),
        p.GpuUsage(attempt_id="a1", uuid="GPU-9", utilization_pct=99, memory_used_mib=1),  # not its GPU
    ])
    assert attempt_detail(attempt)["container"]["gpuUsage"] == [
        {"gpuId": "GPU-0", "utilizationPercent": 40, "memoryUsedMiB": 3000,
         "peakUtilizationPercent": 90, "peakMemoryUsedMiB": 3000, "samples": 2}
    ]  # fmt: skip


def test_protocol_additions_are_optional_for_old_peers() -> None:
    old = p.encode(p.AgentHeartbeat(instance_id="x"))
    hb = p.decode_from_agent(old)
    assert isinstance(hb, p.AgentHeartbeat) and hb.unhealthy_gpus == {} and hb.gpu_usage == []
