"""The ypws gunicorn worker: cache hits on an event loop, everything else on threads.

gunicorn's own workers parse HTTP in Python and build a WSGI environ per
request; that costs more CPU than a whole cache hit should. This worker keeps
gunicorn for what it does well (the master: binding, forking, heartbeats,
restarts, graceful stops) and serves connections on uvloop with the httptools
parser. For each GET/HEAD of an image it first asks ``ImageService.respond(...,
fast=True)``: a cache hit is answered right there from one cache file read, with
no environ and no thread. A miss, a page, PURGE or anything else goes, as WSGI,
to the falcon app on a thread pool; the connection waits (requests pipelined
behind it are queued) and its reading is paused meanwhile. Likewise while the
client is not reading its answers (the transport's write buffer is past its high
water mark): reading is paused and parsed requests wait in the queue, so a client
that pipelines hits and never reads holds a few small request objects, not
megabytes of answers.

Framing follows the same strict rules as hashproxy (cluster/framing.py): an
ambiguous head, an Upgrade, or a chunked body whose framing outweighs its data is
refused with a JSON 400 and the connection closed; a refusal that follows requests
still being answered is written after their responses, never before.
"""

from __future__ import annotations

import asyncio
import http
import io
import json
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote_to_bytes

import httptools
from gunicorn.workers import base

from cluster.framing import CHUNK_OVERHEAD_REFUSAL, ChunkBudget, check_head

from .accesslog import AccessLog
from .diskcache import CorruptEntry
from .images import ImageRequest, Reply

MAX_URL = 8190
MAX_HEADER_BYTES = 65536
MAX_HEADERS = 100
MAX_BODY = 1 << 20            # ypws takes no uploads: PURGE and friends have tiny bodies
WRITE_HIGH_WATER = 256 * 1024
FILE_BLOCK = 256 * 1024
#: request headers the image rules read (ImageRequest field names), plus the access log's
IMAGE_HEADERS = {
    b"host": "host", b"referer": "referer", b"accept": "accept", b"if-none-match": "if_none_match",
    b"if-modified-since": "if_modified_since", b"range": "range", b"if-range": "if_range",
}
LOGGED_HEADERS = {**IMAGE_HEADERS, b"user-agent": "ua"}
#: headers that make a request head worth the full framing check (cluster.framing.check_head)
FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding"})
HEAD_MEMO_MAX = 4096
STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in http.HTTPStatus}


SHED_LINGER = 1.0  # seconds a refused connection may take to close its side
UPGRADE_REFUSAL = (400, "upgrade_unsupported", "protocol upgrades (WebSocket, h2c) are not supported")
NOSNIFF = b"X-Content-Type-Options: nosniff\r\n"


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str):
        self.status, self.code, self.message = status, code, message


class _Refusal(tuple):
    """A refusal queued behind pipelined requests: (status, code, message)."""


class _Request:
    __slots__ = ("method", "url", "headers", "fields", "body", "keep_alive", "version", "started")

    def __init__(self, method: bytes, url: bytes, headers: list, fields: dict, body: bytes, keep_alive: bool,
                 version: str, started: float):
        self.method, self.url, self.headers, self.fields, self.body = method, url, headers, fields, body
        self.keep_alive, self.version, self.started = keep_alive, version, started


class FileWrapper:
    """wsgi.file_wrapper: big blocks, closed by the server."""

    def __init__(self, fh, block: int = FILE_BLOCK):
        self.fh, self.block = fh, max(block, FILE_BLOCK)

    def __iter__(self):
        while chunk := self.fh.read(self.block):
            yield chunk

    def close(self) -> None:
        self.fh.close()


