"""HTTP1Protocol: the asyncio protocol both HTTP services run, and the Cycle a service answers with.

Shaped like uvicorn's ``httptools_impl``: one protocol object per connection feeds
the httptools (llhttp) parser; at the end of each request head it asks the service
(``handle_head``) for a ``Cycle`` and runs the cycles of one connection strictly in
order (HTTP/1.1 pipelining). What the protocol owns, so no service writes it again:

- Limits (``Limits``): request-line length (414), header bytes and count and raw
  head size (431), body bytes (413).
- Framing: every head is held to ``cluster.framing``'s strict reading before a
  cycle sees it; chunked bodies have a framing budget (chunk extensions). A
  ``Connection`` header never touches framing or Host (``framing.connection_tokens``).
- Upgrades (WebSocket, h2c, CONNECT) are refused the same way everywhere.
- Flow control both ways: reading pauses while the transport's write buffer is past
  its high-water mark (and no further cycle starts until it drains), while requests
  are queued behind the one being answered, and when a cycle asks (a body it cannot
  take yet); it resumes only when no reason is left.
- Deadlines, checked by the service's periodic sweep (``check_timers``), not by a
  timer per request: idle keep-alive, request head, whole request, body gap, and a
  client that leaves its answers unread.
- The connection cap: past ``max_connections`` a new connection gets 503 and is closed.
- Refusals (``refusal.refusal``) are answered in order: after the responses to the
  requests before the bad one, never before; then the connection closes, since the
  stream can no longer be trusted. A request cut while its body streams is aborted
  first (a proxy drops its node connection, so the node never sees the rest).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import httptools

from cluster.framing import CHUNK_OVERHEAD_REFUSAL, ChunkBudget, check_head

from .date import date_header
from .limits import Limits
from .refusal import OVERLOADED, UPGRADE_REFUSAL, refusal

log = logging.getLogger("http1")

SHED_LINGER = 1.0  # seconds a connection refused at the cap may take to close its side


class Cycle:
    """One request on a connection. ``start`` is called when it is its turn to answer:
    its head is parsed and every request before it has been answered. Its body (if
    any) arrives through ``feed_body``/``end_body``, before or after ``start``. It
    ends by calling ``proto.cycle_done(self, keep_alive)``."""

    __slots__ = ()

    def start(self) -> None:
        raise NotImplementedError

    def feed_body(self, data: bytes) -> None:
        pass

    def end_body(self) -> None:
        pass

    def client_paused(self) -> None:
        """The client stopped reading (write buffer past its high-water mark)."""

    def client_resumed(self) -> None:
        """The client reads again."""

    def abort(self) -> None:
        """The connection is gone or the request was cut: stop, release what is held."""

    def responding(self) -> bool:
        """True once part of the answer was written (then a cut can only close the connection)."""
        return False


class _Refusal(Cycle):
    __slots__ = ("proto", "data")

    def __init__(self, proto: "HTTP1Protocol", data: bytes):
        self.proto, self.data = proto, data

    def start(self) -> None:
        self.proto.write(self.data)
        self.proto.cycle_done(self, False)


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that breaks a rule (the reason is in _refusal)."""


