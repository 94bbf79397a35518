"""The local cluster is supervised: dead agents come back, ``up`` mends, ``status``/``down`` see by identity.

One real local cluster (``hpcbatch cluster up``'s LocalCluster: head, one agent, the
supervisor) for the module; each test breaks it a little and checks it is mended. The test
that brings it down runs last.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from hpcbatch.cli.main import cli
from hpcbatch.localcluster import LocalCluster
from hpcbatch.localrecord import ClusterShape, next_restart
from tests.harness import wait_for


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(str(tmp_path_factory.mktemp("sup")))
    try:
        yield cluster.up(ClusterShape(nodes=1))
    finally:
        cluster.down()


def _pid(local: LocalCluster, name: str) -> int:
    return int((local.record() or {})["processes"][name]["pid"])


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _status(local: LocalCluster) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["cluster", "status", "--home", local.home])
    return result.exit_code, result.output


def test_a_killed_agent_is_restarted_and_readopts_its_job(local: LocalCluster, tmp_path: Path) -> None:
    pidfile, gate = tmp_path / "job.pid", tmp_path / "gate"
    os.chmod(tmp_path, 0o777)  # the job may run as another user than the test
    with local.client(timeout=10) as client:
        job_id = client.submit_job(
            jobName="orphan", jobQueue="default", jobDefinition="hpcbatch-default",
            containerOverrides={"command": ["sh", "-c", f"echo $$ > {pidfile}; while [ ! -e {gate} ]; "
                                                        "do sleep 0.1; done; exit 7"]},
        )["jobId"]
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 30, what="the job to start")
        # RUNNING: the agent has journaled the attempt (it reports the start after that).
        wait_for(lambda: client.describe_jobs(jobs=[job_id])["jobs"][0]["status"] == "RUNNING", 30,
                 what="the job RUNNING")
        orphan = int(pidfile.read_text())
        agent = _pid(local, "node1")
        os.kill(agent, signal.SIGKILL)
        # The supervisor starts a new agent; within its fence it re-adopts what its
        # predecessor left running (node_agent.runner), so the job runs on to its real exit.
        wait_for(lambda: _pid(local, "node1") != agent, 15, what="the supervisor to restart node1")
        wait_for(lambda: [n["state"] for n in client.list_nodes()["nodes"]] == ["ACTIVE"], 30,
                 what="node1 ACTIVE again")
        assert not _gone(orphan), "the restarted agent killed the job instead of re-adopting it"
        assert client.describe_jobs(jobs=[job_id])["jobs"][0]["status"] == "RUNNING"
        gate.touch()
        final = client.wait_job(job_id, timeout=60, poll=0.2)
        assert final["status"] == "FAILED" and final["attempts"][-1]["container"]["exitCode"] == 7, final
        assert len(final["attempts"]) == 1, final
    assert "node1 was not running: restarted it" in Path(local.log_path("supervisor")).read_text()


def test_up_after_kill_9_of_the_head_restarts_it_and_keeps_the_agent(local: LocalCluster) -> None:
    agent, supervisor = _pid(local, "node1"), int((local.record() or {})["supervisor"]["pid"])
    head = _pid(local, "head")
    os.kill(head, signal.SIGKILL)
    wait_for(lambda: _gone(head), 10, what="the head to die")
    code, output = _status(local)
    assert code == 1 and "stopped:   head" in output
    result = CliRunner().invoke(cli, ["cluster", "up", "--home", local.home])
    assert result.exit_code == 0, result.output
    assert "restarted head, kept node1 running" in result.output
    assert _pid(local, "node1") == agent and int((local.record() or {})["supervisor"]["pid"]) == supervisor
    with local.client(timeout=10) as client:
        job_id = client.submit_job(jobName="after", jobQueue="default", jobDefinition="hpcbatch-default",
                                   containerOverrides={"command": ["true"]})["jobId"]
        assert client.wait_job(job_id, timeout=60, poll=0.2)["status"] == "SUCCEEDED"


def test_status_and_down_find_a_head_restarted_by_hand(local: LocalCluster) -> None:
    head = _pid(local, "head")
    os.kill(head, signal.SIGKILL)
    wait_for(lambda: _gone(head), 10, what="the head to die")
    # As an operator would: from the cluster's folder, with a relative path.
    by_hand = subprocess.Popen([sys.executable, "-m", "hpcbatch.head", "--config", "head.toml"], cwd=local.dir,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: _status(local)[0] == 0, 20, what="status to see the head started by hand")
        assert "supervisor: running" in _status(local)[1]
        agent = _pid(local, "node1")
        supervisor = int((local.record() or {})["supervisor"]["pid"])
        assert sorted(local.down()) == ["head", "node1"]
        assert by_hand.wait(timeout=15) is not None
        assert _gone(agent) and _gone(supervisor)
        assert local.record() is None
    finally:
        if by_hand.poll() is None:
            by_hand.kill()
            by_hand.wait()


def test_an_agent_that_keeps_dying_is_restarted_with_growing_waits(tmp_path: Path) -> None:
    # Time passed in: tend() is one look of the supervisor at a given moment.
    stand_in = LocalCluster(str(tmp_path))
    os.makedirs(stand_in.dir)
    Path(stand_in.dir, "dies.py").write_text("raise SystemExit(3)\n")  # an agent that fails at once
    stand_in._write_record({"processes": {"head": {"pid": 0, "create_time": 0},
                                          "node1": {"pid": 0, "create_time": 0, "module": "dies"}}})
    restarts: dict[str, list[float]] = {}

    def look(now: float) -> list[str]:
        started = stand_in.tend(restarts, now)
        for proc in list(stand_in._children):
            proc.wait(timeout=10)  # it dies (quickly) before the next look
        return started

    assert look(100.0) == ["node1"]  # found dead: restarted at once (the head is up's to mend)
    assert look(100.5) == []  # died within a minute of its start: wait 1 s
    assert look(101.6) == ["node1"]
    assert look(102.0) == []  # again: wait 5 s
    assert look(106.9) == []
    assert look(107.1) == ["node1"]
    assert look(107.2) == [] and look(137.1) == []  # then 30 s, for as long as it fails
    assert look(137.3) == ["node1"]
    assert look(167.0) == [] and look(196.9) == []  # still 30 s after it is found dead
    assert look(197.1) == ["node1"]
    # Seen dead only minutes after its start (it ran, as far as anyone knows): afresh.
    assert look(300.0) == ["node1"]
    assert look(300.5) == []


def test_restart_waits_grow_with_quick_deaths_and_start_afresh_after_a_long_run() -> None:
    assert next_restart(float("-inf"), 0, 10.0) == (0, 10.0)  # not started by us: at once
    assert next_restart(10.0, 0, 12.0) == (1, 13.0)
    assert next_restart(13.0, 1, 14.0) == (2, 19.0)
    assert next_restart(19.0, 2, 20.0) == (3, 50.0)
    assert next_restart(50.0, 3, 51.0) == (4, 81.0)  # 30 s from then on
    assert next_restart(81.0, 4, 200.0) == (0, 200.0)  # it ran two minutes: afresh
