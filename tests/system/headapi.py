"""Call the head's API on the test bed: a Python snippet run by the head host's own venv over SSH."""

from __future__ import annotations

import json
import shlex
import time
from typing import Any

from tests.system.testbed import Testbed

VENV = "/opt/hpcbatch/venv"
SOCKET = "unix:/run/hpcbatch/api.sock"

_CALL = """
import json, sys
from hpcbatch.client import Client
method, kwargs = json.loads(sys.argv[1])
with Client({socket!r}, timeout=30) as c:
    print(json.dumps(c.call(method, kwargs) if method.startswith("/") else getattr(c, method)(**kwargs)))
"""


def call(testbed: Testbed, head: str, method: str, **kwargs: Any) -> Any:
    """``Client.<method>(**kwargs)`` (or ``Client.call(path, kwargs)`` for ``/hpcbatch/v1/...``) on the head."""
    quoted = shlex.quote(json.dumps([method, kwargs]))
    script = _CALL.format(socket=SOCKET)
    proc = testbed.ssh(head, f"{VENV}/bin/python - {quoted} <<'PY'\n{script}\nPY")
    if proc.returncode != 0:
        raise AssertionError(f"{method} on {head} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def nodes(testbed: Testbed, head: str) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in call(testbed, head, "list_nodes")["nodes"]}


def job(testbed: Testbed, head: str, job_id: str) -> dict[str, Any]:
    return dict(call(testbed, head, "describe_jobs", jobs=[job_id])["jobs"][0])


def wait_status(testbed: Testbed, head: str, job_id: str, status: str, timeout: float) -> dict[str, Any]:
    """Until the job reaches ``status`` (or has ended: then the assertion says which)."""
    deadline = time.monotonic() + timeout
    while True:
        found = job(testbed, head, job_id)
        if found["status"] == status:
            return found
        if found["status"] in ("SUCCEEDED", "FAILED") or time.monotonic() >= deadline:
            raise AssertionError(f"{job_id} is {found['status']}, not {status}: {found.get('statusReason')}")
        time.sleep(0.5)


def wait_jobs(testbed: Testbed, head: str, job_ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Until every job has ended (SUCCEEDED or FAILED); returns them by id."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = {j["jobId"]: j for j in call(testbed, head, "describe_jobs", jobs=job_ids)["jobs"]}
        if all(j["status"] in ("SUCCEEDED", "FAILED") for j in jobs.values()) and len(jobs) == len(job_ids):
            return jobs
        if time.monotonic() >= deadline:
            raise AssertionError(f"jobs not ended after {timeout:g} s: "
                                 f"{ {k: v['status'] for k, v in jobs.items()} }")
        time.sleep(1)


def logs(testbed: Testbed, head: str, job_id: str) -> str:
    proc = testbed.ssh(head, f"HPCBATCH_ENDPOINT={SOCKET} {VENV}/bin/hpcbatch logs '{job_id}'")
    return proc.stdout + proc.stderr
