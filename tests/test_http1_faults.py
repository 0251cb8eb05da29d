"""A service handler that raises inside the HTTP/1.1 core: the client gets a JSON 503 with Retry-After
(never a hang, never a 500 or a bare reset), and the failure is logged."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from .fake_transport import FakeTransport
from .http1_support import EchoCycle, EchoProtocol, responses


class Failing(EchoProtocol):
    def handle_head(self, method, url, headers, version, keep_alive):
        if url == b"/bug":
            raise KeyError("a bug in the handler")
        return EchoCycle(self, method, url, keep_alive)


class FailingLate(EchoProtocol):
    """Fails when the request is whole (as ypws's cache-hit path would, inside on_message_complete)."""

    def handle_head(self, method, url, headers, version, keep_alive):
        cycle = EchoCycle(self, method, url, keep_alive)
        if url == b"/bug":
            cycle.end_body = lambda: (_ for _ in ()).throw(RuntimeError("late bug"))
        return cycle


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_a_handler_that_raises_gets_the_client_a_503_after_the_answers_before_it(loop, caplog):
    proto = Failing(loop)
    transport = FakeTransport()
    proto.connection_made(transport)
    with caplog.at_level(logging.ERROR, logger="http1"):
        proto.data_received(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\nGET /bug HTTP/1.1\r\nHost: x\r\n\r\n")
    answers = responses(transport.out)
    assert [a[0] for a in answers] == [200, 503]
    assert answers[1][1]["retry-after"] == "1"
    assert json.loads(answers[1][2])["error"] == "server_error"
    assert "a bug in the handler" not in transport.out.decode("latin-1")  # internals stay in the log
    assert transport.closed
    assert "request handler failed" in caplog.text


def test_a_cycle_that_raises_once_its_request_is_whole_does_not_hang_the_connection(loop):
    proto = FailingLate(loop)
    transport = FakeTransport()
    proto.connection_made(transport)
    proto.data_received(b"GET /bug HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [a[0] for a in responses(transport.out)] == [503]
    assert transport.closed
