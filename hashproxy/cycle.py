"""One request on a client connection: a local reply, or a request proxied to a node.

The client protocol (protocol.py, on the shared core cluster/http1) parses and routes; a cycle answers. A
ProxyCycle streams both ways without holding a body: request chunks go to the
node as they arrive (client reading paused past BODY_HIGH buffered bytes, node
writes awaited with drain), response chunks are written to the client from the
node's data callback, one write per read (node reading paused while the client's
socket buffer is full). A request without a body that fails before the node
answered (connect error, timeout, reset) is retried once on the next node of its
order; nothing is retried once the client has seen a byte of the response.

A request body bound for ypfs is the exception to streaming: it is taken whole
first (spool.py), under ``hashproxy.upload_deadline``, and only then is a ypfs
node chosen and sent it, with a Content-Length, so no client can hold an upload
worker by sending slowly.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cluster.http1 import Cycle as HTTP1Cycle

from . import responses
from .balancer import ImageBalancer, NodeSet
from .headers import RequestHeaders, upstream_head
from .loads import INFLIGHT
from .spool import BodySpool, SpoolBudget
from .tallies import ERRORS, REQUESTS, RETRIES
from .upstream import ConnectFailed, UpstreamConnection, UpstreamPool
from .urls import Target

if TYPE_CHECKING:
    from .protocol import ProxyProtocol

log = logging.getLogger("hashproxy")

BODY_HIGH = 256 * 1024  # request bytes buffered before the client's reads are paused
BODY_LOW = 64 * 1024
_RESPONSE_DROP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade",
                            b"transfer-encoding", b"via"})
_RETRIABLE = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(slots=True)
class Request:
    """A parsed request head, as the client protocol hands it to a cycle."""

    method: str
    target: Target
    headers: RequestHeaders
    http10: bool
    keep_alive: bool
    client_ip: bytes

    @property
    def has_body(self) -> bool:
        return self.headers.has_body


@dataclass(slots=True)
class Failure:
    status: int
    code: str
    message: str
    node_fault: bool = True   # counts against the node's health
    retry: bool = False       # another node may be tried (nothing was sent to the client yet)
    retry_after: int = 0      # seconds, for a Retry-After header (0: none)


class ClientTimeout(Exception):
    """The client stopped sending its request body."""


class Cycle(HTTP1Cycle):
    """Base: the request body is read and dropped; subclasses answer in start()."""

    __slots__ = ("proto", "req", "keep_alive")

    def __init__(self, proto: "ProxyProtocol", req: Request | None):
        self.proto = proto
        self.req = req
        self.keep_alive = True


class Reply(Cycle):
    """A response the proxy writes itself (errors, /healthz, /metrics)."""

    __slots__ = ("data",)

    def __init__(self, proto: "ProxyProtocol", req: Request | None, data: bytes, keep_alive: bool = True):
        super().__init__(proto, req)
        self.data = data
        self.keep_alive = keep_alive

    def start(self) -> None:
        self.proto.write(self.data)
        self.proto.cycle_done(self, self.keep_alive)


class ProxyCycle(Cycle):
    """A request proxied to a node: callback-driven, a task only to connect or to stream a request body.

    The common case (no body, an idle pooled connection) runs without any task or
    timer of its own: the head is written at once and the node's data callbacks
    finish the cycle. Timeouts are checked by the worker's sweeper (app.py).
    """

    __slots__ = ("nodes", "pool", "candidates", "balancer", "read_timeout", "client_timeout", "loop", "head",
                 "retriable", "started", "chunk_out", "close_delimited", "body_sent", "conn", "node", "task",
                 "finished", "deadline", "_attempt", "_holding", "_stale_retry", "_failure", "_body", "_buffered",
                 "_body_ended", "_body_waiter", "_waiting_for_client", "_out", "spool", "_spool_budget",
                 "_upload_deadline")

    def __init__(self, proto: "ProxyProtocol", req: Request, nodes: NodeSet, pool: UpstreamPool,
                 candidates: list[int], balancer: ImageBalancer | None, read_timeout: float, client_timeout: float,
                 spool_budget: SpoolBudget | None = None, upload_deadline: float = 0.0):
        super().__init__(proto, req)
        self.nodes, self.pool, self.candidates, self.balancer = nodes, pool, candidates, balancer
        self.read_timeout, self.client_timeout = read_timeout, client_timeout
        self.keep_alive = req.keep_alive
        self.loop = proto.loop
        self.head = upstream_head(req.method, req.target.path, req.target.query, req.headers, req.client_ip)
        self.retriable = req.method in _RETRIABLE and not req.has_body
        self.started = False        # response head written to the client
        self.chunk_out = False      # re-chunking the response body for the client
        self.close_delimited = False  # the node's body ends when it closes the connection
        self.body_sent = not req.has_body
        self.conn: UpstreamConnection | None = None
        self.node = -1
        self.task: asyncio.Task | None = None
        self.finished = False
        self.deadline = 0.0         # the sweeper fails the exchange after this (loop time)
        self._attempt = 0
        self._holding = False       # this cycle counts in its node's in-flight
        self._stale_retry = False
        self._failure: Failure | None = None
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._body_ended = not req.has_body
        self._body_waiter: asyncio.Future | None = None
        self._waiting_for_client = False
        self._out: list[bytes] | None = None
        self.spool: BodySpool | None = None   # the whole body, when it is taken before a node is chosen
        self._spool_budget = spool_budget if req.has_body else None
        self._upload_deadline = upload_deadline

    # -- driven by the client protocol -------------------------------------------------
    def start(self) -> None:
        if self.req.headers.expect_continue and self.req.has_body and not self.req.http10:
            self.proto.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self._spool_budget is not None:
            self.task = self.loop.create_task(self._take_body(self._spool_budget))
            return
        self._try_next()

    def feed_body(self, data: bytes) -> None:
        self._body.append(data)
        self._buffered += len(data)
        if self._buffered > BODY_HIGH:
            self.proto.pause_reading("body")
        self._wake_body()

    def end_body(self) -> None:
        self._body_ended = True
        self._wake_body()

    def client_paused(self) -> None:
        if self.conn is not None and not self.conn.closed:
            self.conn.transport.pause_reading()

    def client_resumed(self) -> None:
        if self.conn is not None and not self.conn.closed:
            self.conn.transport.resume_reading()

    def responding(self) -> bool:
        return self.started

    def abort(self) -> None:
        """The client went away: drop the node's connection (mid-response it cannot be reused)."""
        if self.finished:
            return
        self.finished = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self._close_spool()
        if self.conn is not None:
            self.conn.detach()
            self.conn.close()
            self.conn = None
        self._release_slot()
        self.proto.app.active.discard(self)

    # -- attempts ------------------------------------------------------------------------------
    def _try_next(self) -> None:
        if self._attempt >= (2 if self.retriable else 1) or self._attempt >= len(self.candidates):
            self._finish(self._failure)
            return
        node = self.candidates[self._attempt]
        tallies = self.nodes.tallies
        if self._attempt:
            tallies.add(node, RETRIES)
        self._attempt += 1
        self.node = node
        self.nodes.counters.add(node, INFLIGHT)
        tallies.add(node, REQUESTS)
        self._holding = True
        # a request with a body cannot be replayed, so it never risks a stale pooled connection
        conn = None if self.req.has_body else self.pool.idle(node)
        if conn is not None:
            self._begin(conn)
        else:
            self.task = self.loop.create_task(self._connect(node))

    async def _connect(self, node: int) -> None:
        try:
            conn = await self.pool.connect(node)
        except ConnectFailed as exc:
            self._exchange_done(Failure(502, "upstream_unreachable", f"{self.nodes.names[node]}: {exc}", retry=True))
            return
        except Exception:  # a bug, not the node: answer 502 rather than leave the client hanging
            log.exception("connecting to %s", self.nodes.names[node])
            self._exchange_done(Failure(502, "proxy_error", "the proxy failed on this request", node_fault=False))
            return
        if self.finished:
            conn.close()
            return
        self._begin(conn)

    def _begin(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        if self.balancer is not None:
            self.balancer.served(self.req.target.key, self.node)
        self.deadline = self.loop.time() + self.read_timeout
        self.proto.app.active.add(self)
        conn.begin(self)
        conn.write(self.head)
        if self.proto.write_paused:
            conn.transport.pause_reading()
        if self.req.has_body:
            self.task = self.loop.create_task(self._send_body(conn))

    def _exchange_done(self, failure: Failure | None, reusable: bool = False) -> None:
        """One attempt is over: finish, retry on the next node, or answer the failure."""
        if self.finished:
            return
        self.proto.app.active.discard(self)
        conn, self.conn = self.conn, None
        if conn is not None:
            if failure is None:
                self.pool.release(conn, reusable)
            else:
                conn.detach()
                conn.close()
        if failure is _STALE and not self._stale_retry:  # the node had closed this idle connection: not its fault
            self._stale_retry = True
            self.task = self.loop.create_task(self._connect(self.node))
            return
        self._release_slot()
        if failure is not None and failure.node_fault:
            self.nodes.tallies.add(self.node, ERRORS)
            self.nodes.health.failure(self.node)
        if failure is None or self.started or not failure.retry:
            self._finish(failure)
            return
        self._failure = failure
        self._try_next()

    def _release_slot(self) -> None:
        if self._holding:
            self._holding = False
            self.nodes.counters.add(self.node, INFLIGHT, -1)

    def _finish(self, failure: Failure | None) -> None:
        if self.finished:
            return
        self.finished = True
        if self.task is not None and not self.task.done() and self.task is not asyncio.current_task():
            self.task.cancel()
        self._close_spool()
        proto = self.proto
        if failure is None:
            proto.cycle_done(self, self.keep_alive and self.body_sent)
        elif self.started:  # the response was cut: the client sees a short body or a reset
            proto.cycle_done(self, False)
        else:
            if failure is _STALE:
                failure = Failure(502, "upstream_failed", f"{self.nodes.names[self.node]} kept closing connections")
            keep = self.keep_alive and self._body_ended and not self._body
            extra = [(b"Retry-After", b"%d" % failure.retry_after)] if failure.retry_after else []
            proto.write(responses.error(failure.status, failure.code, failure.message, keep_alive=keep,
                                        http10=self.req.http10, head_only=self.req.method == "HEAD", headers=extra))
            proto.cycle_done(self, keep)

    # -- the request body ---------------------------------------------------------------------
    async def _take_body(self, budget: SpoolBudget) -> None:
        """Take the whole body (upload_deadline overall, client_timeout per gap), then choose a node."""
        spool = self.spool = BodySpool(budget)
        deadline = self.loop.time() + self._upload_deadline
        try:
            while True:
                remaining = deadline - self.loop.time()
                if remaining <= 0:
                    raise asyncio.TimeoutError
                chunk = await asyncio.wait_for(self._read_body(), remaining)
                if not chunk:
                    break
                if not spool.write(chunk):
                    self._give_up(Failure(503, "busy", "the proxy is holding too many uploads; try again shortly",
                                          node_fault=False, retry_after=2))
                    return
        except ClientTimeout:
            self._give_up(Failure(408, "client_timeout", f"no request body data for {self.client_timeout}s",
                                  node_fault=False))
            return
        except asyncio.TimeoutError:
            self._give_up(Failure(408, "upload_deadline",
                                  f"the request body was not received within {self._upload_deadline:g}s",
                                  node_fault=False))
            return
        h = self.req.headers
        h.chunked, h.length = False, spool.size   # the node gets a sized body, whatever the client sent
        self.head = upstream_head(self.req.method, self.req.target.path, self.req.target.query, h, self.req.client_ip)
        self._try_next()

    def _give_up(self, failure: Failure) -> None:
        self.keep_alive = False  # the rest of the body (if any) is not read: close after the answer
        self._finish(failure)

    def _close_spool(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    async def _send_body(self, conn: UpstreamConnection) -> None:
        if self.spool is not None:
            for block in self.spool.blocks():  # page cache, at loopback speed
                conn.write(block)
                await conn.drain()
                if conn.closed:
                    return
            self.body_sent = True
            self.deadline = self.loop.time() + self.read_timeout
            return
        chunked = self.req.headers.chunked
        try:
            while True:
                chunk = await self._read_body()
                if not chunk:
                    break
                self.deadline = self.loop.time() + self.read_timeout
                if chunked:
                    conn.transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    conn.write(chunk)
                await conn.drain()
                if conn.closed:
                    return
            if chunked:
                conn.write(b"0\r\n\r\n")
            self.body_sent = True
            self.deadline = self.loop.time() + self.read_timeout
        except ClientTimeout:
            self.keep_alive = False
            self._exchange_done(Failure(408, "client_timeout", f"no request body data for {self.client_timeout}s",
                                        node_fault=False))

    async def _read_body(self) -> bytes:
        while not self._body:
            if self._body_ended:
                return b""
            self._body_waiter = fut = self.loop.create_future()
            timer = self.loop.call_later(self.client_timeout, self._body_timeout, fut)
            self._waiting_for_client = True
            try:
                await fut
            finally:
                timer.cancel()
                self._waiting_for_client = False
        if len(self._body) == 1:
            chunk = self._body.popleft()
        else:
            chunk = b"".join(self._body)
            self._body.clear()
        self._buffered = 0
        self.proto.resume_reading("body")
        return chunk

    def _wake_body(self) -> None:
        w = self._body_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _body_timeout(self, fut: asyncio.Future) -> None:
        if not fut.done():
            fut.set_exception(ClientTimeout())

    def check_timeout(self, now: float) -> None:
        """Called by the sweeper: fail the exchange if the node has been silent too long."""
        if now < self.deadline or self.conn is None:
            return
        if self._waiting_for_client:  # the client is slow sending its body, not the node
            self.deadline = now + self.read_timeout
            return
        self.flush()
        self._exchange_done(Failure(504, "upstream_timeout",
                                    f"{self.nodes.names[self.node]} did not answer within {self.read_timeout}s",
                                    retry=not self.started))

    # -- events from the node (UpstreamConnection) ----------------------------------------
    def on_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.deadline = self.loop.time() + self.read_timeout
        if status >= 500:
            self.nodes.tallies.add(self.node, ERRORS)
            if status != 503:  # a 503 is a live node's deliberate answer (storage down...): /readyz decides
                self.nodes.health.failure(self.node)
        else:
            self.nodes.health.success(self.node, revive=False)
        self.started = True
        # held back until the end of this read, so head and body usually leave in one write
        self._out = [self._response_head(status, reason, headers)]
        if self.req.method == "HEAD":
            self.flush()
            self._complete(reusable=True)

    def on_body(self, data: bytes) -> None:
        out = self._out
        if out is None:
            self._out = out = []
            self.deadline = self.loop.time() + self.read_timeout
        if self.chunk_out:
            out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            out.append(data)

    def on_complete(self, keep_alive: bool) -> None:
        if self.chunk_out:
            if self._out is None:
                self._out = []
            self._out.append(b"0\r\n\r\n")
        self.flush()
        self._complete(keep_alive)

    def flush(self) -> None:
        """Write what the node's last read produced, in one write."""
        out, self._out = self._out, None
        if out:
            self.proto.write(out[0] if len(out) == 1 else b"".join(out))

    def on_lost(self, exc: BaseException | None) -> None:
        if self.finished:
            return
        self.flush()
        conn = self.conn
        if self.started and self.close_delimited:  # the node's EOF is the end of its body
            self.on_complete(False)
            return
        if self.started:
            failure = Failure(502, "upstream_lost", "the node closed the connection mid-response")
        elif conn is not None and conn.reused and not conn.got_bytes and not self.req.has_body:
            failure = _STALE
        else:
            failure = Failure(502, "upstream_failed",
                              f"{self.nodes.names[self.node]} closed the connection before answering", retry=True)
        self._exchange_done(failure)

    def _complete(self, reusable: bool) -> None:
        if not self.body_sent:  # the node answered before taking the whole body (413...)
            reusable = False
            self.keep_alive = False
        self._exchange_done(None, reusable)

    def _response_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
        out = [b"HTTP/1.1 %d %s\r\n" % (status, reason or responses.reason(status))]
        length = chunked = False
        via = b""
        for name, value in headers:
            n = name.lower()
            if n in _RESPONSE_DROP:
                if n == b"via":
                    via = via + b", " + value if via else value
                elif n == b"transfer-encoding":
                    chunked = True
                continue
            if n == b"content-length":
                length = True
            out.append(b"%s: %s\r\n" % (name, value))
        out.append(b"Via: " + via + b", 1.1 hashproxy\r\n" if via else b"Via: 1.1 hashproxy\r\n")
        no_body = self.req.method == "HEAD" or status in (204, 304)
        self.close_delimited = not (length or chunked or no_body)
        if not length and not no_body:
            if self.req.http10:
                self.keep_alive = False  # the body ends when the connection does
            else:
                self.chunk_out = True
                out.append(b"Transfer-Encoding: chunked\r\n")
        if not self.keep_alive:
            out.append(b"Connection: close\r\n")
        elif self.req.http10:
            out.append(b"Connection: keep-alive\r\n")
        out.append(b"\r\n")
        return b"".join(out)


_STALE = Failure(502, "stale_connection", "pooled connection closed by the node", node_fault=False, retry=True)
