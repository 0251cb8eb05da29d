"""Choosing WebP or AVIF from the Accept header, where a size profile offers them.

Only explicit mentions count: ``image/*`` and ``*/*`` do not mean a client can
decode AVIF (old browsers send them too), and ``q=0`` excludes a type.
"""

from __future__ import annotations

from functools import lru_cache

from cluster.profiles import SizeProfile
from media.formats import CONTENT_TYPES

#: better formats first; the profile's default format is the fallback
PREFERENCE = ("avif", "webp")


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
    return _pick(accept, profile.variants)


@lru_cache(maxsize=1024)  # browsers send a handful of distinct Accept headers; parse each once
def _pick(accept: str, variants: tuple[str, ...]) -> str | None:
    types = accepted_types(accept)
    return next((f for f in PREFERENCE if f in variants and CONTENT_TYPES[f] in types), None)
