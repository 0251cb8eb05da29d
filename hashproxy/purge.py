"""PURGE fan-out: one call from an operator, a PURGE to every node that may hold the URL.

``PURGE /photos/u/id_s/small.jpg`` goes to the purge targets of its routing key
``/photos/u/id_s/small`` (HashBalancer.purge_targets: the key's first
``purge_fanout`` nodes, plus any further node that the spill map says served it
during bounded-load spill or failover), with the path as given: a re-render's
purge reaches exactly the nodes that may hold the URL.

``PURGE /photos/u/id_s/`` purges the whole photo, and goes to every node, once
each: the node drops every size, format and version of the photo, and its
original, by key prefix. Deletes, privacy changes and takedowns come this way,
and for them no copy may survive anywhere. Sending each size to its own targets
would miss a node that served one by spill or failover so long ago that the
spill map has forgotten it (its marks live one to two generations); and a
photo's six sizes and original, two nodes each, reach nearly every node of a
small tier anyway, in more calls than this.

A node that is down (in this worker's view), or whose call fails (connect error,
timeout, 5xx), does not lose the purge: it is appended to that node's journal
(journal.py) and replayed before the node is given traffic again (replay.py).
The answer is one JSON summary with a line per node call, each ``purged``,
``queued`` or ``failed`` (not even journaled): 200 when every call was purged,
202 when some were only queued, 502 when any failed.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from . import responses
from .cycle import Cycle, Request
from .loads import ERRORS
from .upstream import UpstreamError, call
from .urls import Route

if TYPE_CHECKING:
    from .app import ProxyApp
    from .protocol import ProxyProtocol

PURGE_TIMEOUT = 10.0
PURGED, QUEUED, FAILED = "purged", "queued", "failed"
RANK = {PURGED: 0, QUEUED: 1, FAILED: 2}


def purge_jobs(app: "ProxyApp", req: Request) -> list[tuple[int, str]]:
    """(node, path) pairs to PURGE for this request."""
    target = req.target
    if target.route is Route.PURGE:
        return [(node, target.path) for node in app.images.purge_targets(target.key)]
    return [(node, target.key + "/") for node in range(len(app.images.nodes))]  # a whole photo


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
        results = list(await asyncio.gather(*(self._one(node, path, headers) for node, path in jobs)))
        await self._queue(jobs, results)
        data = self.answer(results)
        self.proto.write(data)
        self.proto.cycle_done(self, req.keep_alive)

    def answer(self, results: list[dict]) -> bytes:
        """200 all purged, 202 some only queued for replay, 502 some neither."""
        req = self.req
        nodes: dict[str, str] = {}
        for r in results:  # a node's worst outcome over its calls
            seen = nodes.get(r["node"])
            if seen is None or RANK[r["status"]] > RANK[seen]:
                nodes[r["node"]] = r["status"]
        worst = max((RANK[s] for s in nodes.values()), default=0)
        status = {0: PURGED, 1: QUEUED, 2: FAILED}[worst]
        summary = {"purged": req.target.path, "status": status, "nodes": sorted(nodes), "node_status": nodes,
                   "results": results}
        kw = {"keep_alive": req.keep_alive, "http10": req.http10}
        if status == FAILED:
            failed = sorted(n for n, s in nodes.items() if s == FAILED)
            return responses.error(502, "purge_incomplete",
                                   f"some nodes neither confirmed the purge nor could it be queued: {', '.join(failed)}",
                                   extra=summary, **kw)
        return responses.response(200 if status == PURGED else 202, responses.json_body(summary),
                                  b"application/json", **kw)

    async def _one(self, node: int, path: str, headers: list[tuple[str, str]]) -> dict:
        ypws = self.app.ypws
        name = ypws.names[node]
        if not ypws.health.is_up(node):
            return {"node": name, "path": path, "status": QUEUED, "reason": "node down"}
        try:
            code, _ = await call(self.app.pools["ypws"], node, "PURGE", path, headers, timeout=PURGE_TIMEOUT)
        except UpstreamError as exc:
            ypws.counters.add(node, ERRORS)
            ypws.health.failure(node)
            return {"node": name, "path": path, "status": QUEUED, "reason": str(exc)}
        if code >= 500:
            ypws.counters.add(node, ERRORS)
            ypws.health.failure(node)
            return {"node": name, "path": path, "status": QUEUED, "reason": f"node answered {code}", "code": code}
        return {"node": name, "path": path, "status": PURGED, "code": code}

    async def _queue(self, jobs: list[tuple[int, str]], results: list[dict]) -> None:
        """Journal every queued call, one durable append per node; an append that fails is a failure."""
        per_node: dict[int, list[int]] = {}
        for k, ((node, _), r) in enumerate(zip(jobs, results)):
            if r["status"] == QUEUED:
                per_node.setdefault(node, []).append(k)
        for node, ks in per_node.items():
            try:
                overflow = await asyncio.to_thread(self.app.journal.append, node, [jobs[k][1] for k in ks])
            except OSError as exc:
                for k in ks:
                    results[k].update(status=FAILED, reason=f"{results[k]['reason']}; journal: {exc}")
                continue
            self.app.ypws.health.hold(node)  # no traffic for it here until the journal is replayed
            if overflow:
                for k in ks:
                    results[k]["replay"] = "flush"  # the journal is full: its whole cache goes on rejoin
