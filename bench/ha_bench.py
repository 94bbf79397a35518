"""Active/standby heads on PostgreSQL: failover time and end-to-end throughput per store.

Printed as ``name=value`` lines:

* ``e2e_jobs_per_s_sqlite`` / ``e2e_jobs_per_s_postgresql``: ``BENCH_JOBS`` (1000) ``true``
  jobs from the first submit until all SUCCEEDED, on a 4-node cluster, measured in the
  same run (bench/cluster_bench.py's method). SQLite runs as shipped (WAL,
  synchronous=NORMAL); PostgreSQL as shipped too (fsync on, synchronous_commit on, on
  the same disk, over a Unix socket), with the head holding the lease.
  ``e2e_jobs_per_s_postgresql_fsync_off``: the same on a server with ``fsync = off``,
  which shows what PostgreSQL's fsync at every commit costs here (SQLite's NORMAL mode
  does not sync at commit: it survives a head crash, not a power cut).
* ``failover_s``: ``kill -9`` of the active head to the first API call answered by the
  new active head (the client finds it in its endpoint list), with the shipped
  ``lease_ttl_s`` (3 s) and 1 s heartbeats.
* ``jobs_lost``: acknowledged submissions (made just before the kill) the new head does
  not know; must be 0. ``failover_nodes_back_s``: until every agent re-registered.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.cluster_bench import JOBS, NODES, bench_throughput
from hpcbatch.client import Client
from tests import pg
from tests.harness import TestCluster, wait_for

LEASE_TTL_S = 3.0


def _throughput(root: Path, store: str) -> float:
    root.mkdir(parents=True)
    cluster = TestCluster(root, nodes=NODES, store=store, heartbeat_s=1.0, lease_ttl_s=LEASE_TTL_S)
    try:
        cluster.up()
        with Client(cluster.socket_endpoint, timeout=30, max_workers=8) as client:
            return bench_throughput(client)["e2e_1000_true_jobs_per_s"]
    finally:
        cluster.close()


def _failover(root: Path) -> dict[str, float]:
    root.mkdir(parents=True)
    cluster = TestCluster(root, nodes=NODES, store="postgresql", heads=2, heartbeat_s=1.0, lease_ttl_s=LEASE_TTL_S)
    try:
        cluster.up()
        with Client(cluster.socket_endpoint, timeout=30, max_workers=8, failover_wait_s=60) as client:
            acknowledged = [
                client.submit_job(jobName=f"ack-{i}", jobQueue="default", jobDefinition="hpcbatch-default",
                                  containerOverrides={"command": ["sleep", "0.2"]})["jobId"]
                for i in range(200)
            ]
            cluster.kill("head")
            killed = time.perf_counter()
            client.list_nodes()  # rotates to the standby and waits while it takes over
            failover = time.perf_counter() - killed
            known = set()
            for start in range(0, len(acknowledged), 100):
                known |= {j["jobId"] for j in client.describe_jobs(jobs=acknowledged[start : start + 100])["jobs"]}
            wait_for(lambda: all(n["state"] == "ACTIVE" for n in client.list_nodes()["nodes"]), 60,
                     what="every node back")
            nodes_back = time.perf_counter() - killed
        return {
            "failover_s": round(failover, 2),
            "failover_nodes_back_s": round(nodes_back, 2),
            "jobs_lost": len(set(acknowledged) - known),
            "lease_ttl_s": LEASE_TTL_S,
        }
    finally:
        cluster.close()


def main() -> int:
    why = pg.available()
    if why:
        print(f"ha_bench: skipped: {why}", file=sys.stderr)
        return 0
    root = Path(tempfile.mkdtemp(prefix="hpcbatch-ha-bench-"))
    results: dict[str, float | int] = {"nodes": NODES, "jobs": JOBS}
    pg._shared = pg.PostgresServer(fsync=True)  # durable as shipped: the comparison is fair
    try:
        results["e2e_jobs_per_s_sqlite"] = _throughput(root / "sqlite", "sqlite")
        results["e2e_jobs_per_s_postgresql"] = _throughput(root / "postgresql", "postgresql")
        results.update(_failover(root / "failover"))
        pg.stop_shared_server()
        pg._shared = pg.PostgresServer(fsync=False)
        results["e2e_jobs_per_s_postgresql_fsync_off"] = _throughput(root / "nofsync", "postgresql")
    finally:
        pg.stop_shared_server()
        shutil.rmtree(root, ignore_errors=True)
    for name, value in results.items():
        print(f"{name}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
