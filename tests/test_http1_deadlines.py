"""The HTTP/1.1 core's deadlines: request head, whole request, body gap, idle keep-alive, unread answers.

No timer runs per request: a service's sweeper calls ``check_timers(now)`` a few
times a second. Here it is called with chosen clock values, just before and just
after each deadline, so every case is exact and takes no wall time.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from cluster.http1 import Limits

from .fake_transport import FakeTransport
from .http1_support import EchoProtocol, responses

LIMITS = Limits(idle_timeout=5.0, head_timeout=10.0, request_timeout=30.0, body_gap_timeout=4.0,
                write_stall_timeout=20.0)


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def connect(loop, limits: Limits = LIMITS, **kw) -> tuple[EchoProtocol, FakeTransport]:
    proto = EchoProtocol(loop, limits=limits, **kw)
    transport = FakeTransport(protocol=proto)
    proto.connection_made(transport)
    return proto, transport


def timed_out(transport: FakeTransport, words: str) -> None:
    answers = responses(transport.out)
    assert answers and answers[-1][0] == 408, bytes(transport.out)
    error = json.loads(answers[-1][2])
    assert error["error"] == "request_timeout" and words in error["message"]
    assert transport.closed


def test_a_head_trickled_in_gets_408_at_the_head_deadline_however_busy_the_client_is(loop):
    proto, transport = connect(loop)
    proto.data_received(b"GET /slow HTTP/1.1\r\nHo")
    began = proto.request_began
    for i in range(9):  # a byte now and then: the head deadline counts from the first byte
        proto.data_received(b"x")
        proto.check_timers(began + i + 0.5)
    proto.check_timers(began + 9.9)
    assert transport.out == b"" and not transport.closed
    proto.check_timers(began + 10.1)
    timed_out(transport, "10s")
    assert proto.handled == []


def test_a_body_trickled_in_gets_408_at_the_request_deadline(loop):
    proto, transport = connect(loop)
    proto.data_received(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    began = proto.request_began
    for i in range(29):  # one byte a second: never a gap, but never done
        proto.last_data = began + i
        proto.check_timers(began + i + 0.5)
    assert not transport.closed
    proto.last_data = began + 29.9
    proto.check_timers(began + 30.1)
    timed_out(transport, "30s")


def test_a_gap_in_a_body_gets_408(loop):
    proto, transport = connect(loop)
    proto.data_received(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
    last = proto.last_data
    proto.check_timers(last + 3.9)
    assert not transport.closed
    proto.check_timers(last + 4.1)
    timed_out(transport, "no request body data")


def test_an_idle_keep_alive_connection_is_closed_quietly(loop):
    proto, transport = connect(loop)
    proto.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [a[0] for a in responses(transport.out)] == [200]
    idle = proto.last_data + 0.25
    proto.check_timers(idle)  # the sweep notes when it finds the connection idle (no clock read per answer)
    proto.check_timers(idle + 4.9)
    assert not transport.closed
    proto.check_timers(idle + 5.1)
    assert transport.closed and [a[0] for a in responses(transport.out)] == [200]  # no 408 for an idle client


def test_a_connection_that_never_sends_is_closed_at_the_idle_timeout(loop):
    proto, transport = connect(loop)
    proto.check_timers(proto.idle_since + 5.1)
    assert transport.closed and transport.out == b""


def test_a_client_that_leaves_its_answers_unread_is_aborted(loop):
    proto, transport = connect(loop, hold=True)
    proto.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    proto.pause_writing()
    stalled = proto.stalled_since
    proto.check_timers(stalled + 19.9)
    assert not transport.closed
    proto.check_timers(stalled + 20.1)
    assert transport.aborted


def test_time_spent_while_the_server_does_not_read_is_not_the_clients(loop):
    """While reading is paused by us (a request being answered, a body the handler cannot take
    yet), a partly received request cannot time out; its clock restarts when reading resumes."""
    proto, transport = connect(loop)
    proto.data_received(b"GET /slow HTTP/1.1\r\nHo")
    began = proto.request_began
    proto.pause_reading("body")
    proto.check_timers(began + 60)
    assert not transport.closed
    proto.resume_reading("body")
    resumed = proto.request_began
    assert resumed >= began
    proto.check_timers(resumed + 9.9)
    assert not transport.closed
    proto.check_timers(resumed + 10.1)
    timed_out(transport, "10s")


def test_a_request_being_answered_is_never_timed_out(loop):
    proto, transport = connect(loop, hold=True)
    proto.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    proto.check_timers(proto.last_data + 1000)
    assert not transport.closed
    proto.held.pop().answer()
    assert [a[0] for a in responses(transport.out)] == [200]
