"""The API edge's per-request costs, in-process: no head, no sockets.

* ``validate_submit_us``: ``validate_request("SubmitJob", body)`` for a typical body (array,
  dependency, overrides, retry strategy, tags), microseconds per body. Target < 100 µs.
* ``sigv4_verify_us``: ``verify`` of a request botocore signed as boto3 signs a Batch call,
  microseconds per request. Target < 100 µs (it sits on every TCP API call).

Moved here from tests/unit (test_validation, test_sigv4): speed is measured, never asserted.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import time
from typing import Any
from unittest import mock

import botocore.auth
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDict, CIMultiDictProxy

from hpcbatch.auth.keys import AccessKey
from hpcbatch.auth.sigv4 import SignedRequest, verify
from hpcbatch.validation import validate_request

N = 2000
SUBMIT: dict[str, Any] = {
    "jobName": "train-resnet_1",
    "jobQueue": "gpu",
    "jobDefinition": "mpi-train:3",
    "parameters": {"epochs": "10"},
    "arrayProperties": {"size": 4},
    "dependsOn": [{"jobId": "0f1e", "type": "N_TO_N"}],
    "containerOverrides": {
        "command": ["python", "train.py", "Ref::epochs"],
        "environment": [{"name": "OMP_NUM_THREADS", "value": "8"}],
        "resourceRequirements": [{"type": "VCPU", "value": "2"}, {"type": "MEMORY", "value": "8192"}],
    },
    "retryStrategy": {"attempts": 3, "evaluateOnExit": [{"action": "retry", "onExitCode": "13*"}]},
    "timeout": {"attemptDurationSeconds": 60},
    "tags": {"team": "ml"},
}
KEY = AccessKey(access_key_id="AKIAHPCBATCHBENCH001", secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                user="alice", role="user", status="Active", created_at=1_700_000_000_000)
SIGNED_AT = dt.datetime(2026, 11, 30, 1, 30, tzinfo=dt.UTC)
HOST = "head.example:8471"


def _per_call_us(call: Any, n: int = N) -> float:
    for _ in range(50):  # warm (compiled validators, caches)
        call()
    start = time.perf_counter()
    for _ in range(n):
        call()
    return round((time.perf_counter() - start) / n * 1e6, 1)


def _signed() -> tuple[CIMultiDictProxy[str], bytes]:
    body = json.dumps({"jobName": "hello", "jobQueue": "default", "jobDefinition": "hpcbatch-default"}).encode()
    request = AWSRequest(method="POST", url=f"http://{HOST}/v1/submitjob",
                         headers={"Content-Type": "application/json"}, data=body)
    signer = SigV4Auth(Credentials(KEY.access_key_id, KEY.secret_access_key), "batch", "us-east-1")
    with mock.patch.object(botocore.auth, "get_current_datetime", lambda: SIGNED_AT.replace(tzinfo=None)):
        signer.add_auth(request)
    headers = CIMultiDict(request.headers.items())
    headers["Host"] = HOST
    headers["Content-Length"] = str(len(body))
    return CIMultiDictProxy(headers), body


def main() -> dict[str, float]:
    bodies = iter([copy.deepcopy(SUBMIT) for _ in range(N + 50)])  # validation may normalise in place
    headers, body = _signed()
    now = SIGNED_AT.timestamp()
    keys = {KEY.access_key_id: KEY}.get
    return {
        "validate_submit_us": _per_call_us(lambda: validate_request("SubmitJob", next(bodies))),
        "sigv4_verify_us": _per_call_us(lambda: verify(SignedRequest("POST", "/v1/submitjob", "", headers, body), now, keys)),
    }


if __name__ == "__main__":
    for name, value in main().items():
        print(f"{name}={value}")
