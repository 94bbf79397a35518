"""Preemption on a real head and agents: a preempting queue's job stops a preemptible queue's
job (warning signal, SIGTERM, a short grace), which goes back to RUNNABLE and reruns as a new
attempt that does not count against retryStrategy (attempts=1 still reruns); the warning
signal survives an agent restart."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcbatch.errors import ClientError
from tests.harness import TestCluster, wait_for

CE = [{"order": 1, "computeEnvironment": "default"}]
ONE_VCPU = [{"type": "VCPU", "value": "1"}]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    """Two 1-vCPU nodes; queue lo (priority 1, preemptible), queue hi (priority 10, preempts)."""
    c = TestCluster(tmp_path_factory.mktemp("preempt"), nodes=2, node_vcpus=1, head_extra="preempt_grace_s = 3\n")
    try:
        c.up()
        c.client.create_job_queue(jobQueueName="lo", priority=1, computeEnvironmentOrder=CE,
                                  tags={"hpcbatch:preemptible": "true"})
        c.client.create_job_queue(jobQueueName="hi", priority=10, computeEnvironmentOrder=CE,
                                  tags={"hpcbatch:preempts": "true"})
        yield c
    finally:
        c.close()


def _victim(marks: Path, gate: Path) -> list[str]:
    """Writes what it got to marks/JOBID; the first attempt runs until the gate (or a signal), a rerun ends at once."""
    m = f'{marks}/"$AWS_BATCH_JOB_ID"'
    return ["sh", "-c",
            f'if [ "$AWS_BATCH_JOB_ATTEMPT" -gt 1 ]; then echo rerun >> {m}; exit 0; fi; '
            f"trap 'echo usr1 >> {m}' USR1; trap 'echo term >> {m}; exit 143' TERM; echo started >> {m}; "
            f"while [ ! -e {gate} ]; do sleep 0.05; done"]


def test_a_preempting_queue_stops_a_victim_which_reruns_without_using_its_retries(
    cluster: TestCluster, tmp_path: Path,
) -> None:
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    marks.mkdir()
    marks.chmod(0o777)
    victims = [cluster.submit([], jobQueue="lo", retryStrategy={"attempts": 1}, tags={"hpcbatch:signal": "USR1@60"},
                              containerOverrides={"command": _victim(marks, gate), "resourceRequirements": ONE_VCPU})
               for _ in range(2)]
    for v in victims:
        cluster.wait_status(v, "RUNNING")
        wait_for(lambda v=v: (marks / v).exists(), 15, what=f"{v} to start")
    hi = cluster.submit(["sh", "-c", f"cat {marks}/* > {tmp_path}/seen"], jobQueue="hi",
                        containerOverrides={"resourceRequirements": ONE_VCPU})
    done = cluster.wait_status(hi, "SUCCEEDED", timeout=60)
    preempted = [v for v in victims if "term" in (marks / v).read_text()]
    assert len(preempted) == 1, [(marks / v).read_text() for v in victims]  # one 1-vCPU job makes room
    victim = preempted[0]
    assert (marks / victim).read_text().split()[:3] == ["started", "usr1", "term"]  # the warning, then SIGTERM
    assert "term" in (tmp_path / "seen").read_text()  # hi started after the victim had its SIGTERM
    gate.touch()
    job = cluster.wait_status(victim, "SUCCEEDED", timeout=60)
    first, second = job["attempts"]
    assert f"Preempted for {hi}" in first["statusReason"] and first["preemptedBy"] == hi
    assert "preemptedBy" not in second and first["stoppedAt"] <= done["startedAt"]
    assert job["retryStrategy"]["attempts"] == 1  # attempts=1, yet it reran: the preemption is not counted
    assert (marks / victim).read_text().split()[-1] == "rerun"
    other = next(v for v in victims if v != victim)
    assert len(cluster.wait_status(other, "SUCCEEDED")["attempts"]) == 1


def test_queue_settings_are_tags_shown_by_describe_and_a_bad_value_names_the_tag(cluster: TestCluster) -> None:
    queues = {q["jobQueueName"]: q for q in cluster.client.describe_job_queues(jobQueues=["lo", "hi"])["jobQueues"]}
    assert queues["lo"]["tags"] == {"hpcbatch:preemptible": "true"}
    assert queues["hi"]["tags"] == {"hpcbatch:preempts": "true"}
    with pytest.raises(ClientError, match=r'tags\["hpcbatch:preemptible"\].*true or false'):
        cluster.client.create_job_queue(jobQueueName="bad", priority=1, computeEnvironmentOrder=CE,
                                        tags={"hpcbatch:preemptible": "sometimes"})
    assert cluster.client.describe_job_queues(jobQueues=["bad"])["jobQueues"] == []


def test_the_warning_signal_comes_seconds_before_the_timeout(cluster: TestCluster, tmp_path: Path) -> None:
    mark = tmp_path / "warned"
    job = cluster.submit(["sh", "-c", f"trap 'echo usr1 >> {mark}' USR1; while :; do sleep 0.05; done"],
                         timeout={"attemptDurationSeconds": 60}, tags={"hpcbatch:signal": "USR1@59"})
    wait_for(lambda: mark.exists(), 20, what="the warning signal, 1 s into a 60 s timeout")
    assert cluster.job(job)["status"] == "RUNNING"  # warned, not stopped
    cluster.client.terminate_job(jobId=job, reason="seen")
    cluster.wait_status(job, "FAILED")


def test_an_agent_restarted_under_a_running_job_still_sends_its_warning(cluster: TestCluster, tmp_path: Path) -> None:
    """kill -9 the agent before the warning is due: the restarted agent re-adopts the attempt
    with its warning signal from the journal, and sends it before the timeout."""
    marks = tmp_path / "marks"
    job = cluster.submit(["sh", "-c", f"trap 'echo usr1 >> {marks}' USR1; echo started >> {marks}; "
                                      "while :; do sleep 0.05; done"],
                         timeout={"attemptDurationSeconds": 60}, tags={"hpcbatch:signal": "USR1@54"})
    wait_for(lambda: marks.exists(), 20, what="the job to start")
    node = cluster.job(job)["nodeName"]
    cluster.kill(node, signal.SIGKILL)  # 6 s before the warning is due
    cluster.start_agent(node)
    wait_for(lambda: "usr1" in marks.read_text(), 30, what="the warning from the restarted agent")
    assert marks.read_text().count("usr1") == 1 and cluster.job(job)["status"] == "RUNNING"
    cluster.client.terminate_job(jobId=job, reason="seen")
    cluster.wait_status(job, "FAILED")
    cluster.wait_active([node])


def test_submit_refuses_a_signal_longer_than_the_timeout_naming_the_tag(cluster: TestCluster) -> None:
    with pytest.raises(ClientError, match=r'tags\["hpcbatch:signal"\].*must not exceed'):
        cluster.submit(["true"], timeout={"attemptDurationSeconds": 60}, tags={"hpcbatch:signal": "USR1@61"})


def test_a_head_killed_mid_preemption_neither_loses_the_victim_nor_counts_it(
    cluster: TestCluster, tmp_path: Path,
) -> None:
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    marks.mkdir()
    marks.chmod(0o777)
    m = f'{marks}/"$AWS_BATCH_JOB_ID"'
    stubborn = ["sh", "-c",  # ignores SIGTERM: it lives through the grace, across the head's restart
                f'if [ "$AWS_BATCH_JOB_ATTEMPT" -gt 1 ]; then echo rerun >> {m}; exit 0; fi; '
                f"trap 'echo term >> {m}' TERM; echo started >> {m}; while [ ! -e {gate} ]; do sleep 0.05; done"]
    victims = [cluster.submit([], jobQueue="lo", retryStrategy={"attempts": 1},
                              containerOverrides={"command": stubborn, "resourceRequirements": ONE_VCPU})
               for _ in range(2)]
    for v in victims:
        wait_for(lambda v=v: (marks / v).exists(), 20, what=f"{v} to start")
    hi = cluster.submit(["true"], jobQueue="hi", containerOverrides={"resourceRequirements": ONE_VCPU})
    wait_for(lambda: any("term" in (marks / v).read_text() for v in victims), 20, what="a victim's SIGTERM")
    cluster.kill("head", signal.SIGKILL)  # mid-grace: the victim still runs
    cluster.start_head()
    cluster.wait_status(hi, "SUCCEEDED", timeout=60)
    gate.touch()
    jobs = [cluster.wait_status(v, "SUCCEEDED", "FAILED", timeout=60) for v in victims]
    assert all(j["status"] == "SUCCEEDED" for j in jobs), jobs  # attempts=1, yet none failed
    preempted = [j for j in jobs if j["attempts"][0].get("preemptedBy") == hi]
    assert preempted and all(len(j["attempts"]) == 2 for j in preempted)


def test_tagging_a_queue_preemptible_takes_effect_at_once(cluster: TestCluster, tmp_path: Path) -> None:
    # TagResource alone (no UpdateJobQueue after it) must reach the running head's scheduler.
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    marks.mkdir()
    marks.chmod(0o777)
    arn = cluster.client.create_job_queue(jobQueueName="plain", priority=1, computeEnvironmentOrder=CE)["jobQueueArn"]
    victims = [cluster.submit([], jobQueue="plain",
                              containerOverrides={"command": _victim(marks, gate), "resourceRequirements": ONE_VCPU})
               for _ in range(2)]
    for v in victims:
        cluster.wait_status(v, "RUNNING")
    hi = cluster.submit(["true"], jobQueue="hi", containerOverrides={"resourceRequirements": ONE_VCPU})
    cluster.client.tag_resource(resourceArn=arn, tags={"hpcbatch:preemptible": "true"})
    cluster.wait_status(hi, "SUCCEEDED", timeout=60)  # before the gate opens: a victim made room
    gate.touch()
    for v in victims:
        cluster.wait_status(v, "SUCCEEDED", timeout=60)
