"""Responses the proxy writes itself: JSON errors ({"error": code, "message": text}) and small bodies."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, Iterable

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


def reason(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def response(status: int, body: bytes, content_type: bytes, *, keep_alive: bool = True, http10: bool = False,
             head_only: bool = False, headers: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
    """A whole HTTP/1.1 response with Content-Length."""
    lines = [b"HTTP/1.1 %d %s" % (status, reason(status)), b"Content-Type: " + content_type,
             b"Content-Length: %d" % len(body), b"Via: 1.1 hashproxy", b"X-Content-Type-Options: nosniff"]
    lines += [k + b": " + v for k, v in headers]
    if not keep_alive:
        lines.append(b"Connection: close")
    elif http10:
        lines.append(b"Connection: keep-alive")
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    return head if head_only else head + body


def json_body(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def error(status: int, code: str, message: str, **kw: Any) -> bytes:
    """A JSON error response; extra keyword fields are added to the body."""
    extra = kw.pop("extra", None) or {}
    return response(status, json_body({"error": code, "message": message, **extra}), b"application/json", **kw)
