"""ypws's hit path honours back-pressure: a client that pipelines requests and never reads cannot grow memory.

Issue 13, finding 3: one connection pipelining hits without reading took a node from
41 to 135 MB, because hits were answered (and their bytes buffered) as fast as
requests were parsed. Driven byte by byte with a fake transport whose write buffer
has a high-water mark, as asyncio's has: past it the protocol must stop reading and
answer nothing more, and resume (in order) when the client drains its buffer.
"""

from __future__ import annotations

import asyncio
import logging
import types
from concurrent.futures import ThreadPoolExecutor

import httptools
import pytest

from ypws.accesslog import AccessLog
from ypws.images import Reply
from ypws.worker import HttpProtocol

from .fake_transport import FakeTransport

BODY = 30_000
HIGH = 256 * 1024


class BufferedTransport(FakeTransport):
    """Collects writes like a socket whose peer does not read: pause_writing() past HIGH bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol: HttpProtocol | None = None
        self.buffered = 0
        self.delivered = bytearray()
        self.pending = bytearray()
        self.paused = False

    def write(self, data) -> None:
        self.pending += data
        self.buffered += len(data)
        if self.buffered > HIGH and not self.paused:
            self.paused = True
            self.protocol.pause_writing()

    def writelines(self, lines) -> None:
        self.write(b"".join(lines))

    def drain(self) -> None:
        """The client reads everything buffered."""
        self.delivered += self.pending
        self.pending.clear()
        self.buffered = 0
        if self.paused:
            self.paused = False
            self.protocol.resume_writing()


class HitService:
    """Answers every image GET from 'cache', as ImageService.respond(fast=True) does on a hit."""

    def __init__(self) -> None:
        self.answered: list[str] = []

    def respond(self, req, fast: bool = False) -> Reply:
        self.answered.append(req.path)
        return Reply(200, (("Content-Type", "image/jpeg"), ("Content-Length", str(BODY))), b"x" * BODY, cache="HIT")


@pytest.fixture
def node():
    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(1)
    service = HitService()
    worker = types.SimpleNamespace(
        loop=loop, service=service, access=AccessLog.off(), connections=set(), max_connections=100, executor=executor,
        wsgi=None, head_memo={}, date_header=lambda: b"Date: Sun, 29 Nov 2026 00:00:00 GMT\r\n",
        sockname=("127.0.0.1", 8301), log=logging.getLogger("ypws-test"))
    proto = HttpProtocol(worker)
    transport = BufferedTransport()
    transport.protocol = proto
    proto.connection_made(transport)
    try:
        yield proto, transport, service
    finally:
        executor.shutdown(wait=True)
        loop.close()


def statuses(data: bytes) -> list[int]:
    out: list[int] = []

    class R:
        def on_message_complete(self):
            out.append(parser.get_status_code())

    parser = httptools.HttpResponseParser(R())
    parser.feed_data(bytes(data))
    return out


def test_a_client_that_never_reads_stops_being_answered_and_read(node):
    proto, transport, service = node
    n = 400  # 12 MB of answers, asked for in one 30 KB burst
    proto.data_received(b"".join(b"GET /photos/a/1_0123456789/small.jpg?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i
                                 for i in range(n)))
    assert transport.paused and not transport.reading
    assert transport.buffered <= HIGH + BODY + 1024  # one answer past the mark, no more
    assert len(service.answered) <= HIGH // BODY + 2
    assert len(proto.pipeline) == n - len(service.answered)
    rounds = 0
    while proto.pipeline and rounds < n:  # the client reads, a buffer at a time
        transport.drain()
        rounds += 1
        assert transport.buffered <= HIGH + BODY + 1024
    transport.drain()
    assert not proto.pipeline and transport.reading
    assert service.answered == ["/photos/a/1_0123456789/small.jpg"] * n
    assert statuses(transport.delivered) == [200] * n


def test_reading_resumes_once_the_client_catches_up(node):
    proto, transport, service = node
    proto.data_received(b"GET /photos/a/1_0123456789/small.jpg HTTP/1.1\r\nHost: x\r\n\r\n" * 20)
    assert not transport.reading
    transport.drain()
    transport.drain()
    assert transport.reading and not proto.pipeline
    proto.data_received(b"GET /photos/a/1_0123456789/small.jpg HTTP/1.1\r\nHost: x\r\n\r\n")
    transport.drain()
    assert statuses(transport.delivered) == [200] * 21
