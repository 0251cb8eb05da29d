"""Active health checks: every ``health_interval``, GET /healthz on every node over a fresh connection.

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
            status, _ = await call(pool, node, "GET", "/healthz", timeout=self.timeout, pooled=False)
            ok = status == 200
        except UpstreamError:
            ok = False
        name = f"{nodes.role}/{nodes.names[node]}"
        if ok:
            if nodes.health.success(node):
                log.info("%s is back; ramping up its share", name)
        elif nodes.health.failure(node):
            log.warning("%s failed its health checks; taking it out", name)
        nodes.counters.set(node, UP, int(nodes.health.is_up(node)))
        return ok
