"""The ``hpcbatch`` CLI against a stub head: the bodies it sends, its output, its exit codes."""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from hpcbatch.cli.main import cli, main
from hpcbatch.client import CLIENT_TOKEN_TAG
from hpcbatch.localcluster import LocalCluster, LocalClusterError
from hpcbatch.localrecord import ClusterShape
from tests.unit.test_client import StubHead

JOB = {
    "jobId": "j-1",
    "jobName": "train",
    "jobQueue": "default",
    "status": "RUNNING",
    "statusReason": "started on node3",
    "createdAt": 1_700_000_000_000,
    "owner": "alice",
    "nodeName": "node3",
    "container": {"command": ["python", "train.py"]},
}


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubHead]:
    head = StubHead()
    head.answers["/v1/submitjob"] = {"jobId": "j-1", "jobName": "x", "jobArn": "arn:j-1"}
    head.answers["/hpcbatch/v1/putscript"] = {"scriptId": "sha256:abc"}
    monkeypatch.setenv("HPCBATCH_ENDPOINT", head.endpoint)
    try:
        yield head
    finally:
        head.stop()


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def sent(stub: StubHead, op: str) -> dict[str, Any]:
    bodies = stub.bodies(op)
    assert len(bodies) == 1, stub.requests
    body = dict(bodies[0])
    if op == "/v1/submitjob":  # every submit carries a fresh idempotency token (hpcbatch.client)
        tags = dict(body.pop("tags"))
        assert len(tags.pop(CLIENT_TOKEN_TAG)) == 32
        if tags:
            body["tags"] = tags
        _drop_submit_dir(body)
    return body


def _drop_submit_dir(body: dict[str, Any]) -> None:
    """Every quick submit says where it was made (HPCBATCH_SUBMIT_DIR): check it, then drop it."""
    holders = [body] + [r for r in (body.get("nodeOverrides") or {}).get("nodePropertyOverrides", [])]
    for holder in holders:
        overrides = holder.get("containerOverrides")
        if not overrides or "environment" not in overrides:
            continue
        env = [e for e in overrides["environment"] if e["name"] != "HPCBATCH_SUBMIT_DIR"]
        assert len(env) < len(overrides["environment"]), overrides
        assert {"name": "HPCBATCH_SUBMIT_DIR", "value": os.getcwd()} in overrides["environment"]
        if env:
            overrides["environment"] = env
        else:
            del overrides["environment"]
            if not overrides:
                del holder["containerOverrides"]


# -- submit ---------------------------------------------------------------------------------


