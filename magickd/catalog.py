"""Walking the photos in storage for the admin commands, in key order (so a walk can resume)."""

from __future__ import annotations

from typing import Iterator

from storage import NotFound
from storage.base import BlobStore
from storage.keys import InvalidName, PhotoRef, parse_record_key, parse_rendition_key, photo_prefix
from storage.records import PhotoRecord


def record_keys(store: BlobStore, user: str | None = None, start_after: str = "") -> Iterator[str]:
    """Photo record keys (``photos/{user}/{id}.json``) in order, skipping anything else in the prefix."""
    for key in store.list(photo_prefix(user), start_after=start_after):
        try:
            parse_record_key(key)
        except InvalidName:
            continue
        yield key


def load_record(store: BlobStore, key: str) -> PhotoRecord | None:
    """The record under ``key``; None if it vanished since it was listed."""
    user, photo_id = parse_record_key(key)
    try:
        return PhotoRecord.load(store, user, photo_id)
    except NotFound:
        return None


def rendition_versions(store: BlobStore, ref: PhotoRef, size: str) -> dict[str, set[str]]:
    """{version: {ext, ...}} of one size's renditions of a photo (keys outside the scheme skipped)."""
    found: dict[str, set[str]] = {}
    for key in store.list(ref.size_prefix(size)):
        try:
            rendition = parse_rendition_key(key)
        except InvalidName:
            continue
        if rendition.size == size:
            found.setdefault(rendition.version, set()).add(rendition.ext)
    return found
