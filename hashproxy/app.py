"""ProxyApp: what one worker shares between its connections (the ServerState), and the router.

The router turns a parsed request head into a cycle: a local reply (/healthz,
/readyz, /metrics, an error) or a request proxied to the node(s) the balancers chose.
PURGE is proxied to ypfs, which commits it to the purge log that every cache
node follows (storage/purgelog.py): a front keeps no purge state of its own, so
any number of fronts can stand behind one address. Everything it needs (nodes, health, counters, pools) is built
once per worker from what it is given: the [hashproxy] section, the nodes it routes to, and
the few cluster-wide values it uses (the composition root, __main__.py, unpacks the Config).
"""

from __future__ import annotations

import asyncio
import hmac
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from cluster.config import HashproxySection, NodeConfig

from . import responses
from .balancer import IMAGE_BALANCERS, LeastConnections, NodeSet
from .cycle import Cycle, ProxyCycle, Reply, Request
from .headers import scan
from .health import HealthBoard
from .loads import SharedCounters
from .spool import SpoolBudget
from .tallies import PUSH_INTERVAL, Tallies
from .upstream import UpstreamPool
from .urls import BadTarget, Route, classify

if TYPE_CHECKING:
    from .protocol import ProxyProtocol

ROLES = ("ypws", "ypfs")
SPOOL_SLACK = 1024 * 1024  # multipart framing and form fields beyond limits.max_upload_bytes


def node_rows(ypws: Sequence[NodeConfig], ypfs: Sequence[NodeConfig]) -> list[tuple[str, str]]:
    """(role, node name) of each row of the shared counters and the tallies: every ypws node,
    then every ypfs node."""
    return [(role, n.name) for role, nodes in zip(ROLES, (ypws, ypfs)) for n in nodes]


def counter_names(ypws: Sequence[NodeConfig], ypfs: Sequence[NodeConfig]) -> list[str]:
    """Row labels of the shared counters ("role/node")."""
    return [f"{role}/{name}" for role, name in node_rows(ypws, ypfs)]


