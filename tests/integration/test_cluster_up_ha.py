"""``hpcbatch cluster up --store postgresql://… --heads 2``: a local cluster on PostgreSQL
with an active and a standby head, really started, failed over and stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hpcbatch.client import HeadUnreachableError
from hpcbatch.localcluster import LocalCluster
from hpcbatch.localrecord import ClusterShape
from tests.harness import wait_for
from tests.pg import PostgresServer


def test_cluster_up_on_postgresql_with_two_heads_fails_over_and_comes_down(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    home = str(tmp_path / "home")
    # The daemons run from the cluster's folder: this checkout's modules, installed or not.
    repo = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, HPCBATCH_HOME=home, PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    url = postgres.create_database("localha")  # brand-new: the first head creates the schema

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hpcbatch.cli.main", *args],
                              capture_output=True, text=True, env=env, timeout=120, check=False)

    local = LocalCluster(home)
    try:
        up = cli("cluster", "up", "--nodes", "1", "--store", url, "--heads", "2")
        assert up.returncode == 0, up.stderr
        assert "head, head2" in up.stdout
        heads = cli("-o", "json", "admin", "heads")
        assert [h["role"] for h in json.loads(heads.stdout)["heads"]] == ["active", "standby"], heads.stderr
        with local.client(timeout=10) as client:
            before = client.submit_job(jobName="before", jobQueue="default", jobDefinition="hpcbatch-default",
                                       containerOverrides={"command": ["echo", "from head one"]})["jobId"]
            assert client.wait_job(before, timeout=60)["status"] == "SUCCEEDED"
            # kill -9 of the active head (a process this test started): head2 takes over,
            # with the same key pair, node keys and job output.
            record = local.record()
            assert record is not None
            os.kill(int(record["processes"]["head"]["pid"]), signal.SIGKILL)

            def node_active_on_head2() -> bool:
                try:
                    return [n["state"] for n in client.list_nodes()["nodes"]] == ["ACTIVE"]
                except HeadUnreachableError:  # the call in flight on the killed head's connection
                    return False

            wait_for(node_active_on_head2, 30, what="node1 ACTIVE on head2")
            assert client.endpoint.endswith("head2/api.sock")
            after = client.submit_job(jobName="after", jobQueue="default", jobDefinition="hpcbatch-default",
                                      containerOverrides={"command": ["true"]})["jobId"]
            assert client.wait_job(after, timeout=60)["status"] == "SUCCEEDED"
            assert client.get_job_logs(before)["data"] == "from head one\n"
    finally:
        down = cli("cluster", "down")
    assert down.returncode == 0, down.stderr
    assert "head2" in down.stdout and "node1" in down.stdout
    assert local.record() is None


def test_cluster_up_refuses_several_heads_without_a_postgresql_store(tmp_path: Path) -> None:
    from hpcbatch.localcluster import LocalClusterError

    local = LocalCluster(str(tmp_path / "home"))
    for kwargs, why in (({"heads": 2}, "give --store postgresql"), ({"store": "/tmp/x.db"}, "not a postgresql:// URL")):
        try:
            local.up(ClusterShape(nodes=1, **kwargs))  # type: ignore[arg-type]
        except LocalClusterError as e:
            assert why in str(e)
        else:
            raise AssertionError(f"up({kwargs}) was not refused")
    assert local.record() is None  # refused before anything started


def test_cluster_up_forgets_the_head_epoch_its_agents_saw_on_the_last_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agents' state outlives `down`; a later `up` on SQLite (epoch 0) must still be obeyed.
    from hpcbatch.curve import ensure_keypair, load_public_key
    from node_agent.head_epoch import HeadEpoch

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))  # the daemons' modules
    local = LocalCluster(str(tmp_path / "home"))
    curve = Path(local.dir) / "head" / "curve"
    ensure_keypair(curve / "head.key_secret", curve / "head.key")  # the key pair `up` keeps
    node_state = Path(local.dir) / "node1"
    node_state.mkdir(parents=True)
    HeadEpoch(node_state, load_public_key(curve / "head.key")).save(9)  # left by a PostgreSQL cluster
    try:
        local.up(ClusterShape(nodes=1))
        with local.client(timeout=10) as client:
            job_id = client.submit_job(jobName="j", jobQueue="default", jobDefinition="hpcbatch-default",
                                       containerOverrides={"command": ["true"]})["jobId"]
            assert client.wait_job(job_id, timeout=60)["status"] == "SUCCEEDED"
    finally:
        local.down()
