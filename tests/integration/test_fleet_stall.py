"""A head stopped (SIGSTOP) for longer than the liveness window loses no node and retries no job.

Before hpcbatch.head.liveness, the head stamped a node's "last heard" when it handled a
message, so on resuming its first liveness tick found every node silent for the whole stop
and failed the fleet at once. Now the head's own blind time counts against nobody, and
what arrived meanwhile is read, stamped on arrival, before anyone is judged.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.fleet_emulator import read_keys
from hpcbatch.cli.main import cli
from hpcbatch.errors import ClientError
from tests.harness import TestCluster, wait_for

HEARTBEAT_S, LIVENESS = 0.3, 5
STALL_S = HEARTBEAT_S * LIVENESS * 3  # three liveness windows


def test_a_stopped_head_loses_no_node_and_retries_no_job(tmp_path: Path) -> None:
    c = TestCluster(tmp_path, nodes=3, heartbeat_s=HEARTBEAT_S, liveness=LIVENESS, node_vcpus=1)
    try:
        c.up()
        jobs = [c.submit(["sleep", str(STALL_S + 3)], containerOverrides={"vcpus": 1}) for _ in range(3)]
        on = {c.wait_status(j, "RUNNING")["nodeName"] for j in jobs}
        assert on == {"node1", "node2", "node3"}
        head = c.procs["head"]
        head.send_signal(signal.SIGSTOP)
        try:
            time.sleep(STALL_S)  # the stall itself: nothing to wait on
        finally:
            head.send_signal(signal.SIGCONT)
        for job in jobs:
            done = c.wait_status(job, "SUCCEEDED", "FAILED", timeout=30)
            assert done["status"] == "SUCCEEDED", done
            assert len(done["attempts"]) == 1, done["attempts"]
        assert all(n["state"] == "ACTIVE" for n in c.nodes().values())
        log = (c.root / "head.log").read_text(errors="replace")
        assert " lost: " not in log
        assert "stalled for" in log  # the head saw its own stop
        # The nodes carry on: a new job runs at once.
        wait_for(lambda: c.wait_status(c.submit(["true"]), "SUCCEEDED")["status"] == "SUCCEEDED", 30)
    finally:
        c.close()


EMULATED = 24


def test_emulated_nodes_serve_jobs_and_list_nodes_pages(tmp_path: Path) -> None:
    """bench/fleet's emulated agents (node_agent's Agent, stub runner) join a real head in
    bulk; ListNodes pages through them by name."""
    c = TestCluster(tmp_path, nodes=1, heartbeat_s=HEARTBEAT_S, liveness=LIVENESS)
    # The recipe of bench/fleet_emulator.py's docstring: key pairs made and enrolled in bulk...
    subprocess.run([sys.executable, "-m", "bench.fleet_emulator", "keys", "--nodes", str(EMULATED), "--out",
                    str(tmp_path / "keys.txt"), "--enroll", str(c.node_keys_dir)], check=True)
    keys = read_keys(str(tmp_path / "keys.txt"))
    swarm: subprocess.Popen[bytes] | None = None
    try:
        c.up()
        with open(tmp_path / "swarm.log", "ab") as log:  # ...then the swarm against the head
            swarm = subprocess.Popen(
                [sys.executable, "-m", "bench.fleet_emulator", "swarm", "--head", c.fleet, "--head-key",
                 str(c.head_public_key), "--keys", str(tmp_path / "keys.txt"), "--count", str(EMULATED),
                 "--heartbeat", str(HEARTBEAT_S)],
                stdout=log, stderr=subprocess.STDOUT,
            )
        everyone = sorted(["node1", *(name for name, _, _ in keys)])
        wait_for(lambda: sum(n["state"] == "ACTIVE" for n in c.nodes().values()) == len(everyone), 60,
                 what="the emulated nodes ACTIVE")
        job = c.submit(["true"])
        assert c.wait_status(job, "SUCCEEDED", "FAILED")["status"] == "SUCCEEDED"

        pages, body = [], {"maxResults": 10}
        while True:
            page = c.client.call("/hpcbatch/v1/listnodes", body)
            pages.append([n["name"] for n in page["nodes"]])
            if "nextToken" not in page:
                break
            body = {"maxResults": 10, "nextToken": page["nextToken"]}
        assert [len(p) for p in pages] == [10, 10, 5]
        assert sum(pages, []) == everyone
        assert [n["name"] for n in c.client.list_nodes()["nodes"]] == everyone  # no maxResults: a page of 1,000
        assert [n["name"] for n in c.client.all_nodes()] == everyone
        out = CliRunner().invoke(cli, ["--endpoint", c.socket_endpoint, "--output", "json", "nodes", "list"])
        assert out.exit_code == 0, out.output
        assert out.output.count('"name"') >= len(everyone)
        for bad, field in (({"maxResults": 0}, "maxResults"), ({"maxResults": "9"}, "maxResults"),
                           ({"nextToken": "bm90LWEtdG9rZW4="}, "nextToken")):
            with pytest.raises(ClientError, match=field):
                c.client.call("/hpcbatch/v1/listnodes", bad)
    finally:
        if swarm is not None:
            swarm.terminate()
            swarm.wait(timeout=20)
        c.close()
