"""MANAGED compute environments (docs/managed.md): the cost of powering up on demand, as ``name=value`` lines.

A loopback cluster (tests/harness.py) whose one pool node ``pn1`` starts powered down, with
the ``netns`` driver (no layout: its agent runs on this host). One ``true`` job at a time:

* ``power_up_to_running_s``: from the node's registration (first seen ACTIVE in ListNodes,
  polled every 10 ms) to the attempt's ``startedAt``: hpcbatch's own share, the driver's boot
  excluded (median of ROUNDS).
* ``submit_to_running_powered_down_s``: from the submit to ``startedAt``, the agent's start
  (the "boot") included (median).
* ``power_down_after_idle_s``: from the job's end to the node POWERED_DOWN, with
  ``suspend_after_s`` = 1 (the planner's pass is 1 s).

Run: ``python -m bench.power_bench [ROUNDS]`` (default 3).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.harness import TestCluster, wait_for
from tests.managed_pool import stop_powered_agents


def main(rounds: int = 3) -> None:
    with tempfile.TemporaryDirectory(prefix="power-bench-") as tmp:
        root = Path(tmp)
        head_extra = (
            "[power.pools.pool]\n"
            'nodes = "pn1"\nvcpus_per_node = 1\ndriver = "netns"\n'
            f'agent_config_dir = "{root}"\nsuspend_after_s = 1\nresume_timeout_s = 60\n'
        )
        c = TestCluster(root, nodes=0, head_extra=head_extra)
        c.add_agent("pn1", extra='compute_environment = "pool"\nvcpus = 1')
        try:
            c.start_head()
            c.client.create_compute_environment(computeEnvironmentName="pool", type="MANAGED",
                                                computeResources={"maxvCpus": 1})
            c.client.create_job_queue(jobQueueName="default", priority=1,
                                      computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "pool"}])
            inner, total, down = [], [], []
            for _ in range(rounds):
                submitted = time.time()
                job_id = c.submit(["true"])
                registered = wait_for(lambda: next((time.time() for n in c.client.list_nodes()["nodes"]
                                                    if n["name"] == "pn1" and n["state"] == "ACTIVE"), None),
                                      60, interval=0.01, what="pn1 registered")
                job = c.wait_status(job_id, "SUCCEEDED", timeout=60)
                started = job["startedAt"] / 1000
                inner.append(max(0.0, started - registered))
                total.append(started - submitted)
                ended = job["stoppedAt"] / 1000
                wait_for(lambda: {n["name"]: n for n in c.client.list_nodes()["nodes"]}["pn1"]["powerState"]
                         == "POWERED_DOWN", 30, interval=0.05, what="pn1 powered down")
                down.append(time.time() - ended)
            print(f"power_up_to_running_s={statistics.median(inner):.3f}")
            print(f"submit_to_running_powered_down_s={statistics.median(total):.3f}")
            print(f"power_down_after_idle_s={statistics.median(down):.3f}")
        finally:
            stop_powered_agents(root)
            c.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
