"""Request smuggling: every desync shape, byte by byte, against the HTTP/1.1 core and both services on it.

The matrix runs three times: against the bare core (cluster/http1, with an echo
handler: tests/http1_support.py), against hashproxy's protocol and against ypws's.
The protocol objects are driven as uvicorn's tests drive theirs: built, given a
fake transport with ``connection_made``, fed raw bytes with ``data_received``;
then what they wrote back is parsed, and what reached the other side is counted.
For hashproxy the other side is a real recording node on 127.0.0.1 in the same
event loop (it parses what it gets with httptools and answers each request with
its own target), so "forwarded" means bytes on a socket. For ypws it is the WSGI
app the worker runs on its thread pool. One end-to-end test runs a real hashproxy
in front of a stub node and checks that a smuggling attempt changes nothing for
another client on the pooled node connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import types
from concurrent.futures import ThreadPoolExecutor

import httptools
import pytest

from cluster.config import from_dict
from hashproxy.protocol import ProxyProtocol
from ypws.accesslog import AccessLog
from ypws.worker import HttpProtocol

from .hashproxy_support import ProxyCluster, close_proxy_app, proxy_app
from .fake_transport import FakeTransport
from .http1_support import echo, responses as parse_responses
from .helpers import cluster_tree

SMUGGLED = b"GET /photos/bob/1000_abcdef0123/medium.jpg HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST /api/x HTTP/1.1\r\nHost: x\r\n"

# Each shape must be refused with a JSON 400 and the connection closed; nothing of it may be forwarded.
DESYNC = {
    "cl_and_te": POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_and_cl": POST + b"Transfer-Encoding: chunked\r\nContent-Length: 70\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "cl_duplicate_same": POST + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "cl_duplicate_differing": POST + b"Content-Length: 3\r\nContent-Length: 70\r\n\r\nabc" + SMUGGLED,
    "cl_comma_joined": POST + b"Content-Length: 3, 70\r\n\r\nabc" + SMUGGLED,
    "cl_comma_joined_same": POST + b"Content-Length: 3,3\r\n\r\nabc",
    "cl_signed": POST + b"Content-Length: +3\r\n\r\nabc",
    "cl_overflow": POST + b"Content-Length: 99999999999999999999999\r\n\r\nabc",
    "te_gzip_chunked": POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "te_chunked_trailing_space": POST + b"Transfer-Encoding: chunked \r\n\r\n0\r\n\r\n",
    "te_chunked_vertical_tab": POST + b"Transfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n",
    "te_xchunked": POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te_chunked_twice_in_list": POST + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    "te_two_lines": POST + b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_duplicate_lines": POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_space_before_colon": POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "te_on_http10": b"POST /api/x HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "obs_fold": b"GET /u/alice HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "obs_fold_te": POST + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "bare_lf_request_line": b"GET /u/alice HTTP/1.1\nHost: x\n\n",
    "bare_lf_header": b"GET /u/alice HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n",
    "bare_cr_header": b"GET /u/alice HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n",
    "nul_in_value": b"GET /u/alice HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "two_hosts": b"GET /u/alice HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    "chunk_ext_bare_lf": POST + b"Transfer-Encoding: chunked\r\n\r\n3;foo\nbar\r\nabc\r\n0\r\n\r\n",
    "chunk_ext_quoted_crlf": POST + b"Transfer-Encoding: chunked\r\n\r\n3;foo=\"a\r\nb\"\r\nabc\r\n0\r\n\r\n",
    "chunk_size_overflow": POST + b"Transfer-Encoding: chunked\r\n\r\n1000000000000000000000003\r\nabc\r\n0\r\n\r\n",
    "chunk_size_space": POST + b"Transfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n",
    "chunk_size_0x": POST + b"Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
    "chunk_bare_lf": POST + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n",
    "chunk_data_overrun": POST + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
}
UPGRADES = {
    "websocket": b"GET /u/alice HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    "h2c": b"GET /u/alice HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
           b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    "connect": b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
}


# -- a fake transport and a response reader ------------------------------------------------------------




def closed(transport: FakeTransport) -> bool:
    return transport.closed


def answered(n: int):
    """A ``done`` test: n complete responses were written."""
    return lambda transport: len(parse_responses(transport.out)) >= n


async def settle(done, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # let anything that would follow (a late forward, a second write) happen


def assert_refused(transport: FakeTransport, code: str | None = None) -> dict:
    answers = parse_responses(transport.out)
    assert len(answers) == 1, transport.out
    status, headers, body = answers[0]
    assert status == 400, transport.out
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert headers["x-content-type-options"] == "nosniff"
    error = json.loads(body)
    if code:
        assert error["error"] == code
    assert transport.closed
    return error


# -- hashproxy: a real recording node behind the proxy's protocol ------------------------------------------


class RecordingNode(asyncio.Protocol):
    """Counts every request it parses on each connection and answers it with its own target."""

    def __init__(self, seen: list[dict]) -> None:
        self.seen = seen

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.seen.append({"error": True})
            self.transport.close()

    def on_message_begin(self) -> None:
        self.cur = {"url": b"", "headers": [], "body": b""}

    def on_url(self, url: bytes) -> None:
        self.cur["url"] += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.cur["headers"].append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.cur["body"] += body

    def on_message_complete(self) -> None:
        self.seen.append(self.cur)
        target = self.cur["url"]
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n%s"
                             % (len(target), target))


@pytest.fixture
def proxy(tmp_path):
    """(run, seen): run(raw, done=...) feeds raw bytes to a fresh ProxyProtocol; seen lists what the node got."""
    loop = asyncio.new_event_loop()
    seen: list[dict] = []
    server = loop.run_until_complete(loop.create_server(lambda: RecordingNode(seen), "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    tree = cluster_tree(tmp_path)
    tree["cluster"]["admin_token"] = "edge-admin-token"
    tree["cluster"]["url_key"] = "k" * 32
    tree["ypws"]["nodes"] = [{"name": "ypws1", "host": "127.0.0.1", "port": port}]
    tree["ypfs"]["nodes"] = [{"name": "ypfs1", "host": "127.0.0.1", "port": port, "node_id": 1}]
    tree["hashproxy"]["client_timeout"] = 2.0
    app = proxy_app(from_dict(tree), loop)

    def run(*parts: bytes, done=None, proto: ProxyProtocol | None = None) -> tuple[FakeTransport, ProxyProtocol]:
        if proto is None:
            proto = ProxyProtocol(app)
            proto.connection_made(FakeTransport())
        transport = proto.transport
        for part in parts:
            if transport.closed:  # a closed transport delivers nothing more
                break
            proto.data_received(part)
        loop.run_until_complete(settle(lambda: (done or closed)(transport)))
        return transport, proto

    run.app = app
    try:
        yield run, seen
    finally:
        close_proxy_app(app, server, loop)


UPGRADE_MESSAGE = "protocol upgrades (WebSocket, h2c) are not supported"


def _one_request(seen: list[dict]) -> dict:
    requests = [s for s in seen if "url" in s]
    assert len(requests) == 1, seen
    assert not any(s.get("error") for s in seen)
    return requests[0]


@pytest.mark.parametrize("hop", [b"content-length", b"Content-Length, close", b"keep-alive, content-length"])
def test_connection_header_cannot_strip_content_length(proxy, hop):
    """The issue's HIGH finding: the body was forwarded without its length and read as a second request."""
    run, seen = proxy
    raw = POST + b"Connection: " + hop + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(SMUGGLED), SMUGGLED)
    transport, _ = run(raw, done=answered(1))
    req = _one_request(seen)
    assert req["url"] == b"/api/x"
    assert req["body"] == SMUGGLED
    assert (b"content-length", b"%d" % len(SMUGGLED)) in req["headers"]
    answers = parse_responses(transport.out)
    assert [a[2] for a in answers] == [b"/api/x"]


