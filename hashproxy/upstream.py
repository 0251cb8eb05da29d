"""Connections to the nodes: a keep-alive pool per role and the response side of HTTP/1.1.

An UpstreamConnection parses responses with httptools and hands each event to
the current *exchange* (a proxied request, a PURGE, a health check): on_head,
on_body, on_complete, on_lost. The pool keeps idle connections per node and
drops those idle longer than ``pool_idle_timeout``, so we rarely send on a
connection the node is closing at the same moment (gunicorn closes idle ones
after 2 s); a request without a body that still meets such a race is retried on
a fresh connection by the caller.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Protocol, Sequence

import httptools


class Exchange(Protocol):
    def on_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None: ...
    def on_body(self, data: bytes) -> None: ...
    def on_complete(self, keep_alive: bool) -> None: ...
    def on_lost(self, exc: BaseException | None) -> None: ...
    def flush(self) -> None: ...


class ConnectFailed(Exception):
    """The node refused, did not answer in time, or is unreachable."""


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, node: int):
        self.node = node
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.exchange: Exchange | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.got_bytes = False
        self._interim = False
        self._write_paused = False
        self._drain: asyncio.Future | None = None

    # -- asyncio.Protocol ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.exchange is None:  # unsolicited bytes on an idle connection: drop it
            self.close()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)  # type: ignore[union-attr]
        except httptools.HttpParserError as exc:
            self._lose(exc)
            return
        if self.exchange is not None:
            self.exchange.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake_drain()
        self._lose(exc)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    # -- httptools callbacks -----------------------------------------------------------
    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()  # type: ignore[union-attr]
        if status < 200:  # an interim response (100 Continue...): wait for the real one
            self._interim = True
            return
        if self.exchange is not None:
            self.exchange.on_head(status, self.reason, self.headers)

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange.on_body(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            self.headers, self.reason = [], b""
            return
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.on_complete(self.parser.should_keep_alive())  # type: ignore[union-attr]

    # -- use -------------------------------------------------------------------------------
    def begin(self, exchange: Exchange) -> None:
        """Start one request/response on this connection; a fresh parser per response (HEAD has no body)."""
        self.exchange = exchange
        self.parser = httptools.HttpResponseParser(self)
        self.headers, self.reason, self.got_bytes, self._interim = [], b"", False, False

    def detach(self) -> None:
        self.exchange = None

    def write(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    async def drain(self) -> None:
        if self._write_paused and not self.closed:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def _wake_drain(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    def _lose(self, exc: BaseException | None) -> None:
        exchange, self.exchange = self.exchange, None
        self.close()
        if exchange is not None:
            exchange.on_lost(exc)


class UpstreamPool:
    """Idle keep-alive connections per node of one role (one pool per worker)."""

    def __init__(self, addrs: Sequence[tuple[str, int]], connect_timeout: float = 2.0,
                 idle_timeout: float = 1.5, max_idle: int = 64):
        self.addrs = tuple(addrs)
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self._idle: list[deque[UpstreamConnection]] = [deque() for _ in self.addrs]

    def idle(self, node: int) -> UpstreamConnection | None:
        """A pooled connection to the node, most recently used first, or None."""
        idle = self._idle[node]
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.idle_timeout:
                conn.reused = True
                return conn
            conn.close()
        return None

    async def connect(self, node: int) -> UpstreamConnection:
        host, port = self.addrs[node]
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamConnection(node), host, port), self.connect_timeout)
        except asyncio.TimeoutError:
            raise ConnectFailed(f"connect to {host}:{port} timed out") from None
        except OSError as exc:
            raise ConnectFailed(f"connect to {host}:{port}: {exc.strerror or exc}") from None
        if conn.closed:
            # A node going away can accept (the kernel does) and close before we resume here:
            # its connection_lost has come and gone, so a request written now would wait out
            # the read timeout with no callback left to come. Callers use the connection in
            # this same step, so checking here covers them all.
            raise ConnectFailed(f"connect to {host}:{port}: closed by the node at once")
        return conn

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        conn.detach()
        idle = self._idle[conn.node]
        if reusable and not conn.closed and len(idle) < self.max_idle:
            conn.idle_since = time.monotonic()
            idle.append(conn)
        else:
            conn.close()

    def close_all(self) -> None:
        for idle in self._idle:
            while idle:
                idle.pop().close()


class UpstreamError(Exception):
    """A whole-response call (PURGE, health check) failed: connect, timeout or a broken response."""


class _Collector:
    """An exchange that gathers a whole (small) response."""

    def __init__(self, fut: asyncio.Future):
        self.fut = fut
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.keep_alive = False

    def on_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.status, self.headers = status, list(headers)

    def on_body(self, data: bytes) -> None:
        if len(self.body) < 1 << 20:
            self.body += data

    def on_complete(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive
        if not self.fut.done():
            self.fut.set_result(None)

    def flush(self) -> None:
        pass

    def on_lost(self, exc: BaseException | None) -> None:
        if not self.fut.done():
            self.fut.set_exception(UpstreamError(f"connection lost: {exc or 'closed by the node'}"))


async def call(pool: UpstreamPool, node: int, method: str, path: str, headers: Sequence[tuple[str, str]] = (),
               timeout: float = 5.0, pooled: bool = True) -> tuple[int, bytes]:
    """One bodiless request (not HEAD) to a node, whole response returned as (status, body)."""
    host, port = pool.addrs[node]
    try:
        conn = (pool.idle(node) if pooled else None) or await pool.connect(node)
    except ConnectFailed as exc:
        raise UpstreamError(str(exc)) from None
    fut = asyncio.get_running_loop().create_future()
    collector = _Collector(fut)
    conn.begin(collector)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers)]
    if not pooled:
        lines.append("Connection: close")
    conn.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    try:
        await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError:
        conn.detach()
        conn.close()
        raise UpstreamError(f"no answer within {timeout}s") from None
    if pooled:
        pool.release(conn, collector.keep_alive)
    else:
        conn.close()
    return collector.status, bytes(collector.body)
