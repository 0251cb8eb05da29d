"""`python -m hashproxy serve` runs the proxy; `python -m hashproxy route URL` prints where a URL goes;
`python -m hashproxy haproxy-config` prints an equivalent HAProxy configuration (haproxy.py).

All read the cluster config through cluster.config.load() ($YUPOO_CONFIG or
--config). `route` uses the same ring as the workers with every node up, so it
prints the pinning an operator should see in X-Served-By.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys

from cluster.config import ConfigError, load

from .balancer import HashBalancer, NodeSet
from .haproxy import READY_PATH, render
from .health import HealthBoard
from .loads import local_counters
from .urls import BadTarget, Route, classify


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = load(args.config)  # every [hashproxy] value is checked as it loads
    from .app import ProxyApp, counter_names
    from .server import run_worker
    from .supervisor import Supervisor

    s, ypws, ypfs = cfg.hashproxy, cfg.ypws.nodes, cfg.ypfs.nodes
    make_app = functools.partial(ProxyApp, s, ypws, ypfs, admin_token=cfg.cluster.admin_token,
                                 max_upload_bytes=cfg.limits.max_upload_bytes,
                                 spool_dir=cfg.data_dir / "hashproxy" / "spool")
    return Supervisor(s, counter_names(ypws, ypfs), functools.partial(run_worker, s, make_app),
                      str(cfg.data_dir / "metrics" / "hashproxy")).run()


def cmd_route(args: argparse.Namespace) -> int:
    cfg = load(args.config, with_secrets=False)
    names = tuple(n.name for n in cfg.ypws.nodes)
    nodes = NodeSet("ypws", names, tuple((n.host, n.port) for n in cfg.ypws.nodes), HealthBoard(names),
                    local_counters(names).role(0, 0, len(names)))
    balancer = HashBalancer(nodes, factor=0)
    try:
        target = classify(args.method.upper(), args.url.encode())
    except BadTarget as exc:
        print(f"{exc.status} {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    if target.route is Route.IMAGE:
        order = balancer.ring.order_names(target.key)
        print(f"{order[0]}\tkey={target.key}\torder={','.join(order)}")
    else:
        where = {Route.YPFS: "ypfs (least-connections)", Route.PAGE: "ypws (least-connections)",
                 Route.HEALTH: "hashproxy itself", Route.READY: "hashproxy itself",
                 Route.METRICS: "hashproxy itself"}[target.route]
        print(f"{where}\tpath={target.path}")
    return 0


def cmd_haproxy_config(args: argparse.Namespace) -> int:
    cfg = load(args.config, with_secrets=False)  # the output never holds a secret, so none is read
    sys.stdout.write(render(cfg.hashproxy, cfg.ypws.nodes, cfg.ypfs.nodes, args.check_path))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hashproxy", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML file over the defaults (else $YUPOO_CONFIG)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("serve", parents=[common], help="run the proxy (forks [hashproxy] workers)")
    route = sub.add_parser("route", parents=[common], help="print the node(s) a URL goes to")
    route.add_argument("url", help="a path such as /photos/alice/123_abcdef0123/small.jpg")
    route.add_argument("--method", default="GET", help="the request method (default GET)")
    haproxy = sub.add_parser("haproxy-config", parents=[common],
                             help="print an HAProxy (2.6+) configuration equivalent to this proxy's routing")
    haproxy.add_argument("--check-path", default=READY_PATH,
                         help=f"path of the nodes' health checks (default {READY_PATH}; /healthz for nodes without it)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s hashproxy[%(process)d] %(levelname)s %(message)s")
    try:
        return {"serve": cmd_serve, "route": cmd_route, "haproxy-config": cmd_haproxy_config}[args.cmd](args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
