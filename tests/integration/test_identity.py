"""Identity and access with real Unix users: jobs run as their owner, roles, SigV4, audit.

Needs root (to create users and to let the agent switch to them); CI runs as root.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import TestCluster, wait_for
from tests.users import call_as, ensure_users, need_root

ALICE, BOB, DEV = "hpcb_alice", "hpcb_bob", "hpcb_dev"


# ListJobs answers RUNNING jobs only unless given a status or a filter (as AWS does).
EVERY_JOB = [{"name": "AFTER_CREATED_AT", "values": ["0"]}]


@pytest.fixture(scope="module")
def idc() -> Iterator[TestCluster]:
    """A cluster whose folders other users can reach (pytest's tmp is root-only)."""
    need_root()
    ensure_users()
    root = tempfile.mkdtemp(prefix="hpcb-identity-")
    os.chmod(root, 0o755)
    c = TestCluster(
        __import__("pathlib").Path(root), nodes=2,
        head_extra=f'private_data = false\n[roles]\n{DEV} = "developer"\n',
    )
    try:
        yield c.up()
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)


def submit_as(c: TestCluster, user: str, command: list[str], **extra: Any) -> dict[str, Any]:
    body = {
        "jobName": "id", "jobQueue": "default", "jobDefinition": "hpcbatch-default",
        "containerOverrides": {"command": command}, **extra,
    }
    return call_as(user, c.socket_endpoint, "/v1/submitjob", body)


def logs_of(c: TestCluster, job_id: str) -> str:
    return wait_for(lambda: c.logs(job_id), 10, what=f"output of {job_id}")


def test_jobs_run_as_their_owner_with_home_and_groups(idc: TestCluster) -> None:
    script = 'echo "uid=$(id -u) user=$USER home=$HOME groups=$(id -Gn) pwd=$(pwd) mode=$(stat -c %a .)"'
    alice = submit_as(idc, ALICE, ["sh", "-c", script])
    bob = submit_as(idc, BOB, ["sh", "-c", script])
    for who, job in ((ALICE, alice), (BOB, bob)):
        detail = idc.wait_status(job["jobId"], "SUCCEEDED")
        assert detail["owner"] == who
        out = logs_of(idc, job["jobId"])
        import pwd

        pw = pwd.getpwnam(who)
        assert f"uid={pw.pw_uid} user={who} home={pw.pw_dir}" in out
        assert "hpcb_grp" in out
        assert "mode=700" in out


def test_other_users_cannot_touch_a_job(idc: TestCluster) -> None:
    job = submit_as(idc, ALICE, ["sleep", "30"])
    job_id = job["jobId"]
    idc.wait_status(job_id, "RUNNING")
    for path, body in (
        ("/v1/canceljob", {"jobId": job_id, "reason": "mine now"}),
        ("/v1/terminatejob", {"jobId": job_id, "reason": "mine now"}),
        ("/hpcbatch/v1/getjoblogs", {"jobId": job_id}),
    ):
        out = call_as(BOB, idc.socket_endpoint, path, body)
        assert "error" in out, out
        assert f"user {BOB} may not" in out["error"] and f"owned by {ALICE}" in out["error"]
    assert idc.job(job_id)["status"] == "RUNNING"
    out = call_as(ALICE, idc.socket_endpoint, "/v1/terminatejob", {"jobId": job_id, "reason": "done"})
    assert out == {}
    idc.wait_status(job_id, "FAILED")


def test_a_user_cannot_run_another_users_script(idc: TestCluster) -> None:
    stored = call_as(ALICE, idc.socket_endpoint, "/hpcbatch/v1/putscript", {"script": "#!/bin/sh\necho secret-plan\n"})
    out = submit_as(idc, BOB, [], containerOverrides={"command": [], "environment": [{"name": "HPCBATCH_SCRIPT_ID", "value": stored["scriptId"]}]})
    assert "error" in out and "no stored script" in out["error"]
    mine = submit_as(idc, ALICE, [], containerOverrides={"command": [], "environment": [{"name": "HPCBATCH_SCRIPT_ID", "value": stored["scriptId"]}]})
    idc.wait_status(mine["jobId"], "SUCCEEDED")
    assert "secret-plan" in logs_of(idc, mine["jobId"])


def test_roles_decide_who_may_change_queues(idc: TestCluster) -> None:
    queue = {"jobQueueName": "q-roles", "priority": 5, "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": "default"}]}
    out = call_as(ALICE, idc.socket_endpoint, "/v1/createjobqueue", queue)
    assert "error" in out and "needs role developer" in out["error"]
    assert idc.client.describe_job_queues(jobQueues=["q-roles"])["jobQueues"] == []
    out = call_as(DEV, idc.socket_endpoint, "/v1/createjobqueue", queue)
    assert out.get("jobQueueName") == "q-roles", out
    # Draining nodes is an admin's: a developer is refused, root (admin on the socket) may.
    out = call_as(DEV, idc.socket_endpoint, "/hpcbatch/v1/drainnode", {"name": "node2"})
    assert "error" in out and "needs role admin" in out["error"]
    idc.client.call("/hpcbatch/v1/drainnode", {"name": "node2", "reason": "test"})
    assert idc.nodes()["node2"]["state"] in ("DRAINING", "DRAINED")
    idc.client.call("/hpcbatch/v1/resumenode", {"name": "node2"})
    me = call_as(DEV, idc.socket_endpoint, "/hpcbatch/v1/whoami", {})
    assert me["role"] == "developer"
    # Only admins see the audit log; root on the head's socket is admin.
    assert "error" in call_as(DEV, idc.socket_endpoint, "/hpcbatch/v1/listaudit", {})
    events = idc.client.call("/hpcbatch/v1/listaudit", {"maxResults": 50})["events"]
    ops = {(e["user"], e["operation"], e["outcome"].split(":")[0]) for e in events}
    assert (DEV, "CreateJobQueue", "ok") in ops
    assert (ALICE, "CreateJobQueue", "AccessDeniedException") in ops


