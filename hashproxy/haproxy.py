"""An HAProxy configuration equivalent to our routing: HAProxy (Debian 12: 2.6) as a production front.

The Python hashproxy stays the embedded default; this is for operators who want an
engine they already run. ``render`` is pure (config sections in, text out), so the same
config yields byte-identical output on every front, and several HAProxy fronts behind
one address pin each URL to the same node (see `_server_ids`).

What maps to what:

* Image URLs are hashed on the same routing key as ours (storage.keys.image_route_key: the path
  without query and extension, ``/photos/u/id_s/small``), so every format and version
  of one size lands on one node; ``hash-type consistent`` and ``hash-balance-factor``
  (``hashproxy.balance_factor`` x 100) give bounded loads. HAProxy's own hash ring
  picks the node, so the owner of a URL differs from our rendezvous order, but it is
  stable per URL, which is what the cache hit ratio needs.
* Uploads (``POST /upload``), ``/api`` and PURGE of ``/photos/`` go to ypfs
  (least connections); pages to any ypws (least connections).
* Health: ``GET /readyz`` (READY_PATH) every ``health_interval``; ``fail_threshold``
  failures take a node out, one success brings it back, ramping its weight over
  ``rampup_seconds`` (``slowstart``); connection errors on live traffic count too.
* Limits: request line + headers must fit one buffer (``tune.bufsize``); timeouts
  from [hashproxy]. Errors HAProxy writes itself are JSON, 503 with Retry-After, except
  those for a request head it cannot parse or that arrives too slowly (400, 408): HAProxy
  2.6 answers those from its HTTP/1 parser with built-in HTML, before any rule applies.

No secret is read: the admin token, URL key and S3 keys never reach the output.
"""

from __future__ import annotations

import re
from typing import Sequence

import xxhash

from cluster.config import ConfigError, HashproxySection, NodeConfig
from storage.keys import IMAGE_ROUTE_REGEX

#: what the health checks ask for; /healthz is liveness only (see the README)
READY_PATH = "/readyz"

#: a '..' segment, also percent-encoded (urls.normalise_path refuses them)
DOTDOT_REGEX = "(^|/)([.]|%2[eE])([.]|%2[eE])(/|$)"
#: the routing key from the path: drop the extension (from the last dot of the last segment)
ROUTE_KEY_EXPR = "path,regsub([.][^./]*$,)"
#: response header naming the key a URL was hashed on (what `python -m hashproxy route` prints as key=)
ROUTE_KEY_HEADER = "X-Route-Key"

# HAProxy spreads 16 ring points per unit of weight; 100 gives each node 1600 points,
# so each node's share of URL space is within a few percent of 1/N (weight 1 would be 16).
_WEIGHT = 100
# server ids seed the ring points (puid * 4096 + point): below 2**20 they never collide
_MAX_ID = (1 << 20) - 1
_MAXREWRITE = 1024          # HAProxy's default reserve for header rewrites, inside tune.bufsize
_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _json(code: str, message: str) -> str:
    return "{\"error\":\"%s\",\"message\":\"%s\"}" % (code, message)


def _server_ids(names: Sequence[str]) -> dict[str, int]:
    """A stable id per node name, as the ring's points derive from server ids.

    Derived from the name (not the position in the list), like our ring: reordering the
    nodes, moving one to another host or removing another keeps a node's share, and every
    front given the same names agrees. Collisions move to the next free id, deterministically.
    """
    ids: dict[str, int] = {}
    used: set[int] = set()
    for name in sorted(names):
        sid = xxhash.xxh32_intdigest(name.encode()) % _MAX_ID + 1
        while sid in used:
            sid = sid % _MAX_ID + 1
        ids[name] = sid
        used.add(sid)
    return ids


