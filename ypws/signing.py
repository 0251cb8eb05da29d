"""Signed URLs: how a private photo is shown to someone its owner chose.

A signed URL is the image path plus ``?exp={unix seconds}&sig={hex}``, where sig
is HMAC-SHA256, keyed by the cluster's ``url_key``, over ``{path}\\n{exp}``. Other
query parameters (``v``) are not signed and change nothing. The expiry may be at
most ``signed_url_max_ttl`` ahead, so a leaked URL dies on its own.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Callable
from urllib.parse import urlsplit

#: clock skew tolerated between the signer and the node checking the expiry
SKEW = 60


class SignatureError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def signature(key: str, path: str, exp: int) -> str:
    return hmac.new(key.encode(), f"{path}\n{exp}".encode(), hashlib.sha256).hexdigest()


def sign_url(key: str, max_ttl: int, path: str, ttl: int | None = None,
             now: Callable[[], float] = time.time) -> str:
    """``path?exp=..&sig=..`` valid for ``ttl`` seconds (capped at ``max_ttl``), signed with ``key``.

    ``key`` and ``max_ttl`` are ``cluster.url_key`` and ``ypws.signed_url_max_ttl``: the same two
    values ``verify`` checks against, so a URL signed here passes there. ``path`` may be a full
    URL or carry a query; only its path is signed and returned.
    """
    path = urlsplit(path).path
    ttl = max_ttl if ttl is None else max(1, min(int(ttl), max_ttl))
    exp = int(now()) + ttl
    return f"{path}?exp={exp}&sig={signature(key, path, exp)}"


def verify(key: str, max_ttl: int, path: str, exp: str | None, sig: str | None, now: float) -> int:
    """The expiry (unix seconds) of a valid signed request; SignatureError otherwise."""
    if not exp or not sig or len(exp) > 12 or not exp.isdigit() or len(sig) != 64:
        raise SignatureError("bad_signature", "the URL signature is missing or malformed")
    expiry = int(exp)
    if not hmac.compare_digest(sig.lower(), signature(key, path, expiry)):
        raise SignatureError("bad_signature", "the URL signature does not match")
    if expiry < now:
        raise SignatureError("url_expired", "the signed URL has expired")
    if expiry > now + max_ttl + SKEW:
        raise SignatureError("bad_signature", "the URL expiry is further ahead than allowed")
    return expiry
