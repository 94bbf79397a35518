"""The head's garbage-collector policy (hpcbatch.head.gc_policy): the survivors of a full
collection are frozen out of later walks, and a thaw gives the collector the cycles that
died meanwhile, so freezing bounds no memory away for good. Real CPython collections."""

from __future__ import annotations

import asyncio
import gc
import weakref

from hpcbatch.head.gc_policy import CollectorPolicy, full_collections


class _Node:
    """A cycle: two objects referring to each other (reference counting alone never frees it)."""

    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> tuple[_Node, weakref.ref[_Node]]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return a, weakref.ref(b)


def test_survivors_are_frozen_and_a_thaw_collects_the_cycles_that_died_meanwhile() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        policy = CollectorPolicy(loop, thaw_every_s=3600)
        policy.install()
        try:
            held, alive = _cycle()
            gc.collect()
            assert full_collections() is policy.full and policy.full.count == 1
            await asyncio.sleep(0)  # the freeze runs on the loop's next turn, not inside the collection
            assert gc.get_freeze_count() > 0
            del held  # the frozen cycle dies: the collector does not see it ...
            gc.collect()
            assert alive() is not None
            policy._thaw_and_collect()  # ... until the thaw (every thaw_every_s in a head)
            assert alive() is None
            assert policy.full.count == 3 and policy.full.longest_s <= policy.full.total_s
            fresh, fresh_alive = _cycle()  # a cycle made after the freeze dies as usual
            del fresh
            gc.collect()
            assert fresh_alive() is None
        finally:
            policy.uninstall()
        assert gc.get_freeze_count() == 0 and full_collections() is None
        assert policy._on_collection not in gc.callbacks

    asyncio.run(run())
