"""Hotlink protection: which Referer hosts may embed our images.

Allowed: a request with no Referer (typed URLs, privacy-minded browsers, feed
readers), the cluster's public host, the host the request itself was sent to
(a page served by this same origin), and the hosts of ``ypws.hotlink_allow``;
an entry starting with a dot (``.example.com``) also allows its subdomains.
Hosts compare without port, case-insensitively. Anything else is a hotlink.
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import urlsplit

from cluster.config import YpwsSection

_MEMO_MAX = 4096


def hostname(value: str) -> str | None:
    """The host name of a URL or of a Host header value, lower-case, without port."""
    try:
        if "//" not in value:
            value = "//" + value
        return urlsplit(value).hostname
    except ValueError:
        return None


class HotlinkPolicy:
    def __init__(self, enabled: bool, public_host: str | None, allow: tuple[str, ...] = ()):
        self.enabled = enabled
        self.exact = {h.lower().lstrip(".") for h in allow} | ({public_host} if public_host else set())
        self.suffixes = tuple(h.lower() for h in allow if h.startswith("."))
        # a page's many images repeat one (Referer, Host): decide each pair once, per policy
        self._decided = lru_cache(maxsize=_MEMO_MAX)(self._decide)

    @classmethod
    def from_config(cls, ypws: YpwsSection, public_url: str) -> "HotlinkPolicy":
        """The policy of ``[ypws]``; ``public_url`` (Config.public_url) names the cluster's own host."""
        return cls(ypws.hotlink_protection, hostname(public_url), ypws.hotlink_allow)

    def allows(self, referer: str | None, host: str | None) -> bool:
        if not self.enabled or not referer:
            return True
        return self._decided(referer, host)

    def _decide(self, referer: str, host: str | None) -> bool:
        try:
            parts = urlsplit(referer)
            ref_host = parts.hostname if parts.scheme in ("http", "https") else None
        except ValueError:
            ref_host = None
        if not ref_host:
            return False  # a Referer that is not an http(s) URL is not one of ours
        if ref_host in self.exact or (host and ref_host == hostname(host)):
            return True
        return any(ref_host.endswith(s) for s in self.suffixes)
