"""/metrics: per-node requests, errors, retries, spills, in-flight and URL share, in Prometheus text format.

Counters come from the shared table (loads.py), so any worker's /metrics shows
the whole proxy. ``hashproxy_node_url_share`` is the fraction of image-URL space
each ypws node owns now (health and ramp-up included), sampled over 2048
synthetic keys at scrape time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .loads import ERRORS, INFLIGHT, REQUESTS, RETRIES, SPILLS, UP

if TYPE_CHECKING:
    from .app import ProxyApp


class ProxyCollector:
    def __init__(self, app: "ProxyApp"):
        self.app = app

    def collect(self) -> Iterator[Metric]:
        app, shared = self.app, self.app.shared
        labels = ["role", "node"]
        fams = {
            REQUESTS: CounterMetricFamily("hashproxy_upstream_requests", "Requests sent to the node", labels=labels),
            ERRORS: CounterMetricFamily("hashproxy_upstream_errors",
                                        "Failed requests to the node (connect, timeout, reset, 5xx)", labels=labels),
            RETRIES: CounterMetricFamily("hashproxy_upstream_retries", "Requests retried on this node after a failure elsewhere",
                                         labels=labels),
            SPILLS: CounterMetricFamily("hashproxy_upstream_spills",
                                        "Image requests this node got while not the URL's first choice (spill, failover)",
                                        labels=labels),
            INFLIGHT: GaugeMetricFamily("hashproxy_upstream_in_flight", "Requests in flight to the node", labels=labels),
        }
        up = GaugeMetricFamily("hashproxy_node_up", "Workers that see the node up", labels=labels)
        share = GaugeMetricFamily("hashproxy_node_url_share", "Fraction of image URLs the node owns now",
                                  labels=["node"])
        row = 0
        for role, nodes in app.nodesets.items():
            for i, name in enumerate(nodes.names):
                for field, fam in fams.items():
                    fam.add_metric([role, name], shared.total(row, field))
                up.add_metric([role, name], shared.total(row, UP))
                row += 1
        for name, fraction in zip(app.ypws.names, app.images.share()):
            share.add_metric([name], fraction)
        workers = GaugeMetricFamily("hashproxy_workers", "Worker processes")
        workers.add_metric([], shared.workers)
        conns = GaugeMetricFamily("hashproxy_client_connections", "Open client connections of the answering worker")
        conns.add_metric([], len(app.connections))
        yield from fams.values()
        yield from (up, share, workers, conns)


def render(app: "ProxyApp") -> tuple[bytes, bytes]:
    """(body, content type) of the metrics page."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(app))
    return generate_latest(registry), CONTENT_TYPE_LATEST.encode()
