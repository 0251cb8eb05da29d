"""Rendezvous (highest-random-weight) hashing with xxhash: each key's order of the nodes.

The cluster's one hash ring: hashproxy orders the cache nodes per image URL with it,
and magickd's client orders the render nodes per photo id.

Why rendezvous and not a ketama ring with virtual nodes:

* Every key gets a full *order* of the nodes, not just an owner. Bounded loads
  ("hand the URL to the next node in that URL's order"), failover of a dead
  node and rejoin ramp-up all walk that order, so one mechanism serves all of
  them.
* Minimal disruption is exact: a node's score for a key does not depend on the
  other nodes, so removing a node moves exactly the keys it owned (each to its
  own next choice, spread evenly over the survivors) and adding one moves only
  the keys it now wins, about 1/N of them, taken evenly from every node.
* Shares are even without tuning: with N independent scores per key each node
  owns 1/N in expectation; a ketama ring needs 100-200 virtual points per node
  to get within a few percent, and its next-choice spread is lumpier.
* The cost, N hashes per key, is what a ring's O(log V) lookup buys off only at
  hundreds of nodes; a cache node costs RAM and disk, so we have a handful. The
  order is memoised per key anyway (hot URLs repeat).

Nodes are identified by *name*, not address: moving a node to another port or
host keeps its share. Every process computes the same orders from the same
names, so the mapping is identical across workers and restarts.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import xxhash

_MEMO_MAX = 200_000
_TWO64 = float(1 << 64)


class Ring:
    """The static rendezvous order of ``names`` for any key (health and load are not its business)."""

    def __init__(self, names: Sequence[str]):
        if not names:
            raise ValueError("a ring needs at least one node")
        if len(set(names)) != len(names):
            raise ValueError("node names must be unique")
        self.names: tuple[str, ...] = tuple(names)
        self._seeds = tuple(xxhash.xxh64_intdigest(n.encode()) for n in self.names)
        # an independent draw per (node, key) for the ramp-up admission test
        self._ramp_seeds = tuple(xxhash.xxh64_intdigest(b"ramp\0" + n.encode()) for n in self.names)
        self.order = lru_cache(maxsize=_MEMO_MAX)(self._order)  # hot URLs repeat

    def __len__(self) -> int:
        return len(self.names)

    def _order(self, key: str) -> tuple[int, ...]:
        """Node indices from the key's first choice to its last (``order``, memoised)."""
        data = key.encode()
        scored = sorted(((xxhash.xxh64_intdigest(data, seed), i) for i, seed in enumerate(self._seeds)), reverse=True)
        return tuple(i for _, i in scored)

    def owner(self, key: str) -> str:
        return self.names[self.order(key)[0]]

    def order_names(self, key: str) -> list[str]:
        return [self.names[i] for i in self.order(key)]

    def admits(self, node: int, key: str, fraction: float) -> bool:
        """Ramp-up: whether a node at ``fraction`` of its share takes this key.

        The draw is per (node, key) and fixed, so as the fraction grows the set of
        admitted keys only grows: keys move to a rejoining node once, never back and forth.
        """
        if fraction >= 1.0:
            return True
        return xxhash.xxh64_intdigest(key.encode(), self._ramp_seeds[node]) < fraction * _TWO64
