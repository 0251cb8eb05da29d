"""What one connection may cost: sizes, counts and deadlines, set by each service from its config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    max_request_line: int = 8190      # bytes of request target (414 past it)
    max_header_bytes: int = 65536     # bytes of header names and values, 4 per line added (431)
    max_headers: int = 100            # header lines (431)
    max_body: int = 1 << 20           # request body bytes received, any framing (413)
    max_connections: int = 1000       # open connections per process; the next one gets 503 and is closed
    max_queued: int = 1               # pipelined requests waiting behind the one answered before reading pauses
    write_high_water: int = 256 * 1024  # transport write buffer past which reading pauses
    idle_timeout: float = 5.0         # seconds a connection with nothing in progress stays open
    head_timeout: float = 10.0        # seconds from a request's first byte to the end of its head (408)
    request_timeout: float = 0.0      # seconds from a request's first byte to the end of its body (408); 0: off
    body_gap_timeout: float = 0.0     # seconds without body bytes while a body is due (408); 0: the cycle's job
    write_stall_timeout: float = 30.0  # seconds the client may leave its answers unread; then aborted

    @property
    def max_head(self) -> int:
        """Raw bytes a request head may take on the wire (line, headers, their framing)."""
        return self.max_request_line + self.max_header_bytes + 1024