class HttpProtocol(asyncio.Protocol):
    def __init__(self, worker: "YpwsWorker"):
        self.worker = worker
        self.loop = worker.loop
        self.service = worker.service
        self.log = worker.access
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = ("", 0)
        self.pending: deque[_Request] = deque()
        self.busy = False
        self.write_paused = False  # the client is not reading: answer nothing more until it does
        self.shed = False  # refused at the connection cap: incoming data is dropped
        self.last_active = self.loop.time()
        self.started: float | None = None  # when the request being received sent its first byte
        self.chunks: ChunkBudget | None = None  # framing spent by the chunked body being received
        self.can_write = threading.Event()
        self.can_write.set()
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.fields: dict[str, str] = {}  # the headers named in LOGGED_HEADERS, decoded
        self.body: list[bytes] = []
        self.header_bytes = 0
        self.body_bytes = 0
        self.framing = False  # a framing header or a second Host was seen: check_head runs

    # -- asyncio callbacks -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.peer = transport.get_extra_info("peername") or ("", 0)
        if len(self.worker.connections) >= self.worker.max_connections:
            # file descriptors are finite: shed the newest rather than fail accept() for everyone
            self._refuse(503, "overloaded", "too many open connections; try again shortly", b"Retry-After: 1\r\n",
                         linger=True)
            return
        self.worker.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.connections.discard(self)
        self.transport = None
        self.can_write.set()  # a thread waiting to write finds the connection gone

    def pause_writing(self) -> None:
        self.can_write.clear()
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.can_write.set()
        self.write_paused = False
        if self.transport is not None and not self.busy:
            self.transport.resume_reading()
            self._drain()

    def data_received(self, data: bytes) -> None:
        if self.shed:
            return  # read and dropped: closing with unread data would reset the connection
        self.last_active = self.loop.time()
        chunks = self.chunks
        if chunks is not None:
            chunks.raw += len(data)
        try:
            self.parser.feed_data(data)
        except _Refused as exc:
            self._refuse_in_order(exc.status, exc.code, exc.message)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Refused):
                self._refuse_in_order(cause.status, cause.code, cause.message)
            else:
                self._refuse_in_order(400, "bad_request", "malformed HTTP request")
        except httptools.HttpParserUpgrade:
            self._refuse_in_order(*UPGRADE_REFUSAL)
        except httptools.HttpParserError:
            self._refuse_in_order(400, "bad_request", "malformed HTTP request")
        else:
            if chunks is not None and chunks is self.chunks and chunks.exceeded():
                self._refuse_in_order(*CHUNK_OVERHEAD_REFUSAL)  # all of data went to one body

    # -- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()
        self.started = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_URL:
            raise _Refused(414, "uri_too_long", "the request line is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES or len(self.headers) >= MAX_HEADERS:
            raise _Refused(431, "headers_too_large", "the request headers are too large")
        self.headers.append((name, value))
        lname = name.lower()
        field = LOGGED_HEADERS.get(lname)
        if field is not None:
            if field in self.fields:  # a repeated Host (or any logged header): let check_head judge
                self.framing = True
            self.fields[field] = value.decode("latin-1")
        elif lname in FRAMING_HEADERS:
            self.framing = True

    def on_headers_complete(self) -> None:
        p = self.parser
        if p.should_upgrade():
            raise _Refused(*UPGRADE_REFUSAL)
        if self.framing:  # the hit path (no body, one Host) skips the full check
            refusal = check_head(self.headers, p.get_http_version() == "1.0")
            if refusal is not None:
                raise _Refused(*refusal)

    def on_chunk_header(self) -> None:
        if self.chunks is None:
            self.chunks = ChunkBudget()

    def on_body(self, body: bytes) -> None:
        if self.chunks is not None:
            self.chunks.data += len(body)
        self.body_bytes += len(body)
        if self.body_bytes > MAX_BODY:
            raise _Refused(413, "body_too_large", "ypws takes no request bodies this large")
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.started = None
        self.chunks = None
        p = self.parser
        req = _Request(p.get_method(), self.url, self.headers, self.fields, b"".join(self.body), p.should_keep_alive(),
                       p.get_http_version(), time.perf_counter())
        if self.busy or self.pending or self.write_paused:
            self.pending.append(req)
        else:
            self._handle(req)

    # -- requests ----------------------------------------------------------------------------
    def _handle(self, req: _Request) -> None:
        if req.__class__ is _Refusal:
            self._refuse(*req)
            return
        if self.service is not None and req.method in (b"GET", b"HEAD") and (
                req.url.startswith(b"/photos/") or req.url == b"/readyz"):
            reply = self._fast(req) if req.url != b"/readyz" else self._ready()
            if reply is not None:
                sent = self._send(req, reply)
                if self.log.enabled:
                    f = req.fields
                    self.log.write(req.method, req.url, reply.status, sent, reply.cache, time.perf_counter() - req.started,
                                   f.get("referer"), f.get("ua"), self.peer[0])
                if not req.keep_alive and self.transport is not None:
                    self.transport.close()
                return
        self._dispatch(req)

    def _ready(self) -> Reply:
        """/readyz on the event loop (never blocks: the storage probe runs on its own thread)."""
        ok, reasons = self.service.ready(wait=False)
        node = self.service.node
        data = ({"status": "ready", "service": "ypws", "node": node} if ok else
                {"error": "not_ready", "message": "; ".join(reasons), "service": "ypws", "node": node,
                 "reasons": reasons})
        body = json.dumps(data).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                   ("Cache-Control", "no-store"), *(() if ok else (("Retry-After", "1"),))]
        return Reply(200 if ok else 503, headers, body)

    def _fast(self, req: _Request) -> Reply | None:
        path, _, query = req.url.partition(b"?")
        if b"%" in path:
            return None  # percent-encoded paths take the careful route
        try:
            path_s, query_s = path.decode("ascii"), query.decode("ascii")
        except UnicodeDecodeError:
            return None
        f = req.fields
        return self.service.respond(ImageRequest(
            "GET" if req.method == b"GET" else "HEAD", path_s, query_s, f.get("host"), f.get("referer"), f.get("accept"),
            f.get("if_none_match"), f.get("if_modified_since"), f.get("range"), f.get("if_range"),
        ), fast=True)

    def _send(self, req: _Request, reply: Reply) -> int:
        transport = self.transport
        if transport is None:
            return 0
        memo = self.worker.head_memo
        headers = reply.headers if reply.headers.__class__ is tuple else tuple(reply.headers)
        block = memo.get(headers)
        if block is None:
            block = "".join(f"{k}: {v}\r\n" for k, v in reply.headers).encode("latin-1") + NOSNIFF
            if len(memo) >= HEAD_MEMO_MAX:
                memo.clear()
            memo[headers] = block
        head = [STATUS_LINES[reply.status], block, self.worker.date_header()]
        if not req.keep_alive:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        body = reply.body
        if body and req.method != b"HEAD":
            head.append(body)
            transport.writelines(head)
            return len(body)
        transport.writelines(head)
        return 0

    def _refuse_in_order(self, status: int, code: str, message: str) -> None:
        """Refuse now, or, when earlier requests are still being answered, right after their responses."""
        if self.busy or self.pending:
            self.shed = True  # nothing more is read from this connection
            if self.transport is not None:
                self.transport.pause_reading()
            self.pending.append(_Refusal((status, code, message)))
            return
        self._refuse(status, code, message)

    def _refuse(self, status: int, code: str, message: str, extra: bytes = b"", linger: bool = False) -> None:
        """Answer a request we could not even parse (or take), then close.

        ``linger``: for a connection refused before its request was read. Its request is
        then still coming in, and closing on unread data would make the kernel reset the
        connection, losing the answer: so our side is shut for writing, what arrives is
        dropped, and the connection is closed when the client closes it (or in a second)."""
        if self.transport is None:
            return
        body = json.dumps({"error": code, "message": message}).encode()
        self.transport.writelines([
            STATUS_LINES[status], b"Content-Type: application/json\r\nContent-Length: ", str(len(body)).encode(),
            b"\r\nConnection: close\r\n", NOSNIFF, extra, self.worker.date_header(), b"\r\n", body,
        ])
        if self.log.enabled:
            self.log.write(b"-", self.url[:200], status, len(body), "-", 0.0, None, None, self.peer[0])
        if linger and self.transport.can_write_eof():
            self.shed = True
            self.transport.write_eof()
            self.loop.call_later(SHED_LINGER, self.transport.close)
        else:
            self.transport.close()

    # -- the WSGI route ------------------------------------------------------------------------
    def _dispatch(self, req: _Request) -> None:
        self.busy = True
        if self.transport is not None:
            self.transport.pause_reading()
        fut = self.loop.run_in_executor(self.worker.executor, self._run_wsgi, req)
        fut.add_done_callback(lambda f: self._wsgi_done(req, f))

    def _wsgi_done(self, req: _Request, fut: asyncio.Future) -> None:
        self.busy = False
        try:
            status, sent, cache, keep = fut.result()
        except Exception:  # the app raised past falcon's handlers: nothing sensible can follow
            self.worker.log.exception("WSGI request failed")
            status, sent, cache, keep = 500, 0, "-", False
        if self.log.enabled:
            f = req.fields
            self.log.write(req.method, req.url, status, sent, cache, time.perf_counter() - req.started,
                           f.get("referer"), f.get("ua"), self.peer[0])
        if self.transport is None:
            return
        if not keep:
            self.transport.close()
            return
        if not self.write_paused:
            self.transport.resume_reading()
        self._drain()

    def _drain(self) -> None:
        """Answer queued requests until one goes to a thread, the client stops reading, or none is left."""
        while self.pending and not self.busy and not self.write_paused and self.transport is not None:
            self._handle(self.pending.popleft())

    def _write_from_thread(self, data: bytes) -> bool:
        """Queue bytes for the loop to write, waiting while the transport's buffer is full."""
        while not self.can_write.wait(1.0):
            if self.transport is None:
                return False
        if self.transport is None:
            return False
        self.loop.call_soon_threadsafe(self._write, data)
        return True

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _run_wsgi(self, req: _Request) -> tuple[int, int, str, bool]:
        """Run the app in this thread; returns (status, body bytes sent, X-Cache, keep the connection)."""
        environ = self._environ(req)
        state: dict = {}

        def start_response(status: str, headers: list, exc_info=None):
            if exc_info and state.get("sent"):
                raise exc_info[1].with_traceback(exc_info[2])
            state["status"], state["headers"] = status, headers
            return lambda data: None  # the legacy write() callable: our app never uses it

        result = self.worker.wsgi(environ, start_response)
        head_sent = False
        sent = 0
        keep = req.keep_alive
        try:
            is_head = req.method == b"HEAD"
            try:
                for chunk in result:
                    if not head_sent:
                        keep = self._send_head(req, state, keep)
                        head_sent = True
                    if chunk and not is_head:
                        if not self._write_from_thread(bytes(chunk)):
                            return int(state["status"][:3]), sent, "-", False
                        sent += len(chunk)
            except CorruptEntry as exc:
                # a cache entry found damaged mid-body (it is dropped): cut the connection short
                # of its Content-Length, so the client sees an incomplete answer, never wrong bytes
                self.worker.log.warning("answer cut: %s", exc)
                return int(state.get("status", "500")[:3]), sent, "-", False
            if not head_sent:
                keep = self._send_head(req, state, keep)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status = int(state["status"][:3])
        cache = next((v for k, v in state["headers"] if k.lower() == "x-cache"), "-")
        return status, sent, cache, keep

    def _send_head(self, req: _Request, state: dict, keep: bool) -> bool:
        state["sent"] = True
        status = int(state["status"][:3])
        headers = state["headers"]
        lines = [f"HTTP/1.1 {state['status']}\r\n".encode("latin-1")]
        has_length = False
        for name, value in headers:
            if name.lower() == "content-length":
                has_length = True
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        if not has_length and req.method != b"HEAD" and status not in (204, 304) and status >= 200:
            keep = False  # no length: the end of the body is the end of the connection
        lines.append(self.worker.date_header())
        lines.append(b"Server: ypws\r\n")
        if not keep:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        self._write_from_thread(b"".join(lines))
        return keep

    def _environ(self, req: _Request) -> dict:
        url = req.url
        if not url.startswith(b"/"):  # absolute-form or asterisk request targets
            try:
                parsed = httptools.parse_url(url)
                url = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
            except httptools.HttpParserInvalidURLError:
                url = b"/"
        path, _, query = url.partition(b"?")
        sockname = self.worker.sockname
        env = {
            "REQUEST_METHOD": req.method.decode("latin-1"),
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query.decode("latin-1"), "RAW_URI": req.url.decode("latin-1"),
            "SERVER_NAME": sockname[0], "SERVER_PORT": str(sockname[1]),
            "SERVER_PROTOCOL": f"HTTP/{req.version}",
            "REMOTE_ADDR": str(self.peer[0]), "REMOTE_PORT": str(self.peer[1] if len(self.peer) > 1 else ""),
            "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(req.body),
            "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
            "wsgi.file_wrapper": FileWrapper,
        }
        for name, value in req.headers:
            key = name.decode("latin-1").upper().replace("-", "_")
            value_s = value.decode("latin-1")
            if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
                env[key] = value_s
                continue
            key = "HTTP_" + key
            env[key] = f"{env[key]}, {value_s}" if key in env else value_s
        if req.body and "CONTENT_LENGTH" not in env:
            env["CONTENT_LENGTH"] = str(len(req.body))
        return env