def test_connection_header_cannot_strip_host_or_chunked_framing(proxy):
    run, seen = proxy
    for path, framing in ((b"/u/alice", (b"transfer-encoding", b"chunked")),  # a page: streamed, re-chunked
                          (b"/api/x", (b"content-length", b"11"))):  # ypfs: taken whole, then sized
        seen.clear()
        raw = (b"POST " + path + b" HTTP/1.1\r\nHost: photos.example\r\nConnection: host, transfer-encoding\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        transport, _ = run(raw, done=answered(1))
        req = _one_request(seen)
        headers = dict(req["headers"])
        assert headers[b"host"] == b"photos.example"
        assert framing in req["headers"] and len([h for h in req["headers"] if h[0] in FRAMING]) == 1
        assert req["body"] == b"hello world"
        assert parse_responses(transport.out)[0][0] == 200


FRAMING = (b"content-length", b"transfer-encoding")


def test_a_get_with_a_body_that_looks_like_a_request_stays_one_request(proxy):
    run, seen = proxy
    raw = b"GET /u/alice HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(SMUGGLED), SMUGGLED)
    transport, _ = run(raw, done=answered(1))
    assert _one_request(seen)["body"] == SMUGGLED
    assert [a[2] for a in parse_responses(transport.out)] == [b"/u/alice"]


def test_chunked_body_past_the_upload_limit_is_refused(proxy):
    """A chunk size larger than any body we take is cut as soon as the limit is crossed."""
    run, seen = proxy
    proto = ProxyProtocol(run.app)
    proto.connection_made(FakeTransport())
    proto._max_body = 1000
    transport, _ = run(POST + b"Transfer-Encoding: chunked\r\n\r\nffffffffffff\r\n" + b"z" * 2000, proto=proto)
    assert_refused_status(transport, 413, "body_too_large")
    assert [s for s in seen if "url" in s] == []


def assert_refused_status(transport: FakeTransport, status: int, code: str) -> None:
    answers = parse_responses(transport.out)
    assert [(a[0], json.loads(a[2])["error"]) for a in answers] == [(status, code)]
    assert transport.closed


# -- ypws: the core in front of the WSGI app ------------------------------------------------------------------


@pytest.fixture
def ypws():
    """(run, calls): run(raw) feeds a fresh ypws HttpProtocol; calls lists the requests the WSGI app ran."""
    loop = asyncio.new_event_loop()
    calls: list[tuple[str, str, bytes]] = []

    def app(environ, start_response):
        body = environ["wsgi.input"].read()
        calls.append((environ["REQUEST_METHOD"], environ["PATH_INFO"], body))
        answer = environ["PATH_INFO"].encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(answer))),
                                  ("X-Content-Type-Options", "nosniff")])
        return [answer]

    executor = ThreadPoolExecutor(2)
    worker = types.SimpleNamespace(
        loop=loop, service=None, access=AccessLog.off(), connections=set(), max_connections=100, executor=executor,
        wsgi=app, head_memo={}, date_header=lambda: b"Date: Sat, 28 Nov 2026 00:00:00 GMT\r\n",
        sockname=("127.0.0.1", 8301), log=logging.getLogger("ypws-test"))

    def run(*parts: bytes, done=None) -> FakeTransport:
        proto = HttpProtocol(worker)
        transport = FakeTransport()
        proto.connection_made(transport)
        for part in parts:
            if transport.closed:  # a closed transport delivers nothing more
                break
            proto.data_received(part)
        loop.run_until_complete(settle(lambda: (done or closed)(transport)))
        return transport

    try:
        yield run, calls
    finally:
        executor.shutdown(wait=True)
        loop.close()


