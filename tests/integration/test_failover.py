"""Active/standby heads on one PostgreSQL: kill -9 of the active head, and a paused one.

Real heads, agents and PostgreSQL (tests/pg.py). The standby takes the lease when the
active head stops renewing it, recovers every acknowledged job from the shared store, and
the agents move to it and report what they run; a former head that was paused and
resumed finds its lease taken and stops without writing or starting anything.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpcbatch.cli.main import cli
from hpcbatch.client import Client
from hpcbatch.errors import ServerError
from tests.harness import TestCluster, wait_for
from tests.pg import PostgresServer


@pytest.fixture
def ha(tmp_path: Path, postgres: PostgresServer) -> Iterator[TestCluster]:
    c = TestCluster(tmp_path, nodes=2, store="postgresql", heads=2, node_vcpus=8)
    try:
        yield c.up()
    finally:
        c.close()


def _marked(c: TestCluster, marks: Path, seconds: float) -> list[str]:
    """A job that appends its id to its own marker file, then sleeps: one line per start."""
    return ["sh", "-c", f'echo "$AWS_BATCH_JOB_ATTEMPT" >> {marks}/"$AWS_BATCH_JOB_ID"; sleep {seconds}']


def _starts(marks: Path, job_id: str) -> int:
    path = marks / job_id
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_failover_after_kill_9_keeps_every_job_and_runs_none_twice(ha: TestCluster, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    marks.chmod(0o777)
    assert ha.active_head() == "head"
    with ha.head_client("head2") as standby, pytest.raises(ServerError, match="standby.*active head is http"):
        standby.list_nodes()
    # A client that names the standby first is declined there and moves on to the active head.
    with Client(f'{ha.heads["head2"]["socket"]},{ha.heads["head"]["socket"]}', timeout=10) as either:
        assert either.list_nodes()["nodes"]
        assert either.endpoint == ha.heads["head"]["socket"]
    running = [ha.submit(_marked(ha, marks, 6)) for _ in range(2)]
    for job_id in running:
        ha.wait_status(job_id, "RUNNING")
    queued = [ha.submit(_marked(ha, marks, 0)) for _ in range(20)]  # each acknowledged = committed

    ha.kill("head")  # SIGKILL
    killed_at = time.monotonic()
    assert ha.active_head(timeout=20) == "head2"
    ha.client.list_nodes()  # the client moved on to the new active head by itself
    served_after = time.monotonic() - killed_at
    assert served_after < 20, served_after  # the figure itself is bench/ha_bench.py's failover_s

    heads = CliRunner().invoke(cli, ["--endpoint", ha.socket_endpoint, "-o", "json", "admin", "heads"])
    roles = [h["role"] for h in json.loads(heads.output)["heads"]]
    assert roles == ["unreachable", "active"], heads.output  # `hpcbatch admin heads` says who serves

    described = {j["jobId"]: j for j in ha.client.describe_jobs(jobs=running + queued)["jobs"]}
    assert set(described) == set(running + queued)  # every acknowledged submission is there
    ha.wait_active()  # agents re-registered with head2, reporting what they run
    for job_id in running + queued:
        job = ha.wait_status(job_id, "SUCCEEDED", "FAILED", timeout=60)
        assert job["status"] == "SUCCEEDED", job.get("statusReason")
        assert len(job["attempts"]) == 1  # the running ones kept running: no retry, no restart
        assert _starts(marks, job_id) == 1, job_id  # nothing ran twice


def test_a_paused_former_head_cannot_write_or_start_anything_after_a_takeover(ha: TestCluster, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    marks.chmod(0o777)
    before = [ha.submit(_marked(ha, marks, 0)) for _ in range(3)]
    for job_id in before:
        ha.wait_status(job_id, "SUCCEEDED")
    old = ha.procs["head"]
    epoch_before = ha.head_client("head2").describe_head()["active"]["epoch"]
    old.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: ha.role("head2") == "active", 30, what="head2 to take over from the paused head")
        # The paused head still holds its sockets (calls to it hang): talk to head2 itself.
        with ha.head_client("head2") as c:
            assert c.describe_head()["epoch"] > epoch_before
            wait_for(  # agents left the silent head for the active one
                lambda: all(n["state"] == "ACTIVE" for n in c.list_nodes()["nodes"]), 30, what="nodes ACTIVE on head2"
            )
            after = [
                c.submit_job(jobName="after", jobQueue="default", jobDefinition="hpcbatch-default",
                             containerOverrides={"command": _marked(ha, marks, 0)})["jobId"]
                for _ in range(5)
            ]
    finally:
        old.send_signal(signal.SIGCONT)
    # Resumed, the former head finds its lease gone: it stops (EX_TEMPFAIL), having written nothing.
    assert old.wait(timeout=30) == 75
    ha.procs.pop("head")
    log = (tmp_path / "head.log").read_text()
    assert "taken over" in log
    for job_id in before + after:
        assert ha.wait_status(job_id, "SUCCEEDED")["status"] == "SUCCEEDED"
        assert _starts(marks, job_id) == 1, job_id