class YpwsWorker(base.Worker):
    """A gunicorn worker running ``HttpProtocol`` on uvloop (asyncio's loop if uvloop is missing)."""

    TICK = 0.25

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.connections: set[HttpProtocol] = set()
        self.max_connections = self.cfg.worker_connections  # the node's own limit once the app is loaded
        self.servers: list = []
        self.head_memo: dict[tuple, bytes] = {}  # encoded header blocks of recent replies
        self._date = (0, b"")

    def init_process(self) -> None:
        try:
            import uvloop

            self.loop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover - uvloop is a dependency
            self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.service = getattr(self.wsgi, "service", None)
        self.cache = getattr(self.wsgi, "cache", None)
        self.max_connections = int(getattr(self.service, "max_connections", self.cfg.worker_connections))
        self.access = getattr(self.wsgi, "access_log", None) or AccessLog.off()
        self.executor = ThreadPoolExecutor(max(1, self.cfg.threads), thread_name_prefix="ypws-wsgi")

    def init_signals(self) -> None:
        for s in self.SIGNALS:
            signal.signal(s, signal.SIG_DFL)
        # plain handlers while the app loads: uvloop drops a signal that comes before its loop
        # runs, and a stop sent to a booting worker would wait for the master's SIGKILL
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(s, lambda signum, frame: self._stop())
        signal.signal(signal.SIGUSR1, lambda signum, frame: self.log.reopen_files())
        signal.signal(signal.SIGWINCH, signal.SIG_IGN)

    def _loop_signals(self) -> None:
        """The loop's own handlers, installed once it runs."""
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            self.loop.add_signal_handler(s, self._stop)
        self.loop.add_signal_handler(signal.SIGUSR1, self.log.reopen_files)

    def _stop(self) -> None:
        self.alive = False

    def date_header(self) -> bytes:
        now = int(time.time())
        if now != self._date[0]:
            from email.utils import formatdate

            self._date = (now, f"Date: {formatdate(now, usegmt=True)}\r\n".encode())
        return self._date[1]

    def run(self) -> None:
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            self.executor.shutdown(wait=False, cancel_futures=True)
            if self.cache is not None:
                try:
                    self.cache.close()
                except Exception:
                    self.log.exception("flushing the cache index at exit failed")
            self.access.close()
            self.loop.close()

    async def _serve(self) -> None:
        self._loop_signals()
        for sock in self.sockets:
            server = await self.loop.create_server(lambda: HttpProtocol(self), sock=sock.sock, backlog=self.cfg.backlog)
            self.servers.append(server)
        self.sockname = self.sockets[0].sock.getsockname()[:2] if self.sockets else ("", 0)
        keepalive = max(1.0, float(self.cfg.keepalive))
        head_timeout = float(getattr(self.service, "client_timeout", 10.0))
        next_beat = 0.0
        while self.alive:
            now = self.loop.time()
            if now >= next_beat:
                self.notify()
                if self.ppid != os.getppid():
                    self.log.info("parent changed, shutting down: %s", self)
                    break
                for conn in list(self.connections):
                    if conn.busy or conn.transport is None:
                        continue
                    if conn.started is not None and now - conn.started > head_timeout:
                        # slow loris: a request trickled in byte by byte never goes idle
                        conn._refuse(408, "request_timeout", "the request was not received in time")
                    elif now - conn.last_active > keepalive:  # idle keep-alive connections
                        conn.transport.close()
                next_beat = now + 1.0
            self._housekeeping()
            await asyncio.sleep(self.TICK)
        await self._shutdown()

    def _housekeeping(self) -> None:
        if self.cache is not None:
            try:
                self.cache.maybe_flush()
            except Exception:
                self.log.exception("cache index flush failed")
        self.access.flush()

    async def _shutdown(self) -> None:
        for server in self.servers:
            server.close()
        deadline = self.loop.time() + self.cfg.graceful_timeout
        for conn in list(self.connections):
            if not conn.busy and conn.transport is not None:
                conn.transport.close()
        while any(c.busy for c in self.connections) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        self._housekeeping()
