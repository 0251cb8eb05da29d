"""Photo and user records: the JSON documents every component reads from the store.

ypfs writes them; magickd reads a photo's record to find its original; ypws reads
it for the owner's rules (private, original allowed). GPS never enters a record:
it stays in the original bytes only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import secrets
import time
from typing import TypeVar
from dataclasses import dataclass, field

from cluster.profiles import SizeProfile

from .base import BlobStore
from .keys import PhotoRef, record_key, user_key, valid_user

def rendition_url(public_url: str, ref: PhotoRef, profile: SizeProfile, fmt: str | None = None) -> str:
    """Public URL of one rendition, carrying its version so caches can keep it for long."""
    fmt = fmt or profile.format
    return f"{public_url}{ref.size_url_path(profile.name, fmt)}?v={profile.version}"


def original_url(public_url: str, ref: PhotoRef, fmt: str) -> str:
    return f"{public_url}{ref.original_url_path(fmt)}"


@dataclass
class PhotoRecord:
    id: str
    owner: str
    secret: str
    format: str                 # decoder format name: jpeg, png, gif, webp, tiff, heif, avif, bmp
    width: int                  # as displayed (EXIF orientation applied)
    height: int
    bytes: int
    sha256: str
    uploaded_at: float          # unix seconds
    title: str = ""
    taken_at: str | None = None  # EXIF DateTimeOriginal, "YYYY-MM-DDTHH:MM:SS"
    camera: str | None = None    # EXIF Make + Model
    exposure: str | None = None  # EXIF shutter, aperture, ISO, focal length ("1/125 s · f/2.8 · ISO 100 · 35 mm")
    pages: int = 1               # frames of an animation / pages of a TIFF
    private: bool = False        # served only through signed URLs
    original_public: bool = True  # the owner lets anyone fetch the original
    thumbhash: str | None = None  # base64 ThumbHash (media/placeholders.py); None: not made yet (older records)
    color: str | None = None      # dominant colour "#rrggbb", the box's background until the image loads
    #: the stored version this record was read as (not stored in it): ``save`` writes only over
    #: that version, so an edit made meanwhile (the owner's, the backfill's, a delete) is never
    #: overwritten; "" for a record not read from the store (a new photo)
    etag: str = field(default="", compare=False, repr=False)

    @property
    def ref(self) -> PhotoRef:
        return PhotoRef(self.owner, self.id, self.secret)

    def to_json(self) -> bytes:
        return _document(self)

    @classmethod
    def from_json(cls, data: bytes, etag: str = "") -> "PhotoRecord":
        return _from_document(cls, data, etag)

    def save(self, store: BlobStore) -> "PhotoRecord":
        """Write the record: a new one as is, one read from the store only over the version read
        (storage.Conflict if it changed or went meanwhile: read it again, redo the change).
        The record as stored, with its new version."""
        return _save(store, self.ref.record_key, self)

    @classmethod
    def load(cls, store: BlobStore, user: str, photo_id: str) -> "PhotoRecord":
        """The record, with the version it was read as; storage.NotFound if there is none."""
        return cls.read(store, record_key(user, photo_id))

    @classmethod
    def read(cls, store: BlobStore, key: str) -> "PhotoRecord":
        """The record stored under ``key`` (a record key), with its version; NotFound if none."""
        data, etag = store.get_versioned(key)
        return cls.from_json(data, etag)


R = TypeVar("R")  # a record class: PhotoRecord or UserRecord


def _document(rec: "PhotoRecord | UserRecord") -> bytes:
    doc = dataclasses.asdict(rec)
    del doc["etag"]  # the version it was read as is the store's, not part of the document
    return json.dumps(doc, sort_keys=True).encode()


def _from_document(cls: type[R], data: bytes, etag: str) -> R:
    raw = json.loads(data)
    names = {f.name for f in dataclasses.fields(cls)} - {"etag"}
    return cls(**{k: v for k, v in raw.items() if k in names}, etag=etag)


def _save(store: BlobStore, key: str, rec: R) -> R:
    doc = rec.to_json()
    info = store.replace(key, doc, rec.etag, "application/json") if rec.etag else store.put(key, doc, "application/json")
    return dataclasses.replace(rec, etag=info.etag)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class UserRecord:
    """A user and the hashes of its upload tokens (tokens themselves are never stored).

    Tokens look like ``{user}.{random}`` so a request names the record to check
    without any index; only the SHA-256 of each token is kept (they are 256-bit
    random, so a slow hash adds nothing).
    """

    name: str
    created_at: float = field(default_factory=time.time)
    token_hashes: list[str] = field(default_factory=list)
    allow_originals: bool = True
    etag: str = field(default="", compare=False, repr=False)  # as PhotoRecord.etag: the version read

    def new_token(self) -> str:
        token = f"{self.name}.{secrets.token_urlsafe(32)}"
        self.token_hashes.append(hash_token(token))
        return token

    def check_token(self, token: str) -> bool:
        digest = hash_token(token)
        return any(hmac.compare_digest(digest, h) for h in self.token_hashes)

    def to_json(self) -> bytes:
        return _document(self)

    @classmethod
    def from_json(cls, data: bytes, etag: str = "") -> "UserRecord":
        return _from_document(cls, data, etag)

    @classmethod
    def load(cls, store: BlobStore, name: str) -> "UserRecord":
        """The user, with the version it was read as; storage.NotFound if there is none."""
        return cls.from_json(*store.get_versioned(user_key(valid_user(name))))

    def save(self, store: BlobStore) -> "UserRecord":
        """As PhotoRecord.save: only over the version read (storage.Conflict if it changed)."""
        return _save(store, user_key(self.name), self)
