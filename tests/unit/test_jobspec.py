"""One SubmitJob builder (hpcbatch.jobspec): the CLI and the console build the same body."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from hpcbatch.console.views import submit_body, submit_request
from hpcbatch.jobspec import SubmitRequest, has_command, merge_body, submit_job_body
from tests.unit.test_cli import run, sent
from tests.unit.test_client import StubHead


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubHead]:
    head = StubHead()
    head.answers["/v1/submitjob"] = {"jobId": "j-1", "jobName": "x", "jobArn": "arn:j-1"}
    monkeypatch.setenv("HPCBATCH_ENDPOINT", head.endpoint)
    try:
        yield head
    finally:
        head.stop()


# The same choices, once as `hpcbatch submit` options and once as the console's form.
CASES = [
    pytest.param(
        ["-q", "gpu", "-n", "train", "-d", "jd", "--vcpus", "2", "--memory", "1024", "--gpus", "1",
         "-e", "A=1", "--timeout", "600", "--retries", "3", "--depends-on", "j-0", "--array-size", "4",
         "--", "python", "train.py"],
        {"jobName": "train", "jobQueue": "gpu", "jobDefinition": "jd", "vcpus": "2", "memory": "1024",
         "gpus": "1", "environment": "A=1", "timeout": "600", "attempts": "3", "dependsOn": "j-0",
         "arraySize": "4", "command": "python train.py"},
        id="single-node array",
    ),
    pytest.param(
        ["-q", "q", "-n", "mpi", "-d", "mnp", "--nodes", "3", "--vcpus", "2", "-e", "X=y", "--", "mpirun", "app"],
        {"jobName": "mpi", "jobQueue": "q", "jobDefinition": "mnp", "numNodes": "3", "vcpus": "2",
         "environment": "X=y", "command": "mpirun app"},
        id="multi-node",
    ),
    pytest.param(
        ["-q", "q", "-n", "plain", "-d", "jd"],
        {"jobName": "plain", "jobQueue": "q", "jobDefinition": "jd"},
        id="the definition's command",
    ),
]


@pytest.mark.parametrize(("argv", "form"), CASES)
def test_the_cli_and_the_console_build_the_same_body(
    stub: StubHead, argv: list[str], form: dict[str, str]
) -> None:
    assert run("submit", *argv).exit_code == 0
    assert sent(stub, "/v1/submitjob") == submit_body(form)  # sent(): less the token and submit dir


def test_the_console_form_is_the_request_the_cli_makes() -> None:
    form = {"jobName": "n", "jobQueue": "q", "jobDefinition": "d", "command": "echo 'a b'", "vcpus": "0.5"}
    assert submit_request(form) == SubmitRequest(name="n", queue="q", job_definition="d", command=["echo", "a b"],
                                                  vcpus="0.5", env={}, depends_on=[])


def test_defaults_name_queue_and_definition_from_the_command() -> None:
    body = submit_job_body(SubmitRequest(command=["/usr/bin/python3.11", "-V"], vcpus=0.5, memory=64))
    assert body == {
        "jobName": "python3_11", "jobQueue": "default", "jobDefinition": "hpcbatch-default",
        "containerOverrides": {"command": ["/usr/bin/python3.11", "-V"], "resourceRequirements": [
            {"type": "VCPU", "value": "0.5"}, {"type": "MEMORY", "value": "64"}]},
    }
    assert has_command(body)


def test_a_multinode_script_runs_on_the_main_node_only() -> None:
    body = submit_job_body(SubmitRequest(nodes=2, script_id="sha256:s", script_name="job.sh", env={"A": "1"}))
    assert body["jobName"] == "job" and body["jobDefinition"] == "hpcbatch-default-mnp"
    main, rest = body["nodeOverrides"]["nodePropertyOverrides"]
    assert main == {"targetNodes": "0", "containerOverrides": {"command": [], "environment": [
        {"name": "A", "value": "1"}, {"name": "HPCBATCH_SCRIPT_ID", "value": "sha256:s"}]}}
    assert rest == {"targetNodes": "1:", "containerOverrides": {"environment": [{"name": "A", "value": "1"}]}}


def test_the_base_body_stands_where_nothing_is_given() -> None:
    base = {"jobName": "b", "jobQueue": "bq", "jobDefinition": "bd", "tags": {"k": "v"},
            "containerOverrides": {"environment": [{"name": "A", "value": "0"}, {"name": "B", "value": "b"}]}}
    body = submit_job_body(SubmitRequest(env={"A": "1"}, max_running=2, allow_unsatisfiable=True, share="s",
                                         priority=5, depends_on=["j-1:N_TO_N", "SEQUENTIAL"]), base)
    assert body == {
        "jobName": "b", "jobQueue": "bq", "jobDefinition": "bd",
        "tags": {"k": "v", "hpcbatch:maxRunning": "2", "hpcbatch:allowUnsatisfiable": "true"},
        "containerOverrides": {"environment": [{"name": "B", "value": "b"}, {"name": "A", "value": "1"}]},
        "dependsOn": [{"jobId": "j-1", "type": "N_TO_N"}, {"type": "SEQUENTIAL"}],
        "shareIdentifier": "s", "schedulingPriorityOverride": 5,
    }
    assert merge_body({"a": {"b": 1}}, {"a": {"c": 2}, "d": None}) == {"a": {"b": 1, "c": 2}}


def test_the_submit_directory_is_where_the_job_starts_unless_chdir_says() -> None:
    here = os.getcwd()
    body = submit_job_body(SubmitRequest(command=["pwd"], submit_dir=here, chdir="/tmp"))
    assert body["containerOverrides"]["environment"] == [
        {"name": "HPCBATCH_SUBMIT_DIR", "value": here}, {"name": "HPCBATCH_CHDIR", "value": "/tmp"}]
