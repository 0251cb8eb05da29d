"""A pure-Python trace replay: object and byte hit ratios of cache policies on one request trace.

The benchmark (bench/bench_cache.py) replays the real traces of ``ypws.traces``
and a synthetic Zipf trace through every policy of ``ypws.policies`` at the same
byte size, so the default policy rests on measured differences, not on papers.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .policies import Cache, make_cache


@dataclass(frozen=True)
class TraceResult:
    policy: str
    requests: int
    hits: int
    bytes_requested: int
    bytes_hit: int

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def byte_hit_ratio(self) -> float:
        return self.bytes_hit / self.bytes_requested if self.bytes_requested else 0.0


def object_sizes(n: int, seed: int = 1, median: int = 30_000) -> list[int]:
    """Per-object sizes: log-normal around a ~30 KB thumbnail, 2 KB .. 1 MB."""
    rng = random.Random(seed)
    return [max(2_000, min(1_000_000, int(rng.lognormvariate(0, 0.6) * median))) for _ in range(n)]


def zipf_trace(n_objects: int, n_requests: int, alpha: float = 0.9, seed: int = 1) -> list[int]:
    """Object ids 0..n-1 drawn with P(rank k) ~ 1/k^alpha; ranks shuffled over ids."""
    rng = random.Random(seed)
    weights = [1.0 / (k ** alpha) for k in range(1, n_objects + 1)]
    cumulative = list(itertools.accumulate(weights))
    total = cumulative[-1]
    ids = list(range(n_objects))
    rng.shuffle(ids)  # popularity unrelated to id order
    return [ids[bisect.bisect_left(cumulative, rng.random() * total)] for _ in range(n_requests)]


def replay(policy: str, maxsize: int, trace: Iterable[int], sizes: Sequence[int], coin_salt: str = "") -> TraceResult:
    """Look each request up; on a miss, fill it if the policy admits it (as a cache node does).
    ``coin_salt`` draws AdaptSize's coins from another stream (the benchmark's noise band)."""
    cache = make_cache(policy, maxsize, getsizeof=int)  # the value stored is the object's size
    cache.coin_salt = coin_salt
    requests = hits = bytes_requested = bytes_hit = 0
    for obj in trace:
        size = sizes[obj]
        requests += 1
        bytes_requested += size
        if access(cache, obj, size):
            hits += 1
            bytes_hit += size
    return TraceResult(policy, requests, hits, bytes_requested, bytes_hit)


def access(cache: Cache, obj: Any, size: int) -> bool:
    """One request: True on a hit; on a miss, fill if the policy admits it."""
    if obj in cache:
        cache.touch(obj)
        return True
    if cache.admits(obj, size):
        cache[obj] = size
    return False


def compare(policies: Sequence[str], maxsize: int, trace: Sequence[int], sizes: Sequence[int]) -> list[TraceResult]:
    """Each policy on the same trace and byte budget."""
    return [replay(p, maxsize, trace, sizes) for p in policies]
