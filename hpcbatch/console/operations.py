"""How the console calls the head: the API's operations, with the API's checks, in-process.

Each console action is the API operation a CLI user would call, run through the same
steps as ``hpcbatch.head.api`` (role check, AWS shape validation, the service method,
the audit entry, waiting for the commit), so the console can never do more than the API.
"""

from __future__ import annotations

import json
from typing import Any

from hpcbatch.auth.policy import READ_ONLY, Caller, authorize
from hpcbatch.errors import HpcbatchError
from hpcbatch.head.api import _audit_entry
from hpcbatch.head.service import BatchService
from hpcbatch.validation import route_table

_AWS_OPERATIONS = frozenset(route_table().values())


async def perform(service: BatchService, operation: str, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
    """Run API ``operation`` for ``caller``; raises the API's errors (AccessDenied, ClientError...)."""
    from hpcbatch.validation import validate_request

    authorize(caller, operation)
    mutating = operation not in READ_ONLY
    engine = service.engine
    try:
        if operation in _AWS_OPERATIONS:
            body = validate_request(operation, body, raw_size=len(json.dumps(body)))
        result: dict[str, Any] = getattr(service, operation)(body, caller)
    except HpcbatchError as exc:
        if mutating:
            engine.audit(_audit_entry(caller, operation, body, f"{exc.aws_code}: {exc.message}"))
            await engine.durable()
        raise
    if mutating:
        engine.audit(_audit_entry(caller, operation, body, "ok", result))
        await engine.durable()  # answer only once the change is committed, as the API does
    return result