def test_quick_submit_puts_command_and_resources_in_container_overrides(stub: StubHead) -> None:
    result = run(
        "submit", "-q", "gpu", "--vcpus", "2", "--memory", "4096", "--gpus", "1",
        "--timeout", "60", "--retries", "3", "-e", "A=1", "--depends-on", "j-0",
        "--", "/usr/bin/python3.11", "train.py", "--lr", "3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == "j-1\n"
    assert sent(stub, "/v1/submitjob") == {
        "jobName": "python3_11",
        "jobQueue": "gpu",
        "jobDefinition": "hpcbatch-default",
        "containerOverrides": {
            "command": ["/usr/bin/python3.11", "train.py", "--lr", "3"],
            "resourceRequirements": [
                {"type": "VCPU", "value": "2"},
                {"type": "MEMORY", "value": "4096"},
                {"type": "GPU", "value": "1"},
            ],
            "environment": [{"name": "A", "value": "1"}],
        },
        "timeout": {"attemptDurationSeconds": 60},
        "retryStrategy": {"attempts": 3},
        "dependsOn": [{"jobId": "j-0"}],
    }


def test_submit_defaults_to_queue_default_and_passes_options_after_the_command(
    stub: StubHead,
) -> None:
    assert run("submit", "echo", "--vcpus", "hi").exit_code == 0
    assert sent(stub, "/v1/submitjob") == {
        "jobName": "echo",
        "jobQueue": "default",
        "jobDefinition": "hpcbatch-default",
        "containerOverrides": {"command": ["echo", "--vcpus", "hi"]},
    }


def test_submit_script_uploads_it_and_runs_it_with_the_remaining_args(
    stub: StubHead, tmp_path: Path
) -> None:
    script = tmp_path / "prep-data.sh"
    script.write_text("#!/bin/sh\necho $1\n")
    assert run("submit", "--script", str(script), "--", "in.dat").exit_code == 0
    assert sent(stub, "/hpcbatch/v1/putscript") == {"script": "#!/bin/sh\necho $1\n"}
    body = sent(stub, "/v1/submitjob")
    assert body["jobName"] == "prep-data"
    assert body["containerOverrides"] == {
        "command": ["in.dat"],
        "environment": [{"name": "HPCBATCH_SCRIPT_ID", "value": "sha256:abc"}],
    }


def test_submit_cli_input_json_file_is_merged_under_explicit_options(
    stub: StubHead, tmp_path: Path
) -> None:
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({
        "jobName": "from-file",
        "jobQueue": "q-file",
        "jobDefinition": "jd:3",
        "containerOverrides": {
            "command": ["old"],
            "environment": [{"name": "A", "value": "file"}, {"name": "B", "value": "file"}],
        },
        "parameters": {"p": "1"},
    }))  # fmt: skip
    result = run("submit", "--cli-input-json", f"file://{spec}", "-e", "A=cli", "-q", "q-cli")
    assert result.exit_code == 0, result.output
    assert sent(stub, "/v1/submitjob") == {
        "jobName": "from-file",
        "jobQueue": "q-cli",
        "jobDefinition": "jd:3",
        "containerOverrides": {
            "command": ["old"],
            "environment": [{"name": "B", "value": "file"}, {"name": "A", "value": "cli"}],
        },
        "parameters": {"p": "1"},
    }


def test_submit_with_a_job_definition_needs_no_command(stub: StubHead) -> None:
    assert run("submit", "-d", "nightly:2").exit_code == 0
    assert sent(stub, "/v1/submitjob") == {
        "jobName": "nightly",
        "jobQueue": "default",
        "jobDefinition": "nightly:2",
    }


def test_submit_output_json_prints_the_submit_job_answer(stub: StubHead) -> None:
    for args in (
        ["--output", "json", "submit", "--", "true"],
        ["submit", "-o", "json", "--", "true"],
    ):
        result = run(*args)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {"jobId": "j-1", "jobName": "x", "jobArn": "arn:j-1"}


def test_submit_with_nothing_to_run_is_a_usage_error(stub: StubHead) -> None:
    result = run("submit")
    assert result.exit_code == 2
    assert "nothing to run" in result.stderr
    assert stub.requests == []


def test_a_client_exception_exits_3_with_one_line_on_stderr(stub: StubHead) -> None:
    stub.answers["/v1/submitjob"] = (
        400,
        {"__type": "ClientException", "message": "jobQueue: no job queue named nope"},
    )
    result = run("submit", "-q", "nope", "--", "true")
    assert result.exit_code == 3
    assert result.stderr == "error: jobQueue: no job queue named nope\n"
    assert result.stdout == ""


def test_a_server_exception_exits_3_too(stub: StubHead) -> None:
    stub.answers["/v1/listjobs"] = (
        500,
        {"__type": "ServerException", "message": "database is locked"},
    )
    result = run("list")
    assert (result.exit_code, result.stderr) == (3, "error: database is locked\n")


