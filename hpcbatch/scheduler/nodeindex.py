"""Nodes of one compute environment indexed by free capacity, in allocation-strategy order.

A placement asks for the first node, in the strategy's order, that has the free vCPUs,
memory and GPUs; scanning every node for it made a pass over 100k jobs on 5k nodes cost
O(jobs x nodes). The index keeps the nodes that can take a single-node job (ACTIVE,
accepting, not held whole by a gang) in a sorted map keyed by the strategy:

* ``BEST_FIT`` (AWS's default): the least free vCPUs (then memory) that still fits, so work
  packs onto the fewest nodes and whole nodes stay free for gangs.
* ``BEST_FIT_PROGRESSIVE``: nodes already running work first (tightest fit among them);
  only then an idle node, the smallest node type that fits. AWS "selects additional
  instance types that are large enough"; on bare metal the small types are the cheap ones.
* ``SPREAD`` (hpcbatch): the most free vCPUs first, so load spreads evenly.

A node's key changes whenever its free capacity does; the caller removes it before the
change and adds it back after (``NodeIndex.update``). Pure data structure, no scheduler state.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Protocol

from sortedcontainers import SortedDict

STRATEGIES = ("BEST_FIT", "BEST_FIT_PROGRESSIVE", "SPREAD")
_EPS = 1e-9


class IndexedNode(Protocol):
    name: str
    free_vcpus: float
    free_memory_mib: int
    accepting: bool
    gang: str | None
    jobs: set[str]


class NodeIndex:
    """Nodes that may take a single-node job, ordered by the allocation strategy."""

    def __init__(self, strategy: str = "BEST_FIT") -> None:
        self.strategy = strategy if strategy in STRATEGIES else "BEST_FIT"
        self._keys: SortedDict = SortedDict()  # key -> {name: node}
        self._key_of: dict[str, tuple[float, ...]] = {}

    def __len__(self) -> int:
        return len(self._key_of)

    def _key(self, n: IndexedNode) -> tuple[float, ...]:
        if self.strategy == "SPREAD":
            return (-n.free_vcpus, -n.free_memory_mib)
        if self.strategy == "BEST_FIT_PROGRESSIVE":
            return (0 if n.jobs else 1, n.free_vcpus, n.free_memory_mib)
        return (n.free_vcpus, n.free_memory_mib)

    def discard(self, n: IndexedNode) -> None:
        key = self._key_of.pop(n.name, None)
        if key is not None:
            bucket = self._keys[key]
            del bucket[n.name]
            if not bucket:
                del self._keys[key]

    def update(self, n: IndexedNode) -> None:
        """(Re)file ``n`` under its current free capacity; drop it when it can take nothing."""
        self.discard(n)
        if n.accepting and n.gang is None and n.free_vcpus > _EPS:
            key = self._key(n)
            self._key_of[n.name] = key
            bucket = self._keys.get(key)
            if bucket is None:
                bucket = self._keys[key] = {}
            bucket[n.name] = n

    def candidates(self, vcpus: float) -> Iterator[IndexedNode]:
        """Nodes with at least ``vcpus`` free, best first for the strategy (memory/GPUs unchecked)."""
        lo = vcpus - _EPS
        if self.strategy == "SPREAD":
            ranges = [self._keys.irange(maximum=(-lo, math.inf))]
        elif self.strategy == "BEST_FIT_PROGRESSIVE":
            ranges = [
                self._keys.irange((0, lo, -math.inf), (0, math.inf, math.inf)),
                self._keys.irange((1, lo, -math.inf), (1, math.inf, math.inf)),
            ]
        else:
            ranges = [self._keys.irange(minimum=(lo, -math.inf))]
        for keys in ranges:
            for key in keys:
                yield from self._keys[key].values()  # the caller stops before it changes the index

    def any_free(self) -> Iterator[IndexedNode]:
        """Every indexed node (each has some free vCPUs), in no useful order."""
        for bucket in self._keys.values():
            yield from bucket.values()

    def largest_free(self) -> tuple[float, int] | None:
        """(free vCPUs, free MiB) of the node with the most free vCPUs, for wait reasons."""
        if not self._keys:
            return None
        if self.strategy == "SPREAD":
            key = self._keys.peekitem(0)[0]
            return (-key[0], int(-key[1]))
        if self.strategy == "BEST_FIT_PROGRESSIVE":
            tops = [
                next(iter(self._keys.irange((g, -math.inf, -math.inf), (g, math.inf, math.inf), reverse=True)), None)
                for g in (0, 1)
            ]
            best = max((k for k in tops if k is not None), key=lambda k: (k[1], k[2]))
            return (best[1], int(best[2]))
        key = self._keys.peekitem(-1)[0]
        return (key[0], int(key[1]))
