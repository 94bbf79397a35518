"""The one table of API operations: every other list of operations is derived from it.

Rules / theory of operation:

- One row per operation the head serves: its name (AWS Batch's, or hpcbatch's own where AWS
  has none), the HTTP method and path, the least role that may call it, whether it changes
  anything, and how its body is validated. The Python client's methods and paths
  (``hpcbatch.client``), the head's routes (``hpcbatch.head.api``), the AWS shape check
  (``hpcbatch.validation``), and the roles and read-only set (``hpcbatch.auth.policy``) read
  this table; none keeps its own list.
- AWS's operations sit at AWS's paths exactly as botocore's ``batch`` service model has them
  (``POST /v1/submitjob``; tagging at ``/v1/tags/{resourceArn}`` by POST, GET and DELETE);
  tests/unit/test_operations.py checks every row against that model. The paths are written out
  here, not read from botocore, because the client must not import botocore (~100 ms).
- A row whose AWS route carries the resource in its path also has a POST twin under
  ``/hpcbatch/v1`` with the whole request in the JSON body (``post_path``), for clients that
  only POST (the Python client).
- ``validated``: ``"aws"`` bodies are checked against botocore's input shape plus AWS's
  documented limits; ``"own"`` bodies (hpcbatch's operations, no botocore shape) are checked
  by their service method, with no NUL byte anywhere.
- ``served_by``: ``"service"`` rows are routed by the API to ``BatchService.<name>``; the few
  others have a handler of their own (the event long poll, the HA role answer, the console's
  link), but their path and role live here all the same.

Only the standard library is imported: the client (one process per ``hpcbatch submit``) reads
this module on its hot path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["OPERATIONS", "Operation", "by_name", "method_name"]

Role = Literal["user", "developer", "admin"]


@dataclass(frozen=True, slots=True)
class Operation:
    """One API operation: where it is served, who may call it, and how it is checked."""

    name: str  # "SubmitJob"
    method: str  # the HTTP method of ``path`` ("POST"; tagging also GET and DELETE)
    path: str  # "/v1/submitjob", "/v1/tags/{resourceArn}", "/hpcbatch/v1/whoami"
    role: Role  # the least role that may call it (hpcbatch.auth.policy)
    write: bool  # changes something: audited, refused on a full disk, never resent blindly
    validated: Literal["aws", "own"]  # botocore's input shape, or the service's own checks
    served_by: Literal["service", "events", "ha", "console"] = "service"
    post_path: str = ""  # the POST-with-JSON-body path when ``path`` carries members ("" = path)

    @property
    def post(self) -> str:
        """The path a client POSTs the whole request body to."""
        return self.post_path or self.path

    @property
    def rest(self) -> bool:
        """Whether AWS's route carries members in its path (a POST twin serves the JSON form)."""
        return bool(self.post_path)


def method_name(name: str) -> str:
    """``DescribeJobQueues`` -> ``describe_job_queues`` (boto3's method names)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _aws(name: str, role: Role, write: bool) -> Operation:
    return Operation(name, "POST", f"/v1/{name.lower()}", role, write, "aws")


def _tagging(name: str, method: str, write: bool) -> Operation:
    # A user tags their own jobs; the service asks for developer on every other resource.
    return Operation(name, method, "/v1/tags/{resourceArn}", "user", write, "aws",
                     post_path=f"/hpcbatch/v1/{name.lower()}")


def _own(name: str, role: Role, write: bool, served_by: Literal["service", "events", "ha", "console"] = "service") -> Operation:
    return Operation(name, "POST", f"/hpcbatch/v1/{name.lower()}", role, write, "own", served_by)


R, W = False, True  # read-only, write

OPERATIONS: tuple[Operation, ...] = (
    # AWS Batch: jobs
    _aws("SubmitJob", "user", W),
    _aws("DescribeJobs", "user", R),
    _aws("ListJobs", "user", R),
    _aws("CancelJob", "user", W),
    _aws("TerminateJob", "user", W),
    _aws("GetJobQueueSnapshot", "user", R),
    # AWS Batch: resources
    _aws("CreateComputeEnvironment", "developer", W),
    _aws("UpdateComputeEnvironment", "developer", W),
    _aws("DescribeComputeEnvironments", "user", R),
    _aws("DeleteComputeEnvironment", "developer", W),
    _aws("CreateJobQueue", "developer", W),
    _aws("UpdateJobQueue", "developer", W),
    _aws("DescribeJobQueues", "user", R),
    _aws("DeleteJobQueue", "developer", W),
    _aws("RegisterJobDefinition", "developer", W),
    _aws("DescribeJobDefinitions", "user", R),
    _aws("DeregisterJobDefinition", "developer", W),
    _aws("CreateSchedulingPolicy", "developer", W),
    _aws("UpdateSchedulingPolicy", "developer", W),
    _aws("DescribeSchedulingPolicies", "user", R),
    _aws("DeleteSchedulingPolicy", "developer", W),
    _aws("ListSchedulingPolicies", "user", R),
    # AWS Batch: tagging, at /v1/tags/{resourceArn}
    _tagging("TagResource", "POST", W),
    _tagging("UntagResource", "DELETE", W),
    _tagging("ListTagsForResource", "GET", R),
    # hpcbatch: jobs
    _own("GetJobLogs", "user", R),
    _own("PutScript", "user", W),
    _own("StartJobTask", "user", W),  # in the caller's own jobs only (check_job_access)
    _own("WhyJob", "user", R),
    _own("ListEvents", "user", R, served_by="events"),
    # hpcbatch: who am I, the console, the heads
    _own("WhoAmI", "user", R),
    _own("CreateConsoleLink", "user", W, served_by="console"),
    _own("DescribeHeads", "user", R, served_by="ha"),
    # hpcbatch: nodes
    _own("ListNodes", "user", R),
    _own("DrainNode", "admin", W),
    _own("ResumeNode", "admin", W),
    _own("PrepullImage", "admin", W),
    _own("ListNodeKeys", "admin", R),
    _own("AcceptNodeKey", "admin", W),
    _own("RejectNodeKey", "admin", W),
    _own("RevokeNodeKey", "admin", W),
    _own("DeleteNodeKey", "admin", W),
    # hpcbatch: access keys and the audit log
    _own("CreateAccessKey", "admin", W),
    _own("ListAccessKeys", "admin", R),
    _own("UpdateAccessKey", "admin", W),
    _own("DeleteAccessKey", "admin", W),
    _own("ListAudit", "admin", R),
)

_BY_NAME: dict[str, Operation] = {op.name: op for op in OPERATIONS}


def by_name(name: str) -> Operation:
    """The row of operation ``name``; KeyError if the head serves no such operation."""
    return _BY_NAME[name]
