"""The key scheme: where every object of the cluster lives, in one place.

Every component builds object keys here and nowhere else. Keys are built only
from validated names, so no request can reach outside its own prefix.

    users/{user}.json                                   user record (hashed tokens)
    photos/{user}/{photo_id}.json                       photo record (no GPS)
    originals/{user}/{photo_id}_{secret}                original bytes, as uploaded
    renditions/{user}/{photo_id}_{secret}/{size}.{version}.{ext}
    dedupe/{user}/{sha256}.json                         same user + same bytes -> photo
    timeline/{photo_id}_{user}                          every public photo, in time order (home page)
    purgelog/{minute}/{ms}-{tag}.json                   one cache purge (storage/purgelog.py)

Public URL paths are built and parsed here too (``/photos/{user}/{id}_{secret}/{size}.{ext}``):
the strict parse ypws serves by and purges check, and the lax routing key hashproxy
hashes (its hot path: one split, no validation).

The secret is part of the original and rendition keys, so a public URL maps
straight to a key with no index lookup, and a guessed id with a wrong secret
simply finds nothing. Photo ids are time-ordered, so listing ``photos/{user}/``
lists a user's photos oldest first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# the extension (URLs, keys) and MIME type of each format: the one format table's
from media.formats import CONTENT_TYPES, EXTENSIONS, FORMAT_BY_EXT  # noqa: F401

USER_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
PHOTO_ID_RE = re.compile(r"^[1-9][0-9]{0,18}$")
SECRET_RE = re.compile(r"^[0-9a-f]{10}$")
SIZE_RE = re.compile(r"^[a-z][a-z0-9_]{0,15}$")
VERSION_RE = re.compile(r"^[0-9a-f]{8}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

#: key prefixes of each kind of object (the keys themselves come from the functions below)
USERS_PREFIX = "users/"
PHOTOS_PREFIX = "photos/"
ORIGINALS_PREFIX = "originals/"
RENDITIONS_PREFIX = "renditions/"
DEDUPE_PREFIX = "dedupe/"
TIMELINE_PREFIX = "timeline/"

#: every public image URL path starts with this; the bare prefix names every cached image (a purge)
IMAGE_PATH_PREFIX = "/photos/"
#: the name of the original in an image URL (``.../original.{ext}``), in place of a size
ORIGINAL = "original"


class InvalidName(ValueError):
    """A name that may not be part of a key (bad characters, too long, traversal)."""


def _check(kind: str, value: str, pattern: re.Pattern) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidName(f"invalid {kind}: {value!r}"[:120])
    return value


def valid_user(user: str) -> str:
    """Lower-case letters, digits, '-' and '_', 1-32 chars, starting with a letter or digit."""
    return _check("user name", user, USER_RE)


def valid_photo_id(photo_id: str) -> str:
    return _check("photo id", photo_id, PHOTO_ID_RE)


def valid_secret(secret: str) -> str:
    return _check("photo secret", secret, SECRET_RE)


def valid_size(size: str) -> str:
    return _check("size name", size, SIZE_RE)


def valid_version(version: str) -> str:
    return _check("rendition version", version, VERSION_RE)


def user_key(user: str) -> str:
    return f"{USERS_PREFIX}{valid_user(user)}.json"


def user_prefix() -> str:
    return USERS_PREFIX


def parse_user_key(key: str) -> str:
    """The user of a ``users/{user}.json`` key; InvalidName otherwise."""
    if not key.startswith(USERS_PREFIX) or not key.endswith(".json"):
        raise InvalidName(f"not a user key: {key!r}"[:120])
    return valid_user(key[len(USERS_PREFIX):-len(".json")])


def photo_prefix(user: str | None = None) -> str:
    """Prefix listing photo records: one user's, or everyone's."""
    return f"{PHOTOS_PREFIX}{valid_user(user)}/" if user is not None else PHOTOS_PREFIX


def dedupe_key(user: str, sha256: str) -> str:
    return f"{DEDUPE_PREFIX}{valid_user(user)}/{_check('sha256', sha256, SHA256_RE)}.json"


def parse_dedupe_key(key: str) -> tuple[str, str]:
    """(user, sha256) of a ``dedupe/`` key; InvalidName otherwise."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] + "/" != DEDUPE_PREFIX or not parts[2].endswith(".json"):
        raise InvalidName(f"not a dedupe key: {key!r}"[:120])
    return valid_user(parts[1]), _check("sha256", parts[2][: -len(".json")], SHA256_RE)