def test_no_head_listening_exits_4(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPCBATCH_ENDPOINT", "http://127.0.0.1:1")
    result = run("submit", "--", "true")
    assert result.exit_code == 4
    assert result.stderr.startswith("error: cannot reach the hpcbatch head at http://127.0.0.1:1: ")
    assert result.stderr.count("\n") == 1


def test_no_head_configured_exits_4_and_says_how_to_start_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HPCBATCH_ENDPOINT", raising=False)
    monkeypatch.setenv("HPCBATCH_HOME", str(tmp_path))
    result = run("list")
    assert result.exit_code == 4
    assert "start one with 'hpcbatch cluster up' or set HPCBATCH_ENDPOINT" in result.stderr


def test_endpoint_option_overrides_the_environment(
    stub: StubHead, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPCBATCH_ENDPOINT", "http://127.0.0.1:1")
    assert run("--endpoint", stub.endpoint, "submit", "--", "true").exit_code == 0


def test_main_returns_the_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPCBATCH_ENDPOINT", "http://127.0.0.1:1")
    assert main(["list"]) == 4
    assert main(["--version"]) == 0
    assert main(["no-such-command"]) == 2


# -- jobs -----------------------------------------------------------------------------------


def test_list_asks_for_every_status_by_default(stub: StubHead) -> None:
    stub.answers["/v1/listjobs"] = {"jobSummaryList": [JOB]}
    result = run("list")
    assert result.exit_code == 0, result.output
    # Every status: AWS lists RUNNING jobs only unless a filter is given.
    assert sent(stub, "/v1/listjobs") == {
        "filters": [{"name": "AFTER_CREATED_AT", "values": ["0"]}],
        "maxResults": 100,
    }
    header, row = result.stdout.splitlines()
    assert header.split() == [
        "JOB",
        "ID",
        "NAME",
        "QUEUE",
        "STATUS",
        "OWNER",
        "NODE",
        "CREATED",
        "REASON",
    ]
    assert row.split()[:6] == ["j-1", "train", "default", "RUNNING", "alice", "node3"]


def test_list_filters(stub: StubHead) -> None:
    stub.answers["/v1/listjobs"] = {
        "jobSummaryList": [JOB, {**JOB, "jobId": "j-2", "status": "FAILED"}]
    }
    result = run("-o", "json", "list", "-q", "q1", "--status", "running", "--user", "bob",
                 "--filter", "job_name=train*")  # fmt: skip
    assert sent(stub, "/v1/listjobs") == {
        "jobQueue": "q1",
        "jobStatus": "RUNNING",
        "filters": [
            {"name": "JOB_NAME", "values": ["train*"]},
            {"name": "OWNER", "values": ["bob"]},
        ],
        "maxResults": 100,
    }
    # AWS ignores jobStatus when filters are given; the CLI still honours --status.
    assert [j["jobId"] for j in json.loads(result.stdout)["jobSummaryList"]] == ["j-1"]


def test_list_max_and_all_follow_pages(stub: StubHead) -> None:
    pages = {
        None: {"jobSummaryList": [{**JOB, "jobId": f"a{i}"} for i in range(2)], "nextToken": "t"},
        "t": {"jobSummaryList": [{**JOB, "jobId": f"b{i}"} for i in range(2)]},
    }
    stub.answers["/v1/listjobs"] = lambda body: pages[body.get("nextToken")]
    ids = lambda r: [j["jobId"] for j in json.loads(r.stdout)["jobSummaryList"]]  # noqa: E731
    assert ids(run("-o", "json", "list", "--max", "3")) == ["a0", "a1", "b0"]
    assert ids(run("-o", "json", "list", "--all")) == ["a0", "a1", "b0", "b1"]
    every = {"filters": [{"name": "AFTER_CREATED_AT", "values": ["0"]}]}
    assert stub.requests[-2:] == [("/v1/listjobs", every), ("/v1/listjobs", {**every, "nextToken": "t"})]


def test_describe_shows_details_and_attempts(stub: StubHead) -> None:
    job = {**JOB, "status": "FAILED", "attempts": [
        {"container": {"exitCode": 137, "reason": "OutOfMemoryError"}, "startedAt": 1, "stoppedAt": 2},
    ]}  # fmt: skip
    stub.answers["/v1/describejobs"] = {"jobs": [job]}
    result = run("describe", "j-1")
    assert result.exit_code == 0, result.output
    assert sent(stub, "/v1/describejobs") == {"jobs": ["j-1"]}
    assert "python train.py" in result.stdout
    assert "OutOfMemoryError" in result.stdout and "137" in result.stdout
    assert json.loads(run("-o", "json", "describe", "j-1").stdout) == {"jobs": [job]}


def test_describe_an_unknown_job_exits_3(stub: StubHead) -> None:
    stub.answers["/v1/describejobs"] = {"jobs": []}
    result = run("describe", "nope")
    assert result.exit_code == 3
    assert "no job with id nope" in result.stderr


def test_cancel_and_terminate_send_a_reason(stub: StubHead) -> None:
    assert run("cancel", "j-1", "j-2", "--reason", "wrong input").exit_code == 0
    assert sorted(b["jobId"] for b in stub.bodies("/v1/canceljob")) == ["j-1", "j-2"]
    assert {b["reason"] for b in stub.bodies("/v1/canceljob")} == {"wrong input"}
    result = run("terminate", "j-3")
    assert result.exit_code == 0
    assert result.stdout == "j-3 terminated\n"
    assert sent(stub, "/v1/terminatejob")["reason"].startswith("terminated by ")


def test_logs_follow_reads_until_the_attempt_is_complete(stub: StubHead) -> None:
    pages = iter([("hello ", 6, False), ("", 6, False), ("world\n", 12, False), ("", 12, True)])

    def answer(body: dict[str, Any]) -> dict[str, Any]:
        data, offset, complete = next(pages)
        return {
            "jobId": "j-1",
            "attempt": 1,
            "data": data,
            "nextOffset": offset,
            "complete": complete,
        }

    stub.answers["/hpcbatch/v1/getjoblogs"] = answer
    result = run("logs", "j-1", "--attempt", "2", "--follow", "--poll", "0.05")
    assert result.exit_code == 0, result.output
    assert result.stdout == "hello world\n"
    offsets = [b["startFromOffset"] for b in stub.bodies("/hpcbatch/v1/getjoblogs")]
    assert offsets == [0, 6, 6, 12]
    # --attempt counts from 1, as AWS_BATCH_JOB_ATTEMPT does; the API from 0.
    assert {b["attempt"] for b in stub.bodies("/hpcbatch/v1/getjoblogs")} == {1}


def test_logs_without_follow_stops_when_nothing_more_is_there(stub: StubHead) -> None:
    stub.answers["/hpcbatch/v1/getjoblogs"] = lambda b: (
        {"data": "", "nextOffset": 3, "complete": False, "attempt": 0}
        if b["startFromOffset"]
        else {"data": "hi\n", "nextOffset": 3, "complete": False, "attempt": 0}
    )
    result = run("logs", "j-1")
    assert result.stdout == "hi\n"
    assert stub.bodies("/hpcbatch/v1/getjoblogs")[1] == {
        "jobId": "j-1",
        "attempt": 0,
        "startFromOffset": 3,
    }


@pytest.mark.parametrize(("final", "code"), [("SUCCEEDED", 0), ("FAILED", 1)])
def test_wait_exits_0_if_all_succeeded_and_1_if_any_failed(
    stub: StubHead, final: str, code: int
) -> None:
    states = iter(["RUNNING", final])
    stub.answers["/v1/describejobs"] = lambda body: {
        "jobs": [
            {**JOB, "jobId": "j-1", "status": next(states)},
            {**JOB, "jobId": "j-2", "status": "SUCCEEDED"},
        ]
    }
    result = run("wait", "j-1", "j-2", "--poll", "0.05")
    assert result.exit_code == code, result.output
    assert final in result.stdout
    assert stub.bodies("/v1/describejobs")[0] == {"jobs": ["j-1", "j-2"]}


def test_wait_timeout_exits_1(stub: StubHead) -> None:
    stub.answers["/v1/describejobs"] = {"jobs": [JOB]}
    result = run("wait", "j-1", "--timeout", "0.2", "--poll", "0.05")
    assert result.exit_code == 1
    assert "still unfinished" in result.stderr


# -- nodes, compute environments, queues, job definitions -------------------------------------


def test_nodes_list(stub: StubHead) -> None:
    node = {"name": "node1", "state": "ACTIVE", "computeEnvironment": "default", "vcpus": 2,
            "memoryMiB": 4096, "allocatedVcpus": 1, "allocatedMemoryMiB": 512, "gpus": [],
            "runningJobs": ["j-1"], "lastHeartbeatAt": 1, "placementGroup": "rack1",
            "fabricKind": "tcp", "fabricInterface": "fab0", "fabricAddress": "10.78.0.11"}  # fmt: skip
    stub.answers["/hpcbatch/v1/listnodes"] = {"nodes": [node]}
    result = run("nodes", "list")
    assert result.exit_code == 0, result.output
    assert sent(stub, "/hpcbatch/v1/listnodes") == {"maxResults": 1000}  # paged (issue 22)
    assert result.stdout.splitlines()[1].split()[:11] == [
        "node1",
        "ACTIVE",
        "default",
        "rack1",
        "1/2",
        "0.5G/4.0G",
        "-",  # no GPUs
        "tcp:fab0",
        "10.78.0.11",
        "-",  # IMAGES: no container runtime
        "j-1",
    ]
    assert json.loads(run("-o", "json", "nodes").stdout) == {"nodes": [node]}
    stub.answers["/hpcbatch/v1/listnodes"] = {"nodes": [{**node, "containerRuntime": "/usr/bin/podman",
                                                         "images": ["reg:5000/app:1"]}]}
    assert "reg:5000/app:1" in run("nodes", "list").stdout


def test_nodes_prepull_sends_the_image_and_the_hostlist(stub: StubHead) -> None:
    stub.answers["/hpcbatch/v1/prepullimage"] = {"image": "reg:5000/app:1", "nodes": ["node1", "node2"]}
    result = run("nodes", "prepull", "reg:5000/app:1", "--nodes", "node[1-2]")
    assert result.exit_code == 0, result.output
    assert sent(stub, "/hpcbatch/v1/prepullimage") == {"image": "reg:5000/app:1", "nodes": ["node1", "node2"]}
    assert "pulling reg:5000/app:1 on node[1-2]" in result.stdout


def test_nodes_list_shows_gpus_free_used_unhealthy(stub: StubHead) -> None:
    node = {"name": "gpu1", "state": "ACTIVE", "computeEnvironment": "default", "vcpus": 8,
            "memoryMiB": 4096, "gpus": ["GPU-a", "GPU-b", "GPU-c", "GPU-d"], "allocatedGpus": 2,
            "freeGpus": 1, "unhealthyGpus": {"GPU-d": "fatal XID 79"}, "lastHeartbeatAt": 1}  # fmt: skip
    stub.answers["/hpcbatch/v1/listnodes"] = {"nodes": [node]}
    result = run("nodes", "list")
    assert result.exit_code == 0, result.output
    assert "GPUS F/U/BAD" in result.stdout.splitlines()[0]
    assert result.stdout.splitlines()[1].split()[6] == "1/2/1"


def test_ce_commands_send_aws_bodies(stub: StubHead) -> None:
    assert run("ce", "create", "cpu", "--state", "enabled", "--tag", "team=ml").exit_code == 0
    assert sent(stub, "/v1/createcomputeenvironment") == {
        "computeEnvironmentName": "cpu", "type": "UNMANAGED", "state": "ENABLED", "tags": {"team": "ml"},
    }  # fmt: skip
    assert run("ce", "update", "cpu", "--state", "DISABLED").exit_code == 0
    assert sent(stub, "/v1/updatecomputeenvironment") == {
        "computeEnvironment": "cpu",
        "state": "DISABLED",
    }
    assert run("ce", "delete", "cpu").exit_code == 0
    assert sent(stub, "/v1/deletecomputeenvironment") == {"computeEnvironment": "cpu"}
    stub.answers["/v1/describecomputeenvironments"] = {"computeEnvironments": [
        {"computeEnvironmentName": "cpu", "type": "UNMANAGED", "state": "ENABLED", "status": "VALID"}]}  # fmt: skip
    result = run("ce", "describe")
    assert result.stdout.splitlines()[1].split() == [
        "cpu",
        "UNMANAGED",
        "ENABLED",
        "VALID",
        "-",
        "-",
    ]
    assert sent(stub, "/v1/describecomputeenvironments") == {}


def test_ce_create_from_cli_input_json_only(stub: StubHead) -> None:
    body = {"computeEnvironmentName": "x", "type": "MANAGED", "computeResources": {"maxvCpus": 4}}
    assert run("ce", "create", "--cli-input-json", json.dumps(body)).exit_code == 0
    assert sent(stub, "/v1/createcomputeenvironment") == body


def test_ce_create_without_a_name_is_a_usage_error(stub: StubHead) -> None:
    result = run("ce", "create")
    assert result.exit_code == 2
    assert "computeEnvironmentName is required" in result.stderr


def test_queue_commands_send_aws_bodies(stub: StubHead) -> None:
    assert (
        run(
            "queue", "create", "gpu", "--ce", "gpu-a", "--ce", "gpu-b", "--priority", "10"
        ).exit_code
        == 0
    )
    assert sent(stub, "/v1/createjobqueue") == {
        "jobQueueName": "gpu",
        "priority": 10,
        "computeEnvironmentOrder": [
            {"order": 1, "computeEnvironment": "gpu-a"},
            {"order": 2, "computeEnvironment": "gpu-b"},
        ],
    }
    assert run("queue", "update", "gpu", "--state", "disabled").exit_code == 0
    assert sent(stub, "/v1/updatejobqueue") == {"jobQueue": "gpu", "state": "DISABLED"}
    assert run("queue", "delete", "gpu").exit_code == 0
    assert sent(stub, "/v1/deletejobqueue") == {"jobQueue": "gpu"}
    stub.answers["/v1/describejobqueues"] = {"jobQueues": [{"jobQueueName": "gpu", "priority": 10, "state": "ENABLED",
        "status": "VALID", "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": "gpu-a"}]}]}  # fmt: skip
    result = run("queue", "describe", "gpu")
    assert sent(stub, "/v1/describejobqueues") == {"jobQueues": ["gpu"]}
    assert result.stdout.splitlines()[1].split()[:5] == ["gpu", "10", "ENABLED", "VALID", "gpu-a"]


