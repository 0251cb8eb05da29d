"""Cache policies as small in-memory caches: the specification the shared index follows.

In the style of cachetools: one ``Cache`` base class (a byte-bounded mapping that
calls ``popitem`` until a new item fits) and policies that override only the
item methods. The trace replay (``ypws.simulate``) runs these; ``ypws.index``
keeps the same state in SQLite so every worker of a node shares it, and a test
replays one trace through both and expects identical hits and contents.

Every policy has the same contract: ``key in cache`` (no side effect),
``touch(key)`` (a hit), ``admits(key, size)`` (asked once per miss, before a fill),
``cache[key] = value`` (a fill), ``popitem()`` (the next eviction), ``currsize``
never above ``maxsize``.

Eviction:

* Segmented LRU with ``n`` segments (Huang et al., SOSP 2013, "S4LRU" for n=4):
  a new item enters the head of segment 0; a hit moves it to the head of the next
  segment up; each segment holds ``maxsize / n`` bytes, and when one overflows its
  tail drops to the head of the segment below. Plain LRU is the one-segment case.
  Nothing larger than a segment is admitted.
* SIEVE (Zhang et al., NSDI 2024): one FIFO with a visited bit per item; a hand
  walks from the oldest item toward the newest, clearing set bits and evicting the
  first item whose bit is clear.
* S3-FIFO (Yang et al., SOSP 2023): a small FIFO (10% of the bytes) that new items
  enter, a main FIFO, and a ghost FIFO of recently dropped keys (as many as the
  cache holds entries). An item leaving the small FIFO moves to main if it was hit
  there, else it is dropped and its key remembered; a miss on a remembered key goes
  straight to main. Main re-inserts an item that was hit (spending one of at most 3
  credits) instead of evicting it.

Admission, asked once per miss before a fill:

* ``+adaptsize``: AdaptSize (Berger et al., NSDI 2017) admits a missed object of ``size``
  bytes with probability ``exp(-size / c)``, so small renditions nearly always get in, and
  a large original only once it has been asked for a few times, instead of flushing
  hundreds of thumbnails on its first request. Here ``c`` is a fixed fraction of the cache
  (not AdaptSize's tuned one), and the coin is the xxh3 of the key and the number of
  admission decisions so far, so the in-memory policy and the shared index draw the same
  coins for the same request stream. Measured on World Cup 98, when a 1.27 MB file asked
  for 180 times gets in is luck, and the luck moves the byte hit ratio by several points.
* ``+nthmiss`` (the default's): the same size rule without the coin. An object is admitted
  on its n-th miss, n = ``exp(size / c)`` rounded (AdaptSize's expected wait for the coin),
  so everything below ``c * ln 1.5`` gets in on its first miss and a large file on a
  predictable later one. The misses of keys not (yet) admitted are counted in a FIFO of at
  most ``NTHMISS_MEMORY`` keys (only objects larger than ``c * ln 1.5`` ever enter it), so
  a large file asked for often gets in deterministically and a large one-hit wonder never.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import MutableMapping
from typing import Any, Callable, Iterator

import xxhash

#: segmented-LRU policy names -> number of segments
SEGMENTS = {"lru": 1, "s2lru": 2, "s4lru": 4}
#: every policy the replay knows (eviction, optionally "+adaptsize" or "+nthmiss" admission)
EVICTIONS = (*SEGMENTS, "sieve", "s3fifo")
ADMISSIONS = ("adaptsize", "nthmiss")
POLICIES = (*EVICTIONS, *(f"{e}+{a}" for a in ADMISSIONS for e in EVICTIONS))
#: AdaptSize's c as a fraction of the cache's bytes (measured: bench/bench_cache.py)
ADAPTSIZE_C = 0.1
#: nth-miss admission: its c as a fraction of the cache's bytes, and how many not-admitted
#: keys it remembers (measured: bench/bench_cache.py, which shows 0.14 and 0.17 missing the goal on World Cup)
NTHMISS_C = 0.15
NTHMISS_MEMORY = 1024
#: S3-FIFO: the small FIFO's share of the bytes, and the most credits a main item holds
S3FIFO_SMALL = 0.1
S3FIFO_MAX_FREQ = 3


def split_policy(policy: str) -> tuple[str, str]:
    """(eviction name, admission name or "" for admit-all); ValueError for an unknown name."""
    if policy not in POLICIES:
        raise ValueError(f"unknown cache policy {policy!r}; one of {', '.join(POLICIES)}")
    eviction, _, admission = policy.partition("+")
    return eviction, admission


def adaptsize_admits(key: Any, size: int, decision: int, c: float, salt: str = "") -> bool:
    """AdaptSize's coin for the ``decision``-th admission decision: P(admit) = exp(-size/c).
    The shared index uses no ``salt``; the benchmark varies it to show the coins' noise."""
    draw = xxhash.xxh3_64_intdigest(f"{key}\0{decision}{salt}".encode()) / 2.0**64
    return draw < math.exp(-size / c)


