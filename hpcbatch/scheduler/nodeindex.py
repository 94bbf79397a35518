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

``NodeCensus`` (a compute environment's nodes, counted by shape as they come and go) and
``IdleNodes`` (idle nodes indexed by placement group, for gangs) keep the scheduler's work
per change proportional to the change, not to the fleet (issue 22: 10,000 nodes).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Collection, Iterator
from typing import Any, Protocol

from sortedcontainers import SortedDict, SortedList

from hpcbatch.scheduler.gang import natural_key

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


# --------------------------------------------------------------- census and idle nodes
# A node's shape: what placement asks of it, and all that never changes on one node value
# (a node that changes re-registers as a new value): vCPUs, MiB, GPUs, usable GPUs, features.
Shape = tuple[float, int, int, int, frozenset[str]]


class ShapedNode(Protocol):
    name: str
    vcpus: float
    memory_mib: int
    gpus: int
    gpu_out: frozenset[int]
    features: frozenset[str]
    placement_group: str | None
    accepting: bool


def shape_of(n: ShapedNode) -> Shape:
    return (n.vcpus, n.memory_mib, n.gpus, n.gpus - len(n.gpu_out), n.features)


_MISSING = object()


class NodeCensus(dict[str, Any]):
    """A compute environment's nodes by name, and its accepting ones counted by (shape,
    placement group), kept as nodes come and go: O(1) per change, never rebuilt."""

    def __init__(self) -> None:
        super().__init__()
        self.census: dict[tuple[float, int, int, str | None, frozenset[str]], int] = {}

    @staticmethod
    def _key(n: ShapedNode) -> tuple[float, int, int, str | None, frozenset[str]]:
        return (n.vcpus, n.memory_mib, n.gpus - len(n.gpu_out), n.placement_group, n.features)

    def __setitem__(self, name: str, node: Any) -> None:
        self.pop(name, None)
        super().__setitem__(name, node)
        if node.accepting:
            key = self._key(node)
            self.census[key] = self.census.get(key, 0) + 1

    def pop(self, name: str, default: Any = None) -> Any:
        node = super().pop(name, _MISSING)
        if node is _MISSING:
            return default
        if node.accepting:
            key = self._key(node)
            left = self.census[key] - 1
            if left:
                self.census[key] = left
            else:
                del self.census[key]
        return node

    def __delitem__(self, name: str) -> None:
        if self.pop(name, _MISSING) is _MISSING:
            raise KeyError(name)


class IdleNodes(dict[str, Any]):
    """Idle accepting nodes by name, indexed by placement group: each group's nodes sorted
    smallest first (then by natural name), and counted by shape, so a gang's placement costs
    O(gang + shapes + reserved nodes), not a sort of every idle node."""

    def __init__(self) -> None:
        super().__init__()
        self._order: dict[str | None, SortedList] = {}  # group -> [(size, natural name, name)]
        self._shapes: dict[str | None, dict[Shape, int]] = {}  # group -> shape -> idle nodes
        self.with_gpus = 0  # idle nodes that have GPUs (steering applies only when some do)

    @staticmethod
    def _entry(n: ShapedNode) -> tuple[tuple[float, int, int], tuple[object, ...], str]:
        return ((n.vcpus, n.memory_mib, n.gpus), natural_key(n.name), n.name)

    def __setitem__(self, name: str, node: Any) -> None:
        if self.get(name) is node:
            return
        self.pop(name, None)
        super().__setitem__(name, node)
        group = node.placement_group
        self._order.setdefault(group, SortedList()).add(self._entry(node))
        shapes = self._shapes.setdefault(group, {})
        shape = shape_of(node)
        shapes[shape] = shapes.get(shape, 0) + 1
        if node.gpus:
            self.with_gpus += 1

    def pop(self, name: str, default: Any = None) -> Any:
        node = super().pop(name, _MISSING)
        if node is _MISSING:
            return default
        group = node.placement_group
        order = self._order[group]
        order.remove(self._entry(node))
        shapes = self._shapes[group]
        shape = shape_of(node)
        shapes[shape] -= 1
        if node.gpus:
            self.with_gpus -= 1
        if not shapes[shape]:
            del shapes[shape]
        if not order:
            del self._order[group], self._shapes[group]
        return node

    def __delitem__(self, name: str) -> None:
        if self.pop(name, _MISSING) is _MISSING:
            raise KeyError(name)

    def counts(self, fits: Callable[[Shape], bool], unusable: Collection[str]) -> dict[str | None, int]:
        """Idle nodes per placement group whose shape ``fits``, less the ``unusable`` ones."""
        counts = {g: sum(c for s, c in shapes.items() if fits(s)) for g, shapes in self._shapes.items()}
        for name in unusable:
            node = self.get(name)
            if node is not None and fits(shape_of(node)):
                counts[node.placement_group] -= 1
        return counts

    def pick(self, n: int, fits: Callable[[Shape], bool], unusable: Collection[str],
             require_group: bool) -> list[Any] | None:
        """``pick_nodes``' rule for ``n`` idle nodes (all free now): the placement group with
        the fewest fitting idle nodes that still holds the gang (then by name), else (no group
        required) any; smallest nodes first, then by name. In natural name order, or None."""
        counts = self.counts(fits, unusable)
        if sum(counts.values()) < n:
            return None
        options = [(c, g) for g, c in counts.items() if g is not None and c >= n]
        if options:
            pools = [self._order[min(options)[1]]]
        elif require_group:
            return None
        else:
            pools = list(self._order.values())
        chosen = []
        for _size, _natural, name in heapq.merge(*pools):
            node = self[name]
            if name not in unusable and fits(shape_of(node)):
                chosen.append(node)
                if len(chosen) == n:
                    break
        if len(chosen) < n:
            return None
        return sorted(chosen, key=lambda nd: natural_key(nd.name))
