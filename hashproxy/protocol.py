"""The client side of the proxy: the shared HTTP/1.1 core (cluster/http1) with the proxy's router as handler.

Parsing, limits, framing checks, pipelining, flow control, deadlines, the
connection cap and refusals are the core's (see cluster/http1/protocol.py); this
module only turns each parsed head into a cycle (``ProxyApp.route``) and sets the
core's limits from ``[hashproxy]``: ``max_request_line``, ``max_header_bytes``,
``max_connections``; ``client_timeout`` for an idle connection, a request head and a
client that leaves its answers unread; request bodies up to
``limits.max_upload_bytes`` plus multipart slack. Gaps in a request body are timed
by the proxy cycles themselves (cycle.py), which also hold a ypfs-bound body to
``hashproxy.upload_deadline``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cluster.http1 import Cycle, HTTP1Protocol, Limits

if TYPE_CHECKING:
    from .app import ProxyApp


def proxy_limits(app: "ProxyApp") -> Limits:
    """The core's limits for this proxy's config (built once per app)."""
    limits = getattr(app, "http1_limits", None)
    if limits is None:
        s = app.settings
        limits = app.http1_limits = Limits(
            max_request_line=s.max_request_line, max_header_bytes=s.max_header_bytes,
            max_body=app.spool_max, max_connections=s.max_connections,
            write_high_water=0,  # the transport's default: node reads pause as soon as the client lags
            idle_timeout=s.client_timeout, head_timeout=s.client_timeout, write_stall_timeout=s.client_timeout)
    return limits


class ProxyProtocol(HTTP1Protocol):
    refusal_extra = b"Via: 1.1 hashproxy\r\n"

    def __init__(self, app: "ProxyApp"):
        super().__init__(app.loop, app.connections, proxy_limits(app))
        self.app = app
        self.client_ip = b"unknown"

    def connection_made(self, transport) -> None:
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip = str(peer[0]).encode()
        super().connection_made(transport)

    def handle_head(self, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]], version: str,
                    keep_alive: bool) -> Cycle:
        return self.app.route(self, method.decode("ascii", "replace"), url, headers, version, keep_alive)