class HTTP1Protocol(asyncio.Protocol):
    """The server side of one HTTP/1.1 connection; a service subclasses it and supplies ``handle_head``."""

    #: header lines a service adds to every refusal (each ending in CRLF)
    refusal_extra = b""

    def __init__(self, loop: asyncio.AbstractEventLoop, connections: set, limits: Limits):
        self.loop = loop
        self.connections = connections
        self.limits = limits
        self.transport: asyncio.Transport | None = None
        self.peer: tuple = ("", 0)
        self.parser = httptools.HttpRequestParser(self)
        self.cycle: Cycle | None = None       # the cycle being answered
        self.receiving: Cycle | None = None   # the cycle whose body is being received
        self.pipeline: deque[Cycle] = deque()
        self.write_paused = False
        self.closing = False                  # close once the cycles in hand are answered
        self.discard = False                  # refused or shed: what arrives is dropped
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self._pauses: set[str] = set()
        self._advancing = False
        self._in_head = False
        self._head_bytes = 0
        self._header_bytes = 0
        self._body_bytes = 0
        self._check = False                   # a framing header was seen: check_head runs
        self._short_names = 0                 # 4-byte header names (Host...): a second one means check_head runs
        self._refusal: tuple | None = None
        self._chunks: ChunkBudget | None = None
        now = loop.time()
        self.request_began = now              # loop time of the first byte of the request being received
        self.last_data = now
        self.idle_since = now                 # when the connection last went idle (-1: just now, not yet noted)
        self.stalled_since = 0.0
        self._max_line = limits.max_request_line
        self._max_header_bytes = limits.max_header_bytes
        self._max_headers = limits.max_headers
        self._max_head = limits.max_head
        self._max_body = limits.max_body
        self._max_queued = max(1, limits.max_queued)

    # -- what a service supplies ------------------------------------------------------------------
    def handle_head(self, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]], version: str,
                    keep_alive: bool) -> Cycle:
        """The cycle that answers this request head (which passed every framing check)."""
        raise NotImplementedError

    def on_refused(self, status: int, nbytes: int) -> None:
        """A refusal of ``nbytes`` was queued (for an access log)."""

    # -- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.limits.write_high_water:
            transport.set_write_buffer_limits(high=self.limits.write_high_water)  # type: ignore[attr-defined]
        self.peer = transport.get_extra_info("peername") or ("", 0)
        if len(self.connections) >= self.limits.max_connections:
            # File descriptors are finite: shed the newest rather than fail accept() for everyone.
            # Its request is still coming in, and closing on unread data would reset the
            # connection and lose the answer: shut our side, drop what arrives, and close when
            # the client does, or after SHED_LINGER.
            self.discard = self.closing = True
            self.transport.write(refusal(*OVERLOADED, self.refusal_extra + date_header() + b"Retry-After: 1\r\n"))
            if self.transport.can_write_eof():
                self.transport.write_eof()
                self.loop.call_later(SHED_LINGER, self.transport.close)
            else:
                self.transport.close()
            return
        self.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.closing = True
        self.transport = None
        cycles = [c for c in (self.cycle, self.receiving) if c is not None] + list(self.pipeline)
        self.cycle = self.receiving = None
        self.pipeline.clear()
        for cycle in dict.fromkeys(cycles):
            cycle.abort()

    def data_received(self, data: bytes) -> None:
        if self.discard:
            return  # read and dropped: closing with unread data would reset the connection
        self.last_data = self.loop.time()
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
            if self._refusal is None and isinstance(exc, httptools.HttpParserCallbackError):
                self._handler_failed(exc.__context__)
                return
            self._refuse(*(self._refusal or (400, "bad_request", f"malformed HTTP request: {_short(exc)}")))
            return
        if self._in_head and self._head_bytes > self._max_head:
            self._refuse(431, "headers_too_large", f"the request head is larger than {self._max_head} bytes")
        elif chunks is not None and chunks is self._chunks and chunks.exceeded():
            self._refuse(*CHUNK_OVERHEAD_REFUSAL)  # all of data went to one body: its framing outweighs it

    def pause_writing(self) -> None:
        self.write_paused = True
        self.stalled_since = self.loop.time()
        self.pause_reading("write")
        if self.cycle is not None:
            self.cycle.client_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.resume_reading("write")
        if self.cycle is not None:
            self.cycle.client_resumed()
        if self.cycle is None and self.pipeline:
            self._advance()

    # -- httptools callbacks ------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._header_bytes = 0
        self._body_bytes = 0
        self._check = False
        self._short_names = 0
        self.url = b""
        self.headers = []
        self.request_began = self.last_data  # the read that brought its first byte

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self._max_line:
            self._refusal = (414, "uri_too_long", f"the request target is longer than {self._max_line} bytes")
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4  # the byte budget also bounds the line count
        if self._header_bytes > self._max_header_bytes:
            self._refusal = (431, "headers_too_large",
                             f"the request headers are larger than {self._max_header_bytes} bytes")
            raise _Refused
        self.headers.append((name, value))
        size = len(name)
        if size == 4:  # host: a second one must be refused
            self._short_names += 1
        elif size == 14 or size == 17:  # content-length, transfer-encoding (and a few others: then just checked)
            self._check = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        if len(self.headers) > self._max_headers:
            self._refusal = (431, "headers_too_large", f"more than {self._max_headers} request header lines")
            raise _Refused
        parser = self.parser
        if parser.should_upgrade():
            self._refusal = UPGRADE_REFUSAL
            raise _Refused
        version = parser.get_http_version()
        if self._check or self._short_names > 1:  # the common head (no body, one Host) skips the full check
            refused = check_head(self.headers, version == "1.0")
            if refused is not None:
                self._refusal = tuple(refused)
                raise _Refused
        # shutting down: a request that still comes in is answered, with Connection: close
        keep_alive = parser.should_keep_alive() and not self.closing
        cycle = self.handle_head(parser.get_method(), self.url, self.headers, version, keep_alive)
        self.receiving = cycle
        if self.cycle is None and not self.pipeline and not self.write_paused:
            self.cycle = cycle
            cycle.start()
        else:
            self.pipeline.append(cycle)
            if len(self.pipeline) >= self._max_queued:
                self.pause_reading("pipeline")

    def on_chunk_header(self) -> None:
        if self._chunks is None:
            self._chunks = ChunkBudget()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        chunks = self._chunks
        if chunks is not None:
            chunks.data += len(body)
        if self._body_bytes > self._max_body:
            self._refusal = (413, "body_too_large", f"the request body is larger than {self._max_body} bytes")
            raise _Refused
        receiving = self.receiving
        if receiving is not None:
            receiving.feed_body(body)

    def on_message_complete(self) -> None:
        self._chunks = None
        receiving = self.receiving
        if receiving is not None:
            self.receiving = None
            receiving.end_body()

    # -- used by the cycles -------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def pause_reading(self, reason: str) -> None:
        """Stop reading for a named reason; reading resumes when every reason is withdrawn."""
        if not self._pauses and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self._pauses.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason not in self._pauses:
            return
        self._pauses.discard(reason)
        if not self._pauses and self.transport is not None and not self.transport.is_closing():
            if self._in_head or self.receiving is not None:
                self.request_began = self.last_data = self.loop.time()  # our pause is not the client's delay
            self.transport.resume_reading()

    def cycle_done(self, cycle: Cycle, keep_alive: bool) -> None:
        """A response is complete: start the next pipelined request, wait for one, or close."""
        if cycle is not self.cycle:
            return
        self.cycle = None
        if not keep_alive:
            self.close()
        elif self.pipeline:
            if not self._advancing:
                self._advance()
        elif self.closing:
            self.close()
        else:  # the common case, one request at a time: the sweep notes when it finds it idle
            self.idle_since = -1.0

    def close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def shutdown(self) -> None:
        """Graceful stop: close now if idle, else once the responses in hand are written."""
        self.closing = True
        if self.cycle is None and not self.pipeline and not self._in_head and self.receiving is None:
            self.close()

    @property
    def busy(self) -> bool:
        """A request is being answered."""
        return self.cycle is not None

    # -- internals ---------------------------------------------------------------------------------
    def _advance(self) -> None:
        """Start queued cycles in order until one is left running, the client stops reading, or none is left.

        A loop, not recursion: a cycle that answers at once calls cycle_done from start()."""
        self._advancing = True
        try:
            while self.cycle is None and self.pipeline and not self.write_paused:
                transport = self.transport
                if transport is None or transport.is_closing():
                    return
                self.cycle = nxt = self.pipeline.popleft()
                nxt.start()
        finally:
            self._advancing = False
        if len(self.pipeline) < self._max_queued:
            self.resume_reading("pipeline")
        if self.cycle is None and not self.pipeline:
            if self.closing:
                self.close()
            else:
                self.idle_since = -1.0

    def _handler_failed(self, exc: BaseException | None) -> None:
        """The service's handler raised inside a parser callback (a bug, not the client's fault):
        logged; the request is dropped unless its answer has begun, and the client gets a 503."""
        log.error("request handler failed", exc_info=(type(exc), exc, exc.__traceback__) if exc else None)
        failed = self.cycle
        if failed is not None and not failed.responding():
            self.cycle = None
            failed.abort()
        self._refuse(503, "server_error", "the server failed on this request; try again", b"Retry-After: 1\r\n")

    def _refuse(self, status: int, code: str, message: str, extra: bytes = b"") -> None:
        """Answer a request that cannot be parsed or breaks a rule, after those before it; then close."""
        if self.discard:
            return
        self.discard = True
        self.pause_reading("refused")
        cut, self.receiving = self.receiving, None
        self._chunks = None
        self._in_head = False
        if cut is not None:
            cut.abort()
            if cut is self.cycle:
                self.cycle = None
                if cut.responding():  # its answer is half written: only closing is left
                    self.close()
                    return
            else:
                try:
                    self.pipeline.remove(cut)
                except ValueError:
                    pass
        data = refusal(status, code, message, self.refusal_extra + date_header() + extra)
        self.on_refused(status, len(data))
        answer = _Refusal(self, data)
        if self.cycle is None and not self.pipeline:
            self.cycle = answer  # nothing before it: written now (the close flushes it, read or not)
            answer.start()
        else:
            self.pipeline.append(answer)
            if self.cycle is None and not self.write_paused and not self._advancing:
                self._advance()  # the cycle before it was dropped (a failed handler)

    def check_timers(self, now: float) -> None:
        """Called by the service's sweeper a few times a second: the slow-client and idle limits."""
        transport = self.transport
        if transport is None or self.discard:
            return
        lim = self.limits
        if not self._pauses:  # while we do not read, the client is not the slow one
            if self._in_head:
                if now - self.request_began > lim.head_timeout:
                    self._refuse(408, "request_timeout", f"the request was not received within {lim.head_timeout:g}s")
                    return
            elif self.receiving is not None:
                if lim.request_timeout and now - self.request_began > lim.request_timeout:
                    self._refuse(408, "request_timeout",
                                 f"the request was not received within {lim.request_timeout:g}s")
                    return
                if lim.body_gap_timeout and now - self.last_data > lim.body_gap_timeout:
                    self._refuse(408, "request_timeout", f"no request body data for {lim.body_gap_timeout:g}s")
                    return
            elif self.cycle is None and not self.pipeline:
                if self.idle_since < 0:  # went idle since the last sweep
                    self.idle_since = now
                if now - max(self.idle_since, self.last_data) > lim.idle_timeout:
                    self.close()
                    return
        if self.write_paused and now - self.stalled_since > lim.write_stall_timeout:
            transport.abort()  # the client stopped reading its answers: free what they hold


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
