"""Faults at the agent cost no job: restarts (SIGTERM, kill -9), a full state disk, a start that fails.

One cluster for the module: two nodes in the default compute environment, whose agents leave
their attempts running when stopped (``leave_attempts_on_stop``, as under systemd with
``KillMode=process``), and a third, ``nodefull``, alone in compute environment ``small``, whose
state directory is a 2 MiB tmpfs the tests fill. Every test leaves every agent running and no
job running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.errors import HpcbatchError
from tests import prereq
from tests.harness import TestCluster, wait_for

pytestmark = prereq.skipif(os.geteuid() != 0, "root", "mounts a tmpfs and sets file attributes (root only)")

FULL = "nodefull"


@pytest.fixture(scope="module")
def fc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    root = tmp_path_factory.mktemp("agent_faults")
    # A long liveness: an agent restart must not look like a lost node to the head.
    c = TestCluster(root, nodes=2, liveness=40, agent_extra="leave_attempts_on_stop = true\n")
    state = root / FULL
    mounted = False
    try:
        state.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(state)], check=True)
        mounted = True
        c.add_agent(FULL, extra='compute_environment = "small"\nleave_attempts_on_stop = true\n')
        c.up()
        c.start_agent(FULL)
        c.wait_active([FULL])
        c.client.create_compute_environment(computeEnvironmentName="small", type="UNMANAGED")
        c.client.create_job_queue(jobQueueName="small", priority=1,
                                  computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "small"}])
        yield c
    finally:
        c.close()
        _kill_left_attempts(root)
        if mounted:
            subprocess.run(["umount", "-l", str(state)], check=False)


def _kill_left_attempts(root: Path) -> None:
    """What stopped agents left running (they leave their attempts): killed, by group."""
    for entry in root.glob("*/running/*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, ProcessLookupError):
            os.killpg(int(json.loads(entry.read_text())["pid"]), signal.SIGKILL)


def _agent_log(c: TestCluster, node: str) -> str:
    return (c.root / f"{node}.log").read_text(errors="replace")


def _gated(c: TestCluster, name: str, code: int) -> tuple[list[str], Path, Path]:
    """A job command that records each run, waits for a gate file, then exits ``code``."""
    gate, runs = c.root / f"gate-{name}", c.root / f"runs-{name}"
    command = ["sh", "-c", f"echo $AWS_BATCH_JOB_ID >> {runs}; while [ ! -e {gate} ]; do sleep 0.05; done; exit {code}"]
    return command, gate, runs


def _ran_once(runs: Path, job_id: str) -> None:
    assert runs.read_text().split() == [job_id], "the command ran more than once"


def _one_attempt(job: dict[str, Any], exit_code: int) -> None:
    assert job["container"]["exitCode"] == exit_code, job
    assert len(job["attempts"]) == 1, job["attempts"]


def test_an_agent_restarted_mid_job_keeps_it_and_reports_its_real_exit(fc: TestCluster) -> None:
    command, gate, runs = _gated(fc, "restart", 3)
    job_id = fc.submit(command)
    node = fc.wait_status(job_id, "RUNNING")["nodeName"]
    wait_for(runs.exists, what="the job to start")
    seen = len(_agent_log(fc, node))
    fc.kill(node, signal.SIGTERM)  # as `systemctl restart` does: the agent alone (KillMode=process)
    assert "leaving 1 attempt(s) running" in _agent_log(fc, node)[seen:]
    fc.start_agent(node)
    wait_for(lambda: "re-adopted attempt" in _agent_log(fc, node)[seen:], what="the new agent to re-adopt the job")
    assert fc.job(job_id)["status"] == "RUNNING"
    gate.touch()
    _one_attempt(fc.wait_status(job_id, "FAILED"), 3)
    _ran_once(runs, job_id)


def test_an_agent_killed_while_its_job_ends_reports_the_real_exit_once(fc: TestCluster) -> None:
    command, gate, runs = _gated(fc, "kill9", 4)
    job_id = fc.submit(command)
    node = fc.wait_status(job_id, "RUNNING")["nodeName"]
    wait_for(runs.exists, what="the job to start")
    fc.kill(node, signal.SIGKILL)
    gate.touch()  # the job ends while no agent watches: its shim records the exit
    wait_for(lambda: any(p.read_text().strip() == "4" for p in (fc.root / node / "attempts").glob("*/exit_status")),
             what="the shim to record the exit")
    fc.start_agent(node)
    _one_attempt(fc.wait_status(job_id, "FAILED"), 4)
    _ran_once(runs, job_id)
    fc.wait_active([node])
    assert fc.wait_status(fc.submit(["true"]), "SUCCEEDED")


def test_a_start_that_fails_fails_that_attempt_with_the_cause_and_spares_the_other_job(fc: TestCluster) -> None:
    command, gate, runs = _gated(fc, "bystander", 0)
    bystander = fc.submit(command)
    node = fc.wait_status(bystander, "RUNNING")["nodeName"]
    other = next(n for n in fc.node_names if n != node)
    fc.client.call("/hpcbatch/v1/drainnode", {"name": other, "reason": "test: one node"})
    attempts = fc.root / node / "attempts"
    # The node's attempt directories can no longer be made: the next start on it raises.
    if subprocess.run(["chattr", "+i", str(attempts)], capture_output=True).returncode != 0:
        fc.client.call("/hpcbatch/v1/resumenode", {"name": other})
        gate.touch()
        prereq.skip("chattr", "chattr +i is not supported here")
    try:
        failed = fc.wait_status(fc.submit(["true"]), "FAILED")
        assert failed["nodeName"] == node
        reason = failed["attempts"][0]["container"].get("reason") or ""
        assert reason.startswith("CannotStartContainerError: cannot create the attempt's directory"), failed
        assert "Operation not permitted" in reason
    finally:
        subprocess.run(["chattr", "-i", str(attempts)], check=False)
        fc.client.call("/hpcbatch/v1/resumenode", {"name": other})
    assert fc.job(bystander)["status"] == "RUNNING"
    assert fc.procs[node].poll() is None, "the agent died"
    gate.touch()
    _one_attempt(fc.wait_status(bystander, "SUCCEEDED"), 0)
    _ran_once(runs, bystander)


def test_a_full_state_disk_costs_no_exit_no_agent_and_leaves_no_job_running(fc: TestCluster) -> None:
    state = fc.root / FULL
    started = [fc.submit(["sh", "-c", f"sleep 1; exit {code}"], jobQueue="small") for code in (0, 5)]
    for job_id in started:
        fc.wait_status(job_id, "RUNNING")
    filler = state / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:  # until the tmpfs is full
            f.write(b"\0" * 4096)
    try:
        # Exits of attempts that started before, and starts and exits on the full disk.
        during = [fc.submit(["sh", "-c", f"exit {code}"], jobQueue="small") for code in (0, 6, 0)]
        jobs = {j: fc.wait_status(j, "SUCCEEDED", "FAILED", timeout=60) for j in started + during}
        assert fc.procs[FULL].poll() is None, "the agent died"
        codes = [jobs[j]["container"].get("exitCode") for j in started + during]
        assert codes == [0, 5, 0, 6, 0], [jobs[j] for j in started + during]
        assert all(len(jobs[j]["attempts"]) == 1 for j in jobs)
        assert "cannot write" in _agent_log(fc, FULL)
    finally:
        filler.unlink()
    # With room again the node works as before.
    assert fc.wait_status(fc.submit(["sh", "-c", "exit 0"], jobQueue="small"), "SUCCEEDED")


def test_a_nul_byte_never_reaches_an_agent_and_the_node_lives(fc: TestCluster) -> None:
    # A NUL byte in a variable: exec cannot take it (Python raises ValueError, not OSError),
    # which once escaped the agent's loop and killed every job on the node. The API now
    # refuses it at the edge; a start that raises anyway (a job queued before that check)
    # fails its attempt only: tests/unit/test_runner.py::test_a_start_that_raises_fails_that_attempt_only.
    command, gate, runs = _gated(fc, "nul", 0)
    bystander = fc.submit(command)
    node = fc.wait_status(bystander, "RUNNING")["nodeName"]
    with pytest.raises(HpcbatchError, match="NUL byte"):
        fc.submit(["true"], containerOverrides={"command": ["true"],
                                               "environment": [{"name": "BAD", "value": "a\x00b"}]})
    assert fc.procs[node].poll() is None, "the agent died"
    assert fc.job(bystander)["status"] == "RUNNING"
    gate.touch()
    _one_attempt(fc.wait_status(bystander, "SUCCEEDED"), 0)
    _ran_once(runs, bystander)


def test_an_attempt_the_head_ended_while_its_agent_was_away_is_killed_when_it_returns(fc: TestCluster) -> None:
    command, gate, runs = _gated(fc, "ended", 0)
    job_id = fc.submit(command)
    node = fc.wait_status(job_id, "RUNNING")["nodeName"]
    wait_for(runs.exists, what="the job to start")
    pid = _journalled_pid(fc, node, job_id)
    fc.kill(node, signal.SIGTERM)  # the attempt runs on, unwatched
    fc.client.terminate_job(jobId=job_id, reason="Terminated while the agent was away")
    fc.start_agent(node)  # it lists the attempt as running; the head has ended it: killed
    wait_for(lambda: not _alive(pid), what="the attempt to be killed")
    job = fc.wait_status(job_id, "FAILED")
    assert job["statusReason"] == "Terminated while the agent was away", job
    assert not gate.exists()
    _ran_once(runs, job_id)


def _journalled_pid(fc: TestCluster, node: str, job_id: str) -> int:
    """The pid the agent journalled for ``job_id`` (other tests' attempts may share the node)."""
    entries = [json.loads(p.read_text()) for p in (fc.root / node / "running").glob("*.json")]
    (pid,) = [e["pid"] for e in entries if e.get("job_id") == job_id]
    return int(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_an_agent_back_after_its_fence_kills_what_it_left_instead_of_adopting_it(fc: TestCluster) -> None:
    # Past the fence the head may have retried the attempt elsewhere: adopting it could
    # run the command twice at once. (Last in the module: it adds a node with a short fence.)
    fc.add_agent("nodefence", extra='compute_environment = "fence"\nfence_after_s = 2\nleave_attempts_on_stop = true\n')
    fc.start_agent("nodefence")
    fc.wait_active(["nodefence"])
    fc.client.create_compute_environment(computeEnvironmentName="fence", type="UNMANAGED")
    fc.client.create_job_queue(jobQueueName="fence", priority=1,
                               computeEnvironmentOrder=[{"order": 1, "computeEnvironment": "fence"}])
    command, gate, runs = _gated(fc, "fence", 0)
    job_id = fc.submit(command, jobQueue="fence")
    fc.wait_status(job_id, "RUNNING")
    wait_for(runs.exists, what="the job to start")
    pid = _journalled_pid(fc, "nodefence", job_id)
    fc.kill("nodefence", signal.SIGKILL)
    lease = fc.root / "nodefence" / "lease"
    wait_for(lambda: time.time() - lease.stat().st_mtime > 3, what="the fence to pass")
    fc.start_agent("nodefence")
    wait_for(lambda: not _alive(pid), what="the orphan to be killed")
    job = fc.wait_status(job_id, "FAILED", "RUNNABLE")
    assert job["attempts"] and job["attempts"][0].get("container", {}).get("exitCode") is None, job
    assert "killed" in _agent_log(fc, "nodefence")
    _ran_once(runs, job_id)
    fc.client.terminate_job(jobId=job_id, reason="done")
    fc.kill("nodefence", signal.SIGTERM)
