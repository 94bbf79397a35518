"""The event stream: job and node state changes in one resumable sequence, read or followed.

Every transition the engine commits is a row of the store's event table (node state
changes too, under ``node/NAME``), so the row id is a global, gap-tolerant sequence: a
reader keeps the last id it saw and asks for what came after (``ListEvents``,
``hpcbatch events --after ID``, the console's server-sent events). Following is a long
poll: a read that finds nothing waits, up to ``waitSeconds``, for the engine's next commit.

Visibility is the API's: node events are for everyone (ListNodes is), a job's events for
those who may describe the job (``may_see_job`` under ``private_data``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from hpcbatch.auth.policy import Caller, authorize, may_see_job
from hpcbatch.errors import ClientError, HpcbatchError
from hpcbatch.head.service import BatchService
from hpcbatch.store.base import NODE_EVENT_PREFIX, EventRow

MAX_EVENTS = 1000
MAX_WAIT_S = 60.0


def event_doc(row: EventRow) -> dict[str, Any]:
    """The JSON shape of one event (what ``hpcbatch events`` prints, one per line)."""
    if row.job_id.startswith(NODE_EVENT_PREFIX):
        return {
            "eventId": row.event_id, "at": row.at, "type": "node",
            "node": row.job_id[len(NODE_EVENT_PREFIX):], "state": row.status, "stateReason": row.reason,
        }
    return {
        "eventId": row.event_id, "at": row.at, "type": "job", "jobId": row.job_id,
        "status": row.status, "statusReason": row.reason, "jobQueue": row.queue, "owner": row.owner,
    }


class EventFeed:
    """Reads the stream for a caller, and wakes followers when the engine commits."""

    def __init__(self, service: BatchService) -> None:
        self._service = service
        self._wakeup: asyncio.Event | None = None
        self._closed = False
        service.engine.commit_observers.append(self._committed)

    def _committed(self, events: list[tuple[str, int, str, str | None]]) -> None:
        self.wake_all()

    def close(self) -> None:
        """The head is stopping: followers answer with what they have, now."""
        self._closed = True
        self.wake_all()

    def wake_all(self) -> None:
        """Wake every follower (after a commit)."""
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    def changed(self) -> asyncio.Event:
        """An event set at the next commit; take it *before* reading, so no commit is missed."""
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        return self._wakeup

    def read(
        self, caller: Caller, after: int, limit: int, job_id: str | None = None, queue: str | None = None
    ) -> tuple[list[dict[str, Any]], int, bool]:
        """(visible events, the id to resume after, whether more rows may follow at once)."""
        rows = self._service.store.events_after(after, limit, job_id=job_id, queue=queue)
        private = self._service.private_data
        visible = [
            event_doc(r) for r in rows
            if r.job_id.startswith(NODE_EVENT_PREFIX) or may_see_job(caller, r.owner or "", private)
        ]
        cursor = rows[-1].event_id if rows else after
        return visible, cursor, len(rows) == limit

    async def follow(
        self, caller: Caller, after: int, limit: int, wait_s: float,
        job_id: str | None = None, queue: str | None = None,
    ) -> tuple[list[dict[str, Any]], int, bool]:
        """``read``, waiting up to ``wait_s`` for something to read."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            changed = self.changed()
            events, cursor, more = self.read(caller, after, limit, job_id, queue)
            remaining = deadline - loop.time()
            if events or more or remaining <= 0 or self._closed:
                return events, cursor, more
            after = cursor
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                pass


def _int(body: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = body.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ClientError(f"{key} must be an integer between {low} and {high}")
    return value


def _text(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ClientError(f"{key} must be a non-empty string")
    return value


def add_event_routes(app: web.Application, feed: EventFeed, identify: Any, error_response: Any) -> None:
    """``POST /hpcbatch/v1/listevents``: the API operation ``ListEvents`` (a long poll)."""

    async def list_events(request: web.Request) -> web.Response:
        try:
            raw = await request.read()
            caller = identify(request, raw)
            authorize(caller, "ListEvents")
            try:
                body = json.loads(raw) if raw else {}
            except ValueError as exc:
                raise ClientError(f"request body is not valid JSON: {exc}") from None
            if not isinstance(body, dict):
                raise ClientError("request body must be a JSON object")
            after = _int(body, "afterEventId", 0, 0, 2**62)
            limit = _int(body, "maxResults", 100, 1, MAX_EVENTS)
            wait = body.get("waitSeconds", 0)
            if not isinstance(wait, int | float) or isinstance(wait, bool) or not 0 <= wait <= MAX_WAIT_S:
                raise ClientError(f"waitSeconds must be between 0 and {MAX_WAIT_S:g}")
            job_id = _text(body, "jobId")
            queue = _text(body, "jobQueue")
            if job_id is not None:
                job_id = job_id.rsplit("/", 1)[-1]
            if queue is not None:
                queue = queue.rsplit("/", 1)[-1]
            events, cursor, more = await feed.follow(caller, after, limit, float(wait), job_id, queue)
        except HpcbatchError as exc:
            return error_response(exc)
        return web.json_response({"events": events, "lastEventId": cursor, "more": more})

    async def close(app: web.Application) -> None:
        feed.close()  # long polls answer at once: the head's shutdown need not wait them out

    app.router.add_post("/hpcbatch/v1/listevents", list_events)
    app.on_shutdown.append(close)
