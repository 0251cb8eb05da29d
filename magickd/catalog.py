"""Walking the photos in storage for the admin commands, in key order (so a walk can resume)."""

from __future__ import annotations

from typing import Iterator

from storage import NotFound
from storage.base import BlobStore
from storage.keys import InvalidName, parse_record_key, photo_prefix
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


def rendition_versions(store: BlobStore, prefix: str, size: str) -> dict[str, set[str]]:
    """{version: {ext, ...}} of one size's renditions under a photo's rendition prefix."""
    found: dict[str, set[str]] = {}
    for key in store.list(prefix):
        name = key[len(prefix):]
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == size:
            found.setdefault(parts[1], set()).add(parts[2])
    return found
