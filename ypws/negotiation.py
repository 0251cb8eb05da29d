"""Choosing WebP or AVIF from the Accept header, where a size profile offers them.

Only explicit mentions count: ``image/*`` and ``*/*`` do not mean a client can
decode AVIF (old browsers send them too), and ``q=0`` excludes a type.
"""

from __future__ import annotations

from cluster.config import SizeProfile
from media.formats import CONTENT_TYPES

#: better formats first; the profile's default format is the fallback
PREFERENCE = ("avif", "webp")
_MEMO_MAX = 1024
_memo: dict[tuple[str, tuple[str, ...]], str | None] = {}


def accepted_types(accept: str) -> set[str]:
    """Media types listed with a non-zero q."""
    out = set()
    for item in accept.split(","):
        media, *params = item.strip().split(";")
        q = 1.0
        for p in params:
            name, _, value = p.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0:
            out.add(media.strip().lower())
    return out


def pick_variant(accept: str | None, profile: SizeProfile) -> str | None:
    """The best variant format of ``profile`` that ``accept`` lists, or None for the default."""
    if not accept or not profile.variants:
        return None
    memo_key = (accept, profile.variants)
    if memo_key in _memo:
        return _memo[memo_key]
    types = accepted_types(accept)
    choice = next((f for f in PREFERENCE if f in profile.variants and CONTENT_TYPES[f] in types), None)
    if len(_memo) >= _MEMO_MAX:
        _memo.clear()
    _memo[memo_key] = choice
    return choice