def test_ypws_pipelined_requests_and_a_get_body_stay_separate(ypws):
    run, calls = ypws
    raw = (b"GET /u/a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(SMUGGLED), SMUGGLED)
           + b"GET /u/b HTTP/1.1\r\nHost: x\r\n\r\n")
    transport = run(raw, done=answered(2))
    assert calls == [("GET", "/u/a", SMUGGLED), ("GET", "/u/b", b"")]
    assert [a[2] for a in parse_responses(transport.out)] == [b"/u/a", b"/u/b"]


# -- the matrix, against the core and both services ----------------------------------------------------


@pytest.fixture
def core():
    """(run, reached) for the bare core with an echo handler: reached() lists the requests its handler got."""
    loop = asyncio.new_event_loop()
    protos = []

    def run(*parts: bytes, done=None) -> FakeTransport:
        proto, transport = echo(loop, *parts)
        protos.append(proto)
        loop.run_until_complete(settle(lambda: (done or closed)(transport), timeout=1.0))
        return transport

    try:
        yield run, lambda: [(url, body) for p in protos for _, url, body in p.handled]
    finally:
        loop.close()


@pytest.fixture(params=["core", "hashproxy", "ypws"])
def server(request):
    """(run, reached): run(*parts, done=...) -> transport; reached() -> [(target, body)] that got past the HTTP layer."""
    if request.param == "core":
        return request.getfixturevalue("core")
    if request.param == "hashproxy":
        run, seen = request.getfixturevalue("proxy")
        return (lambda *parts, done=None: run(*parts, done=done)[0]), \
            (lambda: [(s["url"], s["body"]) for s in seen if "url" in s])
    run, calls = request.getfixturevalue("ypws")
    return run, lambda: [(path.encode(), body) for _, path, body in calls]


@pytest.mark.parametrize("name", sorted(DESYNC))
def test_every_desync_shape_is_refused_and_reaches_nothing(server, name):
    run, reached = server
    transport = run(DESYNC[name])
    assert_refused(transport)
    assert reached() == [], f"{name}: got past the HTTP layer: {reached()}"


@pytest.mark.parametrize("name", sorted(UPGRADES))
def test_upgrades_are_refused_alike(server, name):
    run, reached = server
    transport = run(UPGRADES[name])
    assert assert_refused(transport, "upgrade_unsupported")["message"] == UPGRADE_MESSAGE
    assert reached() == []


@pytest.mark.parametrize("hop", [b"content-length", b"Content-Length, close", b"keep-alive, content-length",
                                 b"transfer-encoding, host"])
