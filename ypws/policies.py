"""Eviction policies as small in-memory caches: the specification the shared index follows.

In the style of cachetools: one ``Cache`` base class (a byte-bounded mapping that
calls ``popitem`` until a new item fits) and policies that override only the
item methods. The trace simulator runs these; ``ypws.index.Index`` keeps the same
segmented-LRU state in SQLite so every worker of a node shares it, and a test
replays one trace through both and expects identical hits and contents.

Segmented LRU with ``n`` segments (Huang et al., SOSP 2013, "S4LRU" for n=4):
a new item enters the head of segment 0; a hit moves it to the head of the next
segment up (the top one stays on top); each segment holds ``maxsize / n`` bytes,
and when one overflows its tail drops to the head of the segment below. The tail
of segment 0 leaves the cache. Plain LRU is the one-segment case.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import MutableMapping
from typing import Any, Callable, Iterator

#: policy name (config ``ypws.cache_policy``) -> number of segments
SEGMENTS = {"lru": 1, "s2lru": 2, "s4lru": 4}


def segments_for(policy: str) -> int:
    try:
        return SEGMENTS[policy]
    except KeyError:
        raise ValueError(f"unknown cache policy {policy!r}; one of {', '.join(SEGMENTS)}") from None


class Cache(MutableMapping):
    """A mapping bounded by the total ``getsizeof`` of its values (bytes by default)."""

    def __init__(self, maxsize: int, getsizeof: Callable[[Any], int] | None = None):
        self.maxsize = maxsize
        self.currsize = 0
        self._data: dict[Any, Any] = {}
        self._sizes: dict[Any, int] = {}
        if getsizeof is not None:
            self.getsizeof = getsizeof  # type: ignore[method-assign]

    @staticmethod
    def getsizeof(value: Any) -> int:
        return 1 if isinstance(value, (int, float)) else len(value)

    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        size = self.getsizeof(value)
        if size > self.maxsize:
            raise ValueError("value too large")
        if key in self._data:
            del self[key]
        while self.currsize + size > self.maxsize:
            self.popitem()
        self._data[key] = value
        self._sizes[key] = size
        self.currsize += size

    def __delitem__(self, key: Any) -> None:
        del self._data[key]
        self.currsize -= self._sizes.pop(key)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def popitem(self) -> tuple[Any, Any]:
        """Remove the item the policy would evict next (the base evicts arbitrarily)."""
        key = next(iter(self._data))
        value = self._data[key]
        del self[key]
        return key, value


class SegmentedLRUCache(Cache):
    """Segmented LRU; overrides the item methods and keeps one OrderedDict per segment."""

    def __init__(self, maxsize: int, segments: int = 4, getsizeof: Callable[[Any], int] | None = None):
        super().__init__(maxsize, getsizeof)
        self.segments = [OrderedDict() for _ in range(segments)]  # key -> None, tail first
        self.seg_bytes = [0] * segments
        self.seg_of: dict[Any, int] = {}
        self.capacity = maxsize // segments

    def __getitem__(self, key: Any) -> Any:
        value = self._data[key]
        self._promote(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        size = self.getsizeof(value)
        if size > self.capacity:
            raise ValueError("value too large for one segment")
        if key in self._data:
            del self[key]
        self._data[key] = value
        self._sizes[key] = size
        self.currsize += size
        self._place(key, 0)
        self._balance()

    def __delitem__(self, key: Any) -> None:
        seg = self.seg_of.pop(key)
        del self.segments[seg][key]
        self.seg_bytes[seg] -= self._sizes[key]
        super().__delitem__(key)

    def popitem(self) -> tuple[Any, Any]:
        """Evict the tail of the lowest non-empty segment."""
        for segment in self.segments:
            if segment:
                key = next(iter(segment))
                value = self._data[key]  # not self[key]: reading would count as a hit
                del self[key]
                return key, value
        raise KeyError("cache is empty")

    def touch(self, key: Any) -> None:
        """Record a hit without reading the value (what the shared index receives in batches)."""
        if key in self._data:
            self._promote(key)

    def _place(self, key: Any, seg: int) -> None:
        self.segments[seg][key] = None
        self.seg_bytes[seg] += self._sizes[key]
        self.seg_of[key] = seg

    def _promote(self, key: Any) -> None:
        seg = self.seg_of[key]
        del self.segments[seg][key]
        self.seg_bytes[seg] -= self._sizes[key]
        self._place(key, min(seg + 1, len(self.segments) - 1))
        self._balance()

    def _balance(self) -> None:
        """Demote overflowing tails one segment down, top first; evict from segment 0."""
        for seg in range(len(self.segments) - 1, 0, -1):
            while self.seg_bytes[seg] > self.capacity:
                key = next(iter(self.segments[seg]))
                del self.segments[seg][key]
                self.seg_bytes[seg] -= self._sizes[key]
                self._place(key, seg - 1)
        while self.seg_bytes[0] > self.capacity:
            self.popitem()


class LRUCache(SegmentedLRUCache):
    def __init__(self, maxsize: int, getsizeof: Callable[[Any], int] | None = None):
        super().__init__(maxsize, 1, getsizeof)


class S4LRUCache(SegmentedLRUCache):
    def __init__(self, maxsize: int, getsizeof: Callable[[Any], int] | None = None):
        super().__init__(maxsize, 4, getsizeof)


def make_cache(policy: str, maxsize: int, getsizeof: Callable[[Any], int] | None = None) -> SegmentedLRUCache:
    """The in-memory cache for a policy name of the config."""
    return SegmentedLRUCache(maxsize, segments_for(policy), getsizeof)