@dataclass(frozen=True)
class PhotoRef:
    """Everything needed to address one photo's objects: owner, id and secret."""

    user: str
    photo_id: str
    secret: str

    def __post_init__(self) -> None:
        valid_user(self.user)
        valid_photo_id(self.photo_id)
        valid_secret(self.secret)

    @property
    def record_key(self) -> str:
        return record_key(self.user, self.photo_id)

    @property
    def original_key(self) -> str:
        return f"{ORIGINALS_PREFIX}{self.user}/{self.photo_id}_{self.secret}"

    def cached_original_key(self, ext: str = "") -> str:
        """The cache key of the original served as ``original.{ext}`` (GPS stripped, so not the
        stored bytes' key); without ``ext``, the prefix of every such key."""
        return f"{self.original_key}.{ext}"

    @property
    def rendition_prefix(self) -> str:
        return f"{RENDITIONS_PREFIX}{self.user}/{self.photo_id}_{self.secret}/"

    def size_prefix(self, size: str) -> str:
        """The prefix of every version and format of one size's renditions."""
        return f"{self.rendition_prefix}{valid_size(size)}."

    def rendition_key(self, size: str, version: str, fmt: str) -> str:
        if fmt not in EXTENSIONS:
            raise InvalidName(f"invalid format: {fmt!r}")
        return f"{self.rendition_prefix}{valid_size(size)}.{valid_version(version)}.{EXTENSIONS[fmt]}"

    @property
    def url_path(self) -> str:
        """Public URL path of the photo, without size: /photos/{user}/{id}_{secret}."""
        return f"{IMAGE_PATH_PREFIX}{self.user}/{self.photo_id}_{self.secret}"

    def original_url_path(self, fmt: str) -> str:
        """Public URL path of the original, in its own format (``original.bin`` for one without an extension)."""
        return f"{self.url_path}/{ORIGINAL}.{EXTENSIONS.get(fmt, 'bin')}"

    def purge_path(self, size: str | None = None) -> str:
        """The PURGE path of the whole photo (``.../{id}_{secret}/``) or of every format of one size."""
        return f"{self.url_path}/{valid_size(size) if size else ''}"

    def size_url_path(self, size: str, fmt: str) -> str:
        return f"{self.url_path}/{valid_size(size)}.{EXTENSIONS[fmt]}"


def timeline_prefix() -> str:
    return TIMELINE_PREFIX


def timeline_key(photo_id: str, user: str) -> str:
    """The site-wide, time-ordered entry of a public photo: the key says it all (the body is empty),
    so one listing gives a page of the newest photos of every user."""
    return f"{TIMELINE_PREFIX}{valid_photo_id(photo_id)}_{valid_user(user)}"


def parse_timeline_key(key: str) -> tuple[str, str]:
    """(photo_id, user) of a ``timeline/`` key; InvalidName otherwise."""
    parts = key.split("/")
    if len(parts) != 2 or parts[0] + "/" != TIMELINE_PREFIX:
        raise InvalidName(f"not a timeline key: {key!r}"[:120])
    photo_id, sep, user = parts[1].partition("_")
    if not sep:
        raise InvalidName(f"not a timeline key: {key!r}"[:120])
    return valid_photo_id(photo_id), valid_user(user)


def record_key(user: str, photo_id: str) -> str:
    return f"{PHOTOS_PREFIX}{valid_user(user)}/{valid_photo_id(photo_id)}.json"


def parse_record_key(key: str) -> tuple[str, str]:
    """(user, photo_id) of a ``photos/{user}/{id}.json`` key; InvalidName otherwise."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] + "/" != PHOTOS_PREFIX or not parts[2].endswith(".json"):
        raise InvalidName(f"not a photo record key: {key!r}"[:120])
    return valid_user(parts[1]), valid_photo_id(parts[2][: -len(".json")])


def parse_photo_segment(segment: str) -> tuple[str, str]:
    """Split the ``{id}_{secret}`` URL segment; InvalidName if malformed."""
    photo_id, sep, secret = segment.partition("_")
    if not sep:
        raise InvalidName("photo segment must be {id}_{secret}")
    return valid_photo_id(photo_id), valid_secret(secret)


def photo_of_key(key: str) -> PhotoRef:
    """The photo an ``originals/`` or ``renditions/`` key belongs to; InvalidName for any other key."""
    parts = key.split("/")
    if (len(parts) == 3 and parts[0] + "/" == ORIGINALS_PREFIX) or \
            (len(parts) == 4 and parts[0] + "/" == RENDITIONS_PREFIX):
        photo_id, secret = parse_photo_segment(parts[2])
        return PhotoRef(parts[1], photo_id, secret)
    raise InvalidName(f"not an original or rendition key: {key!r}"[:120])


@dataclass(frozen=True, slots=True)
class RenditionKey:
    """What a ``renditions/`` key names: the photo, the size, its version and the extension."""

    ref: PhotoRef
    size: str
    version: str
    ext: str


def parse_rendition_key(key: str) -> RenditionKey:
    """The parts of ``renditions/{user}/{id}_{secret}/{size}.{version}.{ext}``; InvalidName otherwise."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] + "/" != RENDITIONS_PREFIX:
        raise InvalidName(f"not a rendition key: {key!r}"[:120])
    name = parts[3].split(".")
    if len(name) != 3 or name[2] not in FORMAT_BY_EXT:
        raise InvalidName(f"not a rendition key: {key!r}"[:120])
    ref = PhotoRef(parts[1], *parse_photo_segment(parts[2]))
    return RenditionKey(ref, valid_size(name[0]), valid_version(name[1]), name[2])


