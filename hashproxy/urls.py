"""Request targets to routes: normalisation and the routing key. Pure: no sockets, no HTTP objects.

The routing key is what the ring hashes (storage.keys.image_route_key builds it). For an image URL
``/photos/{user}/{id}_{secret}/{size}.{ext}?v=...`` it is ``/photos/{user}/{id}_{secret}/{size}``:
the query (version, signature) and the extension are dropped, so every format of
one size (jpg/webp/avif chosen by Accept) and every version of it live on one node.
Paths are normalised first (duplicate slashes collapsed, escaped unreserved
characters decoded, other escapes upper-cased; nothing lower-cased), so two
spellings of one URL cannot land on two nodes and be cached twice. An encoded
slash (``%2F``) is refused: ypws decodes it into a real one, so
``/photos/alice%2F1_s/small.jpg`` would be served as an image while the proxy
routed it as a page (no pinning, and a purge of the real URL would miss it).
``/metrics/`` is the proxy's own /metrics, never a page forwarded to a node.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from storage.keys import IMAGE_PATH_PREFIX, image_route_key

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_SLASHES = re.compile(rb"/{2,}")


class BadTarget(ValueError):
    """A request target that must be refused with a 4xx; carries the JSON error code."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Route(enum.Enum):
    HEALTH = "healthz"        # answered by the proxy itself: liveness
    READY = "readyz"          # answered by the proxy itself: a ready node per role (for an outer balancer)
    METRICS = "metrics"       # answered by the proxy itself
    IMAGE = "image"           # one ypws node by hash of the routing key
    YPFS = "ypfs"             # uploads, the API and PURGE: least-connections over ypfs
    PAGE = "page"             # everything else: any healthy ypws node


@dataclass(slots=True)
class Target:
    route: Route
    path: str          # normalised path, what is forwarded upstream
    query: str         # "" or "?..." exactly as received
    key: str = ""      # routing key (IMAGE)


def split_target(raw: bytes) -> tuple[bytes, bytes]:
    """Split a request target into path and query ("?..." or b""); absolute-form is reduced to its path."""
    if raw[:1] != b"/":
        if raw.lower().startswith((b"http://", b"https://")):
            rest = raw.split(b"//", 1)[1]
            slash = rest.find(b"/")
            raw = rest[slash:] if slash >= 0 else b"/"
        else:
            raise BadTarget(400, "bad_target", "the request target must be an absolute path")
    q = raw.find(b"?")
    if q < 0:
        return raw.split(b"#", 1)[0], b""
    return raw[:q], raw[q:].split(b"#", 1)[0]


def normalise_path(raw: bytes) -> str:
    """The canonical spelling of a path; BadTarget for '..', control characters or non-UTF-8."""
    if b"%" in raw:
        raw = _normalise_escapes(raw)
        if b"%2F" in raw:
            raise BadTarget(400, "bad_path", "an encoded '/' (%2F) is not allowed in a path")
    if b"//" in raw:
        raw = _SLASHES.sub(b"/", raw)
    if b"/." in raw:
        segments = raw.split(b"/")
        if b".." in segments:
            raise BadTarget(400, "bad_path", "'..' is not allowed in a path")
        if b"." in segments:
            raw = b"/".join(s for i, s in enumerate(segments) if s != b"." or i == 0) or b"/"
            if not raw.startswith(b"/"):
                raw = b"/" + raw
    if raw.isascii():
        text = raw.decode("ascii")
        if b"%" not in raw:
            if not text.isprintable() or " " in text:
                raise BadTarget(400, "bad_path", "control characters or spaces in the path")
            return text
    try:
        decoded = unquote_to_bytes(raw).decode("utf-8")
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadTarget(400, "bad_encoding", "the path is not valid UTF-8") from None
    if not decoded.isprintable():
        raise BadTarget(400, "bad_path", "control characters in the path")
    return text


def _normalise_escapes(raw: bytes) -> bytes:
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c != 0x25:  # '%'
            out.append(c)
            i += 1
            continue
        if i + 2 >= n or raw[i + 1] not in _HEX or raw[i + 2] not in _HEX:
            raise BadTarget(400, "bad_escape", "a '%' in the path is not followed by two hex digits")
        value = int(raw[i + 1:i + 3], 16)
        if value in _UNRESERVED:
            out.append(value)
        else:
            out += b"%" + raw[i + 1:i + 3].upper()
        i += 3
    return bytes(out)


_IMAGE_METHODS = frozenset({"GET", "HEAD", "PURGE"})


def classify(method: str, raw_target: bytes) -> Target:
    """Route one request; BadTarget (4xx) for targets or methods that cannot be served."""
    raw_path, raw_query = split_target(raw_target)
    path = normalise_path(raw_path)
    try:
        query = raw_query.decode("utf-8")
    except UnicodeDecodeError:
        raise BadTarget(400, "bad_encoding", "the query string is not valid UTF-8") from None
    if path.startswith(IMAGE_PATH_PREFIX):
        if method not in _IMAGE_METHODS:
            raise BadTarget(405, "method_not_allowed", f"{method} is not allowed on /photos/ (GET, HEAD, PURGE)")
        if method == "PURGE":  # ypfs checks the token and the path, and logs the purge
            return Target(Route.YPFS, path, query)
        key = image_route_key(path)
        if key is not None:
            return Target(Route.IMAGE, path, query, key)
        return Target(Route.PAGE, path, query)
    if method == "PURGE":
        raise BadTarget(405, "method_not_allowed", "PURGE is only for /photos/ URLs")
    if path == "/healthz":
        return Target(Route.HEALTH, path, query)
    if path == "/readyz":
        return Target(Route.READY, path, query)
    if path == "/metrics" or path == "/metrics/":
        return Target(Route.METRICS, path, query)
    if path.startswith("/api/") or path == "/api" or (path == "/upload" and method == "POST"):
        return Target(Route.YPFS, path, query)
    return Target(Route.PAGE, path, query)
