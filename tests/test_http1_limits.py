"""The HTTP/1.1 core's size and count limits and its connection cap, byte by byte (fake transport).

Each limit is set small through ``Limits`` and crossed once; the answer must be the
core's one refusal shape (JSON ``{"error", "message"}``, ``Connection: close``,
nosniff, Date), the connection closed, and nothing handed to the handler.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from cluster.http1 import Limits

from .fake_transport import FakeTransport
from .http1_support import EchoProtocol, echo, responses

GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def refused(proto: EchoProtocol, transport: FakeTransport, status: int, code: str) -> dict:
    answers = responses(transport.out)
    assert [a[0] for a in answers] == [status], bytes(transport.out)
    _, headers, body = answers[0]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert headers["x-content-type-options"] == "nosniff"
    assert "date" in headers
    error = json.loads(body)
    assert sorted(error) == ["error", "message"] and error["error"] == code
    assert transport.closed
    assert proto.handled == []
    return error


def test_a_request_line_past_the_limit_gets_414_even_when_it_comes_in_pieces(loop):
    target = b"/" + b"a" * 150
    pieces = [b"GET " + target[:60], target[60:120], target[120:] + b" HTTP/1.1\r\nHost: x\r\n\r\n"]
    proto, transport = echo(loop, *pieces, limits=Limits(max_request_line=100))
    assert "100" in refused(proto, transport, 414, "uri_too_long")["message"]


def test_a_request_line_at_the_limit_is_served(loop):
    target = b"/" + b"a" * 99
    proto, transport = echo(loop, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n", limits=Limits(max_request_line=100))
    assert [a[2] for a in responses(transport.out)] == [target]


def test_header_bytes_past_the_limit_get_431(loop):
    proto, transport = echo(loop, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 300 + b"\r\n\r\n",
                            limits=Limits(max_header_bytes=200))
    refused(proto, transport, 431, "headers_too_large")


def test_too_many_header_lines_get_431(loop):
    many = b"".join(b"X-%d: v\r\n" % i for i in range(101))
    proto, transport = echo(loop, b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    refused(proto, transport, 431, "headers_too_large")
    proto, transport = echo(loop, b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(99)) +
                            b"Host: x\r\n\r\n")
    assert [a[0] for a in responses(transport.out)] == [200]  # 100 lines are fine


def test_a_head_padded_with_whitespace_the_parser_drops_still_counts(loop):
    """Optional whitespace never reaches on_header, but it is bytes the head took on the wire."""
    limits = Limits(max_request_line=100, max_header_bytes=100)
    pads = [b"X-A:" + b" " * 600 for _ in range(3)]
    proto, transport = echo(loop, b"GET / HTTP/1.1\r\n", *pads, b"v\r\n\r\n", limits=limits)
    assert str(limits.max_head) in refused(proto, transport, 431, "headers_too_large")["message"]


@pytest.mark.parametrize("framing, body", [
    (b"Content-Length: 20\r\n\r\n", b"x" * 20),
    (b"Transfer-Encoding: chunked\r\n\r\n", b"14\r\n" + b"x" * 20 + b"\r\n0\r\n\r\n"),
    (b"Transfer-Encoding: chunked\r\n\r\n", b"8\r\n" + b"x" * 8 + b"\r\n" + b"8\r\n" + b"x" * 8 + b"\r\n"
     + b"8\r\n" + b"x" * 8 + b"\r\n0\r\n\r\n"),
])
def test_a_body_past_the_limit_gets_413(loop, framing, body):
    proto, transport = echo(loop, b"POST /a HTTP/1.1\r\nHost: x\r\n" + framing, body, limits=Limits(max_body=10))
    assert "10" in refused(proto, transport, 413, "body_too_large")["message"]


def test_a_body_at_the_limit_is_served(loop):
    proto, transport = echo(loop, b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789",
                            limits=Limits(max_body=10))
    assert proto.handled == [(b"POST", b"/a", b"0123456789")]
    assert not transport.closed


def test_past_the_connection_cap_a_new_connection_gets_503_and_is_closed(loop):
    connections: set = set()
    limits = Limits(max_connections=2)
    first = [echo(loop, limits=limits, connections=connections) for _ in range(2)]
    assert len(connections) == 2
    proto, transport = echo(loop, GET, limits=limits, connections=connections)
    answers = responses(transport.out)
    assert [a[0] for a in answers] == [503]
    assert answers[0][1]["retry-after"] == "1"
    assert json.loads(answers[0][2])["error"] == "overloaded"
    assert transport.closed and proto.handled == [] and proto not in connections
    first[0][0].connection_lost(None)  # one closes: the next is taken
    proto, transport = echo(loop, GET, limits=limits, connections=connections)
    assert [a[0] for a in responses(transport.out)] == [200] and proto in connections
