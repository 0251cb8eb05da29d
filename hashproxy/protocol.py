"""The client side of the proxy: one asyncio protocol per connection, parsing with httptools.

It enforces the limits (request-line length: 414, header bytes: 431, malformed:
400, slow or idle clients: 408 or close), hands each parsed request head to the
app's router, which returns a cycle, and runs the cycles of one connection one
after another (HTTP/1.1 pipelining: later requests wait, with reading paused,
until the earlier response is written). Reading is paused for named reasons
(body backpressure, pipelining, a refused request) and resumes only when none is left.

Framing is checked before a request is routed (cluster/framing.py): an ambiguous
head is refused with 400 and the connection closed. A request refused while its
body is being streamed (bad chunk framing, chunk extensions past their budget, a
chunked body past ``limits.max_upload_bytes``) has its node connection dropped
at once, so the node never sees the rest of it, let alone a second request in it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

import httptools

from cluster.framing import CHUNK_OVERHEAD_REFUSAL, ChunkBudget, check_head

from . import responses
from .cycle import Cycle, Reply

SHED_LINGER = 1.0  # seconds a connection refused at the cap may take to close its side

if TYPE_CHECKING:
    from .app import ProxyApp


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that breaks a limit."""


class ProxyProtocol(asyncio.Protocol):
    def __init__(self, app: "ProxyApp"):
        self.app = app
        self.loop = app.loop
        self.transport: asyncio.Transport | None = None
        self.client_ip = b"unknown"
        self.parser = httptools.HttpRequestParser(self)
        self.cycle: Cycle | None = None          # the cycle whose response is being written
        self.receiving: Cycle | None = None      # the cycle whose request body is being read
        self.pipeline: deque[Cycle] = deque()
        self.write_paused = False
        self.closing = False
        self._read_pauses: set[str] = set()
        self.idle_deadline = 0.0      # loop time by which a request head must be in (0: not waiting)
        self.write_deadline = 0.0     # loop time by which a stalled client must read again (0: not stalled)
        self._in_head = False
        self._head_bytes = 0
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._refusal: tuple[int, str, str] | None = None
        self._chunks: ChunkBudget | None = None   # framing spent by the chunked body being received
        self._max_chunked = app.cfg.limits.max_upload_bytes
        settings = app.settings
        self._max_line = settings.max_request_line
        self._max_headers = settings.max_header_bytes
        self._max_head = settings.max_request_line + settings.max_header_bytes + 1024
        self._client_timeout = settings.client_timeout

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip = str(peer[0]).encode()
        if len(self.app.connections) >= self.app.settings.max_connections:
            # File descriptors are finite: shed the newest rather than fail accept() for everyone.
            # Its request is still coming in, and closing on unread data would reset the
            # connection and lose the answer: shut our side, drop what arrives (closing is
            # set), and close when the client does, or after SHED_LINGER.
            self.closing = True
            self.transport.write(responses.error(503, "overloaded", "too many open connections; try again shortly",
                                                 keep_alive=False, headers=[(b"Retry-After", b"1")]))
            if self.transport.can_write_eof():
                self.transport.write_eof()
                self.loop.call_later(SHED_LINGER, self.transport.close)
            else:
                self.transport.close()
            return
        self.app.connections.add(self)
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.app.connections.discard(self)
        self.closing = True
        if self.cycle is not None:
            self.cycle.abort()
        for cycle in self.pipeline:
            cycle.abort()
        self.cycle = self.receiving = None
        self.pipeline.clear()

    def data_received(self, data: bytes) -> None:
        if self.closing or "refused" in self._read_pauses:
            return
        if self._in_head:
            self._head_bytes += len(data)
        chunks = self._chunks
        if chunks is not None:
            chunks.raw += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(*UPGRADE_REFUSAL)
            return
        except httptools.HttpParserError as exc:
            status, code, message = self._refusal or (400, "bad_request", f"malformed HTTP request: {_short(exc)}")
            self._refuse(status, code, message)
            return
        if self._in_head and self._head_bytes > self._max_head:
            self._refuse(431, "headers_too_large", f"the request head is larger than {self._max_head} bytes")
        elif chunks is not None and chunks is self._chunks and chunks.exceeded():
            self._refuse(*CHUNK_OVERHEAD_REFUSAL)  # all of data went to one body: its framing outweighs it

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.cycle is not None:
            self.cycle.client_paused()
        self.write_deadline = self.loop.time() + self._client_timeout

    def resume_writing(self) -> None:
        self.write_paused = False
        self.write_deadline = 0.0
        if self.cycle is not None:
            self.cycle.client_resumed()

    # -- httptools callbacks ---------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_head = True
        self._refusal = None
        self._head_bytes = 0
        self._url = b""
        self._headers = []
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._max_line:
            self._refusal = (414, "uri_too_long", f"the request target is longer than {self._max_line} bytes")
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self._max_headers:
            self._refusal = (431, "headers_too_large", f"the request headers are larger than {self._max_headers} bytes")
            raise _Refused
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self.idle_deadline = 0.0
        parser = self.parser
        if parser.should_upgrade():
            self._refusal = UPGRADE_REFUSAL
            raise _Refused
        version = parser.get_http_version()
        refusal = check_head(self._headers, version == "1.0")
        if refusal is not None:
            self._refusal = refusal
            raise _Refused
        cycle = self.app.route(self, parser.get_method().decode("ascii", "replace"), self._url, self._headers,
                               version, parser.should_keep_alive())
        self.receiving = cycle
        req = cycle.req
        if req is not None and req.headers.chunked:
            self._chunks = ChunkBudget()
        self._enqueue(cycle)

    def on_body(self, body: bytes) -> None:
        chunks = self._chunks
        if chunks is not None:
            chunks.data += len(body)
            if chunks.data > self._max_chunked:
                self._refusal = (413, "body_too_large", f"the request body is larger than {self._max_chunked} bytes")
                raise _Refused
        if self.receiving is not None:
            self.receiving.feed_body(body)

    def on_message_complete(self) -> None:
        self._chunks = None
        if self.receiving is not None:
            self.receiving.end_body()
            self.receiving = None

    # -- used by the cycles -----------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def pause_reading(self, reason: str) -> None:
        if not self._read_pauses and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self._read_pauses.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason not in self._read_pauses:
            return
        self._read_pauses.discard(reason)
        if not self._read_pauses and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def cycle_done(self, cycle: Cycle, keep_alive: bool) -> None:
        """A response is complete: start the next pipelined request, wait for one, or close."""
        if cycle is not self.cycle:
            return
        self.cycle = None
        if not keep_alive:
            self.close()
            return
        if self.pipeline:
            nxt = self.pipeline.popleft()
            self.cycle = nxt
            if not self.pipeline:
                self.resume_reading("pipeline")
            nxt.start()
            return
        if self.closing:
            self.close()
            return
        self._arm_idle_timer()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def shutdown(self) -> None:
        """Graceful stop: close now if idle, else after the response being written."""
        self.closing = True
        if self.cycle is None and not self._in_head:
            self.close()

    # -- internals ----------------------------------------------------------------------------------
    def _enqueue(self, cycle: Cycle) -> None:
        if self.cycle is None:
            self.cycle = cycle
            cycle.start()
        else:
            self.pipeline.append(cycle)
            self.pause_reading("pipeline")

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer a request that cannot be parsed or breaks a limit, then close (the stream is out of sync).

        A request whose body was being streamed is cut off first: its node connection is
        dropped (the node sees a truncated request, never the bytes after the fault)."""
        self.pause_reading("refused")
        cut, self.receiving = self.receiving, None
        self._chunks = None
        self._in_head = False
        reply = Reply(self, None, responses.error(status, code, message, keep_alive=False), keep_alive=False)
        if cut is not None:
            cut.abort()
            if cut is self.cycle:
                self.cycle = None
                if getattr(cut, "started", False):  # its response is half written: only closing is left
                    self.close()
                    return
            elif cut in self.pipeline:
                self.pipeline.remove(cut)
        self._enqueue(reply)

    def _arm_idle_timer(self) -> None:
        self.idle_deadline = self.loop.time() + self._client_timeout

    def check_timers(self, now: float) -> None:
        """Called by the worker's sweeper (no timer per request): idle, slow-head and stalled-reader limits."""
        if self.idle_deadline and now >= self.idle_deadline:
            self.idle_deadline = 0.0
            if self.cycle is None and not self.closing:
                if self._in_head or self.receiving is not None:
                    self._refuse(408, "request_timeout", f"the request was not received within {self._client_timeout}s")
                else:
                    self.close()
        if self.write_deadline and now >= self.write_deadline and self.write_paused and self.transport is not None:
            self.transport.abort()  # the client stopped reading; free the node's connection


UPGRADE_REFUSAL = (400, "upgrade_unsupported", "protocol upgrades (WebSocket, h2c) are not supported")


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
