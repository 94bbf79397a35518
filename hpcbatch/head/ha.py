"""Active/standby heads at the HTTP edge: what a standby answers, and who is active.

A standby serves the read-only calls whose answer lives wholly in the shared PostgreSQL
store (``STANDBY_READS``: DescribeJobs, ListJobs, the Describe calls of queues, compute
environments and job definitions, WhoAmI, ListTagsForResource and ListEvents), so
dashboards and scripts can read from any head. Its store session is read-only (PostgreSQL refuses any write in it,
hpcbatch.store.postgres) and these calls never touch the lease. Every other call gets
HTTP 503 ``StandbyHeadException`` naming the active head (its ``advertise_url``), so a
caller that knows several heads (the CLI and ``hpcbatch.client`` with a comma-separated
endpoint list) tries the next one, and a person reading the error knows where to go:
writes, and the reads a standby cannot answer truthfully (ListNodes, WhyJob and
GetJobQueueSnapshot live in the active head's memory; GetJobLogs in its files, unless
they are on shared storage, which a standby cannot tell). ``DescribeHeads`` is answered
by every head, active or standby, without credentials: it reveals only the heads' URLs
and the epoch.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from hpcbatch.head.api import Identifier, _error, make_app
from hpcbatch.head.events import EventFeed, add_event_routes
from hpcbatch.head.ratelimit import RateLimiter
from hpcbatch.head.service import BatchService

DESCRIBE_PATH = "/hpcbatch/v1/describeheads"
STANDBY_ERROR = "StandbyHeadException"
# Answered from the store alone. ListEvents is served beside them (hpcbatch.head.events).
STANDBY_READS = frozenset({
    "DescribeJobs", "ListJobs", "DescribeJobQueues", "DescribeComputeEnvironments", "DescribeJobDefinitions", "WhoAmI",
    "DescribeSchedulingPolicies", "ListSchedulingPolicies",  # stored resources, read as they are
    "ListTagsForResource",  # tags live in the stored documents (a standby's engine holds no job)
})
# A standby sees no commits (the active head makes them), so its ListEvents long polls
# look at the store again this often.
STANDBY_EVENT_POLL_S = 1.0

Describe = Callable[[], Awaitable[dict[str, Any]]]


def add_describe_route(app: web.Application, describe: Describe) -> None:
    """``POST /hpcbatch/v1/describeheads``: this head's role and the lease's holder."""

    async def handle(request: web.Request) -> web.Response:
        return web.json_response(await describe())

    app.router.add_post(DESCRIBE_PATH, handle)


def standby_app(
    describe: Describe, service: BatchService | None = None, *,
    roles: Mapping[str, str] | None = None, region: str | None = None, limiter: RateLimiter | None = None,
) -> web.Application:
    """The application a standby serves until it takes the lease: ``service``'s
    ``STANDBY_READS`` and ListEvents (none without a service), and the redirect."""
    if service is None:
        app = web.Application()
    else:
        app = make_app(service, roles=roles, region=region, limiter=limiter, operations=STANDBY_READS)
        feed = EventFeed(service)
        add_event_routes(app, feed, Identifier(service, roles or {}, region).identify, _error)
        app.cleanup_ctx.append(_poll_for_events(feed))
    add_describe_route(app, describe)

    async def refuse(request: web.Request) -> web.Response:
        doc = await describe()
        active = doc.get("active") or {}
        if active.get("url"):
            where = f"the active head is {active['url']} (epoch {active['epoch']})"
        elif doc.get("leaseError"):  # docs/ha.md, database outages
            where = f"the state database is unreachable ({doc['leaseError']}), so which head is active is unknown"
        else:
            where = "no head is active right now; one takes over within seconds"
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


def _poll_for_events(feed: EventFeed) -> Callable[[web.Application], AsyncIterator[None]]:
    """While the app runs, wake ListEvents followers every ``STANDBY_EVENT_POLL_S`` to read again."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        async def tick() -> None:
            while True:
                await asyncio.sleep(STANDBY_EVENT_POLL_S)
                feed.wake_all()

        task = asyncio.create_task(tick())
        yield
        task.cancel()

    return context
