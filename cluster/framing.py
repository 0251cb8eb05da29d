"""Request framing rules the HTTP/1.1 core (cluster/http1, run by ypws and hashproxy) holds every head to.

httptools (llhttp) already refuses most desync shapes: CL with TE, duplicate or
comma-joined Content-Length, a TE list not ending in ``chunked``, obs-fold, bare CR
or LF, control characters in values, overflowing chunk sizes. It still takes a few
that another HTTP implementation on the path may frame differently:
``Transfer-Encoding: gzip, chunked``, ``chunked`` with trailing whitespace, two
Transfer-Encoding lines (``identity`` then ``chunked``), ``CHUNKED``, chunked framing
on an HTTP/1.0 request, two Host lines; and it accepts chunk extensions of any
length. A proxy that forwards such a request, or a server behind one, may read its
end differently from its peer, and the difference becomes a smuggled second
request. So every request head is held to the strict reading here before anything
is routed or forwarded: Transfer-Encoding exactly ``chunked`` (one line, HTTP/1.1),
Content-Length one line of digits, one Host. The refusal is a 400 and the
connection is closed (the stream can no longer be trusted).

Pure (bytes in, a refusal or None out), so any role can use it.
"""

from __future__ import annotations

from typing import NamedTuple

#: longest Content-Length accepted (digits): 10^18 bytes is past every limit
MAX_LENGTH_DIGITS = 18
#: header names a Connection header may never mark hop-by-hop: the request's framing and its Host
PROTECTED = frozenset({b"content-length", b"transfer-encoding", b"host"})
#: bytes a chunked body may spend on framing (size lines, extensions) beyond 8 per data byte
CHUNK_OVERHEAD_ALLOWANCE = 16 * 1024
_OWS = b" \t"


class Refusal(NamedTuple):
    status: int
    code: str
    message: str


def _bad(message: str) -> Refusal:
    return Refusal(400, "bad_framing", message)


def check_head(headers: list[tuple[bytes, bytes]], http10: bool = False) -> Refusal | None:
    """None if the request head frames its body unambiguously, else the 400 to answer (and close on)."""
    lengths = encodings = hosts = 0
    for name, value in headers:
        size = len(name)
        if size != 4 and size != 14 and size != 17:  # cheap filter: host, content-length, transfer-encoding
            continue
        lname = name.lower()
        if lname == b"content-length":
            lengths += 1
            digits = value.rstrip(_OWS)
            if lengths > 1:
                return _bad("more than one Content-Length header")
            if not (digits.isdigit() and digits.isascii()) or len(digits) > MAX_LENGTH_DIGITS:
                return _bad("Content-Length must be one decimal number")
        elif lname == b"transfer-encoding":
            encodings += 1
            if encodings > 1:
                return _bad("more than one Transfer-Encoding header")
            if value.lower() != b"chunked":
                return _bad("Transfer-Encoding must be exactly 'chunked'")
        elif lname == b"host":
            hosts += 1
            if hosts > 1:
                return Refusal(400, "bad_request", "more than one Host header")
    if lengths and encodings:
        return _bad("a request may not carry both Content-Length and Transfer-Encoding")
    if encodings and http10:
        return _bad("Transfer-Encoding is not defined for HTTP/1.0 requests")
    return None


def content_length(value: bytes) -> int:
    """The value of a Content-Length that passed check_head."""
    return int(value.rstrip(_OWS))


def connection_tokens(value: bytes) -> set[bytes]:
    """Header names a Connection header marks hop-by-hop, less the ones it may never remove."""
    return {t.strip().lower() for t in value.split(b",")} - {b"close", b"keep-alive", b""} - PROTECTED


class ChunkBudget:
    """Counts what a chunked body spends on framing, so chunk extensions cannot stream forever.

    ``raw`` is every byte read while the body was being received, ``data`` the body bytes
    the parser delivered; the difference is size lines, CRLFs and extensions. A legitimate
    client spends a few bytes per chunk; past ``CHUNK_OVERHEAD_ALLOWANCE`` plus 8 per data
    byte the request is refused.
    """

    __slots__ = ("raw", "data")

    def __init__(self) -> None:
        self.raw = 0
        self.data = 0

    def exceeded(self) -> bool:
        return self.raw - self.data > CHUNK_OVERHEAD_ALLOWANCE + 8 * self.data


CHUNK_OVERHEAD_REFUSAL = Refusal(400, "bad_framing", "too many bytes of chunk framing or chunk extensions")
