"""The node's Prometheus metrics: counted cheaply per request, handed to prometheus-client in batches.

One route for every service of the cluster: prometheus-client, in multiprocess mode
under ``ypws serve``. The master points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh
``<data_dir>/metrics/ypws-<node>`` before any worker forks; each worker writes its
own files there and /metrics merges every worker's, whichever worker answers. The
files of a dead worker stay (the master marks it dead), so what it pushed before
dying still counts. Counters start again from zero when the node (its master)
restarts: the usual Prometheus counter semantics, which ``rate()`` and ``increase()``
handle.

The hit path stays cheap: a multiprocess ``Counter.inc`` costs 2.5-3.5 µs (it writes
the worker's mmap file) against a ~4.5 µs cache hit, so a request only adds to a dict
(``inc``), and the deltas go to the prometheus counters in one batch (``push``) at
the cache's flush points (with its hit batch, every ``ypws`` flush interval) and
before /metrics answers: a scrape sees the answering worker's figures up to date and
the others' at most one flush interval old. The latency histograms are observed
directly (``observe``): they are on the miss path only, where a storage read or a
render costs milliseconds.

The cache gauges (bytes, entries, size bound, degraded) are node-wide state, read from
the shared index when /metrics is scraped (``CacheGauges``), not per-worker figures.
Outside ``ypws serve`` (in-process tests) each ``NodeMetrics`` keeps its own registry.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

COUNTERS = {
    "hits": "Image requests answered from this node's cache (304s included)",
    "misses": "Image requests that had to fill the cache from storage or magickd",
    "bytes_served": "Image body bytes sent (200 and 206)",
    "not_modified": "304 answers",
    "fills": "Entries written to the cache",
    "not_admitted": "Misses served but not kept: the cache policy's admission rule (AdaptSize) turned them away",
    "evictions": "Entries evicted by the cache policy",
    "purged": "Entries removed by PURGE",
    "renders": "On-demand renders requested from magickd",
    "hotlinked": "Requests refused or given the placeholder by hotlink protection",
    "corrupt": "Cache entries found damaged (or unreadable) and dropped",
    "write_failures": "Cache writes (entries, temp files, index, locks) that failed: disk full or failing",
    "bypassed": "Fills served without caching because the cache disk was full or failing",
}
HISTOGRAMS = {
    "origin_seconds": "Storage read latency on a cache miss",
    "render_seconds": "magickd render latency on a missing rendition",
}
#: latency buckets (seconds) for storage reads and renders
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
GAUGES = {
    "bytes": "Bytes held by the cache",
    "entries": "Entries held by the cache",
    "max_bytes": "The cache's size bound",
    "degraded": "1 while the cache takes no new entries (disk full, or a write failed lately)",
}


class NodeMetrics:
    """One process's counters and histograms of one node (``node`` label)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.registry = CollectorRegistry()  # what an in-process scrape reads (multiprocess: the files)
        self._counters = {name: Counter(f"ypws_{name}", doc, ["node"], registry=self.registry).labels(node)
                          for name, doc in COUNTERS.items()}
        self._histograms = {name: Histogram(f"ypws_{name}", doc, ["node"], registry=self.registry,
                                            buckets=BUCKETS).labels(node)
                            for name, doc in HISTOGRAMS.items()}
        self._deltas: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def inc(self, name: str, value: float = 1) -> None:
        """Count an event (a dict addition: cheap enough for the hit path); ``push`` publishes it."""
        with self._lock:
            self._deltas[name] += value

    def observe(self, name: str, seconds: float) -> None:
        """Record a miss-path latency (``origin_seconds``, ``render_seconds``) straight away."""
        self._histograms[name].observe(seconds)

    def push(self) -> None:
        """Add the counts since the last push to the prometheus counters (one ``inc`` per name)."""
        with self._lock:
            if not self._deltas:
                return
            deltas, self._deltas = self._deltas, defaultdict(float)
        for name, value in deltas.items():
            self._counters[name].inc(value)

    def peek(self) -> dict[str, float]:
        """The counts not pushed yet (left in place)."""
        with self._lock:
            return dict(self._deltas)


class CacheGauges:
    """A collector of the cache's node-wide figures (``DiskCache.totals()``), read at scrape time."""

    def __init__(self, totals: dict[str, float], node: str) -> None:
        self.totals = totals
        self.node = node

    def collect(self) -> Iterator[Metric]:
        for name, doc in GAUGES.items():
            family = GaugeMetricFamily(f"ypws_cache_{name}", doc, labels=["node"])
            family.add_metric([self.node], self.totals.get(name, 0))
            yield family