def test_a_connection_header_naming_framing_headers_changes_no_framing(server, hop):
    run, reached = server
    raw = (b"POST /u/x HTTP/1.1\r\nHost: x\r\nConnection: " + hop + b"\r\nContent-Length: %d\r\n\r\n%s"
           % (len(SMUGGLED), SMUGGLED) + b"GET /u/after HTTP/1.1\r\nHost: x\r\n\r\n")
    closing = b"close" in hop  # then the answer to the POST is the last one
    transport = run(raw, done=answered(1 if closing else 2))
    got = reached()
    assert len(got) == (1 if closing else 2), got  # the body stayed a body: never a request of its own
    assert got[0] == (b"/u/x", SMUGGLED)
    assert [a[2] for a in parse_responses(transport.out)] == [b"/u/x"] + ([] if closing else [b"/u/after"])
    assert transport.closed == closing


def test_pipelined_requests_are_answered_in_order(server):
    run, reached = server
    raw = b"".join(b"GET /u/p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(4))
    transport = run(raw, done=answered(4))
    assert [a[2] for a in parse_responses(transport.out)] == [b"/u/p%d" % i for i in range(4)]
    assert len(reached()) == 4
    assert not transport.closed


@pytest.mark.parametrize("name", ["te_gzip_chunked", "cl_comma_joined", "bare_lf_header"])
def test_a_refusal_behind_a_good_request_is_answered_after_it(server, name):
    run, reached = server
    transport = run(b"GET /u/first HTTP/1.1\r\nHost: x\r\n\r\n" + DESYNC[name])
    answers = parse_responses(transport.out)
    assert [a[0] for a in answers] == [200, 400]
    assert answers[0][2] == b"/u/first"
    assert len(reached()) == 1
    assert transport.closed


def test_a_chunk_extension_flood_is_cut(server):
    run, reached = server
    flood = b"1;" + b"x" * 4000 + b"\r\na\r\n"  # 1 byte of data per 4 KB of extension
    transport = run(POST + b"Transfer-Encoding: chunked\r\n\r\n", *([flood] * 40))
    assert "extension" in assert_refused(transport, "bad_framing")["message"]
    assert reached() == []  # a node saw at most a truncated request, then a closed socket


def _without_date_and_via(data: bytes) -> bytes:
    return b"".join(line for line in bytes(data).splitlines(keepends=True)
                    if not line.lower().startswith((b"date:", b"via:")))


@pytest.mark.parametrize("name", sorted(DESYNC) + sorted(UPGRADES))
def test_both_services_refuse_with_the_same_bytes(proxy, ypws, name):
    """One refusal writer: hashproxy and ypws answer a bad request byte for byte alike (but Date and Via)."""
    raw = {**DESYNC, **UPGRADES}[name]
    from_proxy = proxy[0](raw)[0].out
    from_ypws = ypws[0](raw).out
    assert _without_date_and_via(from_proxy) == _without_date_and_via(from_ypws)
    assert b"\r\nDate: " in from_proxy and b"\r\nDate: " in from_ypws


# -- end to end: a real hashproxy, a stub node, a pooled connection ---------------------------------------


def _exchange(port: int, data: bytes, timeout: float = 10.0) -> list[tuple[int, dict[str, str], bytes]]:
    """Send raw bytes, read until the server closes or a second passes quietly; every response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        buf = b""
        sock.settimeout(1.0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            buf += chunk
    return parse_responses(buf)


def test_a_smuggling_attempt_through_a_real_proxy_changes_nothing_for_other_clients(tmp_path, services):
    cluster = ProxyCluster(tmp_path, services, ypws=1, ypfs=1, hashproxy={"workers": 1}).start()
    port = cluster.cfg.hashproxy.port
    bob = b"/photos/bob/1000_abcdef0123/medium.jpg"
    smuggled = b"GET " + bob + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    attempts = [
        b"POST /u/alice HTTP/1.1\r\nHost: x\r\nConnection: content-length\r\nContent-Length: %d\r\n\r\n%s"
        % (len(smuggled), smuggled),
        b"POST /u/alice HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" + smuggled,
        b"POST /u/alice HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: %d\r\n\r\n%s"
        % (len(smuggled), smuggled),
    ]
    first = _exchange(port, attempts[0])
    assert [(status, json.loads(body)["bytes"]) for status, _, body in first] == [(200, len(smuggled))]
    for raw in attempts[1:]:
        assert [status for status, _, _ in _exchange(port, raw)] == [400]
    # another client, on the node connection the attacker's request left in the pool
    for i in range(10):
        path = b"/photos/alice/1000_abcdef0123/small.jpg?n=%d" % i
        answers = _exchange(port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert len(answers) == 1
        assert json.loads(answers[0][2])["path"] == path.decode()
    stats = cluster.node_stats("ypws1")
    assert bob.decode() not in stats["paths"]
