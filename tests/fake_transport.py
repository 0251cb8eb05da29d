"""A fake asyncio transport for byte-level protocol tests (uvicorn's style): it records what a
protocol writes and whether it paused reading or closed, with no socket.

With ``protocol`` set it also models the write buffer of a peer that does not read:
past the high-water mark the protocol set (``set_write_buffer_limits``) it calls
``protocol.pause_writing()``, as asyncio does, and ``drain()`` (the peer reads
everything) calls ``resume_writing()``."""

from __future__ import annotations

import asyncio


class FakeTransport(asyncio.Transport):
    def __init__(self, protocol: asyncio.Protocol | None = None, high: int | None = None) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True
        self.protocol = protocol
        self.high = high
        self.buffered = 0
        self.paused = False
        self.pauses = 0  # pause_reading calls

    def write(self, data) -> None:
        assert not self.closed, "written after close"
        self.out += data
        self.buffered += len(data)
        if self.protocol is not None and self.high is not None and self.buffered > self.high and not self.paused:
            self.paused = True
            self.protocol.pause_writing()

    def writelines(self, lines) -> None:
        self.write(b"".join(lines))

    def drain(self) -> None:
        """The peer reads everything written so far."""
        self.buffered = 0
        if self.paused:
            self.paused = False
            self.protocol.resume_writing()

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        if self.high is None:
            self.high = high

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default
