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

    @property
    def ref(self) -> PhotoRef:
        return PhotoRef(self.owner, self.id, self.secret)

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "PhotoRecord":
        raw = json.loads(data)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    def save(self, store: BlobStore) -> None:
        store.put(self.ref.record_key, self.to_json(), "application/json")

    @classmethod
    def load(cls, store: BlobStore, user: str, photo_id: str) -> "PhotoRecord":
        """The record; storage.NotFound if there is none."""
        return cls.from_json(store.get(record_key(user, photo_id)))


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

    def new_token(self) -> str:
        token = f"{self.name}.{secrets.token_urlsafe(32)}"
        self.token_hashes.append(hash_token(token))
        return token

    def check_token(self, token: str) -> bool:
        digest = hash_token(token)
        return any(hmac.compare_digest(digest, h) for h in self.token_hashes)

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "UserRecord":
        raw = json.loads(data)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    @classmethod
    def load(cls, store: BlobStore, name: str) -> "UserRecord":
        return cls.from_json(store.get(user_key(valid_user(name))))

    def save(self, store: BlobStore) -> None:
        store.put(user_key(self.name), self.to_json(), "application/json")
