"""`python -m magickd serve --node NAME`: the node's falcon app on a pre-forked gunicorn pool.

Workers are processes (``cfg.magickd.effective_workers``, cores by default); each
one sets libvips up for itself after the fork. Workers use gunicorn's threaded
worker so a request beyond the render slots can be answered at once (429) or
queued, rather than waiting unseen in the listen backlog; the node-wide limits
themselves live in ``magickd.admission``.
"""

from __future__ import annotations

import logging

from cluster.budget import magickd_graceful_seconds, magickd_worker_timeout
from cluster.config import Config
from cluster.profiles import by_name
from cluster.web import prepare_metrics_dir
from cluster.web import serve as run

from . import vips_setup
from .service import node_dir


def serve(cfg: Config, node: str) -> None:
    """Run the node until SIGTERM/SIGINT. Environment first: it must be set before libvips loads.

    The node's composition root: the one place that unpacks the whole Config for it."""
    vips_setup.limit_malloc_arenas()
    node_cfg = cfg.node("magickd", node)
    # samples of a previous run would be summed in: start from an empty folder
    prepare_metrics_dir(str(node_dir(cfg.data_dir, node) / "prometheus"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    logging.getLogger("pyvips").setLevel(logging.WARNING)  # libvips chats at INFO for every operation
    m = cfg.magickd
    workers = m.effective_workers

    def post_fork(server, worker) -> None:
        vips_setup.configure(m.vips_concurrency, m.vips_cache_max_mem)

    def load_app():
        from storage import open_store

        from .app import MetricsHooks, create_app
        from .service import RenderService

        service = RenderService.for_node(cfg.magickd, cfg.limits, by_name(cfg.sizes), node_dir(cfg.data_dir, node),
                                         open_store(cfg.storage, cfg.local_root), MetricsHooks())
        return create_app(service, node_cfg.name, cfg.cluster.admin_token)

    run(load_app, node_cfg.bind, workers, timeout=magickd_worker_timeout(cfg.magickd),
        name=f"magickd-{node_cfg.name}", options={
            "worker_class": "gthread",
            # every ticket holder may sit in one worker, plus room to answer 429s and /healthz
            "threads": workers + m.queue_size + 2,
            "graceful_timeout": magickd_graceful_seconds(m),
            "keepalive": 5,
            "backlog": 256,
            "accesslog": None,
            "post_fork": post_fork,
        })