def test_jobdef_commands_send_aws_bodies(stub: StubHead) -> None:
    stub.answers["/v1/registerjobdefinition"] = {
        "jobDefinitionName": "train",
        "revision": 4,
        "jobDefinitionArn": "a",
    }
    result = run("jobdef", "register", "train", "--vcpus", "0.5", "-e", "X=1", "--retries", "2",
                 "--", "python", "-u", "train.py")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == "train:4\n"
    assert sent(stub, "/v1/registerjobdefinition") == {
        "jobDefinitionName": "train",
        "type": "container",
        "containerProperties": {
            "command": ["python", "-u", "train.py"],
            "resourceRequirements": [{"type": "VCPU", "value": "0.5"}],
            "environment": [{"name": "X", "value": "1"}],
        },
        "retryStrategy": {"attempts": 2},
    }
    stub.answers["/v1/describejobdefinitions"] = {"jobDefinitions": [{"jobDefinitionName": "train", "revision": 4,
        "type": "container", "status": "ACTIVE", "containerProperties": {"command": ["python"]}}]}  # fmt: skip
    result = run("jobdef", "describe", "--name", "train", "--status", "active")
    assert sent(stub, "/v1/describejobdefinitions") == {
        "jobDefinitionName": "train",
        "status": "ACTIVE",
    }
    assert result.stdout.splitlines()[1].split()[0] == "train:4"
    assert run("jobdef", "deregister", "train:4").exit_code == 0
    assert sent(stub, "/v1/deregisterjobdefinition") == {"jobDefinition": "train:4"}


