"""The console's nodes page over ListNodes' paging: links, the trail back, the state filter."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from hpcbatch.console.nodepages import SCAN_READS, TRAIL, NodesView, read_page
from hpcbatch.errors import ClientError

NAMES = [f"node{i:03d}" for i in range(1, 121)]


def _list_nodes(states: dict[str, str], calls: list[dict[str, Any]]) -> Any:
    """ListNodes' contract (hpcbatch.head.service): pages by name, an opaque token, no filter."""

    async def call(body: dict[str, Any]) -> dict[str, Any]:
        calls.append(body)
        start = int(body["nextToken"][1:]) if "nextToken" in body else 0
        end = start + body["maxResults"]
        out: dict[str, Any] = {"nodes": [{"name": n, "state": states[n]} for n in NAMES[start:end]]}
        if end < len(NAMES):
            out["nextToken"] = f"t{end}"
        return out

    return call


def _follow(url: str) -> NodesView:
    """The view a link leads to, as the page's handler parses it."""
    return NodesView.from_query(dict(parse_qsl(urlsplit(url).query)))


def _read(view: NodesView, states: dict[str, str], calls: list[dict[str, Any]] | None = None) -> Any:
    return asyncio.run(read_page(_list_nodes(states, calls if calls is not None else []), view))


def test_pages_go_forward_back_and_to_the_first_with_every_node_once() -> None:
    states = dict.fromkeys(NAMES, "ACTIVE")
    view, seen, starts = NodesView.from_query({"size": "25"}), [], []
    while True:
        page = _read(view, states)
        starts.append(view)
        seen += [n["name"] for n in page.nodes]
        assert len(page.nodes) == 25 or page.next_token is None
        if page.next_token is None:
            break
        view = _follow(view.next_url(page.next_token))
    assert seen == NAMES
    assert view.first_url() == "/console/nodes?size=25"
    for earlier in reversed(starts[:-1]):  # Previous walks the same pages back
        previous = view.previous_url()
        assert previous is not None
        view = _follow(previous)
        assert (view.start, view.trail) == (earlier.start, earlier.trail)
    assert view.previous_url() is None and view.first_url() is None


def test_a_state_filter_never_skips_a_match_and_reads_a_bounded_number_of_pages() -> None:
    down = {"node003", "node050", "node051", "node119"}
    states = {n: "DOWN" if n in down else "ACTIVE" for n in NAMES}
    view, found = NodesView.from_query({"state": "DOWN", "size": "2"}), []
    while True:
        calls: list[dict[str, Any]] = []
        page = _read(view, states, calls)
        assert len(calls) <= SCAN_READS and len(page.nodes) <= 2
        found += [n["name"] for n in page.nodes]
        if page.next_token is None:
            break
        view = _follow(view.next_url(page.next_token))
    assert found == sorted(down)


def test_the_trail_is_bounded_and_bad_parameters_are_named() -> None:
    view = NodesView()
    for i in range(TRAIL + 5):
        view = _follow(view.next_url(f"t{i}"))
    assert len(view.trail) == TRAIL
    for query, field in (({"state": "ASLEEP"}, "state"), ({"size": "0"}, "size"), ({"size": "x"}, "size")):
        with pytest.raises(ClientError, match=field):
            NodesView.from_query(query)
