"""Image URL paths -> what they name, as HTTP answers. No HTTP here: just strings in, a target or an error out.

storage/keys.py parses the path; this module adds what serving needs: malformed paths
refused before parsing, and every refusal the same 404.

    /photos/{user}/{id}_{secret}/{size}.{ext}     a rendition (ext picks the format)
    /photos/{user}/{id}_{secret}/original.{ext}   the original, in its own format
    /photos/{user}/{id}_{secret}/{size}           (PURGE only) every format of a size

A path that is not of that shape, or names a user, id, secret, size or extension
that cannot exist, is ``NoSuchImage`` (404), always with the same message, so a
prober learns nothing about which part was wrong. Paths that are malformed
rather than merely unknown (traversal, NUL, overlong) are ``BadPath`` (400).
"""

from __future__ import annotations

from storage import keys
from storage.keys import ImagePath, InvalidName

MAX_PATH = 1024


class BadPath(ValueError):
    """A malformed path (400)."""


class NoSuchImage(LookupError):
    """A well-formed path that names no image (404); deliberately says nothing more."""

    def __init__(self) -> None:
        super().__init__("no such image")


def check_path(path: str) -> None:
    """Reject paths that are malformed rather than unknown."""
    if len(path) > MAX_PATH:
        raise BadPath("the path is too long")
    if "\x00" in path or "\\" in path:
        raise BadPath("the path contains forbidden characters")
    for segment in path.split("/"):
        if segment in (".", ".."):
            raise BadPath("the path may not contain '.' or '..' segments")


def parse_image_path(path: str, allow_bare_size: bool = False) -> ImagePath:
    """The image a path names (storage.keys parses it); BadPath or NoSuchImage otherwise."""
    check_path(path)
    try:
        return keys.parse_image_path(path, bare_size=allow_bare_size)
    except InvalidName:
        raise NoSuchImage() from None


def query_params(query: str) -> dict[str, str]:
    """The first value of each parameter of a raw query string (only short ASCII ones matter)."""
    out: dict[str, str] = {}
    if not query:
        return out
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if name and name not in out:
            out[name] = value
    return out
