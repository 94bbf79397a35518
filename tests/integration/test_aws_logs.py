"""CloudWatch Logs on a real head, read by real clients: boto3's ``logs`` client and aws-cli v1
(from PyPI, the test extras), over HTTPS with the cluster's own CA, as two Unix users.

One cluster for the module (one node, ``private_data`` on); each test submits its own jobs.
docs/interop.md's recipes are run here exactly as written (extracted from the file).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import TestCluster, wait_for
from tests.users import ensure_users, need_root

ALICE, BOB = "hpcb_alice", "hpcb_bob"
GROUP = "/aws/batch/job"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "interop.md"


@pytest.fixture(scope="module")
def lc() -> Iterator[TestCluster]:
    """A TLS cluster whose folders the test users can reach (pytest's tmp is root-only)."""
    need_root()
    ensure_users()
    root = tempfile.mkdtemp(prefix="hpcb-awslogs-")
    os.chmod(root, 0o755)
    c = TestCluster(Path(root), nodes=1, tls=True, head_extra="private_data = true\n")
    try:
        yield c.up()
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)


def key_for(c: TestCluster, user: str, role: str = "user") -> dict[str, Any]:
    return c.client.call("/hpcbatch/v1/createaccesskey", {"user": user, "role": role})


def clients(c: TestCluster, key: dict[str, Any]) -> tuple[Any, Any]:
    import boto3

    session = boto3.Session(aws_access_key_id=key["accessKeyId"], aws_secret_access_key=key["secretAccessKey"],
                            region_name="local")
    endpoint = c.endpoint
    return (session.client("batch", endpoint_url=endpoint, verify=c.ca_bundle),
            session.client("logs", endpoint_url=endpoint, verify=c.ca_bundle))


@pytest.fixture(scope="module")
def alice(lc: TestCluster) -> tuple[Any, Any]:
    return clients(lc, key_for(lc, ALICE))


@pytest.fixture(scope="module")
def bob(lc: TestCluster) -> tuple[Any, Any]:
    return clients(lc, key_for(lc, BOB))


def run_job(c: TestCluster, batch: Any, script: str, **extra: Any) -> tuple[str, str]:
    """Submit ``sh -c script``, wait for SUCCEEDED; the job id and its log stream's name."""
    job = batch.submit_job(jobName="cwlogs", jobQueue="default", jobDefinition=extra.pop("jobDefinition", "hpcbatch-default"),
                           containerOverrides={"command": ["sh", "-c", script]}, **extra)
    detail = c.wait_status(job["jobId"], "SUCCEEDED", "FAILED")
    assert detail["status"] == "SUCCEEDED", detail
    return job["jobId"], detail["container"]["logStreamName"]


def error_code(call: Any, **kwargs: Any) -> str:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as info:
        call(**kwargs)
    return str(info.value.response["Error"]["Code"])


def test_get_log_events_pages_both_ways_and_answers_the_same_token_at_the_end(alice: tuple[Any, Any],
                                                                               lc: TestCluster) -> None:
    batch, logs = alice
    _, stream = run_job(lc, batch, "for i in $(seq 1 25); do echo line $i; done")
    want = [f"line {i}" for i in range(1, 26)]
    args = {"logGroupName": GROUP, "logStreamName": stream, "limit": 10}

    forward, token, pages = [], None, 0
    while True:
        page = logs.get_log_events(startFromHead=True, **args, **({"nextToken": token} if token else {}))
        forward += [e["message"] for e in page["events"]]
        pages += 1
        if page["nextForwardToken"] == token:
            assert page["events"] == []
            break
        token = page["nextForwardToken"]
        assert re.fullmatch(r"f/\d{56}", token)
    assert forward == want and pages == 4  # 10, 10, 5, then the same token
    again = logs.get_log_events(startFromHead=True, nextToken=token, **args)
    assert again["nextForwardToken"] == token and again["events"] == []

    latest = logs.get_log_events(**args)  # no token, startFromHead false: the newest page
    assert [e["message"] for e in latest["events"]] == want[15:]
    backward, token = [e["message"] for e in latest["events"]], latest["nextBackwardToken"]
    while True:
        page = logs.get_log_events(nextToken=token, **args)
        if page["nextBackwardToken"] == token:
            assert page["events"] == []
            break
        backward = [e["message"] for e in page["events"]] + backward
        token = page["nextBackwardToken"]
        assert re.fullmatch(r"b/\d{56}", token)
    assert backward == want
    for event in latest["events"]:
        assert event["ingestionTime"] >= event["timestamp"] > 0


