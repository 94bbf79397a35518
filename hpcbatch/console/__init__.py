"""The web console, served by the head under ``/console`` (see docs/console.md).

Server-rendered pages (jinja2 templates in ``templates/``) with a little vanilla
JavaScript and CSS (``static/``): everything ships in the package, nothing from a CDN.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from hpcbatch.auth.policy import Caller
from hpcbatch.console.views import Console
from hpcbatch.head.events import EventFeed
from hpcbatch.head.service import BatchService

STATIC = Path(__file__).parent / "static"


async def _to_overview(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/console/")


def add_console_routes(
    app: web.Application, service: BatchService, feed: EventFeed, identify: Callable[[web.Request, bytes], Caller],
    http_url: str = "",
) -> Console:
    """Mount the console's pages, its assets and the ``CreateConsoleLink`` operation on ``app``."""
    console = Console(service, feed, identify)
    console.http_url = http_url
    auth = console.signed_in
    r = app.router
    r.add_get("/console", _to_overview)
    r.add_get("/console/login", console.login_page)
    r.add_post("/console/login", console.login)
    r.add_post("/console/logout", console.logout)
    r.add_get("/console/", auth(console.overview))
    r.add_get("/console/jobs", auth(console.jobs))
    r.add_get("/console/jobs/{job_id}", auth(console.job))
    r.add_get("/console/jobs/{job_id}/log", auth(console.job_log))
    r.add_get("/console/jobs/{job_id}/children", auth(console.children))
    r.add_post("/console/jobs/{job_id}/{action}", auth(console.job_action))
    r.add_get("/console/submit", auth(console.submit_page))
    r.add_post("/console/submit", auth(console.submit))
    r.add_get("/console/jobdefs", auth(console.jobdefs))
    r.add_get("/console/queues", auth(console.queues))
    r.add_get("/console/nodes", auth(console.nodes))
    r.add_post("/console/nodes/{name}/{action}", auth(console.node_action))
    r.add_get("/console/stream", auth(console.stream))
    r.add_static("/console/static", STATIC)
    r.add_post("/hpcbatch/v1/createconsolelink", console.create_link)
    app.cleanup_ctx.append(console.sampler)
    app.on_shutdown.append(console.on_shutdown)
    return console
