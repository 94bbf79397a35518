"""The console's nodes page, one page at a time over ListNodes' own paging.

ListNodes pages by name (``maxResults``, an opaque ``nextToken``) from a snapshot of the
sorted node names, and builds rows only for the page asked (hpcbatch.head.service); it has
no state filter and no way back. So:

- the page's URL keeps the tokens its earlier pages started from (``trail``, the last
  ``TRAIL`` of them): "Previous" goes back that far, "First" always;
- a state filter reads ListNodes pages until it has a page of matches, each read asking
  only for the rows still missing (so the next token never skips a match), at most
  ``SCAN_READS`` reads a request: a rare state gives a short page and a "Next" link rather
  than one request that builds every node's row.

Pure but for ``read_page``, which is handed the ListNodes call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

from hpcbatch.errors import ClientError
from hpcbatch.scheduler.power import PowerState

PAGE_SIZE = 100  # rows a page, unless ?size= says otherwise
MAX_PAGE_SIZE = 1000  # ListNodes' maxResults bound
TRAIL = 20  # earlier pages "Previous" can go back to
SCAN_READS = 10  # ListNodes reads a filtered page may take
PATH = "/console/nodes"
FIRST = "-"  # the first page on a trail (no token: base64 never gives just "-")
# The node states (hpcbatch.head.engine) and a MANAGED pool node's power states.
STATES = tuple(dict.fromkeys(("ACTIVE", "DRAINING", "DRAINED", "DOWN", *(s.value for s in PowerState))))


@dataclass(frozen=True)
class NodesView:
    """What the nodes page was asked for: a state (or all), a page size, where the page
    starts (a ListNodes token; None: the first page) and the starts of the pages before it."""

    state: str | None = None
    size: int = PAGE_SIZE
    start: str | None = None
    trail: tuple[str, ...] = ()  # "" is the first page

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> NodesView:
        """The view a query string asks for; a ClientError naming the parameter otherwise."""
        state = query.get("state") or None
        if state is not None and state not in STATES:
            raise ClientError(f"state must be one of {', '.join(STATES)}")
        size_text = query.get("size") or str(PAGE_SIZE)
        if not size_text.isdigit() or not 1 <= int(size_text) <= MAX_PAGE_SIZE:
            raise ClientError(f"size must be a number of rows from 1 to {MAX_PAGE_SIZE}")
        trail = tuple("" if t == FIRST else t for t in query["trail"].split(",")) if query.get("trail") else ()
        return cls(state=state, size=int(size_text), start=query.get("page") or None, trail=trail[-TRAIL:])

    def url(self) -> str:
        """This view's address (only what differs from the defaults)."""
        params: dict[str, str] = {}
        if self.state:
            params["state"] = self.state
        if self.size != PAGE_SIZE:
            params["size"] = str(self.size)
        if self.start:
            params["page"] = self.start
        if self.trail:
            params["trail"] = ",".join(t or FIRST for t in self.trail)
        return PATH + ("?" + urlencode(params) if params else "")

    def next_url(self, token: str) -> str:
        """The page that starts at ``token``, with this one on its trail."""
        return replace(self, start=token, trail=(*self.trail, self.start or "")[-TRAIL:]).url()

    def previous_url(self) -> str | None:
        """The page before this one, if the trail remembers it."""
        if not self.trail:
            return None
        return replace(self, start=self.trail[-1] or None, trail=self.trail[:-1]).url()

    def first_url(self) -> str | None:
        """The first page with the same filter and size; None on the first page."""
        if self.start is None:
            return None
        return replace(self, start=None, trail=()).url()


@dataclass(frozen=True)
class NodesPage:
    """The rows shown and the token of the page after them (None: the last page)."""

    nodes: list[dict[str, Any]]
    next_token: str | None
    scanned: int  # nodes read to fill it (more than shown when filtered)


async def read_page(list_nodes: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]], view: NodesView) -> NodesPage:
    """One page of ``view``: ListNodes pages from ``view.start``, filtered by state if asked."""
    rows: list[dict[str, Any]] = []
    token = view.start
    scanned = 0
    for _ in range(SCAN_READS if view.state else 1):
        body: dict[str, Any] = {"maxResults": view.size - len(rows)}
        if token:
            body["nextToken"] = token
        answer = await list_nodes(body)
        scanned += len(answer["nodes"])
        rows.extend(n for n in answer["nodes"] if view.state is None or n["state"] == view.state)
        token = answer.get("nextToken")
        if token is None or len(rows) >= view.size:
            break
    return NodesPage(nodes=rows, next_token=token, scanned=scanned)
