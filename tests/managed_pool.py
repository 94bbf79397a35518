"""A managed compute environment on the netns test bed, shared by the power tests.

One head with one power pool, ``managed``, whose "machines" are the bed's namespaces: the
netns power driver starts and stops their agents (it writes ``<node>.power.pid`` files the
harness does not know, so ``stop_powered_agents`` kills them on the way out).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.harness import TestCluster


@contextmanager
def managed_pool(root: Path, nodes: int, pool_options: str, *, liveness: int | None = None,
                 before_head: Callable[[TestCluster], None] | None = None) -> Iterator[TestCluster]:
    """A head (started) over ``nodes`` one-vCPU namespaces in the pool; ``pool_options`` are
    its ``[power.pools.managed]`` lines beyond the nodes, driver and layout."""
    head_extra = (
        "[power.pools.managed]\n"
        f'nodes = "node[1-{nodes}]"\nvcpus_per_node = 1\ndriver = "netns"\n'
        f'agent_config_dir = "{root}"\nnetns_layout = "{root / "layout.json"}"\n' + pool_options
    )
    more: dict[str, Any] = {} if liveness is None else {"liveness": liveness}
    c = TestCluster(root, nodes=nodes, node_vcpus=1, netns=True, agent_extra='compute_environment = "managed"',
                    head_extra=head_extra, **more)
    try:
        assert c.netns is not None
        (root / "layout.json").write_text(json.dumps(c.netns.to_dict()))
        if before_head is not None:
            before_head(c)
        c.start_head()
        yield c
    finally:
        stop_powered_agents(root)
        c.close()


def stop_powered_agents(agent_config_dir: Path) -> None:
    """Kill the agents the netns power driver started (its ``<node>.power.pid`` files)."""
    for pid_file in agent_config_dir.glob("*.power.pid"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def power_of(c: TestCluster) -> dict[str, dict[str, Any]]:
    """ListNodes by node name."""
    return {n["name"]: n for n in c.client.list_nodes()["nodes"]}
