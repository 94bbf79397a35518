"""Active/standby heads at the HTTP edge: what a standby answers, and who is active.

A standby serves no operation: every call gets HTTP 503 ``StandbyHeadException`` naming
the active head (its ``advertise_url``), so a caller that knows several heads (the CLI
and ``hpcbatch.client`` with a comma-separated endpoint list) tries the next one, and a
person reading the error knows where to go. ``DescribeHeads`` is answered by every head,
active or standby, without credentials: it reveals only the heads' URLs and the epoch.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

DESCRIBE_PATH = "/hpcbatch/v1/describeheads"
STANDBY_ERROR = "StandbyHeadException"

Describe = Callable[[], Awaitable[dict[str, Any]]]


def add_describe_route(app: web.Application, describe: Describe) -> None:
    """``POST /hpcbatch/v1/describeheads``: this head's role and the lease's holder."""

    async def handle(request: web.Request) -> web.Response:
        return web.json_response(await describe())

    app.router.add_post(DESCRIBE_PATH, handle)


def standby_app(describe: Describe) -> web.Application:
    """The application a standby serves until it takes the lease."""
    app = web.Application()
    add_describe_route(app, describe)

    async def refuse(request: web.Request) -> web.Response:
        doc = await describe()
        active = doc.get("active") or {}
        where = f"the active head is {active['url']} (epoch {active['epoch']})" if active.get("url") else (
            "no head is active right now; one takes over within seconds"
        )
        message = f"this head ({doc['headId'][:8]}) is a standby: {where}; retry there"
        return web.Response(
            status=503,
            body=json.dumps({"__type": STANDBY_ERROR, "message": message}),
            content_type="application/json",
            headers={"x-amzn-ErrorType": STANDBY_ERROR, "x-hpcbatch-active": str(active.get("url") or "")},
        )

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "standby"})

    app.router.add_get("/hpcbatch/v1/health", health)
    app.router.add_route("*", "/{tail:.*}", refuse)
    return app