def test_help_lists_every_command() -> None:
    result = run("--help")
    for name in ("submit", "describe", "list", "cancel", "terminate", "logs", "wait", "ce", "queue",
                 "jobdef", "nodes", "cluster", "head"):  # fmt: skip
        assert f"  {name} " in result.stdout


def test_version() -> None:
    assert run("--version").stdout.strip().endswith("0.1.0")


# -- local cluster (with stand-in head and agent processes) ----------------------------------

FAKE_HEAD = textwrap.dedent('''
    """A stand-in head: answers listnodes with every node<i>.toml here, records requests."""
    import glob, json, sys, tomllib
    from http.server import BaseHTTPRequestHandler, HTTPServer

    config = tomllib.load(open(sys.argv[sys.argv.index("--config") + 1], "rb"))
    host, port = config["http_listen"].rsplit(":", 1)
    nodes = [{"name": p[:-5], "state": "ACTIVE"} for p in sorted(glob.glob("node*.toml"))]
    made = set()

    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with open("requests.log", "a") as f:
                f.write(json.dumps([self.path, body]) + "\\n")
            if self.path == "/hpcbatch/v1/listnodes":
                doc = {"nodes": nodes}
            elif self.path == "/v1/describecomputeenvironments":
                doc = {"computeEnvironments": [{"computeEnvironmentName": "default"}] if "ce" in made else []}
            elif self.path == "/v1/describejobqueues":
                doc = {"jobQueues": []}
            else:
                made.add("ce")
                doc = {}
            data = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    # The same answers on the head's Unix socket, where the CLI and `cluster up` talk.
    import os, socketserver, threading
    os.makedirs(os.path.dirname(config["api_socket"]), exist_ok=True)
    unix = socketserver.UnixStreamServer(config["api_socket"], H)
    threading.Thread(target=unix.serve_forever, daemon=True).start()
    HTTPServer((host, int(port)), H).serve_forever()
''')


