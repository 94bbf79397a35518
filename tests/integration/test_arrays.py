"""Array jobs and their dependencies through a real head and agents."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import TestCluster, wait_for


@pytest.fixture(scope="module")
def arr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    c = TestCluster(tmp_path_factory.mktemp("arrays"), nodes=2)
    try:
        yield c.up()
    finally:
        c.close()


def submit_array(c: TestCluster, size: int, command: list[str], **extra: Any) -> str:
    return c.submit(command, arrayProperties={"size": size}, **extra)


def test_every_index_runs_exactly_once(arr: TestCluster, tmp_path: Path) -> None:
    out = tmp_path / "ran"
    job_id = submit_array(arr, 20, ["sh", "-c", f"echo $AWS_BATCH_JOB_ARRAY_INDEX >> {out}"])
    job = arr.wait_status(job_id, "SUCCEEDED", timeout=60)
    assert sorted(int(x) for x in out.read_text().split()) == list(range(20))
    assert job["arrayProperties"]["size"] == 20
    assert job["arrayProperties"]["statusSummary"]["SUCCEEDED"] == 20
    children = arr.client.list_jobs(arrayJobId=job_id)["jobSummaryList"]
    assert [c["arrayProperties"]["index"] for c in children] == list(range(20))
    assert arr.job(f"{job_id}:7")["arrayProperties"] == {"index": 7}


def test_a_failed_child_fails_the_parent(arr: TestCluster) -> None:
    job_id = submit_array(arr, 4, ["sh", "-c", 'test "$AWS_BATCH_JOB_ARRAY_INDEX" != 2'])
    job = arr.wait_status(job_id, "FAILED", timeout=60)
    summary = job["arrayProperties"]["statusSummary"]
    assert (summary["SUCCEEDED"], summary["FAILED"]) == (3, 1)


def test_sequential_children_run_in_index_order(arr: TestCluster, tmp_path: Path) -> None:
    out = tmp_path / "order"
    job_id = submit_array(arr, 5, ["sh", "-c", f"echo $AWS_BATCH_JOB_ARRAY_INDEX >> {out}"],
                          dependsOn=[{"type": "SEQUENTIAL"}])
    arr.wait_status(job_id, "SUCCEEDED", timeout=60)
    assert out.read_text().split() == ["0", "1", "2", "3", "4"]


def test_n_to_n_pairs_children_and_failures_propagate(arr: TestCluster, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    first = submit_array(arr, 4, ["sh", "-c", f'touch {marks}/a$AWS_BATCH_JOB_ARRAY_INDEX; test "$AWS_BATCH_JOB_ARRAY_INDEX" != 3'])
    second = submit_array(arr, 4, ["sh", "-c", f"test -e {marks}/a$AWS_BATCH_JOB_ARRAY_INDEX"],
                          dependsOn=[{"jobId": first, "type": "N_TO_N"}])
    arr.wait_status(first, "FAILED", timeout=60)
    job = arr.wait_status(second, "FAILED", timeout=60)
    assert job["arrayProperties"]["statusSummary"]["SUCCEEDED"] == 3
    assert arr.job(f"{second}:3")["statusReason"] == "Dependent Job failed"


def test_cap_on_running_children_is_honoured(arr: TestCluster, tmp_path: Path) -> None:
    out = tmp_path / "overlap"
    script = f"echo start >> {out}; sleep 0.3; echo end >> {out}"
    job_id = submit_array(arr, 6, ["sh", "-c", script], tags={"hpcbatch:maxRunning": "1"})
    arr.wait_status(job_id, "SUCCEEDED", timeout=60)
    assert out.read_text().split() == ["start", "end"] * 6  # never two at once


def test_cancelling_the_parent_cancels_waiting_children(arr: TestCluster) -> None:
    job_id = submit_array(arr, 50, ["sleep", "0.5"], tags={"hpcbatch:maxRunning": "1"})
    wait_for(lambda: arr.job(job_id)["arrayProperties"]["statusSummary"]["RUNNING"] >= 1, 20, what="a child running")
    arr.client.cancel_job(jobId=job_id, reason="not needed")
    job = arr.wait_status(job_id, "FAILED", timeout=30)
    summary = job["arrayProperties"]["statusSummary"]
    assert summary["FAILED"] >= 48 and summary["SUCCEEDED"] <= 2


def test_a_child_can_be_cancelled_alone(arr: TestCluster) -> None:
    job_id = submit_array(arr, 3, ["sleep", "0.2"], tags={"hpcbatch:maxRunning": "1"})
    arr.client.cancel_job(jobId=f"{job_id}:2", reason="skip this one")
    job = arr.wait_status(job_id, "FAILED", timeout=30)
    assert job["arrayProperties"]["statusSummary"]["SUCCEEDED"] == 2
    assert arr.job(f"{job_id}:2")["statusReason"] == "skip this one"


def test_dependency_on_a_whole_array(arr: TestCluster) -> None:
    first = submit_array(arr, 3, ["true"])
    after = arr.submit(["true"], dependsOn=[{"jobId": first}])
    arr.wait_status(after, "SUCCEEDED", timeout=60)
    assert arr.job(first)["stoppedAt"] <= arr.job(after)["startedAt"]


def test_head_restart_mid_array_loses_and_repeats_nothing(tmp_path: Path) -> None:
    c = TestCluster(tmp_path, nodes=2)
    out = tmp_path / "ran"
    try:
        c.up()
        job_id = submit_array(c, 2000, ["sh", "-c", f"echo $AWS_BATCH_JOB_ARRAY_INDEX >> {out}"])
        wait_for(lambda: out.exists() and len(out.read_text().split()) >= 300, 60, what="some children done")
        c.kill("head", signal.SIGKILL)
        c.start_head()
        c.wait_status(job_id, "SUCCEEDED", timeout=120)
        ran = [int(x) for x in out.read_text().split()]
        assert sorted(ran) == list(range(2000)), "an index ran twice or never"
    finally:
        c.close()