def nthmiss_needed(size: int, c: float) -> int:
    """On which miss nth-miss admission lets an object of ``size`` in: exp(size/c), rounded."""
    return max(1, math.floor(math.exp(min(size / c, 40.0)) + 0.5))


class Cache(MutableMapping):
    """A mapping bounded by the total ``getsizeof`` of its values (bytes by default)."""

    def __init__(self, maxsize: int, getsizeof: Callable[[Any], int] | None = None):
        self.maxsize = maxsize
        self.currsize = 0
        self._data: dict[Any, Any] = {}
        self._sizes: dict[Any, int] = {}
        self.adaptsize_c: float | None = None  # AdaptSize admission off
        self.nthmiss_c: float | None = None    # nth-miss admission off
        self.rejected: OrderedDict[Any, int] = OrderedDict()  # nth-miss: key -> misses so far, oldest first
        self.decisions = 0  # admission decisions so far (the coin's counter)
        self.coin_salt = ""
        if getsizeof is not None:
            self.getsizeof = getsizeof  # type: ignore[method-assign]

    @property
    def max_entry(self) -> int:
        """The largest item the policy can hold."""
        return self.maxsize

    def admits(self, key: Any, size: int) -> bool:
        """Whether a missed item of ``size`` is filled (call once per miss, before the fill)."""
        if size > self.max_entry:
            return False
        if self.adaptsize_c is None and self.nthmiss_c is None:
            return True
        self.decisions += 1
        if self.adaptsize_c is not None:
            return adaptsize_admits(key, size, self.decisions, self.adaptsize_c, self.coin_salt)
        misses = self.rejected.get(key, 0) + 1
        if misses >= nthmiss_needed(size, self.nthmiss_c):
            self.rejected.pop(key, None)
            return True
        self.rejected[key] = misses  # a key remembered keeps its place: a FIFO of first misses
        while len(self.rejected) > NTHMISS_MEMORY:
            self.rejected.popitem(last=False)
        return False

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

    def touch(self, key: Any) -> None:
        """Record a hit without reading the value (what the shared index receives in batches)."""

    def peek(self, key: Any) -> Any:
        """The value, without counting a hit."""
        return self._data[key]

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

    @property
    def max_entry(self) -> int:
        return self.capacity

    def __getitem__(self, key: Any) -> Any:
        value = self._data[key]
        self._promote(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        size = self.getsizeof(value)
        if size > self.max_entry:
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


class SieveCache(Cache):
    """SIEVE: insertion order plus a visited bit; a hit only sets the bit."""

    def __init__(self, maxsize: int, getsizeof: Callable[[Any], int] | None = None):
        super().__init__(maxsize, getsizeof)
        self._queue: list[Any] = []        # keys, oldest first; None where one was removed
        self._pos: dict[Any, int] = {}
        self.visited: dict[Any, bool] = {}
        self._hand = 0                      # the next queue slot the hand looks at

    def __getitem__(self, key: Any) -> Any:
        value = self._data[key]
        self.visited[key] = True
        return value

    def touch(self, key: Any) -> None:
        if key in self._data:
            self.visited[key] = True

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self._pos[key] = len(self._queue)
        self._queue.append(key)
        self.visited[key] = False

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self._queue[self._pos.pop(key)] = None
        del self.visited[key]

    def popitem(self) -> tuple[Any, Any]:
        if not self._data:
            raise KeyError("cache is empty")
        while True:
            if self._hand >= len(self._queue):  # wrap to the oldest, dropping the holes
                self._queue = [k for k in self._queue if k is not None]
                self._pos = {k: i for i, k in enumerate(self._queue)}
                self._hand = 0
            key = self._queue[self._hand]
            self._hand += 1
            if key is None:
                continue
            if self.visited[key]:
                self.visited[key] = False
                continue
            value = self._data[key]
            del self[key]
            return key, value


class S3FIFOCache(Cache):
    """S3-FIFO: small and main FIFOs (oldest first) and a ghost FIFO of keys."""

    def __init__(self, maxsize: int, getsizeof: Callable[[Any], int] | None = None):
        super().__init__(maxsize, getsizeof)
        self.small: OrderedDict[Any, None] = OrderedDict()
        self.main: OrderedDict[Any, None] = OrderedDict()
        self.ghost: OrderedDict[Any, None] = OrderedDict()
        self.freq: dict[Any, int] = {}
        self.small_bytes = self.main_bytes = 0
        self.small_target = int(maxsize * S3FIFO_SMALL)

    def __getitem__(self, key: Any) -> Any:
        value = self._data[key]
        self.touch(key)
        return value

    def touch(self, key: Any) -> None:
        if key in self.freq:
            self.freq[key] = min(self.freq[key] + 1, S3FIFO_MAX_FREQ)

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)  # evicts (popitem) until it fits
        size = self._sizes[key]
        if key in self.ghost:
            del self.ghost[key]
            self.main[key] = None
            self.main_bytes += size
        else:
            self.small[key] = None
            self.small_bytes += size
        self.freq[key] = 0

    def __delitem__(self, key: Any) -> None:
        size = self._sizes[key]
        super().__delitem__(key)
        del self.freq[key]
        if key in self.small:
            del self.small[key]
            self.small_bytes -= size
        else:
            del self.main[key]
            self.main_bytes -= size

    def popitem(self) -> tuple[Any, Any]:
        while True:
            if self.small_bytes > self.small_target or not self.main_bytes:
                if not self.small:
                    raise KeyError("cache is empty")
                key = next(iter(self.small))
                if self.freq[key] >= 1:  # hit while in small: on to main, credits spent
                    del self.small[key]
                    size = self._sizes[key]
                    self.small_bytes -= size
                    self.main[key] = None
                    self.main_bytes += size
                    self.freq[key] = 0
                    continue
                value = self._data[key]
                del self[key]
                self.ghost[key] = None
                while len(self.ghost) > len(self._data):  # as many keys as the cache holds entries
                    self.ghost.popitem(last=False)
                return key, value
            key = next(iter(self.main))
            if self.freq[key] > 0:  # hit while in main: one more round
                self.freq[key] -= 1
                self.main.move_to_end(key)
                continue
            value = self._data[key]
            del self[key]
            return key, value


def make_cache(policy: str, maxsize: int, getsizeof: Callable[[Any], int] | None = None) -> Cache:
    """The in-memory cache for a policy name (``ypws.cache_policy``, or any of ``POLICIES``)."""
    eviction, admission = split_policy(policy)
    if eviction in SEGMENTS:
        cache: Cache = SegmentedLRUCache(maxsize, SEGMENTS[eviction], getsizeof)
    else:
        cache = {"sieve": SieveCache, "s3fifo": S3FIFOCache}[eviction](maxsize, getsizeof)
    if admission == "adaptsize":
        cache.adaptsize_c = ADAPTSIZE_C * maxsize
    elif admission == "nthmiss":
        cache.nthmiss_c = NTHMISS_C * maxsize
    return cache
