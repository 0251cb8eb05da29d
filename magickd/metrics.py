"""Prometheus metrics of a magickd node: renders, latency, errors, queue depth.

gunicorn runs several worker processes, so the service uses prometheus_client's
multiprocess mode: ``serve`` points PROMETHEUS_MULTIPROC_DIR at a fresh folder
under the node's data dir before any worker imports this module, every worker
writes its samples there, and /metrics merges them (``cluster.web.metrics_body``). Gauges are summed over live
workers ("livesum"); a dead worker's files are marked dead by the arbiter.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RENDITIONS = Counter("magickd_renditions_total", "Renditions rendered and written", ["size", "format"])
REQUESTS = Counter("magickd_render_requests_total", "Render requests by outcome", ["outcome"])
ERRORS = Counter("magickd_render_errors_total", "Failed render requests by error code", ["code"])
LATENCY = Histogram(
    "magickd_render_seconds", "Time to answer a render request (queue wait included)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RENDER_TIME = Histogram(
    "magickd_pipeline_seconds", "Time inside the render pipeline for one original",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
QUEUE_DEPTH = Gauge("magickd_queue_depth", "Admitted requests waiting for a render slot",
                    multiprocess_mode="livesum")
IN_PROGRESS = Gauge("magickd_renders_in_progress", "Renders running now", multiprocess_mode="livesum")