# -- public image URL paths ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImagePath:
    """What an image URL path names: ``/photos/{user}/{id}_{secret}/{size}.{ext}``."""

    ref: PhotoRef
    size: str          # a size name, "original", or "" for the whole photo (a purge's ``.../{id}_{secret}/``)
    ext: str | None    # None for a bare size (a purge of every format) or the whole photo
    fmt: str | None    # the format the extension names

    @property
    def is_original(self) -> bool:
        return self.size == ORIGINAL


def parse_image_path(path: str, *, bare_size: bool = False, whole_photo: bool = False) -> ImagePath:
    """The image a URL path names; InvalidName for any other path.

    ``bare_size`` also accepts ``.../{size}`` (every format of a size) and ``whole_photo``
    ``.../{id}_{secret}/`` (every size): both only ever name images to purge. One spelling
    per format (``.jpg``, never ``.jpeg``), so one image has one URL.
    """
    if not path.startswith(IMAGE_PATH_PREFIX):
        raise InvalidName("not an image path")
    parts = path[len(IMAGE_PATH_PREFIX):].split("/")
    if len(parts) != 3:
        raise InvalidName("an image path is /photos/{user}/{id}_{secret}/{name}")
    user, segment, name = parts
    ref = PhotoRef(user, *parse_photo_segment(segment))
    if not name:
        if not whole_photo:
            raise InvalidName("an image path names a size")
        return ImagePath(ref, "", None, None)
    stem, dot, ext = name.rpartition(".")
    if not dot:
        if not bare_size:
            raise InvalidName("an image path has an extension")
        return ImagePath(ref, name if name == ORIGINAL else valid_size(name), None, None)
    if stem != ORIGINAL:
        valid_size(stem)
    fmt = FORMAT_BY_EXT.get(ext)
    if fmt is None or ext != EXTENSIONS[fmt]:  # one spelling per format: .jpg
        raise InvalidName(f"unknown extension {ext!r}"[:60])
    return ImagePath(ref, stem, ext, fmt)


#: the shape ``image_route_key`` accepts, as a regular expression (HAProxy's front matches it)
IMAGE_ROUTE_REGEX = r"^/photos/[^/]+/[^/]+/[^/.][^/]*$"


def image_route_key(path: str) -> str | None:
    """The routing key of an image path (``/photos/u/id_s/size``: no extension), or None if it
    is not shaped like one. Lax on purpose (no validation: a proxy's hot path); every format
    of one size shares the key, so they live on one cache node."""
    parts = path.split("/")
    if len(parts) != 5 or parts[1] != "photos" or not parts[2] or not parts[3] or not parts[4]:
        return None
    name = parts[4]
    dot = name.rfind(".")
    if dot == 0:
        return None
    if dot > 0:
        name = name[:dot]
    return f"/photos/{parts[2]}/{parts[3]}/{name}"


# -- the purge log -------------------------------------------------------------------------
#
# Entry keys sort by the time they were written (13-digit milliseconds), grouped in
# one folder per minute so a reader starting "after time T" skips whole folders (the
# local store walks folders; S3 lists with start-after).

PURGE_LOG_PREFIX = "purgelog/"
PURGE_TAG_RE = re.compile(r"^[0-9a-z]{1,32}$")
_PURGE_LOG_KEY_RE = re.compile(r"^purgelog/([0-9]{10})/([0-9]{13})-([0-9a-z]{1,32})\.json$")


def purge_log_key(ms: int, tag: str) -> str:
    """The key of a purge-log entry written at ``ms`` (unix milliseconds); ``tag`` makes it unique."""
    if not 0 <= ms < 10**13:
        raise InvalidName(f"purge log time out of range: {ms}")
    return f"{PURGE_LOG_PREFIX}{ms // 60000:010d}/{ms:013d}-{_check('purge tag', tag, PURGE_TAG_RE)}.json"


def purge_log_floor(ms: int) -> str:
    """A ``start_after`` bound: listing after it yields exactly the entries written at ``ms`` or later."""
    ms = max(0, min(ms, 10**13 - 1))
    return f"{PURGE_LOG_PREFIX}{ms // 60000:010d}/{ms:013d}"


def purge_log_time(key: str) -> int:
    """When a purge-log entry (or floor) was written, in unix ms; InvalidName for other keys."""
    m = _PURGE_LOG_KEY_RE.fullmatch(key)
    if m:
        return int(m.group(2))
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == "purgelog" and len(parts[2]) == 13 and parts[2].isdigit():
        return int(parts[2])
    raise InvalidName(f"not a purge log key: {key!r}"[:120])
