"""The ``Date`` header line, formatted once per second (RFC 9110 6.6.1: an origin server sends one)."""

from __future__ import annotations

import time
from email.utils import formatdate

_cached = [0, b""]


def date_header() -> bytes:
    """``Date: <IMF-fixdate>\\r\\n`` for the current second."""
    now = int(time.time())
    if now != _cached[0]:
        _cached[0], _cached[1] = now, b"Date: %s\r\n" % formatdate(now, usegmt=True).encode()
    return _cached[1]