@pytest.fixture
def fake_daemons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalCluster:
    """A LocalCluster whose head and agents are stand-ins (the real ones are tested elsewhere)."""
    cluster_dir = tmp_path / "cluster"
    cluster_dir.mkdir()
    (cluster_dir / "fakehead.py").write_text(FAKE_HEAD)
    (cluster_dir / "fakeagent.py").write_text("import time\ntime.sleep(600)\n")
    monkeypatch.setattr(LocalCluster, "HEAD_MODULE", "fakehead")
    monkeypatch.setattr(LocalCluster, "AGENT_MODULE", "fakeagent")
    monkeypatch.setenv("HPCBATCH_HOME", str(tmp_path))
    return LocalCluster(str(tmp_path))


def test_cluster_up_status_down(
    fake_daemons: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = fake_daemons
    try:
        result = run("cluster", "up", "--nodes", "3")
        assert result.exit_code == 0, result.output
        assert "node[1-3]" in result.stdout
        record = json.loads(Path(cluster.record_path).read_text())
        assert set(record["processes"]) == {"head", "node1", "node2", "node3"}
        assert record["nodes"] == 3 and record["http_endpoint"].startswith("https://127.0.0.1:")
        assert record["ca_bundle"] == f"{cluster.dir}/tls/ca.pem"
        assert record["endpoint"] == record["socket_endpoint"] == f"unix:{cluster.dir}/head/api.sock"
        head_toml = (Path(cluster.dir) / "head.toml").read_text()
        assert f'state_dir = "{cluster.dir}/head"' in head_toml
        assert 'compute_environment = "default"' in (Path(cluster.dir) / "node2.toml").read_text()
        log = [
            json.loads(line)
            for line in (Path(cluster.dir) / "requests.log").read_text().splitlines()
        ]
        paths = [p for p, _ in log]
        assert "/v1/createcomputeenvironment" in paths and "/v1/createjobqueue" in paths
        assert dict(log)["/v1/createjobqueue"]["computeEnvironmentOrder"] == [
            {"order": 1, "computeEnvironment": "default"}
        ]
        # The client finds the cluster through $HPCBATCH_HOME.
        monkeypatch.delenv("HPCBATCH_ENDPOINT", raising=False)
        assert run("nodes", "list").exit_code == 0

        again = run("cluster", "up")  # a running cluster is kept, not refused
        assert again.exit_code == 0 and "nothing was down" in again.stdout, again.output
        other = run("cluster", "up", "--nodes", "2")  # but not reshaped under its feet
        assert other.exit_code == 1 and "--nodes 2 (it has 3)" in other.stderr
        assert "hpcbatch cluster down" in other.stderr

        status = run("cluster", "status")
        assert status.exit_code == 0, status.output
        assert "head,node[1-3]" in status.stdout and "node[1-3] ACTIVE" in status.stdout
    finally:
        down = run("cluster", "down")
    assert down.exit_code == 0
    assert down.stdout == "stopped head,node[1-3]\n"
    assert not os.path.exists(cluster.record_path)
    assert all(not _pid_alive(p["pid"]) for p in record["processes"].values())
    assert run("cluster", "down").stdout == "no local cluster was running\n"
    assert run("cluster", "status").exit_code == 1


def test_cluster_up_that_fails_stops_what_it_started_and_shows_the_log(
    fake_daemons: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(LocalCluster, "HEAD_MODULE", "no_such_head_module")
    with pytest.raises(
        LocalClusterError, match=r"(?s)head exited.*No module named no_such_head_module.*logs: "
    ):
        fake_daemons.up(ClusterShape(nodes=2), timeout=10)
    assert fake_daemons.record() is None
    assert fake_daemons.status().recorded is False


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


POLICY_ARN = "arn:aws:batch:local:000000000000:scheduling-policy/research"


def test_policy_commands_send_aws_bodies(stub: StubHead) -> None:
    stub.answers["/v1/createschedulingpolicy"] = {"name": "research", "arn": POLICY_ARN}
    result = run("policy", "create", "research", "--share", "teamA=0.5", "--share", "lab*", "--decay", "3600",
                 "--compute-reservation", "50")
    assert result.exit_code == 0 and result.output.strip() == POLICY_ARN
    assert sent(stub, "/v1/createschedulingpolicy") == {"name": "research", "fairsharePolicy": {
        "shareDistribution": [{"shareIdentifier": "teamA", "weightFactor": 0.5}, {"shareIdentifier": "lab*"}],
        "shareDecaySeconds": 3600, "computeReservation": 50}}
    stub.answers["/v1/listschedulingpolicies"] = {"schedulingPolicies": [{"arn": POLICY_ARN}]}
    stub.answers["/v1/updateschedulingpolicy"] = {}
    assert run("policy", "update", "research", "--share", "teamA=1").exit_code == 0
    assert sent(stub, "/v1/updateschedulingpolicy") == {
        "arn": POLICY_ARN, "fairsharePolicy": {"shareDistribution": [{"shareIdentifier": "teamA", "weightFactor": 1.0}]}}
    stub.answers["/v1/describeschedulingpolicies"] = {"schedulingPolicies": [{"name": "research", "arn": POLICY_ARN,
        "fairsharePolicy": {"shareDistribution": [{"shareIdentifier": "teamA", "weightFactor": 1.0}]}}]}  # fmt: skip
    result = run("policy", "describe", "research")
    assert "share teamA weight 1" in result.output
    stub.answers["/v1/deleteschedulingpolicy"] = {}
    assert run("policy", "delete", "research").exit_code == 0
    assert sent(stub, "/v1/deleteschedulingpolicy") == {"arn": POLICY_ARN}
    assert run("policy", "create", "bad", "--share", "a=x").exit_code == 2


def test_queue_cancel_after_sends_job_state_time_limit_actions(stub: StubHead) -> None:
    stub.answers["/v1/updatejobqueue"] = {"jobQueueName": "gpu", "jobQueueArn": "arn:q"}
    assert run("queue", "update", "gpu", "--cancel-after", "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY=14400").exit_code == 0
    assert sent(stub, "/v1/updatejobqueue") == {"jobQueue": "gpu", "jobStateTimeLimitActions": [
        {"reason": "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY", "state": "RUNNABLE", "maxTimeSeconds": 14400,
         "action": "CANCEL"}]}
    assert run("queue", "update", "gpu", "--cancel-after", "nonsense").exit_code == 2


def test_submit_sends_share_identifier_and_priority_override(stub: StubHead) -> None:
    assert run("submit", "--share", "teamA", "--priority", "7", "--", "true").exit_code == 0
    body = sent(stub, "/v1/submitjob")
    assert body["shareIdentifier"] == "teamA" and body["schedulingPriorityOverride"] == 7


def test_node_key_commands_keep_their_short_names() -> None:
    # They are made from the client's operation names (accept_node_key -> accept): a wrong suffix
    # once named them accept_node_key, and `hpcbatch nodes keys accept NAME` stopped working.
    result = CliRunner().invoke(cli, ["nodes", "keys", "--help"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()}
    assert {"accept", "reject", "revoke", "delete", "list"} <= listed, result.output
