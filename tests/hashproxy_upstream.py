"""A small real HTTP node for the hashproxy tests and benchmark: stands in for ypws or ypfs.

    python tests/hashproxy_upstream.py --name ypws1 --port 8301 [--delay 0.05] [--cache-bytes N]

Every response carries ``X-Served-By: <name>`` as ypws does. GET/HEAD answer
JSON describing the request (or, with --cache-bytes, a body of a size fixed per
URL, kept in a byte-capped LRU and marked ``X-Cache: HIT|MISS``, like a cache
node); PURGE is recorded; POST/PUT stream the body and answer its length and
sha256. ``/_status/N`` answers status N, ``/_sleep/S`` sleeps S seconds first, ``/_chunked``
and ``/_close`` answer chunked and close-delimited bodies.
``GET /_stats`` reports what the node saw, ``POST /_reset`` clears it.
``/readyz`` answers 200, or 503 after ``POST /_ready/0`` (``POST /_ready/1`` undoes it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import xxhash


class State:
    def __init__(self, name: str, delay: float, cache_bytes: int):
        self.name, self.delay, self.cache_bytes = name, delay, cache_bytes
        self.ready = True
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.paths: dict[str, int] = {}
        self.purges: list[str] = []
        self.inflight = 0
        self.peak_inflight = 0
        self.hits = self.misses = 0
        self.cache: OrderedDict[str, int] = OrderedDict()
        self.cached = 0

    def lookup(self, key: str, size: int) -> bool:
        """LRU by bytes: True on a hit."""
        with self.lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                self.hits += 1
                return True
            self.misses += 1
            self.cache[key] = size
            self.cached += size
            while self.cached > self.cache_bytes and self.cache:
                _, old = self.cache.popitem(last=False)
                self.cached -= old
            return False


def body_size(path: str) -> int:
    """A rendition-like size, fixed per URL: 8 KiB to 64 KiB."""
    return 8192 + xxhash.xxh64_intdigest(path.encode()) % (56 * 1024)


def make_handler(state: State):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "stub"
        disable_nagle_algorithm = True  # no 40 ms Nagle / delayed-ACK stalls between head and body
        wbufsize = 1 << 16              # and head and body leave in one write

        def log_message(self, fmt, *args):  # quiet
            pass

        def _send(self, status: int, body: bytes, ctype: str = "application/json", extra: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Served-By", state.name)
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, data: dict, extra: dict | None = None) -> None:
            self._send(status, json.dumps(data).encode(), extra=extra)

        def do_GET(self):
            path = urlsplit(self.path).path
            if path == "/healthz":
                return self._json(200, {"status": "ok", "node": state.name})
            if path == "/readyz":
                if state.ready:
                    return self._json(200, {"status": "ready", "node": state.name})
                return self._json(503, {"error": "not_ready", "message": "told so", "node": state.name})
            if path == "/_stats":
                with state.lock:
                    return self._json(200, {"node": state.name, "requests": state.requests, "paths": state.paths,
                                            "purges": state.purges, "peak_inflight": state.peak_inflight,
                                            "hits": state.hits, "misses": state.misses})
            with state.lock:
                state.requests += 1
                state.paths[path] = state.paths.get(path, 0) + 1
                state.inflight += 1
                state.peak_inflight = max(state.peak_inflight, state.inflight)
            try:
                if state.delay:
                    time.sleep(state.delay)
                if path.startswith("/_sleep/"):
                    time.sleep(float(path.rsplit("/", 1)[1]))
                if path == "/_chunked":  # a streamed answer: three chunks
                    self.send_response(200)
                    self.send_header("X-Served-By", state.name)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for part in (b"alpha-", b"beta-" * 1000, b"gamma"):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    return
                if path == "/_close":  # no length: the body ends when the connection does
                    self.send_response(200)
                    self.send_header("X-Served-By", state.name)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(b"until-eof-" * 500)
                    self.close_connection = True
                    return
                if path.startswith("/_status/"):
                    return self._json(int(path.rsplit("/", 1)[1]), {"node": state.name})
                if state.cache_bytes:
                    size = body_size(path)
                    hit = state.lookup(path, size)
                    return self._send(200, b"x" * size, "image/jpeg", {"X-Cache": "HIT" if hit else "MISS"})
                return self._json(200, {"node": state.name, "method": self.command, "path": self.path,
                                        "headers": {k.lower(): v for k, v in self.headers.items()}})
            finally:
                with state.lock:
                    state.inflight -= 1

        do_HEAD = do_GET

        def do_PURGE(self):
            with state.lock:
                state.purges.append(self.path)
            self._json(200, {"node": state.name, "purged": self.path,
                             "authorization": self.headers.get("Authorization", "")})

        def do_POST(self):
            if self.path.startswith("/_ready/"):
                state.ready = self.path.endswith("/1")
                return self._json(200, {"node": state.name, "ready": state.ready})
            if self.path == "/_reset":
                with state.lock:
                    state.reset()
                return self._json(200, {"node": state.name})
            digest, total = hashlib.sha256(), 0
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    remaining = size
                    while remaining:
                        chunk = self.rfile.read(min(remaining, 65536))
                        digest.update(chunk)
                        total += len(chunk)
                        remaining -= len(chunk)
                    self.rfile.readline()
            else:
                remaining = int(self.headers.get("Content-Length", "0"))
                while remaining:
                    chunk = self.rfile.read(min(remaining, 65536))
                    if not chunk:
                        break
                    digest.update(chunk)
                    total += len(chunk)
                    remaining -= len(chunk)
            self._json(200, {"node": state.name, "path": self.path, "bytes": total, "sha256": digest.hexdigest(),
                             "headers": {k.lower(): v for k, v in self.headers.items()}})

        do_PUT = do_POST

    return Handler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds each GET takes")
    ap.add_argument("--cache-bytes", type=int, default=0, help="act as a cache node with an LRU of this many bytes")
    args = ap.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(State(args.name, args.delay, args.cache_bytes)))
    server.daemon_threads = True
    server.request_queue_size = 256
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
