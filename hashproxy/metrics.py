"""/metrics: per-node requests, errors, retries, spills, in-flight and URL share, in Prometheus text format.

One route, as every service of the cluster: prometheus-client in multiprocess mode.
Requests, errors, retries and spills are prometheus counters each worker feeds in
batches (tallies.py), merged over every worker, live or dead, since the proxy started.
The rest is read at scrape time by ``ProxyGauges``: in-flight requests and up-ness from
the table the workers share (loads.py), so any worker shows the whole proxy;
``hashproxy_node_url_share``, the fraction of image-URL space each ypws node owns now
(health and ramp-up included), sampled over 2048 synthetic keys; the worker count and
the answering worker's open connections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from cluster.web import metrics_body

from .loads import INFLIGHT, UP

if TYPE_CHECKING:
    from .app import ProxyApp


class ProxyGauges:
    def __init__(self, app: "ProxyApp"):
        self.app = app

    def collect(self) -> Iterator[Metric]:
        app, shared = self.app, self.app.shared
        labels = ["role", "node"]
        inflight = GaugeMetricFamily("hashproxy_upstream_in_flight", "Requests in flight to the node", labels=labels)
        up = GaugeMetricFamily("hashproxy_node_up", "Workers that see the node up", labels=labels)
        share = GaugeMetricFamily("hashproxy_node_url_share", "Fraction of image URLs the node owns now",
                                  labels=["node"])
        row = 0
        for role, nodes in app.nodesets.items():
            for name in nodes.names:
                inflight.add_metric([role, name], shared.total(row, INFLIGHT))
                up.add_metric([role, name], shared.total(row, UP))
                row += 1
        for name, fraction in zip(app.ypws.names, app.images.share()):
            share.add_metric([name], fraction)
        workers = GaugeMetricFamily("hashproxy_workers", "Worker processes")
        workers.add_metric([], shared.workers)
        conns = GaugeMetricFamily("hashproxy_client_connections", "Open client connections of the answering worker")
        conns.add_metric([], len(app.connections))
        yield from (inflight, up, share, workers, conns)


def render(app: "ProxyApp") -> tuple[bytes, bytes]:
    """(body, content type) of the metrics page, this worker's counts pushed first."""
    app.tallies.push()
    body, content_type = metrics_body(ProxyGauges(app), registry=app.tallies.registry)
    return body, content_type.encode()