class ProxyApp:
    def __init__(self, settings: HashproxySection, ypws: Sequence[NodeConfig], ypfs: Sequence[NodeConfig], *,
                 admin_token: str, max_upload_bytes: int, spool_dir: Path, shared: SharedCounters | None = None,
                 worker: int = 0, loop: asyncio.AbstractEventLoop | None = None):
        """``settings``: [hashproxy]; ``ypws``, ``ypfs``: the nodes routed to; ``admin_token``: the
        service credential /metrics takes; ``max_upload_bytes``: limits.max_upload_bytes (uploads up
        to it are spooled whole, in ``spool_dir``); ``shared``: the workers' table (loads.py)."""
        s = settings
        self.settings, self.worker = s, worker
        self.loop = loop or asyncio.get_event_loop()
        self.shared = shared or SharedCounters(1, counter_names(ypws, ypfs))
        self.tallies = Tallies(node_rows(ypws, ypfs))
        self.connections: set["ProxyProtocol"] = set()
        self.active: set[ProxyCycle] = set()   # cycles waiting on a node, for the timeout sweeper
        self.nodesets: dict[str, NodeSet] = {}
        self.pools: dict[str, UpstreamPool] = {}
        first = 0
        for role, nodes in zip(ROLES, (ypws, ypfs)):
            names = tuple(n.name for n in nodes)
            self.nodesets[role] = NodeSet(role, names, tuple((n.host, n.port) for n in nodes),
                                          HealthBoard(names, s.fail_threshold, s.rampup_seconds),
                                          self.shared.role(worker, first, len(nodes)),
                                          self.tallies.role(first, len(nodes)))
            self.pools[role] = UpstreamPool(self.nodesets[role].addrs, s.connect_timeout, s.pool_idle_timeout,
                                            s.pool_max_idle)
            first += len(nodes)
        self.ypws, self.ypfs = self.nodesets["ypws"], self.nodesets["ypfs"]
        self.images = IMAGE_BALANCERS[s.image_balance](self.ypws, factor=s.balance_factor,
                                                       min_load=s.balance_min_load)
        self.pages = LeastConnections(self.ypws)
        self.uploads = LeastConnections(self.ypfs)
        self._token = admin_token.encode()  # the service credential /metrics takes
        self.spool_budget = SpoolBudget(s.spool_bytes, spool_dir)
        self.spool_max = max_upload_bytes + SPOOL_SLACK  # bodies up to this are spooled whole (and the body limit)
        self.pid = os.getpid()

    def route(self, proto: "ProxyProtocol", method: str, raw_target: bytes, headers: list[tuple[bytes, bytes]],
              version: str, keep_alive: bool) -> Cycle:
        http10 = version == "1.0"
        try:
            target = classify(method, raw_target)
        except BadTarget as exc:
            return self._error(proto, exc.status, exc.code, exc.message, keep_alive, http10)
        req = Request(method, target, scan(headers), http10, keep_alive, proto.client_ip)
        route = target.route
        s = self.settings
        if route is Route.IMAGE:
            nodes, pool, candidates, balancer = self.ypws, self.pools["ypws"], self.images.choose(target.key), self.images
        elif route is Route.PAGE:
            nodes, pool, candidates, balancer = self.ypws, self.pools["ypws"], self.pages.choose(), None
        elif route is Route.YPFS:  # uploads, the API, and PURGE (ypfs logs it)
            nodes, pool, candidates, balancer = self.ypfs, self.pools["ypfs"], self.uploads.choose(), None
        elif route is Route.HEALTH:
            return Reply(proto, req, responses.response(200, responses.json_body(self.health_report()),
                                                        b"application/json", keep_alive=keep_alive, http10=http10,
                                                        head_only=method == "HEAD"), keep_alive)
        elif route is Route.READY:
            ready, report = self.ready_report()
            extra = [(b"Cache-Control", b"no-store")] + ([] if ready else [(b"Retry-After", b"1")])
            return Reply(proto, req, responses.response(200 if ready else 503, responses.json_body(report),
                                                        b"application/json", keep_alive=keep_alive, http10=http10,
                                                        head_only=method == "HEAD", headers=extra), keep_alive)
        elif route is Route.METRICS:
            if not self.authorized(req.headers.auth):
                return self._error(proto, 401, "unauthorized",
                                   "/metrics needs 'Authorization: Bearer <service token>'", keep_alive, http10,
                                   [(b"WWW-Authenticate", b"Bearer")])
            from .metrics import render
            body, ctype = render(self)
            return Reply(proto, req, responses.response(200, body, ctype, keep_alive=keep_alive, http10=http10,
                                                        head_only=method == "HEAD"), keep_alive)
        else:
            raise AssertionError(f"unrouted {route}")
        if not candidates:
            return self._error(proto, 503, "no_healthy_node", f"no healthy {nodes.role} node", keep_alive, http10,
                               [(b"Retry-After", b"1")])
        if route is Route.YPFS and req.headers.length <= self.spool_max:
            # bodies are taken whole first: slow clients never hold an upload worker. One declared
            # past the upload limit is streamed instead, so ypfs refuses it (413) before it is sent.
            return ProxyCycle(proto, req, nodes, pool, candidates, balancer, s.read_timeout, s.client_timeout,
                              self.spool_budget, s.upload_deadline)
        return ProxyCycle(proto, req, nodes, pool, candidates, balancer, s.read_timeout, s.client_timeout)

    def authorized(self, header: bytes) -> bool:
        """``Authorization: Bearer <cluster.admin_token>``, compared in constant time."""
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and bool(self._token) and hmac.compare_digest(token.strip(), self._token)

    def health_report(self) -> dict:
        return {"status": "ok", "worker": self.worker, "pid": self.pid,
                "nodes": {role: ns.health.snapshot() for role, ns in self.nodesets.items()}}

    def ready_report(self) -> tuple[bool, dict]:
        """Ready when every role it routes to (ypws, ypfs; magickd is not proxied) has a node up and ready.

        What an outer load balancer checks: a proxy that could only fall back to unready
        nodes is live (``/healthz``) but should get no new traffic while another proxy can.
        """
        reasons = [f"no ready {role} node" for role, ns in self.nodesets.items()
                   if not any(ns.health.is_ready(i) for i in range(len(ns)))]
        nodes = {role: {n: ns.health.is_ready(i) for i, n in enumerate(ns.names)} for role, ns in self.nodesets.items()}
        if reasons:
            return False, {"error": "not_ready", "message": "; ".join(reasons), "reasons": reasons,
                           "worker": self.worker, "ready": nodes}
        return True, {"status": "ready", "worker": self.worker, "ready": nodes}

    def _error(self, proto: "ProxyProtocol", status: int, code: str, message: str, keep_alive: bool,
               http10: bool, headers: Iterable[tuple[bytes, bytes]] = ()) -> Reply:
        return Reply(proto, None, responses.error(status, code, message, keep_alive=keep_alive, http10=http10,
                                                  headers=headers), keep_alive)

    async def sweep(self, interval: float = 0.25) -> None:
        """Check every timeout a few times a second, instead of arming a timer per request."""
        while True:
            await asyncio.sleep(interval)
            now = self.loop.time()
            for cycle in list(self.active):
                cycle.check_timeout(now)
            for conn in list(self.connections):
                conn.check_timers(now)

    async def publish(self, interval: float = PUSH_INTERVAL) -> None:
        """Push this worker's counts to prometheus every ``interval`` (tallies.py), not per request."""
        while True:
            await asyncio.sleep(interval)
            self.tallies.push()

    async def shutdown(self, timeout: float) -> None:
        """Finish the responses in progress (up to ``timeout``), then close everything."""
        for conn in list(self.connections):
            conn.shutdown()
        deadline = self.loop.time() + timeout
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()
        for pool in self.pools.values():
            pool.close_all()
        self.tallies.push()
