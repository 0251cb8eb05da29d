"""Per-node figures every worker must see at once: in-flight requests, and up as each worker sees it.

One anonymous shared mmap is made by the supervisor before it forks, so every
worker sees the same memory. Each worker writes only its own row (no locks, no
lost updates: one writer per cell); readers sum the rows. That makes the
bounded-load check use the *cluster-wide* in-flight count of each node, not one
worker's guess, at the price of W memory reads per node (W is 2-8). A worker
that dies has its row zeroed before its replacement starts, so its in-flight
requests do not count for ever. Only what routing and health need across workers lives
here; the per-node request, error, retry and spill counts are metrics only and stay in
each worker until pushed to prometheus (tallies.py).
"""

from __future__ import annotations

import mmap
from typing import Sequence

FIELDS = ("inflight", "up")
INFLIGHT, UP = range(len(FIELDS))
_NF = len(FIELDS)


class SharedCounters:
    """A workers x nodes x fields table of int64 in shared memory."""

    def __init__(self, workers: int, nodes: Sequence[str]):
        self.workers = workers
        self.nodes = tuple(nodes)
        size = max(workers * len(self.nodes) * _NF * 8, mmap.PAGESIZE)
        self._mm = mmap.mmap(-1, size)  # MAP_SHARED | MAP_ANONYMOUS: inherited across fork
        self.cells = memoryview(self._mm).cast("q")

    def index(self, worker: int, node: int, field: int) -> int:
        return (worker * len(self.nodes) + node) * _NF + field

    def reset_worker(self, worker: int) -> None:
        for node in range(len(self.nodes)):
            for f in range(_NF):
                self.cells[self.index(worker, node, f)] = 0

    def total(self, node: int, field: int) -> int:
        return sum(self.cells[self.index(w, node, field)] for w in range(self.workers))

    def role(self, worker: int, first: int, count: int) -> "RoleCounters":
        return RoleCounters(self, worker, first, count)


class RoleCounters:
    """One worker's window on one role's nodes (node 0 is the role's first node)."""

    __slots__ = ("cells", "_mine", "_all")

    def __init__(self, shared: SharedCounters, worker: int, first: int, count: int):
        self.cells = shared.cells
        self._mine = [shared.index(worker, first + i, 0) for i in range(count)]
        self._all = [tuple(shared.index(w, first + i, INFLIGHT) for w in range(shared.workers)) for i in range(count)]

    def add(self, node: int, field: int, delta: int = 1) -> None:
        self.cells[self._mine[node] + field] += delta

    def set(self, node: int, field: int, value: int) -> None:
        self.cells[self._mine[node] + field] = value

    def all_inflight(self) -> list[int]:
        """In-flight requests of every node of the role, summed over every worker."""
        cells = self.cells
        return [sum([cells[j] for j in idx]) for idx in self._all]

    def inflight(self, node: int) -> int:
        """Requests in flight to this node, summed over every worker."""
        cells = self.cells
        return sum([cells[j] for j in self._all[node]])


def local_counters(nodes: Sequence[str]) -> SharedCounters:
    """Counters for a single process (tests, the `route` command)."""
    return SharedCounters(1, nodes)