def _boto3(c: TestCluster, key: str, secret: str) -> Any:
    import boto3

    return boto3.client("batch", endpoint_url=c.endpoint, region_name="local",
                        aws_access_key_id=key, aws_secret_access_key=secret)


def test_sigv4_keys_work_and_bad_requests_change_nothing(idc: TestCluster) -> None:
    import urllib.request

    import botocore.exceptions

    created = idc.client.call("/hpcbatch/v1/createaccesskey", {"user": ALICE, "role": "user"})
    assert "aws_secret_access_key" in created["credentialsProfile"]
    batch = _boto3(idc, created["accessKeyId"], created["secretAccessKey"])
    job = batch.submit_job(jobName="signed", jobQueue="default", jobDefinition="hpcbatch-default",
                           containerOverrides={"command": ["id", "-un"]})
    idc.wait_status(job["jobId"], "SUCCEEDED")
    assert idc.job(job["jobId"])["owner"] == ALICE
    before = len(idc.client.list_jobs(maxResults=1000, filters=EVERY_JOB)["jobSummaryList"])

    def refused(client: Any) -> str:
        with pytest.raises(botocore.exceptions.ClientError) as err:
            client.submit_job(jobName="nope", jobQueue="default", jobDefinition="hpcbatch-default",
                              containerOverrides={"command": ["true"]})
        return str(err.value.response["Error"]["Code"])

    assert refused(_boto3(idc, created["accessKeyId"], "wrong-secret")) == "InvalidSignatureException"
    assert refused(_boto3(idc, "AKIAUNKNOWNKEY000000", "x")) == "UnrecognizedClientException"
    # Unsigned, tampered body, and a replay 20 minutes old.
    body = json.dumps({"jobName": "x", "jobQueue": "default", "jobDefinition": "hpcbatch-default"}).encode()
    req = urllib.request.Request(f"{idc.endpoint}/v1/submitjob", data=body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(req)
    assert http.value.code == 403 and json.loads(http.value.read())["__type"] == "UnrecognizedClientException"
    from hpcbatch.auth.sigv4 import RequestSigner

    signer = RequestSigner(created["accessKeyId"], created["secretAccessKey"], "local")
    host = idc.endpoint.removeprefix("http://")

    def post(data: bytes, headers: list[tuple[str, str]]) -> int | str:
        req = urllib.request.Request(f"{idc.endpoint}/v1/submitjob", data=data, method="POST",
                                     headers={"Content-Type": "application/json", "Host": host, **dict(headers)})
        try:
            urllib.request.urlopen(req)
        except urllib.error.HTTPError as err:
            return str(json.loads(err.read())["__type"])
        return 200

    fresh = signer.headers("POST", host, "/v1/submitjob", {"Content-Type": "application/json", "Host": host}, body)
    assert post(body.replace(b'"x"', b'"y"'), fresh) == "InvalidSignatureException"
    old = signer.headers("POST", host, "/v1/submitjob", {"Content-Type": "application/json", "Host": host}, body,
                         now=time.time() - 1200)
    assert post(body, old) == "InvalidSignatureException"
    # A disabled key stops working at once.
    idc.client.call("/hpcbatch/v1/updateaccesskey", {"accessKeyId": created["accessKeyId"], "status": "Inactive"})
    assert refused(batch) in ("UnrecognizedClientException", "AccessDeniedException")
    assert len(idc.client.list_jobs(maxResults=1000, filters=EVERY_JOB)["jobSummaryList"]) == before


def test_private_data_hides_other_users_jobs(tmp_path_factory: pytest.TempPathFactory) -> None:
    need_root()
    ensure_users()
    root = tempfile.mkdtemp(prefix="hpcb-private-")
    os.chmod(root, 0o755)
    c = TestCluster(__import__("pathlib").Path(root), nodes=1, head_extra="private_data = true\n")
    try:
        c.up()
        mine = submit_as(c, ALICE, ["true"])["jobId"]
        c.wait_status(mine, "SUCCEEDED")
        seen = call_as(BOB, c.socket_endpoint, "/v1/describejobs", {"jobs": [mine]})
        assert seen == {"jobs": []}
        listed = call_as(BOB, c.socket_endpoint, "/v1/listjobs", {"jobQueue": "default", "jobStatus": "SUCCEEDED"})
        assert mine not in {j["jobId"] for j in listed["jobSummaryList"]}
        own = call_as(ALICE, c.socket_endpoint, "/v1/listjobs", {"jobQueue": "default", "jobStatus": "SUCCEEDED"})
        assert mine in {j["jobId"] for j in own["jobSummaryList"]}
        assert c.job(mine)["owner"] == ALICE  # root (admin) sees everything
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)
