"""Mount what lets people watch the cluster on the API's app: the event stream, /metrics, the console."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from hpcbatch.head.api import Identifier, _error
from hpcbatch.head.events import EventFeed, add_event_routes
from hpcbatch.head.metrics import HeadMetrics, add_metrics_route
from hpcbatch.head.service import BatchService


def mount_observers(
    app: web.Application, service: BatchService, *, roles: Mapping[str, str] | None = None,
    region: str | None = None, http_url: str = "",
) -> None:
    """Add ``ListEvents``, ``GET /metrics`` and ``/console`` to ``app`` (before it starts)."""
    from hpcbatch.console import add_console_routes  # jinja2 loads only with the console

    identify = Identifier(service, roles or {}, region).identify
    feed = EventFeed(service)
    add_event_routes(app, feed, identify, _error)
    add_metrics_route(app, HeadMetrics(service))
    add_console_routes(app, service, feed, identify, http_url)
