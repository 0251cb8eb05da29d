"""`python -m magickd serve --node NAME`: the node's falcon app on a pre-forked gunicorn pool.

Workers are processes (``cfg.magickd.effective_workers``, cores by default); each
one sets libvips up for itself after the fork. Workers use gunicorn's threaded
worker so a request beyond the render slots can be answered at once (429) or
queued, rather than waiting unseen in the listen backlog; the node-wide limits
themselves live in ``magickd.admission``.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

from gunicorn.app.base import BaseApplication

from cluster.config import Config

from . import vips_setup
from .service import node_dir


class MagickdServer(BaseApplication):
    def __init__(self, cfg: Config, node: str):
        self.cfg_yupoo = cfg
        self.node = cfg.node("magickd", node)
        super().__init__()

    def load_config(self) -> None:
        m = self.cfg_yupoo.magickd
        workers = m.effective_workers
        settings: dict[str, Any] = {
            "bind": [self.node.bind],
            "workers": workers,
            "worker_class": "gthread",
            # every ticket holder may sit in one worker, plus room to answer 429s and /healthz
            "threads": workers + m.queue_size + 2,
            "timeout": int(m.render_timeout + m.queue_wait + 30),
            "graceful_timeout": int(m.render_timeout + 5),
            "keepalive": 5,
            "backlog": 256,
            "proc_name": f"magickd-{self.node.name}",
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "info",
            "control_socket_disable": True,  # several nodes on one box would share its default path
            "post_fork": _post_fork,
            "child_exit": _child_exit,
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self):
        from storage import open_store

        from .app import MetricsHooks, create_app
        from .service import RenderService

        cfg = self.cfg_yupoo
        service = RenderService.for_node(cfg, self.node.name, open_store(cfg), MetricsHooks())
        return create_app(service, self.node.name)


def _post_fork(server, worker) -> None:
    cfg: Config = server.app.cfg_yupoo
    vips_setup.configure(cfg.magickd.vips_concurrency, cfg.magickd.vips_cache_max_mem)


def _child_exit(server, worker) -> None:
    from . import metrics

    metrics.worker_exited(worker.pid)


def serve(cfg: Config, node: str) -> None:
    """Run the node until SIGTERM/SIGINT. Environment first: it must be set before libvips loads."""
    vips_setup.limit_malloc_arenas()
    base = node_dir(cfg, node)
    prom = base / "prometheus"
    shutil.rmtree(prom, ignore_errors=True)  # samples of a previous run would be summed in
    prom.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prom)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    logging.getLogger("pyvips").setLevel(logging.WARNING)  # libvips chats at INFO for every operation
    MagickdServer(cfg, node).run()
