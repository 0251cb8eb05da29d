"""/metrics: the node's figures in Prometheus text format, read from the shared cache index.

Counters live in the index (each worker adds its deltas in batches, see
``ypws.stats``), so any worker answers for the whole node and the figures
survive worker restarts; no prometheus multiprocess folder is needed.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .stats import histogram_buckets

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


class _Snapshot:
    def __init__(self, totals: dict[str, float], node: str):
        self.totals = totals
        self.node = node

    def collect(self):
        t, labels = self.totals, [self.node]
        for name, doc in COUNTERS.items():
            family = CounterMetricFamily(f"ypws_{name}", doc, labels=["node"])
            family.add_metric(labels, t.get(name, 0.0))
            yield family
        for name, doc in (("bytes", "Bytes held by the cache"), ("entries", "Entries held by the cache"),
                          ("max_bytes", "The cache's size bound"),
                          ("degraded", "1 while the cache takes no new entries (disk full, or a write failed lately)")):
            family = GaugeMetricFamily(f"ypws_cache_{name}", doc, labels=["node"])
            family.add_metric(labels, t.get(name, 0))
            yield family
        for name, doc in HISTOGRAMS.items():
            buckets, total, _count = histogram_buckets(t, name)
            family = HistogramMetricFamily(f"ypws_{name}", doc, labels=["node"])
            family.add_metric(labels, buckets, total)
            yield family


def exposition(totals: dict[str, float], node: str) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(totals, node))
    return generate_latest(registry), CONTENT_TYPE_LATEST
