"""The HTTP API: AWS Batch's REST-JSON paths and bodies, plus hpcbatch's own under /hpcbatch/v1.

Each request is parsed, validated against the AWS shape (``hpcbatch.validation``), run by
the service, and answered. Errors come back as AWS does: a 4xx/5xx status, the
``x-amzn-ErrorType`` header and ``{"__type": ..., "message": ...}``, which boto3 turns
into ``ClientException``/``ServerException``. Authentication (SigV4, Unix peer
credentials) plugs in at ``identify`` in a later issue; today every caller is the head's
own Unix user.
"""

from __future__ import annotations

import getpass
import json
import logging
from typing import Any

from aiohttp import web

from hpcbatch.errors import ClientError, HpcbatchError
from hpcbatch.head.service import BatchService
from hpcbatch.validation import route_table, validate_request

log = logging.getLogger("hpcbatch.api")

EXTENSION_ROUTES = {
    "/hpcbatch/v1/putscript": "PutScript",
    "/hpcbatch/v1/getjoblogs": "GetJobLogs",
    "/hpcbatch/v1/listnodes": "ListNodes",
}
MAX_BODY = 2 << 20

_DEFAULT_OWNER = getpass.getuser()


def identify(request: web.Request) -> str:
    """The Unix user a request acts as (until authentication lands: the head's user)."""
    return _DEFAULT_OWNER


def _error(exc: HpcbatchError) -> web.Response:
    body = json.dumps({"__type": exc.aws_code, "message": exc.message})
    return web.Response(
        status=exc.http_status,
        body=body,
        content_type="application/json",
        headers={"x-amzn-ErrorType": exc.aws_code},
    )


def make_app(service: BatchService) -> web.Application:
    """Build the aiohttp application serving every operation."""
    app = web.Application(client_max_size=MAX_BODY)

    def handler(operation: str, validate: bool) -> Any:
        method = getattr(service, operation)

        async def handle(request: web.Request) -> web.Response:
            try:
                raw = await request.read()
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError as exc:
                    raise ClientError(f"request body is not valid JSON: {exc}") from None
                if validate:
                    body = validate_request(operation, body, raw_size=len(raw))
                elif not isinstance(body, dict):
                    raise ClientError("request body must be a JSON object")
                result = method(body, identify(request))
                # Reply only once what the call changed is committed (group commit).
                await service.engine.durable()
            except HpcbatchError as exc:
                return _error(exc)
            except Exception:
                log.exception("%s failed", operation)
                return _error(HpcbatchError(f"{operation} failed on the head; see the head's log"))
            return web.Response(body=json.dumps(result), content_type="application/json")

        return handle

    for path, operation in route_table().items():
        app.router.add_post(path, handler(operation, True))
    for path, operation in EXTENSION_ROUTES.items():
        app.router.add_post(path, handler(operation, False))

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/hpcbatch/v1/health", health)
    return app
