"""ListNodes' paging (hpcbatch.head.service.common.node_page): without ``maxResults`` a call
answers one page of 1,000 and a token, as AWS Batch's List calls, so no single call builds
10,000 rows on the head's event loop (issue 22)."""

from __future__ import annotations

import pytest

from hpcbatch.errors import ClientError
from hpcbatch.head.service.common import DEFAULT_NODES_PAGE, node_page

NAMES = sorted(f"n{i:05d}" for i in range(2500))


def _walk(body: dict) -> list[list[str]]:
    pages = []
    while True:
        names, token = node_page(NAMES, body)
        pages.append(names)
        if token is None:
            return pages
        body = {**body, "nextToken": token}


def test_an_unpaged_call_answers_the_first_1000_and_a_token() -> None:
    names, token = node_page(NAMES, {})
    assert DEFAULT_NODES_PAGE == 1000
    assert names == NAMES[:1000] and token is not None


def test_following_the_tokens_lists_every_node_once_in_order() -> None:
    assert [len(p) for p in _walk({})] == [1000, 1000, 500]
    assert sum(_walk({}), []) == NAMES
    assert sum(_walk({"maxResults": 700}), []) == NAMES


def test_a_fleet_within_one_page_gets_no_token() -> None:
    assert node_page(NAMES[:1000], {}) == (NAMES[:1000], None)


@pytest.mark.parametrize("bad", [0, 1001, -1, True, "10", 1.5])
def test_a_bad_max_results_is_refused_by_name(bad: object) -> None:
    with pytest.raises(ClientError, match="maxResults"):
        node_page(NAMES, {"maxResults": bad})
