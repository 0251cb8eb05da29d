"""The one refusal writer: a request the server will not (or cannot) answer normally.

Status line, ``Content-Type: application/json``, ``Content-Length``, ``Connection:
close``, ``X-Content-Type-Options: nosniff``, any extra lines, and the body
``{"error": code, "message": text}``. Both services write protocol-level refusals
(bad framing, limits, timeouts, upgrades, the connection cap) only through here, so
they cannot drift apart again.
"""

from __future__ import annotations

import json
from http import HTTPStatus

STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
UPGRADE_REFUSAL = (400, "upgrade_unsupported", "protocol upgrades (WebSocket, h2c) are not supported")
OVERLOADED = (503, "overloaded", "too many open connections; try again shortly")
NOSNIFF = b"X-Content-Type-Options: nosniff\r\n"


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


def refusal(status: int, code: str, message: str, extra: bytes = b"") -> bytes:
    """A whole JSON error response that closes the connection; ``extra``: header lines, each ending in CRLF."""
    body = json.dumps({"error": code, "message": message}).encode()
    return b"".join((status_line(status), b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body),
                     b"Connection: close\r\n", NOSNIFF, extra, b"\r\n", body))
