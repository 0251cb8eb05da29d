"""The owner's actions on a stored photo: edit its title and visibility, or delete it.

The record is the commit point, as on upload. An edit is one record write. A
delete removes the record first: from then on ypws serves no miss of the photo
(it reads the record on every miss), and the API and the gallery list it no
more. The original, every rendition and the duplicate entry go next; a crash in
between leaves only objects nothing can reach, never a photo half there, and a
retried DELETE finds nothing to do (404).

The cache tier is told by the HTTP layer, which commits a purge of the whole
photo to the purge log before calling these (storage/purge.py): ypws keeps each
cached entry's private flag, so a photo made private, or deleted, must not go on
being served from a cache.

Making a photo private also gives it a new secret. Every URL of it handed out so
far then names nothing (404 at the origin), so copies that outer caches keep for
a year (versioned URLs are ``immutable``) and links shared while it was public
stop working; a CDN needs no purge to stop serving it for us. The objects are
copied to the new keys first, the record (the commit point) names the new
secret next, and the old keys go last; a crash in between leaves only objects
no record reaches, which ``ypfs gc`` removes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Callable

from storage import BlobStore, NotFound
from storage.ids import new_secret
from storage.keys import (FORMAT_BY_EXT, InvalidName, PhotoRef, dedupe_key, parse_rendition_key,
                          timeline_key)
from storage.records import PhotoRecord


class BadChanges(ValueError):
    """An edit the API refuses (400), with the reason."""


@dataclass(frozen=True)
class PhotoChanges:
    """Fields an owner may change; None leaves a field as it is."""

    title: str | None = None
    private: bool | None = None
    original_public: bool | None = None

    #: whether cached copies may now be wrong (visibility is cached with every entry)
    @property
    def touches_cache(self) -> bool:
        return self.private is not None or self.original_public is not None

    @classmethod
    def from_json(cls, body: Any, max_title_chars: int) -> "PhotoChanges":
        if not isinstance(body, dict) or not body:
            raise BadChanges("send a JSON object with one or more of: title, private, original_public")
        unknown = sorted(set(body) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise BadChanges(f"unknown field(s): {', '.join(unknown)}; editable: title, private, original_public")
        for flag in ("private", "original_public"):
            if flag in body and not isinstance(body[flag], bool):
                raise BadChanges(f"'{flag}' must be true or false")
        title = body.get("title")
        if title is not None:
            if not isinstance(title, str):
                raise BadChanges("'title' must be a string")
            title = "".join(ch for ch in title if ch.isprintable()).strip()
            if len(title) > max_title_chars:
                raise BadChanges(f"the title is longer than {max_title_chars} characters")
        return cls(title, body.get("private"), body.get("original_public"))


def apply_changes(store: BlobStore, rec: PhotoRecord, changes: PhotoChanges,
                  make_secret: Callable[[], str] = new_secret) -> PhotoRecord:
    """The record with ``changes`` applied, written back (one PUT: all or nothing) over the very
    version ``rec`` was read as (storage.Conflict if another edit or a delete came first); a
    photo made private moves to a new secret."""
    updates = {k: v for k, v in dataclasses.asdict(changes).items() if v is not None}
    new = dataclasses.replace(rec, **updates)
    if new == rec:
        return rec
    if new.private and not rec.private:
        new = dataclasses.replace(new, secret=make_secret())
        old_keys = _copy_objects(store, rec.ref, new.ref)
        new = new.save(store)  # Conflict: the copies are orphans `ypfs gc` removes; the old keys stay
        for key in [timeline_key(rec.id, rec.owner), *old_keys]:
            store.delete(key)
        return new
    new = new.save(store)
    if rec.private and not new.private:
        store.put(timeline_key(rec.id, rec.owner), b"")
    return new


def _copy_objects(store: BlobStore, old: PhotoRef, new: PhotoRef) -> list[str]:
    """Copy the original and every rendition to ``new``'s keys, where the store keeps them (a
    hard link, S3 CopyObject); the old keys, to delete later."""
    pairs = [(old.original_key, new.original_key)]
    for key in store.list(old.rendition_prefix):
        try:
            r = parse_rendition_key(key)
        except InvalidName:
            continue  # not a rendition of ours: left for `ypfs gc` (its photo's secret changed)
        pairs.append((key, new.rendition_key(r.size, r.version, FORMAT_BY_EXT[r.ext])))
    copied = []
    for src, dst in pairs:
        try:
            store.copy(src, dst)
        except NotFound:
            continue  # a rendition not made yet (or an original already gone): nothing to move
        copied.append(src)
    return copied


def delete_photo(store: BlobStore, rec: PhotoRecord) -> int:
    """Remove the photo: record first (the commit point), then its bytes. Returns the objects removed."""
    ref = rec.ref
    store.delete(ref.record_key)
    doomed = [timeline_key(rec.id, rec.owner), ref.original_key, *store.list(ref.rendition_prefix)]
    try:
        key = dedupe_key(rec.owner, rec.sha256)
        if json.loads(store.get(key)).get("id") == rec.id:  # a later upload of the same bytes keeps its own
            doomed.append(key)
    except (NotFound, InvalidName, ValueError, AttributeError):
        pass
    for key in doomed:
        store.delete(key)
    return 1 + len(doomed)
