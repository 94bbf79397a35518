"""Start-time forecasts through the real head: DescribeJobs' hpcbatchExpectedStartAt, `why`, `list --start`."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from hpcbatch.cli.main import cli
from hpcbatch.cli.timetext import start_time
from tests.harness import TestCluster, wait_for


def test_a_waiting_job_shows_its_expected_start_from_the_running_jobs_timeouts(
    cluster: TestCluster, tmp_path: Path
) -> None:
    gate = tmp_path / "go"
    hold = ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"]
    blockers = []
    for name in ("node1", "node2"):  # each node held whole until its 600 s timeout, as planned
        vcpus = cluster.nodes()[name]["vcpus"]
        blockers.append(cluster.submit(hold, timeout={"attemptDurationSeconds": 600}, containerOverrides={
            "command": hold, "resourceRequirements": [{"type": "VCPU", "value": str(vcpus)}]}))
    for job_id in blockers:
        cluster.wait_status(job_id, "RUNNING")
    vcpus = max(cluster.nodes()[n]["vcpus"] for n in ("node1", "node2"))
    waiting = cluster.submit(["true"], containerOverrides={
        "command": ["true"], "resourceRequirements": [{"type": "VCPU", "value": str(vcpus)}]})
    try:
        job = wait_for(lambda: (j := cluster.job(waiting)).get("hpcbatchExpectedStartAt") and j, 15,
                       what="a start forecast")
        assert job["status"] == "RUNNABLE"
        first_end = min(cluster.job(b)["startedAt"] for b in blockers) + 600_000
        assert abs(job["hpcbatchExpectedStartAt"] - first_end) < 10_000
        why = cluster.client.call("/hpcbatch/v1/whyjob", {"jobId": waiting})
        assert why["expectedStartAt"] == job["hpcbatchExpectedStartAt"]
        shown = start_time(job["hpcbatchExpectedStartAt"])
        result = CliRunner().invoke(cli, ["--endpoint", cluster.socket_endpoint, "why", waiting])
        assert result.exit_code == 0 and f"expected start: {shown}" in result.output
        result = CliRunner().invoke(cli, ["--endpoint", cluster.socket_endpoint, "list", "--start"])
        assert result.exit_code == 0, result.output
        row = next(line for line in result.output.splitlines() if waiting in line)
        assert shown in row and "START TIME" in result.output
    finally:
        cluster.client.cancel_job(jobId=waiting, reason="done")
        gate.touch()
        for job_id in blockers:
            cluster.wait_status(job_id, "SUCCEEDED")
