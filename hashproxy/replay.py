"""Replay on rejoin: a node's pending purges reach it before it is given traffic again.

The health checker asks ``gate(node, ok)`` after every check of a ypws node.
With nothing pending, the check counts as usual. With purges pending, the node
is *held* out (HealthBoard.hold) in this worker, whether it answered or not,
and once it answers a replay starts in the background; the node comes back (and
its ramp-up starts) only once its journal is empty. So every worker takes a
node out within one health interval of a purge being queued for it, and none
gives it traffic again before the purge was delivered. (A node restarted faster
than one interval can meet a worker that has not yet seen the queued purge, so
a queued purge takes effect at worst one health interval late there.)

Only one process replays a node at a time (a non-blocking flock); the others
keep the node held until they see its journal empty. A replay is all or
nothing: on any failure nothing is removed from the journal and the node stays
out; delivering a purge twice is harmless.
"""

from __future__ import annotations

import asyncio
import logging

from .balancer import NodeSet
from .journal import Pending, PurgeJournal
from .loads import UP
from .upstream import UpstreamError, UpstreamPool, call

log = logging.getLogger("hashproxy")

FLUSH_PATH = "/photos/"   # ypws: PURGE /photos/ empties the node's whole cache
PURGE_TIMEOUT = 10.0
FLUSH_TIMEOUT = 120.0     # a whole cache of files to unlink
CONCURRENCY = 8


class Replayer:
    """One worker's side of replay: gate for the checker, one background task per node at most."""

    def __init__(self, journal: PurgeJournal, nodes: NodeSet, pool: UpstreamPool, token: str,
                 timeout: float = PURGE_TIMEOUT):
        self.journal = journal
        self.nodes = nodes
        self.pool = pool
        self.headers = [("Authorization", f"Bearer {token}"), ("Via", "1.1 hashproxy")]
        self.timeout = timeout
        self.tasks: dict[int, asyncio.Task] = {}

    def hold_pending(self) -> list[int]:
        """At start-up: nodes with purges left from before (a down node, a restart) start out held."""
        held = [i for i in range(len(self.nodes)) if self.journal.pending(i)]
        for i in held:
            self.nodes.health.hold(i)
        return held

    def gate(self, node: int, ok: bool) -> bool:
        """After a check (``ok``: it passed): whether a success may count, i.e. nothing is pending."""
        health = self.nodes.health
        if not self.journal.pending(node):
            health.release(node)
            return True
        if health.hold(node):
            log.warning("ypws/%s has purges pending; taking it out until they are replayed", self.nodes.names[node])
        if ok:
            self.kick(node)
        return False

    def kick(self, node: int) -> None:
        task = self.tasks.get(node)
        if task is None or task.done():
            self.tasks[node] = asyncio.get_running_loop().create_task(self.replay(node))

    async def stop(self) -> None:
        """Cancel replays in progress (worker shutdown); their journals stay for the next process."""
        tasks = [t for t in self.tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def replay(self, node: int) -> bool:
        """Deliver the node's journal if no other process is at it; True once it is delivered and cleared."""
        fd = self.journal.try_replay_lock(node)
        if fd is None:
            return False
        name = self.nodes.names[node]
        try:
            pending = await asyncio.to_thread(self.journal.snapshot, node)
            if pending and not await self.deliver(node, pending):
                if self.nodes.health.hold(node):
                    log.warning("ypws/%s: pending purges could not be replayed; taking it out", name)
                self.nodes.counters.set(node, UP, 0)
                return False
            empty = await asyncio.to_thread(self.journal.commit, node, pending)
        finally:
            self.journal.release(fd)
        if pending:
            log.info("ypws/%s: replayed %s", name, "a whole-cache flush" if pending.flush
                     else f"{len(pending.paths)} pending purge(s)")
        if not empty:
            return False  # more was queued meanwhile: the next check replays it
        health = self.nodes.health
        health.release(node)
        if health.success(node):
            log.info("ypws/%s is back after its pending purges; ramping up its share", name)
        self.nodes.counters.set(node, UP, int(health.is_up(node)))
        return True

    async def deliver(self, node: int, pending: Pending) -> bool:
        """PURGE every pending path (or the whole cache) on the node; True if every one succeeded."""
        if pending.flush:
            return await self._purge(node, FLUSH_PATH, FLUSH_TIMEOUT, allow_404=False)
        sem = asyncio.Semaphore(CONCURRENCY)

        async def one(path: str) -> bool:
            async with sem:
                return await self._purge(node, path, self.timeout, allow_404=True)

        return all(await asyncio.gather(*(one(p) for p in pending.paths)))

    async def _purge(self, node: int, path: str, timeout: float, allow_404: bool) -> bool:
        try:
            status, _ = await call(self.pool, node, "PURGE", path, self.headers, timeout=timeout)
        except UpstreamError as exc:
            log.warning("ypws/%s: replaying PURGE %s: %s", self.nodes.names[node], path, exc)
            return False
        if status < 300 or (allow_404 and status == 404):  # 404: a path ypws no longer knows holds nothing
            return True
        log.warning("ypws/%s: replaying PURGE %s answered %d", self.nodes.names[node], path, status)
        return False
