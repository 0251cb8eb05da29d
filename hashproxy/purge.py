"""PURGE fan-out: one call from an operator, a PURGE to every node that may hold the URL.

``PURGE /photos/u/id_s/small.jpg`` goes to the purge targets of its routing key
``/photos/u/id_s/small`` (HashBalancer.purge_targets: the key's first
``purge_fanout`` nodes, plus any further node that the spill map says served it
during bounded-load spill or failover), with the path as given. ``PURGE
/photos/u/id_s/`` purges the whole photo: for each size profile and
``original``, an extension-less ``PURGE /photos/u/id_s/{size}`` (ypws reads it as
"every format of this size") on that key's targets. The answer is one JSON
summary with a line per node call: 200 if every node answered below 500, else
502 with the same summary.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from . import responses
from .cycle import Cycle, Request
from .upstream import UpstreamError, call
from .urls import Route

if TYPE_CHECKING:
    from .app import ProxyApp
    from .protocol import ProxyProtocol

PURGE_TIMEOUT = 10.0


def purge_jobs(app: "ProxyApp", req: Request) -> list[tuple[int, str]]:
    """(node, path) pairs to PURGE for this request."""
    target = req.target
    if target.route is Route.PURGE:
        return [(node, target.path) for node in app.images.purge_targets(target.key)]
    jobs = []
    for size in app.size_names:
        key = f"{target.key}/{size}"
        jobs += [(node, key) for node in app.images.purge_targets(key)]
    return jobs


class PurgeCycle(Cycle):
    def __init__(self, proto: "ProxyProtocol", req: Request, app: "ProxyApp"):
        super().__init__(proto, req)
        self.app = app
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    def abort(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def run(self) -> None:
        req = self.req
        headers = [("Authorization", req.headers.auth.decode("latin-1")),
                   ("Via", "1.1 hashproxy"), ("X-Forwarded-For", req.client_ip.decode())]
        jobs = purge_jobs(self.app, req)
        results = await asyncio.gather(*(self._one(node, path, headers) for node, path in jobs))
        ok = all(r["ok"] for r in results)
        summary = {"purged": req.target.path, "nodes": sorted({r["node"] for r in results}), "results": results}
        if ok:
            data = responses.response(200, responses.json_body(summary), b"application/json",
                                      keep_alive=req.keep_alive, http10=req.http10)
        else:
            failed = sorted({r["node"] for r in results if not r["ok"]})
            data = responses.error(502, "purge_incomplete", f"some nodes did not confirm the purge: {', '.join(failed)}",
                                   extra=summary, keep_alive=req.keep_alive, http10=req.http10)
        self.proto.write(data)
        self.proto.cycle_done(self, req.keep_alive)

    async def _one(self, node: int, path: str, headers: list[tuple[str, str]]) -> dict:
        name = self.app.ypws.names[node]
        try:
            status, _ = await call(self.app.pools["ypws"], node, "PURGE", path, headers, timeout=PURGE_TIMEOUT)
        except UpstreamError as exc:
            return {"node": name, "path": path, "ok": False, "error": str(exc)}
        return {"node": name, "path": path, "ok": status < 500, "status": status}
