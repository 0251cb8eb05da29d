"""Active health checks: every ``health_interval``, GET /readyz on every node over a fresh connection.

200 is live and ready; 503 is live but not ready (the node says why: e.g. its
storage is unreachable), which keeps the node up but takes it out of routing while
another node of its role is ready (health.py); anything else, or no answer, is a
failure.

A fresh connection tests what a new request needs (accept, answer) and never
competes with pooled keep-alive connections. Results feed the same HealthBoard
as passive failures; each worker checks for itself (a few requests a second),
so no worker depends on another to notice a node die or come back.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Sequence

from .balancer import NodeSet
from .loads import UP
from .upstream import UpstreamError, UpstreamPool, call

log = logging.getLogger("hashproxy")


class HealthChecker:
    def __init__(self, roles: Sequence[tuple[NodeSet, UpstreamPool]], interval: float, timeout: float):
        self.roles = tuple(roles)
        self.interval = interval
        self.timeout = timeout

    async def run(self) -> None:
        for nodes, _ in self.roles:
            for i in range(len(nodes)):
                nodes.counters.set(i, UP, int(nodes.health.is_up(i)))
        while True:
            await asyncio.gather(*(self.check(nodes, pool, i) for nodes, pool in self.roles for i in range(len(nodes))))
            await asyncio.sleep(self.interval)

    async def check(self, nodes: NodeSet, pool: UpstreamPool, node: int) -> bool:
        try:
            status, _ = await call(pool, node, "GET", "/readyz", timeout=self.timeout, pooled=False)
            ok = status in (200, 503)
        except UpstreamError:
            ok = False
        if ok and nodes.health.set_ready(node, status == 200):
            log.warning("%s/%s is %s", nodes.role, nodes.names[node], "ready" if status == 200 else "live but not ready")
        name = f"{nodes.role}/{nodes.names[node]}"
        if ok:
            if nodes.health.success(node):
                log.info("%s is back; ramping up its share", name)
        elif nodes.health.failure(node):
            log.warning("%s failed its health checks; taking it out", name)
        nodes.counters.set(node, UP, int(nodes.health.is_up(node)))
        return ok
