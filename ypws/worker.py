"""The ypws gunicorn worker: cache hits on an event loop, everything else on threads.

gunicorn's own workers parse HTTP in Python and build a WSGI environ per
request; that costs more CPU than a whole cache hit should. This worker keeps
gunicorn for what it does well (the master: binding, forking, heartbeats,
restarts, graceful stops) and serves connections on uvloop with the cluster's
HTTP/1.1 core (cluster/http1: httptools parsing, limits, strict framing,
pipelining, flow control, deadlines, refusals; the same core hashproxy runs).
This module supplies only the request handler. For each GET/HEAD of an image it
first asks ``ImageService.respond(..., fast=True)``: a cache hit is answered right
there from one cache file read, with no environ and no thread. A miss, a page,
PURGE or anything else goes, as WSGI, to the falcon app on a thread pool; the
connection waits (requests pipelined behind it are queued) and its reading is
paused meanwhile. While the client is not reading its answers the core pauses
reading and starts no further request, so a client that pipelines hits and never
reads holds a few small request objects, not megabytes of answers.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote_to_bytes

import httptools
from gunicorn.workers import base

from cluster.http1 import Cycle, HTTP1Protocol, Limits
from cluster.http1.date import date_header
from cluster.http1.refusal import NOSNIFF, STATUS_LINES

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
HEAD_MEMO_MAX = 4096


def node_limits(max_connections: int, keepalive: float = 5.0, client_timeout: float = 10.0) -> Limits:
    """The HTTP core's limits for a ypws node: small heads and bodies, ``ypws.client_timeout`` for a whole
    request (from its first byte) and for a client that leaves its answers unread, gunicorn's keepalive idle."""
    return Limits(max_request_line=MAX_URL, max_header_bytes=MAX_HEADER_BYTES, max_headers=MAX_HEADERS,
                  max_body=MAX_BODY, max_connections=max_connections, write_high_water=WRITE_HIGH_WATER,
                  idle_timeout=keepalive, head_timeout=client_timeout, request_timeout=client_timeout,
                  write_stall_timeout=client_timeout)


class _Request(Cycle):
    """One request: answered on the loop (a hit) or by the WSGI app on a thread, once it is whole and its turn."""

    __slots__ = ("proto", "method", "url", "headers", "version", "keep_alive", "parts", "body", "fields", "whole",
                 "turn", "started")

    def __init__(self, proto: "HttpProtocol", method: bytes, url: bytes, headers: list, version: str,
                 keep_alive: bool):
        self.proto, self.method, self.url, self.headers = proto, method, url, headers
        self.version, self.keep_alive = version, keep_alive
        self.parts: list[bytes] | None = None
        self.whole = self.turn = False  # body, fields and started are set once it is whole

    def feed_body(self, data: bytes) -> None:
        if self.parts is None:
            self.parts = [data]
        else:
            self.parts.append(data)

    def end_body(self) -> None:
        self.whole = True
        parts = self.parts
        if parts is None:
            self.body = b""
        else:
            self.body = b"".join(parts)
            self.parts = None
        self.started = time.perf_counter()
        if self.turn:
            self.proto._handle(self)

    def start(self) -> None:
        self.turn = True
        if self.whole:
            self.proto._handle(self)

    def abort(self) -> None:
        self.turn = False  # never handled; one already on a thread finds the connection gone


class FileWrapper:
    """wsgi.file_wrapper: big blocks, closed by the server."""

    def __init__(self, fh, block: int = FILE_BLOCK):
        self.fh, self.block = fh, max(block, FILE_BLOCK)

    def __iter__(self):
        while chunk := self.fh.read(self.block):
            yield chunk

    def close(self) -> None:
        self.fh.close()


class HttpProtocol(HTTP1Protocol):
    """The shared HTTP/1.1 core (cluster/http1) with ypws's handler: hits on the loop, the rest on threads."""

    def __init__(self, worker: "YpwsWorker"):
        limits = getattr(worker, "limits", None) or node_limits(worker.max_connections)
        super().__init__(worker.loop, worker.connections, limits)
        self.worker = worker
        self.service = worker.service
        self.log = worker.access
        self.can_write = threading.Event()  # a WSGI thread writes only while the client reads
        self.can_write.set()

    # -- the core's hooks ------------------------------------------------------------------------
    def handle_head(self, method: bytes, url: bytes, headers: list, version: str, keep_alive: bool) -> _Request:
        return _Request(self, method, url, headers, version, keep_alive)

    def on_refused(self, status: int, nbytes: int) -> None:
        if self.log.enabled:
            self.log.write(b"-", self.url[:200], status, nbytes, "-", 0.0, None, None, self.peer[0])

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.can_write.set()  # a thread waiting to write finds the connection gone

    def pause_writing(self) -> None:
        self.can_write.clear()
        super().pause_writing()

    def resume_writing(self) -> None:
        self.can_write.set()
        super().resume_writing()

    # -- requests ----------------------------------------------------------------------------
    def _handle(self, req: _Request) -> None:
        req.fields = fields = {}
        for name, value in req.headers:
            field = LOGGED_HEADERS.get(name.lower())
            if field is not None:
                fields[field] = value.decode("latin-1")
        if self.service is not None and req.method in (b"GET", b"HEAD") and (
                req.url.startswith(b"/photos/") or req.url == b"/readyz"):
            reply = self._fast(req) if req.url != b"/readyz" else self._ready()
            if reply is not None:
                sent = self._send(req, reply)
                if self.log.enabled:
                    self.log.write(req.method, req.url, reply.status, sent, reply.cache,
                                   time.perf_counter() - req.started, fields.get("referer"), fields.get("ua"),
                                   self.peer[0])
                self.cycle_done(req, req.keep_alive)
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
        head = [STATUS_LINES[reply.status], block, date_header()]
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

    # -- the WSGI route ------------------------------------------------------------------------
    def _dispatch(self, req: _Request) -> None:
        self.pause_reading("wsgi")
        fut = self.loop.run_in_executor(self.worker.executor, self._run_wsgi, req)
        fut.add_done_callback(lambda f: self._wsgi_done(req, f))

    def _wsgi_done(self, req: _Request, fut: asyncio.Future) -> None:
        try:
            status, sent, cache, keep = fut.result()
        except Exception:  # the app raised past falcon's handlers: nothing sensible can follow
            self.worker.log.exception("WSGI request failed")
            status, sent, cache, keep = 500, 0, "-", False
        if self.log.enabled:
            f = req.fields
            self.log.write(req.method, req.url, status, sent, cache, time.perf_counter() - req.started,
                           f.get("referer"), f.get("ua"), self.peer[0])
        self.resume_reading("wsgi")
        self.cycle_done(req, keep)

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
        lines.append(date_header())
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
        self.limits: Limits | None = None  # the HTTP core's, once the app is loaded

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
        self.limits = node_limits(self.max_connections, max(1.0, float(self.cfg.keepalive)),
                                  float(getattr(self.service, "client_timeout", 10.0)))
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
        next_beat = 0.0
        while self.alive:
            now = self.loop.time()
            if now >= next_beat:
                self.notify()
                if self.ppid != os.getppid():
                    self.log.info("parent changed, shutting down: %s", self)
                    break
                for conn in list(self.connections):  # idle, slow-loris and unread-answer limits
                    conn.check_timers(now)
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
            conn.shutdown()  # idle ones close now, the others once their answers are written
        while any(c.busy for c in self.connections) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()
        self._housekeeping()
