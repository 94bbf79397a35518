"""Run the fuzz cases against a live head and judge every answer; shared by the test and bench/chaos.

An answer is acceptable when it is a success (2xx, a JSON object) or a 4xx in AWS's error
shape (``{"__type": ..., "message": ...}`` and the same ``x-amzn-ErrorType`` header). A 5xx,
a malformed error, or no answer at all (the head died) is a finding; so is a success for an
AWS operation whose body held what the edge must refuse (``forbidden``): a NUL byte, an
environment name with ``=`` or a reserved one, a host path or a device in a definition (the
fuzz head's config allows none). Cases are drawn by
hypothesis with ``derandomize=True``: the same cases every run, so CI is reproducible.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.shapes import body_for
from tests.fuzz.wire import Answer, Wire


def operations() -> dict[str, str]:
    """Every path the head serves by POST -> its operation name."""
    from hpcbatch.head.api import EXTENSION_ROUTES, TAG_ROUTES
    from hpcbatch.validation import route_table

    # Tagging's POST twins carry resourceArn in the body: the botocore shape fuzzes them whole.
    return {**route_table(), **TAG_ROUTES, **EXTENSION_ROUTES}


@dataclass
class FuzzReport:
    cases: int = 0
    server_errors: int = 0  # 5xx answers
    findings: list[str] = field(default_factory=list)  # every unacceptable answer, briefly

    def note(self, operation: str, via: str, body: bytes, problem: str) -> None:
        shown = body[:120] + (b"..." if len(body) > 120 else b"")
        if len(self.findings) < 50:
            self.findings.append(f"{operation} via {via} ({len(body)} bytes {shown!r}): {problem}")


def judge(answer: Answer) -> str | None:
    """None when the answer is acceptable, else what is wrong with it."""
    if answer.status >= 500:
        return f"HTTP {answer.status} {answer.body[:200]!r}"
    try:
        doc = json.loads(answer.body)
    except ValueError:
        return f"HTTP {answer.status} with a body that is not JSON: {answer.body[:200]!r}"
    if 200 <= answer.status < 300:
        return None if isinstance(doc, dict) else f"HTTP {answer.status} with a non-object body"
    if not (400 <= answer.status < 500):
        return f"unexpected HTTP {answer.status}"
    if not (isinstance(doc, dict) and isinstance(doc.get("__type"), str) and isinstance(doc.get("message"), str)):
        return f"HTTP {answer.status} without AWS's error shape: {answer.body[:200]!r}"
    if answer.error_type != doc["__type"]:
        return f"x-amzn-ErrorType {answer.error_type!r} differs from __type {doc['__type']!r}"
    return None


_RESERVED = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
             "GPU_DEVICE_ORDINAL", "CUDA_DEVICE_ORDER")


def forbidden(operation: str, body: bytes) -> str | None:
    """What in ``body`` an AWS operation must refuse at the edge, or None."""
    from hpcbatch.validation import OPERATIONS

    if operation not in OPERATIONS:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    found: list[str] = []

    def walk(value: Any, key: str, in_container: bool) -> None:
        if isinstance(value, str):
            if "\x00" in value:
                found.append(f"a NUL byte in {key}")
        elif isinstance(value, list):
            for item in value:
                walk(item, key, in_container)
        elif isinstance(value, dict):
            name = value.get("name")
            if key == "environment" and isinstance(name, str) and ("=" in name or name in _RESERVED):
                found.append(f"environment name {name!r}")
            if in_container and operation == "RegisterJobDefinition":
                if key == "host" and value.get("sourcePath"):
                    found.append(f"host path {value['sourcePath']!r}")
                if key == "devices" and value.get("hostPath"):
                    found.append(f"device {value['hostPath']!r}")
            for k, v in value.items():
                if isinstance(k, str) and "\x00" in k:
                    found.append("a NUL byte in a key")
                walk(v, k, in_container or k in ("containerProperties", "container", "ecsProperties"))

    walk(doc, "", False)
    return found[0] if found else None


def run_fuzz(wires: dict[str, Wire], ops: Iterable[tuple[str, str]], examples: int) -> FuzzReport:
    """``examples`` cases per operation, each sent over one of ``wires`` (by name)."""
    report = FuzzReport()
    names = sorted(wires)

    def cases_for(path: str, operation: str) -> Any:
        @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), phases=("generate",))
        @given(body=body_for(operation), via=st.sampled_from(names))
        def one(body: bytes, via: str) -> None:
            report.cases += 1
            try:
                answer = wires[via].post(path, body)
            except OSError as exc:
                report.server_errors += 1
                report.note(operation, via, body, f"no answer ({exc}): did the head die?")
                return
            problem = judge(answer)
            if problem is None and 200 <= answer.status < 300:
                accepted = forbidden(operation, body)
                problem = f"accepted {accepted}" if accepted else None
            if problem is not None:
                report.server_errors += answer.status >= 500
                report.note(operation, via, body, problem)

        return one

    for path, operation in ops:
        cases_for(path, operation)()
    return report


def check_store(wire: Wire) -> list[str]:
    """What the head stored after the fuzzing, read back whole: every problem found.

    Every listed job must describe with its AWS required members; every compute
    environment, queue and job definition must carry the members the model requires.
    """
    import botocore.session

    model = botocore.session.get_session().get_service_model("batch")
    problems: list[str] = []

    def ok(answer: Answer, what: str) -> dict[str, Any]:
        if answer.status != 200:
            problems.append(f"{what}: HTTP {answer.status} {answer.body[:200]!r}")
            return {}
        return answer.json()

    def required(operation: str, list_key: str) -> tuple[str, ...]:
        member = model.operation_model(operation).output_shape.members[list_key].member
        return tuple(member.required_members)

    for operation, path, key in (
        ("DescribeComputeEnvironments", "/v1/describecomputeenvironments", "computeEnvironments"),
        ("DescribeJobQueues", "/v1/describejobqueues", "jobQueues"),
        ("DescribeJobDefinitions", "/v1/describejobdefinitions", "jobDefinitions"),
    ):
        need = required(operation, key)
        token: str | None = None
        while True:
            page = ok(wire.call(path, {"nextToken": token} if token else {}), operation)
            for item in page.get(key, []):
                missing = [m for m in need if m not in item]
                if missing:
                    problems.append(f"{operation}: {json.dumps(item)[:200]} lacks {missing}")
            token = page.get("nextToken")
            if not token:
                break
    need = required("DescribeJobs", "jobs")
    queues = [q["jobQueueName"] for q in ok(wire.call("/v1/describejobqueues", {}), "queues").get("jobQueues", [])]
    for queue in queues:
        for status in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED"):
            ids = [j["jobId"] for j in ok(wire.call("/v1/listjobs", {"jobQueue": queue, "jobStatus": status,
                                                                  "maxResults": 1000}), "ListJobs").get("jobSummaryList", [])]
            for start in range(0, len(ids), 100):
                for job in ok(wire.call("/v1/describejobs", {"jobs": ids[start:start + 100]}), "DescribeJobs").get("jobs", []):
                    missing = [m for m in need if m not in job]
                    if missing:
                        problems.append(f"job {job.get('jobId')}: lacks {missing}")
    return problems