def _addr(host: str, port: int) -> str:
    """host:port as HAProxy reads it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen_host(settings: HashproxySection) -> str:
    """Where the front binds: the section's ``listen`` address once the config has one (the
    bind/advertise split of issue 11, on its way in another branch), else its ``host``."""
    return getattr(settings, "listen", "") or settings.host


def _check_nodes(role: str, nodes: Sequence[NodeConfig]) -> None:
    for n in nodes:
        if not _NAME.match(n.name):
            raise ConfigError(f"{role}.nodes.{n.name}: HAProxy server names allow only letters, digits and _.:-")
        if not n.host or not 0 < n.port < 65536:
            raise ConfigError(f"{role}.nodes.{n.name}: host and port are needed for an HAProxy server line")


def _health(s: HashproxySection, check_path: str) -> list[str]:
    """Active checks like ours, and live connection errors counted against the node."""
    server = [f"check inter {_ms(s.health_interval)} fall {max(1, s.fail_threshold)} rise 1",
              f"observe layer4 error-limit {max(1, s.fail_threshold)} on-error mark-down"]
    if s.rampup_seconds > 0:
        server.append(f"slowstart {_ms(s.rampup_seconds)}")
    return [
        "    option httpchk",
        f"    http-check send meth GET uri {check_path} ver HTTP/1.1 hdr Host haproxy-check",
        "    http-check expect status 200",
        f"    default-server {' '.join(server)}",
    ]


def _servers(nodes: Sequence[NodeConfig], weight: int | None = None, track: str = "") -> list[str]:
    """Server lines; with ``track``, each follows the check state of its namesake in that backend."""
    ids = _server_ids([n.name for n in nodes])
    lines = []
    for n in nodes:
        line = f"    server {n.name} {_addr(n.host, n.port)} id {ids[n.name]}"
        if weight:
            line += f" weight {weight}"
        if track:
            line += f" track {track}/{n.name}"
        lines.append(line)
    return lines


def render(settings: HashproxySection, ypws: Sequence[NodeConfig], ypfs: Sequence[NodeConfig],
           check_path: str = READY_PATH) -> str:
    """The HAProxy configuration for the [hashproxy] section and its nodes: one front on
    hashproxy's address, three backends."""
    s = settings
    if not re.match(r"^/[!-~]*$", check_path):
        raise ConfigError(f"--check-path: an absolute path without spaces, got {check_path!r}")
    _check_nodes("ypws", ypws)
    _check_nodes("ypfs", ypfs)
    factor = round(s.balance_factor * 100)
    if factor and factor <= 100:
        raise ConfigError("hashproxy.balance_factor: HAProxy's hash-balance-factor needs 0 (off) or above 1.0")
    maxconn = s.max_connections * s.workers
    bufsize = -(-(s.max_request_line + s.max_header_bytes + _MAXREWRITE + 2) // 1024) * 1024
    health = _health(s, check_path)
    lines = [
        "# Generated by `python -m hashproxy haproxy-config` from the cluster config; do not edit,",
        "# regenerate. Equivalent to hashproxy's routing (see README, 'HAProxy as the front').",
        "#",
        "# Request smuggling: HAProxy's defaults already refuse what a desync needs, so nothing",
        "# here turns them off: requests are parsed strictly (no accept-invalid-http-request),",
        "# differing duplicate Content-Length headers are a 400, Transfer-Encoding with",
        "# Content-Length drops the Content-Length (the node sees chunked framing only),",
        "# HTTP/1.0 GET/HEAD/DELETE with a body is a 400, and every request is re-serialised",
        "# with HAProxy's own framing (never the client's bytes) before a node sees it.",
        "",
        "global",
        f"    maxconn {maxconn}",
        f"    tune.bufsize {bufsize}",
        "    log stdout format raw daemon",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    option dontlognull",
        f"    timeout connect {_ms(s.connect_timeout)}",
        f"    timeout client {_ms(s.client_timeout)}",
        f"    timeout http-request {_ms(s.client_timeout)}",
        f"    timeout http-keep-alive {_ms(s.client_timeout)}",
        f"    timeout server {_ms(s.read_timeout)}",
        f"    timeout check {_ms(s.health_timeout)}",
        "    retries 2",
        "    option redispatch",
        "    # JSON for the errors a request meets once parsed; a head HAProxy cannot parse (400, too large",
        "    # for tune.bufsize included) or that comes too slowly (408) gets HAProxy's built-in HTML page",
        f"    http-error status 502 content-type application/json string '{_json('upstream_failed', 'the node failed to answer')}'",
        f"    http-error status 503 content-type application/json string '{_json('no_healthy_node', 'no healthy node for this request')}' hdr Retry-After 1",
        f"    http-error status 504 content-type application/json string '{_json('upstream_timeout', 'the node did not answer in time')}'",
        "",
        "frontend front",
        f"    bind {_addr(_listen_host(s), s.port)}",
        f"    maxconn {maxconn}",
        "    option forwardfor",
        "    http-request del-header X-Forwarded-Host",
        "    http-request del-header X-Forwarded-Proto",
        "    http-request set-header X-Forwarded-Host %[req.hdr(host)] if { req.hdr(host) -m found }",
        "    http-request set-header X-Forwarded-Proto http",
        "    http-request add-header Via \"1.1 haproxy\"",
        "    # the front's own liveness and readiness (at least one ready node per role), and metrics",
        "    http-request return status 200 content-type application/json string '{\"status\":\"ok\"}' if { path /healthz }",
        "    http-request return status 503 content-type application/json string "
        f"'{_json('not_ready', 'no ready node for a role')}' hdr Retry-After 1 "
        "if { path /readyz } !{ nbsrv(ypws_images) gt 0 } || { path /readyz } !{ nbsrv(ypfs) gt 0 }",
        "    http-request return status 200 content-type application/json string '{\"status\":\"ready\"}' if { path /readyz }",
        "    http-request use-service prometheus-exporter if { path /metrics }",
        "    # normalisation as ours, where HAProxy 2.6 has it without experimental directives:",
        "    # duplicate slashes merged (one URL, one cache entry), '..' segments refused",
        "    http-request set-path %[path,regsub(/+,/,g)] if { path_sub // }",
        "    http-request return status 400 content-type application/json string "
        f"'{_json('bad_path', 'dot-dot segments are not allowed in a path')}' if {{ path_reg -- {DOTDOT_REGEX} }}",
        "    acl photos path_beg /photos/",
        f"    acl image path_reg {IMAGE_ROUTE_REGEX}",
        "    acl purge method PURGE",
        "    http-request return status 405 content-type application/json string "
        f"'{_json('method_not_allowed', 'GET, HEAD or PURGE on /photos/')}' if photos !METH_GET !purge",
        "    http-request return status 405 content-type application/json string "
        f"'{_json('method_not_allowed', 'PURGE is only for /photos/ URLs')}' if purge !photos",
        "    use_backend ypfs if purge",
        "    use_backend ypfs if { path /api } || { path_beg /api/ } || { path /upload } METH_POST",
        "    use_backend ypws_images if image",
        "    default_backend ypws_pages",
        "",
        "backend ypws_images",
        "    # the routing key: storage.keys.image_route_key (path without query and extension)",
        f"    http-request set-var(txn.route_key) {ROUTE_KEY_EXPR}",
        "    balance hash var(txn.route_key),xxh64",
        "    hash-type consistent",
        f"    hash-balance-factor {factor}",
        f"    http-after-response set-header {ROUTE_KEY_HEADER} %[var(txn.route_key)]",
        "    retry-on conn-failure empty-response",
        "    http-request disable-l7-retry unless METH_GET",
        *health,
        *_servers(ypws, _WEIGHT),
        "",
        "backend ypws_pages",
        "    balance leastconn",
        "    retry-on conn-failure empty-response",
        "    http-request disable-l7-retry unless METH_GET",
        "    # the same nodes: one set of health checks (ypws_images'), followed here",
        *_servers(ypws, track="ypws_images"),
        "",
        "backend ypfs",
        "    balance leastconn",
        "    # a fresh connection per request: an upload never meets a keep-alive connection gunicorn just closed",
        "    option http-server-close",
        *health,
        *_servers(ypfs),
        "",
    ]
    return "\n".join(lines)
