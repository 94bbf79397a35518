"""How the head's Python garbage collector runs: the long-lived state is kept out of its walks.

At 10,000 nodes the head holds hundreds of thousands of objects that live as long as the
process (a record, facts, routes and scheduler state per node). CPython's full (generation
2) collection walks all of them, and finds nothing: ``bench/fleet --nodes 10000`` measured
18 full collections in one run, each 90–450 ms with the event loop stopped (3.2 s in all),
and every one of them was a single-job submit→start outlier.

So after each full collection the survivors are frozen (``gc.freeze``): every object then
alive is reachable, and later collections skip it. Memory is still freed by reference
counting. The cost is a cycle that was alive at a freeze and dies later: the collector does
not see it. To bound that, every ``thaw_every_s`` the frozen objects go back to the
collector and one full collection runs (one pause of the old size, every ten minutes by
default, far inside any liveness window), then the survivors are frozen again. Same run
with the policy: 10 full collections, 258 ms in all, the longest 65 ms.

The pauses of full collections are counted for the head's metrics
(``hpcbatch_head_gc_full_collection_seconds``).
"""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass
from typing import Any

THAW_EVERY_S = 600.0

_installed: CollectorPolicy | None = None  # the collector is one per process, and so is its policy


@dataclass
class FullCollections:
    """Full collections since the head started: how many, and their pauses."""

    count: int = 0
    total_s: float = 0.0
    longest_s: float = 0.0


class CollectorPolicy:
    """Freezes the survivors of each full collection; thaws and collects them now and then."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, thaw_every_s: float = THAW_EVERY_S) -> None:
        self._loop = loop
        self._thaw_every_s = thaw_every_s
        self._started: float | None = None
        self._freeze_pending = False
        self._thaw_handle: asyncio.TimerHandle | None = None
        self.full = FullCollections()

    def install(self) -> None:
        global _installed
        gc.callbacks.append(self._on_collection)
        self._thaw_handle = self._loop.call_later(self._thaw_every_s, self._thaw_and_collect)
        _installed = self

    def uninstall(self) -> None:
        """Stop, and give every frozen object back to the collector."""
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)
        if self._thaw_handle is not None:
            self._thaw_handle.cancel()
        gc.unfreeze()
        global _installed
        if _installed is self:
            _installed = None

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
            return
        if self._started is not None:
            pause = time.perf_counter() - self._started
            self.full.count += 1
            self.full.total_s += pause
            self.full.longest_s = max(self.full.longest_s, pause)
        if not self._freeze_pending:  # not from inside the collection: on the loop's next turn
            self._freeze_pending = True
            self._loop.call_soon_threadsafe(self._freeze)

    def _freeze(self) -> None:
        self._freeze_pending = False
        gc.freeze()

    def _thaw_and_collect(self) -> None:
        gc.unfreeze()
        gc.collect()  # its end freezes the survivors again (_on_collection)
        self._thaw_handle = self._loop.call_later(self._thaw_every_s, self._thaw_and_collect)


def full_collections() -> FullCollections | None:
    """The installed policy's count of full collections (None in a process without one)."""
    return _installed.full if _installed is not None else None