def test_each_line_keeps_the_time_the_agent_read_it_and_time_bounds_select_by_it(
        alice: tuple[Any, Any], lc: TestCluster) -> None:
    batch, logs = alice
    before = int(time.time() * 1000)
    _, stream = run_job(lc, batch, "echo early; sleep 1.5; echo late")
    args = {"logGroupName": GROUP, "logStreamName": stream, "startFromHead": True}
    events = logs.get_log_events(**args)["events"]
    assert [e["message"] for e in events] == ["early", "late"]
    early, late = events[0]["timestamp"], events[1]["timestamp"]
    assert before <= early and late - early >= 1000, events
    assert [e["message"] for e in logs.get_log_events(startTime=late, **args)["events"]] == ["late"]
    assert [e["message"] for e in logs.get_log_events(endTime=late, **args)["events"]] == ["early"]
    found = logs.filter_log_events(logGroupName=GROUP, logStreamNames=[stream], startTime=early, endTime=early)
    assert [e["message"] for e in found["events"]] == ["early"]  # FilterLogEvents' endTime is inclusive


def test_filter_describe_and_a_job_definitions_own_group(alice: tuple[Any, Any], lc: TestCluster) -> None:
    batch, logs = alice
    run_job(lc, batch, "echo an older stream")
    _, stream = run_job(lc, batch, "echo 'ERROR disk full'; echo 'WARN slow'; echo 'INFO all good'; "
                                   "for i in $(seq 1 12); do echo tick $i; done")

    def messages(**kwargs: Any) -> list[str]:
        return [e["message"] for e in logs.filter_log_events(logGroupName=GROUP, logStreamNames=[stream],
                                                               **kwargs)["events"]]

    assert messages(filterPattern="ERROR") == ["ERROR disk full"]
    assert messages(filterPattern='"all good"') == ["INFO all good"]
    assert messages(filterPattern="?ERROR ?WARN") == ["ERROR disk full", "WARN slow"]
    paged = [e["message"] for page in logs.get_paginator("filter_log_events").paginate(
        logGroupName=GROUP, logStreamNamePrefix=stream, filterPattern="tick", PaginationConfig={"PageSize": 5})
        for e in page["events"]]
    assert paged == [f"tick {i}" for i in range(1, 13)]
    ids = [e["eventId"] for e in logs.filter_log_events(logGroupName=GROUP, logStreamNames=[stream])["events"]]
    assert len(set(ids)) == 15 and ids == [e["eventId"] for e in logs.filter_log_events(
        logGroupName=GROUP, logStreamNames=[stream])["events"]]  # stable: tail --follow dedupes on them

    listed = logs.describe_log_streams(logGroupName=GROUP, logStreamNamePrefix=stream)["logStreams"]
    assert [s["logStreamName"] for s in listed] == [stream]
    assert listed[0]["lastEventTimestamp"] >= listed[0]["firstEventTimestamp"] > 0
    assert listed[0]["arn"].endswith(f":log-group:{GROUP}:log-stream:{stream}")
    newest = logs.describe_log_streams(logGroupName=GROUP, orderBy="LastEventTime", descending=True, limit=1)
    assert newest["logStreams"][0]["logStreamName"] == stream and "nextToken" in newest
    every = [s["logStreamName"] for s in logs.describe_log_streams(logGroupName=GROUP)["logStreams"]]
    assert len(every) >= 2 and every == sorted(every)
    paged = [s["logStreamName"] for page in logs.get_paginator("describe_log_streams").paginate(
        logGroupName=GROUP, PaginationConfig={"PageSize": 2}) for s in page["logStreams"]]
    assert paged == every
    by_name = logs.describe_log_streams(logGroupName=GROUP, limit=1)["nextToken"]
    assert error_code(logs.describe_log_streams, logGroupName=GROUP, orderBy="LastEventTime",
                      nextToken=by_name) == "InvalidParameterException"  # a token of another order

    admin_batch, _ = clients(lc, key_for(lc, "root", "admin"))
    admin_batch.register_job_definition(
        jobDefinitionName="own-group", type="container",
        containerProperties={"command": ["true"], "resourceRequirements": [
            {"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "128"}],
            "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "/hpcbatch/test-team"}}})
    groups = [g["logGroupName"] for g in logs.describe_log_groups()["logGroups"]]
    assert {GROUP, "/hpcbatch/test-team"} <= set(groups)
    assert [g["logGroupName"] for g in logs.describe_log_groups(logGroupNamePrefix="/hpcbatch/")["logGroups"]] \
        == ["/hpcbatch/test-team"]
    _, own = run_job(lc, batch, "echo in my group", jobDefinition="own-group")
    assert own.startswith("own-group/default/")
    events = logs.get_log_events(logGroupName="/hpcbatch/test-team", logStreamName=own, startFromHead=True)
    assert [e["message"] for e in events["events"]] == ["in my group"]
    assert error_code(logs.get_log_events, logGroupName=GROUP, logStreamName=own) == "ResourceNotFoundException"
    assert error_code(logs.describe_log_streams, logGroupName="/no/such/group") == "ResourceNotFoundException"


def test_users_see_only_their_own_streams(alice: tuple[Any, Any], bob: tuple[Any, Any], lc: TestCluster) -> None:
    batch, logs = alice
    _, stream = run_job(lc, batch, "echo alice private line")
    _, bob_logs = bob
    assert error_code(bob_logs.get_log_events, logGroupName=GROUP, logStreamName=stream) \
        == "ResourceNotFoundException"  # private_data: as if it did not exist
    assert stream not in [s["logStreamName"] for s in bob_logs.describe_log_streams(logGroupName=GROUP)["logStreams"]]
    assert bob_logs.filter_log_events(logGroupName=GROUP, filterPattern='"alice private"')["events"] == []
    assert [e["message"] for e in logs.filter_log_events(logGroupName=GROUP, filterPattern='"alice private"')[
        "events"]] == ["alice private line"]


def test_mistakes_get_aws_errors(alice: tuple[Any, Any], lc: TestCluster) -> None:
    _, logs = alice
    assert error_code(logs.get_log_events, logGroupName=GROUP, logStreamName="hpcbatch-default/default/"
                      + "0" * 32) == "ResourceNotFoundException"
    assert error_code(logs.get_log_events, logGroupName=GROUP, logStreamName="x/default/" + "0" * 32,
                      nextToken="f/abc") in ("InvalidParameterException", "ResourceNotFoundException")
    assert error_code(logs.filter_log_events, logGroupName=GROUP, filterPattern='{ $.level = "x" }') \
        == "InvalidParameterException"
    assert error_code(logs.filter_log_events, logGroupName=GROUP, logStreamNames=["a"], logStreamNamePrefix="a") \
        == "InvalidParameterException"
    assert error_code(logs.put_log_events, logGroupName=GROUP, logStreamName="s",
                      logEvents=[{"timestamp": 1, "message": "m"}]) == "UnknownOperationException"
    import json
    import ssl
    import urllib.error
    import urllib.request

    for target in (None, "Logs_20140328.NoSuchThing", "AWSBatchV20160810.ListJobs"):
        request = urllib.request.Request(lc.endpoint + "/", data=b"{}", method="POST", headers={
            "Content-Type": "application/x-amz-json-1.1", **({"X-Amz-Target": target} if target else {})})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, context=ssl.create_default_context(cafile=lc.ca_bundle), timeout=10)
        assert info.value.code == 400
        assert json.loads(info.value.read())["__type"] == "UnknownOperationException"
    import boto3

    unsigned = boto3.client("logs", endpoint_url=lc.endpoint, verify=lc.ca_bundle, region_name="local",
                            aws_access_key_id="AKIAUNKNOWNKEY000000", aws_secret_access_key="x")
    assert error_code(unsigned.describe_log_groups) == "UnrecognizedClientException"


def test_the_follow_sequence_of_aws_cli_v2_logs_tail(alice: tuple[Any, Any], lc: TestCluster) -> None:
    """aws-cli v2's ``logs tail --follow`` (not in v1, so not runnable here): FilterLogEvents
    with ``interleaved`` and a ``startTime``, then again from the newest timestamp it saw,
    skipping the eventIds it printed. New lines of a running job come through, once each."""
    batch, logs = alice
    job = batch.submit_job(jobName="follow", jobQueue="default", jobDefinition="hpcbatch-default",
                           containerOverrides={"command": ["sh", "-c", "echo first; sleep 2; echo second; sleep 30"]})
    detail = lc.wait_status(job["jobId"], "RUNNING")
    stream = detail["container"]["logStreamName"]
    kwargs: dict[str, Any] = {"logGroupName": GROUP, "interleaved": True, "logStreamNames": [stream],
                              "startTime": int(time.time() * 1000) - 600_000}
    seen: dict[int, set[str]] = {}
    printed: list[str] = []

    def poll() -> list[str]:
        nonlocal seen
        response = logs.filter_log_events(**kwargs)
        for event in response["events"]:
            if event["eventId"] not in seen.setdefault(event["timestamp"], set()):
                seen[event["timestamp"]].add(event["eventId"])
                printed.append(event["message"])
        if seen:
            newest = max(seen)
            seen = {newest: seen[newest]}
            kwargs["startTime"] = newest
        return printed

    wait_for(lambda: "second" in poll(), 20, interval=0.5, what="the second line through the follow loop")
    poll()
    assert printed == ["first", "second"]
    batch.terminate_job(jobId=job["jobId"], reason="done following")


# -- aws-cli v1 ------------------------------------------------------------------------------
def recipes() -> list[str]:
    """The ```sh blocks of docs/interop.md's "CloudWatch Logs and the aws CLI" section."""
    text = DOCS.read_text()
    section = text.split("## CloudWatch Logs and the aws CLI", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def aws_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HPCBATCH_"))}
    bindir = str(Path(sys.executable).parent)  # this venv's aws and hpcbatch
    env.update(HOME=str(home), PATH=f"{bindir}:{env.get('PATH', '')}", AWS_PAGER="", **extra)
    return env


def test_docs_recipe_with_a_profile_runs_on_the_aws_cli(lc: TestCluster, tmp_path: Path) -> None:
    if shutil.which("aws", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("the aws CLI (awscli, aws-cli v1) is missing: install the test extras")
    script = recipes()[0]
    env = aws_env(tmp_path, HPCBATCH_ENDPOINT=lc.socket_endpoint, HPCBATCH_CA_BUNDLE=str(lc.ca_bundle))
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, env=env,
                         timeout=180, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "cloudwatch_logs =\n  endpoint_url = " in (tmp_path / ".aws" / "config").read_text()
    lines = out.stdout.split("\n")
    assert "hello from hpcbatch\tsecond line" in lines, out.stdout  # get-log-events, both lines
    assert "second line" in lines, out.stdout  # filter-log-events, the phrase only


def test_docs_recipe_with_environment_variables_runs_on_the_aws_cli(alice: tuple[Any, Any], lc: TestCluster,
                                                                      tmp_path: Path) -> None:
    key = key_for(lc, ALICE)
    batch, _ = alice
    _, stream = run_job(lc, batch, "echo for the environment recipe")
    env = aws_env(tmp_path, KEY_ID=key["accessKeyId"], SECRET=key["secretAccessKey"], HEAD_URL=lc.endpoint,
                  CA=str(lc.ca_bundle))
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", recipes()[1]], capture_output=True, text=True, env=env,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert GROUP in out.stdout.split("\n")[0].split("\t")
    assert stream in out.stdout.split("\n")[1].split("\t")  # her newest streams, the newest first


def test_aws_cli_get_log_events_pages_by_token(alice: tuple[Any, Any], lc: TestCluster, tmp_path: Path) -> None:
    key = key_for(lc, ALICE)
    batch, _ = alice
    _, stream = run_job(lc, batch, "for i in 1 2 3 4 5; do echo cli $i; done")
    env = aws_env(tmp_path, AWS_ACCESS_KEY_ID=key["accessKeyId"], AWS_SECRET_ACCESS_KEY=key["secretAccessKey"],
                  AWS_DEFAULT_REGION="local", AWS_ENDPOINT_URL_CLOUDWATCH_LOGS=lc.endpoint, AWS_CA_BUNDLE=str(lc.ca_bundle))
    script = (
        f'A=$(aws logs get-log-events --log-group-name {GROUP} --log-stream-name "$S" --start-from-head --limit 3 '
        "--query '[join(`,`, events[].message), nextForwardToken]' --output text)\n"
        'echo "$A"\nT=$(echo "$A" | cut -f2)\n'
        f'aws logs get-log-events --log-group-name {GROUP} --log-stream-name "$S" --start-from-head --limit 3 '
        "--next-token \"$T\" --query 'join(`,`, events[].message)' --output text\n"
    )
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                         env={**env, "S": stream}, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    first, second = out.stdout.strip().split("\n")
    assert first.split("\t")[0] == "cli 1,cli 2,cli 3" and second == "cli 4,cli 5"
