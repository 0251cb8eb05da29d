"""Which nodes may hold a key outside its first ``purge_fanout`` choices (bounded-load spill, failover).

PURGE must reach every node that may have cached a URL. The first
``purge_fanout`` nodes of the key's order are always purged; a node further down
is purged only if it is marked here. Each node has byte maps indexed by a hash
of the routing key (a one-hash Bloom filter): a false positive costs one extra
PURGE. The maps are files under ``{data_dir}/hashproxy/`` mapped MAP_SHARED, so
every worker sees every mark and the knowledge survives a proxy restart (a
node's cache does too). A byte store is atomic, so workers mark without locks.

Marks age by generations, so false positives do not grow for ever: each node
has two maps, the current one (marked) and the previous one (still consulted).
When the current one has ``rotate_fill`` of its slots marked, the previous one
is cleared and becomes current. A mark thus lives one to two generations (at
least ~5e4 newer spilled keys of that node at the defaults), and a key that
keeps being served there is marked again in each new generation; one not served
there for a whole generation has gone cold on that node, where its cache's LRU
evicts it, and forgetting it only risks one stale copy of a long-unserved URL.
False positives stay under about 2 x ``rotate_fill``.

File layout per node: current/previous maps (``slots`` bytes each), then two
int64: the generation (its low bit picks the current map) and the current
map's fill count (updated without locks, so approximate: it only paces
rotation). A rotation takes a flock on the file. An old single-map file is
extended in place; its marks become generation 0.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Sequence

import xxhash

from cluster.locks import try_flock

SLOTS = 1 << 20     # 1 MiB per map and node
ROTATE_FILL = 0.05  # a generation ends when 5% of its slots are marked (~5e4 keys at SLOTS)
_HEAD = 16          # generation, fill count


class SpillMap:
    def __init__(self, names: Sequence[str], directory: Path | None = None, slots: int = SLOTS,
                 rotate_fill: float = ROTATE_FILL):
        assert slots & (slots - 1) == 0, "slots must be a power of two"
        self.names = tuple(names)
        self._slots = slots
        self._mask = slots - 1
        self._limit = max(1, int(slots * rotate_fill))
        size = 2 * slots + _HEAD
        self._maps: list[mmap.mmap] = []
        self._heads: list[memoryview] = []
        self._files: list[Path | None] = []
        for name in self.names:
            if directory is None:
                mm, path = mmap.mmap(-1, size), None
            else:
                directory.mkdir(parents=True, exist_ok=True)
                path = directory / f"spill-{name}.bin"
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    if os.fstat(fd).st_size != size:
                        os.ftruncate(fd, size)
                    mm = mmap.mmap(fd, size)
                finally:
                    os.close(fd)
            self._maps.append(mm)
            self._heads.append(memoryview(mm)[2 * slots:].cast("q"))
            self._files.append(path)

    def _slot(self, key: str) -> int:
        return xxhash.xxh64_intdigest(key.encode()) & self._mask

    def generation(self, node: int) -> int:
        return self._heads[node][0]

    def mark(self, node: int, key: str) -> None:
        m, head = self._maps[node], self._heads[node]
        at = (head[0] & 1) * self._slots + self._slot(key)
        if m[at]:
            return
        m[at] = 1
        head[1] += 1
        if head[1] >= self._limit:
            self._rotate(node)

    def nodes(self, key: str) -> list[int]:
        slot = self._slot(key)
        other = self._slots + slot
        return [i for i, m in enumerate(self._maps) if m[slot] or m[other]]

    def _rotate(self, node: int) -> None:
        """Start a new generation: clear the previous map and make it current (one process at a time)."""
        path = self._files[node]
        fd = try_flock(path, 0o600) if path is not None else None
        if path is not None and fd is None:
            return  # another worker is rotating this node
        try:
            head = self._heads[node]
            if head[1] < self._limit:
                return  # rotated meanwhile
            start = ((head[0] + 1) & 1) * self._slots
            self._maps[node][start:start + self._slots] = bytes(self._slots)
            head[1] = 0
            head[0] += 1
        finally:
            if fd is not None:
                os.close(fd)
