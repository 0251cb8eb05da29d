"""Flow control and pipelining in the HTTP/1.1 core, byte by byte (fake transport with a write buffer).

Both directions: while the client leaves its answers unread (the transport's write
buffer past its high-water mark, so asyncio calls ``pause_writing``) the core stops
reading and starts no further request; while requests wait behind the one being
answered it stops reading; it resumes only when every reason is gone, and answers
in the order the requests came.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from cluster.http1 import Limits

from .fake_transport import FakeTransport
from .http1_support import EchoProtocol, responses


def get(i: int) -> bytes:
    return b"GET /r%d HTTP/1.1\r\nHost: x\r\n\r\n" % i


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def connect(loop, high: int | None = None, **kw) -> tuple[EchoProtocol, FakeTransport]:
    proto = EchoProtocol(loop, **kw)
    transport = FakeTransport(protocol=proto, high=high)
    proto.connection_made(transport)
    return proto, transport


def test_reading_pauses_while_the_write_buffer_is_high_and_resumes_when_it_drains(loop):
    proto, transport = connect(loop, high=1000, hold=True)
    proto.data_received(get(0) + get(1))
    proto.held.pop().answer(size=5000)  # past the high-water mark: asyncio calls pause_writing
    assert transport.paused and proto.write_paused
    assert not transport.reading
    assert proto.started == [b"/r0"]  # /r1 is parsed but not started while the client does not read
    transport.drain()
    assert transport.reading  # the client reads again and /r1 runs: nothing waits
    assert proto.started == [b"/r0", b"/r1"]


def test_a_high_water_mark_is_set_from_the_limits(loop):
    proto, transport = connect(loop, limits=Limits(write_high_water=4096))
    assert transport.high == 4096


def test_queued_requests_pause_reading_until_the_queue_empties(loop):
    proto, transport = connect(loop, hold=True)
    proto.data_received(get(0))
    assert transport.reading  # one request being answered: keep reading
    proto.data_received(get(1))
    assert not transport.reading  # one waiting behind it: stop
    proto.held.pop().answer()
    assert transport.reading  # /r1 runs, nothing waits
    proto.held.pop().answer()
    assert [a[2] for a in responses(transport.out)] == [b"/r0", b"/r1"]


def test_max_queued_sets_how_many_requests_may_wait(loop):
    proto, transport = connect(loop, hold=True, limits=Limits(max_queued=3))
    proto.data_received(get(0) + get(1) + get(2))
    assert transport.reading and len(proto.pipeline) == 2
    proto.data_received(get(3))
    assert not transport.reading and len(proto.pipeline) == 3
    proto.held.pop().answer()
    assert transport.reading


def test_thousands_of_pipelined_answers_are_written_in_order_without_recursion(loop):
    """Answers that complete inside start() are chained by a loop: no stack growth per request."""
    proto, transport = connect(loop)
    proto.pause_writing()
    n = 3000
    proto.data_received(b"".join(get(i) for i in range(n)))
    assert proto.started == [] and len(proto.pipeline) == n
    proto.resume_writing()
    assert [a[2] for a in responses(transport.out)] == [b"/r%d" % i for i in range(n)]
    assert transport.reading and not proto.pipeline and not transport.closed


def test_reading_resumes_only_when_every_reason_is_withdrawn(loop):
    proto, transport = connect(loop)
    proto.pause_reading("body")
    proto.pause_writing()
    assert not transport.reading
    proto.resume_reading("body")
    assert not transport.reading
    proto.resume_writing()
    assert transport.reading
    proto.resume_reading("body")  # withdrawing twice changes nothing
    assert transport.reading


def test_a_refusal_waits_for_the_answers_before_it_even_while_the_client_does_not_read(loop):
    proto, transport = connect(loop, high=1000, hold=True)
    proto.data_received(get(0) + get(1))
    proto.held.pop().answer(size=5000)
    assert proto.write_paused
    proto.data_received(b"POST /bad HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
    assert [a[0] for a in responses(transport.out)] == [200]
    transport.drain()
    proto.held.pop().answer()
    answers = responses(transport.out)
    assert [a[0] for a in answers] == [200, 200, 400]
    assert answers[1][2] == b"/r1" and json.loads(answers[2][2])["error"] == "bad_framing"
    assert transport.closed


def test_keep_alive_false_closes_after_the_answer_and_drops_what_was_queued(loop):
    proto, transport = connect(loop)
    proto.data_received(b"GET /r0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + get(1))
    assert [a[2] for a in responses(transport.out)] == [b"/r0"]
    assert transport.closed


def test_after_a_graceful_stop_the_request_in_hand_is_answered_then_the_connection_closes(loop):
    proto, transport = connect(loop, hold=True)
    proto.data_received(get(0))
    proto.shutdown()
    assert not transport.closed  # an answer is owed
    proto.data_received(get(1))  # already on its way: answered, with Connection: close
    proto.held.pop().answer()
    proto.held.pop().answer()
    assert [a[2] for a in responses(transport.out)] == [b"/r0", b"/r1"]
    assert transport.closed
    idle, idle_transport = connect(loop)
    idle.shutdown()
    assert idle_transport.closed  # nothing in hand: closed at once
