"""ypws command line.

    python -m ypws serve --node NAME          run one image web server / cache node (gunicorn)
    python -m ypws sign URLPATH [--ttl S]     print a signed URL for a (private) photo's image
    python -m ypws cache --node NAME          print a node's cache figures (bytes, entries; counters: /metrics)
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys

from cluster.config import ConfigError, load


def serve(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    node = cfg.node("ypws", args.node)
    from cluster.web import prepare_metrics_dir, serve as run

    # before prometheus_client is imported: every worker writes its metrics there (ypws.metrics)
    prepare_metrics_dir(str(cfg.data_dir / "metrics" / f"ypws-{node.name}"))

    from .app import BOOT_ENV, cache_dir, get_app, open_cache

    os.environ[BOOT_ENV] = secrets.token_hex(8)  # this run: the workers' caches are trusted once it applied the purge log
    # once, in the master, before any worker forks
    cache = open_cache(cfg.ypws, cache_dir(cfg.ypws, cfg.data_dir, node.name), node.name)
    report = cache.recover()
    cache.close()
    print(f"ypws {node.name}: cache {cache.root} recovered {report}", file=sys.stderr, flush=True)
    run(lambda: get_app(cfg, node.name), node.bind, cfg.ypws.workers, timeout=cfg.ypws.timeout,
        name=f"ypws-{node.name}",
        options={"worker_class": "ypws.worker.YpwsWorker", "threads": cfg.ypws.threads, "keepalive": 5,
                 "accesslog": None})
    return 0


def sign(args: argparse.Namespace) -> int:
    from .signing import sign_url

    cfg = load(args.config)
    print(cfg.public_url + sign_url(cfg.cluster.url_key, cfg.ypws.signed_url_max_ttl, args.path, args.ttl))
    return 0


def cache(args: argparse.Namespace) -> int:
    from .app import cache_dir, open_cache

    cfg = load(args.config)
    name = cfg.node("ypws", args.node).name
    c = open_cache(cfg.ypws, cache_dir(cfg.ypws, cfg.data_dir, name), name)
    print(json.dumps(c.totals(), indent=2, sort_keys=True))
    c.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ypws", description="ypws: the image web server and cache node")
    ap.add_argument("--config", help="TOML file over the defaults (else $YUPOO_CONFIG)")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run one ypws node")
    p.add_argument("--node", required=True)
    p.set_defaults(fn=serve)
    p = sub.add_parser("sign", help="print a signed URL (HMAC, with an expiry) for an image path")
    p.add_argument("path", help="/photos/{user}/{id}_{secret}/{size}.{ext} (or a full URL)")
    p.add_argument("--ttl", type=int, default=None, help="seconds the URL stays valid (default and cap: signed_url_max_ttl)")
    p.set_defaults(fn=sign)
    p = sub.add_parser("cache", help="print a node's cache figures")
    p.add_argument("--node", required=True)
    p.set_defaults(fn=cache)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
