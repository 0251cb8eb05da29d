"""Request headers, read once: what routing needs (host, body framing, auth) and what a node is sent.

One pass over the client's headers; hop-by-hop headers (RFC 9110 7.6.1, plus any
named in Connection) are dropped from what is forwarded, and X-Forwarded-For and
Via are extended rather than trusted blindly.

The head has passed ``cluster.framing.check_head`` first. Framing is never copied
from the client's lines: the node gets a ``Content-Length`` or ``Transfer-Encoding:
chunked`` written here from what was parsed (the proxy re-chunks the body it
streams), and a Connection header cannot mark Content-Length, Transfer-Encoding or
Host hop-by-hop. Otherwise ``Connection: content-length`` would strip the length
while the body still followed, and the node would read the body as a second request.
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.framing import connection_tokens, content_length

_HOST, _CL, _TE, _EXPECT, _AUTH, _XFF, _VIA, _CONN, _DROP = range(9)
_SPECIAL = {
    b"host": _HOST, b"content-length": _CL, b"transfer-encoding": _TE, b"expect": _EXPECT,
    b"authorization": _AUTH, b"x-forwarded-for": _XFF, b"via": _VIA, b"connection": _CONN,
    b"keep-alive": _DROP, b"proxy-connection": _DROP, b"te": _DROP, b"trailer": _DROP, b"upgrade": _DROP,
    b"x-forwarded-host": _DROP, b"x-forwarded-proto": _DROP, b"proxy-authorization": _DROP,
}


@dataclass(slots=True)
class RequestHeaders:
    host: bytes = b""
    auth: bytes = b""
    has_body: bool = False
    length: int = -1       # the parsed Content-Length; -1: none
    chunked: bool = False
    expect_continue: bool = False
    xff: bytes = b""
    via: bytes = b""
    forward: bytes = b""   # the header lines a node gets as they came (host and end-to-end headers)


def scan(headers: list[tuple[bytes, bytes]]) -> RequestHeaders:
    out = RequestHeaders()
    lines: list[bytes] = []
    extra_hop: set[bytes] | None = None
    special = _SPECIAL
    for name, value in headers:
        kind = special.get(name.lower())
        if kind is None:
            lines.append(b"%s: %s\r\n" % (name, value))
        elif kind == _HOST:
            out.host = value
            lines.append(b"%s: %s\r\n" % (name, value))
        elif kind == _CL:  # re-written by upstream_head from the parsed value
            out.length = content_length(value)
            out.has_body = out.length > 0
        elif kind == _TE:  # check_head let only "chunked" through
            out.chunked = out.has_body = True
        elif kind == _EXPECT:
            out.expect_continue = value.strip().lower() == b"100-continue"
        elif kind == _AUTH:
            out.auth = value
            lines.append(b"%s: %s\r\n" % (name, value))
        elif kind == _XFF:
            out.xff = out.xff + b", " + value if out.xff else value
        elif kind == _VIA:
            out.via = out.via + b", " + value if out.via else value
        elif kind == _CONN:
            tokens = connection_tokens(value)
            if tokens:
                extra_hop = (extra_hop or set()) | tokens
    if extra_hop:  # headers the client marked hop-by-hop in Connection: rare, so a second pass
        lines = [line for line in lines if line.split(b":", 1)[0].lower() not in extra_hop]
    out.forward = b"".join(lines)
    return out


def upstream_head(method: str, path: str, query: str, h: RequestHeaders, client_ip: bytes) -> bytes:
    """The request head sent to a node."""
    return b"".join((
        b"%s %s HTTP/1.1\r\n" % (method.encode(), (path + query).encode("utf-8")),
        h.forward,
        b"" if h.host else b"Host: hashproxy\r\n",  # HTTP/1.0 without Host: the node still needs one
        b"X-Forwarded-For: ", h.xff + b", " if h.xff else b"", client_ip, b"\r\n",
        b"X-Forwarded-Host: " + h.host + b"\r\n" if h.host else b"",
        b"X-Forwarded-Proto: http\r\nVia: ", h.via + b", " if h.via else b"", b"1.1 hashproxy\r\n",
        b"Transfer-Encoding: chunked\r\n\r\n" if h.chunked else
        b"Content-Length: %d\r\n\r\n" % h.length if h.length >= 0 else b"\r\n",
    ))
