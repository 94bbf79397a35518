"""Validate AWS Batch API request bodies at the edge: botocore's shapes plus AWS Batch's limits.

Rules / theory of operation:

- ``validate_request(operation, body)`` is the one entry point for AWS's operations: it checks
  the payload quotas, walks the body against botocore's input shape for ``batch`` and runs the
  operation's own rules; it returns the body (nulls dropped, enums canonical) or raises a
  ClientError naming the field. Nothing is stored on rejection: the service runs after it.
- The package, one job per module, imports in one direction (``common`` at the bottom):
  ``common``: the failure type and its field path, limits phrased alike, names, tags, NUL;
  ``shapes``: the compiler from botocore shapes to check closures (the walk);
  ``jobdefs``: container shapes, ecsProperties and RegisterJobDefinition;
  ``rules``: SubmitJob and the job operations, CEs, queues, scheduling policies, tagging.
  Here: the hook tables merged, the compiled checks cached, and the public names.
- Limits AWS documents but the model does not carry (name rules, retry limits, reserved
  environment names, ...) are hooks keyed by shape name (run by the walk) or by operation
  (run on the whole body after it), so they may trust types and required members.
- Which operations exist, and their routes, are read from the one operations table,
  ``hpcbatch.operations``.
- What the cluster's admin allows a container (host paths, devices, shared memory, tmpfs,
  ulimits) depends on the head's config, so it is a separate call,
  ``check_container_limits`` (hpcbatch.container_limits, re-exported here), made by the
  service at registration and at submission.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

# Re-exported: the head's config and service, and the tests, import these from here.
from hpcbatch.container_limits import DEFAULT_ULIMIT_CAPS as DEFAULT_ULIMIT_CAPS
from hpcbatch.container_limits import ContainerLimits as ContainerLimits
from hpcbatch.container_limits import check_container_limits as check_container_limits
from hpcbatch.errors import ClientError
from hpcbatch.operations import OPERATIONS as OPERATION_TABLE
from hpcbatch.validation import common, jobdefs, rules
from hpcbatch.validation.common import JOB_DEFINITION_MAX_BYTES as JOB_DEFINITION_MAX_BYTES
from hpcbatch.validation.common import MAX_TAGS as MAX_TAGS
from hpcbatch.validation.common import NAME_PATTERN as NAME_PATTERN
from hpcbatch.validation.common import SUBMIT_JOB_MAX_BYTES as SUBMIT_JOB_MAX_BYTES
from hpcbatch.validation.common import Check, Hook, _jtype, _show
from hpcbatch.validation.common import _Bad as _Bad  # the tests match on it
from hpcbatch.validation.common import check_image_name as check_image_name
from hpcbatch.validation.common import refuse_nul as refuse_nul
from hpcbatch.validation.jobdefs import RESERVED_ENVIRONMENT as RESERVED_ENVIRONMENT
from hpcbatch.validation.jobdefs import (
    RESERVED_ENVIRONMENT_PREFIXES as RESERVED_ENVIRONMENT_PREFIXES,
)
from hpcbatch.validation.jobdefs import ULIMIT_NAMES as ULIMIT_NAMES
from hpcbatch.validation.jobdefs import (
    WORKING_DIRECTORY_ENVIRONMENT as WORKING_DIRECTORY_ENVIRONMENT,
)
from hpcbatch.validation.jobdefs import ecs_container as ecs_container
from hpcbatch.validation.shapes import _Compiler as _Compiler

# The AWS operations validated against botocore's input shapes (hpcbatch.operations' table).
OPERATIONS: frozenset[str] = frozenset(op.name for op in OPERATION_TABLE if op.validated == "aws")
# Operations whose resource is in the path (/v1/tags/{resourceArn}) and which AWS serves by
# POST, DELETE and GET: not in ``route_table``; see ``rest_routes``.
TAG_OPERATIONS: frozenset[str] = frozenset(op.name for op in OPERATION_TABLE if op.validated == "aws" and op.rest)


# The rules keyed by botocore shape name (run by the walk) and by operation (run after it);
# each module owns its keys, and no key is owned twice.
_SHAPE_HOOKS: dict[str, Hook] = {**common.SHAPE_HOOKS, **jobdefs.SHAPE_HOOKS, **rules.SHAPE_HOOKS}
_OPERATION_HOOKS: dict[str, Hook] = {**jobdefs.OPERATION_HOOKS, **rules.OPERATION_HOOKS}


@functools.cache
def _service_model() -> Any:
    import botocore.session  # deferred: loading the model takes ~100 ms, only the head needs it

    return botocore.session.get_session().get_service_model("batch")


@functools.cache
def _compiler() -> _Compiler:
    return _Compiler(_SHAPE_HOOKS)


_COMPILE_LOCK = threading.Lock()  # a half-compiled shape holds a forward reference


@functools.cache
def _operation_check(operation: str) -> Check:
    shape = _service_model().operation_model(operation).input_shape
    with _COMPILE_LOCK:
        walk = _compiler().compile(shape)
    hook = _OPERATION_HOOKS.get(operation)

    def check(v: Any) -> None:
        walk(v)
        if hook is not None:
            hook(v)

    return check


def validate_request(operation: str, body: object, *, raw_size: int | None = None) -> dict:
    """Validate `body` (parsed JSON) for AWS Batch operation `operation` (e.g. 'SubmitJob'); return it as a dict or raise ClientError."""
    if operation not in OPERATIONS:
        raise ClientError(f"Unsupported operation {_show(operation)}")
    if operation == "SubmitJob" and raw_size is not None and raw_size > SUBMIT_JOB_MAX_BYTES:
        raise ClientError(f"SubmitJob request is {raw_size} bytes; the limit is 30 KiB")
    if operation == "RegisterJobDefinition" and raw_size is not None and raw_size > JOB_DEFINITION_MAX_BYTES:
        raise ClientError(f"RegisterJobDefinition request is {raw_size} bytes; a job definition is at most "
                          "24 KiB (AWS Batch's quota)")
    if not isinstance(body, dict):
        raise ClientError(f"{operation} request body must be a JSON object (got {_jtype(body)})")
    try:
        _operation_check(operation)(body)
    except _Bad as e:
        raise ClientError(e.render(operation)) from None
    return body


def route_table() -> dict[str, str]:
    """Map each supported POST operation's HTTP path (e.g. '/v1/submitjob') to its operation name."""
    return {op.path: op.name for op in sorted(OPERATION_TABLE, key=lambda op: op.name)
            if op.validated == "aws" and not op.rest}


def rest_routes() -> list[tuple[str, str, str]]:
    """(method, path, operation) of the operations whose path carries the resource (tagging).

    The model writes ``/v1/tags/{resourceArn}``; botocore percent-encodes the ARN's ``/`` and
    ``:`` into one segment, other clients may not, so the route takes the rest of the path.
    """
    return [(op.method, op.path.replace("{resourceArn}", "{resourceArn:.+}"), op.name)
            for op in sorted(OPERATION_TABLE, key=lambda op: op.name) if op.validated == "aws" and op.rest]
