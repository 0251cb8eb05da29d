"""Helpers for the hashproxy tests: a proxy in front of small real stub nodes, all real processes."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

from cluster import procs
from cluster.config import Config

from .helpers import REPO, Services, cluster_tree, deep_update, tight_budget, write_config

STUB = str(REPO / "tests" / "hashproxy_upstream.py")
ADMIN_TOKEN = "proxy-test-admin-token"
METRICS_AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}  # /metrics takes the service credential


def proxy_app(cfg: Config, loop):
    """An in-process ProxyApp over ``cfg``, unpacked as hashproxy's composition root does."""
    from hashproxy.app import ProxyApp

    return ProxyApp(cfg.hashproxy, cfg.ypws.nodes, cfg.ypfs.nodes, admin_token=cfg.cluster.admin_token,
                    max_upload_bytes=cfg.limits.max_upload_bytes, spool_dir=cfg.data_dir / "hashproxy" / "spool",
                    loop=loop)


def close_proxy_app(app, server, loop) -> None:
    """Tear down what an in-process ProxyApp test opened: its upstream pools, its server, its loop."""
    for pool in app.pools.values():
        pool.close_all()
    server.close()
    loop.run_until_complete(server.wait_closed())
    loop.close()


class ProxyCluster:
    """N stub ypws nodes, M stub ypfs nodes and a real `python -m hashproxy serve`, on free ports."""

    def __init__(self, tmp_path: Path, services: Services, *, ypws: int = 3, ypfs: int = 1,
                 hashproxy: dict | None = None, delay: float = 0.0, cache_bytes: int = 0):
        self.tmp_path, self.services, self.delay, self.cache_bytes = tmp_path, services, delay, cache_bytes
        # quick checks, but patient ones: a loaded 2-core box must not make a live stub look dead
        overrides = {"cluster": {"admin_token": ADMIN_TOKEN}, "hashproxy": {"health_interval": 0.2, "health_timeout": 3.0, "fail_threshold": 3,
                                   "rampup_seconds": 0.0, **(hashproxy or {})}}
        if "read_timeout" in (hashproxy or {}):  # a short proxy timeout: the nodes' budget nests under it
            overrides = deep_update(tight_budget(hashproxy["read_timeout"]), overrides)
        self.tree = cluster_tree(tmp_path, ypws_nodes=ypws, ypfs_nodes=ypfs, overrides=overrides)
        self.cfg, self.config_path = write_config(tmp_path, self.tree)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.cfg.hashproxy.port}"

    def start_node(self, name: str) -> None:
        role = "ypws" if name.startswith("ypws") else "ypfs"
        node = self.cfg.node(role, name)
        argv = [sys.executable, STUB, "--name", name, "--port", str(node.port)]
        if role == "ypws" and self.delay:
            argv += ["--delay", str(self.delay)]
        if role == "ypws" and self.cache_bytes:
            argv += ["--cache-bytes", str(self.cache_bytes)]
        self.services.start(name, argv, health_url=node.url + "/healthz", timeout=20)

    def start_proxy(self, config: Config | None = None, config_path: Path | None = None) -> None:
        self.services.start_module("hashproxy", "hashproxy", "serve", config_path=config_path or self.config_path,
                                   health_url=self.base + "/healthz", timeout=20)

    def start(self) -> "ProxyCluster":
        for n in (*self.cfg.ypws.nodes, *self.cfg.ypfs.nodes):
            self.start_node(n.name)
        self.start_proxy()
        return self

    def node_stats(self, name: str) -> dict:
        role = "ypws" if name.startswith("ypws") else "ypfs"
        with urllib.request.urlopen(self.cfg.node(role, name).url + "/_stats", timeout=5) as r:
            return json.loads(r.read())

    def reset_nodes(self) -> None:
        for n in self.cfg.ypws.nodes:
            if n.name in self.services.procs:
                req = urllib.request.Request(n.url + "/_reset", data=b"", method="POST")
                urllib.request.urlopen(req, timeout=5).close()

    def route_cli(self, url: str, method: str = "GET", config_path: Path | None = None) -> str:
        """The first field of `python -m hashproxy route URL`."""
        import subprocess

        out = subprocess.run(procs.python_module("hashproxy", "route", url, "--method", method),
                             env={"PYTHONPATH": str(REPO), "YUPOO_CONFIG": str(config_path or self.config_path),
                                  "PATH": "/usr/bin:/bin"},
                             cwd=str(REPO), capture_output=True, text=True, timeout=30, check=True)
        return out.stdout.split("\t", 1)[0].strip()

    def proxy_pids(self) -> list[int]:
        """The supervisor and its workers."""
        leader = self.services.procs["hashproxy"].pid
        return [leader, *procs.descendants(leader)]


def image_urls(n: int, user: str = "alice", size: str = "medium", ext: str = "jpg") -> list[str]:
    return [f"/photos/{user}/{1000 + i}_abcdef{i % 10}123/{size}.{ext}" for i in range(n)]
