"""A bare service on the HTTP/1.1 core (cluster/http1), for byte-level tests of the core itself.

``EchoProtocol`` answers each request with its target (or, with ``hold=True``, keeps
every answer back until the test releases it), and records what reached its handler:
the core's rules are then seen as bytes in, bytes out, and handler calls.
"""

from __future__ import annotations

import asyncio

import httptools

from cluster.http1 import Cycle, HTTP1Protocol, Limits

from .fake_transport import FakeTransport


class EchoCycle(Cycle):
    __slots__ = ("proto", "method", "url", "keep_alive", "body", "whole", "turn", "answered")

    def __init__(self, proto: "EchoProtocol", method: bytes, url: bytes, keep_alive: bool):
        self.proto, self.method, self.url, self.keep_alive = proto, method, url, keep_alive
        self.body = b""
        self.whole = self.turn = self.answered = False

    def feed_body(self, data: bytes) -> None:
        self.body += data

    def end_body(self) -> None:
        self.whole = True
        self.proto.handled.append((self.method, self.url, self.body))
        if self.turn:
            self._go()

    def start(self) -> None:
        self.turn = True
        self.proto.started.append(self.url)
        if self.whole:
            self._go()

    def _go(self) -> None:
        if self.proto.hold:
            self.proto.held.append(self)
        else:
            self.answer()

    def answer(self, size: int = 0) -> None:
        """Write this request's response (its target, or ``size`` bytes) and end the cycle."""
        self.answered = True
        body = self.url if not size else b"x" * size
        self.proto.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        self.proto.cycle_done(self, self.keep_alive)


class EchoProtocol(HTTP1Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, limits: Limits | None = None, connections: set | None = None,
                 hold: bool = False):
        super().__init__(loop, connections if connections is not None else set(), limits or Limits())
        self.hold = hold
        self.handled: list[tuple[bytes, bytes, bytes]] = []  # (method, target, body) of every whole request
        self.started: list[bytes] = []                       # targets, in the order their cycles started
        self.held: list[EchoCycle] = []

    def handle_head(self, method, url, headers, version, keep_alive) -> EchoCycle:
        return EchoCycle(self, method, url, keep_alive)


def echo(loop: asyncio.AbstractEventLoop, *parts: bytes, transport: FakeTransport | None = None,
         **kw) -> tuple[EchoProtocol, FakeTransport]:
    """A fresh EchoProtocol on a fake transport, fed ``parts`` one data_received each."""
    proto = EchoProtocol(loop, **kw)
    transport = transport or FakeTransport()
    proto.connection_made(transport)
    for part in parts:
        if transport.closed:
            break
        proto.data_received(part)
    return proto, transport


def responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Every complete response in ``data``, in order: (status, headers lower-cased, body)."""
    out: list = []

    class R:
        def on_message_begin(self):
            self.headers, self.body = {}, b""

        def on_header(self, name, value):
            self.headers[name.decode().lower()] = value.decode("latin-1")

        def on_body(self, body):
            self.body += body

        def on_message_complete(self):
            out.append((parser.get_status_code(), self.headers, self.body))

    parser = httptools.HttpResponseParser(R())
    try:
        parser.feed_data(bytes(data))
    except httptools.HttpParserError:
        pass
    return out
