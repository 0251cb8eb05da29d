"""Image URL paths -> what they name. No HTTP here: just strings in, a target or an error out.

    /photos/{user}/{id}_{secret}/{size}.{ext}     a rendition (ext picks the format)
    /photos/{user}/{id}_{secret}/original.{ext}   the original, in its own format
    /photos/{user}/{id}_{secret}/{size}           (PURGE only) every format of a size

A path that is not of that shape, or names a user, id, secret, size or extension
that cannot exist, is ``NoSuchImage`` (404), always with the same message, so a
prober learns nothing about which part was wrong. Paths that are malformed
rather than merely unknown (traversal, NUL, overlong) are ``BadPath`` (400).
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.keys import FORMAT_BY_EXT, InvalidName, PhotoRef, parse_photo_segment, valid_size

MAX_PATH = 1024
PREFIX = "/photos/"
ORIGINAL = "original"


class BadPath(ValueError):
    """A malformed path (400)."""


class NoSuchImage(LookupError):
    """A well-formed path that names no image (404); deliberately says nothing more."""

    def __init__(self) -> None:
        super().__init__("no such image")


@dataclass(frozen=True, slots=True)
class ImageTarget:
    ref: PhotoRef
    size: str          # a size name, or "original"
    ext: str | None    # None only for PURGE of every format
    fmt: str | None    # format named by the extension

    @property
    def is_original(self) -> bool:
        return self.size == ORIGINAL


def check_path(path: str) -> None:
    """Reject paths that are malformed rather than unknown."""
    if len(path) > MAX_PATH:
        raise BadPath("the path is too long")
    if "\x00" in path or "\\" in path:
        raise BadPath("the path contains forbidden characters")
    for segment in path.split("/"):
        if segment in (".", ".."):
            raise BadPath("the path may not contain '.' or '..' segments")


def parse_image_path(path: str, allow_bare_size: bool = False) -> ImageTarget:
    """The image a path names; BadPath or NoSuchImage otherwise."""
    check_path(path)
    if not path.startswith(PREFIX):
        raise NoSuchImage()
    parts = path[len(PREFIX):].split("/")
    if len(parts) != 3:
        raise NoSuchImage()
    user, segment, name = parts
    stem, dot, ext = name.rpartition(".")
    if not dot:
        if not allow_bare_size:
            raise NoSuchImage()
        stem, ext = name, None
    try:
        photo_id, secret = parse_photo_segment(segment)
        ref = PhotoRef(user, photo_id, secret)
        if stem != ORIGINAL:
            valid_size(stem)
    except InvalidName:
        raise NoSuchImage() from None
    fmt = None
    if ext is not None:
        fmt = FORMAT_BY_EXT.get(ext)
        if fmt is None or ext == "jpeg":  # one spelling per format: .jpg
            raise NoSuchImage()
    return ImageTarget(ref, stem, ext, fmt)


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
