"""Counter and latency deltas of one process, merged into the shared index in batches.

Each worker counts in memory (a dict increment per event) and the cache flushes
the deltas with its hit batch, so the hit path never writes to disk; /metrics
reads the node-wide totals from the index, whichever worker serves it.
Histograms are stored as per-bucket counts under ``{name}:le={bound}`` plus
``{name}:sum`` and ``{name}:count``.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

#: latency buckets (seconds) for storage reads and renders
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Stats:
    def __init__(self) -> None:
        self._deltas: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def inc(self, name: str, value: float = 1) -> None:
        with self._lock:
            self._deltas[name] += value

    def observe(self, name: str, seconds: float) -> None:
        i = bisect.bisect_left(BUCKETS, seconds)
        bound = BUCKETS[i] if i < len(BUCKETS) else "+Inf"
        with self._lock:
            self._deltas[f"{name}:le={bound}"] += 1
            self._deltas[f"{name}:sum"] += seconds
            self._deltas[f"{name}:count"] += 1

    def drain(self) -> dict[str, float]:
        """The deltas since the last drain (and forget them)."""
        with self._lock:
            out, self._deltas = dict(self._deltas), defaultdict(float)
        return out

    def restore(self, deltas: dict[str, float]) -> None:
        """Put back deltas a failed flush could not store (they go with the next one)."""
        with self._lock:
            for name, value in deltas.items():
                self._deltas[name] += value

    def peek(self) -> dict[str, float]:
        """The deltas not yet flushed (left in place)."""
        with self._lock:
            return dict(self._deltas)

    def pending(self) -> bool:
        return bool(self._deltas)


def histogram_buckets(totals: dict[str, float], name: str) -> tuple[list[tuple[str, float]], float, float]:
    """Cumulative (le, count) pairs, sum and count of one stored histogram."""
    cumulative, running = [], 0.0
    for bound in (*BUCKETS, "+Inf"):
        running += totals.get(f"{name}:le={bound}", 0.0)
        cumulative.append((str(float(bound)) if bound != "+Inf" else "+Inf", running))
    return cumulative, totals.get(f"{name}:sum", 0.0), totals.get(f"{name}:count", 0.0)
