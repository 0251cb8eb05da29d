"""Which nodes may hold a key outside its first ``purge_fanout`` choices (bounded-load spill, failover).

PURGE must reach every node that may have cached a URL. The first
``purge_fanout`` nodes of the key's order are always purged; a node further down
is purged only if it is marked here. Each node has a byte map indexed by a hash
of the routing key (a one-hash Bloom filter): a false positive costs one extra
PURGE, and there are no false negatives. The maps are files under
``{data_dir}/hashproxy/`` mapped MAP_SHARED, so every worker sees every mark and
the knowledge survives a proxy restart (a node's cache does too). A byte store
is atomic, so workers mark without locks.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Sequence

import xxhash

SLOTS = 1 << 20  # 1 MiB per node; ~1e5 spilled keys per node keep false positives under 10%


class SpillMap:
    def __init__(self, names: Sequence[str], directory: Path | None = None, slots: int = SLOTS):
        assert slots & (slots - 1) == 0, "slots must be a power of two"
        self.names = tuple(names)
        self._mask = slots - 1
        self._maps: list[mmap.mmap] = []
        for name in self.names:
            if directory is None:
                self._maps.append(mmap.mmap(-1, slots))
                continue
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(directory / f"spill-{name}.bin", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size != slots:
                    os.ftruncate(fd, slots)
                self._maps.append(mmap.mmap(fd, slots))
            finally:
                os.close(fd)

    def _slot(self, key: str) -> int:
        return xxhash.xxh64_intdigest(key.encode()) & self._mask

    def mark(self, node: int, key: str) -> None:
        self._maps[node][self._slot(key)] = 1

    def nodes(self, key: str) -> list[int]:
        slot = self._slot(key)
        return [i for i, m in enumerate(self._maps) if m[slot]]
